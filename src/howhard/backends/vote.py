"""Majority vote over k samples: a costlier decoding procedure of the same model.

In the embedded setting there is one small model, so the routing use case's "strong decoder" is
this procedure rather than a bigger model: each of its samples draws k samples of the inner
sampler and answers with the majority answer (self-consistency), at k times the tokens.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence

from howhard.backends.base import Completion, Sampler, SamplingParams
from howhard.errors import BackendError, ConfigError


def vote_seeds(seed: int, k: int) -> list[int]:
    """The k 31-bit seeds of the inner samples behind the outer sample seeded ``seed``."""
    return [
        int.from_bytes(hashlib.sha256(f"vote:{seed}:{i}".encode()).digest()[:4], "little")
        & 0x7FFFFFFF
        for i in range(k)
    ]


def majority(completions: Sequence[Completion], answer: Callable[[str], str | None]) -> Completion:
    """The completion of the majority answer, with n_tokens = the sum over all ``completions``.

    Completions stating no answer (``answer`` gives None) do not vote. Among answers with the
    most votes the one stated first wins, and its first completion is returned; when no
    completion states an answer, the first completion is.
    """
    if not completions:
        raise ConfigError("majority needs at least one completion")
    answers = [answer(c.text) for c in completions]
    votes = Counter(a for a in answers if a is not None)
    chosen = 0
    if votes:
        top = max(votes.values())
        chosen = next(j for j, a in enumerate(answers) if a is not None and votes[a] == top)
    return Completion(completions[chosen].text, sum(c.n_tokens for c in completions))


class VoteSampler:
    """Each sample is the majority vote of k samples of ``inner`` (see `majority`).

    Outer seed s draws the inner samples seeded `vote_seeds` (s, k), so the same seeds give the
    same votes; all m·k inner samples of one ``sample`` call go to ``inner`` in one call, so a
    batching backend decodes them together. ``n_tokens`` is the real cost: the k samples' sum.
    ``answer`` maps a completion to its normalised final answer, e.g. ``task.answer``.
    """

    def __init__(self, inner: Sampler, k: int, answer: Callable[[str], str | None]) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k (samples per vote) must be an integer >= 1, got {k!r}")
        self.inner = inner
        self.k = k
        self.answer = answer
        self.model_id = f"{inner.model_id}+vote{k}"
        if hasattr(inner, "concurrency"):
            self.concurrency: int = inner.concurrency

    def sample(
        self, prompt: str, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
    ) -> list[Completion]:
        k = self.k
        inner_seeds = [s for seed in seeds for s in vote_seeds(seed, k)]
        drawn = self.inner.sample(prompt, params, inner_seeds, stop)
        if len(drawn) != len(inner_seeds):
            raise BackendError(
                f"{self.inner.model_id} returned {len(drawn)} completions for "
                f"{len(inner_seeds)} seeds; the inner sampler must return one per seed"
            )
        return [majority(drawn[j * k : (j + 1) * k], self.answer) for j in range(len(seeds))]

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> VoteSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
