"""Generated tests as a verifier, the HumanEval pool builder, and best-of-k under each chooser."""

import gzip
import itertools
import json
from fractions import Fraction

import numpy as np
import pytest

from howhard.bestof import best_of_k, dual_agreement_best_of
from howhard.cli import main
from howhard.errors import ConfigError, PoolError
from howhard.pool import Pool, read_pool
from howhard.rerank import scored_best_of
from howhard.score import program_key, score_pool
from howhard.tasks.generated_tests import (
    canonical,
    extract_assertions,
    literal_test,
    parse_generated_tests,
    verdict,
)
from howhard.tasks.humaneval import HumanEval

# ------------------------------------------------------------------ parsing generated assertions


@pytest.mark.parametrize(
    "sample, expected",
    [
        # the first line completes the prompt's "assert "
        ("f(1) == 2\n", ["assert f(1) == 2"]),
        # more assertions follow, with trailing junk
        ("f(1) == 2\nassert f(2) == 3\n\nimport timeit", ["assert f(1) == 2", "assert f(2) == 3"]),
        # the model broke the line right after "assert "
        (
            "\n    f([], 1) == False, 'Empty'\nassert \n    f([1], 1) == True\n",
            ["assert f([], 1) == False, 'Empty'", "assert f([1], 1) == True"],
        ),
        # a call whose brackets span lines is kept whole
        ("f(\n    'x y') == ['x', 'y']\n", ["assert f(\n    'x y') == ['x', 'y']"]),
        # a tab, a comment, an assertion cut short by the token limit
        ("\tf(3) == 4  # ok\nassert f(4) == [1, 2,", ["assert f(3) == 4  # ok"]),
        # nothing after assert, or only blank lines
        ("\n", []),
        ("\n\n", []),
        # never closed
        ("f((1, 2) == 3\n", []),
        # "assert" inside a string is not a new statement
        ("f('assert x') == 1\n", ["assert f('assert x') == 1"]),
        # indented asserts of a test function are read too
        (
            "f(1) == 2\ndef test():\n    assert f(5) == 6\n",
            ["assert f(1) == 2", "assert f(5) == 6"],
        ),
    ],
)
def test_extract_assertions_reads_what_models_write(sample, expected):
    assert extract_assertions(sample) == expected


@pytest.mark.parametrize(
    "statement, expected",
    [
        ("assert f(1, 'a') == [1]", (((1, "a"), {}), "==", [1])),
        ("assert [1] == f(1, 'a')", (((1, "a"), {}), "==", [1])),
        ("assert f(x=-2.5) != (1, 2)", (((), {"x": -2.5}), "!=", (1, 2))),
        ("assert f({1, 2}) is True", ((({1, 2},), {}), "is", True)),
        ("assert f(None) is not None", (((None,), {}), "is not", None)),
        ("assert f([])", ((([],), {}), "truthy", None)),
        ("assert not f({'a': 1})", ((({"a": 1},), {}), "falsy", None)),
        ("assert f(1) == 2, 'message'", (((1,), {}), "==", 2)),
    ],
)
def test_literal_tests_are_read_without_running_anything(statement, expected):
    assert literal_test(statement, "f") == expected


@pytest.mark.parametrize(
    "statement",
    [
        "assert ____ == f(1)",  # a placeholder
        "assert f(x) == 1",  # a free name
        "assert f(1) == g(2)",  # another function
        "assert g(1) == 2",
        "assert f(1) == 1 + 2",  # an expression, not a literal
        "assert f(*[1]) == 1",
        "assert f(**{'a': 1}) == 1",
        "assert f(1) < 2",
        "assert f(1) is 3",  # `is` only with None, True, False
        "assert f(1j) == 1",  # complex is not plain data
        "assert f(1) == f(1) == 1",
        "assert abs(f(1) - 0.5) < 1e-6",
        "assert f(__import__('os').system('true')) == 0",
        "x = f(1)",
        "assert (",
    ],
)
def test_anything_else_is_dropped(statement):
    assert literal_test(statement, "f") is None


