"""The runs behind the CLI (`howhard.runs`): pools of every kind, training, evaluation, routing."""

from dataclasses import replace

import numpy as np
import pytest

from howhard.backends import BackendConfig
from howhard.errors import ConfigError
from howhard.features import _save
from howhard.pool import Pool, prompt_hash, write_pool
from howhard.predict import GainsPredictor, SuccessPredictor, load_predictor
from howhard.routing import preference_counts
from howhard.runs import (
    EvaluateSpec,
    RoutingSpec,
    TrainSpec,
    run_evaluate,
    run_evaluate_routing,
    run_train,
    train,
)


def test_binarized_thresholds_at_one_and_keeps_extras():
    pool = Pool(("a",), ("x",), (np.array([1.0, 0.5, 0.999999999999, 0.0]),), ({"k": 1},))
    assert pool.binarized().rewards[0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert pool.binarized(0.5).rewards[0].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert pool.binarized().extras == ({"k": 1},)


def test_select_truncates_per_sample_fields_only():
    extra = {"answers": ["1", "2", "3"], "tokens": [4, 5, 6], "answer": "7", "tags": [1, 2, 3]}
    pool = Pool(("a",), ("x",), (np.array([1.0, 0.0, 1.0]),), (extra,))
    got = pool.select(["a"], 2).extras[0]
    assert got == {"answers": ["1", "2"], "tokens": [4, 5], "answer": "7", "tags": [1, 2, 3]}


def test_backend_config_errors_name_the_parameters_and_the_fix():
    with pytest.raises(ConfigError, match=r"needs endpoints=URL .* and model=NAME") as e:
        BackendConfig("openai", model="m")
    assert e.value.params == ("endpoints", "model")
    with pytest.raises(ConfigError, match="needs endpoints=URL"):
        BackendConfig("openai", endpoints=("http://127.0.0.1:1",))
    with pytest.raises(ConfigError, match=r"backend=llamacpp takes no endpoints \(they are for"):
        BackendConfig("llamacpp", endpoints=("http://127.0.0.1:1",))
    with pytest.raises(ConfigError, match="vote must be >= 1, got 0") as e:
        BackendConfig(vote=0)
    assert e.value.params == ("vote",)


def synthetic(n, samples, rng, binary, shift=0.0):
    """Queries whose mean reward rises with their one feature."""
    x = rng.normal(size=n)
    mean = 1 / (1 + np.exp(-(2 * x + shift)))
    if binary:
        rewards = [(rng.random(samples) < m).astype(float) for m in mean]
    else:
        rewards = [np.clip(rng.beta(4 * m + 0.1, 4 * (1 - m) + 0.1, samples), 0, 1) for m in mean]
    ids = tuple(f"q{i}" for i in range(n))
    pool = Pool(ids, tuple(f"prompt {i} {shift}" for i in range(n)), tuple(rewards))
    return pool, np.column_stack([x, rng.normal(size=n)])


def test_train_picks_the_predictor_the_pool_calls_for():
    rng = np.random.default_rng(0)
    pool, X = synthetic(300, 8, rng, binary=True)
    result = train(pool, X, head="logistic")
    assert isinstance(result.predictor, SuccessPredictor)
    assert result.loss == "binomial log-loss per sample"
    assert min(t["model"] for t in result.holdout.values()) < result.holdout[result.best]["avg"]

    pool, X = synthetic(300, 8, rng, binary=False)
    result = train(pool, X, head="linear", bmax=6)
    assert isinstance(result.predictor, GainsPredictor)
    assert result.loss == "MSE of Δ(x, 1..6)"
    best = result.holdout[result.best]
    assert best["model"] < 0.8 * best["avg"]  # the feature explains much of the variance
    assert result.predictor.predict_gains(X, 6).shape == (300, 6)


def feature_cache(path, pools, features, task):
    """A feature cache as `howhard train` would write it, so no model is loaded."""
    known = {
        prompt_hash(p): np.array([float(p.split()[1]) % 7, 1.0])
        for pool in pools
        for p in pool.prompts
    }
    _save(path, f"{features}:default model:{task}", known)
    return str(path)


def test_router_train_and_evaluate_round_trip(tmp_path):
    """A router trained through the workflow on pools whose strong decoder helps exactly the
    queries with a large id (mod 7) routes those first: learned routing beats random."""
    n, rng = 400, np.random.default_rng(1)
    helped = np.array([i % 7 >= 4 for i in range(n)])
    ids = tuple(f"q{i}" for i in range(n))
    prompts = tuple(f"prompt {i}" for i in range(n))
    weak = Pool(ids, prompts, tuple((rng.random(8) < 0.3).astype(float) for _ in range(n)))
    strong = Pool(
        ids, prompts, tuple((rng.random(8) < (0.9 if h else 0.3)).astype(float) for h in helped)
    )
    paths = {
        name: write_pool(p, tmp_path / f"{name}.jsonl") for name, p in [("w", weak), ("s", strong)]
    }
    cache = feature_cache(tmp_path / "f.npz", [weak], "minilm", "arithmetic")
    spec = TrainSpec(
        pool=paths["w"],
        out=tmp_path / "router.npz",
        features="minilm",
        head="logistic",
        feature_cache=cache,
        strong=paths["s"],
    )
    result = run_train(spec)
    assert result.loss == "log-loss of P(strong beats weak) per pair"
    router = load_predictor(tmp_path / "router.npz")
    assert router.meta_["kind"] == "router"
    wins, trials = preference_counts(weak, strong)
    assert router.meta_["train_mean"] == pytest.approx(wins.sum() / trials.sum())

    spec = RoutingSpec(
        pool=paths["w"],
        strong=paths["s"],
        shares=[0.2, 0.5],
        predictor=tmp_path / "router.npz",
        out=tmp_path / "r",
        feature_cache=cache,
    )
    ev = run_evaluate_routing(spec)
    assert ev.curves["learned"][0] > ev.curves["random"][0] + 0.05
    assert ev.curves["oracle"][0] >= ev.curves["learned"][0]
    report = (tmp_path / "r" / "report.md").read_text()
    assert report.startswith("# howhard routing evaluation")
    assert "Router (logistic head on minilm features)" in report
    assert ev.info["eval_loss"]["model"] < ev.info["eval_loss"]["avg"]
    assert (tmp_path / "r" / "plot.png").stat().st_size > 0

    spec = EvaluateSpec(pool=paths["w"], budgets=[1, 2], max_per_query=8, feature_cache=cache)
    with pytest.raises(ConfigError, match=r"is a router .*; evaluate it with the strong pool"):
        run_evaluate(replace(spec, predictor=tmp_path / "router.npz"))


def test_evaluate_gives_intervals_of_the_savings_and_of_the_gap_closed(tmp_path):
    """A success predictor evaluated on fresh queries: each saving and the share of the gap
    closed comes with a 95% bootstrap interval around it, in the report and its JSON."""
    n, rng = 300, np.random.default_rng(3)
    ids = tuple(f"q{i}" for i in range(n))
    rates = np.array([0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95])[np.arange(n) % 7]
    rewards = tuple((rng.random(8) < r).astype(float) for r in rates)
    pool = Pool(ids, tuple(f"prompt {i}" for i in range(n)), rewards)
    path = write_pool(pool, tmp_path / "p.jsonl")
    cache = feature_cache(tmp_path / "f.npz", [pool], "minilm", "arithmetic")
    spec = TrainSpec(pool=path, out=tmp_path / "p.npz", features="minilm", head="mlp",
                     feature_cache=cache)  # fmt: skip
    run_train(spec)
    spec = EvaluateSpec(pool=path, budgets=[1, 2], max_per_query=8, predictor=tmp_path / "p.npz",
                        feature_cache=cache, out=tmp_path / "r", bootstrap=200)  # fmt: skip
    ev = run_evaluate(spec)
    low, high = ev.predictor["gap_closed_interval"]
    assert low < ev.predictor["eval_loss"]["gap_closed"] < high
    for (low, high), saved in zip(ev.saving_interval["adaptive"], ev.saving_vs_uniform["adaptive"],
                                  strict=True):  # fmt: skip
        assert low < saved < high
    report = (tmp_path / "r" / "report.md").read_text()
    assert f"{round(100 * ev.predictor['eval_loss']['gap_closed'])}% [" in report
    assert "gap_closed_interval" in (tmp_path / "r" / "report.json").read_text()
    assert "gap_closed_interval" not in run_evaluate(replace(spec, bootstrap=0)).predictor


def test_evaluate_also_measures_the_gap_from_the_pools_own_rate(tmp_path):
    """Avg at the held-out pool's own success rate (the best constant there) gives the share of
    the gap without the credit a shift between training and held-out rates adds: equal on the
    training pool itself, smaller on a pool with other rates, and said in the report."""
    n, rng = 210, np.random.default_rng(4)
    rates = np.array([0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95])[np.arange(n) % 7]
    prompts = tuple(f"prompt {i}" for i in range(n))
    ids = tuple(f"q{i}" for i in range(n))
    train = Pool(ids, prompts, tuple((rng.random(8) < r).astype(float) for r in rates))
    harder = Pool(ids, prompts, tuple((rng.random(8) < r / 2).astype(float) for r in rates))
    paths = [write_pool(p, tmp_path / f"{name}.jsonl") for p, name in ((train, "t"), (harder, "h"))]
    cache = feature_cache(tmp_path / "f.npz", [train], "minilm", "arithmetic")
    run_train(TrainSpec(pool=paths[0], out=tmp_path / "p.npz", features="minilm", head="mlp",
                        feature_cache=cache))  # fmt: skip
    shares = []
    for pool, path in zip((train, harder), paths, strict=True):
        spec = EvaluateSpec(pool=path, budgets=[1], max_per_query=8, predictor=tmp_path / "p.npz",
                            feature_cache=cache, out=tmp_path / path.stem, bootstrap=0)  # fmt: skip
        info = run_evaluate(spec).predictor
        own = info["eval_loss_pool_mean"]
        assert own["pool_mean"] == pytest.approx(np.mean(pool.rewards))
        assert own["model"] == info["eval_loss"]["model"] and own["opt"] == info["eval_loss"]["opt"]
        assert own["avg"] <= info["eval_loss"]["avg"]  # the pool's own rate is the best constant
        shares.append((own["gap_closed"], info["eval_loss"]["gap_closed"]))
        report = (tmp_path / path.stem / "report.md").read_text()
        assert f"the predictor closes {100 * own['gap_closed']:.0f}% of the gap" in report
    assert shares[0][0] == pytest.approx(shares[0][1])  # trained on it: the same rate
    assert shares[1][0] < shares[1][1] - 0.05  # half the rates: the shift lifted the share


def test_evaluate_reports_success_under_majority_vote(tmp_path):
    """Rows with answers are also scored under majority vote, which never beats the oracle
    verifier's best-of-b, and equals it at b = 1 (one sample: nothing to choose)."""
    rng = np.random.default_rng(2)
    rows = []
    for i in range(60):
        answers = [str(a) for a in rng.integers(0, 3, 8)]
        correct = str(i % 3)
        rows.append(
            {
                "id": f"q{i}",
                "prompt": f"p{i}",
                "rewards": [float(a == correct) for a in answers],
                "answers": answers,
            }
        )
    path = write_pool(rows, tmp_path / "p.jsonl")
    ev = run_evaluate(EvaluateSpec(pool=path, budgets=[1, 4], max_per_query=8, out=tmp_path / "r"))
    majority = ev.reranked["majority"]
    assert majority["uniform"][0] == pytest.approx(ev.curves["uniform"][0])
    for method, curve in ev.curves.items():
        assert all(m <= c + 1e-12 for m, c in zip(majority[method], curve, strict=True))
    assert majority["oracle"][1] < ev.curves["oracle"][1] - 0.05
    assert "chosen by the majority reranker" in (tmp_path / "r" / "report.md").read_text()


def test_train_on_a_pool_without_any_success_saves(tmp_path):
    """GSM8K with a tiny model: no sample succeeds, so the Avg→Opt gap is zero and its share
    undefined; the predictor still trains and saves."""
    n = 30
    pool = Pool(
        tuple(f"q{i}" for i in range(n)), tuple(f"p{i}" for i in range(n)), (np.zeros(2),) * n
    )
    result = train(pool, np.random.default_rng(0).normal(size=(n, 3)), head="logistic")
    assert np.isnan(result.holdout[result.best]["gap_closed"])
    result.predictor.save(tmp_path / "p.npz")
    assert load_predictor(tmp_path / "p.npz").meta_["holdout"][result.best]["gap_closed"] is None


def test_a_local_feature_model_is_named_by_its_absolute_path(tmp_path, monkeypatch):
    """Feature caches and predictors name a local model file by its absolute path, so the same
    ./m.gguf typed in two folders is two models, and a predictor finds its model from anywhere."""
    from howhard.runs.inputs import feature_model, feature_source

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path / "a")
    resolved = feature_model("hidden-l15", "./m.gguf", None)
    assert resolved == str(tmp_path / "a" / "m.gguf")
    assert feature_source("hidden-l15", resolved, "arithmetic").startswith(f"hidden-l15:{tmp_path}")
    assert feature_model("hidden", "smollm2", None) == "smollm2"  # an embedded model's name
    assert feature_model("hidden", None, None) is None
    assert feature_model("hidden", "no/such.gguf", None) == "no/such.gguf"  # refused on loading
