"""``howhard serve`` against hostile input and hostile peers (issue 11 §2-4).

Secrets: a canary upstream key and a canary password in the upstream URL never reach a client or
a log line, whatever the upstream answers (401/403/429/5xx bodies quoting them, timeouts, broken
streams). Crafted bodies (deep nesting, lone surrogates, huge numbers, the wrong content type)
are 4xx, never a 500. Slow clients are cut off. In process over a fake upstream transport for
each error path; end to end with a real ``howhard serve`` process, a real loopback stub upstream
and raw sockets for the rest."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serving import call, fake_proxy

from howhard.backends.openai import Fleet
from howhard.errors import BackendError
from howhard.redact import Redactor, display_url, redact_logs
from howhard.serve.app import Proxy
from howhard.serve.schema import ApiError, decode_body, json_depth

CANARY = "sk-canary-5e1f0c2b9d"  # the upstream key
PASSWORD = "pw-canary-77aa31"  # in the upstream URL's userinfo
CLIENT = "sk-client-canary-0d9e"  # a client key
UPSTREAM = f"http://alice:{PASSWORD}@up:1"
AUTH = {"Authorization": f"Bearer {CLIENT}"}
JSON = {"Content-Type": "application/json"}
SSE = {"Content-Type": "text/event-stream"}
CHAT = {"model": "howhard", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
SECRETS = (CANARY, PASSWORD, CLIENT, base64.b64encode(f"alice:{PASSWORD}".encode()).decode())


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def echo(request: httpx.Request) -> str:
    """An OpenAI-style complaint quoting everything secret the request carried."""
    return (
        f"Incorrect API key provided: {request.headers.get('authorization')} "
        f"(key {CANARY}, url {UPSTREAM}, user {PASSWORD})"
    )


def proxy_over(handler: Callable[[httpx.Request], Any], samples: int = 1, **config: Any) -> Proxy:
    """The real proxy and fleet, configured with the canaries, over a fake upstream."""
    return fake_proxy(
        handler,
        client_key=CLIENT,
        upstream_key=CANARY,
        upstream=UPSTREAM,
        samples=samples,
        **config,
    )


def answer(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "5"}}
    if "prompt" in body:
        choice = {"index": 0, "finish_reason": "stop", "text": "5"}
    return httpx.Response(200, json={"choices": [choice], "usage": {"completion_tokens": 1}})


# --- secrets ---------------------------------------------------------------------------------


def test_the_redactor_hides_each_secret_in_each_form_and_url_credentials():
    redact = Redactor([CANARY, None, ""], [UPSTREAM, "https://TOKEN-canary@h/v1", "http://h:2"])
    text = (
        f"key {CANARY}, quoted {json.dumps(CANARY)}, url {UPSTREAM}/v1, "
        f"encoded {PASSWORD.replace('-', '%2D')}, token https://TOKEN-canary@h/v1 at http://h:2"
    )
    clean = redact(text)
    assert CANARY not in clean and PASSWORD not in clean and "TOKEN-canary" not in clean
    assert "http://***@up:1/v1" in clean and "https://***@h/v1" in clean and "http://h:2" in clean
    assert redact(clean) == clean  # idempotent
    assert display_url(UPSTREAM) == "http://***@up:1" and display_url("http://h:1") == "http://h:1"
    assert redact.mask(f"see http://bob:x@h {CANARY}") == "see http://bob:x@h ***"


def test_the_log_filter_redacts_messages_arguments_and_tracebacks(caplog):
    redact = Redactor([CANARY], [UPSTREAM])
    undo = redact_logs(redact)
    try:
        caplog.set_level(logging.DEBUG)
        for name in ("howhard.serve", "uvicorn.error", "httpx", "asyncio"):
            logger = logging.getLogger(name)
            logger.warning("calling %s with %s", UPSTREAM, CANARY)
            logger.info(f"inline {CANARY}")
            try:
                raise BackendError(f"{UPSTREAM} said: bad key {CANARY}")
            except BackendError:
                logger.exception("failed on %d tries", 3)
        assert "failed on 3 tries" in caplog.text and "BackendError" in caplog.text
        assert leaks(caplog.text) == []
    finally:
        undo()
    logging.getLogger("howhard.serve").warning("after %s", CANARY)
    assert CANARY in caplog.text  # undone


def test_the_config_repr_hides_url_credentials():
    proxy = proxy_over(answer)
    assert leaks(repr(proxy.config)) == [] and "http://***@up:1" in repr(proxy.config)


def status_echo(status: int) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": echo(request)}})

    return handler


def raising(kind: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise kind(echo(request), request=request)

    return handler


def not_json(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, text=f"<html>{echo(request)}</html>")


def not_completion(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"detail": echo(request)})


FAILURES = {  # upstream behaviour -> (the proxy's status, what its message says)
    "400": (status_echo(400), 400, "the upstream refused the request (HTTP 400)"),
    "422": (status_echo(422), 400, "the upstream refused the request (HTTP 422)"),
    "401": (status_echo(401), 502, "HTTP 401 (authentication failed)"),
    "403": (status_echo(403), 502, "HTTP 403 (access denied)"),
    "404": (status_echo(404), 502, "HTTP 404 (not found)"),
    "429": (status_echo(429), 502, "HTTP 429 (rate limited)"),
    "500": (status_echo(500), 502, "HTTP 500 (server error)"),
    "503": (status_echo(503), 502, "HTTP 503 (server error)"),
    "timeout": (raising(httpx.ReadTimeout), 504, "did not answer in time"),
    "connect": (raising(httpx.ConnectError), 502, "could not be reached"),
    "not json": (not_json, 502, "no valid answer"),
    "no choices": (not_completion, 502, "no valid answer"),
}


@pytest.mark.parametrize("stream", [False, True])  # streamed with one sample: passed through
@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("failure", FAILURES)
def test_upstream_failures_quoting_the_secrets_never_leak_them(caplog, failure, samples, stream):
    caplog.set_level(logging.DEBUG)
    handler, status, says = FAILURES[failure]
    proxy = proxy_over(handler, samples=samples)
    body = {**CHAT, "stream": stream}
    r = call(proxy, "POST", "/v1/chat/completions", json=body, headers=AUTH)
    assert leaks(r.text) == [] and leaks(str(r.headers)) == []
    assert leaks(caplog.text) == []
    assert r.status_code == status, r.text  # streamed too: a 200 but no event stream is a 502
    kind = "invalid_request_error" if status == 400 else "upstream_error"
    assert says in r.json()["error"]["message"] and r.json()["error"]["type"] == kind
    logged = "the upstream refused the request" if status == 400 else "the upstream failed"
    assert logged in caplog.text  # the operator gets the (redacted) detail


def test_a_stream_that_breaks_or_reports_an_error_never_leaks_the_secrets(caplog):
    caplog.set_level(logging.DEBUG)
    head = b'data: {"choices": [{"index": 0, "delta": {"content": "4"}}]}\n\n'

    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield head
            raise httpx.RemoteProtocolError(f"peer closed; key {CANARY} at {UPSTREAM}")

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Broken(), headers=SSE)

    def error_event(request: httpx.Request) -> httpx.Response:
        event = json.dumps({"error": {"message": echo(request)}})
        return httpx.Response(200, content=head + f"data: {event}\n\n".encode(), headers=SSE)

    def content(request: httpx.Request) -> httpx.Response:  # even the text is masked
        chunk = {"choices": [{"index": 0, "delta": {"content": CANARY}, "finish_reason": "stop"}]}
        sse = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
        return httpx.Response(200, content=sse, headers=SSE)

    for handler, says in [
        (broken, "stream broke (RemoteProtocolError)"),
        (error_event, "upstream reported an error"),
        (content, "***"),
    ]:
        proxy = proxy_over(handler)
        r = call(proxy, "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
        assert r.status_code == 200 and says in r.text and leaks(r.text) == []
    assert leaks(caplog.text) == []


def test_a_failing_reranker_quoting_a_secret_does_not_leak_it(caplog):
    class Leaky:
        def scores(self, prompt: str, completions: list[str]) -> list[float]:
            raise BackendError(f"{UPSTREAM}/classify answered 401: bad key {CANARY}")

    proxy = proxy_over(answer, samples=2)
    proxy.majority = Leaky()  # type: ignore[assignment]
    r = call(proxy, "POST", "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 502 and "reranker failed (BackendError)" in r.text
    assert leaks(r.text) == [] and leaks(caplog.text) == []


# --- crafted requests ------------------------------------------------------------------------


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def deep_dict(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


CRAFTED = {  # raw body -> (status, words of the message, param)
    "100,000-deep arrays": (nested(100_000), 400, "nests arrays or objects 100000 deep", None),
    "deep messages": (
        json.dumps(CHAT)[:-1] + ', "user": ' + nested(65, '"x"') + "}",
        400,
        "allows 64",
        None,
    ),
    "5,000-deep verifier meta": (
        json.dumps(
            {**CHAT, "howhard": {"reranker": "verifier", "verifier": {"task": "gsm8k"}}}
        ).removesuffix("}}}")
        + ', "meta": '
        + deep_dict(5000)
        + "}}}",
        400,
        "5003 deep",
        None,
    ),
    "lone surrogate in content": (
        json.dumps({**CHAT, "messages": [{"role": "user", "content": "hi \ud800"}]}),
        400,
        "lone surrogate",
        "messages.0.content",
    ),
    "lone surrogate in stop": (
        json.dumps({**CHAT, "stop": ["ok", "\udfff"]}),
        400,
        "lone surrogate",
        "stop.1",
    ),
    "lone surrogate in a key": (
        json.dumps({**CHAT, "\ud800": 1}),
        400,
        "lone surrogate",
        "\\ud800",
    ),
    "5,000-digit integer": (
        json.dumps(CHAT)[:-1] + ', "seed": ' + "9" * 5000 + "}",
        400,
        "more than 100 digits",
        None,
    ),
    "huge float": (json.dumps(CHAT)[:-1] + ', "temperature": 1e99999}', 400, "out of range", None),
    "NaN": (json.dumps(CHAT)[:-1] + ', "temperature": NaN}', 400, "NaN is not a JSON value", None),
    "invalid UTF-8": (b'{"model": "howhard", "messages": "\xff"}', 400, "not valid JSON", None),
}


@pytest.mark.parametrize("name", CRAFTED)
def test_crafted_bodies_are_a_400_naming_the_problem_and_nothing_goes_upstream(name):
    body, status, says, param = CRAFTED[name]
    sent: list[httpx.Request] = []
    proxy = proxy_over(lambda request: sent.append(request) or answer(request))
    content = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    r = call(proxy, "POST", "/v1/chat/completions", content=content, headers={**AUTH, **JSON})
    assert r.status_code == status, r.text
    assert says in r.json()["error"]["message"] and r.json()["error"]["param"] == param
    assert sent == [] and proxy.metrics.errors["internal"] == 0


@pytest.mark.parametrize(
    "content_type, status",
    [
        (None, 415),
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/json; charset=latin-1", 415),
        ("application/json", 200),
        ("Application/JSON; charset=UTF-8", 200),
    ],
)
def test_only_json_bodies_are_accepted(content_type, status):
    proxy = proxy_over(answer)
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    r = call(proxy, "POST", "/v1/chat/completions", content=json.dumps(CHAT), headers=headers)
    assert r.status_code == status, r.text
    if status == 415:
        assert "Content-Type: application/json" in r.json()["error"]["message"]


json_trees = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ ab,:', max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(json_trees, st.booleans())
def test_json_depth_is_the_nesting_depth_brackets_in_strings_aside(value, indent):
    text = json.dumps(value, indent=1 if indent else None).encode()
    assert json_depth(text) == depth_of(value)


def test_the_depth_check_is_fast_on_a_full_size_body():
    deep = nested(500_000).encode()  # 1 MB of brackets
    escapes = json.dumps({"prompt": '\\"' * 333_000}).encode()  # 1 MB of escaped quotes
    started = time.process_time()  # CPU time: other processes on the machine do not count
    with pytest.raises(ApiError, match="500000"):
        decode_body(deep, 64)
    assert json_depth(escapes) == 1
    assert time.process_time() - started < 0.5


def test_a_body_that_stalls_is_a_408_and_leaves_nothing_in_flight():
    proxy = proxy_over(answer, body_timeout=0.3)
    half = json.dumps(CHAT).encode()[:20]

    async def stalls() -> AsyncIterator[bytes]:
        yield half
        await asyncio.sleep(5)
        yield b"never"

    started = time.perf_counter()
    r = call(proxy, "POST", "/v1/chat/completions", content=stalls(), headers={**AUTH, **JSON})
    assert r.status_code == 408 and "within 0.3 s" in r.json()["error"]["message"]
    assert r.headers["connection"] == "close"
    assert time.perf_counter() - started < 3
    assert proxy.metrics.in_flight == 0


# --- end to end: a real ``howhard serve`` process ---------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    from serving import tiny_predictor

    return tiny_predictor(tmp_path_factory.mktemp("hardening"), "ngrams")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("userinfo", [False, True])
def test_end_to_end_the_canaries_reach_no_client_and_no_log(files, userinfo):
    from serving import API_KEY, howhard_server
    from stub_upstream import stub_server

    with stub_server(echo_status=401) as stub:
        url = stub.url.replace("://", f"://alice:{PASSWORD}@") if userinfo else stub.url
        env = {"CANARY_KEY": CANARY}
        flags = ["--upstream-api-key-env", "CANARY_KEY"]
        with howhard_server(url, *files, *flags, env=env) as proxy:
            auth = {"Authorization": f"Bearer {API_KEY}"}
            for body in (CHAT, {**CHAT, "stream": True}):
                r = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=auth)
                assert r.status_code == 502 and "HTTP 401 (authentication failed)" in r.text
                assert leaks(r.text) == [] and leaks(str(r.headers)) == []
            seen = httpx.get(stub.url + "/stats").json()["last_authorization"]
            log = proxy.log.read_text()
        # The stub did receive the secret (so it could echo it), and echoed it: the test bites.
        assert (PASSWORD if userinfo else CANARY) in base64_decoded(seen)
        assert "howhard serve: http://127.0.0.1" in log and "the upstream failed" in log
        assert leaks(log) == [], log
        if userinfo:
            assert "http://***@127.0.0.1" in log


def base64_decoded(authorization: str) -> str:
    scheme, _, value = authorization.partition(" ")
    return base64.b64decode(value).decode() if scheme.lower() == "basic" else value


def slow_server(files: tuple[Path, Path], *flags: str) -> Any:
    from serving import howhard_server
    from stub_upstream import stub_server

    class Both:
        def __enter__(self) -> Any:
            self.stub = stub_server()
            upstream = self.stub.__enter__()
            self.proxy = howhard_server(upstream.url, *files, *flags)
            return self.proxy.__enter__()

        def __exit__(self, *exc: object) -> None:
            self.proxy.__exit__(*exc)
            self.stub.__exit__(*exc)

    return Both()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def closed_within(s: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``s`` within ``seconds`` (reading what it sent)."""
    s.settimeout(0.1)
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def metric(url: str, name: str) -> float:
    from serving import API_KEY

    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
