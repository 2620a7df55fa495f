"""The ``task`` feature source (arithmetic's and CRUXEval's own features of a query), combined
feature sources, and the keep rule of ``howhard train``'s comparison."""

import json

import numpy as np
import pytest

from howhard.errors import ConfigError, UnknownNameError
from howhard.features import _save, get_featurizer, source_names
from howhard.pool import Pool, write_pool
from howhard.predict import SuccessPredictor
from howhard.runs import TrainSpec, load_predictor, run_train
from howhard.runs.inputs import featurize_sources, source_caches
from howhard.runs.train import Candidate, feature_candidates, heldout_savings, keep
from howhard.tasks import get_task
from howhard.tasks.arithmetic import FEATURE_NAMES, column_carries, query_features
from howhard.tasks.cruxeval import (
    EXEC_NAMES,
    STATIC_NAMES,
    execution_features,
    normalize_answer,
    parse_prompt,
    static_features,
)


def arith(question: str) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, query_features(question), strict=True))


# ------------------------------------------------------------------------------ arithmetic


def test_column_carries_count_schoolbook_carries_and_borrows():
    assert column_carries(58, 67, "+") == 2  # 8+7 = 15, 5+6+1 = 12
    assert column_carries(12, 34, "+") == 0
    assert column_carries(999, 1, "+") == 3
    assert column_carries(52, 38, "-") == 1  # 2 < 8 borrows; 4 - 3 does not
    assert column_carries(38, 52, "-") == 1  # the larger minus the smaller
    assert column_carries(100, 1, "-") == 2
    assert column_carries(47, 3, "*") == 2  # 7*3 = 21, 4*3+2 = 14
    assert column_carries(12, 3, "*") == 0
    assert column_carries(99, 99, "*") == 6  # 2 per partial product + 2 adding 891 + 8910


def test_arithmetic_features_of_hand_questions():
    f = arith("What is 58 + 67?")
    assert (f["n_operands"], f["n_add"], f["n_sub"], f["n_mul"]) == (2, 1, 0, 0)
    assert (f["min_digits"], f["max_digits"], f["total_digits"]) == (2, 2, 4)
    assert (f["carries"], f["max_step_carries"], f["negative_step"]) == (2, 2, 0)
    assert (f["answer_digits"], f["answer_negative"]) == (3, 0)  # 125
    assert f["log10_answer"] == pytest.approx(np.log10(126))
    f = arith("What is 3 - 8 + 10?")  # 3 - 8 = -5 (no borrow: 8 - 3), then 10 - 5 (one borrow)
    assert (f["n_add"], f["n_sub"], f["carries"], f["negative_step"]) == (1, 1, 1, 1)
    assert (f["answer_digits"], f["answer_negative"], f["answer_trailing_zero"]) == (1, 0, 0)
    f = arith("What is 4 - 9?")
    assert (f["answer_negative"], f["negative_step"], f["carries"]) == (1, 1, 0)
    f = arith("What is 8 * 5?")
    assert (f["n_mul"], f["carries"], f["answer_trailing_zero"]) == (1, 1, 1)
    with pytest.raises(ConfigError, match="is not an arithmetic question"):
        query_features("What is love?")


def test_task_source_of_arithmetic_through_the_registry():
    f = get_featurizer("task", None, lambda p: p, task="arithmetic")
    X = f.transform(["What is 58 + 67?", "What is 1 + 1?"])
    assert X.shape == (2, len(FEATURE_NAMES)) and X.dtype == np.float32
    np.testing.assert_allclose(X[0], query_features("What is 58 + 67?"), rtol=1e-6)
    with pytest.raises(ConfigError, match="task 'gsm8k' provides no features"):
        get_featurizer("task", None, lambda p: p, task="gsm8k")
    with pytest.raises(ConfigError, match="needs the task"):
        get_featurizer("task", None, lambda p: p)


# -------------------------------------------------------------------------------- cruxeval

