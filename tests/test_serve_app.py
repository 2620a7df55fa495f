"""The proxy's HTTP behaviour, in process: the real app and fleet over a fake upstream transport
(the real upstream and the real server process are in test_serve_integration.py)."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import call, fake_proxy

from howhard.allocate import binary_gains
from howhard.rerank.rerankers import RewardModelReranker
from howhard.serve.app import Decision, Proxy, SampleLimiter, create_app

KEY = "sk-client"
UPSTREAM_KEY = "sk-upstream-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}
CHAT = {"model": "howhard", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
SSE = {"content-type": "text/event-stream"}


class Upstream_:
    """A fake OpenAI server: answers each request with the next canned texts; records bodies."""

    def __init__(self, texts: list[str] | None = None, honours_n: bool = True) -> None:
        self.texts = texts or ["5"]
        self.honours_n = honours_n
        self.bodies: list[dict[str, Any]] = []
        self.status: list[tuple[int, dict[str, str]]] = []  # answers to give before succeeding
        self.turn = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        assert request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        if self.status:
            code, headers = self.status.pop(0)
            return httpx.Response(code, headers=headers, json={"error": {"message": "busy"}})
        n = body.get("n", 1) if self.honours_n else 1
        texts = [self.texts[(self.turn + j) % len(self.texts)] for j in range(n)]
        self.turn += n
        chat = "messages" in body
        choices = [
            {"index": j, "finish_reason": "stop"}
            | ({"message": {"role": "assistant", "content": t}} if chat else {"text": t})
            for j, t in enumerate(texts)
        ]
        tokens = sum(len(t) for t in texts)
        usage = {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens}
        if body.get("stream"):  # one sample (n = 1): its text, then the finish reason
            first = {**choices[0], "finish_reason": None}
            if chat:
                first["delta"] = first.pop("message")
            end = {"index": 0, "finish_reason": "stop", **({"delta": {}} if chat else {"text": ""})}
            sse = "".join(f"data: {json.dumps({'choices': [c]})}\n\n" for c in (first, end))
            return httpx.Response(200, text=sse + "data: [DONE]\n\n", headers=SSE)
        return httpx.Response(200, json={"choices": choices, "usage": usage})


def make_proxy(
    upstream: Upstream_, samples: int = 3, budget: float = 2.0, k: int = 4, **config: Any
) -> Proxy:
    return fake_proxy(
        upstream,
        client_key=KEY,
        upstream_key=UPSTREAM_KEY,
        samples=samples,
        budget=budget,
        k=k,
        **config,
    )


def test_chat_draws_the_decided_samples_and_returns_the_majority_answer():
    up = Upstream_(["It is 5.", "6", "5"])
    r = call(make_proxy(up), "POST", "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "It is 5."} or body[
        "choices"
    ][0]["message"] == {"role": "assistant", "content": "5"}
    assert body["object"] == "chat.completion" and body["model"] == "howhard"
    tokens = len("It is 5.") + 1 + 1
    assert body["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": tokens,
        "total_tokens": 10 + tokens,
    }
    assert r.headers["x-howhard-samples"] == "3" and r.headers["x-howhard-route"] == "weak"
    assert r.headers["x-howhard-predicted-success"] == "0.2500"
    (sent,) = up.bodies  # one request for all 3 samples: n=3
    assert sent["n"] == 3 and sent["model"] == "up-model" and sent["max_tokens"] == 256
    assert sent["messages"] == CHAT["messages"]


def test_an_upstream_that_ignores_n_gets_parallel_requests_and_usage_counts_all():
    up = Upstream_(["7"], honours_n=False)
    r = call(
        make_proxy(up, samples=4),
        "POST",
        "/v1/completions",
        json={"model": "howhard", "prompt": "Q"},
        headers=AUTH,
    )
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == "7"
    assert len(up.bodies) == 1 + 3  # n=4 answered with one choice, then 3 single requests
    assert r.json()["usage"] == {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}


def test_request_seed_gives_each_sample_its_own_seed():
    up = Upstream_(["1"], honours_n=False)
    call(
        make_proxy(up, samples=3),
        "POST",
        "/v1/chat/completions",
        json={**CHAT, "seed": 7},
        headers=AUTH,
    )
    assert sorted(b["seed"] for b in up.bodies[1:]) == [8, 9]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": "Basic " + KEY},
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/metrics", "/ready"])
def test_every_route_but_health_needs_a_configured_key(headers, path):
    up = Upstream_()
    method = "POST" if "completions" in path else "GET"
    r = call(make_proxy(up), method, path, json=CHAT, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    assert up.bodies == []
    assert call(make_proxy(up), "GET", "/health").json() == {"status": "ok"}


INVALID = [
    ({"messages": CHAT["messages"]}, 400, "model"),
    ({**CHAT, "model": "gpt-9"}, 404, "model"),
    ({**CHAT, "n": 2}, 400, "n"),
    ({**CHAT, "max_tokens": 5000}, 400, "max_tokens"),
    ({**CHAT, "max_tokens": 0}, 400, "max_tokens"),
    ({**CHAT, "temperature": 3}, 400, "temperature"),
    ({**CHAT, "temperature": "hot"}, 400, "temperature"),
    ({**CHAT, "messages": []}, 400, "messages"),
    ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ({**CHAT, "max_completion_tokens": 5000}, 400, "max_completion_tokens"),
    ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({**CHAT, "stop": ["a", 5]}, 400, "stop.1"),
    ({**CHAT, "messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    (
        {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        "messages.0.content.0.type",
    ),
    ({**CHAT, "tools": []}, 400, "tools"),
    ({**CHAT, "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({**CHAT, "messages": [{"role": "user", "content": "x" * 300_000}]}, 400, "messages"),
    ({**CHAT, "howhard": {"reranker": "verifier"}}, 400, "howhard"),
    ({**CHAT, "howhard": {"reranker": "reward-model"}}, 400, "howhard.reranker"),
    (
        {**CHAT, "howhard": {"reranker": "verifier", "verifier": {"task": "arithmetc"}}},
        400,
        "howhard.verifier.task",
    ),
]


@pytest.mark.parametrize("body, status, param", INVALID)
def test_invalid_requests_are_refused_before_anything_goes_upstream(body, status, param):
    up = Upstream_()
    r = call(make_proxy(up), "POST", "/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert up.bodies == []


def test_unknown_verifier_suggests_the_task():
    body = {**CHAT, "howhard": {"reranker": "verifier", "verifier": {"task": "arithmetc"}}}
    r = call(make_proxy(Upstream_()), "POST", "/v1/chat/completions", json=body, headers=AUTH)
    assert "did you mean 'arithmetic'" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "content, status",
    [(b"{not json", 400), (b"[1, 2]", 400), (b"x" * 1_000_001, 413)],
)
def test_bodies_that_are_not_a_json_object_or_too_large_are_refused(content, status):
    up = Upstream_()
    r = call(make_proxy(up), "POST", "/v1/completions", content=content, headers=JSON_AUTH)
    assert r.status_code == status and "error" in r.json()
    assert up.bodies == []


def test_unknown_routes_and_methods_answer_in_openai_error_format():
    proxy = make_proxy(Upstream_())
    r = call(proxy, "GET", "/v1/engines", headers=AUTH)
    assert r.status_code == 404 and "/v1/engines" in r.json()["error"]["message"]
    r = call(proxy, "GET", "/v1/chat/completions", headers=AUTH)
    assert r.status_code == 405 and "error" in r.json()


def test_verifier_named_by_the_request_picks_the_correct_sample():
    up = Upstream_(["6", "7", "5", "9"])
    body = {**CHAT, "howhard": {"reranker": "verifier", "verifier": {"task": "arithmetic"}}}
    for _ in range(5):  # the one right answer wins every time, wherever it lands
        r = call(make_proxy(up, samples=4), "POST", "/v1/chat/completions", json=body, headers=AUTH)
        assert r.json()["choices"][0]["message"]["content"] == "5"


def test_upstream_429_is_retried_after_retry_after_then_served():
    up = Upstream_(["5"])
    up.status = [(429, {"Retry-After": "0"})]
    r = call(make_proxy(up, samples=1), "POST", "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 200 and len(up.bodies) == 2


def test_upstream_failing_every_retry_is_a_502_without_the_upstream_key():
    up = Upstream_()
    up.status = [(503, {}), (503, {})]  # retries=1: two attempts
    proxy = make_proxy(up, samples=2)
    r = call(proxy, "POST", "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 502
    assert (
        r.json()["error"]["type"] == "upstream_error" and "HTTP 503" in r.json()["error"]["message"]
    )
    assert UPSTREAM_KEY not in r.text
    assert proxy.metrics.errors["upstream"] == 1


def test_upstream_timeouts_are_a_504():
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("too slow", request=request)

    proxy = make_proxy(Upstream_())
    proxy.weak.fleet.client._transport = httpx.MockTransport(slow)
    r = call(proxy, "POST", "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"


def events(text: str) -> list[Any]:
    return [
        line[len("data: ") :] if line == "data: [DONE]" else json.loads(line[len("data: ") :])
        for line in text.split("\n\n")
        if line
    ]


def test_streaming_several_samples_streams_the_chosen_one_then_usage_and_done():
    up = Upstream_(["5", "5", "4"])
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    r = call(make_proxy(up), "POST", "/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    first, last, usage, done = events(r.text)
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "5"}
    assert last["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert usage["usage"]["completion_tokens"] == 3 and usage["choices"] == []
    assert done == "[DONE]"
    assert "stream" not in up.bodies[0]  # k > 1: drawn whole, then streamed


@pytest.mark.parametrize("include_usage", [False, True])
def test_streaming_one_sample_passes_the_upstream_stream_through_as_the_proxys(include_usage):
    upstream = {"id": "up-1", "created": 1, "model": "/srv/models/up.gguf"}  # a host path
    chunks = [{"choices": [{"index": 0, "delta": {"content": c}}]} for c in ("4", "2")]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    sse = "".join(f"data: {json.dumps({**upstream, **c})}\n\n" for c in chunks)
    sse += ": ping\n\ndata: [DONE]\n\n"  # no usage: llama-cpp-python ignores include_usage

    def streaming(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(
            200, content=sse.encode(), headers={"content-type": "text/event-stream"}
        )

    proxy = make_proxy(Upstream_(), samples=1)
    proxy.weak.fleet.client._transport = httpx.MockTransport(streaming)
    body = {**CHAT, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    r = call(proxy, "POST", "/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 200 and r.headers["x-howhard-samples"] == "1"
    *got, done = events(r.text)
    assert done == "[DONE]" and "/srv/models" not in r.text and "up-1" not in r.text
    (ids,) = {e["id"] for e in got}
    assert ids.startswith("chatcmpl-howhard-") and {e["model"] for e in got} == {"howhard"}
    assert [e["choices"] for e in got[:3]] == [c["choices"] for c in chunks]
    if include_usage:  # counted: a token per content event, the prompt's bound
        prompt = len(CHAT["messages"][0]["content"]) + 2 * 16
        usage = {"prompt_tokens": prompt, "completion_tokens": 2, "total_tokens": prompt + 2}
        assert got[3]["choices"] == [] and got[3]["usage"] == usage
    assert len(got) == 3 + include_usage


def test_a_stream_that_breaks_ends_with_an_error_event():
    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield b'data: {"choices": [{"index": 0, "delta": {"content": "4"}}]}\n\n'
            raise httpx.RemoteProtocolError("peer closed connection")

    proxy = make_proxy(Upstream_(), samples=1)
    proxy.weak.fleet.client._transport = httpx.MockTransport(
        lambda request: httpx.Response(200, stream=Broken(), headers=SSE)
    )
    r = call(proxy, "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
    *_, last = events(r.text)
    assert "upstream stream broke" in last["error"]["message"]
    assert proxy.metrics.errors["upstream_stream"] == 1


def test_a_stream_that_ends_without_done_ends_with_an_error_event():
    proxy = make_proxy(Upstream_(), samples=1)
    proxy.weak.fleet.client._transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=b'data: {"choices": []}\n\n', headers=SSE)
    )
    r = call(proxy, "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
    assert "ended without a finish reason" in events(r.text)[-1]["error"]["message"]


def test_a_stream_cut_short_with_done_but_no_finish_reason_ends_with_an_error_not_done():
    # llama-cpp-python's server ends a stream it interrupts (another request came) with [DONE].
    cut = b'data: {"choices": [{"index": 0, "delta": {"content": "4"}}]}\n\ndata: [DONE]\n\n'
    proxy = make_proxy(Upstream_(), samples=1)
    proxy.weak.fleet.client._transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=cut, headers=SSE)
    )
    r = call(proxy, "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
    first, last = events(r.text)
    assert first["choices"][0]["delta"] == {"content": "4"}
    assert "without a finish reason" in last["error"]["message"]


def test_models_and_metrics():
    proxy = make_proxy(Upstream_(["5"]), samples=2)
    assert [m["id"] for m in call(proxy, "GET", "/v1/models", headers=AUTH).json()["data"]] == [
        "up-model",
        "howhard",
    ]
    call(proxy, "POST", "/v1/chat/completions", json=CHAT, headers=AUTH)
    call(proxy, "POST", "/v1/chat/completions", json={**CHAT, "n": 3}, headers=AUTH)
    text = call(proxy, "GET", "/metrics", headers=AUTH).text
    assert 'howhard_requests_total{route="chat",status="200"} 1' in text
    assert 'howhard_requests_total{route="chat",status="400"} 1' in text
    assert 'howhard_samples_total{route="weak"} 2' in text
    assert "howhard_budget_target 2" in text
    assert "howhard_upstream_latency_seconds_count 1" in text


def test_the_global_cap_bounds_samples_in_flight_over_concurrent_requests():
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        n = json.loads(request.content).get("n", 1)
        in_flight += n
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= n
        return Upstream_(["5"])(request)

    proxy = make_proxy(Upstream_(), samples=3, max_concurrency=5)
    proxy.weak.fleet.client._transport = httpx.MockTransport(slow)

    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=create_app(proxy))
        async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
            rs = await asyncio.gather(
                *(client.post("/v1/chat/completions", json=CHAT, headers=AUTH) for _ in range(20))
            )
        return [r.status_code for r in rs]

    assert asyncio.run(go()) == [200] * 20
    assert peak <= 5


def test_requests_beyond_the_waiting_cap_get_429():
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return Upstream_(["5"])(request)

    proxy = make_proxy(Upstream_(), samples=4, k=4, max_concurrency=4, max_waiting=1)
    proxy.weak.fleet.client._transport = httpx.MockTransport(slow)

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(proxy))
        async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
                        for _ in range(6)
                    )
                )
            )

    answers = asyncio.run(go())
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) >= 2 and set(codes) <= {200, 429} and 429 in codes
    busy = next(r for r in answers if r.status_code == 429)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"]["type"] == "rate_limit_error"


# A fuzz test: whatever a client sends, the answer is never a 5xx, and nothing invalid goes
# upstream. Bodies are random JSON, random mutations of a valid request, random fields, and
# crafted raw bodies: deep nesting, lone surrogates, huge numbers, each field's type confused.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "n", "seed", "stop", "stream", "stream_options", "presence_penalty", "frequency_penalty",
    "user", "howhard", "tools", "logprobs",
]  # fmt: skip
mutations = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4)
valid_fields = st.fixed_dictionaries(
    {},
    optional={
        "max_tokens": st.integers(1, 1024),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "seed": st.integers(0, 2**31 - 1),
        "stop": st.lists(st.text(min_size=1, max_size=5), max_size=4),
        "stream": st.booleans(),
        "user": st.text(max_size=20),
        "howhard": st.just({"reranker": "majority"}),
    },
)


PATHS = [  # every field a request may hold, nested ones too
    *FIELDS, "messages.0.role", "messages.0.content", "messages.0.content.0.text",
    "messages.0.name", "howhard.reranker", "howhard.verifier", "howhard.verifier.task",
    "howhard.verifier.meta", "howhard.verifier.meta.answer", "stream_options.include_usage",
]  # fmt: skip
BASE = {  # a valid request in which every path of PATHS exists
    "model": "howhard",
    "messages": [{"role": "user", "content": [{"type": "text", "text": "What is 2 + 3?"}]}],
    "stream": True,
    "stream_options": {"include_usage": True},
    "howhard": {"reranker": "verifier", "verifier": {"task": "arithmetic", "meta": {"answer": 5}}},
}
PLACEHOLDER = "<raw>"


def raw_at(path: str, raw: str) -> bytes:
    """`BASE` with the raw JSON text ``raw`` at the dotted ``path``."""
    body = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = body
    for name in parents:
        node = node[int(name) if isinstance(node, list) else name]
    node[int(last) if isinstance(node, list) else last] = PLACEHOLDER
    return json.dumps(body).replace(json.dumps(PLACEHOLDER), raw).encode()


deep = st.integers(30, 5000).flatmap(
    lambda n: st.sampled_from(["[" * n + "]" * n, '{"a": ' * n + "1" + "}" * n])
)
surrogates = st.lists(
    st.one_of(st.integers(0xD800, 0xDFFF).map(chr), st.characters()), min_size=1, max_size=6
).map(lambda cs: json.dumps("".join(cs)))  # escaped: "\ud800"
huge_numbers = st.one_of(
    st.integers(90, 20_000).map(lambda n: "9" * n),
    st.integers(90, 5_000).map(lambda n: "-1" + "0" * n + ".5"),
    st.sampled_from(["1e99999", "-1e400", "1e-99999", "NaN", "Infinity", "-Infinity"]),
)
confused = st.sampled_from(
    [None, True, 0, -1, 2**31, 2**63, 1.5, -0.0, "", "x", [], [1, "a"], {}, {"a": None}, [[[]]]]
).map(json.dumps)
crafted = st.builds(
    raw_at, st.sampled_from(PATHS), st.one_of(deep, surrogates, huge_numbers, confused)
)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    chat=st.booleans(),
    body=st.one_of(
        json_values,
        mutations,
        st.tuples(mutations, valid_fields).map(lambda m: {**CHAT, **m[0], **m[1]}),
        valid_fields.map(lambda m: {**CHAT, **m}),
        valid_fields.map(lambda m: {"model": "howhard", "prompt": "What is 1 + 1?", **m}),
        crafted,
    ),
)
def test_fuzzed_requests_never_get_a_5xx(fuzz_proxy, chat, body):
    proxy, up = fuzz_proxy
    before = len(up.bodies)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    content = body if isinstance(body, bytes) else json.dumps(body)  # NaN too
    r = call(proxy, "POST", path, content=content, headers=JSON_AUTH)
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert "error" in r.json()
        assert len(up.bodies) == before  # refused: nothing went upstream


@pytest.fixture(scope="module")
def fuzz_proxy() -> tuple[Proxy, Upstream_]:
    up = Upstream_(["5"])
    return make_proxy(up, samples=1), up


def test_the_fuzz_also_sent_valid_requests(fuzz_proxy):
    # Runs after the fuzz (same module fixture): some fuzzed requests were valid and were served,
    # so the fuzz exercised the whole path, not only the validation.
    proxy, up = fuzz_proxy
    assert len(up.bodies) >= 50
    assert (
        proxy.metrics.requests[("chat", "200")] + proxy.metrics.requests[("completions", "200")]
        >= 50
    )


def test_a_verifier_that_cannot_score_the_request_is_a_400_before_any_sample():
    up = Upstream_()
    body = {**CHAT, "howhard": {"reranker": "verifier", "verifier": {"task": "gsm8k", "meta": {}}}}
    r = call(make_proxy(up), "POST", "/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "howhard.verifier.meta"
    assert "meta['answer']" in r.json()["error"]["message"]
    assert up.bodies == []
    body["howhard"]["verifier"]["meta"] = {"answer": "5"}
    up = Upstream_(["6", "The answer is 5.", "7"])
    r = call(make_proxy(up), "POST", "/v1/chat/completions", json=body, headers=AUTH)
    assert r.json()["choices"][0]["message"]["content"] == "The answer is 5."


def test_the_limiter_grants_capacity_first_come_first_served():
    async def go() -> list[str]:
        limiter = SampleLimiter(cap=4, max_waiting=10)
        order: list[str] = []
        release = asyncio.Event()

        async def take(name: str, k: int) -> None:
            async with limiter.hold(k):
                order.append(name)
                await release.wait()

        first = asyncio.create_task(take("a:3", 3))
        await asyncio.sleep(0)
        big = asyncio.create_task(take("b:4", 4))  # must wait for a
        await asyncio.sleep(0)
        small = asyncio.create_task(take("c:1", 1))  # would fit now, but b came first
        await asyncio.sleep(0.01)
        assert order == ["a:3"] and limiter.waiting == 2
        release.set()
        await asyncio.gather(first, big, small)
        assert limiter.in_flight == 0 and limiter.waiting == 0
        return order

    assert asyncio.run(go()) == ["a:3", "b:4", "c:1"]


def test_a_cancelled_waiter_does_not_block_the_queue():
    async def go() -> None:
        limiter = SampleLimiter(cap=2, max_waiting=10)
        hold = limiter.hold(2)
        await hold.__aenter__()
        held = [limiter.hold(2), limiter.hold(1)]  # kept: a collected one would release
        waiter = asyncio.create_task(held[0].__aenter__())
        await asyncio.sleep(0)
        later = asyncio.create_task(held[1].__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        await hold.__aexit__(None, None, None)
        await asyncio.wait_for(later, 1)
        assert limiter.in_flight == 1

    asyncio.run(go())


def test_requests_refused_or_failed_upstream_are_not_counted_as_spent():
    up = Upstream_()
    up.status = [(503, {}), (503, {})]
    proxy = make_proxy(up)
    hard = binary_gains([0.3], 4)[0]
    pacer = proxy.pacer
    assert pacer is not None
    proxy.decide = lambda texts: [Decision(pacer.decide(hard), "weak", 0.3, 0.5) for _ in texts]
    assert call(proxy, "POST", "/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 502
    assert (pacer.decided, pacer.spent) == (0, 0)
    r = call(proxy, "POST", "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 200
    assert (pacer.decided, pacer.spent) == (1, int(r.headers["x-howhard-samples"]))


def test_a_reward_model_reranker_picks_its_top_scored_sample():
    class LengthScores:  # a RewardClient: longer answers score higher
        def score(self, prompt: str, completions: list[str]) -> list[float]:
            assert prompt == "What is 2 + 3?"
            return [float(len(c)) for c in completions]

    up = Upstream_(["5", "It is 6.", "5"])
    proxy = make_proxy(up, reranker="reward-model", reward_model="x")
    proxy.reward_model = RewardModelReranker(LengthScores())
    r = call(proxy, "POST", "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.json()["choices"][0]["message"]["content"] == "It is 6."
    up.turn = 0
    body = {**CHAT, "howhard": {"reranker": "majority"}}  # the request may ask for another
    r = call(proxy, "POST", "/v1/chat/completions", json=body, headers=AUTH)
    assert r.json()["choices"][0]["message"]["content"] == "5"


def test_a_greedy_request_draws_one_sample_and_the_pacer_counts_one():
    up = Upstream_(["5", "6"])
    proxy = make_proxy(up)
    hard = binary_gains([0.3], 4)[0]
    pacer = proxy.pacer
    assert pacer is not None
    proxy.decide = lambda texts: [Decision(pacer.decide(hard), "weak", 0.3, 0.5) for _ in texts]
    r = call(proxy, "POST", "/v1/chat/completions", json=CHAT | {"temperature": 0}, headers=AUTH)
    assert r.status_code == 200 and r.headers["x-howhard-samples"] == "1"
    assert r.headers["x-howhard-predicted-success-at-k"] == "0.3000"  # q̂(x, 1)
    (sent,) = up.bodies
    assert sent.get("n", 1) == 1 and sent["temperature"] == 0
    assert (pacer.decided, pacer.spent) == (1, 1)
    r = call(proxy, "POST", "/v1/chat/completions", json=CHAT, headers=AUTH)  # sampling: k > 1
    assert int(r.headers["x-howhard-samples"]) > 1
    assert (pacer.decided, pacer.spent) == (2, 1 + int(r.headers["x-howhard-samples"]))
