"""``howhard evaluate``: success vs average budget (or vs strong-call share, for routing)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from howhard.evaluate import (
    BOOTSTRAP,
    Evaluation,
    calibration_table,
    check_bootstrap,
    evaluate,
    gap_closed_interval,
)
from howhard.features import EmbeddingServer
from howhard.files import check_output
from howhard.predict import (
    GainsPredictor,
    StackedPredictor,
    SuccessPredictor,
    TailPredictor,
    gains_loss_table,
    loss_table,
)
from howhard.reports import (
    evaluation_markdown,
    evaluation_plot,
    routing_markdown,
    routing_plot,
    write_report,
)
from howhard.routing import (
    RoutingEvaluation,
    check_shares,
    evaluate_routing,
    pair_pools,
    preference_counts,
)
from howhard.runs.inputs import (
    load_predictor,
    pool_budgets,
    predictor_features,
    read_pools,
    reranker_curves,
    warn_binarized,
)

Path_ = str | os.PathLike[str]
BUDGETS = (1.0, 2.0, 4.0, 8.0, 16.0)  # evaluate's default, those up to the cap
MAX_PER_QUERY = 32  # evaluate's default cap, lowered to the fewest samples of a query
SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True, kw_only=True)
class EvaluateSpec:
    """What `run_evaluate` evaluates: ``pool`` at each average budget (samples per query, at
    most ``max_per_query`` per query), with the predictor at ``predictor`` when given; the
    report goes to the directory ``out`` when given. ``max_per_query`` None: `MAX_PER_QUERY`, or
    the fewest samples of a query when fewer; ``budgets`` None: those of `BUDGETS` up to it.
    The budgets are checked once, against the pool (`pool_budgets`).
    ``bootstrap`` resamples of the queries give 95% intervals of the savings and of the share
    of the log-loss gap closed (0: none)."""

    pool: Path_
    budgets: Sequence[float] | None = None
    max_per_query: int | None = None
    predictor: Path_ | None = None
    out: Path_ | None = None
    feature_cache: str | None = None
    feature_server: EmbeddingServer | None = None  # for predictors on server features
    seed: int = 0
    title: str = "howhard evaluation"
    binarize: bool = False
    bootstrap: int = BOOTSTRAP

    def __post_init__(self) -> None:
        check_bootstrap(self.bootstrap)
        if self.out is not None:
            check_output(self.out, directory=True)


def run_evaluate(spec: EvaluateSpec) -> Evaluation:
    """Evaluate the pool (and the predictor on it) under the oracle verifier and every reranker
    the pool has data for; write report.md, report.json, plot.png to the spec's ``out``."""
    pool, _ = read_pools(spec.pool, None, spec.binarize)
    cap, budgets = pool_budgets(pool, spec.budgets, spec.max_per_query, BUDGETS, MAX_PER_QUERY)
    gains = None
    info: dict[str, Any] = {}
    if spec.predictor is not None:
        predictor = load_predictor(spec.predictor, kind="predictor")
        warn_binarized(predictor, spec.predictor, spec.binarize)
        X = predictor_features(
            predictor, spec.predictor, pool, spec.feature_cache, spec.feature_server
        )
        gains = predictor.predict_gains(X, cap)
        meta = predictor.meta_
        info = {
            "head": (
                f"tail ({predictor.head})"
                if isinstance(predictor, TailPredictor)
                else predictor.head
            ),
            "features": meta["features"],
            "train_holdout_loss": meta.get("holdout"),
            "calibration": calibration_table(gains[:, 0], pool),
        }
        if (
            isinstance(predictor, SuccessPredictor | TailPredictor | StackedPredictor)
            and pool.binary
        ):
            c, n, lam, mean = pool.successes(), pool.n_samples, gains[:, 0], meta["train_mean"]
            info["eval_loss"] = loss_table(lam, c, n, mean)
            own = float(c.sum() / n.sum())  # Avg at this pool's rate: no credit for a shift
            info["eval_loss_pool_mean"] = {
                **loss_table(lam, c, n, own),
                "pool_mean": own,
                "train_mean": float(mean),
            }
            info["loss"] = "binomial log-loss per sample"
            if spec.bootstrap:
                args = (lam, c, n, mean, spec.bootstrap, spec.seed)
                info["gap_closed_interval"] = gap_closed_interval(*args)
        elif isinstance(predictor, GainsPredictor):
            bmax = min(predictor.bmax_, cap, int(pool.n_samples.min()))
            mean = np.asarray(meta["train_mean_gains"])[:bmax]
            info["eval_loss"] = gains_loss_table(gains[:, :bmax], pool.gains(bmax), mean)
            info["loss"] = f"MSE of Δ(x, 1..{bmax}) (Opt = 0: the noisy targets themselves)"
    curves = reranker_curves(pool, cap)
    ev = evaluate(
        pool,
        budgets,
        cap,
        gains,
        spec.seed,
        curves,
        check_input=False,
        bootstrap=spec.bootstrap,
    )
    ev.predictor = info
    if spec.out is not None:
        md = evaluation_markdown(ev, spec.title)
        write_report(spec.out, md, ev, lambda path: evaluation_plot(ev, path, spec.title))
    return ev


@dataclass(frozen=True, kw_only=True)
class RoutingSpec:
    """What `run_evaluate_routing` evaluates: routing between the ``pool`` (weak decoder) and
    ``strong`` pools of the same queries at each strong-call share, with the router at
    ``predictor`` when given; the report goes to the directory ``out`` when given."""

    pool: Path_
    strong: Path_
    shares: Sequence[float] = SHARES
    predictor: Path_ | None = None
    out: Path_ | None = None
    feature_cache: str | None = None
    feature_server: EmbeddingServer | None = None  # for predictors on server features
    seed: int = 0
    title: str = "howhard routing evaluation"
    binarize: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "shares", tuple(check_shares(self.shares)))
        if self.out is not None:
            check_output(self.out, directory=True)


def run_evaluate_routing(spec: RoutingSpec) -> RoutingEvaluation:
    """Success vs strong-call share for random, learned (the spec's router) and oracle routing."""
    weak, strong = read_pools(spec.pool, spec.strong, spec.binarize)
    assert strong is not None
    scores = None
    info: dict[str, Any] = {}
    if spec.predictor is not None:
        router = load_predictor(spec.predictor, kind="router")
        weak, strong = pair_pools(weak, strong)
        X = predictor_features(
            router, spec.predictor, weak, spec.feature_cache, spec.feature_server
        )
        scores = router.predict_proba_success(X)
        wins, trials = preference_counts(weak, strong)
        info = {
            "head": router.head,
            "features": router.meta_["features"],
            "eval_loss": loss_table(scores, wins, trials, router.meta_["train_mean"]),
        }
    ev = evaluate_routing(weak, strong, scores, spec.shares, spec.seed, info)
    if spec.out is not None:
        md = routing_markdown(ev, spec.title)
        write_report(spec.out, md, ev, lambda path: routing_plot(ev, path, spec.title))
    return ev