PROGRAM = """def f(text, n):
    out = []
    for i in range(n):
        if text[i].isupper():
            out.append(text[i].lower())
    while n > 0:
        n -= 1
    return ''.join(out) + str(len(text))"""


def test_cruxeval_prompt_parsing_and_answer_normaliser():
    prompt = f"{PROGRAM}\nassert f('AbC', 3) == ??"
    assert parse_prompt(prompt) == (PROGRAM, "'AbC', 3")
    with pytest.raises(ConfigError, match="not a CRUXEval output-prediction prompt"):
        parse_prompt("def f(x): return x\nassert f(1) == 1")
    assert normalize_answer("'abc'") == normalize_answer('"abc"') == "'abc'"
    assert normalize_answer(" [1,2, (3,)] ") == "[1, 2, (3,)]"
    assert normalize_answer("{'a': 1}") == "{'a': 1}"
    assert normalize_answer("f(3) ") == "f(3)"  # not a literal: the stripped text
    assert normalize_answer("1.00") == normalize_answer("1.0") == "1.0"
    long = "[" + "1, " * 5000 + "]"
    assert normalize_answer(f" {long} ") == long  # too long to parse: the stripped text
    task = get_task("cruxeval")
    assert task.answer("'ac3'") == task.answer('"ac3"')
    query = task.queries(800, 0)[0]
    assert task.reward(query, query.meta["answer"].replace("'", '"')) == 1.0


def test_cruxeval_static_features_of_a_hand_program():
    f = dict(zip(STATIC_NAMES, static_features(PROGRAM, "'AbC', 3"), strict=True))
    log = np.log1p
    assert f["code_lines"] == pytest.approx(log(8))
    assert f["f_args"] == 2 and f["input_args"] == 2
    assert f["loop_nesting"] == 1  # the if is inside the for, no loop in a loop
    assert f["n_for"] == pytest.approx(log(1)) and f["n_while"] == pytest.approx(log(1))
    assert f["n_if"] == pytest.approx(log(1)) and f["n_augassign"] == pytest.approx(log(1))
    assert f["n_nested_def"] == 0
    assert f["string_methods"] == pytest.approx(log(3))  # isupper, lower, join
    assert f["list_methods"] == pytest.approx(log(1))  # append
    assert f["builtin_calls"] == pytest.approx(log(3))  # range, str, len
    assert f["code_str_literals"] == pytest.approx(log(1)) and f["code_str_chars"] == 0
    assert f["input_chars"] == pytest.approx(log(len("'AbC', 3")))
    assert f["input_max_str"] == pytest.approx(log(3))
    assert f["input_max_int"] == pytest.approx(log(3))


@pytest.mark.integration
def test_cruxeval_execution_features_through_the_real_sandbox():
    """Three programs and a killer in one sandboxed batch: a normal run is measured, an infinite
    loop hits the step limit, a sleep the time limit, an exception is recorded, and a program
    that kills the interpreter is flagged while the one after it still runs."""
    programs = [
        (PROGRAM, "'AbC', 3"),
        ("def f(x):\n    while True:\n        x += 1\n    return x", "1"),
        ("def f(x):\n    import time\n    time.sleep(60)\n    return x", "1"),
        ("def f(x):\n    return 1 // x", "0"),
        ("def f(x):\n    import os\n    os._exit(3)", "0"),
        ("def f(xs):\n    return [x * 2 for x in xs]", "[1, 2, 3]"),
    ]
    X = execution_features(programs, steps=20_000, seconds=1.0)
    rows = [dict(zip(EXEC_NAMES, x, strict=True)) for x in X]
    ok, loop, sleep, error, killer, comp = rows
    # for: 4 iterations of its header line (3 + the exit), while: 4 (3 + the exit)
    assert ok["loop_iterations"] == pytest.approx(np.log1p(8))
    assert ok["calls"] == ok["max_depth"] == pytest.approx(np.log1p(1))
    assert ok["lines_executed"] == pytest.approx(np.log1p(18))
    assert ok["line_coverage"] == pytest.approx(7 / 8)  # every statement but the def
    # builtins called: isupper x3, lower x2, join (str); append x2 (list); len (other)
    assert ok["str_calls"] == pytest.approx(np.log1p(6))
    assert ok["list_calls"] == pytest.approx(np.log1p(2))
    assert ok["other_calls"] == pytest.approx(np.log1p(1))
    assert (ok["exception"], ok["limit_hit"], ok["output_str"]) == (0, 0, 1)
    assert 0 < ok["output_similarity"] < 1
    assert ok["output_len"] == pytest.approx(np.log1p(len("ac3")))
    assert ok["output_repr_chars"] == pytest.approx(np.log1p(len("'ac3'")))
    assert (loop["limit_hit"], loop["exception"]) == (1, 0)
    assert loop["lines_executed"] == pytest.approx(np.log1p(20_001))
    assert (sleep["limit_hit"], sleep["exception"]) == (1, 0)
    assert (error["exception"], error["limit_hit"], error["output_int"]) == (1, 0, 0)
    assert killer["limit_hit"] == 1
    assert (comp["output_list"], comp["limit_hit"]) == (1, 0)
    assert comp["output_len"] == pytest.approx(np.log1p(3))


