"""The SQLite label store: every sample written exactly once, so labeling resumes after any crash.

A store file holds the samples of one (task, model, sampling parameters) configuration; each
sample record is keyed by (task, query hash, model, sampling parameters, sample index) and is
committed with its reward in one transaction (WAL journal, synchronous=FULL), so a labeler killed
at any moment (kill -9) loses at most the samples it had not committed, and a rerun draws exactly
those. Opening a store with another configuration is refused. A query whose samples the backend
failed to draw leaves a row in ``errors`` (never a reward); a rerun draws its samples again.

One labeler writes a store at a time: opening it with a configuration takes an exclusive
`WriterLock` (``flock`` on the sidecar file ``STORE.lock``, which records the holder's pid) for as
long as it is open, and a second labeler is refused at once. The kernel drops the lock when its
process dies, even by kill -9, so a crash never leaves a store locked. Readers (export, opening
without a configuration) take no lock and read while a labeler writes (WAL).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from howhard.errors import ConfigError, StoreError
from howhard.pool import Pool, pool_from_rows, prompt_hash
from howhard.tasks.base import Query

SCHEMA = """
CREATE TABLE IF NOT EXISTS config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queries (
    hash TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, prompt TEXT NOT NULL, meta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    task TEXT NOT NULL, query_hash TEXT NOT NULL REFERENCES queries(hash), model TEXT NOT NULL,
    params TEXT NOT NULL, idx INTEGER NOT NULL, completion TEXT NOT NULL, reward REAL NOT NULL,
    n_tokens INTEGER NOT NULL, seconds REAL NOT NULL,
    PRIMARY KEY (task, query_hash, model, params, idx));
CREATE TABLE IF NOT EXISTS errors (
    task TEXT NOT NULL, query_hash TEXT NOT NULL REFERENCES queries(hash), model TEXT NOT NULL,
    params TEXT NOT NULL, message TEXT NOT NULL, time REAL NOT NULL);
"""


@dataclass(frozen=True)
class StoreConfig:
    """What a store's samples were drawn with; a store accepts samples of one config only."""

    task: str
    model: str
    params: str  # SamplingParams.to_json()


@dataclass(frozen=True)
class SampleRecord:
    index: int
    completion: str
    reward: float
    n_tokens: int
    seconds: float


@dataclass(frozen=True)
class ErrorRecord:
    """A query the backend failed to sample, when (UNIX time) and why."""

    query_id: str
    query_hash: str
    message: str
    time: float


