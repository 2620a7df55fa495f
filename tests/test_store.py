import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_model

from howhard.backends.base import Completion, SamplingParams
from howhard.errors import BackendError, StoreError
from howhard.label import label
from howhard.pool import prompt_hash
from howhard.store import SCHEMA, LabelStore, SampleRecord, StoreConfig
from howhard.tasks import Query, get_task

PARAMS = SamplingParams(max_tokens=8)
CONFIG = StoreConfig("arithmetic", "fake-model", PARAMS.to_json())


class EchoSampler:
    """A fake sampler for the labeler's pure logic: answers the seed's parity as the sum."""

    model_id = "fake-model"

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def sample(self, prompt, params, seeds, stop):
        self.calls.append(list(seeds))
        return [Completion(" 2" if s % 2 else " 3", 1) for s in seeds]


def test_resume_draws_only_missing_samples_with_their_own_seeds(tmp_path):
    task = get_task("arithmetic")
    queries = [Query("a", "What is 1 + 1?", {"answer": 2}), Query("b", "What is 2 + 1?")]
    with LabelStore(tmp_path / "s.sqlite", CONFIG) as store:
        store.add_queries(queries[:1])
        store.add_samples(queries[0], [SampleRecord(1, " 2", 1.0, 1, 0.1)])
        sampler = EchoSampler()
        stats = label(task, queries, sampler, store, 3, PARAMS, progress=False)
        assert stats.samples == 5 and store.count() == 6
        seeds = sorted(sampler.calls, key=len)
        qa = prompt_hash(queries[0].prompt)
        assert seeds[0] == [PARAMS.sample_seed(qa, 0), PARAMS.sample_seed(qa, 2)]
        assert len(seeds[1]) == 3
        assert label(task, queries, sampler, store, 3, PARAMS, progress=False).samples == 0
        pool = store.to_pool(task.answer)
    assert pool.ids == ("a", "b")
    answers = ["2" if PARAMS.sample_seed(qa, j) % 2 else "3" for j in range(3)]
    answers[1] = "2"  # the record written by hand
    assert pool.extras[0] == {
        "answer": 2,
        "task": "arithmetic",
        "tokens": [1, 1, 1],
        "answers": answers,
    }
    assert [len(r) for r in pool.rewards] == [3, 3]
    expected = [1.0 if PARAMS.sample_seed(qa, j) % 2 else 0.0 for j in range(3)]
    expected[1] = 1.0  # the record written by hand
    assert pool.rewards[0].tolist() == expected


def test_progress_bars_are_drawn_on_a_terminal_only(tmp_path, capsys):
    """stderr is not a terminal under pytest: neither label's nor the featurizer's bar shows."""
    from howhard.features import cached_transform

    task = get_task("arithmetic")
    queries = [Query(f"q{i}", f"What is {i} + 1?") for i in range(3)]
    with LabelStore(tmp_path / "s.sqlite", CONFIG) as store:
        stats = label(task, queries, EchoSampler(), store, 2, PARAMS, progress=True)
    assert (stats.queries, stats.samples) == (3, 6)

    class Zeros:
        name = "zeros"

        def transform(self, texts):
            return np.zeros((len(texts), 2), dtype=np.float32)

    X = cached_transform("zeros", Zeros, [f"p{i}" for i in range(250)], tmp_path / "f.npz")
    assert X.shape == (250, 2)
    assert capsys.readouterr().err == ""


