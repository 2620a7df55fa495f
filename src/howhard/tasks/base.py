"""The task interface: a query source, the prompt template, the reward of a completion."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Query:
    """One query. ``prompt`` is the bare question (what a pool stores); ``meta`` what the reward
    needs besides it (e.g. the reference answer), kept as extra pool fields."""

    id: str
    prompt: str
    meta: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    """What the labeler needs from a task."""

    name: str
    stop: tuple[str, ...]  # strings that end a completion
    max_tokens: int  # a sensible completion length for the task

    def queries(self, n: int, seed: int) -> list[Query]: ...

    def render(self, prompt: str) -> str:
        """The full text given to the LM for a bare query prompt."""
        ...

    def query_text(self, prompt: str) -> str:
        """The query in the template's own words, without few-shot examples: the text whose
        hidden state the ``hidden`` featurizer reads (short, so featurising is cheap)."""
        ...

    def reward(self, query: Query, completion: str) -> float:
        """Reward in [0, 1] of one completion."""
        ...

    def answer(self, completion: str) -> str | None:
        """The final answer a completion states, normalised so equal answers compare equal (what
        majority vote counts), or None when it states none or the task has no short answer."""
        ...

    def canonical(self, answer: str) -> str | None:
        """One spelling per value of an answer as a pool holds it (``answers``), so that a pool
        written elsewhere votes as live completions do (None where `answer` would find none);
        unchanged for what `answer` returns."""
        ...


def data_dir() -> Path:
    """The folder holding the benchmark data files (``gsm8k/test.jsonl``, ``math500/test.jsonl``,
    ...): ``$HOWHARD_DATA`` if set, else ``shared/data`` beside the repository of a source checkout
    (``<repo>/../shared/data``). Not checked here: a task names the file it misses."""
    env = os.environ.get("HOWHARD_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[4] / "shared" / "data"  # src/howhard/tasks/base.py
