"""Tests of howhard.predict.stacked: one head per feature source, a second-level head on their
out-of-fold logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit, logit

from howhard.errors import ConfigError, NotFittedError
from howhard.pool import Pool, write_pool
from howhard.predict import (
    StackedPredictor,
    SuccessPredictor,
    TailPredictor,
    load_predictor,
)
from howhard.runs.train import compare
from howhard.tasks import get_task
from howhard.tasks.arithmetic import FEATURE_NAMES, query_features

ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)


def synthetic(n: int, seed: int, trials: int = 8) -> dict[str, np.ndarray]:
    """Two sources: block A (2 columns) and block B (3 columns) each carry part of the logit
    z = 1.2 a_0 + 0.9 b_1 − 0.4; c ~ Binomial(trials, σ(z))."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    z = 1.2 * X[:, 0] + 0.9 * X[:, 3] - 0.4
    c = rng.binomial(trials, expit(z)).astype(float)
    return {"X": X, "y": np.column_stack([c, np.full(n, float(trials))]), "z": z}


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return synthetic(200, seed=0)


def nll(p: np.ndarray, y: np.ndarray) -> float:
    """The exact mean per-trial binomial negative log-likelihood, written out."""
    c, n = y[:, 0], y[:, 1]
    return float(-(c * np.log(p) + (n - c) * np.log(1 - p)).sum() / n.sum())


def brute_out_of_fold(X: np.ndarray, y: np.ndarray, k: int, seed: int, alpha: float) -> np.ndarray:
    """Each query's logit by a logistic head fitted on the other folds, fold = permutation % k."""
    fold = np.random.default_rng(seed).permutation(len(X)) % k
    z = np.zeros(len(X))
    for f in range(k):
        head = SuccessPredictor(alpha=alpha).fit(X[fold != f], y[fold != f])
        z[fold == f] = logit(head.predict_proba_success(X[fold == f]))
    return z


# ------------------------------------------------------------------ level one: out of fold


def test_out_of_fold_losses_and_chosen_strengths_match_a_brute_force_loop(data) -> None:
    X, y = data["X"], data["y"]
    m = StackedPredictor(folds=4, random_state=7).fit(X, y, groups=[2, 3])
    for s, block in enumerate([slice(0, 2), slice(2, 5)]):
        losses = [nll(expit(brute_out_of_fold(X[:, block], y, 4, 7, a)), y) for a in ALPHAS]
        np.testing.assert_allclose(m.cv_losses_[s], losses, rtol=1e-9)
        assert m.base_alphas_[s] == ALPHAS[int(np.argmin(losses))]
        # the refitted head is the plain logistic on the source alone at the chosen strength
        alone = SuccessPredictor(alpha=m.base_alphas_[s]).fit(X[:, block], y)
        np.testing.assert_allclose(
            m.bases_[s].predict_proba_success(X[:, block]), alone.predict_proba_success(X[:, block])
        )


# --------------------------------------------------------------------------- level two


def test_top_is_the_maximum_likelihood_logistic_on_the_out_of_fold_logits(data) -> None:
    """With alpha = 0 the top maximises the exact binomial likelihood of σ(v·Z + b) on the
    out-of-fold logits Z; a derivative-free optimiser on the written-out likelihood agrees."""
    X, y = data["X"], data["y"]
    m = StackedPredictor(alpha=0.0, folds=4, random_state=3).fit(X, y, groups=[2, 3])
    Z = np.column_stack(
        [
            brute_out_of_fold(X[:, block], y, 4, 3, a)
            for block, a in zip([slice(0, 2), slice(2, 5)], m.base_alphas_, strict=True)
        ]
    )
    res = minimize(
        lambda t: nll(expit(Z @ t[:2] + t[2]), y),
        np.zeros(3),
        method="Nelder-Mead",
        options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000},
    )
    np.testing.assert_allclose(m.top_.coef_, res.x[:2], atol=2e-4)
    assert m.top_.intercept_ == pytest.approx(res.x[2], abs=2e-4)
    assert m.loss_ == pytest.approx(res.fun, abs=1e-9)
    assert m.loss_ == pytest.approx(nll(expit(Z @ m.top_.coef_ + m.top_.intercept_), y))
    # each source alone is shrunk toward the mean: trusting both, the top weights each up
    assert np.all(m.top_.coef_ > 0.5)


