"""``howhard serve`` for real: the server process in front of llama-cpp-python's own server with
the embedded SmolLM2, both on 127.0.0.1, driven by the real ``openai`` client."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from servers import llama_server
from serving import API_KEY, AUTH, howhard_server, tiny_predictor, tiny_router

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def upstream():
    with llama_server() as server:
        yield server


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_predictor(tmp_path_factory.mktemp("serve"), "ngrams")


@pytest.fixture(scope="module")
def several(upstream, files):
    """A proxy that draws 2 to 4 samples per request."""
    with howhard_server(upstream.url, *files, "--budget", "3", "--min-per-query", "2") as proxy:
        yield proxy


@pytest.fixture(scope="module")
def single(upstream, files):
    """A proxy that draws one sample per request (streams pass through)."""
    with howhard_server(upstream.url, *files, "--budget", "1", "--max-per-query", "1") as proxy:
        yield proxy


def client(server, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_chat_with_the_openai_client(several):
    raw = client(several).chat.completions.with_raw_response.create(
        model="howhard", messages=QUESTION, max_tokens=8, temperature=0.8
    )
    k = int(raw.headers["x-howhard-samples"])
    answer = raw.parse()
    assert 2 <= k <= 4 and raw.headers["x-howhard-route"] == "weak"
    assert 0 <= float(raw.headers["x-howhard-predicted-success"]) <= 1
    assert len(answer.choices) == 1 and isinstance(answer.choices[0].message.content, str)
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 8 * k
    assert answer.usage.prompt_tokens > 0  # summed over the upstream requests


def test_completion_with_the_openai_client(several):
    answer = client(several).completions.create(
        model="howhard", prompt="Q: What is 1 + 1?\nA:", max_tokens=6
    )
    assert len(answer.choices) == 1 and answer.object == "text_completion"
    assert answer.usage is not None and answer.usage.completion_tokens <= 6 * 4


def test_models_lists_the_upstream_model_and_the_alias(several):
    ids = [m.id for m in client(several).models.list().data]
    assert ids[-1] == "howhard" and ids[0].endswith(".gguf")


def test_streaming_several_samples(several):
    stream = client(several).chat.completions.create(
        model="howhard",
        messages=QUESTION,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("include_usage", [False, True])
def test_streaming_one_sample_passes_through_as_the_proxys_answer(single, include_usage):
    options = {"include_usage": True} if include_usage else openai.NOT_GIVEN
    with client(single).chat.completions.with_streaming_response.create(
        model="howhard", messages=QUESTION, max_tokens=12, stream=True, stream_options=options
    ) as response:
        assert response.headers["x-howhard-samples"] == "1"
        chunks = list(response.parse())
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1  # token by token, as the upstream streamed it
    # Labelled as the proxy's answer, like one drawn whole: not the upstream's id, nor its model
    # (a path on the upstream's host).
    assert {c.model for c in chunks} == {"howhard"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-howhard-")
    *chunks, last = chunks
    if include_usage:  # llama-cpp-python sends none: counted, a token per streamed event
        assert last.choices == [] and last.usage is not None
        assert last.usage.completion_tokens == len(pieces) and last.usage.prompt_tokens > 0
        *chunks, last = chunks
    assert all(c.usage is None for c in chunks)
    assert last.choices[0].finish_reason in ("stop", "length")


LONG = [{"role": "user", "content": "word " * 3000}]  # SmolLM2's context: 2048 tokens


@pytest.mark.parametrize(
    "proxy, stream", [("single", False), ("several", False), ("several", True)]
)
def test_a_prompt_over_the_upstreams_context_window_is_a_400(proxy, stream, request):
    server = request.getfixturevalue(proxy)
    calls = metric(server, "howhard_upstream_latency_seconds_count")
    with pytest.raises(openai.BadRequestError) as refused:
        client(server).chat.completions.create(
            model="howhard", messages=LONG, max_tokens=5, stream=stream
        )
    assert refused.value.code == "context_length_exceeded"
    assert "context window" in refused.value.message
    if proxy == "several":  # drawn whole: one request, not retried as n = 1 requests
        assert metric(server, "howhard_upstream_latency_seconds_count") == calls


def test_a_streamed_prompt_over_the_context_window_ends_with_an_error_event(single):
    # llama-cpp-python answers such a stream 200, then closes it without an event: nothing says
    # why, so the proxy can only end it with an error (an upstream that refuses it with a 400,
    # as vLLM does, gets a 400: test_serve_upstream_answers.py).
    body = {"model": "howhard", "messages": LONG, "max_tokens": 5, "stream": True}
    r = httpx.post(single.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    assert r.status_code == 200 and "data: [DONE]" not in r.text
    assert "ended without a finish reason" in r.text


def test_an_empty_prompt_is_a_400_not_an_upstream_500(single):
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client(single).completions.create(model="howhard", prompt="", max_tokens=4)


def test_a_wrong_key_is_refused(several):
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        client(several, key="sk-wrong").chat.completions.create(model="howhard", messages=QUESTION)


def test_an_invalid_request_is_refused_without_an_upstream_call(several):
    drawn = metric(several, "howhard_samples_total")
    calls = metric(several, "howhard_upstream_latency_seconds_count")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client(several).chat.completions.create(
            model="howhard", messages=QUESTION, max_tokens=10**6
        )
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(several).chat.completions.create(model="gpt-7", messages=QUESTION)
    assert metric(several, "howhard_samples_total") == drawn
    assert metric(several, "howhard_upstream_latency_seconds_count") == calls


def test_upstream_killed_mid_request_is_a_502_and_ready_recovers(files):
    with llama_server() as upstream, howhard_server(upstream.url, *files) as proxy:
        outcome: list[BaseException | str] = []

        def ask() -> None:
            try:
                client(proxy).chat.completions.create(
                    model="howhard",
                    messages=[{"role": "user", "content": "Tell me a long story."}],
                    max_tokens=1000,
                )
                outcome.append("answered")
            except BaseException as e:
                outcome.append(e)

        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(2.0)  # the request is being generated upstream
        upstream.kill()
        asker.join(120)
        (error,) = outcome
        assert isinstance(error, openai.APIStatusError) and error.status_code == 502, error
        assert "upstream" in str(error)
        auth = {"Authorization": f"Bearer {API_KEY}"}
        assert httpx.get(proxy.url + "/ready", headers=auth).status_code == 503
        assert httpx.get(proxy.url + "/health").status_code == 200  # alive, not ready
        upstream.start()
        assert httpx.get(proxy.url + "/ready", headers=auth).status_code == 200
        answer = client(proxy).chat.completions.create(
            model="howhard", messages=QUESTION, max_tokens=4
        )
        assert answer.choices[0].message.content is not None


def test_sigterm_finishes_the_request_in_flight_then_exits(upstream, files):
    # a deadline well past the answer's time on a loaded machine (the default is 30 s)
    flags = ["--budget", "1", "--max-per-query", "1", "--shutdown-timeout", "300"]
    with howhard_server(upstream.url, *files, *flags) as proxy:
        outcome: list[object] = []
        answered_at: list[float] = []
        story = [{"role": "user", "content": "Tell me a story."}]

        def ask() -> None:
            try:
                answer = client(proxy).chat.completions.create(
                    model="howhard", messages=story, max_tokens=200
                )
                outcome.append(answer)
            except BaseException as e:
                outcome.append(e)
            answered_at.append(time.monotonic())

        asker = threading.Thread(target=ask)
        asker.start()
        # Until the request is in flight (2: it and this /metrics request); a fixed sleep raced
        # a slow client on a loaded machine.
        deadline = time.monotonic() + 60
        while metric(proxy, "howhard_requests_in_flight") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        asker.join(120)
        assert proxy.proc.wait(60) in (0, -signal.SIGTERM)
        (answer,) = outcome
        assert not isinstance(answer, BaseException), answer
        assert answered_at[0] > signalled_at  # it was still in flight when SIGTERM came
        with pytest.raises(httpx.ConnectError):
            httpx.get(proxy.url + "/health")


def test_routing_sends_the_target_share_to_the_strong_upstream(upstream, files, tmp_path_factory):
    router = tiny_router(files[0].parent)
    flags = ["--strong", upstream.url, "--router", str(router), "--strong-share", "0.5"]
    with howhard_server(upstream.url, *files, *flags) as proxy:
        routes = []
        prompts = [json.loads(line)["prompt"] for line in files[1].read_text().splitlines()]
        for prompt in prompts[:12]:  # traffic like the calibration's
            raw = client(proxy).chat.completions.with_raw_response.create(
                model="howhard", messages=[{"role": "user", "content": prompt}], max_tokens=2
            )
            routes.append(raw.headers["x-howhard-route"])
            if routes[-1] == "strong":
                assert raw.headers["x-howhard-samples"] == "1"
        assert 3 <= routes.count("strong") <= 9  # paced to half of the requests
        assert metric(proxy, 'howhard_samples_total{route="strong"}') == routes.count("strong")


def test_the_lm_hidden_state_predictor_serves(upstream, tmp_path_factory):
    files = tiny_predictor(tmp_path_factory.mktemp("hidden"), "hidden")
    with howhard_server(upstream.url, *files) as proxy:
        raw = client(proxy).chat.completions.with_raw_response.create(
            model="howhard", messages=QUESTION, max_tokens=4
        )
        assert 1 <= int(raw.headers["x-howhard-samples"]) <= 4
        assert raw.parse().choices[0].message.content is not None
