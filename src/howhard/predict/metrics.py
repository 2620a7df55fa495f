"""Held-out metrics for success-rate predictors (binary rewards).

A query x with c successes out of n samples, scored by a predicted one-sample success rate λ,
contributes the binomial cross-entropy −[c log λ + (n − c) log(1 − λ)]. The loss of a set of
queries is the sum divided by the total number of trials Σ n, i.e. the mean per-trial loss.
"""

from __future__ import annotations

import numpy as np

from howhard.errors import ConfigError

EPS = 1e-6
"""λ is clipped to [EPS, 1 − EPS] before taking logs."""


def _as_vector(name: str, values: object) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ConfigError(
            f"{name} must be a 1-D array (one value per query); got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} contains NaN or infinite values; drop or fix those queries")
    return arr


def check_counts(successes: object, trials: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate per-query success counts c and trial counts n: 0 <= c <= n, n > 0, same length.

    Counts may be fractional (soft labels, e.g. a mean reward times the number of samples).
    """
    c = _as_vector("successes", successes)
    n = _as_vector("trials", trials)
    if c.shape != n.shape:
        raise ConfigError(
            f"successes and trials must have one value per query; got {c.size} and {n.size}"
        )
    if c.size == 0:
        raise ConfigError("successes and trials are empty; pass at least one query")
    if np.any(n <= 0):
        raise ConfigError(
            "trials must be > 0 for every query; drop queries without samples before scoring"
        )
    if np.any(c < 0) or np.any(c > n):
        raise ConfigError("successes must lie in [0, trials] for every query; check the labels")
    return c, n


def binomial_log_loss(lam: object, successes: object, trials: object) -> float:
    """Mean per-trial binomial cross-entropy −Σ[c log λ + (n − c) log(1 − λ)] / Σ n.

    ``lam`` is the predicted one-sample success rate of each query, clipped to [1e-6, 1 − 1e-6].
    """
    c, n = check_counts(successes, trials)
    p = _as_vector("lam", lam)
    if p.shape != c.shape:
        raise ConfigError(f"lam must have one value per query ({c.size}); got {p.size}")
    if np.any(p < 0) or np.any(p > 1):
        raise ConfigError("lam must lie in [0, 1]; pass success probabilities, not logits")
    p = np.clip(p, EPS, 1 - EPS)
    return float(-(c @ np.log(p) + (n - c) @ np.log1p(-p)) / n.sum())


def loss_table(
    lam_pred: object, successes: object, trials: object, train_mean: float
) -> dict[str, float]:
    """The paper's Table-1 comparison of a success-rate predictor on held-out queries.

    - ``model``: loss with the predicted λ(x);
    - ``avg``: loss with the constant λ = ``train_mean`` (training-set mean success rate);
    - ``opt``: loss with each query's own empirical rate c / n (the best any λ(x) can do);
    - ``gap_closed`` = (avg − model) / (avg − opt): 1 is perfect, 0 is no better than the
      constant, negative is worse; NaN when avg == opt (every query has the training mean).
    """
    c, n = check_counts(successes, trials)
    if not 0.0 <= train_mean <= 1.0:
        raise ConfigError(f"train_mean must be a success rate in [0, 1]; got {train_mean}")
    model = binomial_log_loss(lam_pred, c, n)
    avg = binomial_log_loss(np.full(c.shape, float(train_mean)), c, n)
    opt = binomial_log_loss(c / n, c, n)
    gap = (avg - model) / (avg - opt) if avg != opt else float("nan")
    return {"model": model, "avg": avg, "opt": opt, "gap_closed": gap}
