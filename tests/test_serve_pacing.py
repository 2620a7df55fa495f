"""Budget and share pacing (pure): long streams meet their target, also when traffic drifts."""

import numpy as np
import pytest

from howhard.allocate import ThresholdPolicy, binary_gains
from howhard.errors import ConfigError
from howhard.serve.pacing import BudgetPacer, SharePacer

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
