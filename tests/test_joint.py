"""howhard.joint: the hull and the hull greedy against brute force over every allocation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from howhard import joint
from howhard.errors import BudgetError, ConfigError


def brute_hull(costs: np.ndarray, values: np.ndarray) -> set[int]:
    """The upper concave hull's vertices up to the best point, by definition: j is one unless a
    point no costlier is at least as good (among equal points the lower index stands), or a chord
    between a cheaper and a costlier point passes on or above it."""
    out = set()
    idx = range(len(costs))
    for j in idx:
        beaten = any(
            (costs[a] < costs[j] and values[a] >= values[j])
            or (costs[a] == costs[j] and (values[a], -a) > (values[j], -j))
            for a in idx
        )
        under = any(
            costs[a] < costs[j] < costs[b]
            and values[a] + (values[b] - values[a]) * (costs[j] - costs[a]) / (costs[b] - costs[a])
            >= values[j] - 1e-12
            for a, b in itertools.product(idx, repeat=2)
        )
        if not beaten and not under:
            out.add(j)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_upper_hull_matches_the_definition(seed):
    rng = np.random.default_rng(seed)
    costs = rng.integers(0, 6, 7).astype(float)
    values = np.round(rng.random(7), 1)
    hull = joint.upper_hull(costs, values)
    assert set(hull) == brute_hull(costs, values)
    assert np.all(np.diff(costs[hull]) > 0) and np.all(np.diff(values[hull]) > 0)
    slopes = np.diff(values[hull]) / np.diff(costs[hull])
    assert np.all(np.diff(slopes) < 0)


def brute_best(values: np.ndarray, costs: np.ndarray, budget_total: float) -> float:
    n, o = values.shape
    best = -np.inf
    for combo in itertools.product(range(o), repeat=n):
        if costs[list(combo)].sum() <= budget_total + 1e-9:
            best = max(best, values[np.arange(n), combo].sum())
    return float(best)


def random_instance(seed: int) -> tuple[np.ndarray, joint.Options]:
    rng = np.random.default_rng(seed)
    opts = joint.options([3, 2], [1.0, 2.5])
    n = 3
    # concave best-of-k curves per decoder, as q(b) from per-sample rates
    lam = rng.random((n, 2)) * 0.8
    q = [1 - (1 - lam[:, d : d + 1]) ** np.arange(top + 1) for d, top in enumerate((3, 2))]
    return joint.option_values(q, opts), opts


@pytest.mark.parametrize("seed", range(8))
def test_at_every_breakpoint_the_greedy_is_the_integer_optimum(seed):
    values, opts = random_instance(seed)
    n = values.shape[0]
    hulls = [joint.upper_hull(opts.cost, v) for v in values]
    segs = sorted(
        (-(v[b] - v[a]) / (opts.cost[b] - opts.cost[a]), opts.cost[b] - opts.cost[a])
        for v, h in zip(values, hulls, strict=True)
        for a, b in itertools.pairwise(h)
    )
    spent = sum(opts.cost[h[0]] for h in hulls)
    for _, extra in [(0.0, 0.0), *segs]:
        spent += extra
        alloc = joint.allocate_joint(values, opts.cost, spent / n)
        got = values[np.arange(n), alloc.choice].sum()
        assert got == pytest.approx(brute_best(values, opts.cost, spent))
        assert alloc.spend <= spent / n + 1e-9


@pytest.mark.parametrize("seed", range(8))
def test_between_breakpoints_the_greedy_stays_feasible_and_below_the_optimum(seed):
    values, opts = random_instance(seed)
    n = values.shape[0]
    for budget in np.linspace(0, 5.0, 21):
        alloc = joint.allocate_joint(values, opts.cost, budget)
        got = values[np.arange(n), alloc.choice].sum()
        assert opts.cost[alloc.choice].sum() <= budget * n + 1e-9
        assert got <= brute_best(values, opts.cost, budget * n) + 1e-12


def test_routing_alone_sends_the_largest_predicted_gains_to_strong():
    rng = np.random.default_rng(3)
    n = 20
    q_w = np.column_stack([np.zeros(n), rng.random(n) * 0.5])
    q_s = np.column_stack([np.zeros(n), q_w[:, 1] + rng.random(n) * 0.3 - 0.05])
    opts = joint.options([1, 1], [1.0, 4.0], min_samples=1, max_k=1)
    values = joint.option_values([q_w, q_s], opts)
    alloc = joint.allocate_joint(values, opts.cost, 1.0 + 3.0 * 5 / n)  # room for 5 strong calls
    strong = opts.decoder[alloc.choice] == 1
    gain = q_s[:, 1] - q_w[:, 1]
    want = np.argsort(-gain)[: min(5, int((gain > 0).sum()))]
    assert set(np.flatnonzero(strong)) == set(want)
    assert alloc.price == pytest.approx(np.sort(gain)[::-1][len(want) - 1] / 3.0)


@pytest.mark.parametrize("seed", range(6))
def test_stream_price_spends_the_most_that_fits_checked_against_every_price(seed):
    rng = np.random.default_rng(seed)
    n = 6
    opts = joint.options([3, 2], [1.0, 4.0], min_samples=1)
    values = np.sort(rng.random((n, opts.k.size)), axis=1) * rng.random((n, 1))
    costs = opts.cost * rng.uniform(0.5, 2.0, (n, 1))  # per-query prices
    rows = np.arange(n)

    def spend(price: float) -> float:
        return float(costs[rows, joint.priced_choice(values, costs, price)].mean())

    # every price at which some query's choice can change: each pair of its options' slope
    prices = [np.inf] + [
        (values[i, b] - values[i, a]) / (costs[i, b] - costs[i, a])
        for i in range(n)
        for a in range(opts.k.size)
        for b in range(opts.k.size)
        if costs[i, b] > costs[i, a] and values[i, b] > values[i, a]
    ]
    for budget in np.linspace(costs.min(axis=1).mean(), costs.max(axis=1).mean() + 1.0, 15):
        best = max(s for s in map(spend, prices) if s <= budget + 1e-9)
        price = joint.stream_price(values, costs, budget)
        assert spend(price) <= budget + 1e-9
        assert spend(price) == pytest.approx(best, abs=1e-12)


def test_stream_price_is_not_the_greedys_last_slope_after_a_skip():
    # query 0's one step up costs 10 and gains 1 (slope 0.1); query 1's costs 1 and gains 0.01.
    # At a budget of 1 per query the greedy skips query 0's step and takes query 1's: its last
    # slope, 0.01, would send query 0 up too if each query decided alone (5.5 per query).
    values = np.array([[0.0, 1.0], [0.0, 0.01]])
    costs = np.array([0.0, 1.0]) * np.array([[10.0], [1.0]])
    greedy = joint.allocate_joint(values, costs, 1.0)
    assert greedy.choice.tolist() == [0, 1] and greedy.price == pytest.approx(0.01)
    assert costs[[0, 1], joint.priced_choice(values, costs, greedy.price)].mean() == 5.5
    price = joint.stream_price(values, costs, 1.0)
    assert price == np.inf  # the steepest step alone does not fit: nobody moves up
    assert joint.stream_price(values, costs, 5.0) == pytest.approx(0.1)  # query 0's step fits
    assert joint.stream_price(values, costs, 5.5) == pytest.approx(0.01)  # both fit
    with pytest.raises(BudgetError, match="cheapest"):
        joint.stream_price(values, costs + 1.0, 0.5)


def test_options_and_errors():
    opts = joint.options([2, 1], [1.0, 3.0])
    assert opts.decoder.tolist() == [0, 0, 0, 1]
    assert opts.k.tolist() == [0, 1, 2, 1]
    assert opts.cost.tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="> 0"):
        joint.options([2], [0.0])
    with pytest.raises(BudgetError, match="b up to"):
        joint.option_values([np.zeros((2, 2)), np.zeros((2, 2))], opts)
    one = joint.options([2, 1], [1.0, 3.0], min_samples=1)
    values = np.ones((2, one.k.size))
    with pytest.raises(BudgetError, match="cheapest"):
        joint.allocate_joint(values, one.cost, 0.5)
