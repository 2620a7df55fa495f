"""Reward-model clients: a vLLM server, a text-embeddings-inference endpoint, a local model.

Each has ``score(prompt, completions) -> list[float]`` with one meaning: a sequence-classification
model's output for (prompt, completion); with one label that logit, with two or more the
probability (softmax) of the last label (the "good" class of a 2-label reward model; the HF
client can name another with ``label``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from howhard.errors import BackendError, ConfigError, ModelNotFoundError
from howhard.rerank.rerankers import RewardClient


def reward_of(logits: Sequence[float]) -> float:
    """One label: its logit. Two or more: the softmax probability of the last label."""
    x = np.asarray(logits, dtype=float)
    if x.size == 1:
        return float(x[0])
    e = np.exp(x - x.max())
    return float(e[-1] / e.sum())


def _numbers(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
    )


class _HTTP:
    """A JSON POSTer that turns every failure into a BackendError naming the URL and the fix."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        timeout: float,
        fix: str,
        transport: httpx.BaseTransport | None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"reward model URL {url!r} must start with http:// or https://")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url, self.timeout, self.fix = url.rstrip("/"), timeout, fix
        self.client = httpx.Client(timeout=timeout, headers=headers, transport=transport)

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        url = self.url + path
        try:
            response = self.client.post(url, json=payload)
        except httpx.TimeoutException as e:
            raise BackendError(
                f"{url} did not answer within {self.timeout:g} s; is the server overloaded? "
                "Raise the timeout or send fewer completions at once"
            ) from e
        except httpx.HTTPError as e:
            raise BackendError(f"cannot reach {url} ({e}); {self.fix}") from e
        if response.status_code != 200:
            raise BackendError(
                f"{url} answered HTTP {response.status_code}: {response.text[:300]!r}; {self.fix}"
            )
        try:
            return response.json()
        except ValueError as e:
            raise BackendError(f"{url} answered with invalid JSON: {response.text[:300]!r}") from e

    def malformed(self, path: str, what: str, body: Any) -> BackendError:
        return BackendError(
            f"{self.url + path} answered {str(body)[:300]!r}, not {what}; is it the right server?"
        )

    def close(self) -> None:
        self.client.close()


class VLLMRewardClient:
    """A sequence-classification reward model served by vLLM (``vllm serve MODEL``), through
    ``POST /classify``. Format of vLLM >= 0.11.1 (``use_activation`` replaced ``activation`` /
    ``softmax`` in vllm-project/vllm PR #25524), from vllm/entrypoints/pooling/classify/protocol.py
    (v0.15): request ``{"model", "input": [str, ...] | "messages": [...], "use_activation"}``,
    response ``{"data": [{"index", "label", "probs", "num_classes"}, ...], ...}``; with
    ``use_activation: false`` ``probs`` are the raw logits (`reward_of` applies the softmax).

    ``chat=True`` (default) sends each completion as its own chat request (user: prompt,
    assistant: completion), so the server applies the model's chat template, which reward models
    expect; ``chat=False`` sends one request with the texts ``prompt + "\\n" + completion``.
    ``url`` is the server's base URL (a trailing ``/v1`` is dropped).
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        *,
        chat: bool = True,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        base = url.rstrip("/")
        base = base[:-3] if base.endswith("/v1") else base
        fix = f"start it with `vllm serve {model}` and pass its base URL (http://HOST:PORT)"
        self.model, self.chat = model, chat
        self.http = _HTTP(base, api_key, timeout, fix, transport)

    def score(self, prompt: str, completions: Sequence[str]) -> list[float]:
        if not completions:
            return []
        base = {"model": self.model, "use_activation": False}
        if not self.chat:
            texts = [f"{prompt}\n{c}" for c in completions]
            return [reward_of(p) for p in self._classify({**base, "input": texts}, len(texts))]
        out = []
        for c in completions:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": c}]
            out.append(reward_of(self._classify({**base, "messages": messages}, 1)[0]))
        return out

    def _classify(self, payload: dict[str, Any], k: int) -> list[list[float]]:
        body = self.http.post("/classify", payload)
        data = body.get("data") if isinstance(body, dict) else None
        what = f'{{"data": [{{"index": int, "probs": [number, ...]}}, ...]}} for {k} inputs'
        if not isinstance(data, list) or len(data) != k:
            raise self.http.malformed("/classify", what, body)
        if not all(isinstance(d, dict) and _numbers(d.get("probs")) for d in data):
            raise self.http.malformed("/classify", what, body)
        by_index = {d.get("index"): d["probs"] for d in data}
        if set(by_index) != set(range(k)):
            raise self.http.malformed("/classify", what, body)
        return [by_index[i] for i in range(k)]

    def close(self) -> None:
        self.http.close()


_DEFAULT_LABEL = re.compile(r"^LABEL_(\d+)$")


class HFEndpointRewardClient:
    """A sequence-classification reward model behind Hugging Face text-embeddings-inference
    (TEI, also what HF Inference Endpoints run for such models), through ``POST /predict``.

    Request (TEI router/src/http/types.rs, PredictRequest): ``{"inputs": [[prompt, completion],
    ...], "raw_scores": true, "truncate": true}``, a batch of text pairs; response (PredictResponse
    ::Batch): per input a list of ``{"label", "score"}`` for every label, sorted by score, raw
    logits since ``raw_scores`` is true. One label: its logit; several: the softmax probability
    of ``label``, by default the highest-numbered ``LABEL_i`` (the model's last label, as
    `LocalRewardModel`); models with named labels need ``label``.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        label: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        fix = (
            "start it with `text-embeddings-router --model-id MODEL` (or the TEI docker image) "
            "and pass its base URL (http://HOST:PORT)"
        )
        self.label = label
        self.http = _HTTP(url, api_key, timeout, fix, transport)

    def score(self, prompt: str, completions: Sequence[str]) -> list[float]:
        if not completions:
            return []
        payload = {
            "inputs": [[prompt, c] for c in completions],
            "raw_scores": True,
            "truncate": True,
        }
        body = self.http.post("/predict", payload)
        what = f'a list of {len(completions)} lists of {{"label": str, "score": number}}'
        if not isinstance(body, list) or len(body) != len(completions):
            raise self.http.malformed("/predict", what, body)
        return [self._reward(row, what, body) for row in body]

    def _reward(self, row: Any, what: str, body: Any) -> float:
        ok = isinstance(row, list) and row and all(isinstance(p, dict) for p in row)
        if not ok or not all(isinstance(p.get("label"), str) for p in row):
            raise self.http.malformed("/predict", what, body)
        if not _numbers([p.get("score") for p in row]):
            raise self.http.malformed("/predict", what, body)
        logits = {p["label"]: float(p["score"]) for p in row}
        if len(logits) == 1:
            return next(iter(logits.values()))
        label = self.label or self._last_label(list(logits))
        if label not in logits:
            raise ConfigError(
                f"label {label!r} is not among the labels {sorted(logits)} of "
                f"{self.http.url}/predict; pass label= one of them"
            )
        names = [n for n in logits if n != label] + [label]
        return reward_of([logits[n] for n in names])

    def _last_label(self, labels: list[str]) -> str:
        numbered = [_DEFAULT_LABEL.match(n) for n in labels]
        if all(numbered):
            return max(labels, key=lambda n: int(n.split("_")[1]))
        raise ConfigError(
            f"{self.http.url}/predict returns the labels {sorted(labels)}; pass label=NAME, "
            "the label whose probability is the reward"
        )

    def close(self) -> None:
        self.http.close()


