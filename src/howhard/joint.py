"""Joint routing × samples: choose each query's decoder and sample count under one cost budget.

Two decoders (a weak, cheap one and a strong, costly one; `howhard.routing`) each have a pool of
the same queries. Query x may take k samples of decoder d at cost k·c_d (c_d: tokens or a price
per sample) and is then worth v(x, d, k), its expected best-of-k reward (``pool.q``), or for an
allocator the predicted q̂(x, d, k). An *option* is one (d, k); k = 0 (no answer, worth 0) is an
option too unless a minimum of one sample is asked. The problem is

    maximise Σ_x v(x, o_x)   subject to   Σ_x cost(o_x) <= C·n,

a multiple-choice knapsack. Its Lagrangian relaxation (a price λ per unit of cost; each query
takes argmax_o v(x, o) - λ·cost(o)) only ever picks vertices of the upper concave hull of the
query's (cost, value) points, and as λ falls each query climbs its hull one segment at a time.
So `allocate_joint` starts every query at its cheapest option and takes hull segments in
decreasing order of slope (value per unit cost), each while the budget still pays for it: this
is exact for the LP relaxation up to the first segment that does not fit (the optimum then takes
a fraction of it), and the integer allocation it returns is optimal for its own spend as long as
no segment was skipped. After a skip it keeps taking later segments of other queries that still
fit (never a segment whose predecessor on its query's hull was skipped). The price λ is the
slope of the last segment taken.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from howhard.errors import BudgetError, ConfigError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
_TIE = 1 - 1e-12  # slopes this close to a price count as equal to it (float rounding)


@dataclass(frozen=True)
class Options:
    """The options every query may take: decoder index, sample count and cost of each."""

    decoder: IntArray
    k: IntArray
    cost: FloatArray


def options(
    max_samples: Sequence[int],
    costs: Sequence[float],
    min_samples: int = 0,
    max_k: int | None = None,
) -> Options:
    """All (d, k) with 1 <= k <= max_samples[d] (and k <= max_k), plus (0, 0) when
    min_samples = 0; cost k·costs[d]. Decoder 0 is the weak one by convention."""
    if len(max_samples) != len(costs) or not costs:
        raise ConfigError("give one sample cap and one per-sample cost for each decoder")
    bad = [c for c in costs if not (np.isfinite(c) and c > 0)]
    if bad:
        raise ConfigError(f"per-sample costs must be finite and > 0, got {bad[0]!r}")
    if min_samples not in (0, 1):
        raise ConfigError(f"min_samples must be 0 or 1, got {min_samples}")
    pairs = [(0, 0)] if min_samples == 0 else []
    pairs += [
        (d, k) for d, top in enumerate(max_samples) for k in range(1, min(top, max_k or top) + 1)
    ]
    decoder, ks = (np.array(x, dtype=np.int64) for x in zip(*pairs, strict=True))
    return Options(decoder, ks, ks * np.asarray(costs, dtype=float)[decoder])


def option_values(q: Sequence[npt.ArrayLike], opts: Options) -> FloatArray:
    """v(x, o) for every query and option, shape (n, n_options), from each decoder's q(x, b),
    b = 0..its cap (shape (n, cap + 1), q(x, 0) = 0; e.g. ``pool.q(cap)``)."""
    qs = [np.asarray(x, dtype=float) for x in q]
    n = {x.shape[0] for x in qs}
    if len(n) != 1:
        raise ConfigError(f"the decoders' q tables have different numbers of queries: {sorted(n)}")
    for d, x in enumerate(qs):
        top = int(opts.k[opts.decoder == d].max(initial=0))
        if x.ndim != 2 or x.shape[1] <= top:
            raise BudgetError(f"q of decoder {d} has shape {x.shape}; options need b up to {top}")
    return np.stack([qs[d][:, k] for d, k in zip(opts.decoder, opts.k, strict=True)], axis=1)


def upper_hull(costs: FloatArray, values: FloatArray) -> list[int]:
    """Indices of the vertices of the upper concave hull of the points (costs, values), from the
    cheapest point (the best-valued among equally cheap ones) up to the best-valued point, by
    increasing cost; each segment has a positive slope, the slopes decrease. Values within
    1e-12 of each other count as equal (a float rounding is no gain worth paying for)."""
    order = np.lexsort((-values, costs))
    hull: list[int] = []
    for j in order.tolist():
        if hull and costs[j] == costs[hull[-1]]:
            continue  # an equally cheap, no better point
        if hull and values[j] <= values[hull[-1]] + 1e-12:
            continue  # costs more, worth no more (up to rounding: no price buys a 1e-17 gain)
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies on or below the chord a -> j (up to rounding)
            left = (values[b] - values[a]) * (costs[j] - costs[a])
            right = (values[j] - values[a]) * (costs[b] - costs[a])
            if left <= right + 1e-12 * (abs(left) + abs(right)):
                hull.pop()
            else:
                break
        hull.append(j)
    return hull


@dataclass(frozen=True)
class JointAllocation:
    """Each query's chosen option (an index into the options), the mean cost per query and the
    price (value per unit cost) of the last hull segment taken (inf when none was; a stream's
    price is `stream_price`)."""

    choice: IntArray
    spend: float
    price: float


def allocate_joint(values: npt.ArrayLike, costs: npt.ArrayLike, budget: float) -> JointAllocation:
    """Greedy on hull segments by decreasing slope under a mean cost of ``budget`` per query (see
    the module doc). ``values`` (n, n_options); ``costs`` (n_options,), or (n, n_options) when an
    option's cost differs between queries (per-token prices). Ties in slope go to the lower
    query index."""
    c, choice, left, segments = _segments(values, costs, budget)
    rows = np.arange(choice.size)
    blocked: set[int] = set()
    price = np.inf
    for slope, i, _, b, extra in segments:
        if i in blocked:
            continue
        if extra <= left + 1e-9:
            choice[i] = b
            left -= extra
            price = slope
        else:
            blocked.add(i)
    return JointAllocation(choice, float(c[rows, choice].mean()), float(price))


def stream_price(values: npt.ArrayLike, costs: npt.ArrayLike, budget: float) -> float:
    """The price λ at which `priced_choice` spends the most it can on these queries without
    spending more than ``budget`` per query (inf: only the cheapest options fit): a stream's
    price calibrated on held-out queries.

    At price λ each query climbs its hull through every segment of slope >= λ, so the spend is
    the cheapest options' plus all the segments of slope >= λ, nonincreasing in λ; the price
    returned is the lowest hull slope whose segments, with every steeper one, fit. Not
    `allocate_joint`'s price: after a segment that does not fit, that greedy goes on taking
    cheaper segments of lower slope, and its last slope can lie far below what the budget
    affords when every query decides alone (a stream at that price takes the skipped segments
    too). Shapes as in `allocate_joint`."""
    _, _, left, segments = _segments(values, costs, budget)
    price, j = np.inf, 0
    while j < len(segments):
        slope = segments[j][0]
        tied = j
        while tied < len(segments) and segments[tied][0] >= slope * _TIE:
            tied += 1  # priced_choice takes these together at price `slope`
        extra = sum(segment[4] for segment in segments[j:tied])
        if extra > left + 1e-9:
            break
        left -= extra
        price, j = slope, tied
    return float(price)


def _segments(
    values: npt.ArrayLike, costs: npt.ArrayLike, budget: float
) -> tuple[FloatArray, IntArray, float, list[tuple[float, int, int, int, float]]]:
    """What both allocators start from: the costs (n, n_options), each query's cheapest hull
    vertex, the budget left over all queries after those (BudgetError when they cost more), and
    every hull segment as (slope, query, its step on the hull, the vertex it ends at, its extra
    cost), by decreasing slope, ties to the lower query and step."""
    v, c, hulls = _hulls(values, costs)
    n = v.shape[0]
    cheapest = np.array([h[0] for h in hulls], dtype=np.int64)
    spent = c[np.arange(n), cheapest]
    left = float(budget) * n - float(spent.sum())
    if left < -1e-9 * max(1.0, abs(budget) * n):
        raise BudgetError(
            f"budget {budget:g} per query is below the cheapest option's mean cost "
            f"{spent.mean():g}; raise the budget or allow k = 0"
        )
    segments = [
        ((v[i, b] - v[i, a]) / (c[i, b] - c[i, a]), i, step, b, c[i, b] - c[i, a])
        for i, h in enumerate(hulls)
        for step, (a, b) in enumerate(itertools.pairwise(h))
    ]
    segments.sort(key=lambda s: (-s[0], s[1], s[2]))
    return c, cheapest, left, segments


def priced_choice(values: npt.ArrayLike, costs: npt.ArrayLike, price: float) -> IntArray:
    """Each query alone at a price λ per unit cost (the stream rule): climb the query's hull from
    its cheapest vertex while the next segment's slope is >= λ, i.e. take argmax_o v(x, o) - λ
    cost(o) with ties going to the costlier vertex. With λ the ``price`` of `allocate_joint` on
    the same queries this is its allocation wherever no segment was skipped; λ = inf keeps the
    cheapest option. Shapes as in `allocate_joint`."""
    if not price >= 0:
        raise ConfigError(f"price must be >= 0 (inf: cheapest option only), got {price!r}")
    v, c, hulls = _hulls(values, costs)
    choice = np.empty(v.shape[0], dtype=np.int64)
    for i, h in enumerate(hulls):
        j = 0
        while (
            j + 1 < len(h)
            and v[i, h[j + 1]] - v[i, h[j]] >= price * (c[i, h[j + 1]] - c[i, h[j]]) * _TIE
        ):
            j += 1
        choice[i] = h[j]
    return choice


def _hulls(
    values: npt.ArrayLike, costs: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, list[list[int]]]:
    """The values, the costs broadcast to (n, n_options), and each query's `upper_hull`."""
    v = np.asarray(values, dtype=float)
    c = np.asarray(costs, dtype=float)
    if (
        v.ndim != 2
        or c.shape not in ((v.shape[1],), v.shape)
        or not (np.all(np.isfinite(v)) and np.all(np.isfinite(c)))
    ):
        raise ConfigError(
            f"values and costs must be finite, values of shape (n_queries, n_options) and costs "
            f"(n_options,) or the same shape; got {v.shape} and {c.shape}"
        )
    c = np.broadcast_to(c, v.shape)
    return v, c, [upper_hull(c[i], v[i]) for i in range(v.shape[0])]
