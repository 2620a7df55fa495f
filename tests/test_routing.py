import itertools
import json

import numpy as np
import pytest

from howhard.errors import ConfigError, NotFittedError, PoolError
from howhard.pool import Pool
from howhard.predict import SuccessPredictor
from howhard.reports import json_ready
from howhard.reports import routing_markdown as markdown
from howhard.reports import routing_plot as plot
from howhard.routing import (
    RoutingPolicy,
    evaluate_routing,
    pair_pools,
    preference_counts,
    routed_success,
    routing_gain,
    share_to_reach,
    top_share_curve,
)


def make_pool(rewards, ids=None):
    ids = tuple(ids or (f"q{i}" for i in range(len(rewards))))
    return Pool(ids, ids, tuple(np.asarray(r, dtype=float) for r in rewards))


# The hand-computed case: gains g = [1, 0, 0.5, -1].
WEAK = make_pool([[0, 0], [1, 1], [0, 1], [1, 1]])
STRONG = make_pool([[1, 1], [1, 1], [1, 1], [0, 0]])


def random_pools(n, rng, n_w=4, n_s=3):
    pw, ps = rng.random(n), rng.random(n)
    weak = make_pool([(rng.random(n_w) < p).astype(float) for p in pw])
    strong = make_pool([(rng.random(n_s) < p).astype(float) for p in ps])
    return weak, strong


def test_preference_counts_split_ties_and_equal_half_of_one_plus_gain_for_binary():
    wins, trials = preference_counts(WEAK, STRONG)
    # q2: strong 1 vs weak 0 twice (wins), 1 vs 1 twice (ties) -> 2 + 1
    np.testing.assert_array_equal(wins, [4, 2, 3, 0])
    np.testing.assert_array_equal(trials, [4, 4, 4, 4])
    np.testing.assert_allclose(wins / trials, (1 + routing_gain(WEAK, STRONG)) / 2)
    weak, strong = random_pools(30, np.random.default_rng(1))
    wins, trials = preference_counts(weak, strong)
    np.testing.assert_allclose(wins / trials, (1 + routing_gain(weak, strong)) / 2)
    assert np.all(trials == 12)


def test_preference_counts_brute_force_on_continuous_rewards():
    weak = make_pool([[0.2, 0.5, 0.9], [0.3]])
    strong = make_pool([[0.5, 0.1], [0.3, 0.4, 0.0, 0.3]])
    wins, trials = preference_counts(weak, strong)
    for i in range(2):
        pairs = list(itertools.product(strong.rewards[i], weak.rewards[i]))
        expected = sum(1.0 if s > w else 0.5 if s == w else 0.0 for s, w in pairs)
        assert wins[i] == expected and trials[i] == len(pairs)
    np.testing.assert_array_equal(wins, [1.5, 2.0])  # 0.5 beats 0.2, ties 0.5; 0.4 beats 0.3


def test_the_predictor_fits_preference_counts():
    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.column_stack(preference_counts(WEAK, STRONG))
    p = SuccessPredictor(alpha=0.0).fit(X, y).predict_proba_success(X)
    assert p.shape == (4,) and np.all((p > 0) & (p < 1))


def test_strong_pool_is_put_in_the_weak_order():
    strong = STRONG.select(["q3", "q1", "q0", "q2"])
    _, paired = pair_pools(WEAK, strong)
    assert paired.ids == WEAK.ids
    np.testing.assert_array_equal(routing_gain(WEAK, strong), [1, 0, 0.5, -1])


def test_mismatched_ids_name_the_missing_ids_and_the_fix():
    strong = make_pool([[1], [1], [0]], ids=["q0", "q1", "x9"])
    with pytest.raises(PoolError) as err:
        preference_counts(WEAK, strong)
    msg = str(err.value)
    assert "2 ids only in the weak pool (e.g. ['q2', 'q3'])" in msg
    assert "1 ids only in the strong pool (e.g. ['x9'])" in msg
    assert "pool.select" in msg
    other = Pool(STRONG.ids, ("a", "b", "c", "d"), STRONG.rewards)
    with pytest.raises(PoolError, match="query 'q0' has another prompt"):
        routing_gain(WEAK, other)


def test_routed_success_is_the_mean_of_the_chosen_decoder():
    assert routed_success(WEAK, STRONG, np.array([True, False, True, False])) == 1.0
    assert routed_success(WEAK, STRONG, np.zeros(4, bool)) == 0.625
    with pytest.raises(ConfigError, match="boolean mask with one entry per query"):
        routed_success(WEAK, STRONG, [1, 0, 1, 0])


