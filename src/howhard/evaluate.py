"""Evaluation: success vs average budget for uniform, adaptive and oracle allocation.

Every method is scored on the same pooled samples: a query given b samples scores q̂(x, b), the
unbiased expected best-of-b reward of its pool (an oracle reranker picks the best of the b).

- ``uniform``: the same b for every query (floor(B·n) samples spread evenly).
- ``oracle``: greedy on each query's true gains q̂(x, b) - q̂(x, b-1), the limit for a predictor.
- ``adaptive``: the paper's batch greedy on the predicted gains (exactly B·n samples).
- ``threshold`` / ``binned``: per-query decisions for a stream, calibrated on held-out queries
  (2-fold cross-fitting on the evaluation pool unless a calibration pool is given), so their
  realised spend is near, not at, B.

Compute saved at equal success: the smallest uniform budget B_u (linear between integer budgets)
whose success reaches the method's, and saving = 1 - spend / B_u. When the method beats uniform at
the largest budget, B_u is unknown and the saving is a lower bound (flagged).

How sure a saving is: ``bootstrap`` resamples of the queries (with replacement, each a batch of
n queries allocated afresh, its uniform curve its own) give a 95% percentile interval of the
oracle's and adaptive's savings at each budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from howhard import allocate
from howhard.crossfit import cross_fit_policy, two_folds
from howhard.errors import BudgetError, ConfigError
from howhard.pool import Pool, check_samples

Curves = dict[str, list[float]]


@dataclass
class Evaluation:
    budgets: list[float]
    max_per_query: int
    n_queries: int
    binary: bool
    uniform_curve: list[float]  # mean q̂(x, k) for k = 0..max_per_query
    curves: Curves = field(default_factory=dict)
    spend: Curves = field(default_factory=dict)
    saving_vs_uniform: Curves = field(default_factory=dict)
    saving_is_lower_bound: dict[str, list[bool]] = field(default_factory=dict)
    oracle_fraction: Curves = field(default_factory=dict)
    reranked: dict[str, Curves] = field(default_factory=dict)  # reranker -> method -> success
    predictor: dict[str, Any] = field(default_factory=dict)
    saving_interval: dict[str, list[list[float]]] = field(default_factory=dict)  # [low, high]
    bootstrap: int = 0  # resamples behind saving_interval (0: none)


BOOTSTRAP = 1000  # resamples of the queries for the 95% intervals


def check_bootstrap(reps: int) -> int:
    """``reps`` (resamples of the queries; 0: no intervals); ConfigError unless a whole number
    >= 0."""
    if isinstance(reps, bool) or not isinstance(reps, int | np.integer) or reps < 0:
        raise ConfigError(
            f"bootstrap must be a whole number of resamples >= 0 (0: no intervals), got {reps!r}",
            param="bootstrap",
        )
    return int(reps)


def bootstrap_interval(
    n: int, stat: Callable[[np.ndarray], Sequence[float]], reps: int, seed: int = 0
) -> np.ndarray:
    """The 95% percentile interval of each statistic of ``stat(rows)`` over ``reps`` (>= 1)
    resamples of the n queries with replacement (``rows``: their indices), shape (k, 2)."""
    if check_bootstrap(reps) < 1:
        raise ConfigError("an interval needs bootstrap >= 1 resamples", param="bootstrap")
    rng = np.random.default_rng(seed)
    draws = np.array([stat(rng.integers(0, n, n)) for _ in range(reps)], dtype=float)
    return np.percentile(draws, [2.5, 97.5], axis=0).T


def gap_closed_interval(
    lam: np.ndarray,
    successes: np.ndarray,
    trials: np.ndarray,
    train_mean: float,
    reps: int,
    seed: int = 0,
) -> list[float]:
    """The 95% interval of the share of the Avg→Opt log-loss gap that the predictions ``lam``
    close (`howhard.predict.loss_table`) over ``reps`` resamples of the queries."""
    from howhard.predict import loss_table

    def gap(rows: np.ndarray) -> list[float]:
        return [loss_table(lam[rows], successes[rows], trials[rows], train_mean)["gap_closed"]]

    return bootstrap_interval(len(lam), gap, reps, seed)[0].tolist()


def check_budgets(budgets: Sequence[float], max_per_query: int) -> list[float]:
    """The average budgets as floats; BudgetError unless there is one and each B lies in
    [0, max_per_query]. Run once per evaluation (a run's spec does it, then calls the
    computation with ``check_input=False``)."""
    if not budgets:
        raise BudgetError(
            "budgets is empty; give average samples per query like 1,2,4,8", param="budgets"
        )
    for b in budgets:
        if not 0 <= b <= max_per_query:
            raise BudgetError(
                f"budget {b:g} is outside [0, max_per_query={max_per_query}]; "
                "use budgets between 0 and the per-query cap, or raise max_per_query",
                param="max_per_query",
            )
    return [float(b) for b in budgets]


def uniform_budget_for(success: float, uniform_curve: Sequence[float]) -> float:
    """Smallest B (linear between integer budgets) with uniform success >= ``success``; nan if
    uniform never reaches it."""
    curve = np.maximum.accumulate(np.asarray(uniform_curve))
    hit = np.flatnonzero(curve >= success - 1e-12)
    if hit.size == 0:
        return float("nan")
    k = int(hit[0])
    if k == 0:
        return 0.0
    lo, hi = curve[k - 1], curve[k]
    return float(k - 1 + (success - lo) / (hi - lo)) if hi > lo else float(k)


def evaluate(
    pool: Pool,
    budgets: Sequence[float],
    max_per_query: int,
    predicted_gains: np.ndarray | None = None,
    seed: int = 0,
    rerankers: dict[str, np.ndarray] | None = None,
    check_input: bool = True,
    bootstrap: int = 0,
) -> Evaluation:
    """Success and realised spend of every method at every average budget (see module doc).

    ``predicted_gains`` (n_queries, max_per_query) are a predictor's Δ̂(x, b) for the pool's
    queries; without them only uniform and oracle are reported. ``rerankers`` maps a reranker's
    name to its q_r(x, b), b = 0..max_per_query: the expected reward of the answer that reranker
    returns from b samples; each method's allocation is also scored under each of them.
    ``check_input=False`` skips validating the budgets and the pool (the caller did).
    ``bootstrap`` > 0: that many resamples give `Evaluation.saving_interval` (module doc).
    """
    if check_input:
        budgets = check_budgets(budgets, max_per_query)
        check_samples(pool, max_per_query)
    budgets = [float(b) for b in budgets]
    q = pool.q(max_per_query)
    gains = np.diff(q, axis=1)
    rows = np.arange(len(pool))
    ev = Evaluation(budgets, max_per_query, len(pool), pool.binary, q.mean(axis=0).tolist())

    def record(method: str, b: np.ndarray) -> None:
        if b.max(initial=0) > max_per_query:
            raise AssertionError(f"{method} gave {b.max()} > {max_per_query} samples")
        ev.curves.setdefault(method, []).append(float(q[rows, b].mean()))
        ev.spend.setdefault(method, []).append(float(b.mean()))
        for name, qr in (rerankers or {}).items():
            ev.reranked.setdefault(name, {}).setdefault(method, []).append(
                float(qr[rows, b].mean())
            )

    for budget in budgets:
        record("uniform", allocate.uniform(len(pool), budget, max_per_query))
        record("oracle", allocate.greedy(gains, budget))
        if predicted_gains is not None:
            record("adaptive", allocate.greedy(predicted_gains, budget))
            rng = np.random.default_rng(seed)
            score = predicted_gains[:, 0]
            for policy in ("threshold", "binned"):  # each draws its own folds from rng
                folds = two_folds(len(pool), rng)
                b = cross_fit_policy(
                    policy, budget, max_per_query, score, predicted_gains, gains, folds
                )
                record(policy, b)

    for method, successes in ev.curves.items():
        ev.saving_vs_uniform[method], ev.saving_is_lower_bound[method] = savings(
            successes, ev.spend[method], ev.uniform_curve, max_per_query
        )
    oracle = ev.saving_vs_uniform["oracle"]
    for method, saved in ev.saving_vs_uniform.items():
        ev.oracle_fraction[method] = oracle_shares(saved, oracle)
    if bootstrap:
        methods = {
            "oracle": gains,
            **({} if predicted_gains is None else {"adaptive": predicted_gains}),
        }

        def saved_in(rows: np.ndarray) -> list[float]:
            qr, at = q[rows], np.arange(len(rows))
            out = []
            for g in methods.values():
                bs = [allocate.greedy(g[rows], budget) for budget in budgets]
                won = [float(qr[at, b].mean()) for b in bs]
                spent = [float(b.mean()) for b in bs]
                out += savings(won, spent, qr.mean(axis=0), max_per_query)[0]
            return out

        ci = bootstrap_interval(len(pool), saved_in, bootstrap, seed).tolist()
        k = len(budgets)
        ev.saving_interval = {m: ci[i * k : (i + 1) * k] for i, m in enumerate(methods)}
        ev.bootstrap = bootstrap
    return ev


def savings(
    successes: Sequence[float],
    spends: Sequence[float],
    uniform_curve: Sequence[float],
    cap: int,
    *,
    reference: tuple[Sequence[float], Sequence[float]] | None = None,
    se: Sequence[float] | None = None,
) -> tuple[list[float], list[bool]]:
    """Compute saved vs uniform at equal success, 1 − spend / B_u, for each (success, spend),
    where B_u is the smallest uniform budget reaching that success (`uniform_budget_for`); when
    uniform never reaches it, B_u is the cap and the saving a lower bound (flagged True).

    ``reference``: uniform's own (successes, spends) at the same budgets. A success that ties
    uniform's there (within two standard errors ``se``; to rounding without them) is compared
    with uniform at that budget instead: 1 − spend / uniform's spend. Where the uniform curve is
    flat (majority of 2 is no better than majority of 1), the smallest budget reaching a tie lies
    below the row's budget (uniform would save −100% against itself at B = 2), and one a hair
    above the flat would be credited with the whole flat stretch; a tie saves its spend
    difference, no more."""
    errors = [0.0] * len(successes) if se is None else se
    saved, lower = [], []
    for j, (success, spend) in enumerate(zip(successes, spends, strict=True)):
        tie = reference is not None and abs(success - reference[0][j]) <= 2 * errors[j] + 1e-9
        if reference is not None and tie and reference[1][j] > 0:
            saved.append(1.0 - spend / reference[1][j])
            lower.append(False)
            continue
        b_u = uniform_budget_for(success, uniform_curve)
        lower.append(bool(np.isnan(b_u)))
        b_u = float(cap) if lower[-1] else b_u
        saved.append(1.0 - spend / b_u if b_u > 0 else 0.0)
    return saved, lower


def oracle_shares(saved: Sequence[float], oracle: Sequence[float]) -> list[float]:
    """Each saving as a share of the oracle's at the same budget (nan where the oracle saves
    nothing)."""
    return [s / o if o > 0 else float("nan") for s, o in zip(saved, oracle, strict=True)]


def calibration_table(lam: np.ndarray, pool: Pool, n_bins: int = 10) -> dict[str, Any]:
    """Reliability of predicted one-sample success: per quantile bin of λ̂, the mean λ̂ against
    the pooled success rate, and the expected calibration error (trial-weighted)."""
    rate, trials = pool.success_rate(), pool.n_samples.astype(float)
    edges = np.unique(np.quantile(lam, np.linspace(0, 1, n_bins + 1)))
    # Equal predictions for every query leave one edge: then all queries form one bin.
    which = np.clip(np.searchsorted(edges, lam, side="right") - 1, 0, max(len(edges) - 2, 0))
    bins, ece = [], 0.0
    for k in range(max(len(edges) - 1, 1)):
        m = which == k
        if m.any():
            pred = float(np.average(lam[m], weights=trials[m]))
            seen = float(np.average(rate[m], weights=trials[m]))
            bins.append({"predicted": pred, "observed": seen, "queries": int(m.sum())})
            ece += trials[m].sum() / trials.sum() * abs(pred - seen)
    return {"bins": bins, "ece": float(ece)}
