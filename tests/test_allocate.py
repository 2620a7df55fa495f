"""howhard.allocate: small cases against brute force, invariants as properties, error messages."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from howhard.allocate import (
    BinnedPolicy,
    ThresholdPolicy,
    binary_gains,
    concave_envelope,
    greedy,
    greedy_binary,
    total_samples,
    uniform,
)
from howhard.errors import BudgetError, ConfigError, NotFittedError

FAST = settings(max_examples=150, deadline=None)


def q_table(gains: np.ndarray) -> np.ndarray:
    """q(b) - q(0) for b = 0..Bmax, shape (n, Bmax + 1)."""
    return np.concatenate([np.zeros((gains.shape[0], 1)), np.cumsum(gains, axis=1)], axis=1)


def value(gains: np.ndarray, counts: np.ndarray) -> float:
    return float(q_table(gains)[np.arange(gains.shape[0]), counts].sum())


def brute_force(gains: np.ndarray, total: int, m: int = 0) -> float:
    """Best Σ q_i(b_i) over every allocation with Σ b_i = total and m <= b_i <= Bmax."""
    n, bmax = gains.shape
    q = q_table(gains)
    return max(
        float(q[np.arange(n), list(alloc)].sum())
        for alloc in itertools.product(range(m, bmax + 1), repeat=n)
        if sum(alloc) == total
    )


def concave_gains(rng: np.random.Generator, n: int, bmax: int, ties: bool) -> np.ndarray:
    g = -np.sort(-rng.random((n, bmax)), axis=1)  # non-increasing rows: q concave
    return np.round(g, 1) if ties else g


def hull_slopes(gains: np.ndarray) -> np.ndarray:
    """Least concave majorant by definition: at b, the highest chord of Q over j <= b <= k."""
    q = q_table(gains)
    n, top = q.shape
    out = np.empty_like(q)
    for i, b in itertools.product(range(n), range(top)):
        out[i, b] = max(
            q[i, j] + (q[i, k] - q[i, j]) * (b - j) / (k - j) if k > j else q[i, b]
            for j in range(b + 1)
            for k in range(b, top)
        )
    return np.diff(out, axis=1)


# ---------------------------------------------------------------------------- uniform


def test_total_samples_floors_decimal_budgets_as_intended() -> None:
    assert total_samples(100, 0.29) == 29  # 0.29 * 100 == 28.999999999999996 in floating point
    assert total_samples(3, 0.5) == 1
    assert total_samples(7, 2.0) == 14
    assert total_samples(0, 3.0) == 0


@pytest.mark.parametrize(
    ("n", "budget", "cap"), [(5, 2.4, 4), (7, 0.0, 3), (3, 3.0, 3), (10, 0.3, 1)]
)
def test_uniform_spreads_floor_budget_evenly_extra_to_first(
    n: int, budget: float, cap: int
) -> None:
    out = uniform(n, budget, cap)
    total = math.floor(budget * n + 1e-9)
    assert out.sum() == total
    assert set(out.tolist()) <= {math.floor(budget), math.floor(budget) + 1}
    assert np.all(np.diff(out) <= 0)  # the extra samples go to the first queries
    assert out.max() <= cap


def test_uniform_example() -> None:
    assert uniform(5, 2.4, 4).tolist() == [3, 3, 2, 2, 2]


# ---------------------------------------------------------------------------- greedy


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 4),
    bmax=st.integers(1, 4),
    frac=st.floats(0, 1),
    m_frac=st.floats(0, 1),
    ties=st.booleans(),
)
def test_greedy_matches_brute_force_on_concave_q(
    seed: int, n: int, bmax: int, frac: float, m_frac: float, ties: bool
) -> None:
    rng = np.random.default_rng(seed)
    gains = concave_gains(rng, n, bmax, ties)
    budget = frac * bmax
    m = math.floor(m_frac * budget)
    out = greedy(gains, budget, min_per_query=m)
    total = total_samples(n, budget)
    assert out.sum() == total
    assert out.min() >= m and out.max() <= bmax
    assert value(gains, out) == pytest.approx(brute_force(gains, total, m), abs=1e-12)


def test_greedy_breaks_ties_by_lower_query_then_lower_b() -> None:
    gains = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.0]])
    assert greedy(gains, 1.0).tolist() == [2, 0, 1]  # T = 3: 0.9, then query 0's two 0.5
    assert greedy(gains, 4 / 3).tolist() == [2, 1, 1]


def test_greedy_spends_the_whole_budget_even_on_zero_and_negative_gains() -> None:
    gains = np.array([[0.0, -0.1, -0.2], [0.0, 0.0, -0.5]])
    out = greedy(gains, 2.5)
    assert out.sum() == 5
    assert out.tolist() == [3, 2]


def test_greedy_at_the_cap_gives_everyone_the_cap() -> None:
    gains = np.random.default_rng(0).random((6, 5))
    assert greedy(gains, 5.0).tolist() == [5] * 6
    assert greedy(gains, 0.0).tolist() == [0] * 6


# ---------------------------------------------------------------------------- envelope


def test_concave_envelope_examples() -> None:
    np.testing.assert_allclose(concave_envelope([[0.0, 1.0]]), [[0.5, 0.5]])
    np.testing.assert_allclose(concave_envelope([[1.0, 0.0, 2.0]]), [[1.0, 1.0, 1.0]])
    np.testing.assert_allclose(concave_envelope([[3.0, 0.0, 1.0, 0.0]]), [[3.0, 0.5, 0.5, 0.0]])


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3), bmax=st.integers(1, 6))
def test_concave_envelope_is_the_least_concave_majorant(seed: int, n: int, bmax: int) -> None:
    rng = np.random.default_rng(seed)
    gains = np.round(rng.normal(size=(n, bmax)), 2)
    env = concave_envelope(gains)
    assert np.all(np.diff(env, axis=1) <= 1e-12)
    np.testing.assert_allclose(env, hull_slopes(gains), atol=1e-9)


def test_concave_envelope_leaves_concave_rows_bit_for_bit() -> None:
    gains = binary_gains(np.random.default_rng(1).random(50), 30)
    assert np.array_equal(concave_envelope(gains), gains)


def test_non_concave_greedy_is_optimal_on_the_envelope_not_on_the_truth() -> None:
    # Query 0 gains nothing at b = 1 and 1 at b = 2; its envelope spreads that as 0.5, 0.5.
    gains = np.array([[0.0, 1.0], [0.4, 0.0]])
    out = greedy(gains, 0.5)  # T = 1 sample
    assert out.tolist() == [1, 0]  # envelope gain 0.5 beats 0.4 ...
    assert value(gains, out) == 0.0  # ... but the true value of that sample is 0
    assert brute_force(gains, 1) == pytest.approx(0.4)  # the true optimum
    env = concave_envelope(gains)
    assert value(env, out) == pytest.approx(brute_force(env, 1))
    assert "concave envelope" in (greedy.__doc__ or "")


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 4),
    bmax=st.integers(1, 4),
    frac=st.floats(0, 1),
)
def test_non_concave_greedy_maximises_the_envelope_value(
    seed: int, n: int, bmax: int, frac: float
) -> None:
    gains = np.round(np.random.default_rng(seed).random((n, bmax)), 1)
    out = greedy(gains, frac * bmax)
    total = total_samples(n, frac * bmax)
    env = concave_envelope(gains)
    assert out.sum() == total
    assert value(env, out) == pytest.approx(brute_force(env, total), abs=1e-9)
    assert value(gains, out) <= brute_force(gains, total) + 1e-9


# ---------------------------------------------------------------------------- greedy_binary

LAMS = st.one_of(
    st.sampled_from([0.0, 1.0, 0.5, 0.25, 0.75, 0.125, 0.3, 0.999, 1e-12]),
    st.floats(0, 1),
)


@settings(max_examples=300, deadline=None)
@given(
    lam=st.lists(LAMS, min_size=1, max_size=25),
    bmax=st.integers(1, 20),
    frac=st.floats(0, 1),
    m_frac=st.floats(0, 1),
)
def test_greedy_binary_equals_greedy_on_closed_form_gains(
    lam: list[float], bmax: int, frac: float, m_frac: float
) -> None:
    budget = frac * bmax
    m = math.floor(m_frac * budget)
    expected = greedy(binary_gains(lam, bmax), budget, min_per_query=m)
    np.testing.assert_array_equal(greedy_binary(lam, budget, bmax, min_per_query=m), expected)


@pytest.mark.parametrize(
    ("lam", "bmax"),
    [
        (np.repeat([0.0, 0.1, 0.5, 0.9, 1.0], 40), 12),  # many exact ties
        (np.random.default_rng(2).integers(0, 21, 3000) / 20, 32),  # λ = c / n as from a pool
        (np.array([0.999, 1.0, 0.0, 0.9999999, 1 - 2**-53, 5e-324, 1e-300] * 5), 128),  # underflow
        (np.full(300, 1e-12), 64),  # flat rows: every gain within 1e-9 of the others
    ],
)
@pytest.mark.parametrize("frac", [0.01, 0.2, 0.5, 0.93, 1.0])
def test_greedy_binary_equals_greedy_on_hard_cases(lam: np.ndarray, bmax: int, frac: float) -> None:
    budget = frac * bmax
    expected = greedy(binary_gains(lam, bmax), budget)
    np.testing.assert_array_equal(greedy_binary(lam, budget, bmax), expected)


@FAST
@given(seed=st.integers(0, 2**32 - 1), bmax=st.integers(2, 30), frac=st.floats(0, 1))
def test_greedy_binary_breaks_exact_ties_between_different_rates(
    seed: int, bmax: int, frac: float
) -> None:
    # Rates whose gain at b = 1 equals, bit for bit, another rate's gain at some b > 1: their logs
    # differ by rounding, so only an exact comparison orders them as greedy does.
    rng = np.random.default_rng(seed)
    base = rng.random(3)
    later = binary_gains(base, bmax)[:, 1:].ravel()
    lam = rng.permutation(np.concatenate([base, later[rng.integers(0, later.size, 8)]]))
    expected = greedy(binary_gains(lam, bmax), frac * bmax)
    np.testing.assert_array_equal(greedy_binary(lam, frac * bmax, bmax), expected)


def test_greedy_binary_zero_and_one_rates() -> None:
    # λ = 1: gain 1 at b = 1 then 0; λ = 0: only zeros, handed out by query index.
    assert greedy_binary([0.0, 1.0, 0.0, 1.0], 0.5, 3).tolist() == [0, 1, 0, 1]
    assert greedy_binary([0.0, 1.0, 0.0, 1.0], 1.0, 3).tolist() == [2, 1, 0, 1]
    assert greedy_binary([0.0, 1.0, 0.0], 2.0, 3, min_per_query=1).tolist() == [3, 2, 1]


def test_greedy_binary_a_million_queries_spends_exactly_the_budget() -> None:
    rng = np.random.default_rng(3)
    lam = rng.beta(0.3, 0.7, 1_000_000)
    lam[rng.random(lam.size) < 0.2] = 0.0
    out = greedy_binary(lam, 8.0, 128)
    assert out.sum() == 8_000_000
    assert out.min() >= 0 and out.max() <= 128
    # Exchange check: the smallest gain taken is >= the largest gain left out.
    taken = lam * (1 - lam) ** (out - 1.0)
    left = np.where(out < 128, lam * (1 - lam) ** out, -1.0)
    assert taken[out > 0].min() >= left.max() * (1 - 1e-9)


# ---------------------------------------------------------------------------- ThresholdPolicy


@pytest.mark.parametrize(("budget", "m"), [(3.3, 0), (0.7, 0), (5.0, 2), (12.0, 1)])
def test_threshold_policy_spends_the_budget_exactly_without_ties(budget: float, m: int) -> None:
    gains = concave_gains(np.random.default_rng(4), 500, 12, ties=False)
    policy = ThresholdPolicy(budget, 12, min_per_query=m).fit(gains)
    out = policy.allocate(gains)
    assert out.sum() == total_samples(500, budget)
    assert out.min() >= m and out.max() <= 12
    np.testing.assert_array_equal(out, greedy(gains, budget, min_per_query=m))


@pytest.mark.parametrize("budget", [0.5, 2.7, 7.3])
def test_threshold_policy_with_ties_is_unbiased_on_the_calibration_set(budget: float) -> None:
    lam = np.random.default_rng(5).integers(0, 11, 2000) / 10
    gains = binary_gains(lam, 16)
    policy = ThresholdPolicy(budget, 16, random_state=0).fit(gains)
    env = concave_envelope(gains)
    n_above = int((env > policy.threshold_).sum())
    n_tied = int((env == policy.threshold_).sum())
    extra = total_samples(2000, budget)
    assert n_above + policy.p_tie_ * n_tied == pytest.approx(extra)  # expected spend = T
    assert 0 < policy.p_tie_ <= 1
    out = policy.allocate(gains)
    sd = math.sqrt(n_tied * policy.p_tie_ * (1 - policy.p_tie_))
    assert abs(out.sum() - extra) <= 5 * sd + 1
    assert out.max() <= 16


def test_threshold_policy_decides_each_query_on_its_own() -> None:
    rng = np.random.default_rng(6)
    gains = concave_gains(rng, 200, 8, ties=False)
    policy = ThresholdPolicy(2.5, 8).fit(gains)
    new = concave_gains(rng, 30, 8, ties=False)
    batch = policy.allocate(new)
    one_by_one = [int(policy.allocate(row)[0]) for row in new]
    assert batch.tolist() == one_by_one


def test_threshold_policy_thresholds_the_envelope() -> None:
    # Query type A gains 0, 1 (envelope 0.5, 0.5); type B gains 0.4, 0.
    gains = np.array([[0.0, 1.0], [0.4, 0.0]] * 10)
    policy = ThresholdPolicy(1.0, 2).fit(gains)  # T = 20: all twenty envelope gains of 0.5
    assert (policy.threshold_, policy.p_tie_) == (0.5, 1.0)
    assert policy.allocate(gains).tolist() == [2, 0] * 10
    half = ThresholdPolicy(0.5, 2).fit(gains)  # T = 10: half of the tied 0.5 gains
    assert (half.threshold_, half.p_tie_) == (0.5, 0.5)
    out = half.allocate(gains)
    assert out[1::2].tolist() == [0] * 10  # 0.4 < 0.5: type B never gets a sample


# ---------------------------------------------------------------------------- BinnedPolicy


@pytest.mark.parametrize(("budget", "n_bins", "m"), [(2.5, 10, 0), (0.3, 4, 0), (6.0, 7, 2)])
def test_binned_policy_stays_within_budget_on_calibration(
    budget: float, n_bins: int, m: int
) -> None:
    rng = np.random.default_rng(7)
    lam = rng.beta(0.5, 0.5, 1003)
    score = lam + rng.normal(0, 0.1, lam.size)
    gains = binary_gains(lam, 16)
    policy = BinnedPolicy(budget, 16, n_bins=n_bins, min_per_query=m).fit(score, gains)
    assert policy.edges_.shape == (n_bins - 1,)
    assert policy.budget_per_bin_.shape == (n_bins,)
    assert policy.budget_per_bin_.min() >= m and policy.budget_per_bin_.max() <= 16
    out = policy.allocate(score)
    assert out.sum() <= total_samples(lam.size, budget)
    assert out.sum() >= total_samples(lam.size, budget) - lam.size / n_bins - 1  # nearly all spent


def test_binned_policy_with_singleton_bins_is_greedy() -> None:
    rng = np.random.default_rng(8)
    gains = concave_gains(rng, 12, 6, ties=False)
    score = rng.permutation(12).astype(float)
    policy = BinnedPolicy(2.5, 6, n_bins=12).fit(score, gains)
    out = policy.allocate(score)
    assert out.sum() == 30
    assert value(gains, out) == pytest.approx(value(gains, greedy(gains, 2.5)))


def test_binned_policy_gives_more_to_the_bin_with_larger_gains() -> None:
    gains = np.array([[0.9, 0.5, 0.2, 0.1]] * 5 + [[0.15, 0.05, 0.0, 0.0]] * 5)
    score = np.arange(10.0)
    policy = BinnedPolicy(2.0, 4, n_bins=2).fit(score, gains)
    assert policy.budget_per_bin_.tolist() == [3, 1]  # 0.9, 0.5, 0.2, then 0.15 beats 0.1
    assert policy.allocate([0.0, 9.0, -5.0, 100.0]).tolist() == [3, 1, 3, 1]


def test_binned_policy_with_constant_score_is_uniform_floor() -> None:
    gains = concave_gains(np.random.default_rng(9), 10, 5, ties=False)
    policy = BinnedPolicy(2.5, 5, n_bins=3).fit(np.zeros(10), gains)
    assert policy.allocate(np.zeros(10)).tolist() == [2] * 10  # one bin of 10: 25 samples buy 2


# ---------------------------------------------------------------------------- errors

GAINS = np.full((3, 4), 0.1)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: greedy(GAINS, -1.0), ["budget", ">= 0"]),
        (lambda: greedy(GAINS, 5.0), ["budget", "max_per_query", "raise max_per_query"]),
        (lambda: greedy(GAINS, 2.0, min_per_query=3), ["min_per_query", "budget"]),
        (lambda: greedy(GAINS, 2.0, min_per_query=-1), ["min_per_query"]),
        (lambda: greedy_binary([0.5], 2.0, 4, min_per_query=5), ["min_per_query", "max_per_query"]),
        (lambda: greedy(np.zeros(4), 1.0), ["gains", "2-D"]),
        (lambda: greedy([[0.1, np.nan]], 1.0), ["gains", "NaN", "b=2"]),
        (lambda: greedy(GAINS, float("nan")), ["budget", "finite"]),
        (lambda: greedy_binary([0.5, 1.5], 1.0, 4), ["lam", "[0, 1]", "query 1"]),
        (lambda: greedy_binary([np.nan], 1.0, 4), ["lam", "[0, 1]"]),
        (lambda: greedy_binary([0.5], 5.0, 4), ["budget", "max_per_query"]),
        (lambda: greedy_binary([0.5], 1.0, 0), ["max_per_query", ">= 1"]),
        (lambda: uniform(3, 1.0, 2.5), ["max_per_query", "integer"]),  # type: ignore[arg-type]
        (lambda: uniform(-1, 1.0, 2), ["n_queries"]),
        (lambda: ThresholdPolicy(9.0, 4).fit(GAINS), ["budget", "max_per_query"]),
        (lambda: ThresholdPolicy(1.0, 5).fit(GAINS), ["gains_heldout", "columns", "5"]),
        (lambda: BinnedPolicy(1.0, 4).fit(np.zeros(2), GAINS), ["pred_heldout_score", "rows"]),
        (lambda: BinnedPolicy(1.0, 4, n_bins=0).fit(np.zeros(3), GAINS), ["n_bins"]),
        (lambda: BinnedPolicy(1.0, 4).fit([0.0, np.inf, 1.0], GAINS), ["score"]),
    ],
)
def test_bad_input_is_named_in_the_error(call: object, words: list[str]) -> None:
    assert callable(call)
    with pytest.raises(ConfigError) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_budget_errors_are_budget_errors() -> None:
    with pytest.raises(BudgetError):
        greedy(GAINS, 5.0)
    with pytest.raises(BudgetError):
        greedy_binary([2.0], 1.0, 4)


@pytest.mark.parametrize(
    "call",
    [
        lambda: ThresholdPolicy(1.0, 4).allocate(GAINS),
        lambda: BinnedPolicy(1.0, 4).allocate([0.5]),
    ],
)
def test_allocate_before_fit_says_to_fit(call: object) -> None:
    assert callable(call)
    with pytest.raises(NotFittedError, match=r"not fitted.*\.fit\("):
        call()


def test_min_per_query_at_the_cap() -> None:
    gains = np.full((4, 3), 0.2)
    assert greedy(gains, 3.0, min_per_query=3).tolist() == [3] * 4
    assert ThresholdPolicy(3.0, 3, min_per_query=3).fit(gains).allocate(gains).tolist() == [3] * 4
    policy = BinnedPolicy(3.0, 3, n_bins=2, min_per_query=3).fit(np.arange(4.0), gains)
    assert policy.allocate(np.arange(4.0)).tolist() == [3] * 4


def test_zero_budget_and_empty_inputs() -> None:
    assert greedy(np.zeros((0, 3)), 1.0).shape == (0,)
    assert greedy_binary([], 1.0, 3).shape == (0,)
    assert uniform(0, 1.0, 3).shape == (0,)
    assert greedy_binary([0.3, 0.9], 0.0, 3).tolist() == [0, 0]
