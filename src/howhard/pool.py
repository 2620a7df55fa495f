"""The sample pool: queries x pooled samples x rewards, its file format, the estimators of q(x, b).

A pool file is JSONL (``.jsonl``) or Parquet (``.parquet``), one row per query::

    {"id": "arith-0001", "prompt": "What is 37 + 48?", "rewards": [1.0, 0.0, 1.0], ...}

Other fields are kept as they are; ``task`` names the task the rows are queries of (export and
score write it, train reads it). The per-sample fields ``answers`` (each sample's extracted final
answer, for majority vote, read in the canonical spelling of the task the rows name: see
`canonical_answers`), ``tokens`` (its completion tokens), ``scores`` (a reward model's
score) and ``passes`` (the generated tests it passes, a hex bitmask) are lists aligned with
``rewards``. Rewards lie in [0, 1]; a pool is *binary* when every reward is 0 or 1. Rows may hold
different numbers of samples.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from scipy.special import gammaln

from howhard.errors import BudgetError, PoolError, brief
from howhard.files import atomic_write

FloatArray = np.ndarray


def prompt_hash(prompt: str) -> str:
    """Stable 16-hex-digit hash of a query text (used for store keys and pool disjointness)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Pool:
    """Queries with their pooled sample rewards. ``extras[i]`` keeps any other fields of row i."""

    ids: tuple[str, ...]
    prompts: tuple[str, ...]
    rewards: tuple[FloatArray, ...]
    extras: tuple[dict[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.extras:
            object.__setattr__(self, "extras", tuple({} for _ in self.ids))
        lengths = {len(self.ids), len(self.prompts), len(self.rewards), len(self.extras)}
        if len(lengths) != 1:
            raise PoolError(f"pool columns have different lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_samples(self) -> np.ndarray:
        """Samples pooled per query, shape (n_queries,)."""
        return np.array([len(r) for r in self.rewards], dtype=np.int64)

    @property
    def binary(self) -> bool:
        """True when every reward is exactly 0 or 1."""
        return all(bool(np.all((r == 0) | (r == 1))) for r in self.rewards)

    def successes(self) -> np.ndarray:
        """Sum of rewards per query (the success count for a binary pool)."""
        return np.array([float(r.sum()) for r in self.rewards])

    def success_rate(self) -> np.ndarray:
        """Mean reward per query: the empirical one-sample success rate for a binary pool."""
        return self.successes() / self.n_samples

    def q(self, bmax: int) -> FloatArray:
        """Unbiased q(x, b) for b = 0..bmax, shape (n_queries, bmax + 1); see `expected_best_of`."""
        check_samples(self, bmax)
        out = np.zeros((len(self), bmax + 1))
        n = self.n_samples
        for size in np.unique(n):
            rows = np.flatnonzero(n == size)
            out[rows, 1:] = expected_best_of(np.stack([self.rewards[i] for i in rows]), bmax)
        return out

    def gains(self, bmax: int) -> FloatArray:
        """Marginal gains Δ(x, b) = q(x, b) - q(x, b - 1), b = 1..bmax; shape (n_queries, bmax)."""
        return np.diff(self.q(bmax), axis=1)

    def select(self, ids: Sequence[str], n_samples: int | None = None) -> Pool:
        """The rows with these ids, in this order, each keeping its first ``n_samples`` rewards."""
        index = {qid: k for k, qid in enumerate(self.ids)}
        missing = [qid for qid in ids if qid not in index]
        if missing:
            raise PoolError(f"{len(missing)} ids are not in the pool, e.g. {missing[0]!r}")
        rows = [index[qid] for qid in ids]
        return Pool(
            tuple(self.ids[k] for k in rows),
            tuple(self.prompts[k] for k in rows),
            tuple(self.rewards[k][:n_samples] for k in rows),
            tuple(_first_samples(self.extras[k], n_samples) for k in rows),
        )

    def binarized(self, threshold: float = 1.0) -> Pool:
        """The pool with reward 1 where a reward is >= ``threshold``, else 0 (e.g. HumanEval's
        fraction of tests passed -> pass/fail at threshold 1)."""
        rewards = tuple((r >= threshold - 1e-12).astype(float) for r in self.rewards)
        return Pool(self.ids, self.prompts, rewards, self.extras)

    def hashes(self) -> set[str]:
        return {prompt_hash(p) for p in self.prompts}


PER_SAMPLE_FIELDS = ("answers", "tokens", "scores", "passes")  # extras aligned with rewards


def _first_samples(extra: dict[str, Any], n: int | None) -> dict[str, Any]:
    return {k: v[:n] if k in PER_SAMPLE_FIELDS else v for k, v in extra.items()}


def check_samples(pool: Pool, bmax: int) -> None:
    """Raise BudgetError unless every query pooled at least ``bmax`` samples."""
    if len(pool) == 0:
        raise PoolError("the pool is empty; label some queries first (howhard label ...)")
    if bmax < 1:
        raise BudgetError(f"max samples per query must be >= 1, got {bmax}")
    n = pool.n_samples
    short = np.flatnonzero(n < bmax)
    if short.size:
        i = int(short[0])
        raise BudgetError(
            f"query {pool.ids[i]!r} has only {n[i]} pooled samples but b up to {bmax} was asked "
            f"({short.size} queries are short); q(x, b) has no unbiased estimate for b > n. "
            f"Lower max_per_query to <= {int(n.min())} or label more samples per query "
            "(howhard label with more samples).",
            param="max_per_query",
        )


def expected_best_of(rewards: FloatArray, bmax: int) -> FloatArray:
    """Unbiased estimate of q(x, b) = E[max of b rewards], b = 1..bmax; shape (rows, bmax).

    ``rewards`` has shape (rows, n): the n pooled rewards of each query. The b samples are drawn
    without replacement from the n pooled ones, so for sorted rewards r_(1) <= ... <= r_(n)

        q(b) = sum_i r_(i) * C(i - 1, b - 1) / C(n, b)

    (the i-th smallest is the maximum of the subset when the other b - 1 come from the i - 1 below
    it). For binary rewards with c successes this equals 1 - C(n - c, b) / C(n, b); that form is
    used then, as a running product, which is exact and cheap.
    """
    rewards = np.asarray(rewards, dtype=float)
    n = rewards.shape[1]
    if bmax > n:
        raise BudgetError(f"b up to {bmax} asked from {n} pooled samples; need b <= n")
    b = np.arange(1, bmax + 1)
    if np.all((rewards == 0) | (rewards == 1)):
        fails = n - rewards.sum(axis=1, keepdims=True)
        j = np.arange(bmax)
        # C(n-c, b)/C(n, b) = prod_{j<b} (n-c-j)/(n-j); a factor <= 0 means no all-fail subset.
        factors = np.clip((fails - j) / (n - j), 0.0, None)
        return 1.0 - np.cumprod(factors, axis=1)
    ranks = np.arange(1, n + 1)[:, None]  # i = 1..n
    log_w = np.full((n, bmax), -np.inf)
    ok = ranks >= b[None, :]
    i_ok, b_ok = np.broadcast_to(ranks, ok.shape)[ok], np.broadcast_to(b, ok.shape)[ok]
    log_w[ok] = log_comb(i_ok - 1, b_ok - 1) - log_comb(n, b_ok)
    return np.sort(rewards, axis=1) @ np.exp(log_w)


def log_comb(n: FloatArray | int, k: FloatArray | int) -> FloatArray:
    """log C(n, k) through the log-gamma function."""
    n, k = np.asarray(n, dtype=float), np.asarray(k, dtype=float)
    return np.asarray(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1))


# ---------------------------------------------------------------------------- file format

_REQUIRED = ("id", "prompt", "rewards")


def _row(raw: Any, where: str) -> tuple[str, str, FloatArray, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise PoolError(f"{where}: a row must be a JSON object, got {type(raw).__name__}")
    for key in _REQUIRED:
        if key not in raw:
            raise PoolError(
                f"{where}: field {key!r} is missing; every row needs id, prompt, rewards"
            )
    qid, prompt, rewards = raw["id"], raw["prompt"], raw["rewards"]
    if not isinstance(qid, str) or not qid:
        raise PoolError(f"{where}: field 'id' must be a non-empty string, got {brief(qid)}")
    if not isinstance(prompt, str):
        raise PoolError(f"{where}: field 'prompt' must be a string, got {type(prompt).__name__}")
    if not isinstance(rewards, list | tuple | np.ndarray) or len(rewards) == 0:
        raise PoolError(f"{where}: field 'rewards' must be a non-empty list of numbers in [0, 1]")
    try:
        arr = np.array([float(r) for r in rewards if not isinstance(r, bool | str)], dtype=float)
    except (TypeError, ValueError, OverflowError):
        arr = np.array([])
    if arr.size != len(rewards) or not np.all(np.isfinite(arr)):
        raise PoolError(
            f"{where}: field 'rewards' must hold only numbers in [0, 1], got {brief(rewards)}"
        )
    if np.any((arr < 0) | (arr > 1)):
        bad = float(arr[(arr < 0) | (arr > 1)][0])
        raise PoolError(
            f"{where}: field 'rewards' has {bad}, outside [0, 1]; rescale rewards to [0, 1]"
        )
    extras = {k: v for k, v in raw.items() if k not in _REQUIRED}
    for key in PER_SAMPLE_FIELDS:
        if key in extras:
            _check_per_sample(extras[key], key, len(arr), where)
    return qid, prompt, arr, extras


def _is_hex(value: Any) -> bool:
    return isinstance(value, str) and value != "" and all(c in "0123456789abcdef" for c in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_PER_SAMPLE_CHECKS: dict[str, tuple[Any, str]] = {
    "answers": (lambda v: v is None or isinstance(v, str), "a string (or null: no answer)"),
    "tokens": (lambda v: _is_number(v) and v >= 0, "a number of tokens >= 0"),
    "scores": (_is_number, "a finite number"),
    "passes": (_is_hex, "a hex bitmask of the tests passed"),
}


def _check_per_sample(values: Any, key: str, n: int, where: str) -> None:
    """PoolError unless ``values`` holds one valid entry per sample (see `PER_SAMPLE_FIELDS`)."""
    check, what = _PER_SAMPLE_CHECKS[key]
    if not isinstance(values, list | tuple):
        raise PoolError(
            f"{where}: field {key!r} must be a list with one entry per reward, got "
            f"{type(values).__name__} {brief(values)}; fix the row or drop the field"
        )
    if len(values) != n:
        raise PoolError(
            f"{where}: field {key!r} has {len(values)} entries but 'rewards' has {n}; "
            "give one per sample"
        )
    for j, value in enumerate(values):
        if not check(value):
            raise PoolError(
                f"{where}: field {key!r}, entry {j}, must be {what}, got {brief(value)}; "
                "fix the row or drop the field"
            )


def pool_from_rows(rows: Iterable[tuple[str, Any]], source: str) -> Pool:
    """Build a pool from (location, raw row) pairs, validating each row."""
    ids: list[str] = []
    prompts: list[str] = []
    rewards: list[FloatArray] = []
    extras: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for where, raw in rows:
        qid, prompt, arr, extra = _row(raw, where)
        if qid in seen:
            raise PoolError(
                f"{where}: id {qid!r} repeats the row at {seen[qid]}; ids must be unique"
            )
        seen[qid] = where
        ids.append(qid)
        prompts.append(prompt)
        rewards.append(arr)
        extras.append(extra)
    if not ids:
        raise PoolError(f"{source} holds no rows; label some queries first (howhard label ...)")
    return Pool(tuple(ids), tuple(prompts), tuple(rewards), tuple(extras))


def jsonl_rows(
    path: str | os.PathLike[str], error: type[Exception] = PoolError
) -> Iterator[tuple[str, Any]]:
    """(``file:line``, parsed JSON) for each non-blank line of a JSONL file (``.gz`` read
    compressed); anything unreadable (not a file, not gzip, not UTF-8, not JSON, nested too
    deep, an integer too long) raises ``error`` naming the file and line."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a directory, not a JSONL file; name a file in it")
    try:
        with open(path, "rb") as raw:
            yield from _jsonl_lines(raw, path, error)
    except OSError as e:  # opening it (reading errors are turned into ``error`` below)
        raise error(f"cannot read {path} ({e.strerror or e}); check the path") from e


def _jsonl_lines(raw: BinaryIO, path: Path, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    gz = path.suffix == ".gz"
    f: BinaryIO | gzip.GzipFile = gzip.GzipFile(fileobj=raw) if gz else raw
    lineno = 0
    while True:
        try:
            line = f.readline()
        except (OSError, EOFError, zlib.error) as e:
            fix = (
                "it is not a whole gzip file: re-compress it, or drop the .gz suffix if it is "
                "plain text"
                if gz
                else "check the file"
            )
            raise error(f"{path}:{lineno + 1}: cannot read ({e}); {fix}") from e
        if not line:
            return
        lineno += 1
        if line.strip():
            yield f"{path}:{lineno}", _json_line(line, f"{path}:{lineno}", error)


def _json_line(line: bytes, where: str, error: type[Exception]) -> Any:
    """One JSONL line parsed, or ``error`` naming ``where`` and the fix."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(
            f"{where}: not UTF-8 text (byte {e.start + 1} of the line is {line[e.start]:#04x}); "
            "save the file as UTF-8"
        ) from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg}); fix or remove the line") from e
    except RecursionError as e:
        raise error(f"{where}: JSON nested too deeply to read; flatten the row") from e
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise error(f"{where}: JSON that cannot be read ({e}); fix or remove the line") from e


def _parquet_module() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise PoolError("Parquet pools need pyarrow: pip install 'howhard[parquet]'") from e
    return pq


def read_pool(path: str | os.PathLike[str]) -> Pool:
    """Read and validate a JSONL or Parquet pool, its answers in one spelling per value
    (`canonical_answers`); errors name the file, line and field."""
    path = Path(path)
    if not path.exists():
        raise PoolError(f"pool file {path} does not exist; make one with howhard export")
    if path.is_dir():
        raise PoolError(f"{path} is a directory, not a pool file; name a .jsonl or .parquet file")
    if path.suffix == ".parquet":
        rows = _parquet_rows(path)
        pool = pool_from_rows(((f"{path}:row {i + 1}", r) for i, r in enumerate(rows)), str(path))
    else:
        pool = pool_from_rows(jsonl_rows(path), str(path))
    return canonical_answers(pool)


def canonical_answers(pool: Pool) -> Pool:
    """The pool with each sample's answer (``answers``) read by the ``canonical`` of the task its
    rows name (``'abc'`` and ``"abc"`` are one CRUXEval vote, as live completions read by the
    task's ``answer``); as it is when its rows name no task howhard knows."""
    from howhard.tasks import ALIASES, TASKS, get_task

    named = {str(e["task"]) for e in pool.extras if e.get("task") is not None}
    names = {ALIASES.get(n, n) for n in named} & set(TASKS.names())
    if len(names) != 1 or not any("answers" in e for e in pool.extras):
        return pool
    canonical = get_task(names.pop()).canonical

    def read(extra: dict[str, Any]) -> dict[str, Any]:
        if extra.get("answers") is None:
            return extra
        return {**extra, "answers": [a if a is None else canonical(a) for a in extra["answers"]]}

    return replace(pool, extras=tuple(read(e) for e in pool.extras))


def _parquet_rows(path: Path) -> list[dict[str, Any]]:
    pq = _parquet_module()
    import pyarrow as pa

    try:
        return list(pq.read_table(path).to_pylist())
    except (pa.ArrowException, OSError, ValueError) as e:
        raise PoolError(
            f"{path} is not a readable Parquet file ({e}); write it again with howhard export "
            "or write_pool, or give the pool as JSONL"
        ) from e


def pool_rows(pool: Pool) -> list[dict[str, Any]]:
    return [
        {"id": i, "prompt": p, "rewards": [float(x) for x in r], **e}
        for i, p, r, e in zip(pool.ids, pool.prompts, pool.rewards, pool.extras, strict=True)
    ]


def write_pool(pool: Pool | Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write a pool atomically (`howhard.files.atomic_write`: a temp file beside ``path``, fsync,
    rename over it; stale temp files of an earlier, killed write of ``path`` are removed);
    JSONL, gzip-compressed when ``path`` ends in ``.gz`` (as `read_pool` reads it)."""
    path = Path(path)
    rows = pool_rows(pool) if isinstance(pool, Pool) else list(pool)
    with atomic_write(path) as f:
        if path.suffix == ".parquet":
            pq = _parquet_module()
            import pyarrow as pa

            pq.write_table(pa.Table.from_pylist(rows), f)
        elif path.suffix == ".gz":
            with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
                for row in rows:
                    gz.write((json.dumps(row, allow_nan=False) + "\n").encode("utf-8"))
        else:
            for row in rows:
                f.write((json.dumps(row, allow_nan=False) + "\n").encode("utf-8"))
    return path
