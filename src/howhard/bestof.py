"""Best-of-k under each way of choosing the answer, and the cap an imperfect verifier puts on it.

For each k = 1..kmax, the success of drawing k samples of each query (uniformly, without
replacement, from its n pooled ones) and returning one chosen by

- ``oracle``: the benchmark's own tests (the best reward of the k; pass@k for a binary pool);
- ``verifier``: the highest per-sample score (the pool's ``scores``, e.g. the fraction of
  model-generated tests passed), ties broken uniformly (`howhard.rerank.scored_best_of`);
- ``majority``: the most common answer (the pool's ``answers``, e.g. a behaviour signature),
  ties broken uniformly, abstaining samples ignored (`howhard.rerank.majority_best_of`);
- ``codet``: CodeT's dual agreement (Chen et al. 2022) over the pool's ``passes`` (each sample's
  set of generated tests passed, a hex bitmask): the k samples are grouped by the exact set of
  tests they pass, a group scores (its samples among the k) x (the tests it passes), and a sample
  of the top group is returned (`dual_agreement_best_of`);
- ``random``: any one of them (the one-sample success, whatever k).

All but ``codet`` are exact expectations over the k-subsets and the tie-breaks, averaged over
queries; ``codet`` is a seeded Monte-Carlo estimate over ``draws`` random orders of each query's
samples (exact at k = n), whose standard error is reported (`BestOfK.mc_error`).

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

from howhard.errors import ConfigError, PoolError
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
    draws: int = 0  # Monte-Carlo draws per query of the estimated curves (0: all exact)
    seed: int = 0
    mc_error: dict[str, float] = field(default_factory=dict)  # largest standard error over k

    def at(self, method: str, k: int) -> float:
        """Success of ``method`` with k samples."""
        return self.curves[method][k - 1]


def best_of_k(pool: Pool, kmax: int | None = None, draws: int = 2000, seed: int = 0) -> BestOfK:
    """`BestOfK` of ``pool`` for k = 1..kmax (default: the fewest samples of any query); the
    verifier, majority and codet curves when every row has ``scores`` / ``answers`` /
    ``passes`` (codet: ``draws`` random orders per query, from ``seed``)."""
    n_min = int(pool.n_samples.min()) if len(pool) else 0
    kmax = n_min if kmax is None else kmax
    check_samples(pool, kmax)
    if draws < 1:
        raise ConfigError(f"draws must be >= 1, got {draws}", param="draws")
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
    if all("passes" in e for e in pool.extras):
        rng = np.random.default_rng(seed)
        masks = [e["passes"] for e in pool.extras]
        estimates = [
            dual_agreement_best_of(r, m, kmax, draws, rng)
            for r, m in zip(pool.rewards, masks, strict=True)
        ]
        out.curves["codet"] = np.mean([mean for mean, _ in estimates], axis=0).tolist()
        out.draws, out.seed = draws, seed
        variance = np.sum([var for _, var in estimates], axis=0)  # of the sum over queries
        out.mc_error["codet"] = float(np.sqrt(variance.max()) / len(pool))
        out.top_groups["codet"] = _top_groups(pool.rewards, masks, "codet")
        out.blind["codet"] = sum(len(set(m)) == 1 for m in masks)
    if not out.curves.keys() - {"oracle", "random"}:
        raise PoolError(
            "the pool has no per-sample scores, answers or passes: best-of-k would only show "
            "the oracle; give each row 'scores' (e.g. from generated tests, score_pool's "
            "generated_tests_path), 'answers' or 'passes' first"
        )
    out.curves["random"] = [float(q[:, 1].mean())] * kmax
    out.solvable = float(np.mean([bool(np.any(r == 1.0)) for r in pool.rewards]))
    for method, curve in out.curves.items():
        best = max(curve)
        out.peak_k[method] = next(k for k, v in enumerate(curve, 1) if v >= best - out.tolerance)
    return out


def dual_agreement_best_of(
    rewards: Any, passes: Sequence[str], kmax: int, draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """CodeT's dual agreement choosing one of k samples, k = 1..kmax: the Monte-Carlo estimate of
    E[reward of the returned sample] and its variance (of the estimate), each shape (kmax,).

    ``passes[i]`` is sample i's set of generated tests passed, a hex bitmask. Among the k drawn
    samples, those with equal bitmasks form a consensus group g, scored

        f(g) = (number of the k samples in g) x (number of tests g passes);

    the top group (ties between groups broken uniformly; when every group scores 0, every group
    drawn ties) returns a uniform one of its drawn samples. Given the group counts, g's drawn
    samples are a uniform subset of its c_g pooled ones, so the returned reward averages to g's
    pool mean rbar_g: each draw contributes the mean of rbar_g over its top groups (no further
    noise from the pick). The k samples are the first k of one uniform random order of the n,
    so every k of a draw is a uniform k-subset, drawn without replacement; with k = n every draw
    sees the whole pool, so the value there is exact. No closed form is used: the top group
    depends on the products count x tests, which the majority estimator's dynamic programme
    (all weights 1) does not track.
    """
    r = np.asarray(rewards, dtype=float)
    if len(passes) != r.size:
        raise ConfigError(f"{len(passes)} passes for {r.size} rewards; give one per sample")
    groups, code = np.unique(np.asarray(passes, dtype=str), return_inverse=True)
    tests = np.array([int(g, 16).bit_count() for g in groups], dtype=float)
    mean = np.bincount(code, weights=r) / np.bincount(code)
    order = rng.permuted(np.tile(np.arange(r.size), (draws, 1)), axis=1)[:, :kmax]
    counts = np.zeros((draws, groups.size), dtype=int)
    rows = np.arange(draws)
    # Per draw, kept as samples arrive (a group's score only grows): the top score, the sum of
    # rbar over the groups tied at it, their number. Every group drawn is tied at a top score 0.
    top, tied_sum, tied = np.full(draws, -1.0), np.zeros(draws), np.zeros(draws)
    estimate, variance = np.empty(kmax), np.empty(kmax)
    for k in range(kmax):
        g = code[order[:, k]]
        new = counts[rows, g] == 0
        counts[rows, g] += 1
        score = counts[rows, g] * tests[g]
        above = score > top
        joins = ~above & (score == top) & (new | (tests[g] > 0))
        top = np.where(above, score, top)
        tied_sum = np.where(above, mean[g], tied_sum + joins * mean[g])
        tied = np.where(above, 1, tied + joins)
        value = tied_sum / tied
        estimate[k], variance[k] = value.mean(), value.var() / draws
    return estimate, variance


def _top_groups(rewards: Sequence[np.ndarray], values: Sequence[Any], method: str) -> TopGroups:
    """`TopGroups` of the top-scored samples (verifier), the largest answer group (majority) or
    the top consensus group of dual agreement over the whole pool (codet; ties: all tied groups
    together) of each query with a correct sample."""
    counts = [0, 0, 0]
    for r, v in zip(rewards, values, strict=True):
        if not np.any(r == 1.0):
            continue
        if method == "verifier":
            s = np.asarray(v, dtype=float)
            top = s == s.max()
        elif method == "codet":
            masks = list(v)
            agreement = np.array([masks.count(m) * int(m, 16).bit_count() for m in masks])
            top = agreement == agreement.max()
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
