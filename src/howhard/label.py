"""Labeling: draw N samples per query from a backend, score each with the task's reward, store them.

Resumable: only the (query, sample index) pairs missing from the store are drawn, each with the
seed its index implies, and each query's new samples are committed in one transaction. A query
whose backend call fails (`BackendError`: server down, timeouts after retries) is recorded in the
store's ``errors`` table and skipped, storing nothing for it; the run goes on with the other
queries and the next run draws its samples again. Any other exception ends the run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from tqdm import tqdm

from howhard.backends.base import Sampler, SamplingParams
from howhard.errors import BackendError, ConfigError
from howhard.pool import prompt_hash
from howhard.store import LabelStore, SampleRecord
from howhard.tasks.base import Query, Task


@dataclass(frozen=True)
class LabelStats:
    samples: int  # drawn in this run
    tokens: int
    seconds: float
    errors: int = 0  # queries whose backend call failed in this run (nothing stored for them)
    last_error: str = ""  # the message of the last of them
    queries: int = 0  # queries labeled (each had or now has its samples, but for errors)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def label(
    task: Task,
    queries: Sequence[Query],
    sampler: Sampler,
    store: LabelStore,
    n_samples: int,
    params: SamplingParams,
    progress: bool = True,
) -> LabelStats:
    """Make sure every query has samples 0..n_samples-1 in ``store``; returns what was drawn.
    ``progress``: a progress bar on stderr when it is a terminal."""
    if n_samples < 1:
        raise ConfigError(f"n_samples must be >= 1, got {n_samples}")
    store.add_queries(queries)
    todo = []
    for q in queries:
        have = store.stored_indices(q)
        missing = [j for j in range(n_samples) if j not in have]
        if missing:
            todo.append((q, missing))
    total = n_samples * len(queries)
    remaining = sum(len(m) for _, m in todo)
    bar = tqdm(
        total=total,
        initial=total - remaining,
        unit="sample",
        desc=f"label {task.name}, {len(queries)} queries",
        disable=None if progress else True,  # None: none when stderr is not a terminal
        dynamic_ncols=True,
    )
    drawn = tokens = errors = 0
    last_error = ""
    start = time.perf_counter()

    def draw(query: Query, missing: list[int]) -> list[SampleRecord]:
        t0 = time.perf_counter()
        qh = prompt_hash(query.prompt)
        seeds = [params.sample_seed(qh, j) for j in missing]
        completions = sampler.sample(task.render(query.prompt), params, seeds, task.stop)
        per_sample = (time.perf_counter() - t0) / len(missing)
        return [
            SampleRecord(j, c.text, task.reward(query, c.text), c.n_tokens, per_sample)
            for j, c in zip(missing, completions, strict=True)
        ]

    # Prompts are drawn concurrently; only this thread writes to the store.
    with bar, ThreadPoolExecutor(getattr(sampler, "concurrency", 1)) as pool:
        futures = {pool.submit(draw, q, m): q for q, m in todo}
        try:
            for future in as_completed(futures):
                try:
                    records = future.result()
                except BackendError as e:
                    errors, last_error = errors + 1, str(e)
                    store.add_error(futures[future], last_error)
                    bar.set_postfix(errors=errors, refresh=False)
                    continue
                store.add_samples(futures[future], records)
                drawn += len(records)
                tokens += sum(r.n_tokens for r in records)
                bar.update(len(records))
                rate = tokens / (time.perf_counter() - start)
                bar.set_postfix(tok_s=f"{rate:.0f}", errors=errors, refresh=False)
        finally:
            for f in futures:
                f.cancel()
    seconds = time.perf_counter() - start
    return LabelStats(drawn, tokens, seconds, errors, last_error, len(queries))
