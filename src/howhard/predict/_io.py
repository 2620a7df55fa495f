"""Saved predictors: one ``.npz`` file of arrays plus a JSON header, never a pickle.

The header is a 0-d unicode array ``header`` holding JSON with at least ``format``
("howhard.<ClassName>") and ``version``; every other entry is a named float array.

Reading trusts nothing in the file: the header is read first (at most `MAX_HEADER_CHARS`
characters), its fields are type-checked, and only then are the arrays it implies read, each
one's ``.npy`` header checked for the expected dtype and shape before a byte of its data is read,
all of them together capped at `MAX_ARRAY_BYTES`. Members the header does not imply are never read.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import numpy as np

from howhard.errors import ConfigError, ModelNotFoundError, brief
from howhard.files import atomic_write

KINDS = (
    "SuccessPredictor",
    "GainsPredictor",
    "TailPredictor",
    "MultiPredictor",
    "StackedPredictor",
    "LoraPredictor",
)
"""The predictor classes that can be saved; a file's format is "howhard." + one of them."""

MAX_ARRAY_BYTES = 1 << 30
"""The most a saved predictor's arrays may hold together, as float64 (1 GiB: a 64-unit mlp on
two million features); a header implying more is refused before any array is read."""

MAX_HEADER_CHARS = 1 << 24
"""The longest JSON header read (16 Mi characters: the hashes of ~800,000 training queries)."""

_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError, zlib.error)
"""What zipfile and numpy raise on a damaged, truncated, encrypted or unsupported archive."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


HEADER_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "params": (lambda v: isinstance(v, dict), "a JSON object"),
    "meta": (lambda v: isinstance(v, dict), "a JSON object"),
    "n_features_in": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "bmax": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "n_iter": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "loss": (_is_real, "a finite number"),
    "converged": (lambda v: isinstance(v, bool), "true or false"),
}
"""The type each known header field must have: (check, what it must be)."""


def write_npz(path: str | os.PathLike[str], header: dict[str, Any], arrays: dict[str, Any]) -> Path:
    """Write ``header`` (as JSON) and ``arrays`` to ``path`` atomically (`atomic_write`)."""
    try:
        header_json = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cannot save: parameters are not JSON-serialisable: {err}") from err
    path = Path(path)
    with atomic_write(path) as f:
        np.savez(f, header=np.array(header_json), **arrays)
    return path


class Checked(Protocol):
    """A predictor that names its constructor parameters and checks them."""

    def get_params(self, deep: bool = True) -> dict[str, Any]: ...

    def _check_params(self) -> None: ...


P = TypeVar("P", bound=Checked)


def read_saved(
    cls: Callable[..., P],
    kind: str,
    path: str | os.PathLike[str],
    version: int,
    keys: Sequence[str],
) -> tuple[P, dict[str, Any], str]:
    """(model, header, bad) of a saved ``kind`` predictor (`read_model`): the model built from
    the saved parameters, which must pass its own checks; ``bad`` starts any further error."""
    header, bad = read_model(path, kind, version, keys, cls().get_params())
    model = cls(**header["params"])
    try:
        model._check_params()
    except ConfigError as err:
        raise ConfigError(f"{bad} (saved parameters: {err})") from err
    return model, header, bad


def read_model(
    path: str | os.PathLike[str],
    kind: str,
    version: int,
    keys: Sequence[str],
    params: Iterable[str],
) -> tuple[dict[str, Any], str]:
    """(header, bad) of a saved ``kind`` predictor; ``bad`` starts any further error.

    Reads the header only (the arrays with `read_arrays`). ModelNotFoundError if there is no such
    file; ConfigError if it is not a saved ``kind`` of this ``version`` whose header has every
    key in ``keys``, each of the type `HEADER_FIELDS` gives, and exactly the constructor
    parameters ``params`` (under "params").
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(
            f"no saved {kind} at {path}: check the path, or fit one and write it "
            f"with {kind}.save(path)"
        )
    bad = f"{path} is not a saved {kind}; re-fit and save it with this howhard"
    header = _read_header(path, bad, "howhard." + kind, version)
    missing = [key for key in keys if key not in header]
    if missing:
        raise ConfigError(f"{bad} (header lacks {missing})")
    for key in keys:
        check, what = HEADER_FIELDS.get(key, (lambda v: True, ""))
        if not check(header[key]):
            raise ConfigError(
                f"{bad} (header field {key!r} must be {what}, got {brief(header[key])})"
            )
    if set(header["params"]) != set(params):
        raise ConfigError(f"{bad} (unexpected parameters {brief(header['params'])})")
    return header, bad