def test_parse_deduplicates_tests_and_inputs_across_samples():
    samples = [
        "f(1) == 2\nassert f(2) == 3\n",
        "f(1) == 2\nassert f(1) == 5\nassert ____ == f(3)\n",
        "\n",
        "f(2)==3",
    ]
    tests = parse_generated_tests(samples, "f")
    assert tests.assertions == 6 and tests.kept == 5
    assert tests.inputs == (((1,), {}), ((2,), {}))
    checks = sorted((tests.inputs[t.call][0], t.check, t.expected) for t in tests.tests)
    assert checks == [((1,), "==", 2), ((1,), "==", 5), ((2,), "==", 3)]
    assert tests.digest() == parse_generated_tests(list(reversed(samples)), "f").digest()
    assert tests.digest() != parse_generated_tests(samples[:1], "f").digest()


def test_verdict_scores_and_signatures():
    tests = parse_generated_tests(["f(1) == 2\nassert f(2) == 3\nassert f(1) == 5\n"], "f")
    right = verdict(tests, [("value", 2), ("value", 3)])
    assert (right.passed, right.score) == (2, pytest.approx(2 / 3))
    # the tests in their canonical order: f(1) == 2, f(1) == 5, f(2) == 3
    assert [(tests.inputs[t.call][0], t.expected) for t in tests.tests] == [
        ((1,), 2),
        ((1,), 5),
        ((2,), 3),
    ]
    assert right.passes == "5"  # bits 0 and 2
    assert verdict(tests, [("value", 5), ("error", "KeyError")]).passes == "2"
    assert verdict(tests, [("failed", "timeout")] * 2).passes == "0"
    # equal behaviour, equal signature; floats that differ only by rounding noise too
    assert verdict(tests, [("value", 2), ("value", 3)]).answer == right.answer
    a = verdict(tests, [("value", 0.1 + 0.2), ("error", "ValueError")])
    b = verdict(tests, [("value", 0.3), ("error", "ValueError")])
    assert a.answer == b.answer != right.answer and a.score == 0
    assert verdict(tests, [("value", 2), ("value", [3])]).answer != right.answer
    assert (
        verdict(tests, [("value", (2,)), ("value", 3)]).answer
        != verdict(tests, [("value", [2]), ("value", 3)]).answer
    )
    # no observable behaviour: no vote
    assert verdict(tests, [("error", "ValueError"), ("failed", "timeout")]).answer is None
    assert verdict(tests, [("failed", "load_error")] * 2).answer is None
    empty = parse_generated_tests(["____ == f(1)"], "f")
    assert verdict(empty, []) == verdict(empty, [])
    assert verdict(empty, []).score == 0 and verdict(empty, []).answer is None
    with pytest.raises(ValueError):
        verdict(tests, [("value", 2)])


def test_canonical_is_order_free_for_sets_and_dicts_and_refuses_objects():
    assert canonical({3, 1, 2}) == canonical({2, 3, 1})
    assert canonical({"b": 1, "a": 2}) == canonical({"a": 2, "b": 1})
    assert canonical((1,)) != canonical([1]) != canonical({1})
    with pytest.raises(TypeError):
        canonical(object())


def test_program_key_ignores_comments_and_layout_only():
    assert program_key("def f(x):\n    return x  # same\n") == program_key(
        "def f(x):  \n\n  return x"
    )
    assert program_key("def f(x):\n    return x\n") != program_key("def f(x):\n    return -x\n")
    assert program_key("def f(:") != program_key("def f( :")


# ------------------------------------------------------------------ best-of-k by score, exactly


def brute_force_top_scored(rewards, scores, k):
    """Mean over every k-subset of the mean reward over its top-scored members (ties uniform)."""
    total, count = Fraction(0), 0
    for subset in itertools.combinations(range(len(rewards)), k):
        top = max(scores[i] for i in subset)
        tied = [i for i in subset if scores[i] == top]
        total += Fraction(sum(Fraction(rewards[i]) for i in tied), len(tied))
        count += 1
    return total / count


