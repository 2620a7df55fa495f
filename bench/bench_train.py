"""Time train's 5-fold comparison with its fits in one worker process per core against one
process; run as ``python bench/bench_train.py``.

A synthetic binary pool shaped like the demo's: 1,000 queries x 16 samples, two feature sources
of 576 columns (SmolLM2's width) and the two side by side, heads logistic and mlp at four L2
strengths: 3 sources x 2 heads x 4 strengths x 5 folds = 120 fits. ``LOKY_MAX_CPU_COUNT`` caps
the workers joblib starts (1: the fits run in this process).
"""

from __future__ import annotations

import os
import time

import numpy as np
from scipy.special import expit

from howhard.pool import Pool
from howhard.runs.train import compare

N, D, SAMPLES = 1000, 576, 16


def pool_and_sources(seed: int = 0) -> tuple[Pool, dict[str, tuple[np.ndarray, list[int]]]]:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(N, D)), rng.normal(size=(N, D))
    rates = expit(a[:, :8].sum(axis=1) / 2 + np.tanh(b[:, :8]).sum(axis=1) - 2.5)
    rewards = tuple((rng.random(SAMPLES) < r).astype(float) for r in rates)
    pool = Pool(tuple(f"q{i}" for i in range(N)), tuple(f"p{i}" for i in range(N)), rewards)
    sources = {"a": (a, [D]), "b": (b, [D]), "a+b": (np.hstack([a, b]), [D, D])}
    return pool, sources


def timed(workers: str) -> tuple[float, dict[str, dict[str, float]]]:
    os.environ["LOKY_MAX_CPU_COUNT"] = workers
    pool, sources = pool_and_sources()
    start = time.perf_counter()
    result = compare(pool, sources, "auto", folds=5)
    return time.perf_counter() - start, result.holdout


def main() -> None:
    cores = str(os.cpu_count() or 1)
    one, tables_one = timed("1")
    many, tables_many = timed(cores)
    assert tables_one == tables_many, "the workers' fits differ from one process's"
    print(f"120 fits: one process {one:.1f} s, {cores} workers {many:.1f} s: {one / many:.2f}x")


if __name__ == "__main__":
    main()