def read_arrays(
    path: str | os.PathLike[str], shapes: Sequence[tuple[str, tuple[int, ...]]], bad: str
) -> dict[str, np.ndarray]:
    """The named float64 arrays of the ``.npz`` at ``path``, each of its expected shape.

    ConfigError (starting with ``bad``) when they would hold more than `MAX_ARRAY_BYTES`
    together, or one is missing, damaged, not of floats or of another shape; each is checked
    from its ``.npy`` header before its data is read. Other members are not read.
    """
    total = 8 * sum(math.prod(shape) for _, shape in shapes)
    if total > MAX_ARRAY_BYTES:
        raise ConfigError(
            f"{bad} (its header implies {total:,} bytes of arrays, more than the "
            f"{MAX_ARRAY_BYTES:,} a saved predictor may hold)"
        )
    with _open_archive(Path(path), bad) as archive:
        return {
            name: _read_member(archive, name, shape, _float_problem, bad).astype(np.float64)
            for name, shape in shapes
        }


def json_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of a predictor's ``meta`` (saved in the header), checked to be JSON-serialisable."""
    try:
        return dict(json.loads(json.dumps(dict(meta or {}))))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"meta must be a JSON-serialisable dict: {err}") from err


def saved_kind(path: str | os.PathLike[str]) -> str:
    """Which predictor class (one of `KINDS`) saved the file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(
            f"no saved predictor at {path}: check the path, or fit a SuccessPredictor or "
            "GainsPredictor and write it with .save(path)"
        )
    bad = f"{path} is not a saved howhard predictor; re-fit and save it with this howhard"
    header = _read_header(path, bad, None, None)
    kind = str(header.get("format", "")).removeprefix("howhard.")
    if kind not in KINDS:
        raise ConfigError(
            f"{bad} (header format {brief(header.get('format'))} is not one of {KINDS})"
        )
    return kind


def _open_archive(path: Path, bad: str) -> zipfile.ZipFile:
    try:
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                raise ConfigError(f"{bad} (it holds a single .npy array, not an .npz archive)")
        return zipfile.ZipFile(path)
    except ConfigError:
        raise
    except _READ_ERRORS as err:
        raise ConfigError(f"{bad} ({err})") from err


def _float_problem(dtype: np.dtype[Any]) -> str | None:
    if dtype.kind != "f" or dtype.itemsize > 8:
        return f"holds {dtype}, not float64 numbers"
    return None


def _read_member(
    archive: zipfile.ZipFile,
    name: str,
    shape: tuple[int, ...],
    dtype_problem: Callable[[np.dtype[Any]], str | None],
    bad: str,
) -> np.ndarray:
    """Member ``name`` (``name.npy`` in the archive) as an array of ``shape``: its ``.npy``
    header is read and checked (shape, ``dtype_problem``) before its data."""
    where = f"{bad} (array {name!r}"
    try:
        with archive.open(name + ".npy") as f:
            got, fortran, dtype = _npy_header(f)
            problem = dtype_problem(dtype)
            if not problem and got != shape:
                problem = f"expected shape {shape}, got {got}"
            if problem:
                raise ConfigError(f"{where}: {problem})")
            nbytes = math.prod(shape) * dtype.itemsize
            data = f.read(nbytes)
    except KeyError as err:
        raise ConfigError(f"{where}: expected shape {shape}, got missing)") from err
    except ConfigError:
        raise
    except _READ_ERRORS as err:
        raise ConfigError(f"{where}: {err})") from err
    if len(data) != nbytes:
        raise ConfigError(f"{where}: the file ends {nbytes - len(data):,} bytes early)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """(shape, fortran order, dtype) from the header of the ``.npy`` file ``f`` (version 1 or 2)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f".npy format version {version} is not supported")


def _read_header(path: Path, bad: str, fmt: str | None, version: int | None) -> dict[str, Any]:
    """The JSON header of a saved model, checked to have format ``fmt`` and ``version``
    (either check skipped when None)."""

    def unicode(dtype: np.dtype[Any]) -> str | None:
        if dtype.kind != "U" or not 0 < dtype.itemsize <= 4 * MAX_HEADER_CHARS:
            return f"not a JSON string of at most {MAX_HEADER_CHARS:,} characters ({dtype})"
        return None

    with _open_archive(path, bad) as archive:
        if "header.npy" not in archive.namelist():
            raise ConfigError(f"{bad} (no JSON header)")
        raw = _read_member(archive, "header", (), unicode, bad)
    try:
        header = json.loads(str(raw[()]))
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{bad} (header is not JSON howhard can read: {err})") from err
    if not isinstance(header, dict):
        raise ConfigError(f"{bad} (header is not a JSON object)")
    got = header.get("format")
    if fmt is not None and got != fmt:
        other = str(got).removeprefix("howhard.")
        hint = (
            f": it holds a saved {other}; load it with {other}.load(path) or "
            "howhard.predict.load_predictor(path)"
            if other in KINDS
            else ""
        )
        raise ConfigError(f"{bad} (header format is not {fmt!r} but {brief(got)}{hint})")
    if version is not None and not (
        _is_int(header.get("version")) and header["version"] == version
    ):
        raise ConfigError(
            f"{bad} (it was saved in format version {brief(header.get('version'))}; "
            f"this howhard reads version {version})"
        )
    return header
