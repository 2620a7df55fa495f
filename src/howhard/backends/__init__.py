"""LM samplers, found by name: ``open_sampler(BackendConfig("openai", model=..., endpoints=...))``.

- ``llamacpp``: a GGUF file in this process (default: the embedded SmolLM2-135M-Instruct).
- ``openai``: any OpenAI-compatible server or fleet of servers (vLLM, SGLang, llama.cpp server).
- ``transformers``: a local Hugging Face model directory or GGUF file (GPU when present).

``vote`` > 1 wraps any of them in majority voting over that many samples per returned sample:
a costlier decoding procedure of the same model (the "strong decoder" for routing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from howhard.backends.base import Completion, Sampler, SamplingParams
from howhard.errors import ConfigError
from howhard.registry import Registry


@dataclass(frozen=True)
class BackendConfig:
    backend: str = "llamacpp"
    model: str | None = None  # GGUF file / HF directory; the served model name for openai
    endpoints: tuple[str, ...] = ()  # openai: base URLs, spread round-robin
    chat: bool = False  # openai: /v1/chat/completions instead of /v1/completions
    api_key: str | None = None
    per_endpoint: int = 4  # openai: requests in flight per endpoint
    workers: int | None = None  # llamacpp: model processes
    vote: int = 1

    def __post_init__(self) -> None:
        if self.vote < 1:
            raise ConfigError(f"vote must be >= 1, got {self.vote}", param="vote")
        if self.backend == "openai" and (not self.endpoints or not self.model):
            raise ConfigError(
                "the openai backend needs endpoints=URL (one or more base URLs) and model=NAME "
                "(the name the server serves)",
                param=("endpoints", "model"),
            )
        if self.backend != "openai" and self.endpoints:
            raise ConfigError(
                f"backend={self.backend} takes no endpoints (they are for backend=openai)",
                param=("backend", "endpoints"),
            )


def _llamacpp(c: BackendConfig) -> Sampler:
    from howhard.backends.llamacpp import LlamaCppSampler

    return LlamaCppSampler(c.model, c.workers)


def _openai(c: BackendConfig) -> Sampler:
    from howhard.backends.openai import OpenAISampler

    assert c.model is not None  # checked by BackendConfig
    return OpenAISampler(
        c.endpoints, c.model, chat=c.chat, api_key=c.api_key, per_endpoint=c.per_endpoint
    )


def _transformers(c: BackendConfig) -> Sampler:
    from howhard.backends.transformers import TransformersSampler

    return TransformersSampler(c.model)


BACKENDS: Registry[Sampler] = Registry("backend")
BACKENDS.register("llamacpp", _llamacpp)
BACKENDS.register("openai", _openai)
BACKENDS.register("transformers", _transformers)


def open_sampler(config: BackendConfig, answer: Callable[[str], str | None] | None = None) -> Any:
    """The sampler ``config`` names (a context manager; close it when done). ``answer`` extracts
    a completion's final answer, needed when ``config.vote`` > 1."""
    sampler = BACKENDS.get(config.backend)(config)
    if config.vote == 1:
        return sampler
    if answer is None:
        raise ConfigError(
            f"vote={config.vote} needs a task whose completions state an answer (passed as "
            "answer); this task has none",
            param="vote",
        )
    from howhard.backends.vote import VoteSampler

    return VoteSampler(sampler, config.vote, answer)


__all__ = ["BACKENDS", "BackendConfig", "Completion", "Sampler", "SamplingParams", "open_sampler"]
