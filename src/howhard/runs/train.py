"""``howhard train``: fit the predictor a pool calls for (or a router) and save it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from howhard.errors import ConfigError, PoolError
from howhard.features import EmbeddingServer
from howhard.pool import Pool
from howhard.predict import GainsPredictor, SuccessPredictor, gains_loss_table, loss_table
from howhard.reports import json_ready
from howhard.routing import preference_counts
from howhard.runs.inputs import Predictor, feature_meta, feature_model, featurize, read_pools

Path_ = str | os.PathLike[str]
HEADS = ("auto", "logistic", "linear", "mlp")
ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)


@dataclass(frozen=True)
class TrainResult:
    predictor: Predictor
    holdout: dict[str, dict[str, float]]  # "head alpha=..." -> loss table on the held-out split
    best: str
    loss: str  # what the tables measure


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """What `run_train` fits: a predictor of ``pool`` on ``features`` of its queries (rendered
    by ``task``'s prompt template; ``model`` for the LM features: a GGUF file for ``hidden``, the
    served model's name for ``server``), or with ``strong`` a router of P(strong beats weak | x);
    saved to ``out``. ``feature_server``: the embedding server of ``server`` features (its URL
    and key are not saved). ``head``, ``holdout`` and ``seed`` as in `train`; ``max_per_query``
    is the K of Δ(x, 1..K) on continuous pools.

    The features need not come from the model whose pool it is: ``hidden`` features of a small
    local model train a predictor of a larger or API-only model's success (proxy-model
    features)."""

    pool: Path_
    out: Path_
    features: str = "hidden"
    task: str = "arithmetic"
    model: str | None = None
    head: str = "auto"
    holdout: float = 0.2
    seed: int = 0
    feature_cache: str | None = None
    strong: Path_ | None = None
    binarize: bool = False
    max_per_query: int | None = None
    feature_server: EmbeddingServer | None = None

    def __post_init__(self) -> None:
        check_holdout(self.holdout)
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.max_per_query is not None and self.max_per_query < 1:
            raise ConfigError(
                f"max_per_query must be >= 1, got {self.max_per_query}", param="max_per_query"
            )


def run_train(spec: TrainSpec) -> TrainResult:
    """Train on the spec's pool (a router when it names a strong pool) and save the predictor."""
    pool, strong = read_pools(spec.pool, spec.strong, spec.binarize)
    server = spec.feature_server if spec.features == "server" else None
    model = feature_model(spec.features, spec.model, server)
    X = featurize(pool, spec.features, spec.task, model, spec.feature_cache, server)
    meta = {
        **feature_meta(spec.features, model, server, X),
        "task": spec.task,
        "train_hashes": sorted(pool.hashes()),
    }
    if strong is None:
        result = train(pool, X, spec.head, spec.holdout, spec.seed, meta, spec.max_per_query)
    else:
        result = train_router(pool, strong, X, spec.head, spec.holdout, spec.seed, meta)
    result.predictor.save(spec.out)
    return result


def check_holdout(holdout: float) -> float:
    """``holdout`` (the share of queries held out); ConfigError unless it lies in (0, 1)."""
    if not 0 < holdout < 1:
        raise ConfigError(f"holdout must lie in (0, 1), got {holdout}", param="holdout")
    return holdout


def _counts(pool: Pool) -> np.ndarray:
    return np.column_stack([pool.successes(), pool.n_samples])


def _holdout_mask(n: int, holdout: float, seed: int) -> np.ndarray:
    check_holdout(holdout)
    test = np.random.default_rng(seed).permutation(n) < round(holdout * n)
    if test.sum() < 2 or (~test).sum() < 2:
        raise PoolError(f"the pool has {n} queries: too few to hold out {holdout:.0%}")
    return test