@pytest.mark.integration
def test_cruxeval_task_features_of_the_real_problems_in_one_batch():
    task = get_task("cruxeval")
    prompts = [q.prompt for q in task.queries(800, 0)[:40]]
    X = get_featurizer("task", None, task.query_text, task="cruxeval").transform(prompts)
    assert X.shape == (40, len(STATIC_NAMES) + len(EXEC_NAMES))
    run = X[:, len(STATIC_NAMES) :]
    assert run[:, EXEC_NAMES.index("exception")].sum() == 0  # benchmark programs all run
    assert run[:, EXEC_NAMES.index("limit_hit")].sum() == 0
    assert (run[:, EXEC_NAMES.index("lines_executed")] > 0).all()


# ------------------------------------------------------------------------ combined sources


def test_source_names_split_combinations_and_check_each():
    assert source_names("hidden+task") == ["hidden", "task"]
    assert source_names("minilm+ngrams+task") == ["minilm", "ngrams", "task"]
    with pytest.raises(UnknownNameError, match="did you mean 'ngrams'"):
        source_names("ngram+task")
    with pytest.raises(ConfigError, match="names a source twice"):
        source_names("task+task")
    combined = get_featurizer("ngrams+task", None, lambda p: p, task="arithmetic")
    assert combined.name == "ngrams+task"
    X = combined.transform(["What is 1 + 2?"])
    assert X.shape == (1, 4096 + len(FEATURE_NAMES))
    assert feature_candidates("ngrams", True, "arithmetic") == ["ngrams", "task", "ngrams+task"]
    assert feature_candidates("ngrams", True, "gsm8k") == ["ngrams"]
    assert feature_candidates("task, ngrams+task", False, "arithmetic") == ["task", "ngrams+task"]


def test_source_caches_give_each_source_its_own_file(tmp_path):
    a, b = "ngrams:default model:arithmetic", "task:default model:arithmetic"
    cache = tmp_path / "f.npz"
    assert source_caches(cache, [a, b]) == [cache, tmp_path / "f.task.npz"]
    assert source_caches(None, [a, b]) == [None, None]
    _save(cache, b, {"k": np.zeros(2)})
    assert source_caches(cache, [a, b]) == [tmp_path / "f.ngrams.npz", cache]
    assert source_caches(cache, [a]) == [cache]  # holds none of them: cached_transform refuses


def test_groups_weight_each_source_to_equal_total_variance():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 5)) * [1, 2, 3, 4, 5]
    y = np.column_stack([rng.integers(0, 5, 50), np.full(50, 4)])
    m = SuccessPredictor().fit(X, y, groups=[1, 4])
    Xs = (X - m.mean_) / m.scale_
    var = Xs.var(axis=0)
    assert var[:1].sum() == pytest.approx(var[1:].sum())  # each source: d / S = 2.5
    assert var.sum() == pytest.approx(5.0)
    with pytest.raises(ConfigError, match="summing to the 5 features"):
        SuccessPredictor().fit(X, y, groups=[1, 3])


