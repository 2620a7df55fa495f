"""Tests of howhard.predict.multi: one head predicting every decoder's success."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from howhard.errors import BudgetError, ConfigError, NotFittedError, PoolError
from howhard.pool import Pool
from howhard.predict import MultiPredictor, SuccessPredictor, _net, fit_multi, load_predictor
from howhard.predict.multi import _objective, pool_counts
from howhard.runs.inputs import load_predictor as load_for_run

OFFSETS = np.array([-1.5, 0.0, 1.0, 2.0])
SCALES = np.array([1.0, 1.5, 0.7, 1.2])


def synthetic(n: int, seed: int, trials: int = 12) -> dict[str, np.ndarray]:
    """Four decoders sharing one difficulty direction: λ_m = σ(s_m (x · w) + a_m), d = 6."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    w = np.array([1.0, -0.5, 0.0, 0.3, 0.0, 0.0])
    lam = 1 / (1 + np.exp(-(np.outer(X @ w, SCALES) + OFFSETS)))
    c = rng.binomial(trials, lam)
    return {"X": X, "lam": lam, "counts": np.stack([c, np.full_like(c, trials)], axis=2)}


@pytest.fixture(scope="module")
def big() -> dict[str, np.ndarray]:
    return synthetic(3000, seed=0)


@pytest.mark.parametrize("head", ["logistic", "lowrank", "mlp"])
def test_gradient_matches_finite_differences(head: str) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(7, 4))
    n = rng.integers(0, 6, size=(7, 3)).astype(float)  # some decoders lack samples of a query
    c = n * rng.uniform(size=(7, 3))
    size = sum(int(np.prod(shape)) for _, shape in _net.shapes(head, 4, 2, 3))
    theta = rng.normal(size=size)
    args = (X, c, n, head, 2, 0.05)
    _, grad = _objective(theta, *args)
    h = 1e-6
    numeric = np.array(
        [
            (_objective(theta + h * e, *args)[0] - _objective(theta - h * e, *args)[0]) / (2 * h)
            for e in np.eye(size)
        ]
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_loss_is_the_pooled_cross_entropy_per_trial_plus_penalty() -> None:
    X = np.array([[1.0], [-2.0]])
    c, n = np.array([[1.0, 0.0], [2.0, 3.0]]), np.array([[2.0, 1.0], [4.0, 3.0]])
    theta = np.array([0.5, -1.0, 0.2, 0.3])  # coef (1, 2), intercept (2,)
    Z = X @ np.array([[0.5, -1.0]]) + np.array([0.2, 0.3])
    lam = 1 / (1 + np.exp(-Z))
    expected = -np.sum(c * np.log(lam) + (n - c) * np.log(1 - lam)) / n.sum() + 0.1 * 1.25
    assert _objective(theta, X, c, n, "logistic", 1, 0.1)[0] == pytest.approx(expected)


@pytest.mark.parametrize("head", ["lowrank", "mlp"])
def test_recovers_every_decoders_rate(big: dict[str, np.ndarray], head: str) -> None:
    model = MultiPredictor(head=head, hidden=2, alpha=1e-4).fit(big["X"], big["counts"])
    test = synthetic(1000, seed=5)
    lam = model.predict_proba_success(test["X"])
    assert lam.shape == (1000, 4)
    err = np.mean(np.abs(lam - test["lam"]), axis=0)
    assert np.all(err < 0.03), err


def test_sharing_helps_a_decoder_with_few_labels() -> None:
    """Decoder 0 has 1 sample per query, the others 12: the shared direction learnt from the
    others predicts decoder 0 better than a logistic regression on its own samples."""
    data = synthetic(300, seed=2)
    counts = data["counts"].copy()
    rng = np.random.default_rng(3)
    counts[:, 0, 0] = rng.binomial(1, data["lam"][:, 0])
    counts[:, 0, 1] = 1
    test = synthetic(2000, seed=7)
    shared = MultiPredictor(head="lowrank", hidden=1, alpha=1e-3).fit(data["X"], counts)
    alone = SuccessPredictor(alpha=1e-3).fit(data["X"], counts[:, 0])
    err_shared = np.mean(np.abs(shared.predict_proba_success(test["X"])[:, 0] - test["lam"][:, 0]))
    err_alone = np.mean(np.abs(alone.predict_proba_success(test["X"]) - test["lam"][:, 0]))
    assert err_shared < 0.7 * err_alone


def test_logistic_head_is_one_success_predictor_per_decoder(big: dict[str, np.ndarray]) -> None:
    """With equal trials per decoder, the logistic head's loss is the mean of the M separate
    losses, so alpha / M here is alpha there and the fits agree (to the optimiser's tolerance)."""
    X, counts = big["X"][:800], big["counts"][:800]
    multi = MultiPredictor(head="logistic", alpha=0.01 / 4, max_iter=2000).fit(X, counts)
    for m in range(4):
        single = SuccessPredictor(alpha=0.01, max_iter=2000).fit(X, counts[:, m])
        np.testing.assert_allclose(
            multi.predict_proba_success(X[:50])[:, m],
            single.predict_proba_success(X[:50]),
            atol=1e-4,  # both stop at L-BFGS-B's tolerance
        )


def test_queries_without_samples_of_a_decoder_do_not_count(big: dict[str, np.ndarray]) -> None:
    X, counts = big["X"][:400], big["counts"][:400].astype(float)
    masked = counts.copy()
    masked[:100, 2] = 0.0  # decoder 2 never sampled the first 100 queries
    a = MultiPredictor(alpha=1e-2).fit(X, masked)
    flipped = masked.copy()
    flipped[:100, 2, 0] = 0.0  # still no trials: nothing to flip
    b = MultiPredictor(alpha=1e-2).fit(X, flipped)
    np.testing.assert_array_equal(a.predict_proba_success(X), b.predict_proba_success(X))


def test_gains_and_q_per_decoder(big: dict[str, np.ndarray]) -> None:
    model = MultiPredictor(max_iter=50).fit(big["X"][:200], big["counts"][:200])
    X = big["X"][:10]
    lam = model.predict_proba_success(X)
    gains, q = model.predict_gains(X, 6), model.predict_q(X, 6)
    assert gains.shape == (10, 4, 6) and q.shape == (10, 4, 7)
    np.testing.assert_allclose(gains[:, :, 0], lam)
    np.testing.assert_allclose(np.diff(q, axis=2), gains, atol=1e-12)
    np.testing.assert_array_equal(model.predict(X), lam)
    assert np.all(np.diff(gains, axis=2) <= 0)
    with pytest.raises(BudgetError, match="bmax"):
        model.predict_gains(X, 0)
    losses = model.log_loss(big["X"][200:300], big["counts"][200:300])
    assert losses.shape == (4,) and np.all(np.isfinite(losses))


def test_contract_and_bad_input(big: dict[str, np.ndarray]) -> None:
    with pytest.raises(NotFittedError, match="fit"):
        MultiPredictor().predict_proba_success(big["X"][:2])
    model = MultiPredictor(max_iter=5)
    assert model.fit(big["X"][:50], big["counts"][:50]) is model
    assert model.decoders_ == ["0", "1", "2", "3"]
    assert clone(model).get_params() == model.get_params()
    with pytest.raises(ConfigError, match="n_decoders, 2"):
        model.fit(big["X"][:50], big["counts"][:50, 0])
    with pytest.raises(ConfigError, match="rows"):
        model.fit(big["X"][:40], big["counts"][:50])
    with pytest.raises(ConfigError, match="distinct names"):
        model.fit(big["X"][:50], big["counts"][:50], decoders=["a", "a", "b", "c"])
    no_trials = big["counts"][:50].copy()
    no_trials[:, 1] = 0
    with pytest.raises(ConfigError, match="decoder 1 has no trials"):
        model.fit(big["X"][:50], no_trials)
    with pytest.raises(ConfigError, match="hidden"):
        MultiPredictor(head="lowrank", hidden=0).fit(big["X"][:50], big["counts"][:50])
    with pytest.raises(ConfigError, match="head"):
        MultiPredictor(head="tail").fit(big["X"][:50], big["counts"][:50])


@pytest.mark.parametrize("head", ["logistic", "lowrank", "mlp"])
def test_save_load_round_trip(tmp_path: Path, big: dict[str, np.ndarray], head: str) -> None:
    model = MultiPredictor(head=head, hidden=3, max_iter=30).fit(
        big["X"][:200], big["counts"][:200], decoders=["a", "b", "c", "d"], meta={"features": "x"}
    )
    path = model.save(tmp_path / "multi.npz")
    for loaded in (MultiPredictor.load(path), load_predictor(path), load_for_run(path)):
        assert isinstance(loaded, MultiPredictor)
        assert loaded.get_params() == model.get_params()
        assert loaded.decoders_ == ["a", "b", "c", "d"] and loaded.meta_ == {"features": "x"}
        np.testing.assert_array_equal(
            loaded.predict_proba_success(big["X"][:20]), model.predict_proba_success(big["X"][:20])
        )
    with pytest.raises(ConfigError, match="multi-decoder"):
        load_for_run(path, "predictor")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(str(arrays["header"]))
    header["decoders"] = ["a", "a", "c", "d"]
    arrays["header"] = np.array(json.dumps(header))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match="decoders"):
        MultiPredictor.load(tmp_path / "bad.npz")