@pytest.mark.parametrize("seed", range(8))
def test_best_of_k_by_score_equals_brute_force_enumeration(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    rewards = rng.integers(0, 2, n).astype(float)
    scores = rng.integers(0, 3, n) / 2  # many ties, as with fractions of a few tests
    exact = scored_best_of(rewards, scores, n)
    brute = [float(brute_force_top_scored(rewards, scores, k)) for k in range(1, n + 1)]
    np.testing.assert_allclose(exact, brute, rtol=0, atol=1e-12)


def test_best_of_k_curves_and_caps():
    # query a: the verifier ranks a wrong sample first; query b: it ranks the right one first
    rewards = (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 1.0]))
    extras = (
        {"scores": [0.5, 1.0, 0.0], "answers": ["x", "y", "y"]},
        {"scores": [0.0, 1.0, 1.0], "answers": [None, "z", "z"]},
    )
    bk = best_of_k(Pool(("a", "b"), ("", ""), rewards, extras))
    assert bk.kmax == 3 and bk.solvable == 1.0
    assert bk.curves["oracle"] == pytest.approx([0.5, (2 / 3 + 1) / 2, 1.0])
    assert bk.curves["random"] == pytest.approx([0.5] * 3)
    # query a: k=2 returns the 1 only from {0, 2}; k=3 never. Query b: 2/3, then 1, then 1.
    assert bk.curves["verifier"] == pytest.approx([(1 / 3 + 2 / 3) / 2, (1 / 3 + 1) / 2, 0.5])
    assert bk.at("verifier", 3) == 0.5 and bk.peak_k["verifier"] == 2
    # majority, query a: y wins whenever both y's are drawn; a lone x vs y is a coin flip
    assert bk.curves["majority"][2] == pytest.approx(0.5)
    assert (bk.top_groups["verifier"].all_correct, bk.top_groups["verifier"].none_correct) == (1, 1)
    assert bk.blind == {"verifier": 0, "majority": 0}
    with pytest.raises(PoolError):
        best_of_k(Pool(("a",), ("",), (np.array([1.0, 0.0]),)))


# ------------------------------------------------------------------ CodeT's dual agreement


def brute_force_dual_agreement(rewards, passes, k):
    """Mean over every k-subset of CodeT's pick: the groups of equal ``passes`` in the subset,
    each scored (members in the subset) x (tests passed); a uniform member of a uniform top
    group."""
    total, count = Fraction(0), 0
    for subset in itertools.combinations(range(len(rewards)), k):
        members = {}
        for i in subset:
            members.setdefault(passes[i], []).append(i)
        score = {m: len(g) * int(m, 16).bit_count() for m, g in members.items()}
        top = [m for m in members if score[m] == max(score.values())]
        total += sum(
            Fraction(sum(Fraction(rewards[i]) for i in members[m]), len(members[m])) for m in top
        ) / len(top)
        count += 1
    return total / count


def test_dual_agreement_on_a_hand_worked_pool():
    # one wrong sample passes 3 tests alone; three right ones agree on 2 tests
    rewards, passes = [0.0, 1.0, 1.0, 1.0], ["7", "3", "3", "3"]
    # k = 2: a pair with the wrong one scores 3 vs 2 (3 of 6 pairs), a right pair wins: 1/2.
    # k = 3: two right ones score 4 > 3, or three right ones: 1. The verifier alone (top score)
    # returns the wrong one whenever it is drawn.
    exact = [0.75, 0.5, 1.0, 1.0]
    assert [float(brute_force_dual_agreement(rewards, passes, k)) for k in range(1, 5)] == exact
    estimate, variance = dual_agreement_best_of(rewards, passes, 4, 20000, np.random.default_rng(0))
    np.testing.assert_allclose(estimate, exact, atol=4 * np.sqrt(variance.max()) + 1e-12)
    assert estimate[2:].tolist() == [1.0, 1.0] and variance[3] == 0  # exact at k = n
    np.testing.assert_allclose(scored_best_of(rewards, [3, 2, 2, 2], 4), [0.75, 0.5, 0.25, 0.0])
    # a tie: 1 x 2 tests against 2 x 1 test; every group scores 0 ties all of them
    tie = dual_agreement_best_of([1.0, 0.0, 0.0], ["3", "1", "1"], 3, 10, np.random.default_rng(1))
    assert tie[0][2] == 0.5
    none = dual_agreement_best_of([1.0, 0.0, 0.0], ["0", "0", "0"], 3, 10, np.random.default_rng(1))
    assert none[0][2] == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", range(6))
