"""A menu of decoders compared: every method a curve of (mean cost per query, success).

The decoders' aligned pools (`howhard.menu.MenuData`) hold the same n queries; decoder d has
per-sample prices, so k samples of it on query x cost k·c(x, d) in expectation over which k of
the pooled samples are drawn, c(x, d) the mean price of x's pooled samples (the price itself
when it is per sample). Success is the returned sample's reward, under one of two observation
modes: ``verifier`` (each drawn sample's reward is seen, the best is returned: q(x, d, k) =
``pool.q``) and ``majority`` (only answers are seen, the majority answer is returned:
`howhard.rerank.majority_best_of`). The methods:

- ``<decoder> best-of-k``: every query gets k samples of one decoder, k = 1..its pool size;
  exact (the mean over sample subsets).
- ``routing``: one sample of one decoder per query, chosen by the hull greedy of
  `howhard.joint.allocate_joint` on the predicted one-sample successes p̂(x, d) under a mean
  cost of B per query (a batch: it sees all the queries at once).
- ``routing-stream``: each query alone takes argmax_d p̂(x, d) - λ·c(x, d)
  (`howhard.joint.priced_choice`), the price λ per unit cost the lowest at which the other fold
  spends at most B per query (`howhard.joint.stream_price`; 2-fold cross-fitting,
  `howhard.crossfit.two_folds`).
- ``joint``: decoder and k together, the hull greedy over every (d, k) on predicted values
  q̂(x, d, k): with a verifier 1 - (1 - p̂)^k (best-of-k of independent samples); with majority
  vote, which p̂ alone does not determine, the isotonic regression of the other fold's true
  majority q(·, d, k) on p̂(·, d) (cross-fitted).
- ``oracle-routing`` and ``oracle-joint``: the same greedy on each query's true q(x, d, 1) and
  q(x, d, k): the limits of what a perfect predictor gives.
- one method per given `howhard.menu.PolicyFamily` (sequential policies, published baselines):
  fitted on the other fold, its knob calibrated there to the budget (`howhard.menu.calibrate`),
  then replayed on this fold over R random sample orders (mean and its standard error over the
  replays).

Batch methods are scored on all n queries; cross-fitted ones score each fold with what the
other gave, so every method is scored on the same n queries. A method's point at budget B has
its realised mean cost (at most B for the greedy ones; the calibrated ones near B), and budgets
below what a method needs for one sample of every query give no point.

The cost to reach a target success (`cost_at`) is read off a curve by linear interpolation
between consecutive points in cost order; a point between two points is reached exactly by
running one of the two methods' allocations on each query at random with the matching odds.
The targets are shares of the *reference* decoder's one-sample success, the reference being the
decoder with the highest mean price per sample; cost-of-pass (Erol et al., 2025) is the mean
cost divided by the success there.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from howhard import joint
from howhard.crossfit import two_folds
from howhard.errors import BudgetError, ConfigError
from howhard.menu import MenuData, PolicyFamily, calibrate, random_orders, replay
from howhard.rerank import reranked_q

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

OBSERVE = ("majority", "verifier")
TARGETS = (0.9, 0.95, 1.0)
STATIC = ("routing", "routing-stream", "joint", "oracle-routing", "oracle-joint")


@dataclass
class MenuCurve:
    """One method's points in budget order: the budget each was made for, its realised mean
    cost per query and success (with its standard error over replays; 0 when exact)."""

    budget: list[float] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    success: list[float] = field(default_factory=list)
    success_se: list[float] = field(default_factory=list)

    def add(self, budget: float, cost: float, success: float, se: float = 0.0) -> None:
        self.budget.append(float(budget))
        self.cost.append(float(cost))
        self.success.append(float(success))
        self.success_se.append(float(se))


@dataclass(frozen=True)
class Reached:
    """Where a curve first reaches a target success: the interpolated mean cost (None: never),
    ``at_most`` when the curve's cheapest point already reaches it (the cost is an upper
    bound), that cost as a share of the reference decoder's one-sample cost, and cost-of-pass."""

    target: float
    cost: float | None
    at_most: bool
    share_of_reference: float | None
    cost_of_pass: float | None


