"""Tests of howhard.predict.tail: the zero-inflated beta-binomial head (never-solvable tail)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, stats
from sklearn.base import clone

from howhard import allocate
from howhard.errors import BudgetError, ConfigError, NotFittedError
from howhard.pool import Pool
from howhard.predict import TailPredictor, _net, load_predictor
from howhard.predict.tail import _objective, tail_log_loss, zibb_log_likelihood
from howhard.runs.inputs import load_predictor as load_for_run
from howhard.runs.train import train


def synthetic(n: int, seed: int, kappa: float = 4.0, trials: int = 16) -> dict[str, np.ndarray]:
    """π = σ(x_0 − 0.5), μ = σ(0.8 x_1 − 0.3), λ ~ Beta(μκ, (1 − μ)κ) or 0 with prob. π."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    pi = 1 / (1 + np.exp(-(X[:, 0] - 0.5)))
    mu = 1 / (1 + np.exp(-(0.8 * X[:, 1] - 0.3)))
    lam = rng.beta(mu * kappa, (1 - mu) * kappa)
    lam[rng.uniform(size=n) < pi] = 0.0
    c = rng.binomial(trials, lam)
    return {"X": X, "pi": pi, "mu": mu, "y": np.column_stack([c, np.full(n, trials)])}


@pytest.fixture(scope="module")
def big() -> dict[str, np.ndarray]:
    return synthetic(4000, seed=0)


@pytest.fixture(scope="module")
def fitted(big: dict[str, np.ndarray]) -> TailPredictor:
    return TailPredictor(alpha=0.0).fit(big["X"], big["y"], meta={"features": "fake"})


def brute_probability(pi: float, mu: float, kappa: float, c: float, n: float) -> float:
    """π [c = 0] + (1 − π) ∫ λ^c (1 − λ)^(n − c) Beta(λ; μκ, (1 − μ)κ) dλ by quadrature."""
    pdf = stats.beta(mu * kappa, (1 - mu) * kappa).pdf
    value, _ = integrate.quad(lambda t: t**c * (1 - t) ** (n - c) * pdf(t), 0, 1, limit=200)
    return pi * (c == 0) + (1 - pi) * value


# ---------------------------------------------------------------------------- the likelihood


@pytest.mark.parametrize(
    ("pi", "mu", "kappa", "c", "n"),
    [
        (0.3, 0.4, 5.0, 0, 4),
        (0.3, 0.4, 5.0, 2, 4),
        (0.0, 0.5, 2.0, 1, 1),
        (0.9, 0.1, 30.0, 0, 16),
        (0.2, 0.7, 1.5, 16, 16),
        (0.5, 0.5, 3.0, 2.5, 6.0),  # a soft label
    ],
)
def test_likelihood_equals_the_integral(
    pi: float, mu: float, kappa: float, c: float, n: float
) -> None:
    got = zibb_log_likelihood(np.array([pi]), np.array([mu]), kappa, np.array([c]), np.array([n]))
    assert np.exp(got[0]) == pytest.approx(brute_probability(pi, mu, kappa, c, n), rel=1e-7)


def test_likelihood_hand_case() -> None:
    # Beta(1, 1) is uniform: ∫ λ (1 − λ) dλ = 1/6, ∫ (1 − λ)² dλ = 1/3.
    one = np.array([1.0])
    assert np.exp(zibb_log_likelihood(one * 0.25, one / 2, 2.0, one, one * 2))[0] == pytest.approx(
        0.75 / 6
    )
    assert np.exp(zibb_log_likelihood(one * 0.25, one / 2, 2.0, one * 0, one * 2))[
        0
    ] == pytest.approx(0.25 + 0.75 / 3)


