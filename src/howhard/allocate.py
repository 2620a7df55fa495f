"""Budgets -> samples per query: how many samples b_i each query gets under an average budget.

For query i, q_i(b) is the expected best-of-b reward and Δ_i(b) = q_i(b) - q_i(b - 1),
b = 1..Bmax, are its marginal gains (``gains[i, b - 1]``). An allocation gives every query an
integer b_i in [min_per_query, Bmax] and spends T = ⌊B·n⌋ samples in total for an average budget
of B samples per query over n queries; the goal is to maximise Σ_i q_i(b_i).

- `uniform`: the baseline, every query gets ⌊B⌋ or ⌊B⌋ + 1 samples.
- `greedy`: hands out the T samples to the largest remaining gains; optimal when every q_i is
  concave (each row of Δ non-increasing), and run on the concave envelope otherwise.
- `greedy_binary`: the same allocation for binary rewards with success rate λ_i, where
  Δ_i(b) = λ_i (1 - λ_i)^(b-1), found by a threshold search on the closed form.
- `ThresholdPolicy`, `BinnedPolicy`: independent per-query decisions for queries that arrive one
  at a time, calibrated on held-out data.

The paper's oracle (each query allocated on its own q̂ from its pooled samples) is no separate
algorithm: it is ``greedy(pool.gains(bmax), budget)``.
"""

from __future__ import annotations

import math
import operator
from typing import Self

import numpy as np
import numpy.typing as npt

from howhard.errors import BudgetError, ConfigError, NotFittedError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Below this log-gain a running product may be subnormal or 0, so greedy_binary compares those
# gains exactly instead of through their logarithms.
_DEEP_LOG = -700.0


# ---------------------------------------------------------------------------- validation


def _as_int(value: object, name: str) -> int:
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise BudgetError(f"{name} must be an integer, got {value!r}; pass e.g. {name}=4") from None


def _check_cap(max_per_query: object) -> int:
    bmax = _as_int(max_per_query, "max_per_query")
    if bmax < 1:
        raise BudgetError(
            f"max_per_query must be >= 1 sample, got {bmax}; pass the largest b you will draw"
        )
    return bmax


def _check_budget(budget: float, bmax: int, min_per_query: object = 0) -> tuple[float, int]:
    """Validate 0 <= min_per_query <= budget <= bmax; return (budget, min_per_query)."""
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise BudgetError(f"budget must be a number of samples per query, got {budget!r}") from None
    if not math.isfinite(b) or b < 0:
        raise BudgetError(
            f"budget must be a finite number >= 0 (average samples per query), got {budget!r}; "
            "pass e.g. budget=4.0"
        )
    if b > bmax:
        raise BudgetError(
            f"budget={b:g} is above max_per_query={bmax}: no query may get more than {bmax} "
            "samples, so neither can the average; lower the budget or raise max_per_query "
            "(for greedy: pass gains with more columns)"
        )
    m = _as_int(min_per_query, "min_per_query")
    if m < 0 or m > bmax:
        raise BudgetError(
            f"min_per_query must lie in [0, max_per_query={bmax}], got {m}; pass 0 for no minimum"
        )
    if m > b:
        raise BudgetError(
            f"min_per_query={m} is above budget={b:g}: giving every query {m} samples already "
            "spends more than the budget; lower min_per_query or raise the budget"
        )
    return b, m


def _check_gains(gains: npt.ArrayLike, name: str = "gains") -> FloatArray:
    g = np.asarray(gains, dtype=float)
    if g.ndim != 2 or g.shape[1] == 0:
        raise BudgetError(
            f"{name} must be a 2-D array (n_queries, max_per_query) of marginal gains Δ(b), "
            f"got shape {g.shape}; pass pool.gains(bmax), or gains[None] for a single query"
        )
    bad = ~np.isfinite(g)
    if bad.any():
        i, b = np.argwhere(bad)[0]
        raise BudgetError(
            f"{name} has {int(bad.sum())} NaN or infinite entries (first at query {i}, b={b + 1}); "
            "estimate Δ(b) for every query and b, e.g. drop queries with too few samples"
        )
    return g


