"""``howhard serve`` in menu mode, in process: the real proxy, start-up and fleets over an upstream
that replays pooled samples. The serving path decides as `howhard.menu.replay` does; every sample
of every decoder is counted once (usage, headers, /metrics, the request log); the caps and the
spend bucket hold whatever the policy wants."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from menu_serving import (
    ReplayUpstream,
    ask,
    completion,
    decoders,
    menu_pools,
    menu_proxy,
    pools_of,
    sample_of,
)
from serving import API_KEY

from howhard import stopping
from howhard.backends.base import Completion
from howhard.errors import BackendError, ConfigError
from howhard.menu import Draw, MenuData, QueryState, aligned, replay
from howhard.serve.config import ServeConfig, load_config
from howhard.serve.requestlog import read_log, report
from howhard.serve.rounds import Caps, RoundsFailed, SpendLimiter, draw_rounds
from howhard.stopping import FAMILIES, Escalate

MODELS = ["small-model", "large-model"]


@pytest.fixture(scope="module")
def pools(tmp_path_factory) -> tuple[Path, Path]:
    return menu_pools(tmp_path_factory.mktemp("menu"), 60)


def expected_replay(pools: tuple[Path, Path], knob: float, policy: str = "escalate") -> Any:
    data = aligned(pools_of(pools))
    specs = decoders(*pools)
    costs = [d.pool_costs(p) for d, p in zip(specs, data, strict=True)]
    family = FAMILIES[policy]().fit(MenuData(data, costs, np.full((60, 2), np.nan)), "majority")
    return data, replay(family.at(knob), data, costs)


def header_counts(value: str) -> list[int]:
    found = dict(part.split(":") for part in value.split(",") if part)
    return [int(found.get("small", 0)), int(found.get("large", 0))]


@pytest.mark.parametrize(
    ("policy", "knob"),
    [("escalate", 1), ("escalate", 3), ("escalate", 8), ("probe-escalate", 0.3)],
)
def test_serving_decides_draws_and_scores_exactly_as_the_replay(pools, policy, knob):
    data, expected = expected_replay(pools, knob, policy)
    if policy != "escalate":
        assert 0 < expected.draws[:, 1].sum() < len(expected.draws)  # some escalate, not all
    upstream = ReplayUpstream(data, MODELS)
    proxy = menu_proxy(upstream, pools, knob=float(knob), policy=policy)
    answers = ask(proxy, [completion(p) for p in data[0].prompts])
    rewards, costs = [], []
    for i, r in enumerate(answers):
        assert r.status_code == 200, r.text
        assert header_counts(r.headers["x-howhard-decoders"]) == expected.draws[i].tolist()
        assert int(r.headers["x-howhard-rounds"]) == expected.rounds[i]
        assert float(r.headers["x-howhard-cost"]) == pytest.approx(expected.cost[i])
        initial, j = sample_of(r.json()["choices"][0]["text"])
        rewards.append(data[0 if initial == "s" else 1].rewards[i][j])
        costs.append(float(r.headers["x-howhard-cost"]))
    assert rewards == expected.reward.tolist()  # the same sample chosen for every query
    assert np.mean(rewards) == expected.success and np.mean(costs) == pytest.approx(
        expected.mean_cost
    )
    assert sum(upstream.samples.values()) == expected.draws.sum()  # drawn once each


def test_headers_usage_stream_metrics_and_the_request_log(pools, tmp_path):
    data, expected = expected_replay(pools, 4)
    i = int(np.flatnonzero(expected.rounds == 2)[0])  # a query that escalates
    log = tmp_path / "requests.jsonl"
    upstream = ReplayUpstream(data, MODELS)
    proxy = menu_proxy(upstream, pools, knob=4.0, request_log=log)
    (r,) = ask(proxy, [completion(data[0].prompts[i])])
    assert r.headers["x-howhard-decoders"] == "small:4,large:1"
    assert (r.headers["x-howhard-samples"], r.headers["x-howhard-rounds"]) == ("5", "2")
    assert float(r.headers["x-howhard-cost"]) == 8.0 and r.headers["x-howhard-stop"] == "policy"
    drawn = sum(data[0].extras[i]["tokens"][:4]) + data[1].extras[i]["tokens"][0]
    assert r.json()["usage"] == {
        "prompt_tokens": 10,  # two upstream requests of 5
        "completion_tokens": drawn,
        "total_tokens": 10 + drawn,
    }
    chat = {
        "model": "howhard",
        "messages": [{"role": "user", "content": data[0].prompts[i + 1]}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    (s,) = ask(proxy, [chat], "/v1/chat/completions")
    assert s.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in s.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and '"usage"' in events[-2]
    assert int(s.headers["x-howhard-samples"]) >= 4
    metrics = ask_metrics(proxy)
    samples = int(r.headers["x-howhard-samples"]) + int(s.headers["x-howhard-samples"])
    assert metric(metrics, "howhard_decoder_samples_total") == samples
    assert metric(metrics, 'howhard_decoder_samples_total{decoder="large"}') >= 1
    assert metric(metrics, "howhard_rounds_count") == 2
    assert metric(metrics, 'howhard_stops_total{reason="policy"}') == 2
    assert metric(metrics, "howhard_knob") == 4.0
    total = float(r.headers["x-howhard-cost"]) + float(s.headers["x-howhard-cost"])
    assert metric(metrics, "howhard_decoder_cost_total") == pytest.approx(total)
    entries = read_log(log)
    assert entries[0]["decoders"] == {"small": 4, "large": 1}
    assert API_KEY not in log.read_text() and data[0].prompts[i] not in log.read_text()
    summary = report(entries, budget=6.0)
    assert summary.requests == 2 and summary.mean_cost == pytest.approx(total / 2)
    assert summary.samples["small"] == 8 and summary.ratio == pytest.approx(total / 12)


def ask_metrics(proxy: Any) -> str:
    from serving import AUTH, call

    return call(proxy, "GET", "/metrics", headers=AUTH).text


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.parametrize("mode", ["fail", "partial"])
def test_an_upstream_failing_mid_request_fails_cleanly_or_answers_from_what_was_drawn(
    pools, tmp_path, mode
):
    data, expected = expected_replay(pools, 4)
    i = int(np.flatnonzero(expected.rounds == 2)[0])
    upstream = ReplayUpstream(data, MODELS)
    upstream.fail.add("large-model")
    log = tmp_path / "log.jsonl"
    proxy = menu_proxy(upstream, pools, knob=4.0, on_upstream_failure=mode, request_log=log)
    (r,) = ask(proxy, [completion(data[0].prompts[i])])
    metrics = ask_metrics(proxy)
    if mode == "fail":
        assert r.status_code == 502 and "upstream" in r.json()["error"]["message"]
    else:
        assert r.status_code == 200 and r.headers["x-howhard-stop"] == "upstream"
        assert r.headers["x-howhard-decoders"] == "small:4"
        assert r.json()["usage"]["completion_tokens"] == sum(data[0].extras[i]["tokens"][:4])
    # The four small samples were drawn and paid for, once, whatever the answer.
    assert metric(metrics, "howhard_decoder_samples_total") == 4
    assert metric(metrics, "howhard_decoder_cost_total") == 4.0
    (entry,) = read_log(log)
    assert entry["cost"] == 4.0 and entry["status"] == (502 if mode == "fail" else 200)


class Insatiable:
    """The worst a prompt could make any policy do: always one more sample of the dearest
    decoder (a family of one knob)."""

    name, knobs, discrete = "insatiable", (1.0, 1.0), True
    k = 100  # samples asked per round

    def fit(self, data: MenuData, observe: str) -> Insatiable:
        return self

    def at(self, knob: float) -> Insatiable:
        return self

    def decide(self, state: QueryState) -> Draw | None:
        return Draw(1, self.k)

    def choose(self, state: QueryState) -> int:
        return 0


def test_prompts_that_make_the_policy_want_everything_stay_within_the_caps(pools, monkeypatch):
    monkeypatch.setitem(stopping.FAMILIES, "insatiable", Insatiable)
    data = pools_of(pools)
    caps = {"max_per_query": 6, "max_rounds": 3, "max_cost": 10.0}
    proxy = menu_proxy(ReplayUpstream(data, MODELS), pools, policy="insatiable", knob=1.0, **caps)
    answers = ask(proxy, [completion(p) for p in data[0].prompts[:10]])
    for r in answers:
        # 2 dear samples (8) fit in max_cost 10; a third would not.
        assert r.status_code == 200 and r.headers["x-howhard-stop"] == "max_cost"
        assert float(r.headers["x-howhard-cost"]) == 8.0 and r.headers["x-howhard-samples"] == "2"
    tight = {"max_per_query": 3, "max_rounds": 2, "max_cost": 100.0}
    proxy = menu_proxy(ReplayUpstream(data, MODELS), pools, policy="insatiable", knob=1.0, **tight)
    (r,) = ask(proxy, [completion(data[0].prompts[0])])
    assert r.headers["x-howhard-stop"] == "max_samples" and r.headers["x-howhard-samples"] == "3"


def test_a_max_cost_no_sample_fits_is_named_not_a_server_error(pools):
    data = pools_of(pools)
    per_token = {
        "small": {"cost": None, "output_cost": 1.0},
        "large": {"cost": None, "output_cost": 4.0},
    }
    for policy in ("escalate", "routellm", "sequential-menu"):
        proxy = menu_proxy(
            ReplayUpstream(data, MODELS), pools, decoder_fields=per_token, max_cost=1.0,
            budget=0.5, policy=policy,
        )  # fmt: skip
        # 8 tokens at 1.0 each could cost 8 > max_cost: the policy finds no room anywhere.
        long, short = ask(
            proxy, [completion(data[0].prompts[0]), completion(data[0].prompts[0], max_tokens=1)]
        )
        assert long.status_code == 400 and long.json()["error"]["param"] == "max_tokens"
        assert "could cost more than this server's max_cost" in long.json()["error"]["message"]
        assert short.status_code == 200
    with pytest.raises(ConfigError, match=r"below the cheapest decoder's cost per sample \(1\)"):
        ServeConfig(decoders=decoders(*pools), policy="escalate", budget=0.5, max_cost=0.6,
                    max_per_query=8, api_keys=(API_KEY,))  # fmt: skip


class OneByOne(Insatiable):
    k = 1


def test_the_spend_bucket_caps_spend_per_second_over_all_requests(pools, monkeypatch):
    monkeypatch.setitem(stopping.FAMILIES, "insatiable", OneByOne)
    monkeypatch.setitem(stopping.FAMILIES, "greedy", Insatiable)
    data = pools_of(pools)
    settings = {
        "max_per_query": 4,
        "max_rounds": 8,
        "max_cost": 16.0,
        "max_spend_per_second": 40.0,
        "spend_burst_seconds": 0.4,  # a bucket of 16: one request's worth
    }
    proxy = menu_proxy(
        ReplayUpstream(data, MODELS), pools, policy="insatiable", knob=1.0, **settings
    )
    started = time.monotonic()
    answers = ask(proxy, [completion(p) for p in data[0].prompts[:12]])
    elapsed = time.monotonic() - started
    spent = sum(float(r.headers["x-howhard-cost"]) for r in answers)
    assert all(r.status_code == 200 for r in answers)
    assert spent <= 16.0 + 40.0 * elapsed + 1e-9
    assert proxy.menu.spend.taken == pytest.approx(spent)
    stops = [r.headers["x-howhard-stop"] for r in answers]
    assert stops[0] == "max_samples" and "spend_rate" in stops  # later rounds were cut off
    # One round of 4 dear samples empties the bucket; with a time cap shorter than its refill
    # (0.4 s), the next request's first round is refused with 429.
    proxy = menu_proxy(
        ReplayUpstream(data, MODELS), pools, policy="greedy", knob=1.0, max_seconds=0.05, **settings
    )
    first, refused = ask(proxy, [completion(p) for p in data[0].prompts[:2]])
    assert first.status_code == 200 and first.headers["x-howhard-cost"] == "16"
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1


def test_spend_limiter_holds_at_most_burst_plus_rate_times_time():
    now = [0.0]
    bucket = SpendLimiter(10.0, 5.0, clock=lambda: now[0])
    assert bucket.take(5.0) and not bucket.take(0.1)
    assert bucket.wait(3.0) == pytest.approx(0.3)
    now[0] = 0.3
    assert bucket.take(3.0) and not bucket.take(0.5)
    bucket.give_back(1.0)  # the round spent 2 of the 3 reserved
    assert bucket.taken == pytest.approx(7.0) and bucket.take(1.0)
    assert bucket.wait(6.0) == float("inf")


def draw_of(answers: list[list[str]], delay: float = 0.0, fail_at: int | None = None) -> Any:
    """A draw callable: round r answers ``answers[r]`` (one token each), after ``delay``."""
    calls = []

    async def draw(d: int, k: int, drawn: int) -> tuple[list[Completion], int]:
        calls.append((d, k))
        if fail_at is not None and len(calls) > fail_at:
            raise BackendError("the upstream went away")
        await asyncio.sleep(delay)
        return [Completion(a, 1, "stop") for a in answers[len(calls) - 1][:k]], 2

    async def observe(d: int, done: list[Completion]) -> list[tuple[str | None, float | None]]:
        return [(c.text, None) for c in done]

    return draw, observe, calls


def test_the_rounds_stop_at_the_wall_time_cap_and_keep_or_refuse_what_was_drawn():
    prices = [(1.0, None, None), (4.0, None, None)]
    draw, observe, _ = draw_of([["1", "2"], ["3"]], delay=0.2)
    caps = Caps(samples=8, rounds=4, seconds=0.1)
    with pytest.raises(RoundsFailed) as failed:
        asyncio.run(
            draw_rounds(Escalate().at(2), np.full(2, np.nan), prices, [1, 4], caps, draw, observe)
        )
    assert failed.value.reason == "timeout" and not failed.value.rounds.state.seen
    draw, observe, calls = draw_of([["1", "2"], ["3"]], fail_at=1)
    done = asyncio.run(
        draw_rounds(
            Escalate().at(2),
            np.full(2, np.nan),
            prices,
            [1, 4],
            Caps(8, 4),
            draw,
            observe,
            partial=True,
        )
    )
    assert done.stop == "upstream" and done.state.cost == 2.0 and calls == [(0, 2), (1, 1)]


def test_per_token_prices_come_from_the_upstream_usage():
    prices = [(None, 0.5, 2.0)]
    draw, observe, _ = draw_of([["1", "1", "1"]])
    done = asyncio.run(
        draw_rounds(Escalate().at(3), np.full(1, np.nan), prices, [10.0], Caps(8, 4), draw, observe)
    )
    # 3 samples of 1 token at 2.0, and the round's 2 prompt tokens at 0.5 shared out.
    assert done.state.cost == pytest.approx(3 * 2.0 + 2 * 0.5)
    assert [s.cost for s in done.state.seen] == pytest.approx([2.0 + 1 / 3] * 3)


def test_the_menu_config_reads_decoder_tables_beside_the_file(pools, tmp_path, monkeypatch):
    monkeypatch.setenv("HOWHARD_API_KEYS", API_KEY)
    small, large = pools
    path = tmp_path / "serve.toml"
    path.write_text(
        f"""
