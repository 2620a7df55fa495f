"""The HTTP backend: any server speaking OpenAI's ``/v1/completions`` or ``/v1/chat/completions``
(vLLM, SGLang, llama.cpp's server, llama-cpp-python's server), one server or a fleet of them.

One asyncio event loop on a background thread owns one ``httpx.AsyncClient``; `OpenAISampler.sample`
(what the labeler's threads call) hands a coroutine to it, and `OpenAISampler.asample` is the same
for async callers. Requests go round-robin over the endpoints, at most ``per_endpoint`` in flight
per endpoint; a failed request is retried on the next endpoint, with exponential backoff.

Seeds. With one request per sample (n=1), sample j is drawn with ``seeds[j]``, so a resumed run
asks for exactly what the first run would have. With one request for k samples (n=k), the request
carries one seed, ``seeds[0]``: the k choices are a function of (seeds[0], k) and the server's
batching, not of each sample's own seed. Pass ``n_per_request="never"`` to get per-sample seeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import logging
import re
import threading
import time
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Sequence,
)
from concurrent.futures import CancelledError
from typing import Any

import httpx

from howhard.backends.base import Completion, SamplingParams
from howhard.errors import BackendError, ConfigError, HowhardError, UpstreamTimeout
from howhard.redact import Redactor, display_url

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
_CONTEXT = re.compile(r"context (length|size|window)|exceed_context_size", re.IGNORECASE)


def exceeds_context(message: str) -> bool:
    """Whether a server's refusal (a `BackendError`'s message, which quotes its error body) says
    the prompt and ``max_tokens`` exceed the model's context window: vLLM's and llama-cpp-python's
    "maximum context length is N tokens", llama.cpp's "exceeds the available context size"."""
    return _CONTEXT.search(message) is not None


def normalise_endpoint(url: str) -> str:
    """The API base of a server, ending in ``/v1``: ``http://h:8080``, ``http://h:8080/`` and
    ``http://h:8080/v1/`` all give ``http://h:8080/v1``."""
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")) or len(base.split("://", 1)[1]) == 0:
        raise ConfigError(
            f"endpoint {display_url(url)!r} is not an http(s) URL; pass a base URL like "
            "http://127.0.0.1:8080"
        )
    return base if base.endswith("/v1") else base + "/v1"


def completion_payload(
    model: str,
    prompt: str,
    params: SamplingParams,
    n: int,
    seed: int,
    stop: Sequence[str],
    chat: bool,
) -> dict[str, Any]:
    """The JSON body of one request for ``n`` completions of ``prompt`` (for chat, the prompt is
    the one user message). ``stop`` is left out when empty."""
    payload: dict[str, Any] = {"model": model}
    if chat:
        payload["messages"] = [{"role": "user", "content": prompt}]
    else:
        payload["prompt"] = prompt
    payload.update(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        n=n,
        seed=seed,
    )
    if stop:
        payload["stop"] = list(stop)
    return payload


