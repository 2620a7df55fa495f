"""Best-of-k under each way of choosing the answer, and the cap an imperfect verifier puts on it.

For each k = 1..kmax, the success of drawing k samples of each query (uniformly, without
replacement, from its n pooled ones) and returning one chosen by

- ``oracle``: the benchmark's own tests (the best reward of the k; pass@k for a binary pool);
- ``verifier``: the highest per-sample score (the pool's ``scores``, e.g. the fraction of
  model-generated tests passed), ties broken uniformly (`howhard.rerank.scored_best_of`);
- ``majority``: the most common answer (the pool's ``answers``, e.g. a behaviour signature),
  ties broken uniformly, abstaining samples ignored (`howhard.rerank.majority_best_of`);
- ``random``: any one of them (the one-sample success, whatever k).

All are exact expectations over the k-subsets and the tie-breaks, averaged over queries.

**The cap** (Stroebl et al., "Inference Scaling fLaws", 2024): with a perfect verifier, success
rises to the share of queries with any correct sample; with an imperfect one it plateaus at the
success of what the verifier ranks first. As k grows to n, the verifier returns a sample of the
query's top-scored group, so success tends to that group's mean reward (`Cap.verifier`): a query
whose top group holds a wrong sample loses that share however much is resampled (a false
positive outranks the right answers). Same for majority vote with the largest answer group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from howhard.errors import PoolError
from howhard.pool import Pool, check_samples
from howhard.rerank import reranked_q

REPORT_KS = (1, 2, 5, 10, 20, 50, 100)


@dataclass(frozen=True)
class TopGroups:
    """Where the top-ranked group of each query's full pool stands, among the queries with at
    least one correct sample (reward 1): all of the top group correct, some, none."""

    all_correct: int
    mixed: int
    none_correct: int


@dataclass
class BestOfK:
    """Success (mean over queries) of best-of-k for k = 1..kmax under each chooser, the cap of
    each chooser at k = n and where its top groups stand (`TopGroups`), and the k where each
    curve peaks (the smallest, when it peaks more than once within ``tolerance``)."""

    n_queries: int
    kmax: int
    binary: bool
    curves: dict[str, list[float]] = field(default_factory=dict)
    solvable: float = 0.0  # share of queries with at least one sample of reward 1
    top_groups: dict[str, TopGroups] = field(default_factory=dict)
    peak_k: dict[str, int] = field(default_factory=dict)
    blind: dict[str, int] = field(default_factory=dict)  # queries it cannot rank at all
    tolerance: float = 1e-9

    def at(self, method: str, k: int) -> float:
        """Success of ``method`` with k samples."""
        return self.curves[method][k - 1]


def best_of_k(pool: Pool, kmax: int | None = None) -> BestOfK:
    """`BestOfK` of ``pool`` for k = 1..kmax (default: the fewest samples of any query); the
    verifier and majority curves when every row has ``scores`` / ``answers``."""
    n_min = int(pool.n_samples.min()) if len(pool) else 0
    kmax = n_min if kmax is None else kmax
    check_samples(pool, kmax)
    out = BestOfK(len(pool), kmax, pool.binary)
    q = pool.q(kmax)
    out.curves["oracle"] = q[:, 1:].mean(axis=0).tolist()
    per_sample = {"verifier": "scores", "majority": "answers"}
    for method, key in per_sample.items():
        if not all(key in e for e in pool.extras):
            continue
        values = [e[key] for e in pool.extras]
        kind = "scored" if method == "verifier" else "majority"
        out.curves[method] = reranked_q(pool.rewards, values, kmax, kind)[:, 1:].mean(0).tolist()
        out.top_groups[method] = _top_groups(pool.rewards, values, method)
        out.blind[method] = sum(
            len(set(v)) == 1 if method == "verifier" else all(a is None for a in v) for v in values
        )
    if not out.curves.keys() - {"oracle", "random"}:
        raise PoolError(
            "the pool has neither per-sample scores nor answers: best-of-k would only show the "
            "oracle; give each row 'scores' (e.g. from generated tests, score_pool's "
            "generated_tests_path) or 'answers' first"
        )
    out.curves["random"] = [float(q[:, 1].mean())] * kmax
    out.solvable = float(np.mean([bool(np.any(r == 1.0)) for r in pool.rewards]))
    for method, curve in out.curves.items():
        best = max(curve)
        out.peak_k[method] = next(k for k, v in enumerate(curve, 1) if v >= best - out.tolerance)
    return out


def _top_groups(rewards: Sequence[np.ndarray], values: Sequence[Any], method: str) -> TopGroups:
    """`TopGroups` of the top-scored samples (verifier) or the largest answer group (majority,
    ties: all tied groups together) of each query with a correct sample."""
    counts = [0, 0, 0]
    for r, v in zip(rewards, values, strict=True):
        if not np.any(r == 1.0):
            continue
        if method == "verifier":
            s = np.asarray(v, dtype=float)
            top = s == s.max()
        else:
            labels = list(v)
            sizes = {a: labels.count(a) for a in set(labels) if a is not None}
            if not sizes:
                top = np.ones(len(labels), dtype=bool)  # nobody votes: a random sample
            else:
                best = max(sizes.values())
                top = np.array([a is not None and sizes[a] == best for a in labels])
        good = r[top] == 1.0
        counts[0 if good.all() else 1 if good.any() else 2] += 1
    return TopGroups(*counts)
