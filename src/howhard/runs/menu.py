"""The menu (`howhard.menu`) in the commands that took two decoders: ``howhard train --menu``
(one success predictor per decoder), ``howhard evaluate --menu`` (each predictor on its pool)
and ``howhard compare --menu`` (`howhard.menu_compare`)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from howhard.errors import ConfigError
from howhard.evaluate import BOOTSTRAP, calibration_table, check_bootstrap, gap_closed_interval
from howhard.files import check_output
from howhard.menu import Menu, MenuData, PolicyFamily, menu_toml, read_menu
from howhard.menu_compare import (
    OBSERVE,
    MenuComparison,
    check_menu_budgets,
    compare_menu,
)
from howhard.pool import Pool
from howhard.predict import loss_table
from howhard.reports import write_report
from howhard.reports.menu import (
    menu_evaluation_markdown,
    menu_evaluation_plot,
    menu_markdown,
    menu_plot,
)
from howhard.runs.inputs import (
    feature_model,
    featurize_sources,
    load_predictor,
    predictor_features,
)
from howhard.runs.train import (
    HEADS,
    TrainResult,
    check_folds,
    compare_shared,
    resolve_split,
    train,
)
from howhard.tasks import pool_task

Path_ = str | os.PathLike[str]
Rows = tuple[int, int]
FamilyMaker = Callable[[], PolicyFamily]
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def policy_families() -> dict[str, FamilyMaker]:
    """The menu policy families by name (`howhard.stopping.FAMILIES`: the sequential menu policy
    and the published baselines; the same ones ``howhard serve`` runs)."""
    from howhard.stopping import FAMILIES

    return dict(FAMILIES)


def check_rows(rows: Sequence[int] | None) -> Rows | None:
    """``rows`` as (start, stop); ConfigError unless 0 <= start < stop."""
    if rows is None:
        return None
    if len(rows) != 2 or not 0 <= rows[0] < rows[1]:
        raise ConfigError(
            f"rows must be (start, stop) with 0 <= start < stop, e.g. 0:400; got {rows!r}",
            param="rows",
        )
    return int(rows[0]), int(rows[1])


def menu_pools(menu: Menu, rows: Rows | None = None, binarize: bool = False) -> list[Pool]:
    """The decoders' pools aligned (`howhard.menu.Menu.pools`), cut to the queries at positions
    start..stop - 1 of the first decoder's pool file when ``rows`` is given, binarized when
    asked."""
    pools = menu.pools()
    if rows is not None:
        n = len(pools[0])
        if rows[1] > n:
            raise ConfigError(
                f"rows {rows[0]}:{rows[1]} reach past the {n} queries of the first decoder's "
                f"pool; give stop <= {n}",
                param="rows",
            )
        ids = pools[0].ids[rows[0] : rows[1]]
        pools = [p.select(ids) for p in pools]
    return [p.binarized() for p in pools] if binarize else pools


def menu_data(
    menu: Menu, rows: Rows | None = None, binarize: bool = False, cache: str | None = None
) -> MenuData:
    """The aligned pools, each decoder's per-sample prices and its predictor's predicted
    one-sample success Δ̂(x, 1) on the pool's queries (NaN for a decoder without a predictor)."""
    pools = menu_pools(menu, rows, binarize)
    pred = np.full((len(pools[0]), len(menu)), np.nan)
    for d, (dec, pool) in enumerate(zip(menu.decoders, pools, strict=True)):
        if dec.predictor is not None:
            predictor = load_predictor(dec.predictor, kind="predictor")
            X = predictor_features(predictor, dec.predictor, pool, cache)
            pred[:, d] = predictor.predict_gains(X, 1)[:, 0]
    costs = [dec.pool_costs(pool) for dec, pool in zip(menu.decoders, pools, strict=True)]
    return MenuData(pools, costs, pred)


# ---------------------------------------------------------------------------- compare


