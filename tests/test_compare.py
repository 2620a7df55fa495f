"""The howhard.compare module (``howhard.compare`` itself is its function): matched spend, the
methods' invariants, the report, the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from howhard import allocate
from howhard.cli import main
from howhard.compare import Strong, compare, match_spend
from howhard.evaluate import savings
from howhard.features import cached_transform
from howhard.pool import Pool, write_pool
from howhard.predict import GainsPredictor, SuccessPredictor
from howhard.reports import comparison_markdown as markdown
from howhard.reports import comparison_plot as plot
from howhard.reports import json_ready


def synthetic(n=120, samples=16, seed=0, shift=0.0):
    """Binary pool with answers ("ok" is right) and 4-token samples; true λ per query."""
    rng = np.random.default_rng(seed)
    lam = np.clip(rng.beta(0.3, 1.2, n) + shift, 0, 1)
    rewards = [(rng.random(samples) < p).astype(float) for p in lam]
    extras = tuple(
        {
            "answers": ["ok" if r else f"w{rng.integers(0, 3)}" for r in row],
            "tokens": [4] * samples,
        }
        for row in rewards
    )
    ids = tuple(f"q{i}" for i in range(n))
    prompts = tuple(f"What is {i} + {i}?" for i in range(n))
    return Pool(ids, prompts, tuple(rewards), extras), lam


def gains_of(lam, cap):
    return lam[:, None] * (1 - lam[:, None]) ** np.arange(cap)


def test_match_spend_bisects_to_the_target_or_stays_below():
    def smooth(x):
        return 0.5, 0.0, 0.9 * x

    x, (_, _, spend) = match_spend(smooth, 4.0, 16, 0.01)
    assert abs(spend - 4.0) <= 0.04 and x == pytest.approx(4.0 / 0.9, rel=0.02)

    def steps(x):  # spends in steps of 1: 4.5 is out of reach
        return x, 0.0, float(np.floor(x))

    _, (_, _, spend) = match_spend(steps, 4.5, 16, 0.01)
    assert spend == 4.0


def test_every_method_at_matched_spend_on_a_synthetic_pool():
    pool, lam = synthetic()
    cap, budgets = 8, [1.0, 2.0, 4.0]
    cmp = compare(pool, gains_of(lam, cap), budgets, cap, n_replays=20)
    assert set(cmp.tables) == {"verifier", "majority"}
    for table in cmp.tables.values():
        assert list(table) == [
            "uniform",
            "binned",
            "greedy",
            "threshold",
            "sequential",
            "sequential-stream",
            "sequential-flat",
            "oracle",
        ]
        for method, c in table.items():
            assert len(c.success) == len(budgets)
            assert not any(c.overspent), method
            for b, spend in zip(budgets, c.spend, strict=True):
                assert spend <= b * 1.01 + 1e-9
        for method in ("uniform", "greedy", "oracle"):
            np.testing.assert_allclose(table[method].spend, budgets)
        oracle = table["oracle"].success
        for method in ("uniform", "greedy"):  # same spend, no observation: the oracle bounds them
            assert all(o >= s - 1e-12 for o, s in zip(oracle, table[method].success, strict=True))
        # uniform saves nothing against itself, also under majority vote where b = 2 is no
        # better than b = 1 (the smallest uniform budget reaching its success at B = 2 is 1)
        np.testing.assert_allclose(table["uniform"].saving, 0.0, atol=1e-12)
        np.testing.assert_allclose(table["oracle"].oracle_share, 1.0)
    v = cmp.tables["verifier"]
    assert all(s > g for s, g in zip(v["sequential"].success, v["greedy"].success, strict=True))
    np.testing.assert_allclose(cmp.uniform_curves["verifier"], pool.q(cap).mean(axis=0))
    text = markdown(cmp)
    assert "## With a verifier" in text and "## Majority vote only" in text
    assert "| 4 | sequential |" in text
    json.dumps(json_ready(cmp), allow_nan=False)


def test_overspending_and_underspending_are_flagged_in_the_table():
    pool, lam = synthetic(n=40)
    cmp = compare(pool, gains_of(lam, 8), [2.0], 8, observe=["verifier"], n_replays=5)
    curve = cmp.tables["verifier"]["greedy"]
    curve.spend[0], curve.overspent[0] = 2.5, True
    cmp.tables["verifier"]["binned"].spend[0] = 1.9
    cmp.tables["verifier"]["binned"].underspent[0] = True
    assert "| 2 | greedy | " in markdown(cmp)
    assert "2.50 ⚠" in markdown(cmp) and "| 1.90 ↓ |" in markdown(cmp)


def test_a_method_stopping_below_the_budget_is_shown_at_its_spend_against_the_oracle_there():
    pool, lam = synthetic(n=60)
    cap, budgets = 8, [2.0, 7.0]
    cmp = compare(pool, gains_of(lam, cap), budgets, cap, observe=["verifier"], n_replays=5)
    table = cmp.tables["verifier"]
    q, oracle = pool.q(cap), table["oracle"]
    for method, c in table.items():
        for j, b in enumerate(budgets):
            assert c.underspent[j] == (c.spend[j] < 0.99 * b - 1e-12), method
            if not (c.underspent[j] or c.overspent[j]):  # at B: the oracle's own row
                assert c.oracle_saving[j] == oracle.saving[j]
                continue
            # the oracle re-run at the row's spend
            b_o = allocate.greedy(np.diff(q, axis=1), c.spend[j])
            at_spend = savings([q[np.arange(len(q)), b_o].mean()], [b_o.mean()], q.mean(0), cap)
            assert c.oracle_saving[j] == pytest.approx(at_spend[0][0])
            assert c.oracle_share[j] == pytest.approx(c.saving[j] / at_spend[0][0])
    # under a verifier a sequential method stops at a query's first success: at B = 7 of 8
    # it has stopped everywhere before spending B
    seq = table["sequential"]
    assert seq.underspent[1] and seq.spend[1] < 6.5
    assert seq.oracle_saving[1] > oracle.saving[1]  # the oracle saves more at the lower spend
    assert f"| 7 | sequential | {seq.success[1]:.3f}" in markdown(cmp)
    assert f"| {seq.spend[1]:.2f} ↓ |" in markdown(cmp)


def test_joint_methods_with_a_strong_decoder():
    weak, lam = synthetic(n=80, samples=8, seed=1)
    strong, lam_s = synthetic(n=80, samples=4, seed=2, shift=0.15)
    strong = Pool(weak.ids, weak.prompts, strong.rewards, strong.extras)
    side = Strong(strong, gains_of(lam_s, 4), cost=3.0)
    cmp = compare(
        weak, gains_of(lam, 8), [1.0, 2.0, 4.0], 8, observe=["verifier"], n_replays=10, strong=side
    )
    table = cmp.tables["verifier"]
    for method in ("routing", "joint", "joint-oracle"):
        assert len(table[method].success) == 3
        assert all(s <= b + 1e-9 for s, b in zip(table[method].spend, [1, 2, 4], strict=True))
    # k = B / 3 strong samples: ⌊80 B / 3⌋ of them at cost 3 over 80 queries
    assert table["uniform-strong"].spend == pytest.approx([0.975, 1.9875, 3.975])
    assert cmp.info["routing: queries given the strong decoder"].startswith("0% at B = 1")
    # joint may take k = 0 or strong samples: it does at least as well as weak-only greedy here
    assert all(
        j >= g - 0.02 for j, g in zip(table["joint"].success, table["greedy"].success, strict=True)
    )


def test_plot_writes_one_png(tmp_path):
    pool, lam = synthetic(n=40)
    cmp = compare(pool, gains_of(lam, 8), [1.0, 2.0], 8, n_replays=5)
    path = plot(cmp, tmp_path / "plot.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------- files and CLI


class RandomFeatures:
    name = "hidden"

    def transform(self, texts):
        rng = np.random.default_rng(len(texts))
        return rng.normal(size=(len(texts), 4)).astype(np.float32)


def write_inputs(tmp_path, pool, name="pool"):
    """The pool file, a feature cache for its prompts (no model loads) and a predictor."""
    cache = str(tmp_path / "features.npz")
    X = cached_transform("hidden:default model:arithmetic", RandomFeatures, pool.prompts, cache)
    y = np.column_stack([pool.successes(), pool.n_samples])
    meta = {"features": "hidden", "task": "arithmetic", "train_mean": 0.2}
    SuccessPredictor(alpha=1.0).fit(X, y, meta=meta).save(tmp_path / f"{name}.npz")
    write_pool(pool, tmp_path / f"{name}.jsonl")
    return str(tmp_path / f"{name}.jsonl"), str(tmp_path / f"{name}.npz"), cache


def test_cli_compare_writes_the_report(capsys, tmp_path):
    weak, _ = synthetic(n=60, samples=8)
    strong, _ = synthetic(n=60, samples=4, seed=3)
    strong = Pool(weak.ids, weak.prompts, strong.rewards, strong.extras)
    pool_path, pred_path, cache = write_inputs(tmp_path, weak)
    strong_path, strong_pred, _ = write_inputs(tmp_path, strong, "strong")
    code = main(
        [
            "compare",
            pool_path,
            "--predictor",
            pred_path,
            "--budgets",
            "1,2",
            "--max-per-query",
            "8",
            "--replays",
            "5",
            "--feature-cache",
            cache,
            "--strong",
            strong_path,
            "--strong-predictor",
            strong_pred,
            "--cost-strong",
            "12",
            "--out",
            str(tmp_path / "report"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "| 2 | joint |" in out and "strong 12 (3 weak samples)" in out
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["budgets"] == [1.0, 2.0] and "joint-oracle" in data["tables"]["verifier"]
    assert (tmp_path / "report" / "plot.png").exists()
    assert "![plot](plot.png)" in (tmp_path / "report" / "report.md").read_text()


def test_cli_compare_errors_name_the_fix(capsys, tmp_path):
    weak, _ = synthetic(n=30, samples=8)
    pool_path, pred_path, cache = write_inputs(tmp_path, weak)
    args = ["compare", pool_path, "--predictor", pred_path, "--feature-cache", cache]
    assert main([*args, "--max-per-query", "8", "--strong", pool_path]) == 2
    assert "--strong-predictor FILE or --router FILE" in capsys.readouterr().err
    assert main([*args, "--max-per-query", "8", "--strong-predictor", pred_path]) == 2
    err = capsys.readouterr().err
    assert "without --strong (the second decoder's pool) there is no joint comparison" in err
    assert "to use --strong-predictor in; give that pool, or drop them" in err
    assert main([*args, "--max-per-query", "9"]) == 2
    assert "Lower --max-per-query" in capsys.readouterr().err
    assert main([*args, "--max-per-query", "8", "--observe", "vote"]) == 2
    assert "unknown observation setting 'vote'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("samples", "evaluated", "compared"),
    [(6, (6, [1, 2, 4]), (6, [1, 2, 4])), (40, (32, [1, 2, 4, 8, 16]), (16, [1, 2, 4, 8]))],
)
def test_cli_evaluate_and_compare_cap_defaults_to_the_fewest_samples(
    capsys, tmp_path, samples, evaluated, compared
):
    """The default --max-per-query (evaluate 32, compare 16) is lowered to the fewest samples of
    a query, and the default budgets to those up to it; pools with more keep the defaults."""
    pool, _ = synthetic(n=30, samples=samples)
    pool_path, pred_path, cache = write_inputs(tmp_path, pool)
    args = [pool_path, "--predictor", pred_path, "--feature-cache", cache, "--json"]
    assert main(["evaluate", *args, "--bootstrap", "0"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert (ev["max_per_query"], ev["budgets"]) == evaluated
    assert main(["compare", *args, "--replays", "2"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert (cmp["max_per_query"], cmp["budgets"]) == compared


def test_cli_a_budget_above_the_fewest_samples_is_refused_naming_the_query(capsys, tmp_path):
    pool, _ = synthetic(n=30, samples=6)
    pool_path, pred_path, cache = write_inputs(tmp_path, pool)
    args = [pool_path, "--predictor", pred_path, "--feature-cache", cache, "--budgets", "2,7"]
    message = f"budget 7 is more than the 6 samples of query {pool.ids[0]!r} (the fewest"
    for command in (["evaluate", *args], ["compare", *args], ["train", *args[:1], *args[-2:]]):
        assert main([*command, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_gains_predictor_on_a_binarized_pool_is_warned_about(capsys, tmp_path):
    pool, _ = synthetic(n=30, samples=8)
    pool = Pool(pool.ids, pool.prompts, tuple(r * 0.5 + 0.5 * (r > 0) for r in pool.rewards))
    pool_path, _, cache = write_inputs(tmp_path, pool)
    X = cached_transform("hidden:default model:arithmetic", RandomFeatures, pool.prompts, cache)
    meta = {"features": "hidden", "task": "arithmetic", "train_mean_gains": [0.1] * 8}
    GainsPredictor(max_iter=5).fit(X, pool.gains(8), meta=meta).save(tmp_path / "g.npz")
    args = [pool_path, "--predictor", str(tmp_path / "g.npz"), "--feature-cache", cache]
    for command in (["evaluate", *args, "--bootstrap", "0"], ["compare", *args, "--replays", "2"]):
        assert main(command) == 0
        assert "trained on continuous rewards" not in capsys.readouterr().err
        assert main([*command, "--binarize"]) == 0
        err = capsys.readouterr().err
        assert f"predictor {tmp_path / 'g.npz'} was trained on continuous rewards" in err
        assert "train on the binarized pool (howhard train --binarize)" in err
