from dataclasses import replace

import numpy as np
import pytest

from howhard.errors import BudgetError
from howhard.evaluate import calibration_table, evaluate, savings, uniform_budget_for
from howhard.pool import Pool
from howhard.reports import evaluation_markdown as markdown
from howhard.reports import evaluation_plot as plot
from howhard.reports import json_ready


def synthetic_pool(n_queries=200, n_samples=16, seed=0) -> tuple[Pool, np.ndarray]:
    rng = np.random.default_rng(seed)
    lam = rng.beta(0.4, 0.9, n_queries)
    rewards = tuple((rng.random(n_samples) < p).astype(float) for p in lam)
    ids = tuple(f"q{i}" for i in range(n_queries))
    return Pool(ids, ids, rewards), lam


def test_uniform_budget_interpolates_between_integer_budgets():
    curve = [0.0, 0.4, 0.6, 0.7]
    assert uniform_budget_for(0.5, curve) == pytest.approx(1.5)
    assert uniform_budget_for(0.6, curve) == pytest.approx(2.0)
    assert uniform_budget_for(0.2, curve) == pytest.approx(0.5)
    assert np.isnan(uniform_budget_for(0.71, curve))


def test_savings_on_a_flat_uniform_curve_a_tie_saves_only_its_spend_difference():
    curve = [0.0, 0.5, 0.5, 0.6]  # b = 2 is no better than b = 1 (majority vote)
    # the smallest uniform budget reaching 0.5 is 1: uniform at 2 "spends twice what it needs"
    assert savings([0.5], [2.0], curve, 3)[0] == pytest.approx([-1.0])
    # ... but against uniform's own row at B = 2 it saves nothing, and a tie at 1.9 saves 5%
    assert savings([0.5], [2.0], curve, 3, reference=([0.5], [2.0]))[0] == pytest.approx([0.0])
    assert savings([0.5], [1.9], curve, 3, reference=([0.5], [2.0]))[0] == pytest.approx([0.05])
    # a replayed success 0.501 ± 0.001 at B = 1 ties uniform's 0.5: not the flat stretch's 50%
    assert savings([0.501], [1.0], curve, 3)[0] == pytest.approx([1 - 1 / 2.01])
    tied = savings([0.501], [1.0], curve, 3, reference=([0.5], [1.0]), se=[0.001])
    assert tied == ([pytest.approx(0.0)], [False])
    # beyond the noise the smallest uniform budget still counts, above and below the flat
    won = savings([0.55], [1.0], curve, 3, reference=([0.5], [1.0]), se=[0.001])[0]
    assert won == pytest.approx([1 - 1 / 2.5])
    lost = savings([0.45], [2.0], curve, 3, reference=([0.5], [2.0]))[0]
    assert lost == pytest.approx([1 - 2 / 0.9])


def test_invariants_oracle_dominates_and_perfect_predictor_is_oracle():
    pool, _ = synthetic_pool()
    bmax = 16
    true_gains = pool.gains(bmax)
    ev = evaluate(pool, [1, 2, 4, 8], bmax, predicted_gains=true_gains)
    for method in ("uniform", "adaptive"):  # these spend exactly B
        assert all(
            o >= m - 1e-12 for o, m in zip(ev.curves["oracle"], ev.curves[method], strict=True)
        )
    for method in ("threshold", "binned"):  # these spend about B: compare at their own spend
        at_spend = evaluate(pool, ev.spend[method], bmax).curves["oracle"]
        assert all(o >= m - 1e-12 for o, m in zip(at_spend, ev.curves[method], strict=True))
        assert all(abs(s - b) < 0.5 for s, b in zip(ev.spend[method], ev.budgets, strict=True))
    np.testing.assert_allclose(ev.curves["adaptive"], ev.curves["oracle"])
    np.testing.assert_allclose(ev.spend["adaptive"], [1, 2, 4, 8])
    np.testing.assert_allclose(ev.spend["uniform"], [1, 2, 4, 8])
    np.testing.assert_allclose(ev.saving_vs_uniform["uniform"], 0.0, atol=1e-9)
    np.testing.assert_allclose(ev.oracle_fraction["adaptive"], 1.0)
    assert all(s > 0.2 for s in ev.saving_vs_uniform["oracle"])
    # uniform's success at integer budgets is the pool's mean q̂(x, B)
    np.testing.assert_allclose(ev.curves["uniform"], pool.q(bmax).mean(axis=0)[[1, 2, 4, 8]])


def test_a_useful_predictor_beats_uniform_and_a_useless_one_does_not():
    pool, lam = synthetic_pool(seed=1)
    bmax = 16
    good = lam[:, None] * (1 - lam[:, None]) ** np.arange(bmax)
    flat = np.tile(good.mean(axis=0), (len(pool), 1))
    ev_good = evaluate(pool, [2, 4], bmax, predicted_gains=good)
    ev_flat = evaluate(pool, [2, 4], bmax, predicted_gains=flat)
    good_vs_uniform = zip(ev_good.curves["adaptive"], ev_good.curves["uniform"], strict=True)
    assert all(a > u for a, u in good_vs_uniform)
    np.testing.assert_allclose(ev_flat.curves["adaptive"], ev_flat.curves["uniform"], atol=0.02)


