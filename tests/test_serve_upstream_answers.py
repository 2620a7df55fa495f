"""What ``howhard serve`` answers when its upstream answers badly, for real: a ``howhard serve``
process over a stub upstream process (tests/stub_upstream.py ``--canned``) on 127.0.0.1. An
upstream's refusal that is the request's fault (400/413/422: a prompt over the context window)
is a 400 the client can act on, asked once; a server error is retried, then a 502; a stream
request answered with anything but server-sent events (an HTML page, a JSON body) is a 502, before
any byte of it reaches the client. The upstream's own body is never forwarded."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import AUTH, howhard_server, tiny_predictor
from stub_upstream import stub_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAT = {"model": "howhard", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
CONTEXT = json.dumps(  # llama-cpp-python's answer to a prompt over its context window
    {
        "error": {
            "message": "This model's maximum context length is 2048 tokens. However, you "
            "requested 3036 tokens (3031 in the messages, 5 in the completion). UPSTREAM-SECRET",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
)
REFUSAL = json.dumps({"error": {"message": "temperature: UPSTREAM-SECRET", "type": "invalid"}})
SINGLE = ("--budget", "1", "--max-per-query", "1")  # one sample: a stream passes through
SEVERAL = ("--budget", "3", "--min-per-query", "3", "--max-per-query", "3")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_predictor(tmp_path_factory.mktemp("answers"), "ngrams")


@pytest.fixture(scope="module")
def canned(files: tuple[Path, Path]) -> Iterator[Any]:
    """``canned(status, content_type, body, *flags)``: (a stub answering that, a proxy with
    ``flags`` over it), made once per answer and flags and stopped with the module."""
    started: dict[tuple[Any, ...], tuple[Any, Any]] = {}

    def start(status: int, content_type: str, body: str, *flags: str) -> tuple[Any, Any]:
        key = (status, content_type, body, *flags)
        if key not in started:
            stub = running.enter_context(stub_server(canned=(status, content_type, body)))
            started[key] = (stub, running.enter_context(howhard_server(stub.url, *files, *flags)))
        return started[key]

    with contextlib.ExitStack() as running:
        yield start


def requests_to(stub: Any) -> int:
    return int(httpx.get(stub.url + "/stats").json()["requests"])


def ask(proxy: Any, body: dict[str, Any], chat: bool = True) -> httpx.Response:
    path = "/v1/chat/completions" if chat else "/v1/completions"
    return httpx.post(proxy.url + path, json=body, headers=AUTH, timeout=60)


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("text/html", "<html>oops UPSTREAM-SECRET</html>"),
        ("application/json", json.dumps({"choices": [{"index": 0, "text": "UPSTREAM-SECRET"}]})),
    ],
)
def test_a_stream_answered_without_server_sent_events_is_a_502_before_any_byte(
    canned: Any, content_type: str, body: str
) -> None:
    _, proxy = canned(200, content_type, body, *SINGLE)
    r = ask(proxy, {**CHAT, "stream": True})
    assert r.status_code == 502 and r.headers["content-type"] == "application/json", r.text
    error = r.json()["error"]
    assert error["type"] == "upstream_error" and "no valid answer" in error["message"]
    assert "UPSTREAM-SECRET" not in r.text and "oops" not in r.text
    assert "not server-sent events" in proxy.log.read_text()  # the operator is told why


@pytest.mark.parametrize("flags", [SINGLE, SEVERAL], ids=["one sample", "three samples"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_over_the_context_window_is_a_400_asked_once(
    canned: Any, flags: tuple[str, ...], stream: bool
) -> None:
    stub, proxy = canned(400, "application/json", CONTEXT, *flags)
    before = requests_to(stub)
    r = ask(proxy, {**CHAT, "stream": stream})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded"
    assert "context window" in error["message"] and "UPSTREAM-SECRET" not in r.text
    assert requests_to(stub) == before + 1  # not retried, nor taken for a refusal of n = 3


@pytest.mark.parametrize("status", [400, 413, 422])
def test_other_refusals_are_a_400_without_the_upstreams_message(canned: Any, status: int) -> None:
    stub, proxy = canned(status, "application/json", REFUSAL, *SINGLE)
    before = requests_to(stub)
    r = ask(proxy, CHAT)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] is None
    assert f"the upstream refused the request (HTTP {status})" in error["message"]
    assert "UPSTREAM-SECRET" not in r.text and "temperature" not in r.text
    assert requests_to(stub) == before + 1
    assert "temperature: UPSTREAM-SECRET" in proxy.log.read_text()  # the reason, for the operator


def test_a_server_error_is_still_retried_then_a_502(canned: Any) -> None:
    stub, proxy = canned(500, "application/json", REFUSAL, *SINGLE)
    before = requests_to(stub)
    r = ask(proxy, CHAT)
    assert r.status_code == 502 and "HTTP 500 (server error)" in r.json()["error"]["message"]
    assert requests_to(stub) == before + 3  # the first try and the 2 retries of the default


def test_an_empty_prompt_is_a_400_without_an_upstream_call(canned: Any) -> None:
    stub, proxy = canned(500, "application/json", REFUSAL, *SINGLE)
    before = requests_to(stub)
    r = ask(proxy, {"model": "howhard", "prompt": ""}, chat=False)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    assert requests_to(stub) == before
