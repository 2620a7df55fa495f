"""The proxy: an OpenAI-compatible ASGI app that decides, per request, how many samples to draw
(and from which decoder), draws them upstream, and returns the one its reranker picks.

Per request: authenticate, validate (nothing goes upstream before), featurise the query (the
last user message, or the prompt) and predict its gains Δ̂(x, 1..K) (and, when routing, its
router score), decide k with the paced threshold (`BudgetPacer`; `SharePacer` for the route),
draw k samples (``n=k`` where the upstream accepts it, parallel requests where not), pick one
(majority vote, a reward model, or the verifier the request names) and answer with one choice.
``usage`` counts every sample drawn; ``x-howhard-*`` headers tell the decision.

In menu mode (``[[decoder]]`` tables in the config) a request is instead drawn in rounds by a
menu policy over the decoders' upstreams (`howhard.serve.rounds`), its family's knob paced to the
budget in cost (`KnobPacer`); ``usage`` sums every sample of every decoder, and the headers
``x-howhard-samples``, ``-rounds``, ``-decoders`` (``small:3,large:1``), ``-cost``, ``-stop`` and
``-knob`` tell what was drawn. A streamed request is answered once the rounds end, the chosen
sample in one chunk; but when the configuration makes the first round final (``max_rounds = 1``)
and the policy draws it as one sample, that sample is passed through as the upstream streams it
(`_StreamedSample`), and counted when it ends.

All state lives in one `Proxy` object made at start-up; `create_app` wires it to routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import httpx
import numpy as np
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from howhard.backends.base import Completion
from howhard.backends.openai import Fleet, api_path, exceeds_context
from howhard.errors import BackendError, HowhardError, UpstreamTimeout
from howhard.menu import Decoder, FloatArray, MenuPolicy, PolicyFamily, QueryState, Seen
from howhard.pool import prompt_hash
from howhard.redact import display_url
from howhard.rerank.rerankers import Reranker, VerifierReranker, top_index
from howhard.serve.config import ServeConfig
from howhard.serve.metrics import Metrics
from howhard.serve.pacing import BudgetPacer, KnobPacer, SharePacer
from howhard.serve.requestlog import RequestLog
from howhard.serve.rounds import (
    Caps,
    DrawFn,
    Rounds,
    RoundsFailed,
    SpendLimiter,
    draw_rounds,
    round_cost,
)
from howhard.serve.schema import (
    ApiError,
    ChatRequest,
    Request,
    check_content_type,
    decode_body,
    parse_request,
    upstream_payload,
)
from howhard.tasks import get_task
from howhard.tasks.base import Query

log = logging.getLogger("howhard.serve")
T = TypeVar("T")


@dataclass(frozen=True)
class Decision:
    samples: int
    route: str  # "weak" (the upstreams) or "strong"
    predicted: float  # predicted one-sample reward q̂(x, 1)
    predicted_at_k: float  # predicted best-of-k reward q̂(x, k) on the route's samples


@dataclass
class Upstream:
    """One decoder: its fleet of servers and the model name they serve."""

    fleet: Fleet
    model: str


@dataclass
class MenuState:
    """Menu mode's state: the decoders and their upstreams, the caps, the spend bucket, the
    answer extraction majority vote counts; made ready with the fitted policy family and its
    pacer (or a fixed ``knob``) and, when decoders have predictors, ``predict`` (query texts ->
    per-decoder predictions, NaN where none), run in batches on the decider thread."""

    decoders: list[tuple[Decoder, Upstream]]
    caps: Caps
    answer: Callable[[str], str | None]
    spend: SpendLimiter | None = None
    log: RequestLog | None = None
    family: PolicyFamily | None = None
    pacer: KnobPacer | None = None
    knob: float | None = None
    predictions: BatchQueue[FloatArray] | None = None
    policies: dict[float, MenuPolicy] = field(default_factory=dict)

    def policy(self, knob: float) -> MenuPolicy:
        """The family's policy at ``knob`` (made once per knob)."""
        assert self.family is not None
        if knob not in self.policies:
            self.policies[knob] = self.family.at(knob)
        return self.policies[knob]

    @property
    def names(self) -> list[str]:
        return [d.name for d, _ in self.decoders]


