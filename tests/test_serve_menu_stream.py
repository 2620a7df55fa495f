"""Menu mode's streaming pass-through, for real: a ``howhard serve`` process over stub upstream
processes on 127.0.0.1 (tests/stub_upstream.py replaying the menu's pools), the "small" one
streaming a token every `TOKEN_DELAY` seconds. With ``max_rounds = 1`` and the escalate policy at
k = 1, the first round's single sample is final by configuration: the proxy forwards the
upstream's events as they come (the first one reaches the client while the upstream is still
generating) and counts the sample once, when it ends, in /metrics, the request log and the spend.
At k = 3 the same configuration streams the decided answer instead."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from menu_serving import menu_config, menu_pools, menu_server
from serving import AUTH
from stub_upstream import prompt_tokens, stub_server

from howhard.pool import Pool, read_pool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN_DELAY = 0.25  # seconds between the small stub's streamed tokens
PRICE = 2.0  # per completion token of the small decoder


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return menu_pools(tmp_path_factory.mktemp("menu-stream"), 20)


@pytest.fixture(scope="module")
def stubs(pools: tuple[Path, Path]) -> Iterator[tuple[Any, Any]]:
    with (
        stub_server(pool=str(pools[0]), token_delay=TOKEN_DELAY) as small,
        stub_server(pool=str(pools[1])) as large,
    ):
        yield small, large


def serve(workdir: Path, pools: tuple[Path, Path], stubs: tuple[Any, Any], knob: float) -> Any:
    """``howhard serve`` over the stubs: escalate at the fixed ``knob``, one round at most."""
    tables = [
        {"name": "small", "upstream": [stubs[0].url], "pool": pools[0], "model": "small-model",
         "output_cost": PRICE},
        {"name": "large", "upstream": [stubs[1].url], "pool": pools[1], "model": "large-model",
         "cost": 4.0},
    ]  # fmt: skip
    config = menu_config(
        workdir / "serve.toml",
        tables,
        policy="escalate",
        task="arithmetic",
        knob=knob,
        budget=10.0,
        max_per_query=4,
        max_rounds=1,
        request_log=workdir / "requests.jsonl",
    )
    return menu_server(config)


def metric(server: Any, name: str) -> float:
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def stats(stub: Any) -> dict[str, Any]:
    return dict(httpx.get(stub.url + "/stats").json())


def stream(server: Any, body: dict[str, Any], on_first: Any = None) -> dict[str, Any]:
    """POST ``body`` streamed; the headers, the events, seconds to the first content event and
    to the end, and ``on_first()``'s value when the first content event arrived."""
    out: dict[str, Any] = {"events": [], "first": None, "at_first": None}
    started = time.perf_counter()
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60
    ) as response:
        assert response.status_code == 200, response.read()
        out["headers"] = response.headers
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                out["events"].append("[DONE]")
                continue
            event = json.loads(line[6:])
            out["events"].append(event)
            content = [c["delta"].get("content") for c in event.get("choices", [])]
            if out["first"] is None and any(content):
                out["first"] = time.perf_counter() - started
                out["at_first"] = on_first() if on_first else None
    out["end"] = time.perf_counter() - started
    return out


def chat(question: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": "howhard",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 16,
        "seed": 0,
        "stream": True,
        **fields,
    }


def text_of(events: list[Any]) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict)
        for c in e.get("choices", [])
    )


def pooled(pool: Pool, question: str, j: int) -> tuple[str, int]:
    """(answer, tokens) of sample j of ``question`` in ``pool``."""
    extra = pool.extras[pool.prompts.index(question)]
    return extra["answers"][j], extra["tokens"][j]


def test_a_final_single_sample_is_passed_through_as_the_upstream_streams_it(
    tmp_path: Path, pools: tuple[Path, Path], stubs: tuple[Any, Any]
) -> None:
    small_pool = read_pool(pools[0])
    question = small_pool.prompts[3]
    answer, tokens = pooled(small_pool, question, 0)  # seed 0: the pool's first sample
    before = stats(stubs[0])
    with serve(tmp_path, pools, stubs, knob=1.0) as proxy:
        got = stream(
            proxy,
            chat(question, stream_options={"include_usage": True}),
            on_first=lambda: (stats(stubs[0]), metric(proxy, "howhard_decoder_samples_total")),
        )
        upstream_then, counted_then = got["at_first"]
        # The first token reached the client while the upstream was still streaming the sample,
        # and before the proxy counted it.
        assert upstream_then["in_flight"] == 1
        assert upstream_then["samples"] == before["samples"]
        assert counted_then == 0
        assert got["end"] - got["first"] >= (len(answer) - 1) * TOKEN_DELAY * 0.8
        headers = got["headers"]
        assert headers["x-howhard-stream"] == "pass-through"
        assert headers["x-howhard-decoders"] == "small:1"
        assert (headers["x-howhard-samples"], headers["x-howhard-rounds"]) == ("1", "1")
        assert headers["x-howhard-stop"] == "max_rounds"
        assert "x-howhard-cost" not in headers  # priced per token: known when the stream ends
        # One event per upstream token, then the finish reason, the usage asked for, [DONE];
        # each the proxy's, like an answer drawn whole: its id, the model asked for.
        assert text_of(got["events"]) == answer
        assert got["events"][-1] == "[DONE]"
        relayed = got["events"][:-1]
        assert {e["model"] for e in relayed} == {"howhard"}  # not the upstream's "small-model"
        (answer_id,) = {e["id"] for e in relayed}
        assert answer_id.startswith("chatcmpl-howhard-")
        usage = got["events"][-2]["usage"]
        prompt = prompt_tokens({"messages": [{"role": "user", "content": question}]})
        assert usage == {
            "prompt_tokens": prompt,
            "completion_tokens": tokens,
            "total_tokens": prompt + tokens,
        }
        assert sum(1 for e in got["events"] if isinstance(e, dict) and e.get("usage")) == 1
        # Counted once, when it ended: metrics, the request log, the upstream's own count.
        assert metric(proxy, 'howhard_decoder_samples_total{decoder="small"}') == 1
        assert metric(proxy, 'howhard_decoder_samples_total{decoder="large"}') == 0
        assert metric(proxy, 'howhard_decoder_cost_total{decoder="small"}') == tokens * PRICE
        assert metric(proxy, 'howhard_stops_total{reason="max_rounds"}') == 1
        assert metric(proxy, 'howhard_requests_total{route="chat",status="200"}') == 1
    assert stats(stubs[0])["samples"] == before["samples"] + 1
    (entry,) = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert entry["status"] == 200 and entry["decoders"] == {"small": 1}
    assert entry["cost"] == tokens * PRICE and entry["completion_tokens"] == tokens
    assert entry["prompt_tokens"] == prompt and entry["stop"] == "max_rounds"


