"""Atomic file writes that leave nothing behind (pools, saved predictors).

`atomic_write` writes a temp file ``.NAME.XXXXXXXX.tmp`` beside the target, holds an exclusive
``flock`` on it while writing, fsyncs it, gives it the mode a plain ``open`` would (the umask's,
not mkstemp's 0600), renames it over the target and fsyncs the directory: readers see the old
file or the new one, never a part. A writer killed mid-write leaves its temp file; the next write
of the same target removes such stale temp files (`remove_stale_temps`): those matching exactly its
own naming pattern whose lock nobody holds (the kernel drops a dead process's flock) and that are
at least `STALE_SECONDS` old (so a temp file created a moment ago, not yet locked, is spared).
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from howhard.errors import ConfigError

SQLITE_HEADER = b"SQLite format 3\x00"
STALE_SECONDS = 2.0
"""A temp file younger than this is never removed, even if unlocked (its writer may be about to
lock it)."""

_RANDOM = "[a-z0-9_]{8}"  # what tempfile.mkstemp puts between prefix and suffix


def _prefix(path: Path) -> str:
    return f".{path.name}."


def temp_pattern(path: str | os.PathLike[str]) -> re.Pattern[str]:
    """The names `atomic_write` gives the temp files of ``path`` (matched against a bare name)."""
    return re.compile(re.escape(_prefix(Path(path))) + _RANDOM + r"\.tmp")


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write the new contents of ``path`` to; it replaces ``path`` atomically
    when the block ends without an exception, and is removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # in use: remove_stale_temps leaves it alone
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temp files a killed `atomic_write` of ``path`` left; returns those removed.

    Only regular files named by `temp_pattern` (``path``'s own temp files), unlocked and older
    than `STALE_SECONDS`, are removed; the target itself and any other file are never touched.
    """
    path = Path(path)
    pattern = temp_pattern(path)
    removed: list[Path] = []
    try:
        names = [e.name for e in os.scandir(path.parent) if pattern.fullmatch(e.name)]
    except OSError:
        return removed  # no directory yet (or unreadable): nothing to clean
    for name in names:
        candidate = path.parent / name
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone, a symlink, or not ours to read
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or time.time() - info.st_mtime < STALE_SECONDS:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer holds it
            try:
                candidate.unlink()
            except OSError:
                continue  # removed meanwhile, or the directory is not ours to change
            removed.append(candidate)
        finally:
            os.close(fd)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(
    path: str | os.PathLike[str],
    inputs: Sequence[object] = (),
    *,
    directory: bool = False,
    param: str = "out",
) -> Path:
    """``path`` as the ``out`` a command may write (a file, or a ``directory`` of files), checked
    before any work: ConfigError when it is one of the command's ``inputs``, a label store, or a
    directory where a file is asked (a file where a directory is). ``param``: the setting that
    named it, as messages spell it."""
    path = Path(path)
    if directory and path.is_file():
        raise ConfigError(
            f"{param} {path} is a file; the report is a directory of files: name a new directory",
            param=param,
        )
    if not directory and path.is_dir():
        raise ConfigError(f"{param} {path} is a directory; name a file", param=param)
    for given in inputs:
        if (
            isinstance(given, str | os.PathLike)
            and path.exists()
            and Path(given).exists()
            and path.samefile(given)
        ):
            raise ConfigError(
                f"{param} {path} is the input file {given}: writing it would destroy it; name "
                "another file",
                param=param,
            )
    if path.is_file():
        with path.open("rb") as f:
            if f.read(len(SQLITE_HEADER)) == SQLITE_HEADER:
                raise ConfigError(
                    f"{param} {path} is a label store: writing it would lose its samples; name "
                    "another file",
                    param=param,
                )
    return path
