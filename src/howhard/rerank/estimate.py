"""Exact success of best-of-b when a reranker, not an oracle, picks the one answer returned.

Every estimator here is per query and exact (up to float rounding): the expectation over the
uniformly random b-subsets drawn WITHOUT replacement from the query's n pooled samples (the
convention of `howhard.pool.expected_best_of`), b = 1..bmax, and over the reranker's random
tie-breaks. ``q_r(x, b)`` is what a user gets from b samples; with an oracle verifier it is
``pool.q`` (the best reward among the b).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import gammaln

from howhard.errors import BudgetError, ConfigError, HowhardError
from howhard.pool import expected_best_of

# estimator of each reranker kind (reward-model and verifier rerankers are scored ones)
KINDS = {
    "oracle": "oracle",
    "majority": "majority",
    "scored": "scored",
    "reward-model": "scored",
    "verifier": "scored",
}


def _rewards(rewards: Any, bmax: int) -> np.ndarray:
    r = np.asarray(rewards, dtype=float)
    if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)):
        raise ConfigError(f"rewards must be a non-empty 1-d array of finite numbers, got {r!r}")
    if bmax < 1 or bmax > r.size:
        raise BudgetError(
            f"b up to {bmax} asked from {r.size} pooled samples; need 1 <= b <= n "
            "(lower the max samples per query or label more samples)"
        )
    return r


def inside_chance(m: Any, n: int, bmax: int) -> np.ndarray:
    """C(m, b) / C(n, b) for each m (rows) and b = 1..bmax (columns): the chance that a uniform
    b-subset of n items lies inside a fixed set of m of them, as the running product
    prod_{j<b} (m - j) / (n - j) (zero once j reaches m), which cannot overflow."""
    m = np.asarray(m, dtype=float).reshape(-1, 1)
    j = np.arange(bmax)
    return np.cumprod(np.clip((m - j) / (n - j), 0.0, None), axis=1)


def scored_best_of(rewards: Any, scores: Any, bmax: int) -> np.ndarray:
    """E[reward of the top-scored of b samples], b = 1..bmax; shape (bmax,).

    Ties in score are broken uniformly at random. Group the samples by score; a group G with
    g members and L samples scored strictly below it holds the subset's top score iff the subset
    meets G and lies within the L + g samples scored <= G's, so

        P(G wins) = [C(L + g, b) - C(L, b)] / C(n, b),

    and given that, each member of G is equally likely to be returned (exchangeable), so

        q_r(b) = sum_G mean_reward(G) * P(G wins).

    O(n log n + n * bmax); rewards may be continuous. With ``scores = rewards`` this is
    `expected_best_of` (the oracle).
    """
    r = _rewards(rewards, bmax)
    s = np.asarray(scores, dtype=float)
    if s.shape != r.shape:
        raise ConfigError(f"{s.size} scores for {r.size} rewards; give one score per sample")
    if np.any(np.isnan(s)):
        raise ConfigError("scores hold NaN; rescore the samples (a reward model failed?)")
    _, group, size = np.unique(s, return_inverse=True, return_counts=True)
    mean = np.bincount(group, weights=r) / size
    below = np.cumsum(size) - size
    wins = inside_chance(below + size, r.size, bmax) - inside_chance(below, r.size, bmax)
    return np.asarray(mean @ wins)


def majority_best_of(answers: Sequence[str | None], rewards: Any, bmax: int) -> np.ndarray:
    """E[reward of majority vote over b samples], b = 1..bmax; shape (bmax,).

    Among the b samples the answer held by the most wins (ties between answers broken uniformly
    at random; samples whose answer is None do not vote) and its reward is the mean reward of the
    subset's samples holding it; if no sample votes, a uniformly random sample is returned.

    Given the subset's counts (i_a) per answer, the holders of answer a are a uniform i_a-subset
    of its c_a pooled holders, so the returned reward averages to the group mean rbar_a. Hence

        q_r(b) = sum_k E[ (1/T) sum_{a tied at k} rbar_a ; max_a i_a = k ] + rbar_none P(no vote)

    where T is the number of answers tied at the top count k. For each k a dynamic programme
    adds the answers with c_a >= k one at a time (the rest, and the None samples, can never
    reach k) tracking (T, subset size t). Its states are normalised by C(S, t) (S = samples
    added so far), so merging a group of c multiplies by the hypergeometric chance
    C(c, i) C(S, t - i) / C(S + c, t): every number is a probability and nothing overflows,
    whatever n. Cost about bmax^2 * sum_a c_a (a few ms for n = 100).
    """
    r = _rewards(rewards, bmax)
    n = r.size
    if len(answers) != n:
        raise ConfigError(f"{len(answers)} answers for {n} rewards; give one answer per sample")
    bad = [a for a in answers if a is not None and not isinstance(a, str)]
    if bad:
        raise ConfigError(f"answers must be strings or None, got {bad[0]!r}")
    index: dict[str, int] = {}
    code = np.array([-1 if a is None else index.setdefault(a, len(index)) for a in answers])
    voters = code >= 0
    out = np.zeros(bmax)
    if not voters.all():  # every sample of the subset abstains
        out += r[~voters].mean() * inside_chance([np.sum(~voters)], n, bmax)[0]
    if not voters.any():
        return out
    sizes = np.bincount(code[voters])
    means = np.bincount(code[voters], weights=r[voters]) / sizes
    log_fact = gammaln(np.arange(n + 1) + 1.0)  # log m!
    for k in range(1, min(bmax, int(sizes.max())) + 1):
        big = np.flatnonzero(sizes >= k)
        seen = n - int(sizes[big].sum())
        ties = min(big.size, bmax // k) + 1
        D = np.zeros((ties, bmax + 1))  # P(t-subset: T answers at k, none above) / C(S, t)
        D[0, : min(seen, bmax) + 1] = 1.0
        W = np.zeros_like(D)  # the same, weighted by the sum of rbar over the T tied answers
        for a in big:
            D, W = _add_group(D, W, seen, int(sizes[a]), k, means[a], log_fact)
            seen += int(sizes[a])
        out += (W[1:, 1:] / np.arange(1, ties)[:, None]).sum(axis=0)
    return out


def _add_group(
    D: np.ndarray, W: np.ndarray, seen: int, c: int, k: int, mean: float, log_fact: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Add an answer group of c >= k samples (mean reward ``mean``) to the DP states over the
    ``seen`` samples so far: i < k of its samples keep T; i = k ties it at the top (T + 1)."""
    t = np.arange(D.shape[1])[:, None]
    i = np.arange(k, -1, -1)[None, :]  # column w holds i = k - w, to match the window below
    rest = t - i
    ok = (rest >= 0) & (rest <= seen) & (t <= seen + c)
    rest, total = np.clip(rest, 0, seen), np.minimum(t, seen + c)

    def log_comb(a: Any, b: Any) -> np.ndarray:
        return np.asarray(log_fact[a] - log_fact[b] - log_fact[a - b])

    chance = np.where(
        ok, np.exp(log_comb(c, i) + log_comb(seen, rest) - log_comb(seen + c, total)), 0
    )
    windows_d = sliding_window_view(np.pad(D, ((0, 0), (k, 0))), k + 1, axis=1)  # [T, t, k - i]
    windows_w = sliding_window_view(np.pad(W, ((0, 0), (k, 0))), k + 1, axis=1)
    new_d = np.einsum("Ttw,tw->Tt", windows_d[:, :, 1:], chance[:, 1:])
    new_w = np.einsum("Ttw,tw->Tt", windows_w[:, :, 1:], chance[:, 1:])
    tie_d = windows_d[:-1, :, 0] * chance[:, 0]
    new_d[1:] += tie_d
    new_w[1:] += windows_w[:-1, :, 0] * chance[:, 0] + mean * tie_d
    return new_d, new_w


