"""Matched-budget comparison: every allocation method at the same realised average spend.

For each target budget B (samples per query; with a strong decoder, the cost of one weak sample)
each method is run so that its *realised* mean spend is B, and scored on the same pooled samples.
Where a method cannot reach B within ``tolerance`` it is scored at the spend it reaches and
flagged (`Curve.overspent`, `Curve.underspent`): a calibrated knob that cannot get closer, or a
sequential method that stops before spending B (every query has seen a success under the
verifier, or has nothing left to gain, or is at the cap).

- ``uniform``, ``greedy`` (the paper's batch greedy on predicted gains) and ``oracle`` (greedy
  on each query's true gains) spend exactly ⌊B·n⌋; ``sequential`` (`howhard.sequential`, batch)
  spends ⌊B·n⌋ or less when no query has a positive gain left.
- ``binned`` (the paper's bins), ``threshold`` and ``sequential-stream`` (a price per draw)
  decide each query alone, calibrated on the other half of the pool (2-fold cross-fitting). Their
  realised spend differs from the budget they are calibrated for, so that nominal budget is
  bisected until the realised spend is within ``tolerance`` (relative) of B, or as close below
  as the knob allows; a method whose spend still exceeds B·(1 + tolerance) is flagged.
- ``sequential-flat``: the sequential method with every query's prior mean set to the
  calibration half's mean: what the observations alone give, without the predictor.
- With a strong decoder (`howhard.joint`): ``uniform-strong`` (k strong samples for every
  query), ``routing`` (one sample, weak or strong: the same hull greedy restricted to k = 1),
  ``joint`` (decoder and k chosen together on predicted values) and ``joint-oracle`` (on true
  values), under the verifier only.

Two observation settings, each its own table: ``verifier`` (the reward of every drawn sample is
seen, the best is returned: success = q̂(x, b), `howhard.pool.Pool.q`) and ``majority`` (only
the answers are seen, the majority answer is returned: `howhard.rerank.majority_best_of`).
Non-sequential methods are scored exactly (the mean over all sample orders); the sequential
ones by replaying R random orders (standard error over replays in the table).

Compute saved vs uniform = 1 - spend / B_u with B_u the smallest uniform budget reaching the
method's success (`howhard.evaluate.uniform_budget_for`); when uniform never reaches it within
the cap, B_u is taken as the cap and the saving is a lower bound (≥). A method whose success
ties uniform's at the same B (within two standard errors over replays; exactly for the others)
is compared with uniform at B: it saves 1 - spend / uniform's spend, so uniform saves 0 against
itself and a tie on a flat stretch of uniform's curve (majority of 2 is no better than majority
of 1) is credited with its spend difference only (`howhard.evaluate.savings`).

Share of the oracle's saving = the method's saving / the oracle's at the same realised spend:
the oracle's row at B, or for a flagged row the oracle re-run at that row's spend. The oracle is
the paper's (greedy on each query's true gains, on the weak pool, all of the budget allocated
before any draw), so a sequential method, which sees its draws, can beat it: a share above 100%.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from howhard import allocate, joint, sequential
from howhard.crossfit import cross_fit_policy, two_folds
from howhard.errors import ConfigError
from howhard.evaluate import check_budgets, oracle_shares, savings
from howhard.pool import Pool, check_samples

FloatArray = npt.NDArray[np.float64]
Score = tuple[float, float, float]  # success, its standard error, mean spend
Result = tuple[float | None, Score]  # the tuned nominal budget (None: untuned) and its score

OBSERVE = sequential.OBSERVE


@dataclass
class Curve:
    """One method's results at each budget."""

    success: list[float] = field(default_factory=list)
    success_se: list[float] = field(default_factory=list)  # over replays; 0 when exact
    spend: list[float] = field(default_factory=list)
    nominal: list[float | None] = field(default_factory=list)  # the tuned knob's budget
    saving: list[float] = field(default_factory=list)
    saving_lower: list[bool] = field(default_factory=list)
    oracle_share: list[float] = field(default_factory=list)
    oracle_saving: list[float] = field(default_factory=list)  # the share's denominator
    oracle_saving_lower: list[bool] = field(default_factory=list)
    overspent: list[bool] = field(default_factory=list)  # spend above B beyond the tolerance
    underspent: list[bool] = field(default_factory=list)  # below it: shown at its own spend