def split_tokens(total: int, texts: Sequence[str]) -> list[int]:
    """Split a total token count over completions in proportion to their text lengths, by largest
    remainder, so the parts are integers that sum exactly to ``total`` (evenly if all texts are
    empty). Exact when every token has the same length in characters, an estimate otherwise."""
    weights = [len(t) for t in texts] if any(texts) else [1] * len(texts)
    shares = [total * w / sum(weights) for w in weights]
    parts = [int(s) for s in shares]
    by_remainder = sorted(range(len(texts)), key=lambda i: (parts[i] - shares[i], i))
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def parse_response(body: Any, chat: bool, n: int) -> list[Completion]:
    """The completions in a response body, in choice-index order; fewer than ``n`` when the server
    returned fewer choices than asked (servers that ignore ``n`` return one).

    Tokens: ``usage.completion_tokens`` counts all choices together; with one choice that is its
    count, with several it is split over them in proportion to their text lengths (`split_tokens`).
    A body without ``usage`` (or without ``completion_tokens``) counts 0 tokens per completion.
    Raises `BackendError` naming what is missing when the body is not a completion response."""
    what = "chat completion" if chat else "completion"
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise BackendError(f"the server's {what} response has no 'choices' list: {_clip(body)}")
    choices = body["choices"]
    if not choices:
        raise BackendError(f"the server's {what} response has no choices: {_clip(body)}")
    if len(choices) > n:
        raise BackendError(f"the server returned {len(choices)} choices where {n} were asked")
    texts, reasons = [], []
    for i, choice in enumerate(sorted(choices, key=_choice_index)):
        if chat:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict) or "content" not in message:
                raise BackendError(f"choice {i} of the chat response has no message.content")
            text = message["content"] or ""  # null content: the model said nothing
        else:
            if not isinstance(choice, dict) or not isinstance(choice.get("text"), str):
                raise BackendError(f"choice {i} of the completion response has no 'text'")
            text = choice["text"]
        if not isinstance(text, str):
            raise BackendError(f"choice {i} of the {what} response holds {text!r}, not text")
        texts.append(text)
        reason = choice.get("finish_reason")
        reasons.append(reason if isinstance(reason, str) else None)
    usage = body.get("usage")
    total = usage.get("completion_tokens", 0) if isinstance(usage, dict) else 0
    if not isinstance(total, int) or total < 0:
        raise BackendError(f"usage.completion_tokens of the {what} response is {total!r}")
    return [
        Completion(t, k, r)
        for t, k, r in zip(texts, split_tokens(total, texts), reasons, strict=True)
    ]


def _choice_index(choice: Any) -> int:
    index = choice.get("index", 0) if isinstance(choice, dict) else 0
    return index if isinstance(index, int) else 0