@dataclass
class MenuComparison:
    title: str
    decoders: list[str]
    sample_cost: list[float]  # each decoder's mean price per sample
    n_queries: int
    budgets: list[float]
    n_replays: int
    reference: str  # the decoder with the highest mean price per sample
    reference_success: dict[str, float]  # observe -> its one-sample success
    targets: list[float]  # shares of the reference's one-sample success
    tables: dict[str, dict[str, MenuCurve]]  # observe -> method -> curve
    reached: dict[str, dict[str, list[Reached]]]  # observe -> method -> one per target
    info: dict[str, Any] = field(default_factory=dict)


def default_budgets(sample_cost: Sequence[float], points: int = 24) -> list[float]:
    """``points`` log-spaced mean costs per query from the cheapest decoder's one-sample cost to
    the costliest one's."""
    lo, hi = float(min(sample_cost)), float(max(sample_cost))
    if lo <= 0:
        raise ConfigError(
            "a decoder's samples cost nothing on average; give budgets explicitly", param="budgets"
        )
    return [float(b) for b in np.unique(np.geomspace(lo, hi, points))]


def check_menu_budgets(budgets: Sequence[float]) -> list[float]:
    """The budgets (mean cost per query) sorted and deduplicated; BudgetError unless each is a
    finite number > 0 and there is one."""
    if not budgets:
        raise BudgetError("budgets is empty; give mean costs per query like 1,2,5", param="budgets")
    bad = [b for b in budgets if not (np.isfinite(b) and b > 0)]
    if bad:
        raise BudgetError(
            f"budget {bad[0]!r} is not a mean cost per query > 0; give budgets like 1,2,5",
            param="budgets",
        )
    return sorted({float(b) for b in budgets})


def truth_tables(data: MenuData, observe: str) -> list[FloatArray]:
    """Each decoder's true q(x, d, k), k = 0..its pool size (the fewest samples of any query),
    shape (n, cap_d + 1), under ``observe``; ConfigError when a pool cannot be scored that way."""
    out = []
    for d, pool in enumerate(data.pools):
        cap = int(pool.n_samples.min())
        if observe == "verifier":
            out.append(pool.q(cap))
            continue
        if not (pool.binary and all("answers" in e for e in pool.extras)):
            raise ConfigError(
                f"decoder {d}'s pool has no per-sample answers or non-binary rewards, so majority "
                "vote cannot be scored; pass observe verifier",
                param="observe",
            )
        out.append(reranked_q(pool.rewards, [e["answers"] for e in pool.extras], cap, "majority"))
    return out


def cost_at(cost: Sequence[float], success: Sequence[float], target: float) -> tuple[float, bool]:
    """The mean cost where the curve first reaches ``target`` success, going up in cost and
    interpolating linearly between consecutive points; (nan, False) when it never does, (its
    cheapest cost, True) when its cheapest point already does."""
    c = np.asarray(cost, dtype=float)
    s = np.asarray(success, dtype=float)
    order = np.argsort(c, kind="stable")
    c, s = c[order], s[order]
    hit = np.flatnonzero(s >= target - 1e-12)
    if hit.size == 0:
        return float("nan"), False
    j = int(hit[0])
    if j == 0:
        return float(c[0]), True
    t = (target - s[j - 1]) / (s[j] - s[j - 1])
    return float(c[j - 1] + t * (c[j] - c[j - 1])), False


def reached(curve: MenuCurve, targets: Sequence[float], reference_cost: float) -> list[Reached]:
    """`Reached` for each target success (absolute, not shares) on ``curve``."""
    out = []
    for t in targets:
        c, at_most = cost_at(curve.cost, curve.success, t)
        if not np.isfinite(c):
            out.append(Reached(t, None, False, None, None))
            continue
        s = t
        if at_most:
            s = max(curve.success[int(np.argmin(curve.cost))], t)
        out.append(Reached(t, c, at_most, c / reference_cost, c / s if s > 0 else None))
    return out


