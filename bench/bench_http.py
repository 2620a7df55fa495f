"""Time labeling through the HTTP backend against the server's own throughput; run as
``python bench/bench_http.py``.

Starts llama-cpp-python's server with SmolLM2-135M (one thread) on a loopback port, then, in
turn and twice each, (a) fires the labeling's requests (16 arithmetic queries x 8 samples, one
n=1 request per sample with its own seed) straight at the server with httpx, CONCURRENCY in flight,
and (b) labels the same queries through `OpenAISampler` (same concurrency, default settings) and
`label` into a fresh temporary store. Prints samples/s of the best run of each and the ratio
(b)/(a): the share of the server's throughput that howhard's labeling keeps (target >= 0.90).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from howhard.backends.base import SamplingParams
from howhard.backends.openai import OpenAISampler, completion_payload
from howhard.label import label
from howhard.pool import prompt_hash
from howhard.store import LabelStore, StoreConfig
from howhard.tasks import get_task

N_QUERIES = 16
N_SAMPLES = 8
CONCURRENCY = 4
ROUNDS = 2
MODEL = "smollm2"
TASK = get_task("arithmetic")
PARAMS = SamplingParams(max_tokens=TASK.max_tokens)


def payloads() -> list[dict[str, Any]]:
    """The n=1 requests labeling sends: one per (query, sample index), with that sample's seed."""
    return [
        completion_payload(
            MODEL,
            TASK.render(q.prompt),
            PARAMS,
            1,
            PARAMS.sample_seed(prompt_hash(q.prompt), j),
            TASK.stop,
            chat=False,
        )
        for q in TASK.queries(N_QUERIES, seed=0)
        for j in range(N_SAMPLES)
    ]


async def fire(url: str, requests: list[dict[str, Any]]) -> float:
    """Seconds to get every response, at most CONCURRENCY requests in flight."""
    limit = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url + "/v1", timeout=120) as client:

        async def one(payload: dict[str, Any]) -> None:
            async with limit:
                response = await client.post("/completions", json=payload)
            response.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(one(p) for p in requests))
        return time.perf_counter() - start


def labeled(url: str) -> float:
    """Seconds `label` takes to draw N_QUERIES x N_SAMPLES through `OpenAISampler`."""
    queries = TASK.queries(N_QUERIES, seed=0)
    config = StoreConfig(TASK.name, MODEL, PARAMS.to_json())
    with (
        tempfile.TemporaryDirectory() as tmp,
        LabelStore(Path(tmp) / "s.sqlite", config) as store,
        OpenAISampler([url], MODEL, per_endpoint=CONCURRENCY) as sampler,
    ):
        stats = label(TASK, queries, sampler, store, N_SAMPLES, PARAMS, progress=False)
        if stats.errors or store.count() != N_QUERIES * N_SAMPLES:
            raise RuntimeError(f"labeling failed: {stats}")
        return stats.seconds


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from servers import llama_server  # the tests' server helper

    requests = payloads()
    n = len(requests)
    print(f"{N_QUERIES} arithmetic queries x {N_SAMPLES} samples, SmolLM2-135M, llama-cpp-python")
    print(f"server (1 thread), {CONCURRENCY} requests in flight; best of {ROUNDS} rounds")
    with llama_server() as server:
        asyncio.run(fire(server.url, requests[:N_SAMPLES]))  # warm up: load, first prompt
        raw, ours = [], []
        for _ in range(ROUNDS):
            raw.append(asyncio.run(fire(server.url, requests)))
            ours.append(labeled(server.url))
    raw_rate, our_rate = n / min(raw), n / min(ours)
    print(
        f"raw httpx       {raw_rate:6.2f} samples/s  (runs: {', '.join(f'{s:.1f}s' for s in raw)})"
    )
    print(
        f"howhard label   {our_rate:6.2f} samples/s  (runs: {', '.join(f'{s:.1f}s' for s in ours)})"
    )
    print(f"ratio {our_rate / raw_rate:.3f} (target >= 0.90)")


if __name__ == "__main__":
    main()