@dataclass
class Comparison:
    title: str
    n_queries: int
    binary: bool
    max_per_query: int
    budgets: list[float]
    unit: str
    n_replays: int
    tolerance: float
    uniform_curves: dict[str, list[float]]  # observe -> mean success of uniform b = 0..cap
    tables: dict[str, dict[str, Curve]]  # observe -> method -> curve
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Strong:
    """The strong decoder's side of a joint comparison: its pool (paired with the weak one by
    `howhard.routing.pair_pools`), its predicted gains Δ̂(x, 1..its cap) and its cost per sample
    in units of one weak sample."""

    pool: Pool
    predicted_gains: FloatArray
    cost: float


def _q_table(pool: Pool, cap: int, observe: str) -> FloatArray:
    if observe == "verifier":
        return pool.q(cap)
    from howhard.rerank import reranked_q

    return reranked_q(pool.rewards, [e["answers"] for e in pool.extras], cap, "majority")


def _settings(pool: Pool, observe: Sequence[str]) -> list[str]:
    out = []
    for name in observe:
        if name not in OBSERVE:
            raise ConfigError(f"unknown observation setting {name!r}; use {', '.join(OBSERVE)}")
        if name == "majority" and not (pool.binary and all("answers" in e for e in pool.extras)):
            continue  # no answers (or not binary): nothing to vote on
        out.append(name)
    if not out:
        raise ConfigError(
            "no observation setting applies to this pool; majority needs a binary pool with "
            "per-sample answers, so ask for verifier"
        )
    return out


def match_spend(
    run: Callable[[float], Score],
    target: float,
    cap: int,
    tolerance: float,
    steps: int = 30,
) -> tuple[float, Score]:
    """Bisect the nominal budget x in [0, cap] of a method whose realised spend grows with x so
    that its spend is within ``tolerance`` (relative) of ``target``; ``run(x)`` returns (success,
    standard error, spend). Returns the nominal budget used and its result: the first one within
    tolerance, else the one with the spend closest to the target from below (from above when
    no tried budget stays below)."""
    tried: list[tuple[float, Score]] = []
    lo, hi = 0.0, float(cap)
    x = min(max(target, lo), hi)
    for _ in range(steps):
        result = run(x)
        tried.append((x, result))
        spend = result[2]
        if abs(spend - target) <= tolerance * target:
            return x, result
        if spend < target:
            lo = x
        else:
            hi = x
        x = 0.5 * (lo + hi)
    below = [t for t in tried if t[1][2] <= target]
    if below:
        return max(below, key=lambda t: t[1][2])
    return min(tried, key=lambda t: t[1][2])