def _pools(data: dict[str, np.ndarray]) -> list[Pool]:
    n = len(data["X"])
    ids = tuple(f"q{i}" for i in range(n))
    prompts = tuple(f"prompt {i}" for i in range(n))
    pools = []
    for m in range(data["counts"].shape[1]):
        c, t = data["counts"][:, m, 0], data["counts"][:, m, 1]
        rewards = tuple(
            np.array([1.0] * int(k) + [0.0] * int(tt - k)) for k, tt in zip(c, t, strict=True)
        )
        pools.append(Pool(ids, prompts, rewards))
    return pools


def test_fit_multi_on_pools(big: dict[str, np.ndarray]) -> None:
    data = {"X": big["X"][:300], "counts": big["counts"][:300]}
    pools = _pools(data)
    np.testing.assert_array_equal(pool_counts(pools), data["counts"])
    model = fit_multi(data["X"], pools, names=["w", "x", "y", "z"], hidden=2)
    assert model.predict_proba_success(data["X"]).shape == (300, 4)
    assert model.decoders_ == ["w", "x", "y", "z"]
    shuffled = pools[1].select(list(reversed(pools[1].ids)))
    with pytest.raises(PoolError, match="aligned"):
        fit_multi(data["X"], [pools[0], shuffled])
    halves = Pool(pools[1].ids, pools[1].prompts, tuple(r * 0.5 for r in pools[1].rewards))
    with pytest.raises(PoolError, match="binar"):
        fit_multi(data["X"], [pools[0], halves])