def reranked_q(
    rewards: Sequence[Any], per_sample: Sequence[Sequence[Any]] | None, bmax: int, kind: str
) -> np.ndarray:
    """q_r(x, b) for every query and b = 0..bmax, shape (n_queries, bmax + 1), q_r(x, 0) = 0:
    a drop-in for ``pool.q(bmax)`` when a reranker chooses the answer.

    ``kind`` is ``oracle`` (the best reward; ``per_sample`` unused), ``majority``
    (``per_sample[x]`` = each sample's answer, str or None) or ``scored`` (``per_sample[x]`` = each
    sample's reranker score; also spelled ``reward-model`` or ``verifier``).
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown reranker estimator {kind!r}; known: {', '.join(KINDS)}")
    kind = KINDS[kind]
    if bmax < 1:
        raise BudgetError(f"max samples per query must be >= 1, got {bmax}")
    if kind != "oracle" and (per_sample is None or len(per_sample) != len(rewards)):
        got = "none" if per_sample is None else len(per_sample)
        raise ConfigError(
            f"the {kind} estimator needs per-sample data for each of the {len(rewards)} "
            f"queries, got {got}"
        )
    out = np.zeros((len(rewards), bmax + 1))
    for x, r in enumerate(rewards):
        try:
            if kind == "oracle":
                out[x, 1:] = expected_best_of(_rewards(r, bmax)[None, :], bmax)[0]
            elif kind == "scored":
                out[x, 1:] = scored_best_of(r, per_sample[x], bmax)  # type: ignore[index]
            else:
                out[x, 1:] = majority_best_of(per_sample[x], r, bmax)  # type: ignore[index]
        except HowhardError as e:
            raise type(e)(f"query {x}: {e}") from e
    return out
