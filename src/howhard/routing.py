"""Routing: answer each query with a cheap (weak) or an expensive (strong) decoder.

The paper's second use case (Damani et al., ICLR 2025, §3.2): learn how likely the strong
decoder's response is to beat the weak one's on query x, and send the queries where it most
likely does to the strong decoder, up to a target share of strong calls.

Both decoders are labelled on the same queries: a weak pool and a strong pool (`howhard.pool.Pool`)
with the same ids, holding rewards r_w and r_s in [0, 1] of independent samples of each.

- Routing gain g(x) = E[r_s] - E[r_w], estimated by the difference of the pooled mean rewards.
  Routing a set S of queries to strong scores success = mean over queries of (mean r_s if x in S
  else mean r_w) = all-weak success + Σ_{x in S} g(x) / n.
- Preference p(x) = P(r_s > r_w) + ½ P(r_s = r_w): the chance that a strong response beats a weak
  one, ties split evenly. This is what the predictor learns (`preference_counts` builds its
  counts). Splitting ties, rather than counting them as losses, is what makes p a ranking of
  queries by gain: since P(r_s > r_w) - P(r_s < r_w) = E[sign(r_s - r_w)], p = (1 + E[sign(r_s -
  r_w)]) / 2, which for binary rewards is exactly (1 + g(x)) / 2. Ties as losses would give
  p_s (1 - p_w), which ranks a query both decoders solve half the time (g = 0, p = 0.25) above one
  only the strong decoder solves 20% of the time (g = 0.2, p = 0.2). For continuous rewards p
  ranks by how often strong wins, not by how much, so it may order queries differently from g.
- Methods at a strong-call share s (n·s queries go to strong; fractional counts are expected
  values over the query at the boundary, and tied scores are broken at random, in expectation):
  ``random`` (linear in s: all-weak + s·(all-strong - all-weak)), ``learned`` (the top share by
  predicted score), ``oracle`` (the top share by the true g, never routing a query with g <= 0,
  so it calls strong on *at most* s and no routing at share s does better).
- ``calibrated``: a `RoutingPolicy` fitted on held-out scores decides each query alone, as a
  server must; with 2-fold cross-fitting (each half thresholded on the other) its realised share
  is near, not at, the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from howhard.crossfit import two_folds
from howhard.errors import ConfigError, NotFittedError, PoolError
from howhard.pool import Pool

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

METHODS = ("random", "learned", "oracle")


# ---------------------------------------------------------------------------- pools and targets


def pair_pools(weak: Pool, strong: Pool) -> tuple[Pool, Pool]:
    """The two pools with the strong rows put in the weak pool's order; PoolError unless both
    hold the same ids with the same prompts."""
    if len(weak) == 0:
        raise PoolError("the weak pool is empty; label some queries with the weak decoder first")
    only_weak = sorted(set(weak.ids) - set(strong.ids))
    only_strong = sorted(set(strong.ids) - set(weak.ids))
    if only_weak or only_strong:
        parts = [
            f"{len(ids)} ids only in the {name} pool (e.g. {ids[:3]})"
            for name, ids in (("weak", only_weak), ("strong", only_strong))
            if ids
        ]
        raise PoolError(
            "the weak and strong pools must hold the same queries: "
            + "; ".join(parts)
            + ". Label both decoders on the same queries, or keep the common ones with "
            "pool.select(common_ids)"
        )
    strong = strong.select(weak.ids)
    for qid, pw, ps in zip(weak.ids, weak.prompts, strong.prompts, strict=True):
        if pw != ps:
            raise PoolError(
                f"query {qid!r} has another prompt in the strong pool ({ps!r}) than in the weak "
                f"pool ({pw!r}); the pools must come from the same query file"
            )
    return weak, strong


def preference_counts(weak: Pool, strong: Pool) -> tuple[FloatArray, FloatArray]:
    """Per query of the weak pool (in its order), over all (strong sample, weak sample) pairs:
    wins = #{r_s > r_w} + ½ #{r_s = r_w}, trials = n_s · n_w.

    wins / trials is the unbiased estimate of the preference p(x) = P(r_s > r_w) + ½ P(r_s = r_w)
    (see the module doc; for binary rewards it equals (1 + ĝ(x)) / 2 exactly). These are the
    training counts of `howhard.predict.SuccessPredictor`, whose λ(x) then predicts p(x)::

        y = np.column_stack(preference_counts(weak, strong))
        model = SuccessPredictor().fit(X, y)
        scores = model.predict_proba_success(X_new)

    Pairs of one query share samples, so trials over-counts independent evidence; the fit's loss
    is per trial, so this only weights queries with more samples more.
    """
    weak, strong = pair_pools(weak, strong)
    wins = np.empty(len(weak))
    trials = np.empty(len(weak))
    for i, (rw, rs) in enumerate(zip(weak.rewards, strong.rewards, strict=True)):
        diff = np.sign(rs[:, None] - rw[None, :])
        wins[i] = (diff.size + diff.sum()) / 2  # #{>} + ½ #{=}
        trials[i] = diff.size
    return wins, trials


def routing_gain(weak: Pool, strong: Pool) -> FloatArray:
    """ĝ(x) = mean r_s - mean r_w per query of the weak pool (in its order)."""
    weak, strong = pair_pools(weak, strong)
    return np.asarray(strong.success_rate() - weak.success_rate(), dtype=float)


def routed_success(weak: Pool, strong: Pool, to_strong: npt.ArrayLike) -> float:
    """Mean over queries of (mean r_s if routed to strong else mean r_w); ``to_strong`` is a
    boolean mask in the weak pool's order."""
    weak, strong = pair_pools(weak, strong)
    mask = _check_mask(to_strong, len(weak))
    return float(np.where(mask, strong.success_rate(), weak.success_rate()).mean())


