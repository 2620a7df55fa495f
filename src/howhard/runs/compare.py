"""``howhard compare``: every allocation method at matched realised spend (`howhard.compare`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from howhard import allocate, routing, sequential
from howhard.compare import OBSERVE, Comparison, Strong, compare
from howhard.errors import ConfigError
from howhard.features import EmbeddingServer
from howhard.files import check_output
from howhard.pool import Pool
from howhard.reports import comparison_markdown, comparison_plot, write_report
from howhard.runs.inputs import (
    load_predictor,
    pool_budgets,
    predictor_features,
    read_pools,
    warn_binarized,
)

Path_ = str | os.PathLike[str]
BUDGETS = (1.0, 2.0, 4.0, 8.0)  # compare's default, those up to the cap
MAX_PER_QUERY = 16  # compare's default cap, lowered to the fewest samples of a query


@dataclass(frozen=True, kw_only=True)
class CompareSpec:
    """What `run_compare` compares: every method on ``pool`` with the gains of ``predictor`` at
    each budget (at most ``max_per_query`` samples per query), under each ``observe`` setting,
    sequential methods over ``replays`` random orders, spend matched within ``tolerance``.
    ``max_per_query`` None: `MAX_PER_QUERY`, or the fewest samples of a query when fewer;
    ``budgets`` None: those of `BUDGETS` up to it (checked once, against the pool).

    With ``strong`` (the strong decoder's pool of the same queries) the joint methods run too;
    its predicted gains come from ``strong_predictor`` (trained on the strong decoder's
    training pool) or, for binary rewards, from the ``router`` with the weak prediction:
    P(strong beats weak) = (1 + λ_s - λ_w) / 2 (`howhard.routing`), so λ̂_s = clip(λ̂_w + 2 p̂ - 1).
    Costs per sample are the pools' mean tokens per sample unless ``cost_weak`` /
    ``cost_strong`` are given. Every other value is checked here, once."""

    pool: Path_
    predictor: Path_
    budgets: Sequence[float] | None = None
    max_per_query: int | None = None
    out: Path_ | None = None
    feature_cache: str | None = None
    feature_server: EmbeddingServer | None = None  # for predictors on server features
    seed: int = 0
    replays: int = 100
    tolerance: float = 0.01
    observe: Sequence[str] = OBSERVE
    binarize: bool = False
    title: str = "howhard compare"
    strong: Path_ | None = None
    strong_predictor: Path_ | None = None
    router: Path_ | None = None
    cost_weak: float | None = None
    cost_strong: float | None = None

    def __post_init__(self) -> None:
        if self.out is not None:
            check_output(self.out, directory=True)
        object.__setattr__(self, "observe", tuple(self.observe))
        for name in self.observe:
            if name not in OBSERVE:
                raise ConfigError(
                    f"unknown observation setting {name!r}; use {', '.join(OBSERVE)}",
                    param="observe",
                )
        if not 0 < self.tolerance < 1:
            raise ConfigError(
                f"tolerance must lie in (0, 1), got {self.tolerance}; pass e.g. 0.01",
                param="tolerance",
            )
        if self.replays < 1:
            raise ConfigError(f"replays must be >= 1, got {self.replays}", param="replays")
        for name in ("cost_weak", "cost_strong"):
            cost = getattr(self, name)
            if cost is not None and not (math.isfinite(cost) and cost > 0):
                raise ConfigError(f"{name} must be a cost per sample > 0, got {cost!r}", param=name)
        seconds = ("strong_predictor", "router", "cost_strong")
        given = [n for n in seconds if getattr(self, n) is not None]
        if self.strong is None and given:
            raise ConfigError(
                "without strong (the second decoder's pool) there is no joint comparison to "
                f"use {' and '.join(given)} in; give that pool, or drop them",
                param=(*given, "strong"),
            )
        if self.strong is not None and self.strong_predictor is None and self.router is None:
            raise ConfigError(
                "a joint comparison needs the strong decoder's predictions: pass "
                "strong_predictor FILE or router FILE",
                param=("strong_predictor", "router"),
            )


def run_compare(spec: CompareSpec) -> Comparison:
    """Read the pool(s) and predictor(s), run `compare`, write report.md, report.json and
    plot.png to the spec's ``out`` when given."""
    pool, strong_pool = read_pools(spec.pool, spec.strong, spec.binarize)
    cap, budgets = pool_budgets(pool, spec.budgets, spec.max_per_query, BUDGETS, MAX_PER_QUERY)
    predictor = load_predictor(spec.predictor, kind="predictor")
    warn_binarized(predictor, spec.predictor, spec.binarize)
    X = predictor_features(predictor, spec.predictor, pool, spec.feature_cache, spec.feature_server)
    gains = predictor.predict_gains(X, cap)
    strong = None
    info: dict[str, Any] = {}
    if strong_pool is not None:
        pool, strong_pool = routing.pair_pools(pool, strong_pool)
        strong, info = _strong_side(spec, pool, strong_pool, gains)
    cmp = compare(
        pool,
        gains,
        budgets,
        cap,
        spec.observe,
        spec.replays,
        spec.seed,
        spec.tolerance,
        strong=strong,
        title=spec.title,
        check_input=False,
    )
    cmp.info.update(info)
    if spec.out is not None:
        write_report(spec.out, comparison_markdown(cmp), cmp, lambda p: comparison_plot(cmp, p))
    return cmp


def _strong_side(
    spec: CompareSpec, pool: Pool, strong_pool: Pool, gains: np.ndarray
) -> tuple[Strong, dict[str, Any]]:
    """The strong decoder's predicted gains and cost (see `CompareSpec`), and report notes."""
    cap_s = int(strong_pool.n_samples.min())
    info: dict[str, Any] = {}
    if spec.strong_predictor is not None:
        sp = load_predictor(spec.strong_predictor, kind="predictor")
        warn_binarized(sp, spec.strong_predictor, spec.binarize)
        x_s = predictor_features(
            sp, spec.strong_predictor, strong_pool, spec.feature_cache, spec.feature_server
        )
        gains_s = sp.predict_gains(x_s, cap_s)
        name = Path(spec.strong_predictor).name
        info["strong prediction"] = f"a predictor trained on the strong pool ({name})"
    else:
        assert spec.router is not None  # the spec asks for one of the two
        if not (pool.binary and strong_pool.binary):
            raise ConfigError(
                "the router gives the strong decoder's success rate only for binary "
                "rewards; pass strong_predictor for continuous ones",
                param="strong_predictor",
            )
        router = load_predictor(spec.router, kind="router")
        pref = router.predict_proba_success(
            predictor_features(router, spec.router, pool, spec.feature_cache, spec.feature_server)
        )
        lam_s = np.clip(gains[:, 0] + 2 * pref - 1, sequential.EPS, 1 - sequential.EPS)
        gains_s = allocate.binary_gains(lam_s, cap_s)
        name = Path(spec.router).name
        info["strong prediction"] = f"weak λ̂ + 2·P(strong beats weak) - 1 (router {name})"
    c_w = _cost(spec.cost_weak, pool, "cost_weak")
    c_s = _cost(spec.cost_strong, strong_pool, "cost_strong")
    info["cost per sample"] = f"weak {c_w:.4g}, strong {c_s:.4g} ({c_s / c_w:.3g} weak samples)"
    return Strong(strong_pool, gains_s, c_s / c_w), info


def _cost(value: float | None, pool: Pool, param: str) -> float:
    """``value``, or the pool's mean tokens per sample when it is None."""
    if value is not None:
        return float(value)
    if not all("tokens" in e for e in pool.extras):
        raise ConfigError(
            f"the pool has no per-sample 'tokens' to price its samples; pass {param} (a cost per "
            "sample) or re-export the store with the current howhard",
            param=param,
        )
    cost = float(np.mean(np.concatenate([np.asarray(e["tokens"], float) for e in pool.extras])))
    if not (math.isfinite(cost) and cost > 0):
        raise ConfigError(f"{param} must be a cost per sample > 0, got {cost!r}", param=param)
    return cost