def test_prediction_is_the_top_on_the_refitted_heads_logits(data) -> None:
    X, y = data["X"], data["y"]
    m = StackedPredictor().fit(X, y, groups=[2, 3])
    new = synthetic(50, seed=1)["X"]
    Z = np.column_stack(
        [
            logit(SuccessPredictor(alpha=a).fit(X[:, b], y).predict_proba_success(new[:, b]))
            for b, a in zip([slice(0, 2), slice(2, 5)], m.base_alphas_, strict=True)
        ]
    )
    lam = expit(Z @ m.top_.coef_ + m.top_.intercept_)
    np.testing.assert_allclose(m.source_logits(new), Z, rtol=1e-6)
    np.testing.assert_allclose(m.predict_proba_success(new), lam, rtol=1e-6)
    b = np.arange(1, 6)
    np.testing.assert_allclose(
        m.predict_gains(new, 5), lam[:, None] * (1 - lam[:, None]) ** (b - 1), rtol=1e-6
    )
    np.testing.assert_allclose(m.predict_q(new, 5)[:, 3], 1 - (1 - lam) ** 3, rtol=1e-6)


def test_tail_top_is_the_tail_head_on_the_out_of_fold_logits(data) -> None:
    X, y = data["X"], data["y"]
    m = StackedPredictor(top="tail", folds=4, random_state=3).fit(X, y, groups=[2, 3])
    Z = np.column_stack(
        [
            brute_out_of_fold(X[:, block], y, 4, 3, a)
            for block, a in zip([slice(0, 2), slice(2, 5)], m.base_alphas_, strict=True)
        ]
    )
    tail = TailPredictor(standardize=False).fit(Z, y)
    assert isinstance(m.top_, TailPredictor)
    np.testing.assert_allclose(m.top_.coef_, tail.coef_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(m.predict_q(X, 4), tail.predict_q(m.source_logits(X), 4), rtol=1e-6)


def test_stacking_beats_each_source_alone_and_ignores_a_noise_source() -> None:
    """Held out: when the signal is split between two sources, the stack beats either alone;
    a third source of pure noise (30 columns) gets a weight near 0."""
    train, test = synthetic(1500, seed=4), synthetic(2000, seed=5)
    noise = np.random.default_rng(6).normal(size=(3500, 30))
    X = np.hstack([train["X"], noise[:1500]])
    Xt = np.hstack([test["X"], noise[1500:]])
    m = StackedPredictor().fit(X, train["y"], groups=[2, 3, 30])
    stacked = nll(m.predict_proba_success(Xt), test["y"])
    for block in (slice(0, 2), slice(2, 5)):
        alone = SuccessPredictor().fit(X[:, block], train["y"]).predict_proba_success(Xt[:, block])
        assert stacked < nll(alone, test["y"]) - 0.01
    assert abs(m.top_.coef_[2]) < 0.2 < min(m.top_.coef_[:2])


# ------------------------------------------------------------------------- saving, errors


@pytest.mark.parametrize(("base", "top"), [("logistic", "logistic"), ("mlp", "tail")])
def test_save_load_round_trip(tmp_path: Path, data, base: str, top: str) -> None:
    X, y = data["X"], data["y"]
    m = StackedPredictor(base=base, top=top, hidden=4, max_iter=100).fit(
        X, y, meta={"features": "a+b"}, groups=[2, 3]
    )
    m.save(tmp_path / "s.npz")
    back = load_predictor(tmp_path / "s.npz")
    assert isinstance(back, StackedPredictor)
    assert back.get_params()["top"] == top and back.get_params()["base"] == base
    assert back.groups_ == [2, 3] and back.base_alphas_ == m.base_alphas_
    assert back.meta_ == {"features": "a+b"} and back.loss_ == m.loss_
    np.testing.assert_array_equal(back.cv_losses_, m.cv_losses_)
    np.testing.assert_array_equal(back.predict_gains(X, 6), m.predict_gains(X, 6))
    np.testing.assert_array_equal(back.predict_proba_success(X), m.predict_proba_success(X))


def test_load_refuses_a_header_that_does_not_match_its_arrays(tmp_path: Path, data) -> None:
    m = StackedPredictor().fit(data["X"], data["y"], groups=[2, 3])
    m.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(str(arrays["header"]))
    header["groups"] = [1, 4]  # base0's arrays are 2 wide
    np.savez(tmp_path / "bad.npz", **{**arrays, "header": np.array(json.dumps(header))})
    with pytest.raises(ConfigError, match="base0_mean"):
        StackedPredictor.load(tmp_path / "bad.npz")
    header["groups"], header["base_alphas"] = [2, 3], [0.1]
    np.savez(tmp_path / "bad.npz", **{**arrays, "header": np.array(json.dumps(header))})
    with pytest.raises(ConfigError, match="one L2 strength per source"):
        StackedPredictor.load(tmp_path / "bad.npz")
    with pytest.raises(ConfigError, match="StackedPredictor"):
        SuccessPredictor.load(tmp_path / "s.npz")


def test_errors_name_the_parameter_and_the_fix(data) -> None:
    X, y = data["X"], data["y"]
    with pytest.raises(NotFittedError, match="not fitted"):
        StackedPredictor().predict_proba_success(X)
    with pytest.raises(ConfigError, match="summing to the 5 features"):
        StackedPredictor().fit(X, y, groups=[2, 2])
    with pytest.raises(ConfigError, match="too few for 5-fold"):
        StackedPredictor().fit(X[:9], y[:9])
    with pytest.raises(ConfigError, match="top must be one of"):
        StackedPredictor(top="mlp").fit(X, y)
    with pytest.raises(ConfigError, match="folds must be"):
        StackedPredictor(folds=1).fit(X, y)
    m = StackedPredictor().fit(X, y)
    assert m.groups_ == [5]  # no groups: one source, a Platt recalibration of its head
    with pytest.raises(ConfigError, match="fitted on 5"):
        m.predict_gains(X[:, :4], 3)


# ---------------------------------------------------------------- howhard train --head stacked


def arithmetic_pool(n: int, seed: int) -> Pool:
    """Synthetic rewards of real arithmetic questions: success falls with the carries."""
    rng = np.random.default_rng(seed)
    queries = get_task("arithmetic").queries(n, seed)
    rewards = []
    for q in queries:
        f = dict(zip(FEATURE_NAMES, query_features(q.prompt), strict=True))
        rate = 0.9 * np.exp(-1.2 * f["carries"] - 0.8 * (f["max_digits"] - 1))
        rewards.append((rng.random(8) < rate).astype(float))
    return Pool(tuple(q.id for q in queries), tuple(q.prompt for q in queries), tuple(rewards))


def test_train_compares_the_stacked_head_at_one_top_strength(data) -> None:
    rng = np.random.default_rng(0)
    rewards = tuple((rng.random(8) < expit(z)).astype(float) for z in data["z"])
    pool = Pool(tuple(f"q{i}" for i in range(200)), tuple(f"p{i}" for i in range(200)), rewards)
    result = compare(pool, {"a+b": (data["X"], [2, 3])}, head="stacked")
    assert isinstance(result.predictor, StackedPredictor)
    assert list(result.holdout) == ["stacked alpha=0.001"]  # the bases choose theirs by CV
    assert result.predictor.meta_["feature_groups"] == [2, 3]
    continuous = Pool(pool.ids, pool.prompts, tuple(r * 0.5 for r in rewards))
    with pytest.raises(ConfigError, match="binary"):
        compare(continuous, {"a+b": (data["X"], [2, 3])}, head="stacked-tail")


def test_cli_trains_and_evaluates_a_stacked_predictor_on_real_features(tmp_path: Path) -> None:
    """The command line end to end with the real ngrams and arithmetic task featurizers."""
    from howhard.cli import main

    train = write_pool(arithmetic_pool(240, 1), tmp_path / "train.jsonl")
    held = write_pool(arithmetic_pool(120, 2), tmp_path / "eval.jsonl")
    cache = str(tmp_path / "f.npz")
    code = main(
        ["train", str(train), "--features", "ngrams+task", "--head", "stacked-tail",
         "--feature-cache", cache, "--out", str(tmp_path / "p.npz"), "--budgets", "1,2"]
    )  # fmt: skip
    assert code == 0
    saved = load_predictor(tmp_path / "p.npz")
    assert isinstance(saved, StackedPredictor) and saved.groups_ == [4096, len(FEATURE_NAMES)]
    code = main(
        ["evaluate", str(held), "--predictor", str(tmp_path / "p.npz"), "--feature-cache",
         cache, "--max-per-query", "8", "--budgets", "1,2", "--out", str(tmp_path / "report")]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["predictor"]["head"] == "stacked (logistic per source, tail on top)"
    assert report["predictor"]["features"] == "ngrams+task"
    assert report["predictor"]["eval_loss"]["gap_closed"] > 0.3  # the carries are in task