@dataclass(frozen=True, kw_only=True)
class MenuCompareSpec:
    """What `run_menu_compare` compares: every method of `howhard.menu_compare` on the decoders
    of the menu file ``menu`` (the queries ``rows`` of its pools when given), at each budget
    (mean cost per query; default a log-spaced grid from the cheapest to the costliest
    one-sample cost), under each ``observe`` mode; the policy ``families`` (name -> maker;
    default `policy_families`) replayed over ``replays`` random orders."""

    menu: Path_
    budgets: Sequence[float] | None = None
    observe: Sequence[str] = OBSERVE
    replays: int = 100
    seed: int = 0
    rows: Sequence[int] | None = None
    binarize: bool = False
    feature_cache: str | None = None
    families: Mapping[str, FamilyMaker] | None = None
    out: Path_ | None = None
    title: str = "howhard compare --menu"

    def __post_init__(self) -> None:
        if self.out is not None:
            check_output(self.out, directory=True)
        if self.budgets is not None:
            object.__setattr__(self, "budgets", tuple(check_menu_budgets(self.budgets)))
        object.__setattr__(self, "observe", tuple(self.observe))
        bad = [o for o in self.observe if o not in OBSERVE]
        if bad or not self.observe:
            raise ConfigError(
                f"observe must name {' and/or '.join(OBSERVE)}, got {list(self.observe)}",
                param="observe",
            )
        if self.replays < 1:
            raise ConfigError(f"replays must be >= 1, got {self.replays}", param="replays")
        object.__setattr__(self, "rows", check_rows(self.rows))


def run_menu_compare(spec: MenuCompareSpec) -> MenuComparison:
    """Read the menu, its pools and predictors, run `compare_menu`, write report.md, report.json
    and plot.png to the spec's ``out`` when given."""
    menu = read_menu(spec.menu)
    data = menu_data(menu, _rows(spec.rows), spec.binarize, spec.feature_cache)
    makers = policy_families() if spec.families is None else dict(spec.families)
    cmp = compare_menu(
        data,
        menu.names,
        spec.budgets,
        spec.observe,
        [make() for make in makers.values()],
        spec.replays,
        spec.seed,
        title=spec.title,
    )
    cmp.info["predictors"] = ", ".join(
        f"{d.name}: {d.predictor.name if d.predictor else 'none'}" for d in menu.decoders
    )
    if spec.rows is not None:
        cmp.info["queries"] = f"rows {spec.rows[0]}:{spec.rows[1]} of {menu.names[0]}'s pool"
    if spec.out is not None:
        write_report(spec.out, menu_markdown(cmp), cmp, lambda p: menu_plot(cmp, p))
    return cmp


def _rows(rows: Sequence[int] | None) -> Rows | None:
    return None if rows is None else (int(rows[0]), int(rows[1]))


# ---------------------------------------------------------------------------- train


@dataclass(frozen=True, kw_only=True)
class MenuTrainSpec:
    """What `run_menu_train` fits: one predictor of each decoder's pool of the menu ``menu``
    (its queries ``rows`` when given) on ``features`` of the queries, saved as
    ``out``/<decoder>.npz, with ``out``/menu.toml: the menu pointing at them. With ``shared``
    each decoder also tries heads shared by all the decoders, fitted on every pool at once
    (`howhard.runs.train.compare_shared`), and keeps its slice of one when that saves more.
    Other fields as in `howhard.runs.TrainSpec` (with ``shared``, ``folds`` None is one split)."""

    menu: Path_
    out: Path_
    features: str = "hidden"
    task: str | None = None  # None: the task the first pool's rows name, else arithmetic
    model: str | None = None
    head: str = "auto"
    holdout: float | None = None
    folds: int | None = None
    seed: int = 0
    feature_cache: str | None = None
    rows: Sequence[int] | None = None
    binarize: bool = False
    max_per_query: int | None = None
    shared: bool = False

    def __post_init__(self) -> None:
        check_output(self.out, directory=True)
        if self.folds is not None and check_folds(self.folds) > 1 and self.shared:
            raise ConfigError(
                "the shared heads are compared on one held-out split; drop folds or shared",
                param=("folds", "shared"),
            )
        holdout, folds = resolve_split(self.holdout, self.folds, self.shared)
        object.__setattr__(self, "holdout", holdout)
        object.__setattr__(self, "folds", folds)
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        object.__setattr__(self, "rows", check_rows(self.rows))