TIMEOUTS = ["--header-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "1"]


@pytest.mark.integration
@pytest.mark.slow
def test_end_to_end_slow_clients_are_cut_off(files):
    from serving import API_KEY

    with slow_server(files, *TIMEOUTS, "--max-connections", "64") as proxy:
        # 50 connections dripping a request head one byte at a time, and one that sends nothing
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        drips = [connect(proxy.url) for _ in range(50)]
        silent = connect(proxy.url)
        started = time.monotonic()
        for i in range(8):  # 8 bytes each over ~1.6 s, past the 1 s deadline
            for s in drips:
                with contextlib.suppress(OSError):  # closed already
                    s.send(head[i : i + 1])
            time.sleep(0.2)
        assert all(closed_within(s, 3)[0] for s in drips)
        assert closed_within(silent, 3) == (True, b"")  # nothing sent: closed without a word
        assert time.monotonic() - started < 6
        assert metric(proxy.url, 'howhard_connections_closed_total{reason="header_timeout"}') == 51
        partial = connect(proxy.url)  # a head that stops halfway: 408, then closed
        partial.sendall(head)
        assert closed_within(partial, 3) == (True, TIMEOUT_408)

        # a body that stalls halfway: 408 once the body deadline passes, nothing left in flight
        body = json.dumps(CHAT).encode()
        stalled = connect(proxy.url)
        stalled.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
        time.sleep(0.5)
        assert metric(proxy.url, "howhard_requests_in_flight") == 2  # it, and this /metrics
        done, got = closed_within(stalled, 4)
        assert done and got.startswith(b"HTTP/1.1 408"), got
        assert b"did not arrive within 1 s" in got
        assert metric(proxy.url, "howhard_requests_in_flight") == 1  # this /metrics only

        # an idle keep-alive connection is closed after its timeout
        idle = connect(proxy.url)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        done, got = closed_within(idle, 3)
        assert done and got.startswith(b"HTTP/1.1 200")

        # a head larger than the cap: 431
        huge = connect(proxy.url)
        huge.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000)
        done, got = closed_within(huge, 3)
        assert done and got.startswith(b"HTTP/1.1 431"), got
        assert httpx.get(proxy.url + "/health").status_code == 200  # still serving