def compare_menu(
    data: MenuData,
    names: Sequence[str],
    budgets: Sequence[float] | None = None,
    observe: Sequence[str] = OBSERVE,
    families: Sequence[PolicyFamily] = (),
    n_replays: int = 100,
    seed: int = 0,
    targets: Sequence[float] = TARGETS,
    title: str = "howhard compare --menu",
) -> MenuComparison:
    """Every method of the module doc on ``data`` at each budget (mean cost per query; default
    `default_budgets`), under each ``observe`` mode. ``names`` are the decoders' names (menu
    order). The learned methods (routing, routing-stream, joint) need a finite prediction for
    every decoder and query; without one they are left out (said in ``info``). ``seed`` fixes
    the folds and the replay orders."""
    n, m = len(data.pools[0]), len(data.pools)
    if len(names) != m:
        raise ConfigError(f"{len(names)} names for {m} decoders; give one name per decoder")
    if n < 4:
        raise ConfigError(f"{n} queries: too few to cross-fit; give at least 4")
    for mode in observe:
        if mode not in OBSERVE:
            raise ConfigError(
                f"unknown observation mode {mode!r}; use {', '.join(OBSERVE)}", param="observe"
            )
    if n_replays < 1:
        raise ConfigError(f"n_replays must be >= 1, got {n_replays}", param="n_replays")
    unit = np.column_stack([[float(np.mean(c)) for c in costs] for costs in data.costs])  # (n, m)
    sample_cost = unit.mean(axis=0)
    budgets = check_menu_budgets(budgets) if budgets is not None else default_budgets(sample_cost)
    ref = int(np.argmax(sample_cost))
    caps = [int(p.n_samples.min()) for p in data.pools]
    full = joint.options(caps, [1.0] * m, min_samples=1)
    one = joint.options(caps, [1.0] * m, min_samples=1, max_k=1)
    cost_full = full.k * unit[:, full.decoder]  # (n, options)
    cost_one = one.k * unit[:, one.decoder]
    pred = np.asarray(data.predictions, dtype=float)
    learned = bool(np.all(np.isfinite(pred)))
    folds = two_folds(n, np.random.default_rng(seed))
    cmp = MenuComparison(
        title,
        list(names),
        sample_cost.tolist(),
        n,
        list(budgets),
        n_replays,
        names[ref],
        {},
        [float(t) for t in targets],
        {},
        {},
    )
    if not learned:
        missing = [names[d] for d in range(m) if not np.all(np.isfinite(pred[:, d]))]
        cmp.info["learned methods"] = (
            f"left out: no prediction for decoder(s) {', '.join(missing)} (give each a predictor)"
        )
    for mode in observe:
        truth = truth_tables(data, mode)
        table: dict[str, MenuCurve] = {}
        for d, q in enumerate(truth):
            curve = table.setdefault(f"{names[d]} best-of-k", MenuCurve())
            for k in range(1, caps[d] + 1):
                curve.add(k * sample_cost[d], k * sample_cost[d], q[:, k].mean())
        v_full = joint.option_values(truth, full)
        v_one = joint.option_values(truth, one)
        predicted: dict[str, FloatArray] = {"oracle-routing": v_one, "oracle-joint": v_full}
        if learned:
            predicted["routing"] = np.clip(pred, 0.0, 1.0)
            predicted["joint"] = _joint_values(pred, truth, full, mode, folds)
        for budget in budgets:
            for method, values in predicted.items():
                routed = method.endswith("routing")
                costs, truth_v = (cost_one, v_one) if routed else (cost_full, v_full)
                if budget < costs.min(axis=1).mean() * (1 - 1e-9):
                    continue  # cannot afford the cheapest option of every query
                alloc = joint.allocate_joint(values, costs, budget)
                _score(table, method, budget, truth_v, costs, alloc.choice)
            if learned:
                choice = _stream(predicted["routing"], cost_one, budget, folds)
                if choice is not None:
                    _score(table, "routing-stream", budget, v_one, cost_one, choice)
        for family in families:
            _family_curve(table, family, data, mode, budgets, folds, n_replays, seed)
        ordered = {k: table[k] for k in [*STATIC, *table] if k in table}
        cmp.tables[mode] = ordered
        ref_success = float(truth[ref][:, 1].mean())
        cmp.reference_success[mode] = ref_success
        absolute = [t * ref_success for t in targets]
        cmp.reached[mode] = {
            method: reached(curve, absolute, float(sample_cost[ref]))
            for method, curve in ordered.items()
        }
    return cmp


