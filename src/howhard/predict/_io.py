"""Saved predictors: one ``.npz`` file of arrays plus a JSON header, never a pickle.

The header is a 0-d unicode array ``header`` holding JSON with at least ``format``
("howhard.<ClassName>") and ``version``; every other entry is a named float array.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from howhard.errors import ConfigError, ModelNotFoundError

KINDS = ("SuccessPredictor", "GainsPredictor")
"""The predictor classes that can be saved; a file's format is "howhard." + one of them."""


def write_npz(path: str | os.PathLike[str], header: dict[str, Any], arrays: dict[str, Any]) -> Path:
    """Write ``header`` (as JSON) and ``arrays`` to ``path`` atomically: temp file, then rename."""
    try:
        header_json = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cannot save: parameters are not JSON-serialisable: {err}") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, header=np.array(header_json), **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_model(
    path: str | os.PathLike[str],
    kind: str,
    version: int,
    keys: Sequence[str],
    params: Iterable[str],
) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """(header, arrays, bad) of a saved ``kind`` predictor; ``bad`` starts any further error.

    ModelNotFoundError if there is no such file; ConfigError if it is not a saved ``kind`` of
    this ``version`` whose header has every key in ``keys`` and exactly the constructor
    parameters ``params`` (under "params").
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(
            f"no saved {kind} at {path}: check the path, or fit one and write it "
            f"with {kind}.save(path)"
        )
    bad = f"{path} is not a saved {kind}; re-fit and save it with this howhard"
    arrays = _read_npz(path, bad)
    header = _read_header(arrays.pop("header", None), bad, "howhard." + kind, version)
    missing = [key for key in keys if key not in header]
    if missing:
        raise ConfigError(f"{bad} (header lacks {missing})")
    if not isinstance(header["params"], dict) or set(header["params"]) != set(params):
        raise ConfigError(f"{bad} (unexpected parameters {header['params']!r})")
    return header, arrays, bad


def json_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of a predictor's ``meta`` (saved in the header), checked to be JSON-serialisable."""
    try:
        return dict(json.loads(json.dumps(dict(meta or {}))))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"meta must be a JSON-serialisable dict: {err}") from err


def check_arrays(
    arrays: dict[str, np.ndarray], shapes: Sequence[tuple[str, tuple[int, ...]]], bad: str
) -> None:
    """ConfigError (starting with ``bad``) unless each named array is there with its shape."""
    for name, shape in shapes:
        if name not in arrays or arrays[name].shape != shape:
            got = arrays[name].shape if name in arrays else "missing"
            raise ConfigError(f"{bad} (array {name!r}: expected shape {shape}, got {got})")


def saved_kind(path: str | os.PathLike[str]) -> str:
    """Which predictor class (one of `KINDS`) saved the file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(
            f"no saved predictor at {path}: check the path, or fit a SuccessPredictor or "
            "GainsPredictor and write it with .save(path)"
        )
    bad = f"{path} is not a saved howhard predictor; re-fit and save it with this howhard"
    header = _read_header(_read_npz(path, bad).get("header"), bad, None, None)
    kind = str(header.get("format", "")).removeprefix("howhard.")
    if kind not in KINDS:
        raise ConfigError(f"{bad} (header format {header.get('format')!r} is not one of {KINDS})")
    return kind


def _read_npz(path: Path, bad: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, with pickles refused; ConfigError if it is not one."""
    try:
        with open(path, "rb") as f:  # our handle, so it is closed even when numpy fails
            data = np.load(f, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single .npy array, not an .npz archive")
            with data:
                return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{bad} ({err})") from err


def _read_header(
    raw: np.ndarray | None, bad: str, fmt: str | None, version: int | None
) -> dict[str, Any]:
    """The JSON header of a saved model, checked to have format ``fmt`` and ``version``
    (either check skipped when None)."""
    if raw is None or raw.shape != () or raw.dtype.kind != "U":
        raise ConfigError(f"{bad} (no JSON header)")
    try:
        header = json.loads(str(raw[()]))
    except ValueError as err:
        raise ConfigError(f"{bad} (header is not JSON: {err})") from err
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
        raise ConfigError(f"{bad} (header format is not {fmt!r} but {got!r}{hint})")
    if version is not None and header.get("version") != version:
        raise ConfigError(
            f"{bad} (it was saved in format version {header.get('version')!r}; "
            f"this howhard reads version {version})"
        )
    return header
