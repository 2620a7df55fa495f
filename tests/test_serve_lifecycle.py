"""A request's and the server's end: a client that leaves cancels its request's upstream work and
frees what it held; upstream waits are bounded by --timeout and --retries; SIGTERM waits at most
--shutdown-timeout for the requests in flight; a port in use is a one-line error, exit code 2.

In process over a fake upstream that hangs (the ASGI app driven by hand, so the client can
disconnect), and end to end with a real ``howhard serve`` process in front of the loopback stub
upstream (`stub_upstream`, which counts the requests whose client left)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import API_KEY, fake_proxy

from howhard.serve.app import create_app

KEY = "sk-client"
CHAT = {"model": "howhard", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}


@pytest.mark.parametrize(("samples", "stream"), [(2, False), (2, True), (1, False), (1, True)])
def test_a_client_that_leaves_cancels_the_upstream_requests_and_frees_what_they_held(
    samples, stream
):
    async def go() -> None:
        asked, closed = asyncio.Event(), asyncio.Event()

        async def hangs(request: httpx.Request) -> httpx.Response:
            asked.set()
            try:
                await asyncio.sleep(60)
            finally:
                closed.set()
            raise AssertionError("unreachable")

        proxy = fake_proxy(hangs, client_key=KEY, upstream_key="sk-up", samples=samples)
        body = json.dumps({**CHAT, "stream": stream}).encode()
        gone = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            pass

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"authorization", f"Bearer {KEY}".encode()),
                (b"content-type", b"application/json"),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("proxy", 80),
        }
        request = asyncio.create_task(create_app(proxy)(scope, receive, send))
        await asyncio.wait_for(asked.wait(), 10)
        assert proxy.limiter.in_flight == samples and proxy.metrics.in_flight == 1
        gone.set()  # the client disconnects
        await asyncio.wait_for(request, 10)  # without the fix: the upstream's 60 s
        assert closed.is_set()  # the upstream request was cancelled
        assert proxy.limiter.in_flight == 0 and proxy.metrics.in_flight == 0
        assert proxy.metrics.requests[("chat", "499")] == 1
        assert sum(proxy.metrics.samples.values()) == 0
        assert proxy.pacer is not None and proxy.pacer.spent == -samples  # the decision refunded
        await proxy.aclose()

    asyncio.run(go())


# --- end to end: a real ``howhard serve`` process in front of the stub --------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    from serving import tiny_predictor

    return tiny_predictor(tmp_path_factory.mktemp("lifecycle"), "ngrams")


def until(condition: Callable[[], bool], seconds: float = 60) -> None:
    """Wait until ``condition()`` holds (generous deadlines: the machine may be loaded)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def stats(stub: Any) -> dict[str, Any]:
    return dict(httpx.get(stub.url + "/stats").json())


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def post_raw(url: str, body: dict[str, Any]) -> socket.socket:
    """A chat request sent on a raw socket (closing it is the client leaving)."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    data = json.dumps(body).encode()
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return s


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    ("samples", "stream", "status"), [(2, False, "499"), (2, True, "499"), (1, True, "200")]
)
def test_end_to_end_a_client_that_leaves_frees_the_upstream_and_the_proxy(
    files, samples, stream, status
):
    from serving import howhard_server
    from stub_upstream import stub_server

    k = ["--budget", str(samples), "--min-per-query", str(samples), "--max-per-query", str(samples)]
    with stub_server(delay=600) as stub, howhard_server(stub.url, *files, *k) as proxy:
        client = post_raw(proxy.url, {**CHAT, "stream": stream})
        until(lambda: stats(stub)["in_flight"] == samples)  # the upstream is drawing
        client.close()
        # The upstream sees its request closed; nothing stays in flight (but this /metrics).
        until(lambda: stats(stub)["abandoned"] == 1 and stats(stub)["in_flight"] == 0)
        until(lambda: metric(proxy.url, "howhard_requests_in_flight") == 1)
        assert metric(proxy.url, f'howhard_requests_total{{route="chat",status="{status}"}}') == 1


@pytest.mark.integration
@pytest.mark.slow
def test_end_to_end_timeout_and_retries_bound_the_wait_for_a_hung_upstream(files):
    from serving import howhard_server
    from stub_upstream import stub_server

    flags = ["--timeout", "1", "--retries", "1"]
    with stub_server(delay=600) as stub, howhard_server(stub.url, *files, *flags) as proxy:
        started = time.monotonic()
        r = httpx.post(
            proxy.url + "/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=120,
        )
        assert r.status_code == 504, r.text
        assert time.monotonic() - started < 60  # 2 tries of 1 s (the default: 3 of 300 s)
        until(lambda: stats(stub)["requests"] == 2 and stats(stub)["in_flight"] == 0)


@pytest.mark.integration
@pytest.mark.slow
def test_end_to_end_sigterm_cancels_the_requests_left_after_the_shutdown_timeout(files):
    from serving import howhard_server
    from stub_upstream import stub_server

    flags = ["--shutdown-timeout", "2"]
    with stub_server(delay=600) as stub, howhard_server(stub.url, *files, *flags) as proxy:
        outcome: list[object] = []

        def ask() -> None:
            try:
                headers = {"Authorization": f"Bearer {API_KEY}"}
                url = proxy.url + "/v1/chat/completions"
                outcome.append(httpx.post(url, json=CHAT, headers=headers, timeout=120))
            except httpx.HTTPError as e:
                outcome.append(e)

        asker = threading.Thread(target=ask)
        asker.start()
        until(lambda: stats(stub)["in_flight"] > 0)  # the request is waiting on the upstream
        assert proxy.proc is not None
        signalled = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(60) in (0, -signal.SIGTERM)
        assert time.monotonic() - signalled < 30  # the deadline, 2 s (was the 300 s timeout)
        asker.join(60)
        (answer,) = outcome
        assert not isinstance(answer, httpx.Response) or answer.status_code >= 500
        until(lambda: stats(stub)["in_flight"] == 0)


@pytest.mark.integration
@pytest.mark.slow
def test_end_to_end_a_port_in_use_is_a_one_line_error_and_exit_code_2(files, tmp_path):
    from serving import serve_command
    from stub_upstream import stub_server

    with socket.socket() as taken, stub_server() as stub:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = serve_command(port, [stub.url], *files, "--budget", "2", "--max-per-query", "4")
        env = {**os.environ, "HOWHARD_API_KEYS": API_KEY, "XDG_CACHE_HOME": str(tmp_path)}
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()  # no banner, no "ready in", no uvicorn log
    assert line.startswith(f"howhard serve: error: cannot listen on 127.0.0.1:{port} (")
    assert "choose another --port, or stop the process" in line