def test_a_first_run_that_stores_nothing_leaves_no_store_behind(tmp_path, monkeypatch):
    import contextlib

    from howhard.errors import ConfigError
    from howhard.runs import label as runs

    monkeypatch.setattr(runs, "open_sampler", lambda *a: contextlib.nullcontext(EchoSampler()))
    task, store, bad = get_task("arithmetic"), tmp_path / "s.sqlite", [Query("a", "1+1")]
    with pytest.raises(ConfigError, match="is not an arithmetic question"):
        runs.label_queries(task, bad, store, 2, PARAMS, progress=False)
    assert not store.exists() and not Path(f"{store}-wal").exists()
    runs.label_queries(task, [Query("b", "What is 1 + 1?")], store, 2, PARAMS, progress=False)
    with pytest.raises(ConfigError, match="is not an arithmetic question"):
        runs.label_queries(task, bad, store, 2, PARAMS, progress=False)
    with LabelStore(store) as kept:  # a store holding samples stays as it is
        assert kept.count() == 2


class FailingSampler(EchoSampler):
    """Raises ``error`` for prompts containing ``bad``."""

    def __init__(self, bad: str, error: Exception) -> None:
        super().__init__()
        self.bad, self.error = bad, error

    def sample(self, prompt, params, seeds, stop):
        if self.bad in prompt:
            raise self.error
        return super().sample(prompt, params, seeds, stop)


def test_backend_error_is_recorded_and_the_run_goes_on(tmp_path):
    task = get_task("arithmetic")
    queries = [
        Query("a", "What is 1 + 1?"),
        Query("b", "What is 2 + 1?"),
        Query("c", "What is 3 + 3?"),
    ]
    with LabelStore(tmp_path / "s.sqlite", CONFIG) as store:
        down = FailingSampler("2 + 1", BackendError("http://x/v1/completions: HTTP 503"))
        before = time.time()
        stats = label(task, queries, down, store, 2, PARAMS, progress=False)
        assert (stats.samples, stats.errors) == (4, 1)
        assert stats.last_error == "http://x/v1/completions: HTTP 503"
        assert store.count() == 4 and store.stored_indices(queries[1]) == set()
        [error] = store.errors()
        assert (error.query_id, error.query_hash) == ("b", prompt_hash(queries[1].prompt))
        assert error.message == "http://x/v1/completions: HTTP 503"
        assert before <= error.time <= time.time()
        rerun = EchoSampler()
        stats = label(task, queries, rerun, store, 2, PARAMS, progress=False)
        assert (stats.samples, stats.errors, stats.last_error) == (2, 0, "")
        assert len(rerun.calls) == 1 and store.count() == 6
        assert len(store.errors()) == 1  # the history stays


def test_other_exceptions_still_abort_the_run(tmp_path):
    task = get_task("arithmetic")
    queries = [Query("a", "What is 1 + 1?")]
    with LabelStore(tmp_path / "s.sqlite", CONFIG) as store:
        with pytest.raises(RuntimeError, match="bug"):
            label(task, queries, FailingSampler("1 + 1", RuntimeError("bug")), store, 2, PARAMS)
        assert store.errors() == [] and store.count() == 0


def test_store_without_errors_table_opens_and_gains_it(tmp_path):
    """A store written before the errors table existed keeps its samples and records errors."""
    path = tmp_path / "old.sqlite"
    old_schema = SCHEMA.split("CREATE TABLE IF NOT EXISTS errors")[0]
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
        db.executemany(
            "INSERT INTO config VALUES (?, ?)",
            [("task", CONFIG.task), ("model", CONFIG.model), ("params", CONFIG.params)],
        )
        db.execute("INSERT INTO queries VALUES (?, 'a', 'p', '{}')", (prompt_hash("p"),))
        db.execute(
            "INSERT INTO samples VALUES (?, ?, ?, ?, 0, 'x', 1.0, 1, 0.0)",
            (CONFIG.task, prompt_hash("p"), CONFIG.model, CONFIG.params),
        )
    db.close()
    with LabelStore(path) as store:
        assert store.count() == 1 and store.errors() == []
        store.add_error(Query("a", "p"), "down", when=5.0)
        assert [(e.query_id, e.message, e.time) for e in store.errors()] == [("a", "down", 5.0)]