def test_without_include_usage_the_usage_is_counted_but_not_sent(
    tmp_path: Path, pools: tuple[Path, Path], stubs: tuple[Any, Any]
) -> None:
    small_pool = read_pool(pools[0])
    question = small_pool.prompts[5]
    answer, tokens = pooled(small_pool, question, 2)
    with serve(tmp_path, pools, stubs, knob=1.0) as proxy:
        got = stream(proxy, chat(question, seed=2))
        assert got["headers"]["x-howhard-stream"] == "pass-through"
        assert text_of(got["events"]) == answer and got["events"][-1] == "[DONE]"
        assert not [e for e in got["events"] if isinstance(e, dict) and "usage" in e]
        assert metric(proxy, 'howhard_decoder_cost_total{decoder="small"}') == tokens * PRICE


def test_an_upstream_answering_without_server_sent_events_is_a_502(
    tmp_path: Path, pools: tuple[Path, Path], stubs: tuple[Any, Any]
) -> None:
    small_pool = read_pool(pools[0])
    with (
        stub_server(canned=(200, "text/html", "<html>oops</html>")) as html,
        serve(tmp_path, pools, (html, stubs[1]), knob=1.0) as proxy,
    ):
        body = chat(small_pool.prompts[3])
        r = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
        assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error", r.text
        assert "oops" not in r.text
        assert metric(proxy, 'howhard_decoder_samples_total{decoder="small"}') == 0


def test_a_first_round_of_several_samples_streams_the_decided_answer(
    tmp_path: Path, pools: tuple[Path, Path], stubs: tuple[Any, Any]
) -> None:
    small_pool = read_pool(pools[0])
    question = small_pool.prompts[3]
    with serve(tmp_path, pools, stubs, knob=3.0) as proxy:
        got = stream(proxy, chat(question, stream_options={"include_usage": True}))
        headers = got["headers"]
        assert "x-howhard-stream" not in headers
        assert headers["x-howhard-decoders"] == "small:3" and headers["x-howhard-rounds"] == "1"
        tokens = sum(pooled(small_pool, question, j)[1] for j in range(3))
        assert float(headers["x-howhard-cost"]) == tokens * PRICE
        assert got["events"][-2]["usage"]["completion_tokens"] == tokens
        # Decided first: the whole answer came in one event, after the three samples ended.
        assert len([e for e in got["events"] if isinstance(e, dict) and text_of([e])]) == 1
        assert metric(proxy, 'howhard_decoder_samples_total{decoder="small"}') == 3


def test_a_client_that_leaves_mid_stream_is_counted_once_for_what_was_streamed(
    tmp_path: Path, pools: tuple[Path, Path], stubs: tuple[Any, Any]
) -> None:
    small_pool = read_pool(pools[0])
    question = next(q for q in small_pool.prompts if len(pooled(small_pool, q, 0)[0]) >= 2)
    answer, _ = pooled(small_pool, question, 0)
    log = tmp_path / "requests.jsonl"
    with serve(tmp_path, pools, stubs, knob=1.0) as proxy:
        with httpx.stream(
            "POST", proxy.url + "/v1/chat/completions", json=chat(question), headers=AUTH
        ) as response:
            assert response.headers["x-howhard-stream"] == "pass-through"
            for line in response.iter_lines():
                if line.startswith("data: ") and '"content": "' in line:
                    break  # the first token: leave
        deadline = time.monotonic() + 10
        while not log.exists() or not log.read_text():
            assert time.monotonic() < deadline, "the request was never logged"
            time.sleep(0.05)
        (entry,) = [json.loads(line) for line in log.read_text().splitlines()]
        assert entry["status"] == 499 and entry["decoders"] == {"small": 1}
        assert 1 <= entry["completion_tokens"] < len(answer)  # a token per event streamed
        assert entry["cost"] == entry["completion_tokens"] * PRICE
        assert metric(proxy, 'howhard_decoder_samples_total{decoder="small"}') == 1
        assert metric(proxy, "howhard_decoder_cost_total") == entry["cost"]
        assert metric(proxy, 'howhard_stops_total{reason="failed"}') == 1
