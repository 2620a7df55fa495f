"""The one interface every LM sampler implements, and its typed parameters."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from howhard.errors import ConfigError


@dataclass(frozen=True)
class SamplingParams:
    """How completions are drawn. ``seed`` is the base seed: sample j of a query gets its own seed
    derived from (seed, query, j), so a resumed run draws what the first run would have."""

    temperature: float = 1.0
    top_p: float = 0.95
    max_tokens: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 5.0:
            raise ConfigError(f"temperature must lie in [0, 5], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def sample_seed(self, query_hash: str, index: int) -> int:
        """A 31-bit seed unique to (base seed, query, sample index)."""
        digest = hashlib.sha256(f"{self.seed}:{query_hash}:{index}".encode()).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int
    finish_reason: str | None = field(default=None, compare=False)  # as the server said, if it did


class Sampler(Protocol):
    """Draws completions of one prompt, one per seed. ``model_id`` names the model in store keys."""

    model_id: str

    def sample(
        self, prompt: str, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
    ) -> list[Completion]: ...