def _check_mask(mask: npt.ArrayLike, n: int) -> BoolArray:
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (n,):
        raise ConfigError(
            f"to_strong must be a boolean mask with one entry per query ({n}), got dtype "
            f"{m.dtype} and shape {m.shape}"
        )
    return m


def _check_scores(scores: npt.ArrayLike, n: int | None = None) -> FloatArray:
    s = np.asarray(scores, dtype=float)
    if s.ndim != 1 or (n is not None and s.size != n):
        want = "one per query" if n is None else f"one per query of the weak pool ({n})"
        raise ConfigError(f"scores must be a 1-D array, {want}; got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        i = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ConfigError(
            f"scores has {float(s[i])} at query {i}; pass finite predicted preferences"
        )
    return s


def check_shares(shares: Sequence[float]) -> list[float]:
    """The strong-call shares as floats; ConfigError unless there is one and each lies in
    [0, 1]."""
    if not shares:
        raise ConfigError(
            "shares is empty; give strong-call shares like 0.1,0.2,0.5", param="shares"
        )
    return [_check_share(s) for s in shares]


def _check_share(share: object) -> float:
    try:
        s = float(share)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(
            f"a strong-call share must be a number in [0, 1], got {share!r}"
        ) from None
    if not 0.0 <= s <= 1.0:
        raise ConfigError(
            f"a strong-call share must lie in [0, 1] (the fraction of queries sent to the strong "
            f"decoder), got {share!r}; pass e.g. 0.3"
        )
    return s


# ---------------------------------------------------------------------------- the policy


class RoutingPolicy:
    """Per-query rule: call the strong decoder when the predicted score is above a threshold.

    ``fit`` on held-out scores sets ``threshold_`` to the ⌈k⌉-th largest score, k = share · n,
    and ``p_tie_`` = (k - #{s > t}) / #{s = t}. ``route`` sends a query to strong when its score
    is above threshold_, and with probability p_tie_ when it equals it, so on the held-out
    scores the expected number routed is exactly k. On fresh scores from the same distribution
    the realised share is share up to the sampling error of both sets. Decisions for different
    queries are independent; tie draws come from ``rng`` or else from a generator seeded with
    ``random_state`` at ``fit``, so a sequence of calls is repeatable.
    """

    def __init__(self, share: float, random_state: int | np.random.Generator | None = 0) -> None:
        self.share = share
        self.random_state = random_state

    def fit(self, scores_heldout: npt.ArrayLike) -> Self:
        """Calibrate threshold_ and p_tie_ on held-out scores, shape (n,)."""
        share = _check_share(self.share)
        s = _check_scores(scores_heldout)
        if s.size == 0:
            raise ConfigError("scores_heldout is empty; pass the scores of held-out queries")
        k = share * s.size
        if k == 0:
            self.threshold_, self.p_tie_ = math.inf, 0.0
        else:
            top = min(s.size, math.ceil(k * (1 - 1e-12)))  # 0.3 · 10 must count as 3
            v = float(np.partition(s, s.size - top)[s.size - top])
            n_above, n_tied = int((s > v).sum()), int((s == v).sum())
            self.threshold_, self.p_tie_ = v, min(1.0, max(0.0, (k - n_above) / n_tied))
        self.rng_ = np.random.default_rng(self.random_state)
        return self

    def route(self, scores: npt.ArrayLike, rng: np.random.Generator | None = None) -> BoolArray:
        """True for each query to send to the strong decoder, shape (k,)."""
        if not hasattr(self, "threshold_"):
            raise NotFittedError(
                "this RoutingPolicy is not fitted yet; call .fit(scores_heldout) first"
            )
        s = _check_scores(np.atleast_1d(np.asarray(scores, dtype=float)))
        tied = s == self.threshold_
        draws = (rng if rng is not None else self.rng_).random(s.size)
        return np.asarray((s > self.threshold_) | (tied & (draws < self.p_tie_)))