def _grid(
    X: np.ndarray,
    y: np.ndarray,
    make: Callable[[str, float], Predictor],
    table: Callable[[Predictor, np.ndarray], dict[str, float]],
    heads: Sequence[str],
    test: np.ndarray,
    meta: dict[str, Any],
) -> tuple[Predictor, dict[str, dict[str, float]], str]:
    """Score every head x L2 strength on the held-out split; refit the best on all of X.
    BLAS gets one thread: these small L-BFGS fits run many times slower spread over cores."""
    from threadpoolctl import threadpool_limits

    tables: dict[str, dict[str, float]] = {}
    with threadpool_limits(1):
        for h in heads:
            for alpha in ALPHAS:
                fitted = make(h, alpha).fit(X[~test], y[~test])
                tables[f"{h} alpha={alpha:g}"] = table(fitted, test)
        best = min(tables, key=lambda k: tables[k]["model"])
        best_head, best_alpha = best.split(" alpha=")
        saved = json_ready(tables)  # an undefined share of the gap (no gap at all) is null
        predictor = make(best_head, float(best_alpha)).fit(X, y, meta={**meta, "holdout": saved})
    return predictor, tables, best


def train(
    pool: Pool,
    X: np.ndarray,
    head: str = "auto",
    holdout: float = 0.2,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    bmax: int | None = None,
) -> TrainResult:
    """Fit the predictor the pool calls for: λ(x) on a binary pool (binomial log-loss vs the
    paper's Avg and Opt baselines), the marginal gains Δ(x, 1..bmax) on a continuous one (MSE vs
    the Avg baseline; ``bmax`` defaults to the fewest samples any query has). Each head (both for
    ``auto``) and L2 strength is scored on a held-out split; the best is refit on the whole pool."""
    test = _holdout_mask(len(pool), holdout, seed)
    meta = dict(meta or {})
    if pool.binary:
        heads = ["logistic", "mlp"] if head == "auto" else [head.replace("linear", "logistic")]
        loss = "binomial log-loss per sample"
        return _train_counts(X, _counts(pool), heads, test, seed, meta, loss)
    heads = ["linear", "mlp"] if head == "auto" else [head.replace("logistic", "linear")]
    bmax = bmax or int(pool.n_samples.min())
    G = pool.gains(bmax)
    meta["train_mean_gains"] = G.mean(axis=0).tolist()
    predictor, tables, best = _grid(
        X,
        G,
        lambda h, a: GainsPredictor(head=h, alpha=a, random_state=seed),
        lambda m, t: gains_loss_table(m.predict_gains(X[t], bmax), G[t], G[~t].mean(axis=0)),
        heads,
        test,
        meta,
    )
    return TrainResult(predictor, tables, best, f"MSE of Δ(x, 1..{bmax})")


def train_router(
    weak: Pool,
    strong: Pool,
    X: np.ndarray,
    head: str = "auto",
    holdout: float = 0.2,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Fit P(strong beats weak | x), the paper's preference predictor, on the pairs of samples
    of two pools of the same queries (``X`` are the weak pool's query features)."""
    test = _holdout_mask(len(weak), holdout, seed)
    heads = ["logistic", "mlp"] if head == "auto" else [head]
    y = np.column_stack(preference_counts(weak, strong))
    meta = {**(meta or {}), "kind": "router"}
    loss = "log-loss of P(strong beats weak) per pair"
    return _train_counts(X, y, heads, test, seed, meta, loss)


def _train_counts(
    X: np.ndarray,
    y: np.ndarray,
    heads: list[str],
    test: np.ndarray,
    seed: int,
    meta: dict[str, Any],
    loss: str,
) -> TrainResult:
    """A SuccessPredictor on rows y = [successes, trials] (samples, or routing's sample pairs),
    scored by log-loss on the held-out rows against the training mean; ``meta`` gains the
    whole pool's mean as ``train_mean`` (the Avg baseline of later evaluations)."""
    train_mean = y[~test, 0].sum() / y[~test, 1].sum()
    meta = {**meta, "train_mean": float(y[:, 0].sum() / y[:, 1].sum())}
    predictor, tables, best = _grid(
        X,
        y,
        lambda h, a: SuccessPredictor(head=h, alpha=a, random_state=seed),
        lambda m, t: loss_table(m.predict_proba_success(X[t]), y[t, 0], y[t, 1], train_mean),
        heads,
        test,
        meta,
    )
    return TrainResult(predictor, tables, best, loss)