def test_sample_seeds_differ_per_sample_and_query():
    seeds = {PARAMS.sample_seed(h, j) for h in ("a", "b") for j in range(100)}
    assert len(seeds) == 200


def test_a_sample_is_written_once(tmp_path):
    q = Query("a", "p")
    with LabelStore(tmp_path / "s.sqlite", CONFIG) as store:
        store.add_queries([q])
        store.add_samples(q, [SampleRecord(0, "x", 1.0, 1, 0.0)])
        with pytest.raises(StoreError, match="stored twice"):
            store.add_samples(
                q, [SampleRecord(1, "y", 0.0, 1, 0.0), SampleRecord(0, "x", 1.0, 1, 0)]
            )
        assert store.count() == 1  # the failed transaction left nothing behind


def test_store_refuses_another_configuration(tmp_path):
    LabelStore(tmp_path / "s.sqlite", CONFIG).close()
    other = StoreConfig("arithmetic", "other.gguf", SamplingParams(temperature=0.5).to_json())
    with pytest.raises(
        StoreError, match=r"model: store has 'fake-model', asked 'other.gguf'.*params"
    ):
        LabelStore(tmp_path / "s.sqlite", other)
    with LabelStore(tmp_path / "s.sqlite") as store:  # reopening without a config reads it
        assert store.config == CONFIG


def test_store_errors_for_missing_and_foreign_files(tmp_path):
    with pytest.raises(StoreError, match="does not exist; create it with howhard label"):
        LabelStore(tmp_path / "none.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="is not a howhard label store"):
        LabelStore(tmp_path / "junk.sqlite", CONFIG)


def test_store_pragmas(tmp_path):
    with LabelStore(tmp_path / "s.sqlite", CONFIG) as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def process_groups_alive(groups: list[int]) -> list[int]:
    """Pids of live processes in any of these process groups (Linux /proc)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in groups:
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.integration
@pytest.mark.slow
@needs_model
def test_kill_9_labeler_repeatedly_loses_and_duplicates_nothing(tmp_path):
    """Kill `howhard label` (the real model, a real process; every other run with two worker
    processes) at random moments, rerun it, and check that every (query, sample index) ends
    stored exactly once and that no worker outlives its killed labeler."""
    store = tmp_path / "labels.sqlite"
    n_queries, n_samples = 16, 6
    cmd = [
        sys.executable,
        "-m",
        "howhard.cli",
        "label",
        "--queries",
        str(n_queries),
        "--samples",
        str(n_samples),
        "--store",
        str(store),
        "--quiet",
    ]
    rng = np.random.default_rng(0)

    def stored() -> int:
        if not store.exists():
            return 0
        with sqlite3.connect(store, timeout=30) as db:
            try:
                return db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
            except sqlite3.OperationalError:  # the labeler has not made the tables yet
                return 0

    counts = [0]
    groups = []
    for round_ in range(4):
        workers = ["--workers", str(1 + round_ % 2)]
        proc = subprocess.Popen(
            cmd + workers,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, to find its workers afterwards
        )
        groups.append(proc.pid)
        deadline = time.monotonic() + 120
        while stored() <= counts[-1] and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.3)))  # kill at a random moment after progress
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        counts.append(stored())
    assert counts == sorted(counts)  # nothing committed was lost
    assert any(0 < c < n_queries * n_samples for c in counts), counts  # killed mid-run
    deadline = time.monotonic() + 10
    while (left := process_groups_alive(groups)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes outlived their killed labeler: {left}"
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT query_hash, idx FROM samples").fetchall()
        n_stored_queries = db.execute("SELECT COUNT(*) FROM queries").fetchone()[0]
    assert len(rows) == len(set(rows)) == n_queries * n_samples
    assert n_stored_queries == n_queries
    by_query: dict[str, list[int]] = {}
    for qh, idx in rows:
        by_query.setdefault(qh, []).append(idx)
    assert all(sorted(v) == list(range(n_samples)) for v in by_query.values())
