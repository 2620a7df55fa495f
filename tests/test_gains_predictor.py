"""Tests of howhard.predict.GainsPredictor (Δ(x, b) for continuous rewards) and its metrics."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from threadpoolctl import threadpool_limits

from howhard.allocate import binary_gains, greedy
from howhard.errors import BudgetError, ConfigError, ModelNotFoundError, NotFittedError
from howhard.pool import Pool
from howhard.predict import GainsPredictor, SuccessPredictor, gains_loss_table, load_predictor
from howhard.predict.gains import _gains, _objective, _shapes

BMAX = 8


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread() -> Iterator[None]:
    """L-BFGS on small problems is 10x slower when BLAS threads fight over 2 shared cores."""
    with threadpool_limits(1):
        yield


def beta_pool(n: int, seed: int) -> tuple[np.ndarray, Pool]:
    """Features X (n, 5), not standardised: X = 2 N(0, 1) + 3; and a pool of 16 rewards per query
    ~ Beta with mean μ = σ(2 x̃_0 − 0.5) of the standardised x̃_0 = (x_0 − 3) / 2, concentration 4."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)) * 2 + 3
    mu = 1 / (1 + np.exp(-(2 * (X[:, 0] - 3) / 2 - 0.5)))
    rewards = rng.beta(4 * mu, 4 * (1 - mu), size=(16, n)).T
    ids = tuple(f"q{i}" for i in range(n))
    return X, Pool(ids, ids, tuple(rewards))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    X, pool = beta_pool(400, seed=0)
    assert not pool.binary
    return X, pool.gains(BMAX)


@pytest.fixture(scope="module")
def fitted(data: tuple[np.ndarray, np.ndarray]) -> dict[str, GainsPredictor]:
    X, Y = data
    meta = {"featurizer": "fake", "dim": 5}
    return {
        head: GainsPredictor(head=head, hidden=8, max_iter=300).fit(X[:200], Y[:200], meta=meta)
        for head in ("linear", "mlp")
    }


# ------------------------------------------------------------------- the parametrisation, loss


def test_gains_are_products_of_sigmoids() -> None:
    z = np.array([[0.0, np.log(3.0), -np.inf], [np.inf, 0.0, 0.0]])  # σ: 1/2, 3/4, 0 | 1, 1/2, 1/2
    np.testing.assert_allclose(_gains(z), [[0.5, 0.375, 0.0], [1.0, 0.5, 0.25]], rtol=1e-12)


def test_linear_head_contains_the_binary_closed_form() -> None:
    lam = np.array([0.05, 0.3, 0.9])
    logit = np.log(lam / (1 - lam))[:, None]
    z = np.hstack([logit, -np.repeat(logit, 5, axis=1)])
    np.testing.assert_allclose(_gains(z), binary_gains(lam, 6), rtol=1e-12)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_gradient_matches_finite_differences(head: str) -> None:
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(7, 4)), rng.uniform(0, 0.3, size=(7, 5))
    size = sum(int(np.prod(shape)) for _, shape in _shapes(head, 4, 3, 5))
    theta = rng.normal(size=size)
    args = (X, Y, head, 3, 0.05, 0.02)
    _, grad = _objective(theta, *args)
    h = 1e-6
    numeric = [
        (_objective(theta + h * e, *args)[0] - _objective(theta - h * e, *args)[0]) / (2 * h)
        for e in np.eye(size)
    ]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_loss_is_scaled_mse_plus_penalty() -> None:
    X, Y = np.array([[1.0], [-1.0]]), np.array([[0.5, 0.1], [0.2, 0.0]])
    theta = np.array([0.3, -0.2, 0.1, -1.0])  # coef (1, 2), intercept (2,)
    z = X @ theta[:2][None] + theta[2:]
    sig = 1 / (1 + np.exp(-z))
    pred = np.column_stack([sig[:, 0], sig[:, 0] * sig[:, 1]])
    expected = np.mean((pred - Y) ** 2) / 0.25 + 0.1 * (0.3**2 + 0.2**2)
    loss, _ = _objective(theta, X, Y, "linear", 1, 0.1, 0.25)
    assert loss == pytest.approx(expected, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    head=st.sampled_from(["linear", "mlp"]),
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(1e-3, 1e3),
    X=hnp.arrays(float, (6, 3), elements=st.floats(-1e6, 1e6)),
)
def test_predictions_are_nonnegative_and_nonincreasing(
    head: str, seed: int, scale: float, X: np.ndarray
) -> None:
    rng = np.random.default_rng(seed)
    model = GainsPredictor(head=head, hidden=4, max_iter=1).fit(
        rng.normal(size=(5, 3)), rng.uniform(0, 0.2, size=(5, 6))
    )
    for name in ("coef_", "intercept_", "hidden_coef_", "hidden_intercept_"):
        if hasattr(model, name):
            setattr(model, name, rng.normal(size=getattr(model, name).shape) * scale)
    gains = model.predict_gains(X, 6)
    assert gains.shape == (6, 6)
    assert np.all(np.isfinite(gains))
    assert np.all(gains >= 0) and np.all(gains <= 1)
    assert np.all(np.diff(gains, axis=1) <= 0)


