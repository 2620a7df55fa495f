"""Server-side embeddings: the feature vector of a text from the serving model's own endpoint, so a
predictor on the served model's states needs no local copy of the model.

Three APIs (``api``), each a request per batch of texts:

- ``openai``: ``POST /v1/embeddings`` ``{"model", "input": [texts]}`` (OpenAI, vLLM, llama.cpp's
  ``llama-server``, llama-cpp-python's ``llama_cpp.server``); the answer's ``data[i].embedding``.
- ``llamacpp``: ``POST /embedding`` ``{"content": [texts]}`` (llama.cpp's ``llama-server``); the
  answer is a list of ``{"index", "embedding"}`` (or one ``{"embedding"}``).
- ``pooling``: ``POST /pooling`` ``{"model", "input": [texts]}`` (vLLM); ``data[i].data``.

A server answers with one vector per text (it pooled the tokens itself: vLLM, OpenAI,
``llama-server --pooling mean|last|cls``) or with one vector per token (llama-cpp-python's server
for a causal LM, ``llama-server --pooling none``). ``pooling`` says which is expected and is
recorded with a predictor: ``last`` takes the last token's vector (the state from which the model
starts answering, as the ``hidden`` source: for the same GGUF the two agree bit for bit), ``mean``
the mean over tokens, ``server`` the server's own pooled vector. A mismatch is an error naming the
fix. (An answer of exactly one row per text is read as pooled by the server under ``server`` and
as the text's one token under ``last``/``mean``: the answer cannot tell them apart.)

llama-cpp-python's server (0.3.x) answers a multi-text ``/v1/embeddings`` request with per-token
vectors read at wrong offsets for every text after the first (``Llama.embed`` advances by tokens,
not tokens x dimension), so an ``openai`` answer with per-token vectors to a multi-text request is
discarded and the texts are sent one per request from then on. (It also cuts a text to its first
``n_batch`` tokens, 512 by default: a longer text's "last" token is its 512th.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from howhard.backends.openai import RETRY_STATUS, normalise_endpoint, retry_after_seconds
from howhard.errors import BackendError, ConfigError, UpstreamTimeout
from howhard.redact import Redactor, display_url

log = logging.getLogger(__name__)

APIS = {"openai": "/v1/embeddings", "llamacpp": "/embedding", "pooling": "/pooling"}
POOLINGS = ("last", "mean", "server")


@dataclass(frozen=True)
class EmbeddingServer:
    """Where server-side embeddings come from, and how to read them. Never saved with a
    predictor: a predictor records its ``api``, ``pooling`` and model name, and is given the URL
    (and key) again where it is used.

    ``url``: the server's base URL (``http://host:8000``; a trailing ``/v1`` is dropped).
    ``api``: one of `APIS`. ``pooling``: one of `POOLINGS` (see the module docstring).
    ``batch_size``: texts per request. ``timeout``, ``retries``, ``backoff``: per request; a
    connection error, timeout, HTTP 408, 429 or 5xx is retried after ``backoff * 2**attempt``
    seconds (or the server's Retry-After)."""

    url: str
    api_key: str | None = field(default=None, repr=False)
    api: str = "openai"
    pooling: str = "last"
    batch_size: int = 32
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 0.5

    def __post_init__(self) -> None:
        normalise_endpoint(self.url)
        if self.api not in APIS:
            raise ConfigError(
                f"feature_api must be one of {', '.join(APIS)}, got {self.api!r}",
                param="feature_api",
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(
                f"feature_pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}",
                param="feature_pooling",
            )
        if self.batch_size < 1 or self.retries < 0 or self.backoff < 0 or self.timeout <= 0:
            raise ConfigError(
                "need batch_size >= 1, retries >= 0, backoff >= 0 and timeout > 0, got "
                f"{self.batch_size}, {self.retries}, {self.backoff}, {self.timeout}"
            )

    @property
    def root(self) -> str:
        """The base URL without ``/v1`` (the APIs' paths start at the root)."""
        return normalise_endpoint(self.url).removesuffix("/v1")


def embeddings_request(api: str, model: str, texts: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """The path and JSON body of one embeddings request for ``texts`` to ``api``."""
    if api == "llamacpp":
        return APIS[api], {"content": list(texts)}
    return APIS[api], {"model": model, "input": list(texts)}


def parse_embeddings(body: Any, api: str, n: int, pooling: str) -> np.ndarray:
    """The (n, dimension) float32 features in an embeddings answer ``body`` to a request of
    ``n`` texts, in request order (by each item's ``index``), pooled as ``pooling`` says:
    per-token vectors by the ``last`` token or their ``mean``; a pooled vector as given when
    ``pooling`` is ``server``. Raises `BackendError` naming what the body lacks."""
    items = _items(body, api)
    if len(items) != n:
        raise BackendError(f"the embeddings answer holds {len(items)} vectors for {n} texts")
    key = "data" if api == "pooling" else "embedding"
    rows: list[np.ndarray] = []
    for i, item in enumerate(sorted(items, key=_index)):
        if _index(item) != i:
            raise BackendError(f"the embeddings answer's indices are not 0..{n - 1}")
        try:
            v = np.asarray(item[key], dtype=np.float32)
        except (KeyError, TypeError, ValueError):
            raise BackendError(
                f"item {i} of the embeddings answer has no numeric {key!r}: {_clip(item)}"
            ) from None
        rows.append(_pool(v, i, pooling))
    dims = {r.shape[0] for r in rows}
    if len(dims) != 1 or 0 in dims:
        raise BackendError(f"the embeddings answer's vectors have sizes {sorted(dims)}")
    out = np.stack(rows)
    if not np.isfinite(out).all():
        raise BackendError("the embeddings answer holds NaN or infinite values")
    return out


def per_token(body: Any, api: str) -> bool:
    """Whether an embeddings answer holds a list of vectors (one per token) for some text."""
    key = "data" if api == "pooling" else "embedding"
    for item in _items(body, api):
        v = item.get(key) if isinstance(item, dict) else None
        if isinstance(v, list) and v and isinstance(v[0], list):
            return True
    return False


def _items(body: Any, api: str) -> list[Any]:
    if api == "llamacpp":
        if isinstance(body, dict) and "embedding" in body:  # one text, older llama-server
            return [{"index": 0, "embedding": body["embedding"]}]
        if isinstance(body, list):
            return body
        raise BackendError(f"the /embedding answer is not a list of embeddings: {_clip(body)}")
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise BackendError(f"the embeddings answer has no 'data' list: {_clip(body)}")
    return list(body["data"])


def _index(item: Any) -> int:
    index = item.get("index", 0) if isinstance(item, dict) else 0
    return index if isinstance(index, int) else -1


def _pool(v: np.ndarray, i: int, pooling: str) -> np.ndarray:
    """One text's vector from what the server gave: a vector (pooled by the server) or a matrix
    (a row per token)."""
    if v.ndim == 1:
        if pooling != "server":
            raise BackendError(
                f"the server pooled the tokens of text {i} itself (one vector per text); pass "
                "pooling='server', or start the server with pooling 'none' (llama-server) to "
                "pool by the last token or the mean"
            )
        return v
    if v.ndim != 2 or v.shape[0] == 0:
        raise BackendError(f"the vector of text {i} has shape {v.shape}, not (d,) or (tokens, d)")
    if pooling == "last":
        return v[-1]
    if pooling == "mean":
        return v.mean(axis=0)
    if v.shape[0] != 1:
        raise BackendError(
            f"the server answered one vector per token ({v.shape[0]} for text {i}), not a "
            "pooled one; pass pooling='last' or 'mean'"
        )
    return v[0]


def _clip(body: Any, limit: int = 200) -> str:
    text = repr(body)
    return text if len(text) <= limit else text[:limit] + "..."


def _advice(status: int, text: str, api: str) -> str | None:
    """What to do about an answer that retrying will not fix, when it says that the server has
    no embeddings (None: not recognised)."""
    lower = text.lower()
    if "embedding=true" in lower:  # llama-cpp-python: RuntimeError -> HTTP 500
        return (
            "the server was started without embeddings: start llama_cpp.server with "
            "--embedding true"
        )
    if "--embedding" in lower or ("not support" in lower and "embedding" in lower):
        return (
            "the server was started without embeddings: start llama-server with --embeddings "
            "(and --pooling none for pooling 'last' or 'mean'); vLLM: serve a pooling model "
            "(vllm serve MODEL --runner pooling)"
        )
    if status == 404:
        return (
            f"the server does not offer {APIS[api]}; check the URL and feature_api (openai: "
            "/v1/embeddings, llamacpp: /embedding, pooling: vLLM's /pooling)"
        )
    return None


def served_model(server: EmbeddingServer) -> str:
    """The first model the server lists at ``GET /v1/models`` (the name features are recorded
    and cached under when none is given)."""
    headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
    url = server.root + "/v1/models"
    try:
        answer = httpx.get(url, headers=headers, timeout=server.timeout)
        return str(answer.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        shown = Redactor([server.api_key], [server.url])(f"{display_url(url)}: {e}")
        raise ConfigError(
            f"cannot ask the embedding server for its model name ({shown}); start it, check "
            "feature_url, or pass the served model's name as model",
            param=("feature_url", "model"),
        ) from None


class ServerEmbeddings:
    """Features from an embedding server (`EmbeddingServer`): ``transform(texts)`` sends the
    texts ``batch_size`` at a time and returns one pooled row per text. ``model`` is the name
    sent to the server and part of ``name`` (what feature caches record); ``dim`` is the
    dimension once the server has answered. ``sleep`` replaces ``time.sleep`` between retries
    and ``transport`` httpx's network transport (tests). One caller at a time."""

    def __init__(
        self,
        server: EmbeddingServer,
        model: str,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not model:
            raise ConfigError("the embedding model name is empty; pass the served model's name")
        self.server, self.model = server, model
        self.name = f"server:{model}"
        self.dim: int | None = None
        self.one_per_request = False
        self._redact = Redactor([server.api_key], [server.url])
        self._sleep = sleep
        auth = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
        self._client = httpx.Client(headers=auth, timeout=server.timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32: row i the pooled vector of texts[i]."""
        rows: list[np.ndarray] = []
        start = 0
        while start < len(texts):
            size = 1 if self.one_per_request else self.server.batch_size
            chunk = list(texts[start : start + size])
            path, payload = embeddings_request(self.server.api, self.model, chunk)
            body = self._post(path, payload)
            if len(chunk) > 1 and self.server.api == "openai" and per_token(body, "openai"):
                log.info(
                    "%s answers /v1/embeddings with per-token vectors (llama-cpp-python): "
                    "sending one text per request",
                    display_url(self.server.root),
                )
                self.one_per_request = True  # its multi-text answers are wrong; see the module
                continue
            try:
                x = parse_embeddings(body, self.server.api, len(chunk), self.server.pooling)
            except BackendError as e:
                where = display_url(self.server.root + path)
                raise BackendError(self._redact(f"{where}: {e}")) from None
            if self.dim is not None and x.shape[1] != self.dim:
                raise BackendError(
                    f"{display_url(self.server.root)} answered vectors of {x.shape[1]} "
                    f"dimensions after {self.dim}; is it the same model?"
                )
            self.dim = x.shape[1]
            rows.append(x)
            start += len(chunk)
        if not rows:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return np.concatenate(rows)

    def _post(self, path: str, payload: dict[str, Any]) -> Any:
        """POST ``payload`` with retries; the JSON answer, or a `BackendError` naming the URL and
        what to do."""
        url = self.server.root + path
        shown = display_url(url)
        failures: list[str] = []
        status: int | None = None
        for attempt in range(self.server.retries + 1):
            wait = status = None
            try:
                response = self._client.post(url, json=payload)
            except httpx.TimeoutException as e:
                failures.append(f"no answer within {self.server.timeout}s ({type(e).__name__})")
            except httpx.RequestError as e:
                failures.append(self._redact(f"{type(e).__name__}: {e}"))
            else:
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError:
                        raise BackendError(
                            self._redact(
                                f"{shown} answered a body that is not JSON "
                                f"({_clip(response.text)}); is feature_api right?"
                            )
                        ) from None
                status = response.status_code
                detail = self._redact(f"HTTP {status}: {_clip(response.text)}")
                advice = _advice(status, response.text, self.server.api)
                if advice is not None or status not in RETRY_STATUS:
                    fix = advice or "the server refused the request; check the model name"
                    raise BackendError(f"{shown}: {detail}. {fix}", status)
                failures.append(detail)
                if status in (429, 503):
                    wait = retry_after_seconds(response.headers.get("retry-after"))
            if attempt < self.server.retries:
                self._sleep(self.server.backoff * 2**attempt if wait is None else min(wait, 60.0))
        timed_out = all(f.startswith("no answer within") for f in failures)
        raise (UpstreamTimeout if timed_out else BackendError)(
            f"{shown}: no embeddings after {len(failures)} attempts (last: {failures[-1]}); "
            "check that the embedding server runs at feature_url, or allow more retries",
            status,
        )
