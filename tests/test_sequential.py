"""howhard.sequential: posterior gains against direct computation, the replay against the exact
estimators, the allocation against a literal greedy loop, and the issue's property: at equal
realised spend the sequential method is no worse than the paper's greedy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import betaln, gammaln

from howhard import allocate, sequential
from howhard.errors import BudgetError, ConfigError, NotFittedError, PoolError
from howhard.pool import Pool, expected_best_of
from howhard.rerank import majority_best_of


def make_pool(rewards, answers=None) -> Pool:
    ids = tuple(f"q{i}" for i in range(len(rewards)))
    extras = tuple({"answers": a} for a in answers) if answers is not None else ()
    return Pool(ids, ids, tuple(np.asarray(r, dtype=float) for r in rewards), extras)


def synthetic(n=200, samples=32, seed=0, answers=False):
    """Queries with known success rates λ ~ Beta(0.3, 1.2); wrong answers from a few values."""
    rng = np.random.default_rng(seed)
    lam = rng.beta(0.3, 1.2, n)
    rewards = [(rng.random(samples) < p).astype(float) for p in lam]
    ans = None
    if answers:
        ans = [[("ok" if r else f"w{rng.integers(0, 3)}") for r in row] for row in rewards]
    return make_pool(rewards, ans), lam


# ---------------------------------------------------------------------------- priors


def test_fit_strength_maximises_the_beta_binomial_likelihood_and_recovers_kappa():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.6, 3000)
    kappa = 5.0
    lam = rng.beta(kappa * p, kappa * (1 - p))
    c = rng.binomial(16, lam)
    n = np.full(p.size, 16)
    fitted = sequential.fit_strength(p, c, n)

    def loglik(k):
        return np.sum(betaln(k * p + c, k * (1 - p) + n - c) - betaln(k * p, k * (1 - p)))

    assert all(loglik(fitted) >= loglik(k) - 1e-6 for k in np.logspace(-2, 4, 60))
    assert 3.5 < fitted < 7.0


def test_fit_concentration_maximises_the_partition_likelihood():
    groups = [[3, 1, 1], [2, 2], [1, 1, 1, 1], [5], [1]]

    def loglik(t):
        return sum(
            len(m) * math.log(t) + gammaln(t) - gammaln(t + sum(m)) for m in groups if sum(m) >= 2
        )

    theta = sequential.fit_concentration(groups)
    assert all(loglik(theta) >= loglik(t) - 1e-6 for t in np.logspace(-3, 4, 80))
    assert sequential.fit_concentration([[1], []]) == 1.0  # nothing to learn from


def test_prior_means_and_errors():
    prior = sequential.Prior("verifier", 4.0, positive=(0.5, 1.0))
    alpha, beta = prior.alpha_beta([0.3, 0.0])
    np.testing.assert_allclose(alpha + beta, 4.0)
    np.testing.assert_allclose(alpha[0] / 4.0, 0.3 / 0.75)
    with pytest.raises(ConfigError, match="mean has"):
        prior.alpha_beta([1.5])
    with pytest.raises(ConfigError, match="binary"):
        sequential.fit_prior([0.5], make_pool([[0.5, 1.0]], [["a", "b"]]), "majority")
    with pytest.raises(PoolError, match="answers"):
        sequential.fit_prior([0.5], make_pool([[0.0, 1.0]]), "majority")
    with pytest.raises(ConfigError, match="observe"):
        sequential.fit_prior([0.5], make_pool([[0.0, 1.0]]), "oracle")


# ---------------------------------------------------------------------------- gains


@pytest.mark.parametrize(("s", "z"), [(0, 0), (3, 3), (5, 2)])
def test_verifier_gain_is_the_posterior_expected_improvement(s, z):
    alpha, beta = np.array([0.7]), np.array([2.3])
    g = np.array([0.25, 0.5, 1.0])
    best = 0.5 if s > z else 0.0
    # P(next reward > 0 | data) by integrating the Beta posterior of π
    post = stats.beta(alpha[0] + s - z, beta[0] + z)
    p_pos = integrate.quad(lambda x: x * post.pdf(x), 0, 1)[0]
    want = p_pos * np.mean(np.maximum(g - best, 0))
    got = sequential.verifier_gain(alpha, beta, s, z, best, tuple(g))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_verifier_gain_for_binary_rewards_stops_at_the_first_success():
    alpha, beta = np.array([1.0, 1.0]), np.array([3.0, 3.0])
    got = sequential.verifier_gain(alpha, beta, [2, 2], [2, 1], [0.0, 1.0])
    np.testing.assert_allclose(got, [1.0 / 6.0, 0.0])


def brute_race(p_c, p_k, lead, both_unseen, j):
    """Enumerate every sequence of j moves of the lead race."""
    total = 0.0
    for moves in itertools.product((1, -1, 0), repeat=j):
        prob = math.prod({1: p_c, -1: p_k, 0: 1 - p_c - p_k}[m] for m in moves)
        final = lead + sum(moves)
        value = 1.0 if final > 0 else 0.5 if final == 0 else 0.0
        if both_unseen and all(m == 0 for m in moves):
            value = 0.0
        total += prob * value
    return total


@pytest.mark.parametrize(("lead", "unseen"), [(0, True), (0, False), (2, False), (-1, False)])
def test_race_matches_enumeration(lead, unseen):
    got = sequential._race(
        np.array([0.3]), np.array([0.2]), np.array([lead]), np.array([unseen]), 4
    )[0]
    want = [brute_race(0.3, 0.2, lead, unseen, j) for j in range(5)]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_majority_posterior_matches_enumeration_of_the_model():
    """Two draws: the chance of each hypothesis and of the observed answers, by the generative
    model (correct with λ ~ Beta(α, β); a wrong answer starts a new wrong group, then joins it
    with 1 / (1 + θ)), against majority_posterior."""
    a, b, theta = 1.5, 2.5, 3.0
    alpha, beta = np.array([a]), np.array([b])
    right = a * (a + 1) / ((a + b) * (a + b + 1))  # both correct
    mixed = a * b / ((a + b) * (a + b + 1))  # one correct, one wrong (in this order)
    wrong = b * (b + 1) / ((a + b) * (a + b + 1))  # both wrong
    # counts (2): both correct (H_a), or both wrong in one group (H_0)
    h = np.array([wrong / (1 + theta), right])
    got = sequential.majority_posterior(alpha, beta, theta, [[2.0]], [0])[0]
    np.testing.assert_allclose(got, h / h.sum())
    # counts (1, 1): x correct and y wrong (H_x), the reverse (H_y), or both wrong, two groups
    h = np.array([wrong * theta / (1 + theta), mixed, mixed])
    got = sequential.majority_posterior(alpha, beta, theta, [[1.0, 1.0]], [0])[0]
    np.testing.assert_allclose(got, h / h.sum())
    # counts (1) and one None: the None draw is wrong, the answer correct (H_x) or wrong (H_0)
    h = np.array([wrong, mixed])
    got = sequential.majority_posterior(alpha, beta, theta, [[1.0]], [1])[0]
    np.testing.assert_allclose(got, h / h.sum())


def test_majority_gain_looks_ahead_past_a_lead_one_draw_cannot_change():
    """With counts (2) one more draw cannot change the majority, so W(1) = W(0) and the gain with
    a lookahead of 1 is 0; looking 6 draws ahead it is positive."""
    alpha, beta, theta = np.array([1.5]), np.array([2.5]), 3.0
    g1 = sequential.majority_gain(alpha, beta, theta, np.array([[2.0]]), [0], [10], lookahead=1)
    np.testing.assert_allclose(g1, 0.0, atol=1e-12)
    g6 = sequential.majority_gain(alpha, beta, theta, np.array([[2.0]]), [0], [10], lookahead=6)
    assert g6[0] > 0


def test_majority_gain_of_the_first_draw_is_the_prior_mean():
    alpha, beta = np.array([0.6, 2.0]), np.array([2.4, 2.0])
    got = sequential.majority_gain(alpha, beta, 5.0, np.zeros((2, 1)), [0, 0], [8, 8], lookahead=1)
    np.testing.assert_allclose(got, alpha / (alpha + beta))
    # no room: never drawn
    none = sequential.majority_gain(alpha, beta, 5.0, np.zeros((2, 1)), [0, 0], [0, 0])
    assert np.all(np.isneginf(none))


# ---------------------------------------------------------------------------- replays


def all_orders(n_samples: int, cap: int) -> np.ndarray:
    perms = np.array(list(itertools.permutations(range(n_samples))))
    return perms[:, None, :cap]


def test_replaying_every_order_gives_the_exact_best_of_b():
    rewards = [0.0, 0.5, 0.25, 1.0, 0.0]
    pool = make_pool([rewards])
    prior = sequential.Prior("verifier", 2.0, positive=(0.25, 0.5, 1.0))
    p = sequential.paths(prior, [0.3], pool, all_orders(5, 5))
    np.testing.assert_allclose(
        p.returned.mean(axis=0)[0, 1:], expected_best_of(np.array([rewards]), 5)[0]
    )


def test_replaying_every_order_gives_the_exact_majority_vote():
    answers = ["a", "b", None, "a", "b"]
    rewards = [1.0, 0.0, 0.0, 1.0, 0.0]
    pool = make_pool([rewards], [answers])
    prior = sequential.Prior("majority", 2.0, theta=1.0)
    p = sequential.paths(prior, [0.4], pool, all_orders(5, 5))
    np.testing.assert_allclose(
        p.returned.mean(axis=0)[0, 1:], majority_best_of(answers, rewards, 5), atol=1e-12
    )
    assert p.returned[:, 0, 0].max() == 0.0


def test_replay_orders_are_permutation_prefixes_of_each_pool():
    orders = sequential.replay_orders([3, 5], 3, 200, np.random.default_rng(0))
    assert orders.shape == (200, 2, 3)
    assert orders[:, 0].max() < 3 and orders[:, 1].max() < 5
    assert all(len(set(row)) == 3 for row in orders.reshape(-1, 3).tolist())
    firsts = np.bincount(orders[:, 1, 0], minlength=5)
    assert firsts.min() > 15  # every sample comes first sometimes
    with pytest.raises(BudgetError):
        sequential.replay_orders([2, 5], 3, 10, np.random.default_rng(0))


def test_majority_paths_dedupe_agrees_with_one_query_at_a_time():
    pool, lam = synthetic(n=6, samples=8, seed=3, answers=True)
    prior = sequential.Prior("majority", 3.0, theta=2.0)
    orders = sequential.replay_orders(pool.n_samples, 8, 5, np.random.default_rng(1))
    together = sequential.paths(prior, lam, pool, orders)
    for i in range(len(pool)):
        alone = sequential.paths(
            prior, lam[i : i + 1], pool.select([pool.ids[i]]), orders[:, i : i + 1]
        )
        np.testing.assert_allclose(together.gains[:, i], alone.gains[:, 0])
        np.testing.assert_allclose(together.returned[:, i], alone.returned[:, 0])


# ---------------------------------------------------------------------------- allocation


def literal_greedy(gains: np.ndarray, total: int, m: int) -> np.ndarray:
    """One draw at a time to the largest current gain (lower query on ties), never <= 0."""
    n, cap = gains.shape
    counts = np.full(n, m)
    for _ in range(total - n * m):
        heads = np.array([gains[i, c] if c < cap else -np.inf for i, c in enumerate(counts)])
        i = int(np.argmax(heads))
        if heads[i] <= 0:
            break
        counts[i] += 1
    return counts


@pytest.mark.parametrize("seed", range(12))
def test_batch_counts_equal_a_literal_greedy_loop(seed):
    rng = np.random.default_rng(seed)
    n, cap = 5, 6
    gains = np.round(rng.random((1, n, cap)) - 0.1, 1)  # non-monotone, ties, some <= 0
    m = int(seed % 2)
    for budget in (m, m + 0.6, 2.0, 3.4, cap):
        got = sequential.batch_counts(gains, budget, m)[0]
        total = allocate.total_samples(n, budget)
        np.testing.assert_array_equal(got, literal_greedy(gains[0], total, m))


def test_stream_counts_draw_while_the_gain_exceeds_the_price():
    rng = np.random.default_rng(5)
    heldout = rng.random((50, 40, 8))
    policy = sequential.stream_policy(heldout, 3.0)
    assert sequential.stream_counts(heldout, policy).mean() == pytest.approx(3.0, abs=0.01)
    gains = rng.random((3, 7, 8))
    got = sequential.stream_counts(gains, policy)
    for r, i in itertools.product(range(3), range(7)):
        k = 0
        while k < 8 and gains[r, i, k] > policy.threshold_:
            k += 1
        assert got[r, i] == k


# ---------------------------------------------------------------------------- the property


@pytest.mark.parametrize("observe", ["verifier", "majority"])
def test_sequential_beats_greedy_at_equal_spend_and_respects_the_cap(observe):
    """Synthetic queries with known λ, the predictor = λ: the batch sequential method spends
    exactly ⌊B·n⌋ (or less when no gain is left), never more than the cap, and its success
    (mean over R replays) is at least the paper's greedy at that spend (exact), within 3 standard
    errors of the replay mean."""
    pool, lam = synthetic(n=160, samples=16, seed=7, answers=observe == "majority")
    cap, n = 16, len(pool)
    fit = sequential.cross_fit(pool, lam, cap, observe, n_replays=60, seed=0)
    if observe == "verifier":
        q = pool.q(cap)
    else:
        from howhard.rerank import reranked_q

        q = reranked_q(pool.rewards, [e["answers"] for e in pool.extras], cap, "majority")
    gains = allocate.binary_gains(lam, cap)
    for budget in (1.0, 2.0, 4.0):
        counts = sequential.batch(fit, budget)
        assert counts.max() <= cap and counts.min() >= 0
        assert np.all(counts.sum(axis=1) <= allocate.total_samples(n, budget))
        s = sequential.score(fit.paths.returned, counts)
        b = allocate.greedy(gains, s.spend)
        greedy_success = q[np.arange(n), b].mean()
        assert s.success >= greedy_success - 3 * s.success_se - 1e-9, (budget, s, greedy_success)
        if observe == "verifier":
            assert s.success > greedy_success  # a verifier is worth a lot here
        stream = sequential.score(fit.paths.returned, sequential.stream(fit, budget))
        assert stream.max_draws <= cap
        b = allocate.greedy(gains, stream.spend)
        assert stream.success >= q[np.arange(n), b].mean() - 3 * stream.success_se - 1e-9


def test_min_per_query_draws_come_first():
    pool, lam = synthetic(n=40, samples=8, seed=2)
    fit = sequential.cross_fit(pool, lam, 8, n_replays=10, min_per_query=2)
    for counts in (sequential.batch(fit, 3.0), sequential.stream(fit, 3.0)):
        assert counts.min() >= 2 and counts.max() <= 8
    batch_only = sequential.cross_fit(pool, lam, 8, n_replays=10, with_stream=False)
    np.testing.assert_array_equal(
        batch_only.paths.gains, sequential.cross_fit(pool, lam, 8, n_replays=10).paths.gains
    )
    with pytest.raises(ConfigError, match="with_stream=True"):
        sequential.stream(batch_only, 3.0)


# ---------------------------------------------------------------------------- the policy


def test_policy_decides_one_query_like_the_replays():
    pool, lam = synthetic(n=80, samples=16, seed=4)
    policy = sequential.SequentialPolicy(2.0, 16).fit(lam, pool)
    assert policy.price_ > 0 and policy.prior_.strength > 0
    alpha, beta = policy.prior_.alpha_beta([0.2])
    assert policy.gain(0.2, [0.0, 0.0]) == pytest.approx(alpha[0] / (alpha[0] + beta[0] + 2))
    assert policy.gain(0.2, [0.0, 1.0]) == 0.0
    assert not policy.wants_more(0.2, [1.0])
    assert not policy.wants_more(0.9, [0.0] * 16)  # the cap
    assert policy.wants_more(0.9, [])
    again = policy.calibrate(4.0)
    assert again.price_ < sequential.SequentialPolicy(2.0, 16).fit(lam, pool).price_
    with pytest.raises(NotFittedError):
        sequential.SequentialPolicy(2.0, 16).gain(0.2, [])


def test_majority_policy_gain_matches_majority_gain():
    pool, lam = synthetic(n=60, samples=8, seed=6, answers=True)
    policy = sequential.SequentialPolicy(2.0, 8, observe="majority").fit(lam, pool)
    alpha, beta = policy.prior_.alpha_beta([0.3])
    want = sequential.majority_gain(
        alpha, beta, policy.prior_.theta, np.array([[2.0, 1.0]]), [1], [4]
    )[0]
    assert policy.gain(0.3, ["x", "y", None, "x"]) == pytest.approx(want)