def _clip(body: Any, limit: int = 200) -> str:
    text = repr(body)
    return text if len(text) <= limit else text[:limit] + "..."


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds from ``now`` (UNIX time): either delay-seconds or an
    HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Fleet:
    """Async requests to a fleet of OpenAI-compatible servers, on the event loop that awaits them
    (the sampler's own loop thread, or the proxy server's loop).

    Requests go round-robin over ``endpoints`` with at most ``per_endpoint`` in flight per
    endpoint. Connection errors, timeouts, HTTP 408, 429 and 5xx are retried up to ``retries``
    times on the next endpoint after ``backoff * 2**attempt`` seconds, or after the server's
    ``Retry-After`` (on 429/503, at most ``max_retry_after``); other errors are not retried. A
    request that still fails raises `BackendError` (its ``status``: the last HTTP status
    answered, if any). ``api_key`` is sent as a bearer token and appears in no message, log or
    repr, nor does the userinfo of an endpoint URL (``http://user:password@host``), even where a
    server echoes them in its error body. ``transport`` and ``sleep`` replace httpx's network
    transport and ``asyncio.sleep`` (tests).

    ``n_per_request``: "auto" asks an endpoint once for all k samples (``n=k``); an endpoint that
    returns fewer choices (or refuses n > 1 with HTTP 400/422, for another reason than the context
    window: `exceeds_context`) is remembered in ``supports_n`` as ignoring ``n``, the choices it
    did return are kept and the rest (and all later draws sent first to it) come from parallel
    n=1 requests. "never" always sends n=1 requests, each with
    its own seed.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        api_key: str | None = None,
        per_endpoint: int = 4,
        n_per_request: str = "auto",
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_retry_after: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ConfigError("no endpoint given; pass at least one URL like http://127.0.0.1:8080")
        if per_endpoint < 1:
            raise ConfigError(f"per_endpoint must be >= 1, got {per_endpoint}")
        if n_per_request not in ("auto", "never"):
            raise ConfigError(f"n_per_request must be 'auto' or 'never', got {n_per_request!r}")
        if retries < 0 or backoff < 0 or max_retry_after < 0 or timeout <= 0:
            raise ConfigError(
                "retries, backoff and max_retry_after must be >= 0 and timeout > 0, got "
                f"{retries}, {backoff}, {max_retry_after}, {timeout}"
            )
        urls = [normalise_endpoint(e) for e in endpoints]
        self.redact = Redactor([api_key], urls)
        # Credentials in a URL (http://user:password@host) go in an Authorization header, never
        # in the URLs called (which httpx logs and errors quote).
        auth = _UserinfoAuth(urls)
        self.endpoints = tuple(
            dict.fromkeys(str(httpx.URL(u).copy_with(userinfo=b"")) for u in urls)
        )
        self.per_endpoint = per_endpoint
        self.concurrency = per_endpoint * len(self.endpoints)
        self.n_per_request = n_per_request
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.max_retry_after = max_retry_after
        self.supports_n: dict[str, bool] = {}  # endpoint -> honours n, once it has answered
        self._sleep = sleep or asyncio.sleep
        self._turn = itertools.count()
        self.client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            auth=auth,
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            ),
        )
        self._limits = {e: asyncio.Semaphore(per_endpoint) for e in self.endpoints}

    async def aclose(self) -> None:
        await self.client.aclose()

    async def draw(
        self, payload: dict[str, Any], seeds: Sequence[int], chat: bool
    ) -> tuple[list[Completion], int]:
        """One completion per seed for the request body ``payload`` (without ``n`` and ``seed``),
        and the prompt tokens the servers counted over all requests made."""
        k = len(seeds)
        if k == 0:
            return [], 0
        turn = next(self._turn)
        first = self.endpoints[turn % len(self.endpoints)]
        if k == 1 or self.n_per_request == "never" or self.supports_n.get(first) is False:
            return await self._singles(payload, seeds, chat, turn)
        try:
            endpoint, body = await self.post(
                api_path(chat), {**payload, "n": k, "seed": seeds[0]}, turn
            )
        except _Refused as e:  # e.g. llama.cpp's chat API: "Only one completion choice is allowed"
            if e.status not in (400, 422) or exceeds_context(str(e)):
                raise  # a prompt over the context window is refused whatever n is
            log.info(
                "%s refused n=%d (%s); drawing one sample per request",
                display_url(e.endpoint),
                k,
                e,
            )
            self.supports_n[e.endpoint] = False
            return await self._singles(payload, seeds, chat)
        got = self._parse(body, chat, k)
        if endpoint not in self.supports_n:
            log.info("%s %s n", display_url(endpoint), "honours" if len(got) == k else "ignores")
        self.supports_n[endpoint] = len(got) == k
        prompt_tokens = _prompt_tokens(body)
        if len(got) < k:
            more, more_prompt = await self._singles(payload, seeds[len(got) :], chat)
            got, prompt_tokens = got + more, prompt_tokens + more_prompt
        return got, prompt_tokens

    async def _singles(
        self, payload: dict[str, Any], seeds: Sequence[int], chat: bool, turn: int | None = None
    ) -> tuple[list[Completion], int]:
        """One n=1 request per seed, concurrently (the first on endpoint ``turn`` if given, the
        next ones round-robin); the first failure is raised after all have ended."""
        turns = [next(self._turn) if turn is None or j else turn for j in range(len(seeds))]

        async def one(seed: int, turn: int) -> tuple[Completion, int]:
            _, body = await self.post(api_path(chat), {**payload, "n": 1, "seed": seed}, turn)
            return self._parse(body, chat, 1)[0], _prompt_tokens(body)

        results = await asyncio.gather(
            *(one(s, t) for s, t in zip(seeds, turns, strict=True)), return_exceptions=True
        )
        done: list[tuple[Completion, int]] = []
        for r in results:
            if isinstance(r, BaseException):
                raise r
            done.append(r)
        return [c for c, _ in done], sum(p for _, p in done)

    def _parse(self, body: Any, chat: bool, n: int) -> list[Completion]:
        """`parse_response`, its error message redacted (it quotes the body)."""
        try:
            return parse_response(body, chat, n)
        except BackendError as e:
            raise BackendError(self.redact(str(e))) from None

    async def post(
        self, path: str, payload: dict[str, Any], turn: int | None = None
    ) -> tuple[str, Any]:
        """POST ``payload`` to ``path`` (e.g. ``/completions``) of endpoint ``turn`` (default: the
        next in round-robin), retrying on the next ones; the endpoint that answered and its JSON
        body."""
        async with self.send(path, payload, turn, read=True) as (endpoint, url, response):
            try:
                return endpoint, response.json()
            except ValueError:
                raise BackendError(
                    self.redact(
                        f"{url} answered HTTP {response.status_code} with a body that is not "
                        f"JSON ({_clip(response.text)}); is it an OpenAI-compatible server?"
                    )
                ) from None

    @contextlib.asynccontextmanager
    async def send(
        self, path: str, payload: dict[str, Any], turn: int | None = None, read: bool = False
    ) -> AsyncIterator[tuple[str, str, httpx.Response]]:
        """POST with retries until a server answers with success; yields (endpoint, url, the
        response), its body read when ``read``, else still to stream (then a failure while
        streaming is the caller's to handle: it is not retried). The endpoint's slot is held
        until the block ends."""
        turn = next(self._turn) if turn is None else turn
        failures: list[str] = []  # each starts with the URL (its userinfo stripped) and ": "
        status: int | None = None  # of the last failure, if it was an HTTP answer
        for attempt in range(self.retries + 1):
            endpoint = self.endpoints[(turn + attempt) % len(self.endpoints)]
            url = endpoint + path
            shown = display_url(url)
            wait = status = None
            async with self._limits[endpoint]:
                response = None
                try:
                    request = self.client.build_request("POST", url, json=payload)
                    response = await self.client.send(request, stream=True)
                    if read or not response.is_success:
                        await response.aread()
                except httpx.TimeoutException as e:
                    failures.append(
                        f"{shown}: no answer within {self.timeout}s ({type(e).__name__})"
                    )
                except httpx.RequestError as e:
                    failures.append(self.redact(f"{shown}: {type(e).__name__}: {e}"))
                else:
                    if response.is_success:
                        try:
                            yield endpoint, url, response
                            return
                        finally:
                            await response.aclose()
                    status = response.status_code
                    detail = self.redact(f"{shown}: HTTP {status}: {_clip(response.text)}")
                    if response.status_code not in RETRY_STATUS:
                        raise _Refused(
                            f"{detail}. {_advice(response.status_code)}",
                            endpoint,
                            response.status_code,
                        )
                    failures.append(detail)
                    if response.status_code in (429, 503):
                        wait = retry_after_seconds(response.headers.get("retry-after"))
                finally:
                    if response is not None and not response.is_closed:
                        await response.aclose()
            if attempt == self.retries:
                break
            delay = self.backoff * 2**attempt if wait is None else min(wait, self.max_retry_after)
            log.info("%s; retrying in %.2fs", failures[-1], delay)
            await self._sleep(delay)
        timed_out = all(" no answer within " in f for f in failures)
        raise (UpstreamTimeout if timed_out else BackendError)(
            f"no answer after {len(failures)} attempts (last: {failures[-1]}; endpoints tried: "
            f"{', '.join(dict.fromkeys(f.split(': ', 1)[0] for f in failures))}). Check that the "
            "server is running and reachable, or allow more retries or a longer timeout; "
            "rerunning draws the missing samples.",
            status,
        )


def api_path(chat: bool) -> str:
    """The API path of a completion request: chat or plain."""
    return "/chat/completions" if chat else "/completions"


def _prompt_tokens(body: Any) -> int:
    usage = body.get("usage") if isinstance(body, dict) else None
    tokens = usage.get("prompt_tokens", 0) if isinstance(usage, dict) else 0
    return tokens if isinstance(tokens, int) and tokens >= 0 else 0


class OpenAISampler:
    """Draws completions from OpenAI-compatible servers through a `Fleet` (see it for endpoints,
    retries and ``n_per_request``; the module docstring for seeds), for the labeler's threads.

    One asyncio event loop on a background thread owns the fleet. ``model`` is the model name sent
    to the servers and the store's ``model_id`` (so the fleet may change between runs); ``chat``
    selects ``/v1/chat/completions`` (the prompt as one user message) over ``/v1/completions``;
    ``concurrency`` (per_endpoint times the endpoints) tells the labeler how many prompts to keep
    in flight. Every other keyword goes to `Fleet`.
    """

    def __init__(self, endpoints: Sequence[str], model: str, *, chat: bool = False, **fleet: Any):
        if not model:
            raise ConfigError("the model name is empty; pass the name the server serves")
        self.model = self.model_id = model
        self.chat = chat
        self.fleet = Fleet(endpoints, **fleet)
        self.endpoints, self.per_endpoint = self.fleet.endpoints, self.fleet.per_endpoint
        self.concurrency, self.n_per_request = self.fleet.concurrency, self.fleet.n_per_request
        self.supports_n = self.fleet.supports_n
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="howhard-openai", daemon=True
        )
        self._thread.start()
        self._closed = weakref.finalize(self, _shutdown, self._loop, self._thread, self.fleet)

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        if not self._thread.is_alive():
            coroutine.close()
            raise HowhardError("this OpenAISampler is closed; make a new one")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt in the caller: stop the requests too
            raise

    def __repr__(self) -> str:
        return (
            f"OpenAISampler(endpoints={list(self.endpoints)!r}, model={self.model!r}, "
            f"chat={self.chat}, per_endpoint={self.per_endpoint}, "
            f"n_per_request={self.n_per_request!r})"
        )

    def __enter__(self) -> OpenAISampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the event loop thread (idempotent)."""
        self._closed()

    def sample(
        self, prompt: str, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
    ) -> list[Completion]:
        """One completion of ``prompt`` per seed, in order (blocking; thread-safe)."""
        try:
            return list(self._call(self._asample(prompt, params, seeds, stop)))
        except CancelledError as e:
            raise BackendError("the request was cancelled because the sampler closed") from e

    async def asample(
        self, prompt: str, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
    ) -> list[Completion]:
        """`sample` for async callers, from any event loop: the requests run in this sampler's
        loop; cancelling the caller cancels them."""
        if asyncio.get_running_loop() is self._loop:
            return await self._asample(prompt, params, seeds, stop)
        if not self._thread.is_alive():
            raise HowhardError("this OpenAISampler is closed; make a new one")
        future = asyncio.run_coroutine_threadsafe(
            self._asample(prompt, params, seeds, stop), self._loop
        )
        return await asyncio.wrap_future(future)

    async def _asample(
        self, prompt: str, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
    ) -> list[Completion]:
        payload = completion_payload(self.model, prompt, params, 1, 0, stop, self.chat)
        del payload["n"], payload["seed"]
        completions, _ = await self.fleet.draw(payload, seeds, self.chat)
        return completions


class _UserinfoAuth(httpx.Auth):
    """HTTP basic authentication with the user and password that an endpoint's URL carried, for
    every request to that endpoint's origin (as httpx would do with the URL itself)."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.credentials: dict[tuple[str, str, int | None], httpx.BasicAuth] = {}
        for text in urls:
            url = httpx.URL(text)
            if url.userinfo:
                origin = (url.scheme, url.host, url.port)
                self.credentials[origin] = httpx.BasicAuth(url.username, url.password)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        basic = self.credentials.get((request.url.scheme, request.url.host, request.url.port))
        if basic is None:
            yield request
        else:
            yield from basic.auth_flow(request)


class _Refused(BackendError):
    """A request answered with an HTTP error that retrying would not fix."""

    def __init__(self, message: str, endpoint: str, status: int) -> None:
        super().__init__(message, status)
        self.endpoint = endpoint


def _advice(status: int) -> str:
    if status in (401, 403):
        return "Check the API key given to the sampler."
    if status == 404:
        return "Check the endpoint URL and whether the server offers this API (chat or not)."
    return "The server refused the request; check the model name and the sampling flags."


async def _cancel_and_close(fleet: Fleet) -> None:
    """Cancel every request in flight (their callers get a `BackendError`), close the client."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await fleet.aclose()


def _shutdown(loop: asyncio.AbstractEventLoop, thread: threading.Thread, fleet: Fleet) -> None:
    if thread.is_alive():
        future = asyncio.run_coroutine_threadsafe(_cancel_and_close(fleet), loop)
        try:
            future.result(timeout=10)
        except Exception as e:  # closing must not fail; the connections die with the loop
            log.debug("closing the HTTP client failed: %s", e)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
    loop.close()