def arithmetic_pool(n: int, seed: int) -> Pool:
    """Synthetic rewards of real arithmetic questions: success falls with the carries."""
    rng = np.random.default_rng(seed)
    queries = get_task("arithmetic").queries(n, seed)
    rewards = []
    for q in queries:
        f = arith(q.prompt)
        rate = 0.9 * np.exp(-1.2 * f["carries"] - 0.8 * (f["max_digits"] - 1))
        rewards.append((rng.random(8) < rate).astype(float))
    return Pool(tuple(q.id for q in queries), tuple(q.prompt for q in queries), tuple(rewards))


def test_combined_sources_round_trip_through_a_saved_predictor(tmp_path):
    """Train on ngrams+task, compare it with each source alone; the file records the kept
    source and load_predictor + the recorded features rebuild exactly its inputs."""
    pool = arithmetic_pool(300, 3)
    path = write_pool(pool, tmp_path / "train.jsonl")
    spec = TrainSpec(
        pool=path,
        out=tmp_path / "p.npz",
        features="ngrams,task,ngrams+task",
        head="logistic",
        feature_cache=str(tmp_path / "f.npz"),
        budgets=(1, 2, 4),
    )
    result = run_train(spec)
    assert [c.features for c in result.candidates] == ["ngrams", "task", "ngrams+task"]
    assert all(len(c.saved) == 3 for c in result.candidates)
    assert result.kept is keep(result.candidates)
    assert (tmp_path / "f.npz").exists() and (tmp_path / "f.task.npz").exists()
    by = {c.features: c for c in result.candidates}
    assert by["task"].table["gap_closed"] > by["ngrams"].table["gap_closed"]
    assert result.kept.features != "ngrams"

    predictor = load_predictor(tmp_path / "p.npz")
    assert predictor.meta_["features"] == result.kept.features
    assert [c["features"] for c in predictor.meta_["comparison"]] == list(by)
    X, groups = featurize_sources(pool, result.kept.features, "arithmetic", None, None)
    assert predictor.meta_["feature_groups"] == groups
    np.testing.assert_allclose(
        predictor.predict_proba_success(X), result.predictor.predict_proba_success(X)
    )

    combo = TrainSpec(pool=path, out=tmp_path / "c.npz", features="ngrams+task", head="logistic")
    run_train(combo)
    saved = load_predictor(tmp_path / "c.npz")
    assert saved.meta_["features"] == "ngrams+task"
    assert saved.meta_["feature_groups"] == [4096, len(FEATURE_NAMES)]
    from howhard.runs import predictor_features

    X = predictor_features(saved, tmp_path / "c.npz", pool, None)
    assert X.shape == (300, 4096 + len(FEATURE_NAMES))
    saved.predict_gains(X, 4)