def run_menu_train(spec: MenuTrainSpec) -> dict[str, TrainResult]:
    """Train and save one predictor per decoder (see `MenuTrainSpec`); returns them by name."""
    menu = read_menu(spec.menu)
    bad = [n for n in menu.names if not SAFE_NAME.fullmatch(n)]
    if bad:
        raise ConfigError(
            f"decoder name {bad[0]!r} cannot name a predictor file; use letters, digits and "
            "._+- only",
            param="menu",
        )
    pools = menu_pools(menu, _rows(spec.rows), spec.binarize)
    assert spec.holdout is not None and spec.folds is not None  # MenuTrainSpec resolved them
    task = spec.task or pool_task(pools[0].extras, menu.decoders[0].pool)
    model = feature_model(spec.features, spec.model, None)
    X, groups = featurize_sources(pools[0], spec.features, task, model, spec.feature_cache)
    meta = {
        "features": spec.features,
        "task": task,
        "feature_model": model,
        "train_hashes": sorted(pools[0].hashes()),
    }
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    if spec.shared:
        results = compare_shared(
            pools, menu.names, X, groups, spec.head, spec.holdout, spec.seed, meta
        )
    else:
        results = {
            dec.name: train(
                pool,
                X,
                spec.head,
                spec.holdout,
                spec.seed,
                meta,
                spec.max_per_query,
                groups=groups,
                folds=spec.folds,
            )
            for dec, pool in zip(menu.decoders, pools, strict=True)
        }
    decoders = []
    for dec in menu.decoders:
        path = out / f"{dec.name}.npz"
        results[dec.name].predictor.save(path)
        decoders.append(replace(dec, predictor=path.resolve()))
    (out / "menu.toml").write_text(menu_toml(Menu(tuple(decoders)), out), encoding="utf-8")
    return results


# ---------------------------------------------------------------------------- evaluate


@dataclass
class DecoderEvaluation:
    """One decoder's predictor on its pool: mean success, mean prediction, the log-loss table
    (model vs Avg vs Opt, `howhard.predict.loss_table`) and the calibration bins."""

    name: str
    sample_cost: float
    n_queries: int
    success: float
    predictor: str | None = None
    head: str | None = None
    features: str | None = None
    predicted: float | None = None
    loss: dict[str, float] | None = None
    gap_closed_interval: list[float] | None = None  # 95% over resamples of the queries
    loss_pool_mean: dict[str, float] | None = None  # the same, Avg at this pool's own rate
    calibration: dict[str, Any] | None = None


@dataclass
class MenuEvaluation:
    title: str
    decoders: list[DecoderEvaluation] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class MenuEvaluateSpec:
    """What `run_menu_evaluate` evaluates: each decoder's predictor of the menu ``menu`` on its
    pool (the queries ``rows`` when given); the report goes to the directory ``out``.
    ``bootstrap`` resamples of the queries give a 95% interval of each share of the gap closed
    (0: none)."""

    menu: Path_
    rows: Sequence[int] | None = None
    binarize: bool = False
    feature_cache: str | None = None
    out: Path_ | None = None
    title: str = "howhard evaluate --menu"
    bootstrap: int = BOOTSTRAP

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", check_rows(self.rows))
        check_bootstrap(self.bootstrap)
        if self.out is not None:
            check_output(self.out, directory=True)


def run_menu_evaluate(spec: MenuEvaluateSpec) -> MenuEvaluation:
    """Each decoder's predictor on its pool: log-loss against the Avg and Opt baselines (binary
    pools) and calibration."""
    menu = read_menu(spec.menu)
    data = menu_data(menu, _rows(spec.rows), spec.binarize, spec.feature_cache)
    ev = MenuEvaluation(spec.title)
    for d, (dec, pool) in enumerate(zip(menu.decoders, data.pools, strict=True)):
        row = DecoderEvaluation(
            dec.name,
            float(np.mean([c.mean() for c in data.costs[d]])),
            len(pool),
            float(pool.success_rate().mean()),
        )
        if dec.predictor is not None:
            lam = data.predictions[:, d]
            predictor = load_predictor(dec.predictor, kind="predictor")
            meta = predictor.meta_
            row.predictor = dec.predictor.name
            row.features = meta.get("features")
            shared = meta.get("shared")  # a slice of a head shared by the decoders
            row.head = f"shared {shared['head']} r={shared['rank']}" if shared else predictor.head
            row.predicted = float(lam.mean())
            row.calibration = calibration_table(lam, pool)
            if pool.binary and "train_mean" in meta:
                lam, c, n = np.clip(lam, 1e-6, 1 - 1e-6), pool.successes(), pool.n_samples
                row.loss = loss_table(lam, c, n, meta["train_mean"])
                row.loss_pool_mean = loss_table(lam, c, n, float(c.sum() / n.sum()))
                if spec.bootstrap:
                    args = (lam, c, n, meta["train_mean"], spec.bootstrap)
                    row.gap_closed_interval = gap_closed_interval(*args)
        ev.decoders.append(row)
    if spec.out is not None:
        write_report(
            spec.out, menu_evaluation_markdown(ev), ev, lambda p: menu_evaluation_plot(ev, p)
        )
    return ev
