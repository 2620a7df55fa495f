import asyncio
import email.utils
import json
import sqlite3
import threading
import time
from collections import Counter

import httpx
import pytest
from conftest import needs_model
from hypothesis import given, settings
from hypothesis import strategies as st

from howhard.backends.base import Completion, SamplingParams
from howhard.backends.openai import (
    OpenAISampler,
    completion_payload,
    normalise_endpoint,
    parse_response,
    retry_after_seconds,
    split_tokens,
)
from howhard.errors import BackendError, ConfigError, HowhardError
from howhard.label import label
from howhard.pool import prompt_hash
from howhard.store import LabelStore, StoreConfig
from howhard.tasks import get_task

PARAMS = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=8, seed=3)

# --- payloads and parsers, on exact dicts ---


def test_completion_payload_exact():
    assert completion_payload("m", "Q: 1+1?\nA:", PARAMS, 1, 42, ("\n", "Q:"), chat=False) == {
        "model": "m",
        "prompt": "Q: 1+1?\nA:",
        "max_tokens": 8,
        "temperature": 0.7,
        "top_p": 0.9,
        "n": 1,
        "seed": 42,
        "stop": ["\n", "Q:"],
    }


def test_chat_payload_exact_without_stop():
    assert completion_payload("m", "hi", PARAMS, 4, 7, (), chat=True) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "temperature": 0.7,
        "top_p": 0.9,
        "n": 4,
        "seed": 7,
    }


def test_parse_completion_n1():
    body = {
        "id": "cmpl-1",
        "object": "text_completion",
        "choices": [{"text": " 4", "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 13, "completion_tokens": 2, "total_tokens": 15},
    }
    assert parse_response(body, chat=False, n=1) == [Completion(" 4", 2)]


def test_parse_chat_n3_splits_usage_by_text_length_in_index_order():
    body = {
        "choices": [
            {"index": 2, "message": {"role": "assistant", "content": ""}},
            {"index": 0, "message": {"role": "assistant", "content": "a"}},
            {"index": 1, "message": {"role": "assistant", "content": "bbb"}},
        ],
        "usage": {"completion_tokens": 10},
    }
    # shares 2.5, 7.5, 0: the one spare token goes to the first tie
    assert parse_response(body, chat=True, n=3) == [
        Completion("a", 3),
        Completion("bbb", 7),
        Completion("", 0),
    ]


def test_parse_without_usage_counts_zero_and_keeps_fewer_choices():
    body = {"choices": [{"text": "x"}]}
    assert parse_response(body, chat=False, n=4) == [Completion("x", 0)]
    chat = {"choices": [{"message": {"content": None}}], "usage": None}
    assert parse_response(chat, chat=True, n=1) == [Completion("", 0)]


@pytest.mark.parametrize(
    ("body", "chat", "message"),
    [
        ({"error": "overloaded"}, False, "completion response has no 'choices' list"),
        ([], True, "chat completion response has no 'choices' list"),
        ({"choices": []}, False, "response has no choices"),
        ({"choices": [{"index": 0}]}, False, "choice 0 of the completion response has no 'text'"),
        ({"choices": [{"text": 3}]}, False, "has no 'text'"),
        ({"choices": [{"message": {}}]}, True, "choice 0 of the chat response has no message"),
        ({"choices": [{"text": "x"}]}, True, "choice 0 of the chat response has no message"),
        ({"choices": [{"message": {"content": 5}}]}, True, "holds 5, not text"),
        ({"choices": [{"text": "a"}, {"text": "b"}]}, False, "returned 2 choices where 1"),
        (
            {"choices": [{"text": "a"}], "usage": {"completion_tokens": "2"}},
            False,
            "usage.completion_tokens of the completion response is '2'",
        ),
    ],
)
def test_parse_malformed_bodies_raise_naming_what_is_missing(body, chat, message):
    with pytest.raises(BackendError, match=message):
        parse_response(body, chat=chat, n=1)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 500), st.lists(st.integers(0, 20), min_size=1, max_size=8))
def test_split_tokens_sums_exactly_and_is_proportional(total, lengths):
    texts = ["x" * n for n in lengths]
    parts = split_tokens(total, texts)
    assert sum(parts) == total and all(p >= 0 for p in parts)
    weights = [len(t) for t in texts] if any(texts) else [1] * len(texts)
    for part, w in zip(parts, weights, strict=True):
        assert abs(part - total * w / sum(weights)) < 1