def test_counts_likelihood_sums_to_one() -> None:
    """With the binomial coefficients put back, P(c | x) over c = 0..n is a distribution."""
    from scipy.special import comb

    n = 7
    c = np.arange(n + 1, dtype=float)
    ll = zibb_log_likelihood(np.full(n + 1, 0.35), np.full(n + 1, 0.3), 2.5, c, np.full(n + 1, n))
    assert float(np.sum(comb(n, c) * np.exp(ll))) == pytest.approx(1.0, abs=1e-12)


def test_loss_is_the_mean_negative_log_likelihood_per_trial_plus_penalty() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6, 2))
    c, n = np.array([0, 1, 3, 0, 5, 2.0]), np.array([4, 4, 5, 1, 5, 8.0])
    w = {"coef": rng.normal(size=(2, 2)), "intercept": rng.normal(size=2)}
    s = 0.7
    theta = np.append(_net.pack(w, _net.shapes("logistic", 2, 1, 2)), s)
    loss, _ = _objective(theta, X, c, n, "logistic", 1, 0.05)
    Z = X @ w["coef"] + w["intercept"]
    pi, mu = 1 / (1 + np.exp(-Z[:, 0])), 1 / (1 + np.exp(-Z[:, 1]))
    expected = tail_log_loss(pi, mu, np.exp(s), c, n) + 0.05 * np.sum(w["coef"] ** 2)
    assert loss == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("head", ["logistic", "mlp"])