@pytest.mark.parametrize("head", ["logistic", "lowrank", "mlp"])
def test_a_decoders_slice_predicts_its_column_and_round_trips(
    tmp_path: Path, big: dict[str, np.ndarray], head: str
) -> None:
    X, counts = big["X"][:300], big["counts"][:300]
    model = MultiPredictor(head=head, hidden=3, max_iter=100).fit(
        X, counts, decoders=["a", "b", "c", "d"], groups=[2, 4], meta={"features": "x"}
    )
    lam = model.predict_proba_success(big["X"][300:400])
    for m, name in enumerate(model.decoders_):
        one = model.decoder(name, meta={"features": "x", "decoder": name})
        assert one.head == ("mlp" if head == "mlp" else "logistic")
        np.testing.assert_allclose(one.predict_proba_success(big["X"][300:400]), lam[:, m])
        saved = SuccessPredictor.load(one.save(tmp_path / f"{name}.npz"))
        assert saved.meta_ == {"features": "x", "decoder": name}
        np.testing.assert_array_equal(
            saved.predict_proba_success(big["X"][300:400]),
            one.predict_proba_success(big["X"][300:400]),
        )
    assert model.decoder("b").meta_ == {"features": "x"}
    with pytest.raises(ConfigError, match=r"no decoder 'e'.*'a', 'b'"):
        model.decoder("e")