def test_hand_computed_curves_and_shares_to_match_all_strong():
    # scores rank q1 (g 0), q2 (0.5), q3 (-1), q0 (1)
    ev = evaluate_routing(WEAK, STRONG, [0.1, 0.9, 0.5, 0.2], [0, 0.25, 0.5, 0.75, 1])
    assert (ev.all_weak, ev.all_strong, ev.oracle_best) == (0.625, 0.75, 1.0)
    assert ev.positive_gain_share == 0.5
    np.testing.assert_allclose(ev.curves["random"], [0.625, 0.65625, 0.6875, 0.71875, 0.75])
    np.testing.assert_allclose(ev.curves["oracle"], [0.625, 0.875, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(ev.curves["learned"], [0.625, 0.625, 0.75, 0.5, 0.75])
    # oracle: half of q0's gain of 1 already gives the total gain 0.5 -> 0.5 / 4 queries
    assert ev.share_to_match_strong == {"random": 1.0, "learned": 0.5, "oracle": 0.125}
    # fractional shares interpolate: learned at 0.375 = half of q2's gain
    mid = evaluate_routing(WEAK, STRONG, [0.1, 0.9, 0.5, 0.2], [0.375])
    assert mid.curves["learned"] == [0.625 + 0.25 / 4]


def test_tied_scores_count_in_expectation():
    cum = top_share_curve(np.array([1.0, 0.0, 0.5, -1.0]), np.array([0.5, 0.5, 0.0, 0.0]))
    np.testing.assert_allclose(cum, [0, 0.5, 1.0, 0.75, 0.5])
    assert share_to_reach(np.array([0.0, 0.2, 0.1]), 0.5) is None
    assert share_to_reach(np.array([0.0, 0.2, 0.1]), -0.1) == 0.0
    assert share_to_reach(np.array([0.0, 0.2, 0.6]), 0.4) == pytest.approx(0.75)


def test_no_gain_from_strong_needs_no_strong_calls():
    ev = evaluate_routing(STRONG, WEAK, None, [0.5])  # swapped: strong is worse on average
    assert set(ev.curves) == {"random", "oracle"}
    assert ev.share_to_match_strong == {"random": 0.0, "oracle": 0.0}
    assert ev.calibrated_share == []


@pytest.mark.parametrize("seed", range(5))
def test_oracle_is_the_brute_force_best_and_learned_is_the_top_k(seed):
    rng = np.random.default_rng(seed)
    weak, strong = random_pools(7, rng)
    scores = rng.random(7)
    n = len(weak)
    ev = evaluate_routing(weak, strong, scores, [k / n for k in range(n + 1)])
    order = np.argsort(-scores)
    for k in range(n + 1):
        best = max(
            routed_success(weak, strong, np.isin(np.arange(n), subset))
            for size in range(k + 1)
            for subset in itertools.combinations(range(n), size)
        )
        top = np.isin(np.arange(n), order[:k])
        assert ev.curves["oracle"][k] == pytest.approx(best)
        assert ev.curves["learned"][k] == pytest.approx(routed_success(weak, strong, top))
        assert ev.curves["oracle"][k] >= ev.curves["learned"][k] - 1e-12
        assert ev.curves["oracle"][k] >= ev.curves["random"][k] - 1e-12
    np.testing.assert_allclose(np.diff(ev.curves["random"], 2), 0, atol=1e-12)  # linear
    assert ev.curves["random"][-1] == pytest.approx(ev.all_strong)
    assert ev.curves["learned"][-1] == pytest.approx(ev.all_strong)


def test_perfect_preference_scores_route_like_the_oracle():
    weak, strong = random_pools(200, np.random.default_rng(3), n_w=8, n_s=4)
    wins, trials = preference_counts(weak, strong)
    shares = [0.05, 0.1, 0.2, 0.3]
    ev = evaluate_routing(weak, strong, wins / trials, shares)
    assert max(shares) <= ev.positive_gain_share
    np.testing.assert_allclose(ev.curves["learned"], ev.curves["oracle"])
    assert ev.share_to_match_strong["learned"] == pytest.approx(ev.share_to_match_strong["oracle"])
    assert ev.share_to_match_strong["oracle"] < 0.5 < ev.share_to_match_strong["random"]


def test_policy_threshold_and_tie_probability_are_exact():
    policy = RoutingPolicy(0.4).fit([3, 2, 2, 2, 1])  # k = 2: one above 2, 1 of 3 ties
    assert (policy.threshold_, policy.p_tie_) == (2.0, pytest.approx(1 / 3))
    np.testing.assert_array_equal(
        policy.route([5, 2.5, 1.9], np.random.default_rng(0)), [True, True, False]
    )
    draws = policy.route(np.full(30_000, 2.0), np.random.default_rng(0))
    assert abs(draws.mean() - 1 / 3) < 4 * np.sqrt(2 / 9 / 30_000)
    assert RoutingPolicy(0.3).fit(np.arange(10)).threshold_ == 7  # 0.3 * 10 is 3, not 4
    assert not RoutingPolicy(0.0).fit([1, 2]).route([5, 9]).any()
    assert RoutingPolicy(1.0).fit([1, 2]).route([1, 2]).all()


def test_policy_is_repeatable_and_checks_its_inputs():
    a = RoutingPolicy(0.5, random_state=7).fit([0, 1, 1, 2])
    b = RoutingPolicy(0.5, random_state=7).fit([0, 1, 1, 2])
    np.testing.assert_array_equal(a.route(np.ones(50)), b.route(np.ones(50)))
    with pytest.raises(NotFittedError, match=r"call \.fit\(scores_heldout\) first"):
        RoutingPolicy(0.5).route([1.0])
    with pytest.raises(ConfigError, match=r"share must lie in \[0, 1\].*got 1.5"):
        RoutingPolicy(1.5).fit([1.0])
    with pytest.raises(ConfigError, match="scores has nan at query 1"):
        RoutingPolicy(0.5).fit([1.0, float("nan")])
    with pytest.raises(ConfigError, match=r"one per query of the weak pool \(4\)"):
        evaluate_routing(WEAK, STRONG, [1.0, 2.0], [0.5])


@pytest.mark.parametrize("share", [0.05, 0.3, 0.8])
def test_calibrated_share_on_fresh_scores_is_within_binomial_error(share):
    rng = np.random.default_rng(int(share * 100))
    n_cal, n_new = 20_000, 20_000
    policy = RoutingPolicy(share).fit(rng.normal(size=n_cal))
    realised = policy.route(rng.normal(size=n_new)).mean()
    assert abs(realised - share) < 4 * np.sqrt(share * (1 - share) * (1 / n_cal + 1 / n_new))
    # discrete scores: the tie draws meet the share in expectation
    levels = rng.choice(3, size=n_cal, p=[0.5, 0.3, 0.2]).astype(float)
    policy = RoutingPolicy(share).fit(levels)
    realised = policy.route(rng.choice(3, size=n_new, p=[0.5, 0.3, 0.2]).astype(float)).mean()
    assert abs(realised - share) < 4 * np.sqrt(share * (1 - share) * (1 / n_cal + 1 / n_new))


def test_cross_fitted_calibration_is_near_the_target_and_below_the_oracle():
    rng = np.random.default_rng(0)
    weak, strong = random_pools(2000, rng)
    g = routing_gain(weak, strong)
    scores = g + rng.normal(0, 0.3, len(g))
    shares = [0.1, 0.3, 0.6]
    ev = evaluate_routing(weak, strong, scores, shares, seed=1)
    at_realised = evaluate_routing(weak, strong, None, ev.calibrated_share)
    for j, share in enumerate(shares):
        assert abs(ev.calibrated_share[j] - share) < 4 * np.sqrt(share * (1 - share) * 2 / 1000)
        assert ev.calibrated_success[j] <= at_realised.curves["oracle"][j] + 1e-12
        assert ev.calibrated_success[j] > at_realised.curves["random"][j]
    again = evaluate_routing(weak, strong, scores, shares, seed=1)
    assert again == ev


def test_report_json_markdown_and_plot(tmp_path):
    ev = evaluate_routing(WEAK, STRONG, [0.1, 0.9, 0.5, 0.2], [0.25, 0.5], info={"head": "x"})
    data = json.loads(json.dumps(json_ready(ev)))
    assert data["share_to_match_strong"] == {"random": 1.0, "learned": 0.5, "oracle": 0.125}
    assert data["info"] == {"head": "x"}
    md = markdown(ev)
    assert "| share | random success | learned success | oracle success |" in md
    assert "| 25% | 0.656 | 0.625 | 0.875 | " in md
    assert "| 100.0% | 50.0% | 12.5% |" in md
    path = plot(ev, tmp_path / "sub" / "routing.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
