"""A tiny, real OpenAI-compatible upstream with canned answers, for load tests and benchmarks
(where llama.cpp would be the bottleneck); run as
``python tests/stub_upstream.py --port N [--delay SECONDS] [--fail-every K] [--pool FILE]
[--token-delay SECONDS] [--canned STATUS CONTENT_TYPE BODY]``.

It answers GET /v1/models, POST /v1/completions and /v1/chat/completions (``n`` choices, ``usage``,
``stream: true`` as server-sent events ending in ``data: [DONE]``) and GET /stats (its counters).
The answer to the last "What is <expression>?" in the prompt (or the last user message) is its
value, except choice 1 of a request, which dissents by one, so a majority vote has something to
decide: over k = 1, 3 or 4 choices the majority is right, over k = 2 it is a tie. Tokens are
characters: ``completion_tokens`` sums ``len(text)`` over the choices, ``prompt_tokens`` counts
the prompt's whitespace-separated words. ``--delay`` waits before each answer (a decoder's
latency; a client that disconnects meanwhile ends the wait), ``--token-delay`` between the events
of a streamed answer (a decoder's time per token); /stats counts as ``abandoned`` the requests
whose client left before the answer ended; ``--fail-every K`` answers every K-th completion
request with 503 and ``Retry-After: 0`` (a hiccup a client should retry); ``--echo-status
CODE`` answers every completion request with HTTP CODE and an OpenAI-style error quoting the
credentials it was sent ("Incorrect API key provided: ..."), as a hostile or careless upstream
would; ``--canned STATUS CONTENT_TYPE BODY`` answers every completion request with that status,
type and body (an HTML error page, a JSON error).

``--pool FILE`` replays a pool instead (a decoder of a menu, traffic like its calibration): a
prompt (or last user message) that is one of the pool's prompts is answered with that query's
pooled ``answers``, choice j of a request with seed s being sample (s + j) mod (pool size), so a
request's seeds s, s + 1, ... hand out the samples in pool order; its ``completion_tokens`` are
the samples' pooled ``tokens``. /stats also sums the prompt and completion tokens answered.

``with stub_server(delay=0.01) as server: ... server.url ...`` runs it on a free loopback port.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from servers import Server, free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from howhard.pool import read_pool
from howhard.tasks.arithmetic import answer_of

MODEL = "stub"
_QUESTION = re.compile(r"What is [0-9 +\-*()]+\?")


def prompt_text(body: dict[str, Any]) -> str:
    """The text a request asks about: its prompt, or the last user message of a chat."""
    if "prompt" in body:
        return str(body["prompt"])
    users = [m for m in body["messages"] if m.get("role") == "user"] or body["messages"]
    content = users[-1]["content"]
    return content if isinstance(content, str) else "".join(p["text"] for p in content)


def answers(text: str, n: int) -> list[str]:
    """The ``n`` choices' texts: the value of the last question in ``text`` (choice 1: one
    more), or "stub" for every choice when there is no question."""
    questions = _QUESTION.findall(text)
    if not questions:
        return ["stub"] * n
    value = answer_of(questions[-1])
    return [str(value + (i == 1)) for i in range(n)]


def prompt_tokens(body: dict[str, Any]) -> int:
    """Words in the prompt, or in all the messages of a chat."""
    if "prompt" in body:
        return len(str(body["prompt"]).split())
    return sum(len(prompt_text({"messages": [m]}).split()) for m in body["messages"])


class Stub:
    """The server's state: its options and counters (one object, made at start-up)."""

    def __init__(
        self,
        delay: float,
        fail_every: int,
        echo_status: int = 0,
        pool: str | None = None,
        token_delay: float = 0.0,
        canned: tuple[int, str, str] | None = None,
    ) -> None:
        self.delay, self.fail_every, self.echo_status = delay, fail_every, echo_status
        self.token_delay, self.canned = token_delay, canned
        self.last_authorization = ""
        self.requests = self.failed = self.samples = self.abandoned = 0
        self.prompt_tokens = self.completion_tokens = 0  # summed over the answers sent
        self.in_flight = self.max_in_flight = 0  # samples being answered now / at most
        self.pool: dict[str, tuple[list[str], list[int]]] = {}  # prompt -> (answers, tokens)
        if pool is not None:
            replayed = read_pool(pool)
            for prompt, extra in zip(replayed.prompts, replayed.extras, strict=True):
                self.pool[prompt] = (list(extra["answers"]), list(extra["tokens"]))

    def draw(self, body: dict[str, Any], n: int) -> list[tuple[str, str, int]] | None:
        """The ``n`` choices' (text, finish reason, tokens), cut to ``max_tokens`` (a token a
        character; replayed: the pooled tokens, cut likewise); None for a prompt not pooled."""
        limit = body.get("max_tokens") or 16
        if not self.pool:
            texts = answers(prompt_text(body), n)
            return [
                (t[:limit], "length" if len(t) > limit else "stop", min(len(t), limit))
                for t in texts
            ]
        if prompt_text(body) not in self.pool:
            return None
        pooled, tokens = self.pool[prompt_text(body)]
        seed = int(body.get("seed") or 0)
        picked = [(seed + j) % len(pooled) for j in range(n)]
        return [
            (pooled[i][:limit], "length" if tokens[i] > limit else "stop", min(tokens[i], limit))
            for i in picked
        ]

    async def complete(self, request: Request) -> Response:
        self.requests += 1
        self.last_authorization = request.headers.get("authorization", "")
        if self.echo_status:
            scheme, _, credentials = self.last_authorization.partition(" ")
            if scheme.lower() == "basic":
                credentials = base64.b64decode(credentials).decode(errors="replace")
            message = f"Incorrect API key provided: {credentials} ({self.last_authorization})"
            error = {"error": {"message": message, "type": "invalid_request_error"}}
            return JSONResponse(error, status_code=self.echo_status)
        if self.canned is not None:
            status, content_type, text = self.canned
            return Response(text, status_code=status, media_type=content_type)
        if self.fail_every and self.requests % self.fail_every == 0:
            self.failed += 1
            error = {"error": {"message": "a planned hiccup", "type": "server_error"}}
            return JSONResponse(error, status_code=503, headers={"Retry-After": "0"})
        body = await request.json()
        n = body.get("n") or 1
        if ("prompt" not in body and "messages" not in body) or not isinstance(n, int) or n < 1:
            error = {"error": {"message": "need prompt or messages, and n >= 1"}}
            return JSONResponse(error, status_code=400)
        chat = "messages" in body
        choices_drawn = self.draw(body, n)
        if choices_drawn is None:
            error = {"error": {"message": "this prompt is not in the replayed pool"}}
            return JSONResponse(error, status_code=400)
        drawn = [(t, r) for t, r, _ in choices_drawn]
        usage = {
            "prompt_tokens": prompt_tokens(body),
            "completion_tokens": sum(c for _, _, c in choices_drawn),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        head = {"id": f"stub-{self.requests}", "created": int(time.time()), "model": MODEL}
        self.in_flight += n
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if not body.get("stream"):
            try:
                if await disconnected(request, self.delay):
                    self.abandoned += 1
                    return Response(status_code=499)
            finally:
                self.in_flight -= n
            self.count(n, usage)
            kind = "chat.completion" if chat else "text_completion"
            choices = [_choice(chat, i, t, r, False) for i, (t, r) in enumerate(drawn)]
            return JSONResponse({**head, "object": kind, "choices": choices, "usage": usage})
        head["object"] = "chat.completion.chunk" if chat else "text_completion"
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            ended = False
            try:
                await asyncio.sleep(self.delay)
                for i, (text, reason) in enumerate(drawn):
                    for c in text:  # one event per token (character)
                        yield _event({**head, "choices": [_choice(chat, i, c, None, True)]})
                        await asyncio.sleep(self.token_delay)
                    yield _event({**head, "choices": [_choice(chat, i, "", reason, True)]})
                if with_usage:
                    yield _event({**head, "choices": [], "usage": usage})
                yield b"data: [DONE]\n\n"
                self.count(n, usage)
                ended = True
            finally:
                self.in_flight -= n
                if not ended:
                    self.abandoned += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    def count(self, n: int, usage: dict[str, int]) -> None:
        """An answer of ``n`` samples sent in full."""
        self.samples += n
        self.prompt_tokens += usage["prompt_tokens"]
        self.completion_tokens += usage["completion_tokens"]

    def app(self) -> Starlette:
        async def models(request: Request) -> Response:
            data = [{"id": MODEL, "object": "model", "created": 0, "owned_by": "stub"}]
            return JSONResponse({"object": "list", "data": data})

        async def stats(request: Request) -> Response:
            keys = ("requests", "failed", "samples", "abandoned", "in_flight", "max_in_flight")
            keys += ("prompt_tokens", "completion_tokens", "last_authorization")
            return JSONResponse({k: getattr(self, k) for k in keys})

        return Starlette(
            routes=[
                Route("/v1/models", models, methods=["GET"]),
                Route("/v1/completions", self.complete, methods=["POST"]),
                Route("/v1/chat/completions", self.complete, methods=["POST"]),
                Route("/stats", stats, methods=["GET"]),
            ]
        )


async def disconnected(request: Request, seconds: float) -> bool:
    """Wait ``seconds`` (its body read) unless the client disconnects first: whether it did."""

    async def left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(left())
    done, _ = await asyncio.wait({watch}, timeout=seconds)
    watch.cancel()
    return bool(done)


def _choice(chat: bool, index: int, text: str, reason: str | None, delta: bool) -> dict[str, Any]:
    if not chat:
        return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}
    message = {"role": "assistant", "content": text}
    return {"index": index, "delta" if delta else "message": message, "finish_reason": reason}


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


