"""`howhard serve` under concurrent load on loopback: many real clients (openai's AsyncOpenAI), a
fixed count of mixed requests (chat and completions, some streamed), zero errors, every answer
well-formed and its ``usage`` consistent with the samples the proxy says it drew, and /metrics
agreeing with what the clients saw. In front of the stub upstream (fast, canned answers: the
proxy is the bottleneck, and its concurrency cap is exercised) and, smaller, of llama.cpp. In menu
mode, in front of two stub processes replaying a menu's pools (traffic like the calibration's),
with a policy that draws in rounds and escalates: every sample, token and unit of cost the clients
were told of is what /metrics and the stubs count, and the paced mean cost meets the budget."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from menu_serving import menu_config, menu_pools, menu_server
from openai import AsyncOpenAI
from servers import llama_server
from serving import API_KEY, howhard_server, tiny_predictor
from stub_upstream import answers, prompt_tokens, stub_server

from howhard.pool import read_pool
from howhard.tasks import get_task
from howhard.tasks.arithmetic import answer_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASK = get_task("arithmetic")
K = 4  # --max-per-query
BUDGET = 2.0
CAP = 8  # --max-concurrency: far below the ~100 samples 50 clients want at once


@dataclass(frozen=True)
class Ask:
    question: str
    chat: bool
    stream: bool
    include_usage: bool

    def body(self, max_tokens: int) -> dict[str, Any]:
        """The request's fields (as the openai client sends them)."""
        body: dict[str, Any] = {"model": "howhard", "max_tokens": max_tokens}
        if self.chat:
            body["messages"] = [{"role": "user", "content": self.question}]
        else:
            body["prompt"] = TASK.query_text(self.question)
        if self.stream:
            body["stream"] = True
            if self.include_usage:
                body["stream_options"] = {"include_usage": True}
        return body


@dataclass(frozen=True)
class Answer:
    samples: int
    route: str
    predicted: float
    text: str
    finish_reasons: list[str]  # one per choice (streamed: per final chunk)
    usage: dict[str, int] | None


def asks(n: int) -> list[Ask]:
    """``n`` requests: alternately chat and completions, every fifth streamed, a third of those
    asking for the usage chunk; questions from the arithmetic task."""
    questions = [q.prompt for q in TASK.queries(97, seed=3)]
    return [
        Ask(questions[i % len(questions)], i % 2 == 0, i % 5 == 0, i % 3 == 0) for i in range(n)
    ]


Send = Callable[[AsyncOpenAI, Ask], Awaitable[Any]]


async def send(client: AsyncOpenAI, ask: Ask, max_tokens: int) -> Answer:
    body = ask.body(max_tokens)
    endpoint = client.chat.completions if ask.chat else client.completions
    raw = await endpoint.with_raw_response.create(**body)
    headers = raw.headers
    result = raw.parse()
    texts: list[str] = []
    reasons: list[str] = []
    usage = None
    if ask.stream:
        async for chunk in result:
            for choice in chunk.choices:
                assert choice.index == 0
                texts.append((choice.delta.content if ask.chat else choice.text) or "")
                if choice.finish_reason is not None:
                    reasons.append(choice.finish_reason)
            if chunk.usage is not None:
                usage = chunk.usage.model_dump()
    else:
        assert result.object == ("chat.completion" if ask.chat else "text_completion")
        for choice in result.choices:
            texts.append(choice.message.content if ask.chat else choice.text)
            reasons.append(choice.finish_reason)
        usage = result.usage.model_dump()
    return Answer(
        int(headers["x-howhard-samples"]),
        headers["x-howhard-route"],
        float(headers["x-howhard-predicted-success"]),
        "".join(texts),
        reasons,
        usage,
    )