def compare(
    pool: Pool,
    predicted_gains: npt.ArrayLike,
    budgets: Sequence[float],
    max_per_query: int,
    observe: Sequence[str] = OBSERVE,
    n_replays: int = 100,
    seed: int = 0,
    tolerance: float = 0.01,
    lookahead: int = 6,
    strong: Strong | None = None,
    title: str = "howhard compare",
    check_input: bool = True,
) -> Comparison:
    """Run every method at each budget at matched realised spend (see the module doc).

    ``predicted_gains`` (n, max_per_query) are the predictor's Δ̂(x, b) for the pool's queries
    (Δ̂(x, 1) is the predicted mean reward, the sequential method's prior mean). ``seed`` fixes
    the 2-fold split of the calibrated methods and the replay orders. ``check_input=False``
    skips validating the budgets and the pool (the caller did)."""
    if check_input:
        budgets = check_budgets(budgets, max_per_query)
        check_samples(pool, max_per_query)
    budgets = [float(b) for b in budgets]
    gains_pred = np.asarray(predicted_gains, dtype=float)
    n, cap = len(pool), max_per_query
    if gains_pred.shape != (n, cap):
        raise ConfigError(
            f"predicted_gains has shape {gains_pred.shape}; pass Δ̂(x, 1..{cap}) for the "
            f"{n} queries, e.g. predictor.predict_gains(X, {cap})"
        )
    if not 0 < tolerance < 1:
        raise ConfigError(
            f"tolerance must lie in (0, 1), got {tolerance}; pass e.g. 0.01", param="tolerance"
        )
    unit = "weak-sample cost" if strong else "samples"
    cmp = Comparison(title, n, pool.binary, cap, budgets, unit, n_replays, tolerance, {}, {})
    mean = np.clip(gains_pred[:, 0], 0.0, 1.0)
    threshold: dict[float, np.ndarray] = {}  # the allocation is the same under every setting

    def thresholded(x: float) -> np.ndarray:
        if x not in threshold:
            folds = two_folds(n, np.random.default_rng(seed))
            threshold[x] = cross_fit_policy(
                "threshold", x, cap, mean, gains_pred, gains_pred, folds
            )
        return threshold[x]

    to_strong: dict[str, list[str]] = {}  # joint method -> share sent to strong, per budget
    for name in _settings(pool, observe):
        q = _q_table(pool, cap, name)
        cmp.uniform_curves[name] = q.mean(axis=0).tolist()
        fits = {
            method: sequential.cross_fit(
                pool, mean, cap, name, n_replays, seed, lookahead, flat=flat, with_stream=not flat
            )
            for method, flat in (("sequential", False), ("sequential-flat", True))
        }
        cmp.info[f"{name} prior per fold"] = _prior_note(fits["sequential"].priors, lookahead)
        table: dict[str, Curve] = {}
        for budget in budgets:
            results = _at_budget(q, gains_pred, mean, fits, thresholded, budget, seed, tolerance)
            if strong is not None and name == "verifier":
                joint_results, sent = _joint_results(pool, gains_pred, q, strong, budget)
                results.update(joint_results)
                for method, share in sent.items():
                    to_strong.setdefault(method, []).append(
                        f"{round(100 * share)}% at B = {budget:g}"
                    )
            results["oracle"] = (None, _exact(q, allocate.greedy(np.diff(q, axis=1), budget)))
            for method, (nominal, (success, se, spend)) in results.items():
                curve = table.setdefault(method, Curve())
                curve.success.append(success)
                curve.success_se.append(se)
                curve.spend.append(spend)
                curve.nominal.append(nominal)
                curve.overspent.append(spend > budget * (1 + tolerance) + 1e-12)
                curve.underspent.append(spend < budget * (1 - tolerance) - 1e-12)
        _savings(table, cmp.uniform_curves[name], cap, q)
        cmp.tables[name] = table
    for method, shares in to_strong.items():
        cmp.info[f"{method}: queries given the strong decoder"] = ", ".join(shares)
    return cmp


def _exact(q: FloatArray, b: np.ndarray) -> Score:
    """Mean q(x, b_x) over queries (the exact mean over sample orders) and the mean spend."""
    if b.max(initial=0) >= q.shape[1]:
        raise AssertionError(f"an allocation gave {b.max()} > {q.shape[1] - 1} samples")
    return float(q[np.arange(q.shape[0]), b].mean()), 0.0, float(b.mean())


def _replayed(fit: sequential.CrossFit, counts: np.ndarray) -> Score:
    s = sequential.score(fit.paths.returned, counts)
    if s.max_draws > fit.paths.gains.shape[-1]:
        raise AssertionError(f"a sequential method drew {s.max_draws} samples, above the cap")
    return s.success, s.success_se, s.spend


def _at_budget(
    q: FloatArray,
    gains_pred: FloatArray,
    mean: FloatArray,
    fits: dict[str, sequential.CrossFit],
    thresholded: Callable[[float], np.ndarray],
    budget: float,
    seed: int,
    tolerance: float,
) -> dict[str, Result]:
    """The single-decoder methods (all but the oracle) at one budget, scored on q (n, cap + 1)."""
    n, cap = q.shape[0], q.shape[1] - 1

    def binned(x: float) -> Score:
        folds = two_folds(n, np.random.default_rng(seed))
        gains_true = np.diff(q, axis=1)
        return _exact(q, cross_fit_policy("binned", x, cap, mean, gains_pred, gains_true, folds))

    seq, flat = fits["sequential"], fits["sequential-flat"]
    return {
        "uniform": (None, _exact(q, allocate.uniform(n, budget, cap))),
        "binned": match_spend(binned, budget, cap, tolerance),
        "greedy": (None, _exact(q, allocate.greedy(gains_pred, budget))),
        "threshold": match_spend(lambda x: _exact(q, thresholded(x)), budget, cap, tolerance),
        "sequential": (None, _replayed(seq, sequential.batch(seq, budget))),
        "sequential-stream": match_spend(
            lambda x: _replayed(seq, sequential.stream(seq, x)), budget, cap, tolerance
        ),
        "sequential-flat": (None, _replayed(flat, sequential.batch(flat, budget))),
    }


