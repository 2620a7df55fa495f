"""Tests of howhard.predict: the success-rate predictor λ(x) and its held-out metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

import howhard.predict as predict
from howhard.errors import BudgetError, ConfigError, ModelNotFoundError, NotFittedError
from howhard.predict import SuccessPredictor, binomial_log_loss, loss_table
from howhard.predict.success import _objective, _shapes


def synthetic(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features X (not standardised), λ = σ(x̃·w* − 0.5), labels [c, 16] with c ~ Bin(16, λ)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d) * 2 / np.sqrt(d)
    X = rng.normal(size=(n, d)) * 3 + 1
    lam = 1 / (1 + np.exp(-(((X - 1) / 3) @ w - 0.5)))
    trials = np.full(n, 16)
    return X, lam, np.column_stack([rng.binomial(trials, lam), trials])


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return synthetic(n=1200, d=12, seed=0)


@pytest.fixture(scope="module")
def fitted(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, SuccessPredictor]:
    X, _, y = data
    meta = {"featurizer": "fake", "dim": 12}
    return {
        head: SuccessPredictor(head=head, hidden=16).fit(X[:600], y[:600], meta=meta)
        for head in ("logistic", "mlp")
    }


def test_public_names() -> None:
    assert predict.__all__ == [
        "GainsPredictor",
        "MultiPredictor",
        "StackedPredictor",
        "SuccessPredictor",
        "TailPredictor",
        "binomial_log_loss",
        "fit_multi",
        "gains_loss_table",
        "load_predictor",
        "loss_table",
    ]


# ---------------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("head", ["logistic", "mlp"])
def test_gradient_matches_finite_differences(head: str) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(7, 4))
    n = rng.integers(1, 9, size=7).astype(float)
    c = n * rng.uniform(size=7)  # fractional (soft) successes
    size = sum(int(np.prod(shape)) for _, shape in _shapes(head, 4, 3))
    theta = rng.normal(size=size)
    args = (X, c, n, head, 3, 0.05)
    _, grad = _objective(theta, *args)
    h = 1e-6
    numeric = np.array(
        [
            (_objective(theta + h * e, *args)[0] - _objective(theta - h * e, *args)[0]) / (2 * h)
            for e in np.eye(size)
        ]
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_loss_is_per_trial_cross_entropy_plus_penalty() -> None:
    X = np.array([[1.0], [-2.0]])
    c, n = np.array([1.0, 3.0]), np.array([2.0, 4.0])
    theta = np.array([0.5, -0.25])  # w, b
    lam = 1 / (1 + np.exp(-(X[:, 0] * 0.5 - 0.25)))
    expected = binomial_log_loss(lam, c, n) + 0.1 * 0.5**2
    assert _objective(theta, X, c, n, "logistic", 1, 0.1)[0] == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------ fitting


@pytest.mark.parametrize("head", ["logistic", "mlp"])
def test_recovers_true_success_rate(
    head: str,
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    fitted: dict[str, SuccessPredictor],
) -> None:
    X, lam, y = data
    c, n = y[600:, 0], y[600:, 1]
    train_mean = y[:600, 0].sum() / y[:600, 1].sum()
    table = loss_table(fitted[head].predict_proba_success(X[600:]), c, n, train_mean)
    truth = binomial_log_loss(lam[600:], c, n)
    assert table["model"] < truth + 0.015
    assert table["gap_closed"] > 0.5
    assert fitted[head].converged_


def test_strong_penalty_gives_overall_rate(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    X, _, y = data
    lam = SuccessPredictor(alpha=1e4).fit(X, y).predict_proba_success(X)
    np.testing.assert_allclose(lam, y[:, 0].sum() / y[:, 1].sum(), atol=1e-4)


def test_soft_labels_and_constant_features() -> None:
    X = np.zeros((3, 2))  # nothing to learn from: λ is the pooled rate Σc / Σn
    y = np.array([[0.5, 2.0], [2.25, 3.0], [0.0, 5.0]])
    for head in ("logistic", "mlp"):
        model = SuccessPredictor(head=head, hidden=3, alpha=0.0).fit(X, y)
        np.testing.assert_allclose(model.predict_proba_success(X), 2.75 / 10.0, rtol=1e-6)
        assert model.n_iter_ == 0  # the fit starts from the pooled rate, already optimal here


def test_mlp_is_repeatable_with_random_state(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    X, _, y = data
    X, y = X[:100], y[:100]

    def fit(seed: int) -> np.ndarray:
        model = SuccessPredictor(head="mlp", hidden=4, max_iter=30, random_state=seed)
        return model.fit(X, y).predict_proba_success(X)

    np.testing.assert_array_equal(fit(3), fit(3))
    assert not np.array_equal(fit(3), fit(4))


def test_fit_returns_self_and_sets_state(fitted: dict[str, SuccessPredictor]) -> None:
    model = fitted["mlp"]
    assert model.n_features_in_ == 12
    assert model.hidden_coef_.shape == (12, 16)
    assert model.coef_.shape == (16,)
    assert isinstance(model.intercept_, float)
    assert model.meta_ == {"featurizer": "fake", "dim": 12}
    assert fitted["logistic"].coef_.shape == (12,)
    assert not hasattr(fitted["logistic"], "hidden_coef_")


@pytest.mark.parametrize(
    ("X", "y", "named"),
    [
        (np.zeros((3, 2)), np.ones((3, 3)), "y must have shape"),
        (np.zeros((3, 2)), np.ones(3), "y must have shape"),
        (np.zeros((4, 2)), np.ones((3, 2)), "X has 4 rows but y has 3"),
        (np.zeros(3), np.ones((3, 2)), "X must be a 2-D array"),
        (np.full((3, 2), np.nan), np.ones((3, 2)), "X contains NaN"),
        (np.zeros((3, 2)), [[1, 1], [2, 1], [0, 1]], "successes must lie in [0, trials]"),
        (np.zeros((3, 2)), [[0, 1], [0, 0], [0, 1]], "trials must be > 0"),
        (np.zeros((3, 2)), [[0, 1], [np.inf, 1], [0, 1]], "successes contains NaN"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "empty"),
    ],
)
def test_fit_rejects_bad_input(X: np.ndarray, y: np.ndarray, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        SuccessPredictor().fit(X, y)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"head": "mpl"}, "head must be one of"),
        ({"head": "mlp", "hidden": 0}, "hidden must be a positive integer"),
        ({"alpha": -1.0}, "alpha"),
        ({"max_iter": 0}, "max_iter"),
    ],
)
def test_fit_rejects_bad_params(params: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        SuccessPredictor(**params).fit(np.zeros((2, 1)), np.ones((2, 2)))  # type: ignore[arg-type]


def test_meta_must_be_json() -> None:
    with pytest.raises(ConfigError, match="meta must be a JSON-serialisable dict"):
        SuccessPredictor().fit(np.zeros((2, 1)), np.ones((2, 2)), meta={"f": object()})


# --------------------------------------------------------------------------------- prediction


def test_predict_before_fit_raises(tmp_path: Path) -> None:
    model = SuccessPredictor()
    X = np.zeros((2, 3))
    for call in (
        lambda: model.predict_proba_success(X),
        lambda: model.predict_q(X, 4),
        lambda: model.predict_gains(X, 4),
        lambda: model.save(tmp_path / "m.npz"),
    ):
        with pytest.raises(NotFittedError, match=r"call fit\(X, y\) first"):
            call()


def test_wrong_number_of_features(fitted: dict[str, SuccessPredictor]) -> None:
    with pytest.raises(ConfigError, match=r"X has 5 features .* fitted on 12"):
        fitted["logistic"].predict_proba_success(np.zeros((2, 5)))


@pytest.mark.parametrize("head", ["logistic", "mlp"])
def test_predict_q_and_gains_closed_form(
    head: str,
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    fitted: dict[str, SuccessPredictor],
) -> None:
    X = np.vstack([data[0][:50], 1e3 * data[0][:5]])  # extreme rows hit the λ clipping
    model = fitted[head]
    lam = model.predict_proba_success(X)
    assert np.all((lam >= 1e-6) & (lam <= 1 - 1e-6))
    if head == "logistic":  # (the mlp's tanh layer saturates instead)
        assert lam.min() == 1e-6 and lam.max() == 1 - 1e-6
    q = model.predict_q(X, 10)
    assert q.shape == (55, 11)
    assert np.all(q[:, 0] == 0)
    b = np.arange(11)
    np.testing.assert_allclose(q, 1 - (1 - lam[:, None]) ** b, rtol=1e-12, atol=1e-15)
    assert np.all(np.diff(q, axis=1) >= 0) and np.all(q[:, 1:] > 0) and np.all(q <= 1)
    gains = model.predict_gains(X, 10)
    assert gains.shape == (55, 10)
    np.testing.assert_allclose(gains, lam[:, None] * (1 - lam[:, None]) ** (b[1:] - 1), rtol=1e-12)
    np.testing.assert_allclose(gains, np.diff(q, axis=1), rtol=1e-6, atol=1e-15)
    assert np.all(np.diff(gains, axis=1) <= 0)  # diminishing returns


@pytest.mark.parametrize("bmax", [0, -1, 2.5])
def test_bad_bmax(fitted: dict[str, SuccessPredictor], bmax: int) -> None:
    with pytest.raises(BudgetError, match="bmax"):
        fitted["logistic"].predict_q(np.zeros((1, 12)), bmax)
    with pytest.raises(BudgetError, match="bmax"):
        fitted["logistic"].predict_gains(np.zeros((1, 12)), bmax)


# -------------------------------------------------------------------------- sklearn contract


def test_clone_and_params(fitted: dict[str, SuccessPredictor]) -> None:
    copy = clone(fitted["mlp"])
    assert copy.get_params() == fitted["mlp"].get_params()
    assert copy.get_params()["head"] == "mlp"
    with pytest.raises(NotFittedError):
        copy.predict_proba_success(np.zeros((1, 12)))
    assert copy.set_params(alpha=0.5).alpha == 0.5
    assert fitted["mlp"].alpha == 1e-3


def test_cross_validation(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    X, _, y = data
    scores = cross_val_score(SuccessPredictor(), X[:300], y[:300], cv=3)
    assert scores.shape == (3,)
    assert np.all(np.isfinite(scores)) and np.all(scores < 0)


# --------------------------------------------------------------------------------- save/load


@pytest.mark.parametrize("head", ["logistic", "mlp"])
def test_save_load_round_trip(
    head: str,
    tmp_path: Path,
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    fitted: dict[str, SuccessPredictor],
) -> None:
    model = fitted[head]
    path = model.save(tmp_path / "sub" / "model.bin")
    assert path == tmp_path / "sub" / "model.bin"  # the exact path: no ".npz" appended
    loaded = SuccessPredictor.load(path)
    X = data[0][600:]
    np.testing.assert_array_equal(loaded.predict_proba_success(X), model.predict_proba_success(X))
    np.testing.assert_array_equal(loaded.predict_q(X, 8), model.predict_q(X, 8))
    assert loaded.get_params() == model.get_params()
    assert loaded.meta_ == model.meta_
    assert (loaded.n_iter_, loaded.loss_, loaded.converged_) == (
        model.n_iter_,
        model.loss_,
        model.converged_,
    )
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp file left behind


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        ModelNotFoundError, match=r"no saved SuccessPredictor at .*SuccessPredictor\.save"
    ):
        SuccessPredictor.load(tmp_path / "absent.npz")
    with pytest.raises(FileNotFoundError):
        SuccessPredictor.load(tmp_path)  # a directory is not a model file either


def _rewrite_header(path: Path, out: Path, **changes: object) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    header = json.loads(str(arrays["header"][()]))
    header.update(changes)
    arrays["header"] = np.array(json.dumps(header))
    np.savez(out, **arrays)


def test_load_bad_files(tmp_path: Path, fitted: dict[str, SuccessPredictor]) -> None:
    good = fitted["mlp"].save(tmp_path / "good.npz")
    text = tmp_path / "text.npz"
    text.write_text("hello")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    headless = tmp_path / "headless.npz"
    np.savez(headless, mean=np.zeros(3))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    future = tmp_path / "future.npz"
    _rewrite_header(good, future, version=2)
    other = tmp_path / "other.npz"
    _rewrite_header(good, other, format="something.else")
    shape = tmp_path / "shape.npz"
    _rewrite_header(good, shape, n_features_in=13)
    cases = {
        text: "not a saved SuccessPredictor",
        single: "single .npy array",
        headless: "no JSON header",
        truncated: "not a saved SuccessPredictor",
        future: "format version 2; this howhard reads version 1",
        other: "header format is not",
        shape: "expected shape",
    }
    for path, named in cases.items():
        with pytest.raises(ConfigError, match=named):
            SuccessPredictor.load(path)


# ----------------------------------------------------------------------------------- metrics


def test_loss_table_hand_computed() -> None:
    # Query 1: 1 of 2 succeed; query 2: 0 of 2. Σn = 4.
    table = loss_table([0.5, 0.25], [1, 0], [2, 2], train_mean=0.5)
    model = (2 * math.log(2) + 2 * math.log(4 / 3)) / 4  # −[log .5 + log .5 + 2 log .75] / 4
    avg = math.log(2)  # λ = .5 everywhere: −4 log .5 / 4
    opt = (2 * math.log(2) - 2 * math.log1p(-1e-6)) / 4  # λ2 = 0 is clipped to 1e-6
    assert table["model"] == pytest.approx(model, rel=1e-12)
    assert table["avg"] == pytest.approx(avg, rel=1e-12)
    assert table["opt"] == pytest.approx(opt, rel=1e-12)
    assert table["gap_closed"] == pytest.approx((avg - model) / (avg - opt), rel=1e-12)
    assert table["gap_closed"] == pytest.approx(math.log(1.5) / math.log(2), rel=1e-5)


def test_loss_table_gap_is_nan_when_avg_is_optimal() -> None:
    table = loss_table([0.3, 0.6], [1, 2], [2, 4], train_mean=0.5)
    assert table["avg"] == table["opt"]
    assert math.isnan(table["gap_closed"])


def test_binomial_log_loss_weights_by_trials() -> None:
    # One query of 10 trials weighs as much as ten one-trial queries with the same counts.
    lam = [0.2, 0.7]
    big = binomial_log_loss(lam, [3.0, 1.0], [10.0, 1.0])
    expanded = binomial_log_loss([0.2] * 10 + [0.7], [1.0] * 3 + [0.0] * 7 + [1.0], [1.0] * 11)
    assert big == pytest.approx(expanded, rel=1e-12)
    assert binomial_log_loss([0.0, 1.0], [0, 3], [2, 3]) == pytest.approx(
        -5 * math.log1p(-1e-6) / 5, rel=1e-9
    )


@pytest.mark.parametrize(
    ("lam", "c", "n", "named"),
    [
        ([0.5], [1, 1], [2, 2], "lam must have one value per query"),
        ([1.5, 0.5], [1, 1], [2, 2], r"lam must lie in \[0, 1\]"),
        ([0.5, 0.5], [1], [2, 2], "one value per query"),
        ([0.5, 0.5], [3, 1], [2, 2], "successes must lie"),
        ([0.5, 0.5], [[1, 1]], [2, 2], "successes must be a 1-D array"),
    ],
)
def test_binomial_log_loss_rejects_bad_input(
    lam: list[float], c: list[float], n: list[float], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        binomial_log_loss(lam, c, n)


def test_loss_table_rejects_bad_train_mean() -> None:
    with pytest.raises(ConfigError, match="train_mean"):
        loss_table([0.5], [1], [2], train_mean=1.5)


def test_refit_with_another_head_drops_the_hidden_layer() -> None:
    X, _, y = synthetic(n=60, d=3, seed=2)
    model = SuccessPredictor(head="mlp", hidden=2, max_iter=5).fit(X, y)
    assert model.set_params(head="logistic").fit(X, y) is model
    assert not hasattr(model, "hidden_coef_") and model.coef_.shape == (3,)