def test_dual_agreement_estimate_matches_brute_force_enumeration(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 8))
    rewards = rng.integers(0, 2, n).astype(float)
    passes = [f"{m:x}" for m in rng.integers(0, 8, n)]  # 3 tests: many groups, many ties
    estimate, variance = dual_agreement_best_of(rewards, passes, n, 4000, rng)
    brute = [float(brute_force_dual_agreement(rewards, passes, k)) for k in range(1, n + 1)]
    assert estimate[-1] == pytest.approx(brute[-1], abs=1e-12)
    # within 5 standard errors (and the standard error itself small)
    assert np.all(np.abs(estimate - brute) <= 5 * np.sqrt(variance) + 1e-12)
    assert np.sqrt(variance).max() < 0.01


def test_best_of_k_reports_the_codet_curve_seeded():
    rewards = (np.array([0.0, 1.0, 1.0, 1.0]), np.array([1.0, 0.0, 0.0]))
    extras = (
        {"passes": ["7", "3", "3", "3"], "scores": [1.0, 2 / 3, 2 / 3, 2 / 3]},
        {"passes": ["0", "0", "0"], "scores": [0.0, 0.0, 0.0]},
    )
    pool = Pool(("a", "b"), ("", ""), rewards, extras)
    bk = best_of_k(pool, 3, draws=500, seed=3)
    assert bk.curves["codet"] == best_of_k(pool, 3, draws=500, seed=3).curves["codet"]
    assert bk.curves["codet"] != best_of_k(pool, 3, draws=500, seed=4).curves["codet"]
    assert bk.curves["codet"][2] == pytest.approx((1.0 + 1 / 3) / 2)  # k = n of query b
    assert bk.top_groups["codet"].all_correct == 1 and bk.blind["codet"] == 1
    assert bk.top_groups["verifier"].none_correct == 1
    assert 0 < bk.mc_error["codet"] < 0.05 and (bk.draws, bk.seed) == (500, 3)
    with pytest.raises(ConfigError, match="draws"):
        best_of_k(pool, 3, draws=0)


# ------------------------------------------------------------------ the pool, in the real sandbox

ANSWERS = {
    "HumanEval/0": (
        "    for i, a in enumerate(numbers):\n        for b in numbers[i + 1:]:\n"
        "            if abs(a - b) < threshold:\n                return True\n    return False\n"
    ),
    "HumanEval/2": "    return number % 1.0\n",
}


def write_jsonl(path, rows):
    with gzip.open(path, "wt") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