def _prior_note(priors: Sequence[sequential.Prior], lookahead: int) -> str:
    parts = [f"strength κ = {', '.join(f'{p.strength:.3g}' for p in priors)}"]
    if priors[0].observe == "majority":
        parts.append(
            f"wrong-answer concentration θ = {', '.join(f'{p.theta:.3g}' for p in priors)}; "
            f"gains look up to {lookahead} draws ahead"
        )
    else:
        g = ", ".join(f"{float(np.mean(p.positive)):.3g}" for p in priors)
        parts.append(f"mean positive reward {g}")
    return "; ".join(parts)


def _joint_results(
    weak: Pool, gains_weak: FloatArray, q_weak: FloatArray, strong: Strong, budget: float
) -> tuple[dict[str, Result], dict[str, float]]:
    """uniform-strong, routing, joint and joint-oracle at a mean cost of ``budget``, and the
    share of queries each of the last three gives to the strong decoder."""
    cap_s = strong.predicted_gains.shape[1]
    q_strong = strong.pool.q(cap_s)
    cap_w = q_weak.shape[1] - 1
    q_pred = [_cumulative(gains_weak), _cumulative(strong.predicted_gains)]
    out: dict[str, Result] = {}
    sent: dict[str, float] = {}
    n = len(weak)
    k_strong = budget / strong.cost
    if k_strong <= cap_s:
        b = allocate.uniform(n, k_strong, cap_s)
        out["uniform-strong"] = (
            None,
            (float(q_strong[np.arange(n), b].mean()), 0.0, float(b.mean()) * strong.cost),
        )
    one = joint.options([cap_w, cap_s], [1.0, strong.cost], min_samples=1, max_k=1)
    full = joint.options([cap_w, cap_s], [1.0, strong.cost])
    for method, opts, values in (
        ("routing", one, q_pred),
        ("joint", full, q_pred),
        ("joint-oracle", full, [q_weak, q_strong]),
    ):
        if budget < float(opts.cost.min()):
            continue  # cannot afford the cheapest option for every query
        alloc = joint.allocate_joint(joint.option_values(values, opts), opts.cost, budget)
        truth = joint.option_values([q_weak, q_strong], opts)
        out[method] = (None, (float(truth[np.arange(n), alloc.choice].mean()), 0.0, alloc.spend))
        sent[method] = float(np.mean(opts.decoder[alloc.choice] == 1))
    return out, sent


def _cumulative(gains: FloatArray) -> FloatArray:
    return np.concatenate([np.zeros((gains.shape[0], 1)), np.cumsum(gains, axis=1)], axis=1)


def _savings(table: dict[str, Curve], uniform_curve: list[float], cap: int, q: FloatArray) -> None:
    """Each row's saving vs uniform and share of the oracle's saving at the same spend (module
    doc); q (n, cap + 1) is the table's q(x, b), on which the oracle is re-run for flagged rows."""
    uniform = table["uniform"]
    for curve in table.values():
        curve.saving, curve.saving_lower = savings(
            curve.success,
            curve.spend,
            uniform_curve,
            cap,
            reference=(uniform.success, uniform.spend),
            se=curve.success_se,
        )
    oracle = table["oracle"]
    gains = np.diff(q, axis=1)
    for curve in table.values():
        ref, ref_lower = list(oracle.saving), list(oracle.saving_lower)
        for j, spend in enumerate(curve.spend):
            if curve.overspent[j] or curve.underspent[j]:
                success, _, spent = _exact(q, allocate.greedy(gains, spend))
                (ref[j],), (ref_lower[j],) = savings([success], [spent], uniform_curve, cap)
        curve.oracle_saving = ref[: len(curve.spend)]
        curve.oracle_saving_lower = ref_lower[: len(curve.spend)]
        curve.oracle_share = oracle_shares(curve.saving, curve.oracle_saving)