def load(url: str, todo: list[Ask], clients: int, send: Send) -> list[Any]:
    """Send ``todo`` from ``clients`` concurrent clients (each its own AsyncOpenAI and connection
    pool, taking the next request when its last one is answered) through ``send``; each answer
    or error by index."""
    results: list[Any] = [RuntimeError("not sent")] * len(todo)
    queue = iter(enumerate(todo))

    async def client() -> None:
        async with AsyncOpenAI(
            base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=300
        ) as openai:
            for i, ask in queue:
                try:
                    results[i] = await send(openai, ask)
                except Exception as e:
                    results[i] = e

    async def main() -> None:
        await asyncio.gather(*(client() for _ in range(clients)))

    asyncio.run(main())
    return results


def metrics(url: str) -> dict[str, float]:
    """/metrics as {'name{labels}': value}."""
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\S+) (\S+)$", text, re.M) if m[1][0] != "#"}


def answered(results: list[Answer | Exception]) -> list[Answer]:
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} of {len(results)} requests failed; first: {errors[0]!r}"
    return [r for r in results if isinstance(r, Answer)]


def check_metrics(url: str, todo: list[Ask], got: list[Answer]) -> float:
    """/metrics counts what the clients saw; returns the mean samples per request."""
    seen = metrics(url)
    chats = sum(a.chat for a in todo)
    assert seen['howhard_requests_total{route="chat",status="200"}'] == chats
    assert seen['howhard_requests_total{route="completions",status="200"}'] == len(todo) - chats
    assert not [name for name in seen if name.startswith("howhard_errors_total")]
    drawn = sum(a.samples for a in got)
    assert seen['howhard_samples_total{route="weak"}'] == drawn
    assert seen["howhard_budget_spent_per_request"] == pytest.approx(drawn / len(got), abs=1e-6)
    assert seen["howhard_requests_in_flight"] == 1  # this /metrics request
    return drawn / len(got)