@pytest.mark.integration
@pytest.mark.slow
def test_end_to_end_connections_beyond_the_cap_get_503(files):
    with slow_server(files, "--header-timeout", "2", "--max-connections", "4") as proxy:
        idle = [connect(proxy.url) for _ in range(4)]
        time.sleep(0.2)
        assert httpx.get(proxy.url + "/health").status_code == 503
        for s in idle:
            s.close()
        time.sleep(0.2)
        assert httpx.get(proxy.url + "/health").status_code == 200


@pytest.mark.parametrize("implementation", ["httptools", "h11"])
def test_the_head_guard_works_over_both_of_uvicorns_http_implementations(implementation):
    import threading

    import uvicorn
    from servers import free_port

    from howhard.serve.connections import guarded_protocol

    if implementation == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    closed: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    protocol = guarded_protocol(base, 0.5, 2000, closed=closed.append)
    server = uvicorn.Server(
        uvicorn.Config(
            app, port=port, http=protocol, lifespan="off", log_level="warning", timeout_keep_alive=1
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        silent, partial, big, served = (connect(url) for _ in range(4))
        partial.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        big.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000)
        served.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        done, got = closed_within(big, 2)
        assert done and got.startswith(b"HTTP/1.1 431"), got
        done, got = closed_within(served, 0.2)
        assert not done and got.startswith(b"HTTP/1.1 200")  # answered, then kept alive
        assert closed_within(partial, 2) == (True, TIMEOUT_408)
        assert closed_within(silent, 2) == (True, b"")
        served.sendall(b"GET / HTTP/1.1\r\n")  # a second request that stalls: its own deadline
        assert closed_within(served, 2) == (True, TIMEOUT_408)
        assert sorted(closed) == ["header_timeout"] * 3 + ["header_too_large"]
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_fleet_sends_url_credentials_as_basic_auth_and_quotes_neither_them_nor_the_key():
    seen: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401, json={"error": {"message": echo(request)}})

    async def go() -> BackendError:
        fleet = Fleet([UPSTREAM], api_key=CANARY, transport=httpx.MockTransport(refuse))
        try:
            await fleet.draw({"model": "m", "prompt": "x"}, [1], chat=False)
        except BackendError as e:
            return e
        finally:
            await fleet.aclose()
        raise AssertionError("no error")

    error = asyncio.run(go())
    assert error.status == 401 and "HTTP 401" in str(error) and leaks(str(error)) == []
    (request,) = seen
    assert str(request.url) == "http://up:1/v1/completions"  # what httpx logs: no userinfo
    expected = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"