def test_normalise_endpoint():
    for url in ("http://h:8080", "http://h:8080/", "http://h:8080/v1", " http://h:8080/v1/ "):
        assert normalise_endpoint(url) == "http://h:8080/v1"
    assert normalise_endpoint("https://x.org/openai") == "https://x.org/openai/v1"
    for bad in ("h:8080", "ftp://h", "http://"):
        with pytest.raises(ConfigError, match="is not an http\\(s\\) URL"):
            normalise_endpoint(bad)


def test_retry_after_seconds():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("-2") == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds(date, now=1_000_000) == 30.0
    assert retry_after_seconds(date, now=2_000_000) == 0.0


def test_constructor_validates():
    with pytest.raises(ConfigError, match="no endpoint"):
        OpenAISampler([], "m")
    with pytest.raises(ConfigError, match="n_per_request must be 'auto' or 'never'"):
        OpenAISampler(["http://a"], "m", n_per_request="always")
    with pytest.raises(ConfigError, match="per_endpoint must be >= 1"):
        OpenAISampler(["http://a"], "m", per_endpoint=0)


# --- the sampler against httpx.MockTransport ---


class Fake:
    """A scripted server: ``script`` answers (status, body, headers) in turn, then success; every
    request is recorded with its host and JSON body; each success echoes the seed."""

    def __init__(self, script=(), choices_for_n=None, delay=0.0):
        self.script = list(script)
        self.requests: list[tuple[str, dict]] = []
        self.choices_for_n = choices_for_n or (lambda n: n)
        self.delay = delay
        self.in_flight: Counter = Counter()
        self.max_in_flight: Counter = Counter()
        self.sleeps: list[float] = []

    async def handler(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        body = json.loads(request.content)
        self.requests.append((host, body))
        self.in_flight[host] += 1
        self.max_in_flight[host] = max(self.max_in_flight[host], self.in_flight[host])
        try:
            await asyncio.sleep(self.delay)
            if self.script:
                status, content, headers = self.script.pop(0)
                if isinstance(content, Exception):
                    raise content
                return httpx.Response(status, json=content, headers=headers)
            k = self.choices_for_n(body["n"])
            key = "messages" if "messages" in body else "text"
            choices = [
                {"index": i, "text": f"s{body['seed']}.{i}"}
                if key == "text"
                else {"index": i, "message": {"content": f"s{body['seed']}.{i}"}}
                for i in range(k)
            ]
            return httpx.Response(
                200, json={"choices": choices, "usage": {"completion_tokens": 4 * k}}
            )
        finally:
            self.in_flight[host] -= 1

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def sampler(self, endpoints=("http://a:1",), **kw) -> OpenAISampler:
        kw.setdefault("n_per_request", "never")
        return OpenAISampler(
            list(endpoints),
            "m",
            transport=httpx.MockTransport(self.handler),
            sleep=self.sleep,
            **kw,
        )


def test_singles_carry_their_own_seeds_in_order():
    fake = Fake()
    with fake.sampler() as s:
        got = s.sample("p", PARAMS, [5, 6, 7], ["\n"])
    assert got == [Completion("s5.0", 4), Completion("s6.0", 4), Completion("s7.0", 4)]
    assert sorted(b["seed"] for _, b in fake.requests) == [5, 6, 7]
    assert all(b["n"] == 1 and b["prompt"] == "p" for _, b in fake.requests)


def test_429_waits_retry_after_seconds_or_date_capped():
    date = email.utils.formatdate(time.time() + 1000, usegmt=True)
    fake = Fake(
        [
            (429, {"error": "slow down"}, {"Retry-After": "3"}),
            (429, {}, {"Retry-After": date}),
            (503, {}, {"Retry-After": "0.25"}),
        ]
    )
    with fake.sampler(max_retry_after=60.0) as s:
        assert s.sample("p", PARAMS, [1], []) == [Completion("s1.0", 4)]
    assert fake.sleeps == [3.0, 60.0, 0.25]


def test_503_then_success_backs_off_exponentially():
    fake = Fake([(503, {}, {}), (500, {}, {}), (408, {}, {})])
    with fake.sampler(backoff=0.5) as s:
        assert s.sample("p", PARAMS, [1], []) == [Completion("s1.0", 4)]
    assert fake.sleeps == [0.5, 1.0, 2.0]
    assert len(fake.requests) == 4


def test_400_is_not_retried():
    fake = Fake([(400, {"error": "bad top_p"}, {})])
    with fake.sampler() as s, pytest.raises(BackendError) as err:
        s.sample("p", PARAMS, [1], [])
    assert "http://a:1/v1/completions: HTTP 400" in str(err.value)
    assert "bad top_p" in str(err.value) and "check the model name" in str(err.value)
    assert len(fake.requests) == 1 and fake.sleeps == []


def test_retries_exhausted_names_the_endpoints_and_what_to_do():
    boom = httpx.ConnectError("Connection refused")
    fake = Fake([(0, boom, {})] * 3)
    sampler = fake.sampler(["http://a:1", "http://b:2"], retries=2, backoff=0.1)
    with sampler as s, pytest.raises(BackendError) as err:
        s.sample("p", PARAMS, [1], [])
    message = str(err.value)
    assert "no answer after 3 attempts" in message
    assert "endpoints tried: http://a:1/v1/completions, http://b:2/v1/completions)" in message
    assert "ConnectError: Connection refused" in message
    assert "Check that the server is running" in message
    assert [h for h, _ in fake.requests] == ["a", "b", "a"]  # each retry on the next endpoint
    assert fake.sleeps == [0.1, 0.2]


def test_timeouts_are_retried():
    fake = Fake([(0, httpx.ReadTimeout("slow"), {})])
    with fake.sampler(timeout=7.0) as s:
        assert s.sample("p", PARAMS, [2], []) == [Completion("s2.0", 4)]
    assert len(fake.requests) == 2


def test_round_robin_and_per_endpoint_limit():
    fake = Fake(delay=0.02)
    with fake.sampler(["http://a:1", "http://b:2"], per_endpoint=2) as s:
        assert s.concurrency == 4
        got = s.sample("p", PARAMS, list(range(12)), [])
    assert [c.text for c in got] == [f"s{i}.0" for i in range(12)]
    assert Counter(h for h, _ in fake.requests) == {"a": 6, "b": 6}
    assert fake.max_in_flight == {"a": 2, "b": 2}


def test_round_robin_over_one_sample_calls():
    fake = Fake()
    with fake.sampler(["http://a:1", "http://b:2"], n_per_request="auto") as s:
        for seed in range(4):
            s.sample("p", PARAMS, [seed], [])
    assert [h for h, _ in fake.requests] == ["a", "b", "a", "b"]


def test_many_threads_share_the_loop_without_exceeding_limits():
    fake = Fake(delay=0.01)
    with fake.sampler(["http://a:1", "http://b:2", "http://c:3"], per_endpoint=1) as s:
        threads = [
            threading.Thread(target=s.sample, args=("p", PARAMS, [i, i + 100], []))
            for i in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(fake.requests) == 12
    assert fake.max_in_flight == {"a": 1, "b": 1, "c": 1}


def test_asample_from_another_event_loop():
    fake = Fake(delay=0.01)

    async def main(s: OpenAISampler) -> list[list[Completion]]:
        return await asyncio.gather(*(s.asample("p", PARAMS, [i], []) for i in range(3)))

    with fake.sampler() as s:
        got = asyncio.run(main(s))
    assert got == [[Completion(f"s{i}.0", 4)] for i in range(3)]


def test_auto_uses_n_where_honoured():
    fake = Fake()
    with fake.sampler(n_per_request="auto") as s:
        got = s.sample("p", PARAMS, [9, 10, 11], [])
        assert s.supports_n == {"http://a:1/v1": True}
    assert [c.text for c in got] == ["s9.0", "s9.1", "s9.2"]  # one request, one seed
    assert [b["n"] for _, b in fake.requests] == [3]


def test_auto_falls_back_where_n_is_ignored():
    fake = Fake(choices_for_n=lambda n: 1)
    with fake.sampler(n_per_request="auto") as s:
        first = s.sample("p", PARAMS, [9, 10, 11], [])
        assert s.supports_n == {"http://a:1/v1": False}
        second = s.sample("p", PARAMS, [1, 2], [])
    # the choice it returned is kept; the rest are drawn one per request with their own seeds
    assert [c.text for c in first] == ["s9.0", "s10.0", "s11.0"]
    assert [c.text for c in second] == ["s1.0", "s2.0"]
    ns = [(b["n"], b["seed"]) for _, b in fake.requests]
    assert ns[0] == (3, 9) and sorted(ns[1:]) == [(1, 1), (1, 2), (1, 10), (1, 11)]


def test_auto_falls_back_where_n_is_refused():
    fake = Fake([(400, {"error": "Only one completion choice is allowed"}, {})])
    with fake.sampler(n_per_request="auto", chat=True) as s:
        got = s.sample("p", PARAMS, [3, 4], [])
        assert s.supports_n == {"http://a:1/v1": False}
    assert [c.text for c in got] == ["s3.0", "s4.0"]
    assert [b["n"] for _, b in fake.requests] == [2, 1, 1]


def test_api_key_is_sent_but_never_shown():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401, json={"error": "Invalid API key"})

    transport = httpx.MockTransport(handler)
    with OpenAISampler(["http://a:1"], "m", api_key="sk-secret", transport=transport) as s:
        with pytest.raises(BackendError) as err:
            s.sample("p", PARAMS, [1], [])
        assert "sk-secret" not in repr(s) and "sk-secret" not in str(err.value)
        assert "Check the API key" in str(err.value)
    assert seen == ["Bearer sk-secret"]


def test_chat_goes_to_chat_completions_and_non_json_is_an_error():
    paths = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(200, text="<html>proxy error</html>")

    transport = httpx.MockTransport(handler)
    sampler = OpenAISampler(["http://a:1/v1/"], "m", chat=True, transport=transport)
    with sampler as s, pytest.raises(BackendError, match=r"not JSON.*an OpenAI-compatible server"):
        s.sample("p", PARAMS, [1], [])
    assert paths == ["/v1/chat/completions"]


def test_closed_sampler_refuses_and_close_cancels_requests_in_flight():
    fake = Fake(delay=30)
    s = fake.sampler()
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_raises(s.sample, "p", PARAMS, [1], [])))
    thread.start()
    while not fake.requests:
        time.sleep(0.005)
    s.close()
    thread.join(5)
    assert not thread.is_alive()
    assert "cancelled because the sampler closed" in str(errors[0])
    with pytest.raises(HowhardError, match="closed"):
        s.sample("p", PARAMS, [1], [])
    s.close()  # idempotent


