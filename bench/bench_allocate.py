"""Time greedy_binary against the textbook heap greedy; run as ``python bench/bench_allocate.py``.

Binary rewards with success rates λ (a mix like a real pool: a fifth of the queries never
solved, the rest Beta(0.3, 0.7)), Δ(b) = λ(1 - λ)^(b-1), Bmax = 128, budget B = 8 per query.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

import numpy as np

from howhard.allocate import binary_gains, greedy, greedy_binary, total_samples

BMAX = 128
BUDGET = 8.0


def heap_greedy(gains: np.ndarray, total: int) -> np.ndarray:
    """The textbook greedy: a heap of each query's next gain, popped ``total`` times.

    Keys (-gain, query) break ties by the lower query index, then (as a query's next gain enters
    only after its previous one left) the lower b: the same order as `howhard.allocate.greedy`.
    """
    n, bmax = gains.shape
    counts = [0] * n
    heap = [(-float(gains[i, 0]), i) for i in range(n)]
    heapq.heapify(heap)
    for _ in range(total):
        _, i = heapq.heappop(heap)
        counts[i] += 1
        if counts[i] < bmax:
            heapq.heappush(heap, (-float(gains[i, counts[i]]), i))
    return np.array(counts, dtype=np.int64)


def rates(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lam = rng.beta(0.3, 0.7, n)
    lam[rng.random(n) < 0.2] = 0.0
    return lam


def best_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def total_value(lam: np.ndarray, counts: np.ndarray) -> float:
    """Σ_i q_i(b_i) with q(b) = 1 - (1 - λ)^b."""
    return float(np.sum(1.0 - (1.0 - lam) ** counts))


def main() -> None:
    big = rates(1_000_000)
    out = greedy_binary(big, BUDGET, BMAX)
    assert out.sum() == total_samples(big.size, BUDGET)
    t_big = best_time(lambda: greedy_binary(big, BUDGET, BMAX), repeat=3)
    print(f"greedy_binary  n=1,000,000 Bmax={BMAX} B={BUDGET:g}: {t_big:.3f} s (best of 3)")

    n = 20_000
    lam = rates(n, seed=1)
    gains = binary_gains(lam, BMAX)
    total = total_samples(n, BUDGET)
    by_heap = heap_greedy(gains, total)
    by_binary = greedy_binary(lam, BUDGET, BMAX)
    by_array = greedy(gains, BUDGET)
    t_heap = best_time(lambda: heap_greedy(gains, total), repeat=1)
    t_binary = best_time(lambda: greedy_binary(lam, BUDGET, BMAX), repeat=5)
    t_array = best_time(lambda: greedy(gains, BUDGET), repeat=3)
    v_heap, v_binary, v_array = (total_value(lam, c) for c in (by_heap, by_binary, by_array))
    print(f"heap greedy    n={n:,} Bmax={BMAX} B={BUDGET:g}: {t_heap:.3f} s")
    print(f"greedy (array) n={n:,} Bmax={BMAX} B={BUDGET:g}: {t_array:.4f} s")
    print(f"greedy_binary  n={n:,} Bmax={BMAX} B={BUDGET:g}: {t_binary:.4f} s")
    print(f"speed-up of greedy_binary over the heap: {t_heap / t_binary:.0f}x")
    print(f"total value  heap {v_heap:.6f}  greedy_binary {v_binary:.6f}  greedy {v_array:.6f}")
    assert np.array_equal(by_heap, by_binary) and np.array_equal(by_array, by_binary)
    assert v_heap == v_binary == v_array
    print("same allocation from all three: yes")


if __name__ == "__main__":
    main()