@pytest.fixture(scope="module")
def ngrams(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_predictor(tmp_path_factory.mktemp("serve-load"), "ngrams")


def test_500_requests_from_50_clients_through_the_stub(ngrams: tuple[Path, Path]) -> None:
    todo = asks(500)
    flags = ("--budget", str(BUDGET), "--max-per-query", str(K), "--max-concurrency", str(CAP))
    with (
        stub_server(delay=0.02, fail_every=40) as upstream,
        howhard_server(upstream.url, *ngrams, *flags) as proxy,
    ):
        got = answered(load(proxy.url, todo, 50, lambda o, a: send(o, a, 16)))
        mean = check_metrics(proxy.url, todo, got)
        stub = httpx.get(upstream.url + "/stats").json()
    for ask, answer in zip(todo, got, strict=True):
        assert 1 <= answer.samples <= K and answer.route == "weak"
        assert 0.0 <= answer.predicted <= 1.0
        assert answer.finish_reasons == ["stop"]
        value = answer_of(ask.question)  # the stub's choice 1 says value + 1: a 2-sample tie
        assert answer.text == str(value) or (answer.samples == 2 and answer.text == str(value + 1))
        if ask.stream and not ask.include_usage:
            assert answer.usage is None
            continue
        drawn = sum(len(t) for t in answers(ask.question, answer.samples))  # a token a character
        # One upstream request (n = k), so its prompt is counted once.
        prompt = prompt_tokens(ask.body(16))
        assert answer.usage is not None
        assert answer.usage["prompt_tokens"] == prompt
        assert answer.usage["completion_tokens"] == drawn
        assert answer.usage["total_tokens"] == prompt + drawn
    assert mean == pytest.approx(BUDGET, abs=0.1)
    assert len({a.samples for a in got}) > 1  # the decision varies with the query
    assert stub["samples"] == sum(a.samples for a in got)  # nothing drawn that was not billed
    assert stub["failed"] > 0 and stub["requests"] == len(got) + stub["failed"]  # retried
    assert CAP // 2 < stub["max_in_flight"] <= CAP  # the cap held, and was reached


@pytest.mark.extended  # the proxy before a real llama.cpp server: tests/test_serve_integration.py
def test_40_requests_from_10_clients_through_llama_cpp(
    ngrams: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    todo = asks(40)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # llama.cpp's idle threads yield the cores
    # llama-cpp-python's server by default cuts a stream short ("[DONE]" without a finish
    # reason) when another request arrives: the proxy would relay truncated answers.
    with (
        llama_server(extra_args=["--interrupt_requests", "false"]) as upstream,
        howhard_server(upstream.url, *ngrams) as proxy,
    ):
        got = answered(load(proxy.url, todo, 10, lambda o, a: send(o, a, 8)))
        check_metrics(proxy.url, todo, got)
    for ask, answer in zip(todo, got, strict=True):
        assert 1 <= answer.samples <= K and answer.route == "weak"
        assert len(answer.finish_reasons) == 1 and answer.finish_reasons[0] in ("stop", "length")
        if answer.usage is not None:
            usage = answer.usage
            assert 0 <= usage["completion_tokens"] <= 8 * answer.samples
            assert usage["prompt_tokens"] > 0
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        else:
            assert ask.stream and not ask.include_usage


# ---------------------------------------------------------------------------- menu mode

MENU_QUERIES = 60  # the pools' queries; each asked MENU_ROUNDS times, so traffic is the pools'
MENU_ROUNDS = 7
MENU_BUDGET = 30.0  # cost per request: the escalate family spends 5.4 (k = 1) to 61.6 (k = 8)
PRICES = {"small": 1.0, "large": 4.0}  # per completion token


@dataclass(frozen=True)
class MenuAnswer:
    counts: dict[str, int]  # samples by decoder (x-howhard-decoders)
    samples: int
    rounds: int
    cost: float
    knob: float
    text: str
    usage: dict[str, int]


def menu_body(ask: Ask) -> dict[str, Any]:
    """``ask``'s fields with seed 0 (so each decoder's samples are handed out from the pool's
    first) and the pool's prompt as it is (the stubs look it up)."""
    body = {**ask.body(16), "seed": 0}
    if not ask.chat:
        body["prompt"] = ask.question
    return body


async def send_menu(client: AsyncOpenAI, ask: Ask) -> MenuAnswer:
    body = menu_body(ask)
    endpoint = client.chat.completions if ask.chat else client.completions
    raw = await endpoint.with_raw_response.create(**body)
    result = raw.parse()
    texts, usage = [], None
    if ask.stream:
        async for chunk in result:
            texts += [(c.delta.content if ask.chat else c.text) or "" for c in chunk.choices]
            usage = chunk.usage.model_dump() if chunk.usage is not None else usage
    else:
        texts = [c.message.content if ask.chat else c.text for c in result.choices]
        usage = result.usage.model_dump()
    assert usage is not None and len(texts) >= 1
    counts = {
        name: int(n)
        for name, n in (p.split(":") for p in raw.headers["x-howhard-decoders"].split(","))
    }
    return MenuAnswer(
        counts,
        int(raw.headers["x-howhard-samples"]),
        int(raw.headers["x-howhard-rounds"]),
        float(raw.headers["x-howhard-cost"]),
        float(raw.headers["x-howhard-knob"]),
        "".join(texts),
        usage,
    )


def load_menu(url: str, todo: list[Ask], clients: int) -> list[MenuAnswer]:
    """`load` for menu mode; fails on any error."""
    results = load(url, todo, clients, send_menu)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} of {len(results)} requests failed; first: {errors[0]!r}"
    return [r for r in results if isinstance(r, MenuAnswer)]


@pytest.mark.extended  # menu mode before real servers: tests/test_serve_menu_integration.py
def test_420_menu_requests_from_50_clients_through_replaying_stubs(tmp_path: Path) -> None:
    """The escalate policy (k small samples in round 1; when they disagree one large sample in
    round 2), its k paced to a mean cost of `MENU_BUDGET` over the stubs replaying its pools."""
    small_pool, large_pool = menu_pools(tmp_path, MENU_QUERIES)
    pools = {"small": read_pool(small_pool), "large": read_pool(large_pool)}
    prompts = pools["small"].prompts
    todo = [  # every query MENU_ROUNDS times; chat and completions; every fifth streamed
        Ask(prompts[i % MENU_QUERIES], i % 2 == 0, i % 5 == 0, True)
        for i in range(MENU_QUERIES * MENU_ROUNDS)
    ]
    with (
        stub_server(delay=0.02, fail_every=40, pool=str(small_pool)) as small,
        stub_server(delay=0.02, fail_every=40, pool=str(large_pool)) as large,
    ):
        tables = [
            {"name": name, "upstream": [server.url], "pool": pool, "model": f"{name}-model",
             "output_cost": PRICES[name]}
            for name, server, pool in (("small", small, small_pool), ("large", large, large_pool))
        ]  # fmt: skip
        config = menu_config(
            tmp_path / "serve.toml",
            tables,
            policy="escalate",
            task="arithmetic",
            budget=MENU_BUDGET,
            max_per_query=12,
            max_concurrency=16,
            horizon=50,
        )
        with menu_server(config) as proxy:
            got = load_menu(proxy.url, todo, clients=50)
            seen = metrics(proxy.url)
        stubs = {
            name: httpx.get(s.url + "/stats").json()
            for name, s in (("small", small), ("large", large))
        }

    # Each answer: what its headers say was drawn is what the pools hand out from seed 0.
    escalated = 0
    for ask, answer in zip(todo, got, strict=True):
        i = prompts.index(ask.question)
        k, extra = answer.counts.get("small", 0), answer.counts.get("large", 0)
        assert k >= 1 and extra <= 1 and answer.samples == k + extra
        assert answer.rounds == 1 + extra
        escalated += extra
        small_tokens = pools["small"].extras[i]["tokens"][:k]
        large_tokens = [pools["large"].extras[i]["tokens"][k % 4]] if extra else []
        assert answer.usage["completion_tokens"] == sum(small_tokens) + sum(large_tokens)
        assert answer.usage["prompt_tokens"] == answer.rounds * prompt_tokens(menu_body(ask))
        assert answer.usage["total_tokens"] == (
            answer.usage["prompt_tokens"] + answer.usage["completion_tokens"]
        )
        assert (
            answer.cost == sum(small_tokens) * PRICES["small"] + sum(large_tokens) * PRICES["large"]
        )
        drawn = pools["large" if extra else "small"].extras[i]["answers"]
        assert answer.text in drawn

    # /metrics counts exactly what the clients were told, by decoder; so do the stubs.
    n = len(todo)
    chats = sum(a.chat for a in todo)
    assert seen['howhard_requests_total{route="chat",status="200"}'] == chats
    assert seen['howhard_requests_total{route="completions",status="200"}'] == n - chats
    assert not [name for name in seen if name.startswith("howhard_errors_total")]
    for name, price in PRICES.items():
        samples = sum(a.counts.get(name, 0) for a in got)
        assert seen[f'howhard_decoder_samples_total{{decoder="{name}"}}'] == samples
        assert stubs[name]["samples"] == samples  # nothing drawn that was not billed
        assert seen[f'howhard_decoder_cost_total{{decoder="{name}"}}'] == pytest.approx(
            stubs[name]["completion_tokens"] * price, abs=1e-6
        )
        assert stubs[name]["failed"] > 0  # the stubs' hiccups were retried, not counted
    assert sum(a.usage["completion_tokens"] for a in got) == sum(
        s["completion_tokens"] for s in stubs.values()
    )
    assert sum(a.usage["prompt_tokens"] for a in got) == sum(
        s["prompt_tokens"] for s in stubs.values()
    )
    total = sum(a.cost for a in got)
    assert sum(seen[f'howhard_decoder_cost_total{{decoder="{d}"}}'] for d in PRICES) == (
        pytest.approx(total, abs=1e-6)
    )
    assert seen["howhard_rounds_count"] == n
    assert seen["howhard_rounds_sum"] == sum(a.rounds for a in got)
    assert seen['howhard_stops_total{reason="policy"}'] == n
    assert seen["howhard_budget_spent_per_request"] == pytest.approx(total / n, abs=1e-6)

    # Rounds and escalation happened, the knob was paced, and the mean cost met the budget.
    assert 0.1 * n < escalated < 0.9 * n
    assert len({a.knob for a in got}) > 1
    assert total / n == pytest.approx(MENU_BUDGET, rel=0.05)