def _raises(f, *args):
    try:
        f(*args)
    except Exception as e:
        return e
    return None


# --- against a real llama-cpp-python server with the embedded SmolLM2 ---

TASK = get_task("arithmetic")
TASK_PARAMS = SamplingParams(max_tokens=TASK.max_tokens, seed=0)


@pytest.fixture(scope="module")
def server():
    from servers import llama_server

    with llama_server() as running:
        yield running


@pytest.mark.integration
@needs_model
def test_real_server_ignores_n_and_auto_falls_back(server):
    prompt = TASK.render("What is 3 + 4?")
    raw = httpx.post(
        server.url + "/v1/completions",
        json=completion_payload("smollm2", prompt, TASK_PARAMS, 3, 1, TASK.stop, False),
        timeout=60,
    ).json()
    assert len(raw["choices"]) == 1  # llama-cpp-python's server does not honour n
    seeds = [11, 12, 13]
    with OpenAISampler([server.url], "smollm2") as auto:
        got = auto.sample(prompt, TASK_PARAMS, seeds, TASK.stop)
        assert auto.supports_n == {server.url + "/v1": False}
    with OpenAISampler([server.url], "smollm2", n_per_request="never") as never:
        again = never.sample(prompt, TASK_PARAMS, seeds, TASK.stop)
    assert len(got) == 3 and all(1 <= c.n_tokens <= TASK.max_tokens for c in got)
    assert got == again  # the fallback drew sample j with seeds[j], as "never" does


