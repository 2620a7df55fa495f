"""``howhard train --folds k``: the candidates compared by k-fold cross-validation instead of
one held-out split, checked against the same folds fitted and scored by hand."""

import numpy as np
import pytest
from scipy.special import expit

from howhard.errors import ConfigError, PoolError
from howhard.pool import Pool, write_pool
from howhard.predict import GainsPredictor, SuccessPredictor, gains_loss_table, loss_table
from howhard.runs import TrainSpec
from howhard.runs.menu import MenuTrainSpec
from howhard.runs.train import (
    ALPHAS,
    _holdout_mask,
    _splits,
    compare,
    heldout_savings,
    train_router,
)


def binary_pool(n: int, seed: int) -> tuple[Pool, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    rates = expit(1.5 * X[:, 0] - 0.5 * X[:, 1] - 1.0)
    rewards = tuple((rng.random(8) < r).astype(float) for r in rates)
    return Pool(tuple(f"q{i}" for i in range(n)), tuple(f"p{i}" for i in range(n)), rewards), X


def test_folds_partition_the_queries_and_one_fold_is_the_held_out_split():
    masks = _splits(23, 0.2, 7, 5)
    assert len(masks) == 5
    np.testing.assert_array_equal(np.sum(masks, axis=0), np.ones(23))  # each held out once
    assert sorted(int(m.sum()) for m in masks) == [4, 4, 5, 5, 5]
    assert not np.array_equal(masks[0], _splits(23, 0.2, 8, 5)[0])  # the seed shuffles
    (single,) = _splits(23, 0.2, 7, 1)
    np.testing.assert_array_equal(single, _holdout_mask(23, 0.2, 7))


def test_cross_validated_comparison_equals_the_folds_done_by_hand():
    pool, X = binary_pool(90, 1)
    result = compare(pool, {"x": (X, [3])}, "logistic", seed=3, budgets=(1, 2, 4), folds=3)
    masks = _splits(90, 0.2, 3, 3)
    y = np.column_stack([pool.successes(), pool.n_samples])
    for alpha in ALPHAS:
        fits = [
            SuccessPredictor(head="logistic", alpha=alpha, random_state=3).fit(X[~t], y[~t])
            for t in masks
        ]
        means = [y[~t, 0].sum() / y[~t, 1].sum() for t in masks]  # each fold's Avg
        tables = [
            loss_table(m.predict_proba_success(X[t]), y[t, 0], y[t, 1], mean)
            for m, t, mean in zip(fits, masks, means, strict=True)
        ]
        weights = [t.sum() for t in masks]
        merged = {
            k: np.average([t[k] for t in tables], weights=weights) for k in ("model", "avg", "opt")
        }
        got = result.holdout[f"logistic alpha={alpha:g}"]
        for k, v in merged.items():
            assert got[k] == pytest.approx(v)
        gap = (merged["avg"] - merged["model"]) / (merged["avg"] - merged["opt"])
        assert got["gap_closed"] == pytest.approx(gap)
    (kept,) = result.candidates
    gains = np.zeros((90, 8))
    for t in masks:
        m = SuccessPredictor(head="logistic", alpha=kept.alpha, random_state=3).fit(X[~t], y[~t])
        gains[t] = m.predict_gains(X[t], 8)
    assert kept.saved == pytest.approx(heldout_savings(pool.q(8), gains, [1, 2, 4])[0])
    oracle = heldout_savings(pool.q(8), np.diff(pool.q(8), axis=1), [1, 2, 4])[0]
    assert result.oracle_saved == pytest.approx(oracle)
    assert (result.n_test, result.folds) == (90, 3)


def test_cross_validated_gains_comparison_on_a_continuous_pool():
    pool, X = binary_pool(60, 2)
    continuous = Pool(pool.ids, pool.prompts, tuple(r * 0.5 for r in pool.rewards))
    result = compare(continuous, {"x": (X, [3])}, "linear", seed=0, budgets=(1, 2), folds=4)
    masks = _splits(60, 0.2, 0, 4)
    y = continuous.gains(8)
    alpha = ALPHAS[0]
    tables = []
    for t in masks:
        m = GainsPredictor(head="linear", alpha=alpha, random_state=0).fit(X[~t], y[~t])
        tables.append(gains_loss_table(m.predict_gains(X[t], 8), y[t], y[~t].mean(axis=0)))
    model = np.average([t["model"] for t in tables], weights=[t.sum() for t in masks])
    assert result.holdout[f"linear alpha={alpha:g}"]["model"] == pytest.approx(model)
    assert result.n_test == 60


def test_a_router_is_compared_on_folds_too():
    weak, X = binary_pool(40, 5)
    strong, _ = binary_pool(40, 6)
    result = train_router(weak, strong, X, "logistic", seed=1, folds=4)
    assert (result.n_test, result.folds) == (40, 4)
    one = train_router(weak, strong, X, "logistic", seed=1)
    assert (one.n_test, one.folds) == (8, 1)
    assert result.holdout != one.holdout


def test_folds_errors_name_the_input_and_the_fix(tmp_path):
    pool, X = binary_pool(9, 0)
    with pytest.raises(ConfigError, match=r"folds must be 1 .* got 0"):
        compare(pool, {"x": (X, [3])}, "logistic", folds=0)
    with pytest.raises(PoolError, match=r"9 queries: too few for 5 folds .* ask for fewer folds"):
        compare(pool, {"x": (X, [3])}, "logistic", folds=5)
    with pytest.raises(ConfigError, match="shared heads are compared on one held-out split"):
        MenuTrainSpec(menu=tmp_path / "m.toml", out=tmp_path, folds=3, shared=True)
    with pytest.raises(ConfigError, match=r"holdout must lie in \(0, 1\), got 0"):
        TrainSpec(pool="p.jsonl", out="p.npz", holdout=0)


def test_five_folds_by_default_one_split_when_a_holdout_or_one_split_head_is_asked(tmp_path):
    def split(spec: TrainSpec | MenuTrainSpec) -> tuple[float | None, int | None]:
        return spec.holdout, spec.folds

    assert split(TrainSpec(pool="p.jsonl", out="p.npz")) == (0.2, 5)
    assert split(TrainSpec(pool="p.jsonl", out="p.npz", holdout=0.3)) == (0.3, 1)
    assert split(TrainSpec(pool="p.jsonl", out="p.npz", folds=3)) == (0.2, 3)
    assert split(TrainSpec(pool="p.jsonl", out="p.npz", head="lora")) == (0.2, 1)
    assert split(TrainSpec(pool="p.jsonl", out="p.npz", head="lora", folds=2)) == (0.2, 2)
    menu = tmp_path / "m.toml"
    assert split(MenuTrainSpec(menu=menu, out=tmp_path)) == (0.2, 5)
    assert split(MenuTrainSpec(menu=menu, out=tmp_path, shared=True)) == (0.2, 1)
    assert split(MenuTrainSpec(menu=menu, out=tmp_path, holdout=0.25)) == (0.25, 1)


@pytest.mark.parametrize(
    "flags, header",
    [
        (["--folds", "3"], "3-fold cross-validated comparison on 60 queries"),
        ([], "5-fold cross-validated comparison on 60 queries"),
        (["--holdout", "0.25"], "held-out comparison on 15 queries"),
    ],
)
def test_train_cli_prints_the_comparison_it_made(tmp_path, capsys, flags, header):
    from howhard.cli import main
    from howhard.runs import load_predictor

    pool, _ = binary_pool(60, 4)
    rows = Pool(pool.ids, tuple(f"What is {i} + {i % 7}?" for i in range(60)), pool.rewards)
    path = write_pool(rows, tmp_path / "train.jsonl")
    out = tmp_path / "p.npz"
    code = main(
        ["train", str(path), "--features", "task", "--head", "logistic", *flags,
         "--out", str(out), "--budgets", "1,2"]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert header in text
    assert text.count("<- kept") == 1
    assert load_predictor(out).meta_["features"] == "task"


@pytest.mark.parametrize("model, warned", [(0.5, False), (0.8, True)])
def test_train_warns_when_the_kept_predictor_is_worse_than_the_training_mean(model, warned):
    from howhard.reports.training import comparison_lines
    from howhard.runs.train import Candidate, TrainResult

    table = {"model": model, "avg": 0.7, "opt": 0.2, "gap_closed": (0.7 - model) / 0.5}
    kept = Candidate("text", "lora", 1e-3, table, [0.1], [False])
    result = TrainResult(None, {}, "text lora", "log-loss", [kept], kept, [1.0], [0.3], 80)
    text = comparison_lines(result)
    assert ("warning: the kept predictor's held-out loss 0.8 is above Avg's 0.7" in text) is warned


def test_train_cli_refuses_a_holdout_with_folds(tmp_path, capsys):
    from howhard.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "p.jsonl", "--holdout", "0.3", "--folds", "5", "--out", "p.npz"])
    assert stop.value.code == 2
    assert "--holdout makes one split, --folds k > 1 k folds" in capsys.readouterr().err