def _score(
    table: dict[str, MenuCurve],
    method: str,
    budget: float,
    truth: FloatArray,
    costs: FloatArray,
    choice: IntArray,
) -> None:
    rows = np.arange(truth.shape[0])
    curve = table.setdefault(method, MenuCurve())
    curve.add(budget, costs[rows, choice].mean(), truth[rows, choice].mean())


def _stream(
    values: FloatArray, costs: FloatArray, budget: float, folds: IntArray
) -> IntArray | None:
    """Each fold's choices at the lowest price at which the other fold spends at most ``budget``
    (None when a fold cannot afford its cheapest options)."""
    choice = np.zeros(values.shape[0], dtype=np.int64)
    for f in (0, 1):
        cal, app = folds != f, folds == f
        if budget < costs[cal].min(axis=1).mean() * (1 - 1e-9):
            return None
        price = joint.stream_price(values[cal], costs[cal], budget)
        choice[app] = joint.priced_choice(values[app], costs[app], price)
    return choice


def _joint_values(
    pred: FloatArray,
    truth: Sequence[FloatArray],
    opts: joint.Options,
    observe: str,
    folds: IntArray,
) -> FloatArray:
    """q̂(x, d, k) for every option: 1 - (1 - p̂)^k with a verifier; under majority the isotonic
    regression of the other fold's true q(·, d, k) on p̂(·, d) (see the module doc)."""
    p = np.clip(pred, 0.0, 1.0)
    if observe == "verifier":
        return np.asarray(1.0 - (1.0 - p[:, opts.decoder]) ** opts.k, dtype=float)
    from sklearn.isotonic import IsotonicRegression

    out = np.zeros((p.shape[0], len(opts.k)))
    for f in (0, 1):
        cal, app = folds != f, folds == f
        for j, (d, k) in enumerate(zip(opts.decoder, opts.k, strict=True)):
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            iso.fit(p[cal, d], truth[d][cal, k])
            out[app, j] = iso.predict(p[app, d])
    return out


def _family_curve(
    table: dict[str, MenuCurve],
    family: PolicyFamily,
    data: MenuData,
    observe: str,
    budgets: Sequence[float],
    folds: IntArray,
    n_replays: int,
    seed: int,
) -> None:
    """The family's point at each budget: per fold, fit and calibrate on the other fold (one
    random sample order), replay on this one over ``n_replays`` random orders."""
    n = len(data.pools[0])
    rng = np.random.default_rng([seed, 1])
    halves = []
    for f in (0, 1):
        cal = data.subset(np.flatnonzero(folds != f))
        app = data.subset(np.flatnonzero(folds == f))
        fitted = copy.deepcopy(family).fit(cal, observe)  # fit may return self: one per fold
        cal_orders = random_orders(cal.pools, rng)
        app_orders = [random_orders(app.pools, rng) for _ in range(n_replays)]
        halves.append((fitted, cal, cal_orders, app, app_orders))
    curve = table.setdefault(family.name, MenuCurve())
    for budget in budgets:
        reward = np.zeros(n_replays)
        cost = np.zeros(n_replays)
        for fitted, cal, cal_orders, app, app_orders in halves:
            knob = calibrate(fitted, cal, budget, observe, cal_orders)
            policy = fitted.at(knob)
            for r, orders in enumerate(app_orders):
                out = replay(policy, app.pools, app.costs, app.predictions, orders, observe)
                reward[r] += out.reward.sum() / n
                cost[r] += out.cost.sum() / n
        se = float(reward.std(ddof=1) / np.sqrt(n_replays)) if n_replays > 1 else 0.0
        curve.add(budget, cost.mean(), reward.mean(), se)