@pytest.mark.integration
@needs_model
def test_real_server_chat(server):
    with OpenAISampler([server.url], "smollm2", chat=True) as s:
        got = s.sample("What is 2 + 2?", SamplingParams(max_tokens=6), [1, 2], [])
    assert len(got) == 2
    assert all(c.text and 1 <= c.n_tokens <= 6 for c in got)


@pytest.mark.integration
def test_nothing_listening_is_a_backend_error_naming_the_endpoint():
    from servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    sampler = OpenAISampler([url], "m", retries=1, backoff=0.01)
    with sampler as s, pytest.raises(BackendError, match=f"{url}/v1/completions: ConnectError"):
        s.sample("p", PARAMS, [1], [])


@pytest.mark.integration
@pytest.mark.slow
@needs_model
def test_labeling_survives_a_killed_server(tmp_path):
    """SIGKILL the server mid-run: the run ends with errors recorded and no exception; restart it
    on the same port and rerun: every (query, index) is stored once, earlier samples unchanged."""
    from servers import llama_server

    queries = TASK.queries(6, seed=0)
    n_samples = 3
    path = tmp_path / "labels.sqlite"
    config = StoreConfig(TASK.name, "smollm2", TASK_PARAMS.to_json())

    def rows() -> dict:
        with sqlite3.connect(path) as db:
            got = db.execute("SELECT query_hash, idx, completion, reward, n_tokens FROM samples")
            return {(h, i): rest for h, i, *rest in got}

    with llama_server() as server:
        killed_at: list[int] = []

        def kill_after_progress() -> None:
            deadline = time.monotonic() + 60
            while len(rows()) < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            server.kill()
            killed_at.append(len(rows()))

        sampler = OpenAISampler([server.url], "smollm2", per_endpoint=2, retries=2, backoff=0.05)
        with sampler, LabelStore(path, config) as store:
            killer = threading.Thread(target=kill_after_progress)
            killer.start()
            first = label(TASK, queries, sampler, store, n_samples, TASK_PARAMS, progress=False)
            killer.join()
            before = rows()
            assert 4 <= killed_at[0] <= len(before) == first.samples < len(queries) * n_samples
            assert first.errors > 0 and server.url in first.last_error
            errors = store.errors()
            assert len(errors) == first.errors
            failed = {e.query_hash for e in errors}
            assert not failed & {h for h, _ in before}  # nothing stored for a failed query

            server.restart()
            second = label(TASK, queries, sampler, store, n_samples, TASK_PARAMS, progress=False)
            assert second.errors == 0 and second.samples == len(queries) * n_samples - len(before)
            assert len(store.errors()) == first.errors
        after = rows()
    assert set(after) == {(prompt_hash(q.prompt), j) for q in queries for j in range(n_samples)}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == len(after)
    assert {k: after[k] for k in before} == before