def test_groups_weight_the_sources_as_the_success_predictor_does(
    big: dict[str, np.ndarray],
) -> None:
    X, counts = big["X"][:200], big["counts"][:200]
    multi = MultiPredictor(head="logistic", max_iter=5).fit(X, counts, groups=[1, 5])
    single = SuccessPredictor(max_iter=5).fit(X, counts[:, 0], groups=[1, 5])
    np.testing.assert_array_equal(multi.scale_, single.scale_)
    assert not np.allclose(multi.scale_, X.std(axis=0))  # the 1-column block is weighted up
    with pytest.raises(ConfigError, match="groups"):
        MultiPredictor().fit(X, counts, groups=[2, 2])


def test_train_compares_one_head_per_decoder_with_heads_shared_by_all() -> None:
    """compare_shared: every decoder's candidates are its own heads and the shared ones, each
    shared head at the L2 strength of lowest pooled held-out loss; the kept one is what
    KEEP_RULE keeps, and a kept shared head is the refit MultiPredictor's slice."""
    from howhard.runs.train import ALPHAS, _holdout_mask, compare_shared, keep

    data = synthetic(300, seed=3, trials=6)
    data["counts"][:, 3, 0] = np.minimum(data["counts"][:, 3, 0], 1)  # few labels for d: ...
    data["counts"][:, 3, 1] = 1  # ... one trial per query
    pools, names = _pools(data), ["a", "b", "c", "d"]
    X, counts = data["X"], data["counts"]
    out = compare_shared(pools, names, X, [6], "logistic", 0.25, 0, {"features": "x"})
    test = _holdout_mask(300, 0.25, 0)

    def pooled(a: float) -> float:
        fit = MultiPredictor(head="lowrank", hidden=1, alpha=a).fit(X[~test], counts[~test])
        return fit.score(X[test], counts[test])

    best = max(ALPHAS, key=pooled)
    for m, name in enumerate(names):
        result = out[name]
        heads = [c.head for c in result.candidates]
        assert heads == ["logistic", "shared lowrank r=1", "shared lowrank r=4"]
        assert result.candidates[1].alpha == best
        assert result.kept == keep(result.candidates)
        lam = result.predictor.predict_proba_success(X)
        if result.kept.head.startswith("shared"):
            rank = int(result.kept.head.rsplit("=", 1)[1])
            full = MultiPredictor(head="lowrank", hidden=rank, alpha=result.kept.alpha)
            np.testing.assert_allclose(lam, full.fit(X, counts).predict_proba_success(X)[:, m])
            shared = result.predictor.meta_["shared"]
            assert shared == {"decoders": names, "head": "lowrank", "rank": rank,
                              "alpha": result.kept.alpha}  # fmt: skip
        else:
            single = SuccessPredictor(alpha=result.kept.alpha).fit(X, counts[:, m])
            np.testing.assert_allclose(lam, single.predict_proba_success(X))
        assert len(result.predictor.meta_["comparison"]) == 3
    assert any(out[n].kept.head.startswith("shared") for n in names)


def test_shared_heads_are_refused_for_other_heads_and_continuous_rewards() -> None:
    from howhard.runs.train import compare_shared

    data = synthetic(40, seed=4, trials=4)
    pools = _pools(data)[:2]
    with pytest.raises(ConfigError, match=r"lowrank or mlp.*'tail'"):
        compare_shared(pools, ["a", "b"], data["X"], [6], "tail")
    halves = Pool(pools[1].ids, pools[1].prompts, tuple(r * 0.5 for r in pools[1].rewards))
    with pytest.raises(ConfigError, match="binary rewards"):
        compare_shared([pools[0], halves], ["a", "b"], data["X"], [6])
