"""Rerankers: choose the one completion returned among the k drawn (serving and labeling).

A reranker scores each completion (higher is better) and returns a top-scored one, ties broken
uniformly at random: the rule `howhard.rerank.estimate` computes the success of exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np

from howhard.errors import BackendError, ConfigError
from howhard.tasks.base import Query, Task


class Reranker(Protocol):
    def scores(self, prompt: str, completions: Sequence[str]) -> np.ndarray:
        """One score per completion, higher is better."""
        ...

    def choose(self, prompt: str, completions: Sequence[str], rng: np.random.Generator) -> int:
        """The index of the completion to return."""
        ...


class RewardClient(Protocol):
    """A reward model behind any transport: one float per completion of a prompt."""

    def score(self, prompt: str, completions: Sequence[str]) -> list[float]: ...


def top_index(scores: Sequence[float] | np.ndarray, rng: np.random.Generator) -> int:
    """A uniformly random index among those with the highest score."""
    s = np.asarray(scores, dtype=float)
    if s.ndim != 1 or s.size == 0:
        raise ConfigError("there is nothing to choose from: give at least one completion")
    if np.any(np.isnan(s)):
        raise ConfigError(f"scores hold NaN ({s.tolist()}); a reranker must score every sample")
    return int(rng.choice(np.flatnonzero(s == s.max())))


class MajorityVote:
    """Self-consistency: a completion stating the most common answer. ``answer`` maps a completion
    to its normalised final answer or None (e.g. ``task.answer``); a completion's score is how many
    completions state its answer (0 when it states none, so it is chosen only if no one votes).
    Choosing uniformly among the top scores picks each tied answer with equal chance."""

    def __init__(self, answer: Callable[[str], str | None]) -> None:
        self.answer = answer

    def scores(self, prompt: str, completions: Sequence[str]) -> np.ndarray:
        answers = [self.answer(c) for c in completions]
        votes = Counter(a for a in answers if a is not None)
        return np.array([0 if a is None else votes[a] for a in answers], dtype=float)

    def choose(self, prompt: str, completions: Sequence[str], rng: np.random.Generator) -> int:
        return top_index(self.scores(prompt, completions), rng)


class VerifierReranker:
    """A verifier available at inference time (e.g. the given unit tests): ``verify(completion)``
    is the score."""

    def __init__(self, verify: Callable[[str], float]) -> None:
        self.verify = verify

    def scores(self, prompt: str, completions: Sequence[str]) -> np.ndarray:
        return np.array([float(self.verify(c)) for c in completions])

    def choose(self, prompt: str, completions: Sequence[str], rng: np.random.Generator) -> int:
        return top_index(self.scores(prompt, completions), rng)


class RewardModelReranker:
    """A reward model's score; ``client`` is any `RewardClient` (see `howhard.rerank.clients`)."""

    def __init__(self, client: RewardClient) -> None:
        self.client = client

    def scores(self, prompt: str, completions: Sequence[str]) -> np.ndarray:
        if not completions:
            return np.zeros(0)
        s = np.asarray(self.client.score(prompt, list(completions)), dtype=float)
        if s.shape != (len(completions),) or not np.all(np.isfinite(s)):
            raise BackendError(
                f"the reward model returned {s.tolist()} for {len(completions)} completions; "
                "it must return one finite score per completion"
            )
        return s

    def choose(self, prompt: str, completions: Sequence[str], rng: np.random.Generator) -> int:
        return top_index(self.scores(prompt, completions), rng)


class OracleReranker:
    """The task's own reward (needs the reference answer: the upper bound, not deployable).
    ``queries`` supply each prompt's ``meta`` (e.g. the reference answer); a prompt not among
    them is scored with empty meta (enough for tasks that derive the answer from the prompt)."""

    def __init__(self, task: Task, queries: Iterable[Query] = ()) -> None:
        self.task = task
        self.queries = {q.prompt: q for q in queries}

    def scores(self, prompt: str, completions: Sequence[str]) -> np.ndarray:
        query = self.queries.get(prompt) or Query(id="", prompt=prompt)
        return np.array([float(self.task.reward(query, c)) for c in completions])

    def choose(self, prompt: str, completions: Sequence[str], rng: np.random.Generator) -> int:
        return top_index(self.scores(prompt, completions), rng)
