"""Budget, share and knob pacing (pure): long streams meet their target, also when traffic drifts
(the knob of a menu policy family: driven by replays of pooled samples)."""

import numpy as np
import pytest

from howhard.allocate import ThresholdPolicy, binary_gains
from howhard.errors import ConfigError
from howhard.menu import MenuData, aligned, random_orders, replay
from howhard.pool import read_pool
from howhard.serve.pacing import BudgetPacer, KnobPacer, SharePacer, spend_curve
from howhard.stopping import Escalate

K = 16


def stream(a: float, b: float, n: int, seed: int) -> np.ndarray:
    """Gains of n queries whose success rates are Beta(a, b)."""
    return binary_gains(np.random.default_rng(seed).beta(a, b, n), K)


CALIBRATION = stream(0.5, 1.0, 300, 0)


@pytest.mark.parametrize("budget", [1.5, 4.0, 8.0])
@pytest.mark.parametrize(
    "mix",
    [(0.5, 1.0), (0.2, 2.0), (2.0, 0.5), (0.1, 0.1)],
    ids=["as-calibrated", "harder", "easier", "extremes"],
)
def test_a_thousand_requests_average_the_budget_within_5_percent(budget, mix):
    pacer = BudgetPacer(budget, K, CALIBRATION, rng=np.random.default_rng(1))
    ks = [pacer.decide(g) for g in stream(*mix, 1000, seed=2)]
    assert abs(np.mean(ks) - budget) <= 0.05 * budget
    assert pacer.average == np.mean(ks) and pacer.spent == sum(ks)
    assert min(ks) >= 1 and max(ks) <= K


def test_a_drift_in_the_middle_of_the_stream_is_absorbed():
    pacer = BudgetPacer(4.0, K, CALIBRATION, rng=np.random.default_rng(1))
    mix = np.concatenate([stream(0.5, 1.0, 500, 3), stream(3.0, 0.3, 500, 4)])
    ks = np.array([pacer.decide(g) for g in mix])
    assert abs(ks.mean() - 4.0) <= 0.2
    assert abs(ks[500:].mean() - 4.0) <= 0.2  # the second half alone is also paced


@pytest.mark.parametrize(
    "mix", [(0.2, 2.0), (2.0, 0.5), (0.1, 0.1)], ids=["harder", "easier", "extremes"]
)
def test_traffic_unlike_the_calibration_gets_the_budget_from_the_first_hundred_requests(mix):
    # The calibration rows leave the window faster than requests arrive: the threshold follows
    # the new traffic within about a horizon (50), not only after 500 requests.
    ks = []
    for seed in range(3):
        pacer = BudgetPacer(4.0, K, CALIBRATION, rng=np.random.default_rng(seed))
        ks += [pacer.decide(g) for g in stream(*mix, 100, seed=10 + seed)]
    assert abs(np.mean(ks) - 4.0) <= 0.1 * 4.0


def test_without_drift_it_decides_like_the_calibrated_threshold_policy():
    # Same traffic as the calibration: the paced decisions give the same samples to the same
    # queries as a ThresholdPolicy fitted once (up to tie draws and the small debt correction).
    gains = stream(0.5, 1.0, 400, 5)
    fixed = ThresholdPolicy(4.0, K, 1).fit(CALIBRATION).allocate(gains)
    pacer = BudgetPacer(4.0, K, CALIBRATION, rng=np.random.default_rng(1))
    paced = np.array([pacer.decide(g) for g in gains])
    assert np.corrcoef(fixed, paced)[0, 1] > 0.95
    assert abs(int(fixed.sum()) - int(paced.sum())) <= 0.05 * fixed.sum()


def test_harder_queries_get_more_samples_in_the_useful_range():
    pacer = BudgetPacer(4.0, K, CALIBRATION, rng=np.random.default_rng(1))
    for g in CALIBRATION:
        pacer.decide(g)
    lam = np.array([0.9, 0.3, 0.1, 0.001])
    ks = [pacer.decide(g) for g in binary_gains(lam, K)]
    assert ks[0] <= ks[1] <= ks[2]  # harder but solvable: more samples
    assert ks[3] <= ks[2]  # hopeless: not worth the samples


def test_budget_pacer_refuses_bad_configuration():
    with pytest.raises(ConfigError, match="budget 20 is outside"):
        BudgetPacer(20, K, CALIBRATION)
    with pytest.raises(ConfigError, match="one row of 16 gains"):
        BudgetPacer(4, K, CALIBRATION[:, :8])
    with pytest.raises(ConfigError, match="pass 16 gains"):
        BudgetPacer(4, K, CALIBRATION).decide(np.zeros(3))


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_share_pacer_routes_the_target_share_under_drift(share):
    rng = np.random.default_rng(0)
    pacer = SharePacer(share, rng.random(300), rng=np.random.default_rng(1))
    routed = [pacer.decide(s) for s in rng.random(1000) ** 3]  # drifted towards low scores
    assert abs(np.mean(routed) - share) <= 0.02
    assert pacer.routed == sum(routed)


@pytest.mark.parametrize("power", [3.0, 0.3], ids=["lower", "higher"])
def test_share_pacer_routes_the_share_from_the_first_hundred_requests(power):
    routed = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        pacer = SharePacer(0.3, rng.random(300), rng=np.random.default_rng(seed + 1))
        routed += [pacer.decide(s) for s in rng.random(100) ** power]
    assert abs(np.mean(routed) - 0.3) <= 0.05


def test_share_pacer_routes_the_highest_scores():
    pacer = SharePacer(0.5, np.linspace(0, 1, 101), rng=np.random.default_rng(1))
    assert pacer.decide(0.99) and not pacer.decide(0.01)