@pytest.mark.integration
@pytest.mark.slow
def test_score_pool_end_to_end_in_the_sandbox_and_resume(tmp_path):
    task = HumanEval(timeout=3.0)
    prompt0, prompt2 = (task.problems[t]["prompt"] for t in ("HumanEval/0", "HumanEval/2"))
    samples = [
        {
            "task_id": "HumanEval/0",
            "prompt": prompt0,
            "samples": [
                ANSWERS["HumanEval/0"],
                ANSWERS["HumanEval/0"] + "# the same program\n",  # executed once
                "    return False\n",
                "    return len(numbers) > 1\n",
            ],
        },
        {
            "task_id": "HumanEval/2",
            "prompt": prompt2,
            "samples": [
                ANSWERS["HumanEval/2"],
                "    return int(number)\n",
                "    while True:\n        pass\n",  # hangs: the sandbox holds
                "    return (\n",  # does not load
            ],
        },
    ]
    generated = [
        {
            "task_id": "HumanEval/0",
            "samples": [
                "\n    has_close_elements([1.0, 2.0], 0.5) == False\nassert "
                "has_close_elements([1.0, 1.1], 0.5) == True\n",
                "____ == has_close_elements([1.0], 1.0)",
                "has_close_elements([1.0, 2.0, 3.0], 0.5) == True",  # a wrong test
            ],
        },
        {"task_id": "HumanEval/2", "samples": ["truncate_number(3.5) == 0.5\n", "\n"]},
    ]
    samples_path, tests_path = tmp_path / "samples.jsonl.gz", tmp_path / "tests.jsonl.gz"
    write_jsonl(samples_path, samples)
    write_jsonl(tests_path, generated)
    out = tmp_path / "pool.jsonl.gz"
    stats = score_pool(task, samples_path, out, tests_path)
    assert (stats.queries, stats.samples, stats.unique, stats.scored) == (2, 8, 7, 7)
    assert stats.generated_tests == 4
    pool = read_pool(out)
    assert pool.ids == ("HumanEval/0", "HumanEval/2")
    r0, r2 = (list(r) for r in pool.rewards)
    assert r0[:2] == [1.0, 1.0] and 0 < r0[2] < 1 and r2[0] == 1.0
    assert r2[2:] == [0.0, 0.0]
    e0, e2 = pool.extras
    assert e0["task"] == e2["task"] == "humaneval"  # so that train reads the right task
    assert e0["generated_tests"] == 3 and e2["generated_tests"] == 1
    assert e0["scores"][:2] == [pytest.approx(2 / 3)] * 2  # passes the two right tests
    assert e0["scores"][2] == pytest.approx(1 / 3)  # "return False" passes the first only
    assert e2["scores"] == [1.0, 0.0, 0.0, 0.0]
    assert e0["answers"][0] == e0["answers"][1] != e0["answers"][2]
    for e in (e0, e2):  # which tests each passes: as many as its score says
        assert [int(m, 16).bit_count() for m in e["passes"]] == [
            round(s * e["generated_tests"]) for s in e["scores"]
        ]
    assert e0["passes"][0] == e0["passes"][1] != e0["passes"][2] and e2["passes"][3] == "0"
    assert e2["answers"][2] is None and e2["answers"][3] is None
    assert not (tmp_path / "pool.jsonl.gz.partial.jsonl").exists()

    # a crash after two programs (and a line torn by it): the rerun keeps them, runs the rest
    crashing = Crashing(task, after=2)
    again = tmp_path / "again.jsonl.gz"
    with pytest.raises(RuntimeError, match="crash"):
        score_pool(crashing, samples_path, again, tests_path, workers=1, progress=False)
    partial = tmp_path / "again.jsonl.gz.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 2 and not again.exists()
    with partial.open("a") as f:
        f.write('{"task_id": "HumanEval/2", "compl')
    resumed = score_pool(task, samples_path, again, tests_path, progress=False)
    assert (resumed.resumed, resumed.scored) == (2, 5)
    assert read_pool(again).extras == pool.extras
    assert [list(r) for r in read_pool(again).rewards] == [r0, r2]
    # other generated tests: the earlier lines are not this run's
    write_jsonl(tests_path, [generated[0], {"task_id": "HumanEval/2", "samples": ["\n"]}])
    partial.write_text(json.dumps({"task_id": "HumanEval/0"}) + "\n")
    with pytest.raises(PoolError, match="not the scored row 1"):
        score_pool(task, samples_path, again, tests_path, progress=False)


class Crashing(HumanEval):
    """The task, but its sandbox run raises after ``after`` programs (a crash mid-run)."""

    def __init__(self, task, after):
        super().__init__(timeout=task.timeout)
        self._problems, self.left = task.problems, after

    def check_and_call(self, *args):
        if self.left == 0:
            raise RuntimeError("crash")
        self.left -= 1
        return super().check_and_call(*args)


def test_score_pool_names_bad_input(tmp_path):
    task = HumanEval()
    bad = tmp_path / "bad.jsonl"
    for row, message in [
        ({"task_id": "HumanEval/0", "prompt": "x", "samples": []}, "'samples' must be"),
        ({"task_id": "HumanEval/0", "prompt": "x", "samples": [1]}, "must be a string"),
        ({"task_id": "HumanEval/9999", "prompt": "x", "samples": ["y"]}, "not a problem"),
        ({"prompt": "x", "samples": ["y"]}, "'task_id' must be"),
    ]:
        bad.write_text(json.dumps(row) + "\n")
        with pytest.raises(PoolError, match=message):
            score_pool(task, bad, tmp_path / "out.jsonl", progress=False)
    bad.write_text(json.dumps({"task_id": "HumanEval/0", "prompt": "x", "samples": ["y"]}) + "\n")
    tests = tmp_path / "tests.jsonl"
    tests.write_text(json.dumps({"task_id": "HumanEval/1", "samples": []}) + "\n")
    with pytest.raises(PoolError, match="no row for 'HumanEval/0'"):
        score_pool(task, bad, tmp_path / "out.jsonl", tests, progress=False)