def test_train_prints_every_source_with_loss_and_savings(tmp_path, capsys):
    from howhard.cli import main

    path = write_pool(arithmetic_pool(200, 4), tmp_path / "train.jsonl")
    code = main(
        ["train", str(path), "--features", "ngrams", "--compare-features", "--head", "logistic",
         "--out", str(tmp_path / "p.npz"), "--budgets", "1,2"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "gap closed   B=1     B=2" in out and "B=4" not in out  # a budget above the
    # samples of a query is refused (test_compare), not dropped
    assert out.count("<- kept") == 1
    assert "highest mean compute saved" in out and "oracle" in out
    for source in ("ngrams ", "task ", "ngrams+task "):
        assert f"\n  {source}" in out
    assert "saved the " in out


# -------------------------------------------------------------------------------- keep rule


def cand(features: str, loss: float, saved: list[float]) -> Candidate:
    table = {"model": loss, "avg": 1.0, "opt": 0.0, "gap_closed": 1 - loss}
    return Candidate(features, "logistic", 0.1, table, saved, [False] * len(saved))


def test_keep_rule_prefers_compute_saved_and_breaks_ties_by_loss():
    good_loss = cand("hidden", 0.50, [0.40, 0.30, 0.20, 0.10])  # mean 25%
    good_saving = cand("task", 0.60, [0.40, 0.30, 0.25, 0.27])  # mean 30.5%
    assert keep([good_loss, good_saving]) is good_saving
    tie = cand("hidden+task", 0.55, [0.41, 0.30, 0.25, 0.262])  # also 30.5%: whole points tie
    assert keep([good_saving, tie]) is tie  # the lower loss
    assert keep([tie, good_saving]) is tie
    routers = [cand("a", 0.6, []), cand("b", 0.4, [])]
    assert keep(routers) is routers[1]  # no savings (a router): the lower loss


def test_heldout_savings_match_evaluate():
    """The train comparison's compute saved is evaluate's ``adaptive`` saving."""
    from howhard.evaluate import evaluate

    rng = np.random.default_rng(5)
    rates = rng.beta(0.3, 0.6, 120)
    pool = Pool(
        tuple(f"q{i}" for i in range(120)),
        tuple(f"p{i}" for i in range(120)),
        tuple((rng.random(8) < r).astype(float) for r in rates),
    )
    noisy = np.clip(rates + rng.normal(0, 0.1, 120), 0.01, 0.99)
    gains = noisy[:, None] * (1 - noisy[:, None]) ** np.arange(8)
    saved, lower = heldout_savings(pool.q(8), gains, [1, 2, 4])
    ev = evaluate(pool, [1, 2, 4], 8, gains)
    assert saved == pytest.approx(ev.saving_vs_uniform["adaptive"])
    assert lower == ev.saving_is_lower_bound["adaptive"]
    assert json.dumps(saved)


# ------------------------------------------------------------------- the task a pool names


def test_the_task_comes_from_the_pool_rows_unless_given():
    from howhard.tasks import pool_task

    assert pool_task([{}, {"model": "m"}], "p.jsonl") == "arithmetic"  # no row names one
    assert pool_task([{"task": "gsm8k"}, {}], "p.jsonl") == "gsm8k"
    assert pool_task([{"task": "cruxeval-o"}], "p.jsonl") == "cruxeval"  # the released pools
    with pytest.raises(ConfigError, match=r"p\.jsonl: its rows name several tasks \(gsm8k, "):
        pool_task([{"task": "gsm8k"}, {"task": "math500"}], "p.jsonl")
    with pytest.raises(ConfigError, match=r"the task 'poetry', which howhard does not know; pass "):
        pool_task([{"task": "poetry"}], "p.jsonl")


def test_train_on_a_released_cruxeval_pool_uses_cruxeval_without_being_told(tmp_path):
    from howhard.cli import main

    crux = get_task("cruxeval")
    queries = crux.queries(40, seed=0)
    pool = Pool(
        tuple(q.id for q in queries),
        tuple(q.prompt for q in queries),
        tuple(np.array([float(i % 3 == 0), float(i % 2)]) for i in range(len(queries))),
        tuple({"task": "cruxeval-o", "model": "m"} for _ in queries),
    )
    path = write_pool(pool, tmp_path / "crux.jsonl")
    out = tmp_path / "p.npz"
    args = ["train", str(path), "--head", "logistic", "--out"]
    assert main([*args, str(out), "--features", "ngrams+task"]) == 0  # CRUXEval's task features
    assert load_predictor(out).meta_["task"] == "cruxeval"
    told = ["--features", "ngrams", "--task", "arithmetic"]
    assert main([*args, str(tmp_path / "a.npz"), *told]) == 0  # told: obeyed
    assert load_predictor(tmp_path / "a.npz").meta_["task"] == "arithmetic"