def test_share_pacer_splits_ties_at_random_to_meet_the_share():
    pacer = SharePacer(0.3, np.full(100, 0.5), rng=np.random.default_rng(1))
    routed = [pacer.decide(0.5) for _ in range(1000)]
    assert abs(np.mean(routed) - 0.3) <= 0.02


def test_share_pacer_refuses_bad_configuration():
    with pytest.raises(ConfigError, match="strong share must lie in"):
        SharePacer(1.5, [0.1])
    with pytest.raises(ConfigError, match="at least one query"):
        SharePacer(0.5, [])


# ---------------------------------------------------------------------------- the knob of a menu


def _menu_data(workdir, shift: float, seed: int) -> MenuData:
    from menu_serving import decoders, menu_pools

    small, large = menu_pools(workdir, 200, seed=seed, shift=shift, tag=f"-{seed}")
    pools = aligned([read_pool(small), read_pool(large)])
    costs = [d.pool_costs(p) for d, p in zip(decoders(small, large), pools, strict=True)]
    return MenuData(pools, costs, np.full((len(pools[0]), 2), np.nan))


class ReplayTraffic:
    """A replay-like stub of served traffic: request t is a random query of ``data``, answered
    by the family's policy at the knob asked, in a random order of its pooled samples (8
    replays per knob, computed once); its cost is what that replay spent."""

    def __init__(self, family, data: MenuData, knobs, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.n = len(data.pools[0])
        self.cost = {
            float(k): np.stack(
                [
                    replay(
                        family.at(k),
                        data.pools,
                        data.costs,
                        data.predictions,
                        random_orders(data.pools, rng),
                    ).cost
                    for _ in range(8)
                ]
            )
            for k in knobs
        }
        self.rng = rng

    def __call__(self, knob: float) -> float:
        return float(self.cost[knob][self.rng.integers(8), self.rng.integers(self.n)])


@pytest.fixture(scope="module")
def menu_traffic(tmp_path_factory):
    """The cascade fitted and its spend curve on calibration pools, and four kinds of traffic."""
    workdir = tmp_path_factory.mktemp("knob")
    calibration = _menu_data(workdir, 0.0, 0)
    family = Escalate().fit(calibration, "majority")
    knobs, spends = spend_curve(family, calibration, "majority", budget=5.0)
    traffic = {
        name: ReplayTraffic(family, _menu_data(workdir, shift, seed), knobs, seed)
        for name, shift, seed in (
            ("as-calibrated", 0.0, 1),
            ("harder", 0.35, 2),
            ("easier", -0.3, 3),
        )
    }
    return knobs, spends, traffic


def test_the_spend_curve_is_the_replayed_mean_cost_at_every_knob_of_the_cascade(tmp_path):
    data = _menu_data(tmp_path, 0.0, 0)
    family = Escalate().fit(data, "majority")
    knobs, spends = spend_curve(family, data, "majority", budget=5.0)
    assert knobs.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]  # all of a discrete range this short
    for k, s in zip(knobs, spends, strict=True):
        assert s == replay(family.at(k), data.pools, data.costs).mean_cost
    assert spends[0] == 1.0 and np.all(np.diff(spends) > 0)


@pytest.mark.parametrize("budget", [3.0, 5.0, 7.0])
@pytest.mark.parametrize("kind", ["as-calibrated", "harder", "easier", "drifting"])
def test_a_thousand_menu_requests_average_the_cost_budget_within_5_percent(
    menu_traffic, budget, kind
):
    knobs, spends, traffic = menu_traffic
    pacer = KnobPacer(budget, knobs, spends, rng=np.random.default_rng(4))
    costs = []
    for t in range(1000):
        source = kind if kind != "drifting" else ("easier" if t < 500 else "harder")
        knob, expected = pacer.next()
        costs.append(traffic[source](knob))
        pacer.record(expected, costs[-1])
    assert abs(np.mean(costs) - budget) <= 0.05 * budget
    assert pacer.average == pytest.approx(np.mean(costs))
    if kind == "drifting":  # the second half alone is also paced
        assert abs(np.mean(costs[500:]) - budget) <= 0.05 * budget


def test_harder_traffic_is_answered_with_a_lower_knob(menu_traffic):
    knobs, spends, traffic = menu_traffic
    used = {}
    for kind in ("easier", "harder"):
        pacer = KnobPacer(5.0, knobs, spends, rng=np.random.default_rng(4))
        ks = []
        for _ in range(500):
            knob, expected = pacer.next()
            ks.append(knob)
            pacer.record(expected, traffic[kind](knob))
        used[kind] = np.mean(ks[100:])
    assert used["harder"] < used["easier"]


def test_knob_pacer_mixes_the_two_knobs_that_bracket_the_target():
    pacer = KnobPacer(2.5, [1.0, 2.0, 4.0], [1.0, 2.0, 3.0], horizon=10**9)
    knobs = [pacer.next()[0] for _ in range(4000)]
    assert set(knobs) == {2.0, 4.0} and abs(np.mean(knobs) - 3.0) < 0.05  # 2.5 = half 2, half 3
    flat = KnobPacer(2.0, [1.0, 2.0, 3.0], [1.0, 2.0, 2.0])
    assert flat.next() == (3.0, 2.0)  # a flat stretch resolves to its largest knob


def test_knob_pacer_refuses_a_curve_that_is_not_one():
    with pytest.raises(ConfigError, match="spends not decrease"):
        KnobPacer(2.0, [1.0, 2.0], [2.0, 1.0])
    with pytest.raises(ConfigError, match="as many spends as knobs"):
        KnobPacer(2.0, [1.0, 2.0], [1.0])