def _check_lam(lam: npt.ArrayLike) -> FloatArray:
    x = np.asarray(lam, dtype=float)
    if x.ndim != 1:
        raise BudgetError(f"lam must be a 1-D array of success rates, got shape {x.shape}")
    bad = ~((x >= 0) & (x <= 1))  # also catches NaN
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise BudgetError(
            f"lam must lie in [0, 1] (a success probability), got {x[i]!r} at query {i}; "
            "clip predicted rates with np.clip(lam, 0, 1) and drop NaN"
        )
    return x


def _check_score(score: npt.ArrayLike) -> FloatArray:
    s = np.asarray(score, dtype=float)
    if s.ndim != 1:
        raise ConfigError(f"score must be a 1-D array (one number per query), got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        i = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ConfigError(f"score has {s[i]!r} at query {i}; pass a finite difficulty score")
    return s


def _check_columns(g: FloatArray, bmax: int, name: str) -> None:
    if g.shape[1] != bmax:
        raise BudgetError(
            f"{name} has {g.shape[1]} columns but max_per_query={bmax}; "
            f"pass gains for b = 1..{bmax}, e.g. pool.gains({bmax})"
        )


def total_samples(n_queries: int, budget: float) -> int:
    """T = ⌊B·n⌋: the samples an average budget of B per query buys for n queries.

    The product is floored with a relative tolerance of 1e-12 so that decimal budgets give the
    intended count: 0.29 · 100 is 28.999999999999996 in floating point and gives 29.
    """
    n = _as_int(n_queries, "n_queries")
    if n < 0:
        raise BudgetError(f"n_queries must be >= 0, got {n}")
    if not math.isfinite(budget) or budget < 0:
        raise BudgetError(f"budget must be a finite number >= 0, got {budget!r}")
    return math.floor(budget * n * (1.0 + 1e-12))


# ---------------------------------------------------------------------------- allocators


def uniform(n_queries: int, budget: float, max_per_query: int) -> IntArray:
    """Spread T = ⌊B·n⌋ samples as evenly as possible: b_i = ⌊T/n⌋ + [i < T mod n].

    Every query gets ⌊B⌋ or ⌊B⌋ + 1 samples; the extra ones go to the first queries.
    """
    n = _as_int(n_queries, "n_queries")
    if n < 0:
        raise BudgetError(f"n_queries must be >= 0, got {n}")
    bmax = _check_cap(max_per_query)
    b, _ = _check_budget(budget, bmax)
    out = np.zeros(n, dtype=np.int64)
    if n:
        base, extra = divmod(min(total_samples(n, b), n * bmax), n)
        out += base
        out[:extra] += 1
    return out


def concave_envelope(gains: npt.ArrayLike) -> FloatArray:
    """Slopes of the least concave majorant of each row's cumulative gains.

    With Q(0) = 0 and Q(b) = Σ_{k<=b} Δ(k), the least concave majorant Q̂ is the smallest concave
    function >= Q on b = 0..Bmax. Its slopes Δ̂(b) = Q̂(b) - Q̂(b-1) are non-increasing and are the
    decreasing isotonic regression of Δ, found by pooling adjacent violators: scanning b upward, a
    block whose mean slope exceeds the previous block's is merged with it, and every b in a block
    gets the block mean. Q̂ = Q at the block ends, so Σ_b Δ̂(b) = Σ_b Δ(b). Rows that are already
    non-increasing come back unchanged, bit for bit.
    """
    return _envelope(_check_gains(gains))


def _envelope(g: FloatArray) -> FloatArray:
    """`concave_envelope` without validation (and allowing zero columns)."""
    out = g.copy()
    for i in np.flatnonzero(np.any(np.diff(g, axis=1) > 0, axis=1)):
        out[i] = _pool_adjacent_violators(g[i])
    return out


def _pool_adjacent_violators(y: FloatArray) -> FloatArray:
    sums: list[float] = []
    sizes: list[int] = []
    for value in y.tolist():
        s, c = value, 1
        while sums and s / c > sums[-1] / sizes[-1]:
            s += sums.pop()
            c += sizes.pop()
        sums.append(s)
        sizes.append(c)
    return np.repeat(np.array(sums) / np.array(sizes), sizes)


def _take_top(values: FloatArray, k: int) -> tuple[IntArray, float, int, int]:
    """Mark the k largest entries, ties to the lower flat index (query, then b).

    Returns (entries taken per row, the k-th largest value v, #entries > v, #entries == v).
    """
    flat = values.ravel()
    v = float(np.partition(flat, flat.size - k)[flat.size - k])
    taken = flat > v
    n_above = int(taken.sum())
    tied = np.flatnonzero(flat == v)
    taken[tied[: k - n_above]] = True
    return taken.reshape(values.shape).sum(axis=1), v, n_above, int(tied.size)


def greedy(gains: npt.ArrayLike, budget: float, min_per_query: int = 0) -> IntArray:
    """Hand out T = ⌊B·n⌋ samples, one at a time, to the largest remaining marginal gain.

    Every query first gets m = min_per_query samples; the remaining T - n·m go to the largest
    Δ_i(b), b > m, ties to the lower query index and then the lower b. When every row of Δ is
    non-increasing (q_i concave) this maximises Σ_i q_i(b_i) subject to Σ_i b_i = T and
    m <= b_i <= Bmax (exchange argument). Otherwise it runs on the concave envelope Δ̂ of
    Δ_i(m+1..Bmax) (`concave_envelope`): the result then maximises Σ_i Q̂_i(b_i), which can differ
    from the true optimum (a brute force over allocations), e.g. when a query's gain only comes at
    b = 2 and the envelope spends b = 1 on it.

    All T samples are spent, even on zero or negative gains. Vectorised: O(n·Bmax) through a
    partial sort, no loop over samples.
    """
    g = _check_gains(gains)
    n, bmax = g.shape
    b, m = _check_budget(budget, bmax, min_per_query)
    counts = np.full(n, m, dtype=np.int64)
    extra = min(total_samples(n, b), n * bmax) - n * m
    if extra > 0:
        counts += _take_top(_envelope(g[:, m:]), extra)[0]
    return counts


def binary_gains(lam: npt.ArrayLike, max_per_query: int) -> FloatArray:
    """Δ(b) = λ(1 - λ)^(b-1), b = 1..Bmax, for binary rewards with success rate λ; shape (n, Bmax).

    q(b) = 1 - (1 - λ)^b is the chance that one of b independent samples succeeds. Computed as a
    running product λ, λ·(1-λ), ... so rows are exactly non-increasing and `greedy_binary` can
    reproduce every value bit for bit.
    """
    x = _check_lam(lam)
    bmax = _check_cap(max_per_query)
    factors = np.empty((x.size, bmax))
    factors[:, 0] = x
    factors[:, 1:] = (1.0 - x)[:, None]
    return np.asarray(np.cumprod(factors, axis=1), dtype=np.float64)


def greedy_binary(
    lam: npt.ArrayLike, budget: float, max_per_query: int, min_per_query: int = 0
) -> IntArray:
    """The allocation of `greedy` on Δ(b) = λ(1 - λ)^(b-1), without the n × Bmax array.

    Binary rewards: Δ_i(b) = λ_i (1 - λ_i)^(b-1) is non-increasing in b, so greedy is optimal and
    amounts to a threshold t: query i gets every b with Δ_i(b) > t, plus some b with Δ_i(b) = t.
    For 0 < λ < 1 the count above t is closed form,

        #{b in (m, Bmax] : Δ_i(b) > t} = clip(⌈(log λ_i - log t) / -log(1 - λ_i)⌉, m, Bmax) - m,

    (λ = 1 gives Δ = 1, 0, 0, ...; λ = 0 gives only zeros). log t is bisected until the T-th
    largest gain is bracketed within ~1e-9; the gains inside the bracket, and any gain below
    e^-700 where floating point underflows, are then compared exactly (recomputed as
    `binary_gains` does, once per distinct λ), ties to the lower query index then the lower b.
    The result equals ``greedy(binary_gains(lam, max_per_query), budget, min_per_query)`` exactly,
    tie-breaking included. Cost O(n log(1/ε)): 10^6 queries with Bmax = 128 take a fraction of a
    second.
    """
    x = _check_lam(lam)
    bmax = _check_cap(max_per_query)
    b, m = _check_budget(budget, bmax, min_per_query)
    n = x.size
    counts = np.full(n, m, dtype=np.int64)
    extra = min(total_samples(n, b), n * bmax) - n * m
    if extra <= 0:
        return counts
    gen = np.flatnonzero((x > 0) & (x < 1))  # rows whose gains are all > 0 mathematically
    ones = np.flatnonzero(x == 1) if m == 0 else np.zeros(0, dtype=np.int64)  # gain 1 at b = 1
    n_main = gen.size * (bmax - m) + ones.size  # gains not known to be exactly 0
    target = min(extra, n_main)
    log_lam = np.log(x[gen])
    with np.errstate(over="ignore"):  # subnormal λ: slope inf, and log λ < _DEEP_LOG anyway
        inv_slope = -1.0 / np.log1p(-x[gen])
    eps = 1e-9 + 4e-16 * bmax  # bounds the rounding error of the log-gains

    # Per query: `sure` gains certainly above the target-th largest, and b in (lo_b, hi_b] in the
    # bracket, to compare exactly; every other gain is certainly below it.
    sure = np.zeros(n, dtype=np.int64)
    hi_b = np.zeros(n, dtype=np.int64)
    if target > 0:
        lo, hi = _search_log_threshold(log_lam, inv_slope, ones.size, target, m, bmax, eps)
        sure[gen] = _count_above(log_lam, inv_slope, hi + eps, m, bmax)
        hi_b[gen] = m + _count_above(log_lam, inv_slope, lo - eps, m, bmax)
        sure[ones] = hi + eps < 0
        hi_b[ones] = lo - eps < 0
    lo_b = np.minimum(m + sure, hi_b)
    win = np.flatnonzero(hi_b > lo_b)
    lo_w, hi_w = lo_b[win], hi_b[win]
    lam_u, u = np.unique(x[win], return_inverse=True)
    rows = binary_gains(lam_u, max(int(hi_w.max(initial=0)), 1))  # rows[u, b - 1], bit for bit

    def n_in_window(n_prefix: IntArray) -> IntArray:
        """Per window query, how many of its bracket b lie in the first n_prefix of its λ row."""
        return np.clip(n_prefix[u], lo_w, hi_w) - lo_w

    taken = sure.copy()
    if target > 0:
        # The exact target-th largest gain v: count bracket items per (λ, b), sort by gain.
        width = rows.shape[1] + 1
        marks = np.bincount(u * width + lo_w, minlength=lam_u.size * width)
        marks -= np.bincount(u * width + hi_w, minlength=lam_u.size * width)
        items = np.cumsum(marks.reshape(-1, width), axis=1)[:, :-1]
        vals, mult = rows[items > 0], items[items > 0]
        order = np.argsort(-vals)
        need = target - int(sure.sum())
        v = float(vals[order][np.searchsorted(np.cumsum(mult[order]), need)])
        above_v = n_in_window((rows > v).sum(axis=1))
        tied = n_in_window((rows >= v).sum(axis=1)) - above_v
        ties_left = need - int(above_v.sum())
        taken[win] += above_v + np.clip(ties_left - (np.cumsum(tied) - tied), 0, tied)
        if extra <= n_main and v > 0:
            return counts + taken
    # Every positive gain is taken; the rest are zeros, handed out by query index then b.
    positive = sure.copy()
    positive[win] += n_in_window((rows > 0).sum(axis=1))
    zeros = np.zeros(n, dtype=np.int64)
    zeros[win] = (hi_w - lo_w) - (positive[win] - sure[win])
    zeros[x == 0] = bmax - m
    zeros[x == 1] = bmax - max(m, 1)
    left = extra - int(positive.sum())
    return counts + positive + np.clip(left - (np.cumsum(zeros) - zeros), 0, zeros)


def _count_above(
    log_lam: FloatArray, inv_slope: FloatArray, t: float, m: int, bmax: int
) -> FloatArray:
    """Per row, #{b in (m, Bmax] : log λ + (b-1) log(1-λ) > t}; log-gains below _DEEP_LOG count
    as _DEEP_LOG (there floating point may underflow, and greedy_binary compares exactly)."""
    if t < _DEEP_LOG:
        return np.full(log_lam.size, float(bmax - m))
    with np.errstate(over="ignore"):  # tiny λ: a huge count, clipped to Bmax below
        c = (log_lam - t) * inv_slope
    np.ceil(c, out=c)
    np.clip(c, m, bmax, out=c)
    return c - m


def _search_log_threshold(
    log_lam: FloatArray,
    inv_slope: FloatArray,
    n_ones: int,
    target: int,
    m: int,
    bmax: int,
    eps: float,
) -> tuple[float, float]:
    """Bisect so that N(lo) >= target > N(hi), N(t) = #{log-gains > t}; return (lo, hi).

    Gains 1 (λ = 1, b = 1) have log-gain 0. Every 4 steps the rows whose count is the same at lo
    and hi are frozen, so later steps only touch the rows the threshold still crosses; the search
    stops when hi - lo <= eps, or when 4 steps did not shrink the number of gains between lo and
    hi (they are tied, and the caller compares them exactly).
    """
    lo = _DEEP_LOG - 1.0
    hi = max(float(log_lam.max(initial=-np.inf)), 0.0 if n_ones else -np.inf, _DEEP_LOG)
    frozen = 0.0
    between = -1.0
    step = 0
    while hi - lo > eps:
        mid = 0.5 * (lo + hi)
        n_mid = frozen + float(_count_above(log_lam, inv_slope, mid, m, bmax).sum())
        if n_mid + (n_ones if mid < 0 else 0) >= target:
            lo = mid
        else:
            hi = mid
        step += 1
        if step % 4 == 0:
            at_lo = _count_above(log_lam, inv_slope, lo, m, bmax)
            at_hi = _count_above(log_lam, inv_slope, hi, m, bmax)
            still = at_lo != at_hi
            frozen += float(at_lo[~still].sum())
            log_lam, inv_slope = log_lam[still], inv_slope[still]
            if float((at_lo - at_hi).sum()) == between:
                break
            between = float((at_lo - at_hi).sum())
    return lo, hi


# ---------------------------------------------------------------------------- policies


class ThresholdPolicy:
    """Per-query rule: give a query every b whose (envelope) gain Δ̂(b) exceeds a threshold.

    ``fit`` on held-out gains sets ``threshold_`` to the gain of the last sample `greedy` hands
    out there, i.e. the T'-th largest Δ̂_i(b), b > m, with T' = ⌊B·n⌋ - n·m. ``allocate`` then
    gives each new query m samples plus every b > m with Δ̂(b) > threshold_, plus each b with
    Δ̂(b) = threshold_ with probability ``p_tie_`` = (T' - #{Δ̂ > t}) / #{Δ̂ = t}. On the held-out
    set the expected spend is exactly ⌊B·n⌋; the realised spend differs from it only through the
    random ties (none when the gains have no ties at the threshold). Decisions for different
    queries are independent, so queries may come one at a time or in batches; tie draws come from
    a generator seeded with ``random_state`` at ``fit``, so a sequence of calls is repeatable.
    Gains are replaced by their concave envelope (`concave_envelope`) before thresholding.
    """

    def __init__(
        self,
        budget: float,
        max_per_query: int,
        min_per_query: int = 0,
        random_state: int | np.random.Generator | None = 0,
    ) -> None:
        self.budget = budget
        self.max_per_query = max_per_query
        self.min_per_query = min_per_query
        self.random_state = random_state

    def fit(self, gains_heldout: npt.ArrayLike) -> Self:
        """Calibrate threshold_ and p_tie_ on held-out gains of shape (n, max_per_query)."""
        bmax = _check_cap(self.max_per_query)
        b, m = _check_budget(self.budget, bmax, self.min_per_query)
        g = _check_gains(gains_heldout, "gains_heldout")
        _check_columns(g, bmax, "gains_heldout")
        n = g.shape[0]
        extra = min(total_samples(n, b), n * bmax) - n * m
        if extra <= 0:
            self.threshold_, self.p_tie_ = math.inf, 0.0
        else:
            _, v, n_above, n_tied = _take_top(_envelope(g[:, m:]), extra)
            self.threshold_, self.p_tie_ = v, (extra - n_above) / n_tied
        self.rng_ = np.random.default_rng(self.random_state)
        return self

    def allocate(self, gains: npt.ArrayLike) -> IntArray:
        """Samples for each new query, shape (k,), from its gains: shape (k, Bmax) or (Bmax,)."""
        if not hasattr(self, "threshold_"):
            raise NotFittedError(
                "this ThresholdPolicy is not fitted yet; call .fit(gains_heldout) first"
            )
        m = _as_int(self.min_per_query, "min_per_query")
        g = _check_gains(np.atleast_2d(np.asarray(gains, dtype=float)))
        _check_columns(g, self.max_per_query, "gains")
        env = _envelope(g[:, m:])
        n_above = (env > self.threshold_).sum(axis=1)
        n_tied = (env == self.threshold_).sum(axis=1)
        return m + n_above + self.rng_.binomial(n_tied, self.p_tie_).astype(np.int64)


class BinnedPolicy:
    """The paper's binned allocation: one sample count per bin of a difficulty score.

    ``fit`` cuts the held-out score at its quantiles 1/K, ..., (K-1)/K (``edges_``; a query with
    score s falls in bin k = #{edges_ <= s}) and chooses integer counts b_k (``budget_per_bin_``)
    to maximise the held-out mean of the bin-average value, Σ_k w_k Q̂_k(b_k), with w_k = n_k / n
    the bin fractions and Q̂_k the concave envelope of the bin-mean q, subject to the held-out
    spend Σ_k n_k b_k <= ⌊B·n⌋ and m <= b_k <= Bmax. It is solved greedily: sample (k, b) in
    decreasing order of the bin-mean gain Δ̂_k(b) (ties: lower k, then lower b), each taken while
    its cost n_k still fits. This is exact when the bins are of equal size; with unequal sizes it
    is the greedy for this knapsack, exact up to the samples left over. ``allocate`` gives a new
    query the count of its bin, independently of other queries.
    """

    def __init__(
        self, budget: float, max_per_query: int, n_bins: int = 10, min_per_query: int = 0
    ) -> None:
        self.budget = budget
        self.max_per_query = max_per_query
        self.n_bins = n_bins
        self.min_per_query = min_per_query

    def fit(self, pred_heldout_score: npt.ArrayLike, gains_heldout: npt.ArrayLike) -> Self:
        """Learn edges_ and budget_per_bin_ from held-out scores (n,) and gains (n, Bmax)."""
        bmax = _check_cap(self.max_per_query)
        b, m = _check_budget(self.budget, bmax, self.min_per_query)
        k_bins = _as_int(self.n_bins, "n_bins")
        if k_bins < 1:
            raise ConfigError(f"n_bins must be >= 1, got {k_bins}; pass e.g. n_bins=10")
        s = _check_score(pred_heldout_score)
        g = _check_gains(gains_heldout, "gains_heldout")
        _check_columns(g, bmax, "gains_heldout")
        if s.size != g.shape[0] or s.size == 0:
            raise ConfigError(
                f"pred_heldout_score has {s.size} entries and gains_heldout {g.shape[0]} rows; "
                "pass one score per held-out query (and at least one query)"
            )
        n = s.size
        edges = np.quantile(s, np.arange(1, k_bins) / k_bins)
        bins = np.searchsorted(edges, s, side="right")
        sizes = np.bincount(bins, minlength=k_bins)
        sums = np.zeros((k_bins, bmax))
        np.add.at(sums, bins, g)
        mean_gains = sums / np.maximum(sizes, 1)[:, None]
        env = _envelope(mean_gains[:, m:])
        per_bin = np.full(k_bins, m, dtype=np.int64)
        left = min(total_samples(n, b), n * bmax) - n * m
        k_idx, b_idx = np.nonzero(np.broadcast_to(sizes[:, None] > 0, env.shape))
        for k in k_idx[np.lexsort((b_idx, k_idx, -env[k_idx, b_idx]))]:
            if sizes[k] <= left:  # once a bin's sample does not fit, none of its later ones do
                per_bin[k] += 1
                left -= int(sizes[k])
        self.edges_ = edges
        self.budget_per_bin_ = per_bin
        return self

    def allocate(self, score: npt.ArrayLike) -> IntArray:
        """Samples for each new query from its difficulty score, shape (k,)."""
        if not hasattr(self, "edges_"):
            raise NotFittedError(
                "this BinnedPolicy is not fitted yet; call .fit(pred_heldout_score, gains_heldout)"
            )
        s = _check_score(np.atleast_1d(np.asarray(score, dtype=float)))
        return self.budget_per_bin_[np.searchsorted(self.edges_, s, side="right")]