class SampleLimiter:
    """At most ``cap`` upstream samples in flight over all requests, granted first come, first
    served (a request for many samples is not overtaken by later small ones); at most
    ``max_waiting`` requests wait (more are refused: the caller answers 429)."""

    def __init__(self, cap: int, max_waiting: int) -> None:
        self.cap, self.max_waiting = cap, max_waiting
        self.in_flight = 0
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for _, f in self._queue)

    @contextlib.asynccontextmanager
    async def hold(self, k: int) -> AsyncIterator[None]:
        if k > self.cap:  # config validation makes this impossible: max_per_query <= cap
            raise ApiError(500, f"a request may not hold {k} > {self.cap} samples", "server_error")
        if not self._queue and self.in_flight + k <= self.cap:
            self.in_flight += k
        else:
            if self.waiting >= self.max_waiting:
                raise ApiError(
                    429,
                    "the server is at its concurrency cap; retry shortly",
                    "rate_limit_error",
                    headers={"Retry-After": "1"},
                )
            granted = asyncio.get_running_loop().create_future()
            self._queue.append((k, granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():  # granted, then cancelled
                    self.in_flight -= k
                self._grant()
                raise
        try:
            yield
        finally:
            self.in_flight -= k
            self._grant()

    def _grant(self) -> None:
        """Wake the waiters at the head of the queue while they fit."""
        while self._queue:
            k, granted = self._queue[0]
            if granted.done():  # cancelled while waiting
                self._queue.popleft()
            elif self.in_flight + k <= self.cap:
                self._queue.popleft()
                self.in_flight += k
                granted.set_result(None)
            else:
                break


class BatchQueue(Generic[T]):
    """Calls of a blocking ``run(texts) -> results`` on ``executor``, many texts at once: callers
    queue a text and await its result; a worker takes everything queued (at most
    ``max_batch``; when fewer, after waiting up to ``wait`` seconds for more to join), runs them
    in one call, in arrival order, and answers each caller. While a batch runs, new texts queue
    for the next one, so the batches grow with the load. A caller that is cancelled before its
    batch runs is left out; one cancelled while it runs gets its result ``discard``-ed (on
    ``executor``). ``observe`` hears each batch's size."""

    def __init__(
        self,
        run: Callable[[list[str]], Sequence[T]],
        executor: Executor,
        max_batch: int,
        wait: float = 0.0,
        discard: Callable[[T], None] | None = None,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        self.run, self.executor, self.max_batch, self.wait = run, executor, max_batch, wait
        self.discard, self.observe = discard, observe
        self._queue: deque[tuple[str, asyncio.Future[T]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._full: asyncio.Event | None = None  # set when max_batch texts are queued

    async def submit(self, text: str) -> T:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[T] = loop.create_future()
        self._queue.append((text, result))
        if self._full is not None and len(self._queue) >= self.max_batch:
            self._full.set()
        if self._worker is None:
            self._worker = loop.create_task(self._work())
        return await result

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                if self.wait > 0 and len(self._queue) < self.max_batch:
                    self._full = asyncio.Event()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self.wait)
                    self._full = None
                batch: list[tuple[str, asyncio.Future[T]]] = []
                while self._queue and len(batch) < self.max_batch:
                    text, result = self._queue.popleft()
                    if not result.done():  # not cancelled while it waited
                        batch.append((text, result))
                if not batch:
                    continue
                if self.observe is not None:
                    self.observe(len(batch))
                try:
                    texts = [text for text, _ in batch]
                    answers = list(await loop.run_in_executor(self.executor, self.run, texts))
                    if len(answers) != len(batch):
                        raise RuntimeError(f"{len(answers)} answers to {len(batch)} texts")
                except Exception as e:
                    for _, result in batch:
                        if not result.done():
                            result.set_exception(e)
                    continue
                for (_, result), answer in zip(batch, answers, strict=True):
                    if not result.done():
                        result.set_result(answer)
                    elif self.discard is not None:
                        await loop.run_in_executor(self.executor, self.discard, answer)
        finally:
            self._worker = None


class Proxy:
    """The server's state. ``decide(queries)`` is the (blocking) decision for query texts in
    arrival order, called with every request queued at the time (`BatchQueue`); the rest is I/O.
    Made by `howhard.serve.build_proxy` from a `ServeConfig` (tests may pass their own parts).

    Made without ``decide`` and ``pacer``, the proxy is starting: ``starting`` says why it is not
    ready (/ready and completion requests answer 503 with it) until `ready` is called."""

    def __init__(
        self,
        config: ServeConfig,
        decide: Callable[[Sequence[str]], list[Decision]] | None,
        weak: Upstream,
        strong: Upstream | None,
        majority: Reranker,
        reward_model: Reranker | None,
        pacer: BudgetPacer | None,
        share_pacer: SharePacer | None = None,
        menu: MenuState | None = None,
    ) -> None:
        self.config, self.weak, self.strong = config, weak, strong
        self.majority, self.reward_model = majority, reward_model
        self.menu = menu
        self.metrics = Metrics(config.budget, self._average)
        self.metrics.menu = menu is not None
        if menu is not None:
            self.metrics.knob = lambda: (
                menu.pacer.mean_knob if menu.pacer else menu.knob or math.nan
            )
        self.limiter = SampleLimiter(config.max_concurrency, config.max_waiting)
        self.rng = np.random.default_rng(config.seed)
        # One thread decides (featurisers are neither thread-safe nor faster in parallel).
        self.decider = ThreadPoolExecutor(1, thread_name_prefix="howhard-decide")
        self.decisions = BatchQueue(
            lambda texts: self.decide(texts),
            self.decider,
            config.decision_batch,
            config.decision_wait_ms / 1000,
            discard=self.refund,
            observe=self.metrics.decision_batch.observe,
        )
        self._keys = [k.encode() for k in config.api_keys]
        self.redact = config.redactor()  # every message that leaves the process goes through it
        self.starting: str | None = "starting"
        self.failed = False
        self.decide: Callable[[Sequence[str]], list[Decision]]
        self.pacer: BudgetPacer | None = None
        self.share_pacer: SharePacer | None = None
        if decide is not None and pacer is not None:
            self.ready(decide, pacer, share_pacer)

    def _average(self) -> float:
        if self.menu is not None and self.menu.pacer is not None:
            return self.menu.pacer.average
        return self.pacer.average if self.pacer else self.config.budget

    def ready_menu(
        self,
        family: PolicyFamily,
        pacer: KnobPacer | None,
        knob: float | None = None,
        predict: Callable[[list[str]], Sequence[FloatArray]] | None = None,
    ) -> None:
        """Start answering in menu mode: the fitted ``family`` at the knobs ``pacer`` paces (or
        at the fixed ``knob``), with ``predict`` for the per-decoder predictions."""
        menu = self.menu
        assert menu is not None and (pacer is None) != (knob is None)
        menu.family, menu.pacer, menu.knob = family, pacer, knob
        if predict is not None:
            menu.predictions = BatchQueue(
                predict,
                self.decider,
                self.config.decision_batch,
                self.config.decision_wait_ms / 1000,
                observe=self.metrics.decision_batch.observe,
            )
        self.starting = None
        self.metrics.ready = 1

    def upstreams(self) -> list[tuple[str, Upstream]]:
        """The upstreams by name (/ready checks each): the menu's decoders, or weak and strong."""
        if self.menu is not None:
            return [(f"decoder {d.name!r}", u) for d, u in self.menu.decoders]
        named = [("upstream", self.weak), ("strong", self.strong)]
        return [(n, u) for n, u in named if u is not None]

    def ready(
        self,
        decide: Callable[[Sequence[str]], list[Decision]],
        pacer: BudgetPacer,
        share_pacer: SharePacer | None = None,
    ) -> None:
        """Start answering: decide with ``decide``, count spending in the pacers."""
        self.decide, self.pacer, self.share_pacer = decide, pacer, share_pacer
        self.starting = None  # last: a request that sees it unset finds the rest in place
        self.metrics.ready = 1

    def fail(self, reason: str) -> None:
        """Start-up failed: stay unready, saying why."""
        self.failed, self.starting = True, reason

    @property
    def models(self) -> tuple[str, ...]:
        """Model names clients may ask for (in menu mode "howhard" unless configured)."""
        if self.menu is not None:
            return self.config.models or ("howhard",)
        return self.config.models or tuple(dict.fromkeys((self.weak.model, "howhard")))

    def check_ready(self) -> None:
        """A 503 (with Retry-After) while the proxy is starting or failed to start."""
        if self.starting is not None:
            raise ApiError(
                503,
                self.redact(f"the server is not ready: {self.starting}"),
                "server_error",
                code="not_ready",
                headers={} if self.failed else {"Retry-After": "5"},
            )

    def refund(self, decision: Decision) -> None:
        """Take back the decision of a request that drew nothing (refused, or the upstream
        failed), so the pacers count only samples drawn."""
        if self.share_pacer is not None:
            self.share_pacer.refund(decision.route == "strong")
        if decision.route == "weak" and self.pacer is not None:
            self.pacer.refund(decision.samples)

    def greedy(self, decision: Decision) -> Decision:
        """The decision drawing one sample (a request at temperature 0), the pacer given back
        the samples it no longer draws."""
        if self.pacer is not None:  # only the weak route draws several
            self.pacer.trim(decision.samples - 1)
        return replace(decision, samples=1, predicted_at_k=decision.predicted)

    async def aclose(self) -> None:
        self.decider.shutdown(wait=False, cancel_futures=True)
        fleets = {id(u.fleet): u.fleet for _, u in self.upstreams()}
        fleets.setdefault(id(self.weak.fleet), self.weak.fleet)
        for fleet in fleets.values():
            await fleet.aclose()
        if self.menu is not None and self.menu.log is not None:
            self.menu.log.close()

    def authorise(self, request: HttpRequest) -> None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        # compare_digest against every key: the time taken does not tell which prefix matched.
        ok = [hmac.compare_digest(key.strip().encode(), k) for k in self._keys]
        if scheme.lower() != "bearer" or not any(ok):
            raise ApiError(
                401,
                "missing or invalid API key; send the header Authorization: Bearer <key>",
                code="invalid_api_key",
            )

    async def read_json(self, request: HttpRequest) -> Any:
        """The request's JSON body (`decode_body`), declared as JSON (else 415), at most
        ``max_body_bytes`` long (else 413), all of it within ``body_timeout`` seconds (else 408,
        and the connection is closed)."""
        check_content_type(request.headers.get("content-type"))
        declared = request.headers.get("content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.config.max_body_bytes
        ):
            raise ApiError(413, f"the body is larger than {self.config.max_body_bytes} bytes")
        body = bytearray()
        try:
            async with asyncio.timeout(self.config.body_timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > self.config.max_body_bytes:
                        raise ApiError(
                            413, f"the body is larger than {self.config.max_body_bytes} bytes"
                        )
        except TimeoutError:
            raise ApiError(
                408,
                f"the body did not arrive within {self.config.body_timeout:g} s of the headers; "
                "send it at once",
                code="timeout",
                headers={"Connection": "close"},
            ) from None
        except ClientDisconnect:
            raise ApiError(400, "the client closed the connection before the body ended") from None
        return decode_body(bytes(body), self.config.max_json_depth)

    async def reranker(self, request: Request) -> Reranker:
        """The request's reranker; a verifier is first tried on an empty completion, so one that
        cannot score this request (e.g. its meta lacks the reference) is a 400 before any
        sample is drawn."""
        options = request.howhard
        name = options.reranker if options and options.reranker else self.config.reranker
        if name == "verifier":
            assert options is not None and options.verifier is not None  # parse_request checks
            spec = options.verifier
            try:
                task = get_task(spec.task)
            except HowhardError as e:
                raise ApiError(
                    400, f"invalid verifier: {e}", param="howhard.verifier.task"
                ) from None
            query = Query(id="request", prompt=request.query(), meta=spec.meta)
            verifier = VerifierReranker(lambda completion: task.reward(query, completion))
            try:
                await asyncio.to_thread(verifier.scores, query.prompt, [""])
            except Exception as e:
                raise ApiError(
                    400,
                    f"the {spec.task} verifier cannot score this request: {e}",
                    param="howhard.verifier.meta",
                ) from None
            return verifier
        if name == "reward-model":
            if self.reward_model is None:
                raise ApiError(
                    400,
                    "this server was started without a reward model (setting reward_model); "
                    'use "majority" or a verifier',
                    param="howhard.reranker",
                )
            return self.reward_model
        return self.majority

    async def choose(self, reranker: Reranker, prompt: str, completions: Sequence[str]) -> int:
        if len(completions) == 1:
            return 0
        try:
            scores = await asyncio.to_thread(reranker.scores, prompt, completions)
        except ApiError:
            raise
        except Exception as e:  # a verifier that cannot score, a reward model that failed
            self.metrics.errors["rerank"] += 1
            log.warning("the reranker failed: %s", self.redact(f"{type(e).__name__}: {e}"))
            raise ApiError(
                502,
                f"the reranker failed ({type(e).__name__}); see the server log",
                "upstream_error",
            ) from None
        return top_index(scores, self.rng)

    def seeds(self, request: Any, k: int) -> list[int]:
        if request.seed is not None:
            return [(request.seed + j) % 2**31 for j in range(k)]
        return [int(s) for s in self.rng.integers(0, 2**31, size=k)]


def _headers(decision: Decision) -> dict[str, str]:
    return {
        "x-howhard-samples": str(decision.samples),
        "x-howhard-route": decision.route,
        "x-howhard-predicted-success": f"{decision.predicted:.4f}",
        "x-howhard-predicted-success-at-k": f"{decision.predicted_at_k:.4f}",
    }


REASONS = {
    400: "it refused the request",
    401: "authentication failed",
    403: "access denied",
    404: "not found",
    408: "it timed out",
    413: "the request is too large for it",
    422: "it refused the request",
    429: "rate limited",
}


def _upstream_error(proxy: Proxy, e: BackendError) -> ApiError:
    """The client's answer to an upstream failure: its kind and HTTP status, never the upstream's
    own message (it may quote the upstream key); that goes to the log, redacted. An upstream's
    400, 413 or 422 is the request's fault (e.g. a prompt over the model's context window), so a
    400 the client can act on; the others are 502 (504 on timeouts)."""
    if e.status in (400, 413, 422):
        proxy.metrics.errors["upstream_refused"] += 1
        log.warning("the upstream refused the request: %s", proxy.redact(str(e)))
        if exceeds_context(str(e)):
            message = (
                "the prompt and max_tokens exceed the upstream model's context window; shorten "
                "the prompt or lower max_tokens"
            )
            return ApiError(400, message, code="context_length_exceeded")
        message = (
            f"the upstream refused the request (HTTP {e.status}); check its parameters, or "
            "shorten the prompt (the upstream's reason is in the server log)"
        )
        return ApiError(400, message)
    proxy.metrics.errors["upstream"] += 1
    log.warning("the upstream failed: %s", proxy.redact(str(e)))
    if isinstance(e, UpstreamTimeout):
        message = "the upstream did not answer in time; retry later"
        return ApiError(504, message, "upstream_error", code="timeout")
    if e.status is None:
        message = "the upstream could not be reached or sent no valid answer; see the server log"
    else:
        reason = REASONS.get(e.status, "server error" if e.status >= 500 else "refused")
        message = f"the upstream answered HTTP {e.status} ({reason}); see the server log"
    return ApiError(502, message, "upstream_error", code="upstream_error")


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def _answer_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-howhard-{uuid.uuid4().hex}"


def _response_body(
    request: Any, chat: bool, chosen: Completion, completions: Sequence[Completion], prompt: int
) -> dict[str, Any]:
    drawn = sum(c.n_tokens for c in completions)
    usage = {"prompt_tokens": prompt, "completion_tokens": drawn, "total_tokens": prompt + drawn}
    reason = chosen.finish_reason or "stop"
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": chosen.text},
            "finish_reason": reason,
        }
    else:
        choice = {"index": 0, "text": chosen.text, "finish_reason": reason, "logprobs": None}
    return {
        "id": _answer_id(chat),
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [choice],
        "usage": usage,
    }


def _as_stream(body: dict[str, Any], chat: bool, include_usage: bool) -> list[bytes]:
    """A complete answer as the server-sent events of a streamed one: the text in one chunk,
    then the finish reason, the usage (if asked) and ``[DONE]``."""
    choice = body["choices"][0]
    head = {k: body[k] for k in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    if chat:
        parts = [{"role": "assistant", "content": choice["message"]["content"]}, {}]
        events = [
            {**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in parts
        ]
        events[-1]["choices"][0]["finish_reason"] = choice["finish_reason"]
    else:
        events = [
            {**head, "choices": [{"index": 0, "text": choice["text"], "finish_reason": None}]},
            {
                **head,
                "choices": [{"index": 0, "text": "", "finish_reason": choice["finish_reason"]}],
            },
        ]
    if include_usage:
        events.append({**head, "choices": [], "usage": body["usage"]})
    return [_sse(e) for e in events] + [b"data: [DONE]\n\n"]


class _Relay:
    """One upstream sample's stream relayed as the proxy's own answer. `chunk` turns an upstream
    SSE line into the client's event, with the proxy's ``id``, ``created`` and ``model`` (those of
    an answer drawn whole; never the upstream's, whose model may be a host path), or None for a
    line that is no chunk and for the upstream's usage, which it keeps. It counts the sample as it
    goes: its text and finish reason; `counts` gives its tokens and `usage` the usage chunk to
    send last when the client asked for it."""

    def __init__(self, request: Request, chat: bool, mask: Callable[[str], str]) -> None:
        self.request, self.chat, self.mask = request, chat, mask
        self.head = {"id": _answer_id(chat), "created": int(time.time()), "model": request.model}
        self.text: list[str] = []
        self.events = 0  # content events
        self.upstream_usage: dict[str, Any] | None = None
        self.finish: str | None = None

    def chunk(self, line: str) -> bytes | None:
        event = _event_of(line)
        if event is None:
            return None
        usage = event.pop("usage", None)
        if isinstance(usage, dict):
            self.upstream_usage = usage
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices:  # e.g. the usage chunk
            return None
        for choice in choices:
            piece = _piece(choice, self.chat)
            if piece:
                self.text.append(piece)
                self.events += 1
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finish = str(choice["finish_reason"])
        return (self.mask(f"data: {json.dumps({**event, **self.head})}") + "\n\n").encode()

    def counts(self) -> tuple[int, int]:
        """(prompt, completion) tokens: the upstream's usage; without one, the prompt's
        `prompt_token_bound` and a token per content event (servers stream a token an event)."""
        usage = self.upstream_usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or prompt < 0:
            prompt = prompt_token_bound(self.request)
        if not isinstance(completion, int) or completion < 0:
            completion = self.events
        return prompt, completion

    def usage(self) -> bytes:
        prompt, completion = self.counts()
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return _sse({**self.head, "object": kind, "choices": [], "usage": usage})


def _check_stream(url: str, response: httpx.Response) -> None:
    """Raise `BackendError` unless the upstream answered a stream request with server-sent
    events (an HTML page or a JSON body is not relayed: upstream bodies are never forwarded)."""
    kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "text/event-stream":
        raise BackendError(
            f"{display_url(url)} answered a stream request with HTTP {response.status_code} and "
            f"Content-Type {kind or 'none'!r}, not server-sent events; is it an OpenAI-compatible "
            "server?"
        )


def _is_error(line: str) -> bool:
    """Whether an SSE line is an error event (``data: {"error": ...}``)."""
    if not line.startswith("data:") or "error" not in line:
        return False
    try:
        event = json.loads(line[5:])
    except ValueError:
        return False
    return isinstance(event, dict) and "error" in event


def _stream_error(message: str) -> bytes:
    return _sse(
        {"error": {"message": message, "type": "upstream_error", "param": None, "code": None}}
    )


CLIENT_LEFT = 499  # the status counted for a request whose client left (nginx's)


async def _disconnected(http: HttpRequest) -> None:
    """Return once the client has disconnected (call it after the body is read)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(http: HttpRequest, answer: Awaitable[Response]) -> Response:
    """``answer``'s response; but if the client disconnects first, ``answer`` is cancelled (its
    upstream requests closed, the samples and budget it held given back) and, once it has
    ended, the response is an empty `CLIENT_LEFT` that nobody reads."""
    work = asyncio.ensure_future(answer)
    left = asyncio.ensure_future(_disconnected(http))
    try:
        await asyncio.wait({work, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        if not work.done():
            work.cancel()
            await asyncio.wait({work})
    if work.cancelled():
        return Response(status_code=CLIENT_LEFT)
    return work.result()


async def _completion(proxy: Proxy, http: HttpRequest, chat: bool) -> Response:
    proxy.authorise(http)
    proxy.check_ready()
    request = parse_request(await proxy.read_json(http), chat, proxy.config, proxy.models)
    return await _unless_client_leaves(http, _answer(proxy, request, chat))


async def _answer(proxy: Proxy, request: Request, chat: bool) -> Response:
    """A valid request's answer: decided, drawn, chosen."""
    if proxy.menu is not None:
        return await _menu_completion(proxy, proxy.menu, request, chat)
    reranker = await proxy.reranker(request)
    loop = asyncio.get_running_loop()
    decision = await proxy.decisions.submit(request.query())
    if request.temperature == 0 and decision.samples > 1:  # greedy samples are all alike
        decision = await loop.run_in_executor(proxy.decider, proxy.greedy, decision)
    upstream = proxy.strong if decision.route == "strong" and proxy.strong else proxy.weak
    payload = upstream_payload(request, upstream.model)
    seeds = proxy.seeds(request, decision.samples)
    headers = _headers(decision)
    if request.stream and decision.samples == 1:
        try:
            return await _pass_through(proxy, upstream, payload, seeds[0], chat, request, headers)
        except (ApiError, asyncio.CancelledError):  # nothing streamed
            await loop.run_in_executor(proxy.decider, proxy.refund, decision)
            raise
    try:
        async with proxy.limiter.hold(decision.samples):
            t0 = time.perf_counter()
            completions, prompt_tokens = await upstream.fleet.draw(payload, seeds, chat)
            proxy.metrics.upstream_latency.observe(time.perf_counter() - t0)
            proxy.metrics.samples[decision.route] += len(completions)
    except (ApiError, BackendError, asyncio.CancelledError) as e:  # refused (429), the upstream
        # failed, or the client left: nothing drawn
        await loop.run_in_executor(proxy.decider, proxy.refund, decision)
        if isinstance(e, BackendError):
            raise _upstream_error(proxy, e) from None
        raise
    texts = [c.text for c in completions]
    chosen = completions[await proxy.choose(reranker, request.query(), texts)]
    body = _response_body(request, chat, chosen, completions, prompt_tokens)
    if not request.stream:
        return JSONResponse(body, headers=headers)
    events = _as_stream(body, chat, request.wants_usage())
    return StreamingResponse(iter(events), media_type="text/event-stream", headers=headers)


TEMPLATE_TOKENS = 16  # a bound on the tokens a chat template adds per message


def prompt_token_bound(request: Request) -> int:
    """A bound on the prompt's tokens before any upstream counted them: its characters (a token
    holds at least one) plus `TEMPLATE_TOKENS` per message and one more for the reply's head."""
    messages = len(request.messages) if isinstance(request, ChatRequest) else 0
    return request.chars() + TEMPLATE_TOKENS * (messages + 1)


def decoder_payload(request: Request, decoder: Decoder, model: str) -> dict[str, Any]:
    """The body sent to ``decoder``'s upstream: the request's (`upstream_payload`) with the
    decoder's ``params`` over it, but ``max_tokens`` the smaller of the request's and the
    decoder's (both are caps)."""
    payload = upstream_payload(request, model)
    for key, value in decoder.params.items():
        if key == "max_tokens" and "max_tokens" in payload:
            payload[key] = min(int(payload[key]), int(value))
        else:
            payload[key] = value
    return payload


def _menu_headers(menu: MenuState, rounds: Rounds, knob: float) -> dict[str, str]:
    counts = rounds.counts(len(menu.decoders))
    drawn = ",".join(f"{n}:{c}" for n, c in zip(menu.names, counts, strict=True) if c)
    return {
        "x-howhard-samples": str(len(rounds.state.seen)),
        "x-howhard-rounds": str(rounds.state.rounds),
        "x-howhard-decoders": drawn,
        "x-howhard-cost": f"{rounds.state.cost:.6g}",
        "x-howhard-stop": rounds.stop,
        "x-howhard-knob": f"{knob:g}",
    }


def _account(
    proxy: Proxy,
    menu: MenuState,
    rounds: Rounds,
    knob: float,
    expected: float,
    status: int,
    query: str,
    chosen: str | None,
) -> None:
    """Count what a request drew (also when it failed: it was spent) in the metrics, the pacer
    and the request log."""
    state = rounds.state
    if not state.seen:
        return
    cost_by = [0.0] * len(menu.decoders)
    for seen in state.seen:
        cost_by[seen.decoder] += seen.cost
    for d, name in enumerate(menu.names):
        n = state.count(d)
        if n:
            proxy.metrics.decoder_samples[name] += n
            proxy.metrics.decoder_cost[name] += cost_by[d]
    proxy.metrics.rounds.observe(state.rounds)
    proxy.metrics.stops[rounds.stop or "failed"] += 1
    if menu.pacer is not None:
        menu.pacer.record(expected, state.cost)
    if menu.log is not None:
        menu.log.write(
            {
                "time": round(time.time(), 3),
                "status": status,
                "query": prompt_hash(query),
                "prediction": [float(p) for p in state.prediction],
                "knob": knob,
                "rounds": state.rounds,
                "decoders": {n: state.count(d) for d, n in enumerate(menu.names) if state.count(d)},
                "cost": state.cost,
                "cost_by_decoder": {n: c for n, c in zip(menu.names, cost_by, strict=True) if c},
                "prompt_tokens": sum(rounds.prompt_tokens),
                "completion_tokens": sum(rounds.completion_tokens),
                "stop": rounds.stop or "failed",
                "answer": None if chosen is None else prompt_hash(chosen),
            }
        )


async def _menu_completion(proxy: Proxy, menu: MenuState, request: Request, chat: bool) -> Response:
    """One request in menu mode: the policy draws in rounds (`draw_rounds`), the chosen sample
    is answered (streamed as one chunk when ``stream``), every draw is counted."""
    config, query = proxy.config, request.query()
    reranker: Reranker | None = None
    asked = request.howhard.reranker if request.howhard else None
    if config.observe == "verifier":
        reranker = await proxy.reranker(request)
        if reranker is proxy.majority:
            raise ApiError(
                400,
                "this server's policy observes a verifier's rewards; name one with "
                '"howhard": {"reranker": "verifier", "verifier": {...}}',
                param="howhard",
            )
    elif asked not in (None, "majority"):
        raise ApiError(
            400,
            "this server's policy observes answers only (observe = majority) and chooses by "
            "them; drop howhard.reranker",
            param="howhard.reranker",
        )
    m = len(menu.decoders)
    if menu.predictions is not None:
        prediction = await menu.predictions.submit(query)
    else:
        prediction = np.full(m, np.nan)
    if menu.pacer is not None:
        knob, expected = menu.pacer.next()
    else:
        assert menu.knob is not None
        knob, expected = menu.knob, math.nan
    policy = menu.policy(knob)
    payloads = [decoder_payload(request, d, u.model) for d, u in menu.decoders]
    bound = prompt_token_bound(request)
    worst = [
        d.sample_cost(bound, float(p.get("max_tokens", config.max_tokens)))
        for (d, _), p in zip(menu.decoders, payloads, strict=True)
    ]
    prices = [(d.cost, d.input_cost, d.output_cost) for d, _ in menu.decoders]
    base = request.seed
    if base is None:
        base = int(proxy.rng.integers(0, 2**31))

    async def draw(d: int, k: int, drawn: int) -> tuple[list[Completion], int]:
        seeds = [(base + drawn + j) % 2**31 for j in range(k)]
        async with proxy.limiter.hold(k):
            t0 = time.perf_counter()
            got = await menu.decoders[d][1].fleet.draw(payloads[d], seeds, chat)
            proxy.metrics.upstream_latency.observe(time.perf_counter() - t0)
        proxy.metrics.samples["menu"] += len(got[0])
        return got

    async def observe(
        d: int, completions: list[Completion]
    ) -> list[tuple[str | None, float | None]]:
        texts = [c.text for c in completions]
        answers = [menu.answer(t) for t in texts]
        if reranker is None:
            return [(a, None) for a in answers]
        try:
            scores = await asyncio.to_thread(reranker.scores, query, texts)
        except ApiError:
            raise
        except Exception as e:
            proxy.metrics.errors["rerank"] += 1
            log.warning("the verifier failed: %s", proxy.redact(f"{type(e).__name__}: {e}"))
            raise ApiError(
                502,
                f"the verifier failed ({type(e).__name__}); see the server log",
                "upstream_error",
            ) from None
        return [(a, float(r)) for a, r in zip(answers, scores, strict=True)]

    async def run(draw_fn: DrawFn) -> Rounds:
        try:
            return await draw_rounds(
                policy,
                prediction,
                prices,
                worst,
                menu.caps,
                draw_fn,
                observe,
                spend=menu.spend,
                partial=config.on_upstream_failure == "partial",
            )
        except RoundsFailed as e:
            error = _rounds_error(proxy, e)
            _account(proxy, menu, e.rounds, knob, expected, error.status, query, None)
            raise error from None

    if request.stream and menu.caps.rounds == 1:  # the first round is final: stream it?
        streamed = _StreamedSample(proxy, menu, request, chat, payloads, base, draw)

        async def run_streamed() -> Rounds | None:
            """The rounds; when their one sample was passed through, its accounting and the
            stream's end (None: the handler answers as usual)."""
            try:
                rounds = await run(streamed.draw)
            except BaseException as e:  # failed or cancelled (the client left) while streaming
                if not streamed.started.done():
                    raise
                status = e.status if isinstance(e, ApiError) else 500
                if isinstance(e, asyncio.CancelledError):
                    status = 499  # the client closed the connection
                drawn = streamed.rounds(prediction, prices)
                _account(proxy, menu, drawn, knob, expected, status, query, None)
                if isinstance(e, ApiError):
                    streamed.finish(_stream_error(e.message))
                    return None
                if not isinstance(e, Exception):
                    raise
                log.exception("the streamed round failed")  # redacted by the log filter
                proxy.metrics.errors["internal"] += 1
                streamed.finish(_stream_error("internal error; see the server log"))
                return None
            if not streamed.started.done():
                return rounds
            text = rounds.completions[0].text
            _account(proxy, menu, rounds, knob, expected, streamed.status, query, text)
            streamed.finish(b"data: [DONE]\n\n" if streamed.status == 200 else None)
            return None

        task = asyncio.create_task(run_streamed())
        try:
            waits: set[asyncio.Future[Any]] = {task, streamed.started}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        if streamed.started.done():
            return StreamingResponse(
                streamed.relay(task),
                media_type="text/event-stream",
                headers=streamed.headers(knob),
            )
        got = task.result()
        assert got is not None
        rounds = got
    else:
        rounds = await run(draw)
    assert rounds.chosen is not None
    chosen = rounds.completions[rounds.chosen]
    _account(proxy, menu, rounds, knob, expected, 200, query, chosen.text)
    body = _response_body(request, chat, chosen, rounds.completions, sum(rounds.prompt_tokens))
    headers = _menu_headers(menu, rounds, knob)
    if not request.stream:
        return JSONResponse(body, headers=headers)
    events = _as_stream(body, chat, request.wants_usage())
    return StreamingResponse(iter(events), media_type="text/event-stream", headers=headers)


class _StreamedSample:
    """Menu mode's pass-through: a request's only round (``max_rounds = 1``) drawn as one
    sample is streamed to the client as the upstream streams it, line by line (time to first
    token: the upstream's). `draw` is the rounds' draw: for k = 1 it asks the upstream for a
    stream (with ``include_usage``, to count tokens), sets ``started`` once the upstream
    answered with server-sent events (anything else fails the draw: a 502), queues each event
    relabelled as the proxy's (`_Relay`) for `relay`, then the usage event if the client asked for
    it (never ``[DONE]``: `finish` sends it once the sample is counted, so /metrics agrees as soon
    as the client has read the end), and returns the sample like any draw: its text, its
    completion tokens and the prompt tokens (`_Relay.counts`). A stream that breaks or ends
    without a finish reason ends with an error event; its sample is still counted (``status``
    502). For k > 1 it draws as usual and nothing is streamed (the handler answers once
    decided)."""

    def __init__(
        self,
        proxy: Proxy,
        menu: MenuState,
        request: Request,
        chat: bool,
        payloads: list[dict[str, Any]],
        seed: int,
        draw: DrawFn,
    ) -> None:
        self.proxy, self.menu, self.request, self.chat = proxy, menu, request, chat
        self.payloads, self.seed, self._draw = payloads, seed, draw
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.decoder = 0
        self.relayed = _Relay(request, chat, proxy.redact.mask)
        self.status = 200

    async def draw(self, d: int, k: int, drawn: int) -> tuple[list[Completion], int]:
        if k != 1:
            return await self._draw(d, k, drawn)
        self.decoder = d
        upstream = self.menu.decoders[d][1]
        body = {**self.payloads[d], "n": 1, "seed": (self.seed + drawn) % 2**31, "stream": True}
        body["stream_options"] = {"include_usage": True}
        proxy, relayed = self.proxy, self.relayed
        async with proxy.limiter.hold(1):
            t0 = time.perf_counter()
            async with upstream.fleet.send(api_path(self.chat), body) as (_, url, response):
                _check_stream(url, response)
                self.started.set_result(None)
                proxy.metrics.samples["menu"] += 1
                try:
                    async for line in response.aiter_lines():
                        if line.strip() == "data: [DONE]":
                            break
                        if _is_error(line):  # never forwarded: it may quote the upstream key
                            log.warning("the upstream stream sent an error: %s", proxy.redact(line))
                            break
                        chunk = relayed.chunk(line)
                        if chunk is not None:
                            self.queue.put_nowait(chunk)
                except httpx.HTTPError as e:
                    log.warning(
                        "the upstream stream broke: %s", proxy.redact(f"{type(e).__name__}: {e}")
                    )
            proxy.metrics.upstream_latency.observe(time.perf_counter() - t0)
        if relayed.finish is None:
            proxy.metrics.errors["upstream_stream"] += 1
            self.status = 502
            self.queue.put_nowait(
                _stream_error(
                    "the upstream stream broke or ended without a finish reason; the "
                    "answer is incomplete"
                )
            )
        elif self.request.wants_usage():
            self.queue.put_nowait(relayed.usage())
        prompt, tokens = relayed.counts()
        return [Completion("".join(relayed.text), tokens, relayed.finish)], prompt

    def rounds(self, prediction: FloatArray, prices: Sequence[Any]) -> Rounds:
        """The one round as far as it was streamed (for a request that failed or was cancelled
        after its sample began to stream: what was drawn is counted, and taken from the spend
        bucket, which the rounds gave back its reservation)."""
        m = len(self.menu.decoders)
        rounds = Rounds(
            QueryState(np.asarray(prediction, dtype=float), [0] * m), [], [0] * m, [0] * m
        )
        prompt, tokens = self.relayed.counts()
        completion = Completion("".join(self.relayed.text), tokens)
        (cost,) = round_cost(prices[self.decoder], [completion], prompt)
        rounds.state.seen.append(Seen(self.decoder, None, None, cost))
        rounds.state.rounds = 1
        rounds.completions.append(completion)
        rounds.prompt_tokens[self.decoder] = prompt
        rounds.completion_tokens[self.decoder] = tokens
        if self.menu.spend is not None:
            self.menu.spend.give_back(-cost)
        return rounds

    def finish(self, last: bytes | None) -> None:
        """End the stream (after ``last``)."""
        if last is not None:
            self.queue.put_nowait(last)
        self.queue.put_nowait(None)

    async def relay(self, task: asyncio.Task[Rounds | None]) -> AsyncIterator[bytes]:
        """The queued events until `finish`; the rounds are cancelled if the client leaves."""
        try:
            while (item := await self.queue.get()) is not None:
                yield item
        finally:
            if not task.done():
                task.cancel()

    def headers(self, knob: float) -> dict[str, str]:
        """The ``x-howhard-*`` headers, sent before the sample: its cost only when priced per
        sample (a price per token is known when the stream ends: see /metrics and the log)."""
        decoder = self.menu.decoders[self.decoder][0]
        headers = {
            "x-howhard-samples": "1",
            "x-howhard-rounds": "1",
            "x-howhard-decoders": f"{decoder.name}:1",
            "x-howhard-stop": "max_rounds",
            "x-howhard-knob": f"{knob:g}",
            "x-howhard-stream": "pass-through",
        }
        if decoder.cost is not None:
            headers["x-howhard-cost"] = f"{decoder.cost:.6g}"
        return headers


def _event_of(line: str) -> dict[str, Any] | None:
    """The JSON object of an SSE ``data:`` line (None for other lines)."""
    if not line.startswith("data:"):
        return None
    try:
        event = json.loads(line[5:])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _piece(choice: Any, chat: bool) -> str:
    """The text a streamed choice adds."""
    if not isinstance(choice, dict):
        return ""
    if chat:
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
    else:
        content = choice.get("text")
    return content if isinstance(content, str) else ""


def _rounds_error(proxy: Proxy, e: RoundsFailed) -> ApiError:
    """The client's answer to rounds that could not end in an answer."""
    cause = e.__cause__
    if isinstance(cause, ApiError):
        return cause
    if e.reason == "upstream" and isinstance(cause, BackendError):
        return _upstream_error(proxy, cause)
    if e.reason == "timeout":
        proxy.metrics.errors["max_seconds"] += 1
        return ApiError(
            504,
            f"no sample came within the request's time cap ({proxy.config.max_seconds:g} s)",
            "upstream_error",
            code="timeout",
        )
    if e.reason == "spend_rate":
        proxy.metrics.errors["spend_rate"] += 1
        return ApiError(
            429,
            "the server is at its spend-per-second cap; retry shortly",
            "rate_limit_error",
            headers={"Retry-After": str(max(1, math.ceil(min(e.retry_after, 3600.0))))},
        )
    if e.reason == "caps":
        return ApiError(
            400,
            "one sample of the policy's decoder could cost more than this server's max_cost "
            "allows a request; ask for fewer max_tokens or a shorter prompt",
            param="max_tokens",
        )
    proxy.metrics.errors["internal"] += 1
    log.error("the rounds ended with nothing drawn (%s)", e.reason, exc_info=cause)
    return ApiError(500, "the policy drew nothing; see the server log", "server_error")


async def _pass_through(
    proxy: Proxy,
    upstream: Upstream,
    payload: dict[str, Any],
    seed: int,
    chat: bool,
    request: Any,
    headers: dict[str, str],
) -> Response:
    """Stream one sample from the upstream as it comes, relabelled as the proxy's (`_Relay`),
    then the usage if the client asked for it. Failures before the first byte (an upstream that
    answers with anything but server-sent events among them) are 4xx/502/504 answers; a stream
    that breaks later ends with an error event (never a silent truncation)."""
    body = {**payload, "n": 1, "seed": seed, "stream": True}
    body["stream_options"] = {"include_usage": True}  # to count its tokens
    stack = contextlib.AsyncExitStack()
    try:
        await stack.enter_async_context(proxy.limiter.hold(1))
        sent = upstream.fleet.send(api_path(chat), body)
        _, url, response = await stack.enter_async_context(sent)
        _check_stream(url, response)
    except BaseException as e:
        await stack.aclose()
        if isinstance(e, BackendError):
            raise _upstream_error(proxy, e) from None
        raise
    proxy.metrics.samples[headers["x-howhard-route"]] += 1
    relayed = _Relay(request, chat, proxy.redact.mask)

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for line in response.aiter_lines():
                if line.strip() == "data: [DONE]":
                    break  # no finish reason before it: cut short (llama-cpp-python does)
                if _is_error(line):  # never forwarded verbatim: it may quote the upstream key
                    proxy.metrics.errors["upstream_stream"] += 1
                    log.warning("the upstream stream sent an error: %s", proxy.redact(line))
                    yield _stream_error("the upstream reported an error; see the server log")
                    return
                chunk = relayed.chunk(line)
                if chunk is not None:
                    yield chunk
        except Exception as e:
            proxy.metrics.errors["upstream_stream"] += 1
            log.warning("the upstream stream broke: %s", proxy.redact(f"{type(e).__name__}: {e}"))
            yield _stream_error(f"the upstream stream broke ({type(e).__name__})")
            return
        finally:
            await stack.aclose()
        if relayed.finish is None:
            proxy.metrics.errors["upstream_stream"] += 1
            yield _stream_error(
                "the upstream stream ended without a finish reason; the answer is incomplete"
            )
            return
        if request.wants_usage():
            yield relayed.usage()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(
        relay(),
        media_type="text/event-stream",
        headers=headers,
        background=BackgroundTask(stack.aclose),  # also when the client left before streaming
    )


async def _ready(proxy: Proxy) -> Response:
    if proxy.starting is not None:
        status = "failed" if proxy.failed else "starting"
        return JSONResponse(
            {"status": status, "problems": [proxy.redact(proxy.starting)]}, status_code=503
        )
    problems = []
    for name, upstream in proxy.upstreams():
        reachable = False
        for endpoint in upstream.fleet.endpoints:
            try:
                answer = await upstream.fleet.client.get(endpoint + "/models", timeout=2.0)
                reachable = reachable or answer.is_success
            except Exception:
                pass
        if not reachable:
            problems.append(f"no {name} endpoint answers GET /v1/models")
    if problems:
        return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})


def create_app(proxy: Proxy, on_start: Callable[[], None] | None = None) -> Starlette:
    """The ASGI app serving ``proxy``: /v1/chat/completions, /v1/completions, /v1/models,
    /health, /ready, /metrics. ``on_start`` is called as the server starts (before it listens;
    it must not block: e.g. it starts the proxy's calibration in a thread)."""

    def guarded(handler: Callable[[HttpRequest], Any], route: str) -> Callable[[HttpRequest], Any]:
        async def endpoint(request: HttpRequest) -> Response:
            proxy.metrics.in_flight += 1
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status_code
                return response
            except ApiError as e:
                status, e.message = e.status, proxy.redact(e.message)
                return JSONResponse(e.body(), status_code=e.status, headers=e.headers)
            except Exception:
                log.exception("unexpected error on %s", route)  # redacted by the log filter
                proxy.metrics.errors["internal"] += 1
                error = ApiError(500, "internal error; see the server log", "server_error")
                return JSONResponse(error.body(), status_code=500)
            finally:
                proxy.metrics.in_flight -= 1
                proxy.metrics.requests[(route, str(status))] += 1
                if route in ("chat", "completions"):
                    proxy.metrics.request_latency.observe(time.perf_counter() - started)

        return endpoint

    async def models(request: HttpRequest) -> Response:
        proxy.authorise(request)
        if not proxy.config.models:  # the upstream's model name is asked while starting
            proxy.check_ready()
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "howhard"} for m in proxy.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def metrics(request: HttpRequest) -> Response:
        proxy.authorise(request)
        return PlainTextResponse(proxy.metrics.render(), media_type="text/plain; version=0.0.4")

    async def ready(request: HttpRequest) -> Response:
        proxy.authorise(request)
        return await _ready(proxy)

    async def health(request: HttpRequest) -> Response:
        return JSONResponse({"status": "ok"})

    async def http_error(request: HttpRequest, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
        return JSONResponse(error.body(), status_code=exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if on_start is not None:
            on_start()
        yield
        await proxy.aclose()

    routes = [
        Route(
            "/v1/chat/completions",
            guarded(lambda r: _completion(proxy, r, True), "chat"),
            methods=["POST"],
        ),
        Route(
            "/v1/completions",
            guarded(lambda r: _completion(proxy, r, False), "completions"),
            methods=["POST"],
        ),
        Route("/v1/models", guarded(models, "models"), methods=["GET"]),
        Route("/metrics", guarded(metrics, "metrics"), methods=["GET"]),
        Route("/ready", guarded(ready, "ready"), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(
        routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan
    )
