"""2-fold cross-fitting: each half of a pool is decided by a policy calibrated on the other half.

A per-query policy (a threshold, the paper's bins, a routing threshold, the sequential price) is
calibrated on held-out queries. On one evaluation pool the held-out queries are the other half:
the folds are ``two_folds(n, rng)`` = ``rng.permutation(n) % 2``, so fold f holds ⌈n/2⌉ or ⌊n/2⌋
queries, and query i in fold f is decided by the policy fitted on fold 1 - f. Every evaluation
that cross-fits (`howhard.evaluate`, `howhard.compare`, `howhard.routing`, `howhard.sequential`)
draws its folds here, so a seed gives the same split everywhere.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from howhard import allocate

IntArray = npt.NDArray[np.int64]


def two_folds(n: int, rng: np.random.Generator) -> IntArray:
    """Fold labels (0 or 1) of n queries: ``rng.permutation(n) % 2`` (one draw from ``rng``)."""
    return k_folds(n, 2, rng)


def k_folds(n: int, k: int, rng: np.random.Generator) -> IntArray:
    """Fold labels 0..k−1 of n queries: ``rng.permutation(n) % k`` (one draw from ``rng``), so
    fold f holds ⌈n/k⌉ or ⌊n/k⌋ queries (the stacked predictor's out-of-fold predictions)."""
    return np.asarray(rng.permutation(n) % k, dtype=np.int64)


def cross_fit_policy(
    policy: str,
    budget: float,
    bmax: int,
    score: np.ndarray,
    gains_pred: np.ndarray,
    gains_true: np.ndarray,
    folds: IntArray,
) -> IntArray:
    """Samples per query when each fold is allocated by a stream policy fitted on the other fold.

    ``policy`` is ``threshold`` (`howhard.allocate.ThresholdPolicy` on the predicted gains
    Δ̂(x, b), shape (n, bmax)) or ``binned`` (`howhard.allocate.BinnedPolicy`: quantile bins of
    ``score`` (n,), each bin's allocation fitted on the calibration fold's true gains)."""
    out = np.zeros(len(score), dtype=np.int64)
    for f in (0, 1):
        cal, app = folds != f, folds == f
        if policy == "threshold":
            p = allocate.ThresholdPolicy(budget, bmax).fit(gains_pred[cal])
            out[app] = p.allocate(gains_pred[app])
        else:
            b = allocate.BinnedPolicy(budget, bmax).fit(score[cal], gains_true[cal])
            out[app] = b.allocate(score[app])
    return out