def test_saving_is_one_minus_spend_over_matching_uniform_budget():
    pool, _ = synthetic_pool(seed=2)
    ev = evaluate(pool, [2, 4], 16)
    for j, _ in enumerate(ev.budgets):
        b_u = uniform_budget_for(ev.curves["oracle"][j], ev.uniform_curve)
        assert ev.saving_vs_uniform["oracle"][j] == pytest.approx(1 - ev.spend["oracle"][j] / b_u)


def test_without_predictor_only_uniform_and_oracle(tmp_path):
    pool, _ = synthetic_pool(50, 8)
    ev = evaluate(pool, [1, 2], 8)
    assert set(ev.curves) == {"uniform", "oracle"}
    data = json_ready(ev)
    assert data["budgets"] == [1.0, 2.0] and set(data["saving_vs_uniform"]) == {"uniform", "oracle"}
    assert "| 2 |" in markdown(ev)
    assert plot(ev, tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("budgets", "bmax", "message"),
    [
        ([9], 8, r"budget 9 is outside \[0, max_per_query=8\]"),
        ([-1], 8, r"budget -1 is outside"),
        ([], 8, "^budgets is empty"),
    ],
)
def test_budget_errors_name_the_parameters(budgets, bmax, message):
    pool, _ = synthetic_pool(10, 8)
    with pytest.raises(BudgetError, match=message) as error:
        evaluate(pool, budgets, bmax)
    assert "--" not in str(error.value) and error.value.params  # the CLI words them as flags


def test_one_sample_per_query_with_larger_cap_says_how_to_fix():
    pool = Pool(("a", "b"), ("x", "y"), (np.array([1.0]), np.array([0.0])))
    with pytest.raises(BudgetError, match=r"only 1 pooled samples.*max_per_query to <= 1"):
        evaluate(pool, [1], 4)


def pool_of(successes: list[int], n_samples: int = 4) -> Pool:
    ids = tuple(f"q{i}" for i in range(len(successes)))
    rewards = tuple(np.arange(n_samples) < s for s in successes)
    return Pool(ids, ids, tuple(r.astype(float) for r in rewards))


def test_calibration_bins_and_error_match_a_hand_count():
    pool = pool_of([0, 1, 3, 4])
    table = calibration_table(np.array([0.1, 0.1, 0.9, 0.9]), pool, n_bins=2)
    assert table["bins"] == [
        {"predicted": 0.1, "observed": 0.125, "queries": 2},
        {"predicted": 0.9, "observed": 0.875, "queries": 2},
    ]
    assert table["ece"] == pytest.approx(0.025)


def test_calibration_with_one_prediction_for_every_query_is_one_bin():
    # A predictor trained on a pool without any success predicts the same value everywhere.
    pool = pool_of([0, 1, 0])
    table = calibration_table(np.full(3, 0.0), pool)
    assert table["bins"] == [{"predicted": 0.0, "observed": pytest.approx(1 / 12), "queries": 3}]
    assert table["ece"] == pytest.approx(1 / 12)


def test_bootstrap_intervals_bracket_the_savings_and_are_reproducible():
    pool, lam = synthetic_pool(seed=2)
    good = lam[:, None] * (1 - lam[:, None]) ** np.arange(16)
    ev = evaluate(pool, [1, 2, 4], 16, predicted_gains=good, bootstrap=300)
    assert set(ev.saving_interval) == {"oracle", "adaptive"} and ev.bootstrap == 300
    for method, intervals in ev.saving_interval.items():
        for (low, high), saved in zip(intervals, ev.saving_vs_uniform[method], strict=True):
            assert low < saved < high and high - low < 0.3
    again = evaluate(pool, [1, 2, 4], 16, predicted_gains=good, bootstrap=300)
    assert again.saving_interval == ev.saving_interval
    assert evaluate(pool, [1, 2, 4], 16, predicted_gains=good).saving_interval == {}
    assert "% [" in markdown(ev) and "over 300 resamples" in markdown(ev)
    assert "% [" not in markdown(replace(ev, saving_interval={}))


def test_bootstrap_of_identical_queries_has_no_width():
    rewards = tuple(np.array([1.0, 0.0, 0.0, 1.0]) for _ in range(30))
    ids = tuple(f"q{i}" for i in range(30))
    ev = evaluate(Pool(ids, ids, rewards), [1, 2], 4, bootstrap=50)
    for (low, high), saved in zip(ev.saving_interval["oracle"], ev.saving_vs_uniform["oracle"],
                                  strict=True):  # fmt: skip
        assert low == pytest.approx(high) == pytest.approx(saved)


@pytest.mark.parametrize("reps", [-1, 1.5, True, "9"])
def test_bad_bootstrap_counts_are_refused_naming_the_parameter(reps):
    from howhard.errors import ConfigError
    from howhard.runs import EvaluateSpec

    with pytest.raises(ConfigError, match="bootstrap must be a whole number") as info:
        EvaluateSpec(pool="p.jsonl", bootstrap=reps)
    assert info.value.params == ("bootstrap",)


def test_interval_text_in_whole_percent():
    from howhard.reports.evaluation import interval_text

    assert interval_text([-0.003, 0.094]) == " [0, 9]"  # not -0
    assert interval_text([-0.051, 0.5]) == " [-5, 50]"
    assert interval_text([float("nan"), 0.5]) == " [nan, 50]"