class WriterLock:
    """The exclusive right to write the label store at ``path``: an ``flock`` on ``path.lock``
    (created beside the store, holding the pid of the process that has the lock), held until
    `release` (or the process ends, however it ends). StoreError at once when another process
    holds it. Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.store = Path(path)
        self.path = self.store.with_name(self.store.name + ".lock")
        self.store.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            holder = _read_pid(self.path)
            raise StoreError(
                f"label store {self.store} is being written by another labeler "
                f"({'pid ' + holder if holder else 'another process'}, holding {self.path}); "
                "wait for it to finish or stop it, or label into another store file"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Give the lock up (the lock file stays: removing it would race with a new holder)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


class LabelStore:
    """A label store file. Use as a context manager.

    With ``config`` the store is opened to label into: ``config`` binds it on first use, and the
    store's `WriterLock` is taken (or ``writer``, one already taken for ``path``, is used), so a
    second labeler is refused at once. Without it the store is opened to read its samples.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: StoreConfig | None = None,
        writer: WriterLock | None = None,
    ) -> None:
        self.path = Path(path)
        if config is None and not self.path.exists():
            raise StoreError(
                f"label store {self.path} does not exist; create it with howhard label"
            )
        if writer is not None and writer.store.resolve() != self.path.resolve():
            raise ConfigError(f"writer locks {writer.store}, not the store {self.path}")
        self._own_lock: WriterLock | None = None
        if config is not None and writer is None:
            self._own_lock = writer = WriterLock(self.path)
        try:
            try:
                self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(SCHEMA)
            except sqlite3.DatabaseError as e:
                raise StoreError(f"{self.path} is not a howhard label store ({e})") from e
            self.config = self._bind(config)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if hasattr(self, "_db"):
            self._db.close()
        if self._own_lock is not None:
            self._own_lock.release()

    def _bind(self, config: StoreConfig | None) -> StoreConfig:
        """The store's configuration; ``config`` is recorded (read and written in one
        transaction, so openers racing on a new store agree) when the store has none yet."""
        if config is None:
            stored = dict(self._db.execute("SELECT key, value FROM config").fetchall())
        else:
            with self._transaction():
                stored = dict(self._db.execute("SELECT key, value FROM config").fetchall())
                if not stored:
                    self._db.executemany(
                        "INSERT INTO config VALUES (?, ?)",
                        [("task", config.task), ("model", config.model), ("params", config.params)],
                    )
                    return config
        if not stored:
            raise StoreError(f"label store {self.path} is empty; label into it first")
        if set(stored) != {"task", "model", "params"}:
            raise StoreError(
                f"{self.path} is not a howhard label store (its config table holds "
                f"{sorted(stored)}, not task, model, params)"
            )
        found = StoreConfig(stored["task"], stored["model"], stored["params"])
        if config is not None and config != found:
            diff = [
                f"{k}: store has {getattr(found, k)!r}, asked {getattr(config, k)!r}"
                for k in ("task", "model", "params")
                if getattr(found, k) != getattr(config, k)
            ]
            raise StoreError(
                f"label store {self.path} was labeled with another configuration ("
                + "; ".join(diff)
                + "). Resume with the same task, model and sampling parameters, "
                "or label into another store file."
            )
        return found

    def _transaction(self) -> Any:
        return _Transaction(self._db)

    def add_queries(self, queries: Iterable[Query]) -> None:
        """Record queries (idempotent: a query already stored is left as it is)."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO queries VALUES (?, ?, ?, ?)",
                [(prompt_hash(q.prompt), q.id, q.prompt, json.dumps(q.meta)) for q in queries],
            )

    def stored_indices(self, query: Query) -> set[int]:
        c = self.config
        rows = self._db.execute(
            "SELECT idx FROM samples WHERE task=? AND query_hash=? AND model=? AND params=?",
            (c.task, prompt_hash(query.prompt), c.model, c.params),
        )
        return {int(r[0]) for r in rows}

    def add_samples(self, query: Query, records: Iterable[SampleRecord]) -> None:
        """Commit the records of one query in one transaction; a repeated index is an error."""
        c = self.config
        qh = prompt_hash(query.prompt)
        rows = [
            (c.task, qh, c.model, c.params, r.index, r.completion, r.reward, r.n_tokens, r.seconds)
            for r in records
        ]
        try:
            with self._transaction():
                self._db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError as e:
            raise StoreError(f"sample of {query.id} stored twice in {self.path}: {e}") from e

    def add_error(self, query: Query, message: str, when: float | None = None) -> None:
        """Record, in its own transaction, that drawing the samples of ``query`` failed."""
        c = self.config
        row = (
            c.task,
            prompt_hash(query.prompt),
            c.model,
            c.params,
            message,
            time.time() if when is None else when,
        )
        with self._transaction():
            self._db.execute("INSERT INTO errors VALUES (?, ?, ?, ?, ?, ?)", row)

    def errors(self) -> list[ErrorRecord]:
        """The backend errors recorded under this store's configuration, oldest first."""
        c = self.config
        rows = self._db.execute(
            "SELECT COALESCE(q.id, ''), e.query_hash, e.message, e.time FROM errors e "
            "LEFT JOIN queries q ON q.hash = e.query_hash "
            "WHERE e.task=? AND e.model=? AND e.params=? ORDER BY e.rowid",
            (c.task, c.model, c.params),
        )
        return [ErrorRecord(str(i), str(h), str(m), float(t)) for i, h, m, t in rows]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def query_count(self) -> int:
        """Queries added, with samples or not yet."""
        return int(self._db.execute("SELECT COUNT(*) FROM queries").fetchone()[0])

    def to_pool(
        self,
        answer: Callable[[str], str | None] | None = None,
        score: Callable[[str, list[str]], list[float]] | None = None,
    ) -> Pool:
        """Every query with at least one sample, rewards in sample-index order, with each
        sample's completion ``tokens``; given ``answer`` (a task's answer extractor), each
        sample's ``answers`` (for majority vote; left out when no completion states one); given
        ``score`` (a reward model: prompt, completions -> scores), each sample's ``scores``.
        Each row names the store's ``task`` (what train and evaluate read it as)."""
        rows = self._db.execute(
            "SELECT q.id, q.prompt, q.meta, s.reward, s.n_tokens, s.completion FROM queries q "
            "JOIN samples s ON s.query_hash = q.hash ORDER BY q.rowid, s.idx"
        )

        def row(qid: str, prompt: str, meta: str, group: list[Any]) -> dict[str, Any]:
            out = {"id": qid, "prompt": prompt, **json.loads(meta), "task": self.config.task}
            out["rewards"] = [r[3] for r in group]
            out["tokens"] = [r[4] for r in group]
            answers = [answer(r[5]) for r in group] if answer else []
            if any(a is not None for a in answers):
                out["answers"] = answers
            if score:
                out["scores"] = [float(x) for x in score(prompt, [r[5] for r in group])]
            return out

        raw = (
            (f"{self.path}:{key[0]}", row(*key, list(group)))
            for key, group in groupby(rows, key=lambda r: (r[0], r[1], r[2]))
        )
        return pool_from_rows(raw, str(self.path))


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
