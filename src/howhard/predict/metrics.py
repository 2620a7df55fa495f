"""Held-out metrics for success-rate predictors (binary rewards) and gains predictors.

A query x with c successes out of n samples, scored by a predicted one-sample success rate λ,
contributes the binomial cross-entropy −[c log λ + (n − c) log(1 − λ)]. The loss of a set of
queries is the sum divided by the total number of trials Σ n, i.e. the mean per-trial loss.
A marginal-gains predictor (any rewards) is scored by the mean squared error of its Δ(x, b)
vectors instead (`gains_loss_table`).
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


def gains_loss_table(predicted: object, targets: object, train_mean: object) -> dict[str, float]:
    """Table-1 comparison of a marginal-gains predictor on held-out queries (any rewards in [0, 1]).

    ``targets`` are the held-out Δ(x, b) = q(x, b) − q(x, b − 1), b = 1..Bmax, shape
    (n_queries, Bmax), from the unbiased expected-max estimator (``pool.gains(bmax)``);
    ``predicted`` has the same shape and ``train_mean`` is the training-set mean Δ curve, (Bmax,).
    Each loss is a mean squared error over all n_queries × Bmax entries:

    - ``model``: MSE of the predicted Δ vectors;
    - ``avg``: MSE of the constant curve ``train_mean`` (the Avg baseline);
    - ``opt``: 0.0, the MSE of the targets themselves;
    - ``gap_closed`` = (avg − model) / (avg − opt) = 1 − model / avg; NaN when avg == 0.

    The targets are estimates from finitely many samples, so even the true Δ(x, b) has an unknown
    MSE > 0 against them (the noise floor); the reachable gap is avg − floor, not avg − 0, and
    ``gap_closed`` is a lower bound on the share of the reachable gap the model closes.
    """
    t = np.asarray(targets, dtype=float)
    p = np.asarray(predicted, dtype=float)
    mean = np.asarray(train_mean, dtype=float)
    if t.ndim != 2 or t.size == 0:
        raise ConfigError(
            f"targets must be a non-empty 2-D array (n_queries, Bmax) of gains; got shape "
            f"{t.shape} (pass pool.gains(bmax))"
        )
    if p.shape != t.shape:
        raise ConfigError(
            f"predicted has shape {p.shape} but targets {t.shape}; predict gains for the same "
            f"queries and bmax (predictor.predict_gains(X, {t.shape[1]}))"
        )
    if mean.shape != (t.shape[1],):
        raise ConfigError(
            f"train_mean must be the mean training Δ curve of shape ({t.shape[1]},); got "
            f"{mean.shape} (pass pool_train.gains(bmax).mean(axis=0))"
        )
    for name, arr in (("predicted", p), ("targets", t), ("train_mean", mean)):
        if not np.all(np.isfinite(arr)):
            raise ConfigError(f"{name} contains NaN or infinite values; fix those queries")
    model = float(np.mean((p - t) ** 2))
    avg = float(np.mean((mean - t) ** 2))
    gap = 1.0 - model / avg if avg > 0 else float("nan")
    return {"model": model, "avg": avg, "opt": 0.0, "gap_closed": gap}