class LocalRewardModel:
    """A local Hugging Face sequence-classification model directory (weights, config, tokenizer),
    run with transformers on ``device`` (default: CUDA if available, else CPU), in batches.

    The input is the (prompt, completion) text pair; if the tokenizer has a chat template, the
    conversation (user: prompt, assistant: completion) rendered by it instead. The model loads on
    first use. `logits` gives the raw outputs, `score` `reward_of` them.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, device: str | None = None, batch_size: int = 16
    ) -> None:
        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{self.path} is not a Hugging Face model directory (no config.json); give the "
                "directory a sequence-classification model was saved to (save_pretrained)"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.device, self.batch_size = device, batch_size
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.path)
                model = AutoModelForSequenceClassification.from_pretrained(self.path)
            except (OSError, ValueError) as e:
                raise ModelNotFoundError(
                    f"cannot load a sequence-classification model from {self.path} ({e})"
                ) from e
            if tokenizer.pad_token is None and tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token  # batches need padding
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tokenizer.pad_token_id
            self._loaded = (tokenizer, model.to(device).eval())
        return self._loaded

    @property
    def labels(self) -> list[str]:
        """The model's label names in output order."""
        config = self._load()[1].config
        return [str(config.id2label[i]) for i in range(config.num_labels)]

    def logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Raw outputs, shape (len(pairs), num_labels), for (prompt, completion) pairs."""
        import torch

        tokenizer, model = self._load()
        limit = min(
            tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 1 << 30)
        )
        out = [np.zeros((0, model.config.num_labels))]
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            if tokenizer.chat_template:
                texts = [
                    tokenizer.apply_chat_template(
                        [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                        tokenize=False,
                    )
                    for p, c in batch
                ]
                args: tuple[Any, ...] = (texts,)
                extra = {"add_special_tokens": False}
            else:
                args, extra = ([p for p, _ in batch], [c for _, c in batch]), {}
            enc = tokenizer(
                *args, padding=True, truncation=True, max_length=limit, return_tensors="pt", **extra
            ).to(model.device)
            with torch.inference_mode():
                out.append(model(**enc).logits.float().cpu().numpy())
        return np.concatenate(out)

    def score(self, prompt: str, completions: Sequence[str]) -> list[float]:
        return [reward_of(row) for row in self.logits([(prompt, c) for c in completions])]


def reward_client(
    target: str,
    *,
    api: str = "vllm",
    model: str | None = None,
    api_key: str | None = None,
    label: str | None = None,
    timeout: float = 60.0,
) -> RewardClient:
    """The client for ``target``: an http(s) URL served by ``api`` (``vllm``, which needs
    ``model``, or ``tei``), else a local model directory."""
    if not target.startswith(("http://", "https://")):
        return LocalRewardModel(target)
    if api == "tei":
        return HFEndpointRewardClient(target, api_key, label=label, timeout=timeout)
    if api != "vllm":
        raise ConfigError(f"unknown reward model API {api!r}; use 'vllm' or 'tei'")
    if not model:
        raise ConfigError("a vLLM reward model needs its served model name (model=...)")
    return VLLMRewardClient(target, model, api_key, timeout=timeout)