@contextmanager
def stub_server(
    delay: float = 0.0,
    fail_every: int = 0,
    echo_status: int = 0,
    pool: str | None = None,
    token_delay: float = 0.0,
    canned: tuple[int, str, str] | None = None,
) -> Iterator[Server]:
    """The stub running on a free loopback port (replaying ``pool`` if given, answering
    ``canned`` = (status, content type, body) if given), stopped when the block ends."""
    port = free_port()
    command = [sys.executable, __file__, "--port", str(port), "--delay", str(delay)]
    command += ["--fail-every", str(fail_every), "--echo-status", str(echo_status)]
    if pool is not None:
        command += ["--pool", str(pool)]
    if token_delay:
        command += ["--token-delay", str(token_delay)]
    if canned is not None:
        command += ["--canned", *map(str, canned)]
    with Server(command, port) as server:
        yield server.start()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--fail-every", type=int, default=0, help="503 every K-th request")
    parser.add_argument(
        "--echo-status", type=int, default=0, help="answer HTTP CODE quoting the credentials"
    )
    parser.add_argument("--pool", help="replay this pool's answers (a JSONL or Parquet pool)")
    parser.add_argument(
        "--token-delay", type=float, default=0.0, help="seconds between streamed tokens"
    )
    parser.add_argument(
        "--canned",
        nargs=3,
        metavar=("STATUS", "CONTENT_TYPE", "BODY"),
        help="answer every completion request with this",
    )
    args = parser.parse_args()
    canned = None if args.canned is None else (int(args.canned[0]), *args.canned[1:])
    stub = Stub(args.delay, args.fail_every, args.echo_status, args.pool, args.token_delay, canned)
    app = stub.app()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