def test_gradient_matches_finite_differences(head: str) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(9, 4))
    n = rng.integers(1, 9, size=9).astype(float)
    c = np.floor(n * rng.uniform(size=9))
    c[:3] = 0  # zeros take the zero-inflated branch
    c[3] = n[3]
    c[4] = 0.5 * n[4]  # soft label
    size = sum(int(np.prod(shape)) for _, shape in _net.shapes(head, 4, 3, 2)) + 1
    theta = rng.normal(size=size) * 0.7
    args = (X, c, n, head, 3, 0.05)
    _, grad = _objective(theta, *args)
    h = 1e-6
    numeric = np.array(
        [
            (_objective(theta + h * e, *args)[0] - _objective(theta - h * e, *args)[0]) / (2 * h)
            for e in np.eye(size)
        ]
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------------- the fit


def test_mle_recovers_pi_mu_and_concentration(
    big: dict[str, np.ndarray], fitted: TailPredictor
) -> None:
    assert fitted.converged_
    X = big["X"]
    assert np.mean(np.abs(fitted.predict_never(X) - big["pi"])) < 0.04
    assert np.mean(np.abs(fitted.predict_mean_rate(X) - big["mu"])) < 0.04
    assert fitted.concentration_ == pytest.approx(4.0, rel=0.25)
    # π depends on x_0 only and μ on x_1 only (standardised features: x̃ ≈ x).
    assert fitted.coef_[0, 0] == pytest.approx(1.0, abs=0.15)
    assert fitted.coef_[1, 1] == pytest.approx(0.8, abs=0.15)
    assert abs(fitted.coef_[1, 0]) < 0.15 and abs(fitted.coef_[0, 1]) < 0.15


def test_beats_the_logistic_on_its_own_likelihood_held_out(big: dict[str, np.ndarray]) -> None:
    """On data with a never-solvable tail, the tail head's best-of-8 success of held-out queries is
    closer to the truth than the logistic's 1 − (1 − λ)^8."""
    from howhard.predict import SuccessPredictor

    test = synthetic(2000, seed=9)
    tail = TailPredictor(alpha=0.0).fit(big["X"], big["y"])
    logistic = SuccessPredictor(alpha=0.0).fit(big["X"], big["y"])
    pi, mu, kappa = test["pi"], test["mu"], 4.0
    from scipy.special import betaln

    true_q8 = (1 - pi) * -np.expm1(
        betaln(mu * kappa, (1 - mu) * kappa + 8) - betaln(mu * kappa, (1 - mu) * kappa)
    )
    err_tail = np.mean(np.abs(tail.predict_q(test["X"], 8)[:, 8] - true_q8))
    err_logistic = np.mean(np.abs(logistic.predict_q(test["X"], 8)[:, 8] - true_q8))
    assert err_tail < 0.5 * err_logistic


def test_constant_features_give_the_constant_model() -> None:
    data = synthetic(3000, seed=4)
    X = np.ones((3000, 2))
    model = TailPredictor().fit(X, data["y"])
    assert np.ptp(model.predict_never(X)) == 0.0
    assert 0.0 < model.predict_never(X[:1])[0] < 1.0


# ------------------------------------------------------------------------ q̂ and the gains


def test_q_matches_the_integral_and_monte_carlo(fitted: TailPredictor) -> None:
    X = np.array([[0.3, -0.2, 0.1], [-1.0, 1.5, 0.0], [2.0, -2.0, 0.5]])
    q = fitted.predict_q(X, 8)
    pi, mu, kappa = fitted.predict_never(X), fitted.predict_mean_rate(X), fitted.concentration_
    rng = np.random.default_rng(0)
    for i in range(3):
        a, b = mu[i] * kappa, (1 - mu[i]) * kappa
        for k in (1, 2, 5, 8):
            integral, _ = integrate.quad(
                lambda t, k=k, a=a, b=b: (1 - (1 - t) ** k) * stats.beta(a, b).pdf(t), 0, 1
            )
            assert q[i, k] == pytest.approx((1 - pi[i]) * integral, rel=1e-6)
        lam = rng.beta(a, b, size=400_000) * (rng.uniform(size=400_000) >= pi[i])
        mc = 1 - np.mean((1 - lam) ** 8)
        assert q[i, 8] == pytest.approx(mc, abs=4 / np.sqrt(400_000))
    assert np.all(q[:, 0] == 0.0)


def test_gains_are_the_differences_of_q_nonnegative_and_nonincreasing(
    fitted: TailPredictor, big: dict[str, np.ndarray]
) -> None:
    X = big["X"][:500]
    gains = fitted.predict_gains(X, 32)
    q = fitted.predict_q(X, 32)
    np.testing.assert_allclose(gains, np.diff(q, axis=1), atol=1e-12)
    assert np.all(gains >= 0)
    assert np.all(np.diff(gains, axis=1) <= 0)  # exactly, not up to rounding
    np.testing.assert_allclose(gains[:, 0], fitted.predict_proba_success(X), rtol=1e-12)


def test_no_tail_and_high_concentration_is_the_binary_closed_form() -> None:
    """π → 0 and κ → ∞: Δ(b) → μ (1 − μ)^(b − 1), the logistic head's gains."""
    model = TailPredictor().fit(np.zeros((2, 1)), [[1, 2], [1, 2]])
    model.intercept_ = np.array([-40.0, np.log(0.3 / 0.7)])
    model.log_concentration_ = 8.0  # κ ≈ 2981
    gains = model.predict_gains(np.zeros((1, 1)), 6)
    np.testing.assert_allclose(gains[0], allocate.binary_gains([0.3], 6)[0], rtol=2e-3)


def test_greedy_on_the_gains_is_the_brute_force_optimum(fitted: TailPredictor) -> None:
    X = np.array([[1.5, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [-2.0, -0.5, 0.0]])
    bmax = 5
    q = fitted.predict_q(X, bmax)
    gains = fitted.predict_gains(X, bmax)
    for budget in (1, 2, 3):
        total = budget * len(X)
        best = max(
            sum(q[i, b] for i, b in enumerate(alloc))
            for alloc in itertools.product(range(bmax + 1), repeat=len(X))
            if sum(alloc) == total
        )
        alloc = allocate.greedy(gains, budget)
        assert alloc.sum() == total
        assert q[np.arange(len(X)), alloc].sum() == pytest.approx(best, abs=1e-12)


def test_bad_bmax(fitted: TailPredictor) -> None:
    with pytest.raises(BudgetError, match="bmax"):
        fitted.predict_gains(np.zeros((1, 3)), 0)


# ----------------------------------------------------------------- the estimator contract


def test_predict_before_fit_raises() -> None:
    with pytest.raises(NotFittedError, match="fit"):
        TailPredictor().predict_gains(np.zeros((1, 3)), 4)


def test_fit_returns_self_and_checks_input(big: dict[str, np.ndarray]) -> None:
    model = TailPredictor(max_iter=5)
    assert model.fit(big["X"][:50], big["y"][:50]) is model
    assert model.n_features_in_ == 3 and model.coef_.shape == (3, 2)
    with pytest.raises(ConfigError, match="rows"):
        model.fit(big["X"][:50], big["y"][:40])
    with pytest.raises(ConfigError, match="successes"):
        model.fit(big["X"][:2], [[3, 2], [0, 2]])
    with pytest.raises(ConfigError, match="head"):
        TailPredictor(head="lowrank").fit(big["X"][:50], big["y"][:50])
    with pytest.raises(ConfigError, match="features"):
        model.predict_gains(np.zeros((1, 4)), 2)


def test_clone_and_repeatable_mlp(big: dict[str, np.ndarray]) -> None:
    model = TailPredictor(head="mlp", hidden=4, max_iter=30, random_state=7)
    assert clone(model).get_params() == model.get_params()
    a = clone(model).fit(big["X"][:300], big["y"][:300]).predict_gains(big["X"][:5], 4)
    b = clone(model).fit(big["X"][:300], big["y"][:300]).predict_gains(big["X"][:5], 4)
    np.testing.assert_array_equal(a, b)
    other = TailPredictor(head="mlp", hidden=4, max_iter=30, random_state=8)
    c = other.fit(big["X"][:300], big["y"][:300]).predict_gains(big["X"][:5], 4)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("head", ["logistic", "mlp"])
def test_save_load_round_trip(tmp_path: Path, big: dict[str, np.ndarray], head: str) -> None:
    model = TailPredictor(head=head, hidden=3, max_iter=40).fit(
        big["X"][:300], big["y"][:300], meta={"features": "fake", "task": "arithmetic"}
    )
    path = model.save(tmp_path / "tail.npz")
    for loaded in (TailPredictor.load(path), load_predictor(path), load_for_run(path, "predictor")):
        assert isinstance(loaded, TailPredictor)
        assert loaded.get_params() == model.get_params()
        assert loaded.meta_ == model.meta_
        assert loaded.concentration_ == model.concentration_
        np.testing.assert_array_equal(
            loaded.predict_gains(big["X"][:20], 8), model.predict_gains(big["X"][:20], 8)
        )
    with np.load(path, allow_pickle=False) as f:
        assert json.loads(str(f["header"]))["format"] == "howhard.TailPredictor"


def test_load_refuses_another_kind_and_a_bad_concentration(
    tmp_path: Path, fitted: TailPredictor
) -> None:
    from howhard.predict import SuccessPredictor

    other = SuccessPredictor().fit(np.zeros((2, 1)), [[1, 2], [0, 2]]).save(tmp_path / "s.npz")
    with pytest.raises(ConfigError, match="SuccessPredictor"):
        TailPredictor.load(other)
    path = fitted.save(tmp_path / "t.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["log_concentration"] = np.asarray(50.0)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match="log_concentration"):
        TailPredictor.load(tmp_path / "bad.npz")


# -------------------------------------------------------------------- howhard train --head tail


def _pool(n: int, seed: int) -> Pool:
    """Arithmetic-like prompts whose hardness shows in the text: 'hard' ones are never solved."""
    rng = np.random.default_rng(seed)
    ids, prompts, rewards = [], [], []
    for i in range(n):
        hard = i % 3 == 0
        a, b = rng.integers(10, 99, size=2)
        prompts.append(f"What is {a} {'*' if hard else '+'} {b}?")
        ids.append(f"q{seed}-{i}")
        lam = 0.0 if hard else rng.beta(2, 2)
        rewards.append((rng.uniform(size=8) < lam).astype(float))
    return Pool(tuple(ids), tuple(prompts), tuple(rewards))


def test_train_head_tail_selects_and_saves_a_tail_predictor(tmp_path: Path) -> None:
    pool = _pool(150, seed=0)
    X = np.array([[p.count("*"), p.count("+"), len(p)] for p in pool.prompts], dtype=float)
    result = train(pool, X, head="tail")
    assert isinstance(result.predictor, TailPredictor)
    assert set(result.holdout) == {f"tail alpha={a:g}" for a in (1e-3, 1e-2, 1e-1, 1.0)}
    # A query never solved can be explained by π → 1 or by μ → 0 (a Beta piled at 0): the two
    # are not told apart by its samples, but its best-of-b success is, and that is what allocates.
    q8 = result.predictor.predict_q(X, 8)[:, 8]
    hard = np.array(["*" in p for p in pool.prompts])
    assert q8[hard].max() < 0.05
    assert q8[~hard].min() > 0.7


def test_train_head_tail_needs_binary_rewards() -> None:
    pool = _pool(20, seed=1)
    continuous = Pool(pool.ids, pool.prompts, tuple(r * 0.5 for r in pool.rewards))
    with pytest.raises(ConfigError, match="binary"):
        train(continuous, np.zeros((20, 1)), head="tail")


@pytest.mark.integration
def test_cli_train_and_evaluate_with_head_tail(tmp_path: Path) -> None:
    """The real command line: `howhard train --head tail` on a pool file with ngrams features,
    then `howhard evaluate` with the saved model."""
    import subprocess
    import sys

    from howhard.pool import write_pool

    write_pool(_pool(120, seed=2), tmp_path / "train.jsonl")
    write_pool(_pool(60, seed=3), tmp_path / "eval.jsonl")
    env_path = str(Path(__file__).resolve().parents[1] / "src")
    env = {"PYTHONPATH": env_path, "OMP_WAIT_POLICY": "PASSIVE", "PATH": "/usr/bin:/bin"}
    run = [sys.executable, "-m", "howhard"]
    out = subprocess.run(
        [
            *run,
            "train",
            str(tmp_path / "train.jsonl"),
            "--features",
            "ngrams",
            "--head",
            "tail",
            "--out",
            str(tmp_path / "tail.npz"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "tail alpha=" in out.stdout and "<- kept" in out.stdout
    assert isinstance(load_predictor(tmp_path / "tail.npz"), TailPredictor)
    out = subprocess.run(
        [
            *run,
            "evaluate",
            str(tmp_path / "eval.jsonl"),
            "--predictor",
            str(tmp_path / "tail.npz"),
            "--max-per-query",
            "8",
            "--budgets",
            "1,2,4",
            "--out",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["predictor"]["head"] == "tail (logistic)"
    assert report["predictor"]["eval_loss"]["model"] > 0


def test_groups_weight_each_feature_source_to_equal_total_variance() -> None:
    """With ``groups`` (the widths of column blocks from different feature sources, as
    `howhard train` passes for ``hidden+task``), block s of width d_s is scaled by
    w_s = sqrt(d / (S d_s)) after standardising, as in `SuccessPredictor.fit`."""
    data = synthetic(300, seed=3)
    X, y = data["X"], data["y"]
    plain = TailPredictor(alpha=1e-2).fit(X, y)
    grouped = TailPredictor(alpha=1e-2).fit(X, y, groups=[1, 2])
    weights = np.array([np.sqrt(3 / 2), np.sqrt(3 / 4), np.sqrt(3 / 4)])
    np.testing.assert_allclose(grouped.scale_, X.std(axis=0) / weights)
    np.testing.assert_allclose(plain.scale_, X.std(axis=0))
    assert not np.allclose(grouped.predict_q(X, 4), plain.predict_q(X, 4))
    with pytest.raises(ConfigError, match="groups"):
        TailPredictor().fit(X, y, groups=[1, 1])
