"""Time the latency `howhard serve` adds at k = 1 against calling its upstream directly, in the
same run; run as ``python bench/bench_serve.py [--llama]``.

For each upstream (the canned-answer stub of tests/stub_upstream.py; with ``--llama`` also
llama-cpp-python's server with SmolLM2-135M, one thread) and each feature source of the
predictor (``ngrams``: hashed character n-grams, no model; ``hidden``: SmolLM2's hidden state, a
llama.cpp forward pass inside the proxy on every request; ``hidden@smollm2-q4_0``: the same from
SmolLM2 quantised again as Q4_0), starts ``howhard serve --budget 1
--max-per-query 1`` in front of the upstream and, after a warm-up, sends ``--requests`` sequential
pairs of the same chat request (an arithmetic question as the one user message, max_tokens 8,
temperature 0), one straight to the upstream and one through the proxy, alternating which goes
first so machine noise and the upstream's prompt cache favour neither. Added latency is the
proxied percentile minus the direct one (each over its own requests).

Then throughput at k = 1: ``--concurrency`` clients (default 8, the proxy's default requests in
flight per upstream) each sending its next request as soon as the last is answered, for
``--seconds``, direct and proxied in alternating rounds, best of 2 rounds each; prints
requests/s, their ratio (proxied / direct), and the mean number of requests the proxy featurised
and decided together in those rounds (from its /metrics ``howhard_decision_batch_size``).
``--serve-flags`` passes more flags to ``howhard serve`` (e.g. ``--decision-wait-ms 2``).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from howhard.tasks import get_task

TASK = get_task("arithmetic")
ROUNDS = 2


def body(model: str, question: str) -> dict[str, Any]:
    """One chat request for one sample; the proxy sends the upstream the same (its n and seed)."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 8,
        "temperature": 0.0,
        "n": 1,
        "seed": 0,
    }