# ---------------------------------------------------------------------------- curves


def top_share_curve(gain: FloatArray, order_score: FloatArray) -> FloatArray:
    """C[k] = expected Σ gain of the k queries with the highest ``order_score``, k = 0..n.

    Ties in ``order_score`` are broken uniformly at random, in expectation: every query of a tied
    block counts with the block's mean gain.
    """
    order = np.argsort(-order_score, kind="stable")
    sorted_score, sorted_gain = order_score[order], gain[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    sizes = np.diff(np.r_[starts, sorted_score.size])
    block_mean = np.add.reduceat(sorted_gain, starts) / sizes
    return np.r_[0.0, np.cumsum(np.repeat(block_mean, sizes))]


def _at_share(cum: FloatArray, share: float) -> float:
    """Σ gain when routing share · n queries (linear between whole queries)."""
    n = cum.size - 1
    return float(np.interp(share * n, np.arange(n + 1), cum))


def share_to_reach(cum: FloatArray, target: float) -> float | None:
    """The smallest share s (linear between whole queries) whose Σ gain reaches ``target`` (up to
    rounding, 1e-9 relative); None if no share does."""
    n = cum.size - 1
    hit = np.flatnonzero(cum >= target - 1e-9 * max(1.0, abs(target)))
    if hit.size == 0:
        return None
    k = int(hit[0])
    if k == 0:
        return 0.0
    lo, hi = cum[k - 1], cum[k]
    return float((k - 1 + min(1.0, max(0.0, (target - lo) / (hi - lo)))) / n)


@dataclass(frozen=True)
class RoutingEvaluation:
    """Success against strong-call share; see the module doc for the methods."""

    n_queries: int
    binary: bool
    weak_samples: float  # mean samples pooled per query
    strong_samples: float
    shares: list[float]
    all_weak: float
    all_strong: float
    oracle_best: float  # the oracle's ceiling: mean of max(mean r_w, mean r_s)
    positive_gain_share: float  # share of queries with ĝ > 0 (where the oracle stops)
    curves: dict[str, list[float]]  # method -> success at each share
    share_to_match_strong: dict[str, float | None]  # method -> smallest share with all-strong
    calibrated_share: list[float] = field(default_factory=list)  # realised, per target share
    calibrated_success: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the predictor's held-out loss


def evaluate_routing(
    weak: Pool,
    strong: Pool,
    scores: npt.ArrayLike | None,
    shares: Sequence[float],
    seed: int = 0,
    info: dict[str, Any] | None = None,
) -> RoutingEvaluation:
    """Success of random, learned, oracle and calibrated routing at each strong-call share.

    ``scores`` are predicted preferences (or any score, higher = more worth the strong call), one
    per query of the weak pool in its order; without them only random and oracle are reported.
    ``seed`` fixes the 2-fold split and the tie draws of the calibrated policy.
    """
    weak, strong = pair_pools(weak, strong)
    grid = check_shares(shares)
    n = len(weak)
    mw, ms = weak.success_rate(), strong.success_rate()
    g = ms - mw
    base, total = float(mw.mean()), float(g.sum())  # all-strong = base + total / n
    cums = {
        "random": np.arange(n + 1) * (total / n),
        "oracle": np.r_[0.0, np.cumsum(np.sort(np.maximum(g, 0.0))[::-1])],
    }
    s: FloatArray | None = None
    if scores is not None:
        s = _check_scores(scores, n)
        cums["learned"] = top_share_curve(g, s)
    curves = {m: [base + _at_share(cums[m], x) / n for x in grid] for m in METHODS if m in cums}
    match = {m: share_to_reach(cums[m], total) for m in METHODS if m in cums}

    cal_share: list[float] = []
    cal_success: list[float] = []
    if s is not None and n >= 2:
        rng = np.random.default_rng(seed)
        folds = two_folds(n, rng)
        for x in grid:
            mask = np.zeros(n, dtype=bool)
            for f in (0, 1):
                policy = RoutingPolicy(x).fit(s[folds != f])
                mask[folds == f] = policy.route(s[folds == f], rng)
            cal_share.append(float(mask.mean()))
            cal_success.append(float(np.where(mask, ms, mw).mean()))
    return RoutingEvaluation(
        n_queries=n,
        binary=weak.binary and strong.binary,
        weak_samples=float(weak.n_samples.mean()),
        strong_samples=float(strong.n_samples.mean()),
        shares=grid,
        all_weak=base,
        all_strong=float(ms.mean()),
        oracle_best=float(np.maximum(mw, ms).mean()),
        positive_gain_share=float((g > 0).mean()),
        curves=curves,
        share_to_match_strong=match,
        calibrated_share=cal_share,
        calibrated_success=cal_success,
        info=dict(info or {}),
    )