@pytest.mark.integration
@needs_model
def test_cli_labels_through_a_fleet_and_exports_answers(server, tmp_path, capsys):
    """`howhard label --backend openai` with the same server listed twice (a fleet of two
    endpoints), an evaluation set disjoint from a training file, then `howhard export`."""
    from howhard.cli import main
    from howhard.pool import read_pool

    train = tmp_path / "train.jsonl"
    queries = TASK.queries(6, 0)
    train.write_text(
        "".join(json.dumps({"id": q.id, "prompt": q.prompt}) + "\n" for q in queries[:3])
    )
    store, out = tmp_path / "s.sqlite", tmp_path / "p.jsonl"
    fleet = ["--endpoint", server.url, "--endpoint", server.url + "/v1"]
    argv = ["label", "--backend", "openai", *fleet, "--model", "smollm2", "--samples", "2"]
    argv += ["--queries", "3", "--exclude", str(train), "--store", str(store), "--quiet"]
    assert main(argv) == 0
    assert "6 samples drawn" in capsys.readouterr().out
    assert main(["export", str(store), "--out", str(out)]) == 0
    pool = read_pool(out)
    assert not set(pool.prompts) & {q.prompt for q in queries[:3]}
    assert len(pool) == 3 and all(len(r) == 2 for r in pool.rewards)
    for extra, rewards in zip(pool.extras, pool.rewards, strict=True):
        assert all(1 <= t <= TASK.max_tokens for t in extra["tokens"])
        if "answers" in extra:  # reward 1 only for the expected answer
            expected = str(extra["answer"])
            assert [float(a == expected) for a in extra["answers"]] == rewards.tolist()