def test_cli_score_samples_needs_humaneval_and_bestof_reports(tmp_path, capsys):
    rows = tmp_path / "s.jsonl"
    rows.write_text(json.dumps({"task_id": "a", "prompt": "x", "samples": ["y"]}) + "\n")
    assert main(["score", "--task", "arithmetic", "--samples", str(rows), "--output", "o"]) == 2
    assert "--samples needs --task humaneval" in capsys.readouterr().err
    pool = tmp_path / "pool.jsonl.gz"
    from howhard.pool import write_pool

    write_pool(
        [
            {
                "id": "a",
                "prompt": "",
                "rewards": [1.0, 0.0],
                "scores": [0.0, 1.0],
                "answers": ["p", "q"],
            }
        ],
        pool,
    )
    assert main(["bestof", str(pool), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["curves"]["oracle"] == [0.5, 1.0] and data["curves"]["verifier"] == [0.5, 0.0]
    assert main(["bestof", str(pool), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "plot.png").exists()
    assert "| 2 | 1.000 | 0.000 | 0.500 | 0.500 |" in (tmp_path / "rep" / "report.md").read_text()


# ------------------------------------------------------------------ the sandbox's calls


@pytest.fixture(scope="module")
def sandbox():
    from howhard.sandbox import Limits, Sandbox

    return Sandbox(Limits(timeout=6.0))


TWICE = "def check(candidate):\n    assert candidate(1) == 1\n    assert candidate(1) == 2\n"


@pytest.mark.integration
def test_check_and_calls_each_see_the_program_as_just_loaded(sandbox):
    stateful = "def f(x, seen=[]):\n    seen.append(x)\n    return len(seen)\n"
    check, calls = sandbox.check_and_calls(stateful, "f", TWICE, [((1,), {}), ((1,), {})])
    assert check.passed == (True, True) and check.status == "ok"
    assert calls.outcomes == (("value", 1), ("value", 2)) and calls.status == "ok"
    alone = sandbox.calls(stateful, "f", [((1,), {}), ((1,), {})])
    assert alone.outcomes == calls.outcomes


@pytest.mark.integration
def test_calls_go_on_in_a_fresh_sandbox_after_an_exit_or_a_hang(sandbox):
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}  # other tests' servers
    program = (
        "import os\ndef f(x):\n    if x == 0:\n        os._exit(3)\n"
        "    while x == -1:\n        pass\n    return [x]\n"
    )
    check, calls = sandbox.check_and_calls(
        program, "f", "def check(candidate):\n    assert candidate(0) == [0]\n", [((2,), {})]
    )
    assert check.passed == (False,) and check.status == "exited"
    assert calls.outcomes == (("value", [2]),) and calls.status == "ok"
    inputs = [((1,), {}), ((-1,), {}), ((5,), {}), ((0,), {}), ((7,), {})]
    result = sandbox.calls(program, "f", inputs, call_timeout=1.0)
    assert result.outcomes == (
        ("value", [1]),
        ("failed", "timeout"),
        ("value", [5]),
        ("failed", "exited"),
        ("value", [7]),
    )
    assert result.status == "timeout"
    out_of_restarts = sandbox.calls(program, "f", inputs, call_timeout=1.0, restarts=0)
    assert out_of_restarts.outcomes[1:] == (("failed", "timeout"),) * 4
    broken = sandbox.calls("def f(:\n", "f", inputs[:2])
    assert broken.outcomes == (("failed", "load_error"),) * 2
    assert sandbox.calls("def f(x):\n    raise KeyError(x)\n", "f", inputs[:1]).outcomes == (
        ("error", "KeyError"),
    )
    assert not {p.pid for p in psutil.Process().children(recursive=True)} - before