def latencies(
    direct: Callable[[str], None], proxied: Callable[[str], None], questions: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Seconds each request took, direct and proxied, sent in interleaved pairs."""
    times: dict[Callable[[str], None], list[float]] = {direct: [], proxied: []}
    for i, question in enumerate(questions):
        for send in (direct, proxied) if i % 2 == 0 else (proxied, direct):
            start = time.perf_counter()
            send(question)
            times[send].append(time.perf_counter() - start)
    return np.array(times[direct]), np.array(times[proxied])


async def rate(
    url: str, headers: dict[str, str], bodies: list[dict[str, Any]], args: argparse.Namespace
) -> float:
    """Requests per second answered with ``args.concurrency`` in flight, each client sending
    the next of ``bodies`` as soon as its last is answered, for ``args.seconds``."""
    answered = 0
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as client:
        start = time.perf_counter()

        async def one_client(i: int) -> None:
            nonlocal answered
            while time.perf_counter() - start < args.seconds:
                response = await client.post("/v1/chat/completions", json=bodies[i % len(bodies)])
                response.raise_for_status()
                answered, i = answered + 1, i + args.concurrency

        await asyncio.gather(*(one_client(i) for i in range(args.concurrency)))
        return answered / (time.perf_counter() - start)


def row(upstream: Any, features: str, workdir: Path, args: argparse.Namespace, n: int) -> str:
    from serving import API_KEY, howhard_server, tiny_predictor

    model = httpx.get(upstream.url + "/v1/models").json()["data"][0]["id"]
    questions = [q.prompt for q in TASK.queries(97, seed=5)]
    asked = [questions[i % len(questions)] for i in range(args.warmup + n)]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    source, _, model = features.partition("@")
    predictor, pool = tiny_predictor(workdir, source, model=model or None)
    flags = ("--budget", "1", "--max-per-query", "1", *args.serve_flags.split())
    with (
        howhard_server(upstream.url, predictor, pool, *flags) as proxy,
        httpx.Client(base_url=upstream.url, timeout=300) as to_upstream,
        httpx.Client(base_url=proxy.url, headers=auth, timeout=300) as to_proxy,
    ):

        def direct(question: str) -> None:
            response = to_upstream.post("/v1/chat/completions", json=body(model, question))
            response.raise_for_status()

        def proxied(question: str) -> None:
            response = to_proxy.post("/v1/chat/completions", json=body("howhard", question))
            response.raise_for_status()
            assert response.headers["x-howhard-samples"] == "1"

        latencies(direct, proxied, asked[: args.warmup])
        d, p = (1000 * np.percentile(t, [50, 99]) for t in latencies(direct, proxied, asked[-n:]))
        before = batches(to_proxy)
        rates: dict[str, list[float]] = {"direct": [], "proxied": []}
        for _ in range(ROUNDS):
            for name, url, headers, model_name in (
                ("direct", upstream.url, {}, model),
                ("proxied", proxy.url, auth, "howhard"),
            ):
                bodies = [body(model_name, q) for q in questions]
                rates[name].append(asyncio.run(rate(url, headers, bodies, args)))
        after = batches(to_proxy)
    rd, rp = max(rates["direct"]), max(rates["proxied"])
    batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
    return (
        f"{features:20} {d[0]:7.2f} {d[1]:7.2f}  {p[0]:7.2f} {p[1]:7.2f}  "
        f"{p[0] - d[0]:6.2f} {p[1] - d[1]:6.2f}  {rd:7.1f} {rp:7.1f}  {rp / rd:5.2f}  {batch:5.1f}"
    )


def batches(to_proxy: httpx.Client) -> tuple[float, float]:
    """(requests decided, featurizer calls) so far, from the proxy's /metrics."""
    text = to_proxy.get("/metrics").text
    found = dict(re.findall(r"^howhard_decision_batch_size_(sum|count) (\S+)$", text, re.M))
    return float(found.get("sum", 0)), float(found.get("count", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="timed pairs, stub")
    parser.add_argument("--llama-requests", type=int, default=60, help="timed pairs, llama")
    parser.add_argument("--warmup", type=int, default=20, help="untimed pairs first")
    parser.add_argument("--seconds", type=float, default=5.0, help="a throughput round's length")
    parser.add_argument("--concurrency", type=int, default=8, help="in flight for throughput")
    parser.add_argument(
        "--features",
        nargs="+",
        default=["ngrams", "hidden"],
        help="feature sources, SOURCE@MODEL for another LM: hidden@smollm2-q4_0",
    )
    parser.add_argument("--llama", action="store_true", help="also in front of llama.cpp")
    parser.add_argument(
        "--serve-flags", default="", help="extra howhard serve flags, e.g. '--decision-wait-ms 2'"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from servers import llama_server
    from stub_upstream import stub_server

    upstreams: list[tuple[str, Callable[[], AbstractContextManager[Any]], int]] = [
        ("stub", stub_server, args.requests)
    ]
    if args.llama:
        upstreams.append(("llama", llama_server, args.llama_requests))
    print(
        f"howhard serve --budget 1 --max-per-query 1 vs its upstream directly; sequential chat "
        f"requests (max_tokens 8), interleaved, after {args.warmup} warm-up pairs; throughput "
        f"with {args.concurrency} in flight, best of {ROUNDS} {args.seconds:g}-second rounds"
    )
    print(
        f"{'upstream':8} {'features':20} {'direct ms':>15}  {'proxied ms':>15}  "
        f"{'added ms':>13}  {'requests/s':>15}  {'ratio':>5}  {'batch':>5}"
    )
    print(
        f"{'':8} {'':20} {'p50':>7} {'p99':>7}  {'p50':>7} {'p99':>7}  {'p50':>6} {'p99':>6}  "
        f"{'direct':>7} {'proxied':>7}  {'':>5}  {'mean':>5}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, start, n in upstreams:
            with start() as upstream:
                for features in args.features:
                    print(f"{name:8} {row(upstream, features, Path(tmp), args, n)}", flush=True)


if __name__ == "__main__":
    main()
