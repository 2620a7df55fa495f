"""The proxy decides queued requests together: `BatchQueue` (texts queued while a batch runs go in
the next one, in arrival order) and `Decider` (a batch is decided exactly as its queries one at a
time, the pacers' state included), with real n-gram features and a real trained predictor."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from serving import tiny_predictor, tiny_router

from howhard.features import NGrams
from howhard.pool import read_pool
from howhard.predict import load_predictor
from howhard.serve import Decider
from howhard.serve.app import BatchQueue
from howhard.serve.pacing import BudgetPacer, SharePacer
from howhard.tasks import get_task

K = 4
T = TypeVar("T")


def run_queue(queue: BatchQueue[T], texts: list[str]) -> list[T]:
    """Submit ``texts`` at once, in order, and gather the answers."""

    async def go() -> list[T]:
        return list(await asyncio.gather(*(queue.submit(t) for t in texts)))

    return asyncio.run(go())


class Recorder:
    """A blocking ``run``: answers each text upper-cased and records the batches; the first
    batch waits for ``release`` (so that the others queue behind it)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()

    def __call__(self, texts: list[str]) -> list[str]:
        if not self.batches:
            self.release.wait(5)
        self.batches.append(list(texts))
        return [t.upper() for t in texts]


def test_texts_queued_while_a_batch_runs_are_decided_together_in_arrival_order():
    run = Recorder()
    with ThreadPoolExecutor(1) as executor:
        queue = BatchQueue(run, executor, max_batch=3)

        async def go() -> list[str]:
            first = asyncio.ensure_future(queue.submit("a"))
            await asyncio.sleep(0.05)  # "a" runs alone: the queue was empty
            rest = [asyncio.ensure_future(queue.submit(t)) for t in "bcdefg"]
            await asyncio.sleep(0.05)
            run.release.set()
            return list(await asyncio.gather(first, *rest))

        answers = asyncio.run(go())
    assert answers == list("ABCDEFG")
    assert run.batches == [["a"], ["b", "c", "d"], ["e", "f", "g"]]  # at most max_batch


def test_a_wait_window_gathers_requests_that_arrive_apart():
    seen: list[list[str]] = []
    with ThreadPoolExecutor(1) as executor:
        queue = BatchQueue(lambda texts: seen.append(texts) or texts, executor, 8, wait=0.5)

        async def go() -> list[str]:
            first = asyncio.ensure_future(queue.submit("a"))
            await asyncio.sleep(0.05)
            return list(await asyncio.gather(first, queue.submit("b")))

        assert asyncio.run(go()) == ["a", "b"]
    assert seen == [["a", "b"]]


def test_a_full_batch_does_not_wait_out_the_window():
    sizes: list[int] = []
    with ThreadPoolExecutor(1) as executor:
        queue = BatchQueue(lambda texts: texts, executor, 4, wait=30.0, observe=sizes.append)

        async def go() -> list[str]:
            return list(await asyncio.wait_for(asyncio.gather(*map(queue.submit, "abcd")), 5))

        assert asyncio.run(go()) == list("abcd")
    assert sizes == [4]


def test_a_failing_batch_fails_each_of_its_callers_and_the_queue_goes_on():
    def run(texts: list[str]) -> list[str]:
        if "bad" in texts:
            raise ValueError("cannot featurise")
        return texts

    with ThreadPoolExecutor(1) as executor:
        queue = BatchQueue(run, executor, 8)

        async def go() -> tuple[list[object], str]:
            failed = await asyncio.gather(
                queue.submit("bad"), queue.submit("x"), return_exceptions=True
            )
            return failed, await queue.submit("ok")

        failed, ok = asyncio.run(go())
    assert [type(e) for e in failed] == [ValueError, ValueError] and ok == "ok"


def test_a_caller_cancelled_while_waiting_is_left_out_and_one_cancelled_later_is_discarded():
    run = Recorder()
    discarded: list[str] = []
    with ThreadPoolExecutor(1) as executor:
        queue = BatchQueue(run, executor, 8, discard=discarded.append)

        async def go() -> list[str]:
            first = asyncio.ensure_future(queue.submit("a"))  # runs, then is cancelled
            await asyncio.sleep(0.05)
            gone = asyncio.ensure_future(queue.submit("b"))  # cancelled before its batch
            kept = asyncio.ensure_future(queue.submit("c"))
            await asyncio.sleep(0.05)
            first.cancel()
            gone.cancel()
            run.release.set()
            return [await kept]

        assert asyncio.run(go()) == ["C"]
    assert run.batches == [["a"], ["c"]]
    assert discarded == ["A"]


# ----------------------------------------------------------------------- Decider: exact batching


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    workdir = tmp_path_factory.mktemp("batching")
    predictor, pool = tiny_predictor(workdir, "ngrams")
    return predictor, pool, tiny_router(workdir, "ngrams")


def decider(trained: tuple[Path, Path, Path], routing: bool) -> Decider:
    """A fresh decider with n-gram features, calibrated on the tiny pool (seeded pacers)."""
    predictor_path, pool_path, router_path = trained
    predictor, router = load_predictor(predictor_path), load_predictor(router_path)
    featurizer = NGrams()
    render = get_task("arithmetic").query_text
    x = featurizer.transform([render(p) for p in read_pool(pool_path).prompts])
    rng = np.random.default_rng(0)
    pacer = BudgetPacer(2.0, K, predictor.predict_gains(x, K), window=30, horizon=10, rng=rng)
    if not routing:
        return Decider(featurizer, predictor, pacer)
    share = SharePacer(0.3, router.predict_proba_success(x), window=30, horizon=10, rng=rng)
    return Decider(featurizer, predictor, pacer, router, featurizer, share)


def state(d: Decider) -> tuple[object, ...]:
    """What the pacers carry from one decision to the next: their counts, their random state,
    and (their window of recent predictions) the decisions they make next, one at a time."""
    p = d.pacer
    out: tuple[object, ...] = (p.decided, p.spent, p.rng.bit_generator.state)
    if d.share_pacer is not None:
        out += (d.share_pacer.decided, d.share_pacer.routed, list(d.share_pacer.window))
    return (*out, [d([t])[0] for t in NEXT])


TEXTS = [q.prompt for q in get_task("arithmetic").queries(70, seed=11)]
BATCHES = [1, 7, 3, 16, 2, 1, 30, 10]  # sums to 70
NEXT = [q.prompt for q in get_task("arithmetic").queries(20, seed=12)]


@pytest.mark.parametrize("routing", [False, True])
def test_a_batch_is_decided_as_its_queries_one_at_a_time(trained, routing):
    alone, together = decider(trained, routing), decider(trained, routing)
    one_by_one = [alone([t])[0] for t in TEXTS]
    batched, start = [], 0
    for size in BATCHES:
        batched += together(TEXTS[start : start + size])
        start += size
    assert batched == one_by_one
    assert state(together) == state(alone)
    assert len({d.samples for d in batched}) > 1  # the test can tell decisions apart
    if routing:
        assert {d.route for d in batched} == {"weak", "strong"}


def test_concurrent_requests_through_the_queue_are_decided_as_one_at_a_time(trained):
    alone, queued = decider(trained, routing=True), decider(trained, routing=True)
    one_by_one = [alone([t])[0] for t in TEXTS]
    sizes: list[int] = []
    with ThreadPoolExecutor(1) as executor:
        queue = BatchQueue(queued, executor, max_batch=8, observe=sizes.append)
        assert run_queue(queue, TEXTS) == one_by_one
    assert max(sizes) == 8 and sum(sizes) == len(TEXTS)
    assert state(queued) == state(alone)