policy = "escalate"
budget = 3.0
max_per_query = 12
max_cost = 20
max_spend_per_second = 100

[[decoder]]
name = "small"
upstream = ["http://127.0.0.1:8081"]
pool = "{small}"
params = {{ max_tokens = 64, temperature = 0.7 }}
output_cost = 0.01

[[decoder]]
name = "large"
upstream = "http://127.0.0.1:8082"
pool = "{large.name}"
cost = 4
"""
    )
    (tmp_path / large.name).write_bytes(large.read_bytes())
    config = load_config(path)
    assert config.menu_mode and [d.name for d in config.decoders] == ["small", "large"]
    assert config.decoders[1].pool == (tmp_path / large.name).resolve()
    assert config.decoders[0].params == {"max_tokens": 64, "temperature": 0.7}
    assert config.max_cost == 20.0 and config.upstreams == ()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"policy": "escalat"}, "did you mean 'escalate'"),
        ({"upstreams": ("http://a:1",)}, "upstreams is a setting of the single-upstream mode"),
        ({"max_spend_per_second": 5.0}, "max_spend_per_second needs max_cost"),
        ({"max_cost": 2.0}, r"max_cost \(2.0\) is below the budget"),
        ({"observe": "rewards"}, "observe must be one of"),
    ],
)
def test_bad_menu_settings_are_refused_naming_them(pools, settings, message):
    base: dict[str, Any] = {
        "decoders": decoders(*pools),
        "policy": "escalate",
        "budget": 3.0,
        "max_per_query": 8,
        "api_keys": (API_KEY,),
    }
    with pytest.raises(ConfigError, match=message):
        ServeConfig(**{**base, **settings})


def test_a_decoder_may_not_set_what_the_server_sets(pools):
    small, large = decoders(*pools, {"small": {"params": {"n": 4}}})
    with pytest.raises(ConfigError, match="params may not set 'n'"):
        ServeConfig(
            decoders=(small, large),
            policy="escalate",
            budget=3.0,
            max_per_query=8,
            api_keys=(API_KEY,),
        )


def test_the_paced_proxy_meets_its_budget_on_calibrated_traffic(pools):
    data = pools_of(pools)
    proxy = menu_proxy(ReplayUpstream(data, MODELS), pools, budget=4.0)
    prompts = [data[0].prompts[i % 60] for i in range(60)]
    answers = ask(proxy, [completion(p) for p in prompts])
    costs = [float(r.headers["x-howhard-cost"]) for r in answers]
    assert proxy.menu.pacer.average == pytest.approx(np.mean(costs))
    assert abs(np.mean(costs) - 4.0) <= 0.1 * 4.0  # 60 requests; the pacer tests run 1,000
    assert re.search(r"howhard_knob \d", ask_metrics(proxy))


def test_the_command_line_reports_a_request_log_against_the_budget(pools, tmp_path, capsys):
    from howhard.cli import main

    data = pools_of(pools)
    log = tmp_path / "requests.jsonl"
    proxy = menu_proxy(ReplayUpstream(data, MODELS), pools, knob=2.0, request_log=log)
    answers = ask(proxy, [completion(p) for p in data[0].prompts[:20]])
    spent = np.mean([float(r.headers["x-howhard-cost"]) for r in answers])
    assert main(["serve", "--report", str(log), "--budget", "4"]) == 0
    out = capsys.readouterr().out
    assert "requests: 20 (0 failed after drawing)" in out
    assert f"realised / budget = {spent / 4:.4f}" in out and "| small | 40 |" in out
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    for missing in (tmp_path / "nope.jsonl", tmp_path, tmp_path / "binary"):  # no traceback
        assert main(["serve", "--report", str(missing)]) == 2
        assert f"cannot read the request log {missing}" in capsys.readouterr().err


@pytest.mark.slow
def test_two_replicas_each_pacing_alone_meet_the_budget_behind_a_round_robin_client(pools):
    """No shared state: each replica paces its own share of the traffic to the budget, so the
    mean over all requests meets it too."""
    data = pools_of(pools)
    replicas = [
        menu_proxy(ReplayUpstream(data, MODELS, cycle=True), pools, budget=5.0, seed=s)
        for s in (1, 2)
    ]
    prompts = [data[0].prompts[i] for i in np.random.default_rng(7).integers(0, 60, 1000)]
    costs: list[float] = []
    for r, proxy in enumerate(replicas):  # round robin: replica r gets requests r, r + 2, ...
        answers = ask(proxy, [completion(p) for p in prompts[r::2]])
        assert all(a.status_code == 200 for a in answers)
        costs += [float(a.headers["x-howhard-cost"]) for a in answers]
        assert abs(proxy.menu.pacer.average - 5.0) <= 0.05 * 5.0
    assert len(costs) == 1000 and abs(np.mean(costs) - 5.0) <= 0.05 * 5.0


def test_a_policy_observing_a_verifier_sees_its_rewards_and_needs_one_named(pools):
    data, _ = expected_replay(pools, 8)
    upstream = ReplayUpstream(data, MODELS)
    proxy = menu_proxy(upstream, pools, knob=8.0, observe="verifier")
    hard = next(
        i for i in range(60) if data[0].rewards[i].sum() > 0 and data[0].rewards[i][0] == 0
    )  # a small sample is right, but not the first
    verifier = {"reranker": "verifier", "verifier": {"task": "arithmetic"}}
    (r,) = ask(proxy, [completion(data[0].prompts[hard], howhard=verifier)])
    assert r.status_code == 200, r.text
    initial, j = sample_of(r.json()["choices"][0]["text"])
    assert initial == "s" and data[0].rewards[hard][j] == 1.0  # the verified sample returned
    assert r.headers["x-howhard-decoders"] == "small:8"  # a reward of 1: no escalation
    (refused,) = ask(proxy, [completion(data[0].prompts[0])])
    assert refused.status_code == 400 and "verifier" in refused.json()["error"]["message"]