# --------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_beats_avg_baseline_on_heldout(
    head: str, data: tuple[np.ndarray, np.ndarray], fitted: dict[str, GainsPredictor]
) -> None:
    X, Y = data
    model = fitted[head]
    np.testing.assert_allclose(model.mean_gains_, Y[:200].mean(axis=0))
    table = gains_loss_table(model.predict_gains(X[200:], BMAX), Y[200:], model.mean_gains_)
    assert table["opt"] == 0.0
    assert table["gap_closed"] == pytest.approx(1 - table["model"] / table["avg"])
    assert table["gap_closed"] > 0.9, table  # the Beta mean is a function of x_0 (0.97 seen)
    assert model.score(X[200:], Y[200:]) == pytest.approx(-table["model"])


def test_strong_penalty_gives_the_mean_curve(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, Y = data
    model = GainsPredictor(alpha=1e4).fit(X[:200], Y[:200])
    pred = model.predict_gains(X[200:], BMAX)
    np.testing.assert_allclose(pred, np.broadcast_to(Y[:200].mean(axis=0), pred.shape), atol=2e-3)


def test_binary_pool_matches_success_predictor_closed_form() -> None:
    rng = np.random.default_rng(3)
    n = 600
    X = rng.normal(size=(n, 4))
    lam = 1 / (1 + np.exp(-(1.5 * X[:, 0] - 1.0)))
    rewards = (rng.uniform(size=(n, 16)) < lam[:, None]).astype(float)
    ids = tuple(f"q{i}" for i in range(n))
    pool = Pool(ids, ids, tuple(rewards))
    assert pool.binary
    counts = np.column_stack([pool.successes(), pool.n_samples])
    gains = GainsPredictor().fit(X[:400], pool.gains(BMAX)[:400]).predict_gains(X[400:], BMAX)
    closed = SuccessPredictor().fit(X[:400], counts[:400]).predict_gains(X[400:], BMAX)
    true = binary_gains(lam[400:], BMAX)
    # Seen: 0.003 mean and 0.014 max |gains − closed|; 0.0076 mean |gains − true| (closed: 0.0066).
    assert np.mean(np.abs(gains - closed)) < 0.01
    assert np.max(np.abs(gains - closed)) < 0.05
    assert np.mean(np.abs(gains - true)) < 0.015


def test_predict_q_and_prefixes(fitted: dict[str, GainsPredictor]) -> None:
    X = beta_pool(5, seed=9)[0]
    model = fitted["mlp"]
    gains = model.predict_gains(X, BMAX)
    q = model.predict_q(X, BMAX)
    assert q.shape == (5, BMAX + 1)
    np.testing.assert_array_equal(q[:, 0], 0.0)
    np.testing.assert_allclose(np.diff(q, axis=1), gains, atol=1e-15)
    np.testing.assert_array_equal(model.predict_gains(X, 3), gains[:, :3])
    np.testing.assert_array_equal(model.predict_q(X, 3), q[:, :4])


def test_greedy_on_predicted_gains_is_optimal_and_spends_the_budget(
    fitted: dict[str, GainsPredictor],
) -> None:
    X = beta_pool(3, seed=4)[0]
    model = fitted["linear"]
    gains, q = model.predict_gains(X, 4), model.predict_q(X, 4)
    counts = greedy(gains, budget=2.0)
    assert counts.sum() == 6 and counts.max() <= 4
    best = max(
        sum(q[i, b] for i, b in enumerate(alloc))
        for alloc in itertools.product(range(5), repeat=3)
        if sum(alloc) == 6
    )
    assert sum(q[i, b] for i, b in enumerate(counts)) == pytest.approx(best, abs=1e-12)


def test_fit_state_clone_and_cross_validation(
    data: tuple[np.ndarray, np.ndarray], fitted: dict[str, GainsPredictor]
) -> None:
    model = fitted["mlp"]
    assert (model.n_features_in_, model.bmax_) == (5, BMAX)
    assert model.coef_.shape == (8, BMAX) and model.hidden_coef_.shape == (5, 8)
    assert model.meta_ == {"featurizer": "fake", "dim": 5}
    assert model.loss_ < 1.0  # the scaled loss starts near 1 at the mean curve
    fresh = clone(model)
    assert fresh.get_params() == model.get_params()
    with pytest.raises(NotFittedError):
        fresh.predict_gains(data[0], 2)
    X, Y = data
    scores = cross_val_score(GainsPredictor(max_iter=100), X[:150], Y[:150], cv=3)
    assert scores.shape == (3,) and np.all(scores < 0)


def test_refit_as_linear_drops_the_hidden_layer(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, Y = data
    model = GainsPredictor(head="mlp", hidden=3, max_iter=5).fit(X[:50], Y[:50])
    model.set_params(head="linear").fit(X[:50], Y[:50])
    assert not hasattr(model, "hidden_coef_") and model.coef_.shape == (5, BMAX)


# ----------------------------------------------------------------------------------- errors


def test_bmax_above_fitted_extends_the_last_ratio(fitted: dict[str, GainsPredictor]) -> None:
    X = beta_pool(3, seed=1)[0]
    model = fitted["linear"]
    short, long = model.predict_gains(X, 8), model.predict_gains(X, 12)
    assert np.array_equal(long[:, :8], short)
    ratio = short[:, 7] / short[:, 6]
    assert np.allclose(long[:, 8:] / long[:, 7:11], ratio[:, None])
    assert np.all(np.diff(long, axis=1) <= 0) and np.all(long >= 0)
    assert model.predict_q(X, 12).shape == (3, 13)
    with pytest.raises(BudgetError, match="integer >= 1"):
        model.predict_gains(X, 0)


@pytest.mark.parametrize(
    ("X", "y", "named"),
    [
        (np.zeros((3, 2)), np.zeros(3), r"y must have shape \(n_queries, Bmax\)"),
        (np.zeros((3, 2)), np.zeros((3, 0)), r"y must have shape"),
        (np.zeros((3, 2)), [[0.1, np.nan]] * 3, "y contains NaN"),
        (np.zeros((3, 2)), [[0.5, 0.2]] * 2 + [[1.5, 0]], r"gains in \[0, 1\].*\[0, 1.5\]"),
        (np.zeros((3, 2)), [[0.5, -0.1]] * 3, r"gains in \[0, 1\]"),
        (np.zeros((3, 2)), [["a", "b"]] * 3, "numeric matrix of gains"),
        (np.zeros((2, 2)), np.zeros((3, 4)), "X has 2 rows but y has 3"),
        (np.zeros(3), np.zeros((3, 4)), "2-D array"),
        ([[np.nan, 0.0]] * 3, np.zeros((3, 4)), "X contains NaN"),
    ],
)
def test_fit_rejects_bad_input(X: object, y: object, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        GainsPredictor().fit(X, y)


def test_fit_accepts_rounding_negatives() -> None:
    y = np.array([[0.3, -1e-10], [0.1, 0.0]])
    assert GainsPredictor(max_iter=5).fit(np.eye(2), y).bmax_ == 2


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"head": "logistic"}, r"head must be one of \('linear', 'mlp'\)"),
        ({"head": "mlp", "hidden": 0}, "hidden must be a positive integer"),
        ({"alpha": -1.0}, "alpha"),
        ({"max_iter": 0}, "max_iter"),
    ],
)
def test_fit_rejects_bad_params(params: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        GainsPredictor(**params).fit(np.eye(2), [[0.2, 0.1], [0.1, 0.0]])


def test_not_fitted_and_wrong_features(tmp_path: Path, fitted: dict[str, GainsPredictor]) -> None:
    model = GainsPredictor()
    for call in (
        lambda: model.predict_gains(np.zeros((1, 5)), 2),
        lambda: model.predict_q(np.zeros((1, 5)), 2),
        lambda: model.score(np.zeros((1, 5)), np.zeros((1, 2))),
        lambda: model.save(tmp_path / "m.npz"),
    ):
        with pytest.raises(NotFittedError, match=r"GainsPredictor is not fitted yet: call fit"):
            call()
    assert not (tmp_path / "m.npz").exists()
    with pytest.raises(ConfigError, match=r"X has 4 features .* fitted on 5;.*'featurizer'"):
        fitted["linear"].predict_gains(np.zeros((1, 4)), 2)
    with pytest.raises(ConfigError, match="meta must be a JSON-serialisable dict"):
        GainsPredictor().fit(np.eye(2), [[0.2], [0.1]], meta={"x": object()})


# -------------------------------------------------------------------------------- save/load


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_save_load_round_trip(
    head: str,
    tmp_path: Path,
    data: tuple[np.ndarray, np.ndarray],
    fitted: dict[str, GainsPredictor],
) -> None:
    model = fitted[head]
    path = model.save(tmp_path / "sub" / "gains.bin")
    assert path == tmp_path / "sub" / "gains.bin"
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    X = data[0][200:]
    for loaded in (GainsPredictor.load(path), load_predictor(path)):
        assert isinstance(loaded, GainsPredictor)
        np.testing.assert_array_equal(loaded.predict_gains(X, BMAX), model.predict_gains(X, BMAX))
        np.testing.assert_array_equal(loaded.mean_gains_, model.mean_gains_)
        assert loaded.get_params() == model.get_params()
        assert (loaded.meta_, loaded.bmax_, loaded.n_iter_, loaded.loss_, loaded.converged_) == (
            model.meta_,
            model.bmax_,
            model.n_iter_,
            model.loss_,
            model.converged_,
        )


def test_load_predictor_dispatches_on_the_header(tmp_path: Path) -> None:
    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    success = SuccessPredictor().fit(X, [[1, 4], [2, 4], [3, 4], [4, 4]])
    loaded = load_predictor(success.save(tmp_path / "s.npz"))
    assert isinstance(loaded, SuccessPredictor)
    np.testing.assert_array_equal(loaded.predict_gains(X, 3), success.predict_gains(X, 3))
    with pytest.raises(ModelNotFoundError, match="no saved predictor at"):
        load_predictor(tmp_path / "absent.npz")
    np.savez(tmp_path / "other.npz", header=np.array(json.dumps({"format": "sklearn.Thing"})))
    with pytest.raises(ConfigError, match=r"header format 'sklearn.Thing' is not one of"):
        load_predictor(tmp_path / "other.npz")


def _rewrite_header(path: Path, out: Path, **changes: object) -> Path:
    with np.load(path, allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files}
    header = json.loads(str(arrays["header"][()]))
    header.update(changes)
    arrays["header"] = np.array(json.dumps(header))
    np.savez(out, **arrays)
    return out


def test_load_wrong_kind_and_bad_files(tmp_path: Path, fitted: dict[str, GainsPredictor]) -> None:
    success = SuccessPredictor().fit(np.eye(2), [[1, 2], [2, 2]]).save(tmp_path / "s.npz")
    gains = fitted["mlp"].save(tmp_path / "g.npz")
    with pytest.raises(
        ConfigError, match=r"not a saved GainsPredictor.*it holds a saved SuccessPredictor"
    ):
        GainsPredictor.load(success)
    with pytest.raises(
        ConfigError, match=r"not a saved SuccessPredictor.*it holds a saved GainsPredictor"
    ):
        SuccessPredictor.load(gains)
    cases = {
        _rewrite_header(gains, tmp_path / "v.npz", version=2): "format version 2; this howhard",
        _rewrite_header(gains, tmp_path / "b.npz", bmax=9): r"'mean_gains': expected shape \(9,\)",
        _rewrite_header(gains, tmp_path / "p.npz", params={"head": "mlp"}): "unexpected parameters",
        _rewrite_header(gains, tmp_path / "o.npz", format="x.Y"): "header format is not",
    }
    for path, named in cases.items():
        with pytest.raises(ConfigError, match=named):
            GainsPredictor.load(path)
    with pytest.raises(ModelNotFoundError, match=r"no saved GainsPredictor at .*\.save\(path\)"):
        GainsPredictor.load(tmp_path / "absent.npz")


# ---------------------------------------------------------------------------------- metrics


def test_gains_loss_table_hand_computed() -> None:
    targets = np.array([[0.5, 0.1], [0.1, 0.0]])
    predicted = np.array([[0.4, 0.1], [0.1, 0.1]])
    table = gains_loss_table(predicted, targets, [0.3, 0.05])
    model = (0.1**2 + 0.1**2) / 4
    avg = (0.2**2 + 0.05**2 + 0.2**2 + 0.05**2) / 4
    assert table == pytest.approx(
        {"model": model, "avg": avg, "opt": 0.0, "gap_closed": 1 - model / avg}
    )
    same = gains_loss_table(targets, targets, [0.3, 0.05])
    assert same["model"] == 0.0 and same["gap_closed"] == 1.0
    flat = gains_loss_table(predicted, [[0.2, 0.1]] * 2, [0.2, 0.1])
    assert flat["avg"] == 0.0 and np.isnan(flat["gap_closed"])


@pytest.mark.parametrize(
    ("predicted", "targets", "mean", "named"),
    [
        (np.zeros((2, 3)), np.zeros(3), np.zeros(3), "targets must be a non-empty 2-D"),
        (np.zeros((2, 2)), np.zeros((2, 3)), np.zeros(3), r"predicted has shape \(2, 2\)"),
        (np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(2), r"train_mean .* shape \(3,\)"),
        (np.full((2, 3), np.nan), np.zeros((2, 3)), np.zeros(3), "predicted contains NaN"),
    ],
)
def test_gains_loss_table_rejects_bad_input(
    predicted: np.ndarray, targets: np.ndarray, mean: np.ndarray, named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        gains_loss_table(predicted, targets, mean)
