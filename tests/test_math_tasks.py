import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from howhard.errors import ConfigError
from howhard.tasks import Query, get_task
from howhard.tasks import gsm8k as g
from howhard.tasks import math500 as m
from howhard.tasks.base import data_dir

GSM8K_TEST = data_dir() / "gsm8k" / "test.jsonl"
GSM8K_TRAIN = data_dir() / "gsm8k" / "train.jsonl"
MATH_TEST = data_dir() / "math500" / "test.jsonl"
needs_data = pytest.mark.skipif(
    not (GSM8K_TEST.is_file() and GSM8K_TRAIN.is_file() and MATH_TEST.is_file()),
    reason=f"needs the GSM8K and MATH-500 files under {data_dir()} (set HOWHARD_DATA)",
)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- data location ---------------------------------------------------------------------------


def test_data_dir_is_the_env_var_else_shared_data_beside_the_repo(monkeypatch, tmp_path):
    monkeypatch.delenv("HOWHARD_DATA", raising=False)
    repo = Path(g.__file__).resolve().parents[3]
    assert (repo / "pyproject.toml").is_file()
    assert data_dir() == repo.parent / "shared" / "data"
    monkeypatch.setenv("HOWHARD_DATA", str(tmp_path))
    assert data_dir() == tmp_path


@pytest.mark.parametrize(
    ("name", "file"), [("gsm8k", "gsm8k/test.jsonl"), ("math500", "math500/test.jsonl")]
)
def test_missing_data_names_the_path_and_both_fixes(monkeypatch, tmp_path, name, file):
    monkeypatch.setenv("HOWHARD_DATA", str(tmp_path))
    task = get_task(name)  # constructing reads nothing
    with pytest.raises(ConfigError) as e:
        task.queries(3, 0)
    assert str(e.value) == (
        f"{name}'s default file {tmp_path / file} does not exist; set HOWHARD_DATA to the folder "
        f"that holds {file}, or pass the file itself as data=FILE"
    )
    assert e.value.params == ("data",)  # the command line words it --data
    with pytest.raises(ConfigError, match=f"{name} data file {tmp_path}/nope.jsonl does not exist"):
        get_task(name, data=tmp_path / "nope.jsonl").queries(3, 0)


def test_data_option_reads_that_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"})
        + "\n\n"
        + json.dumps({"question": "How many?", "answer": "#### 1,200"})
        + "\n"
    )
    task = get_task("gsm8k", data=path)
    queries = sorted(task.queries(10, 0), key=lambda q: q.id)
    assert queries == [
        Query("gsm8k-mine-0000", "What is 2 + 3?", {"answer": "5"}),
        Query("gsm8k-mine-0001", "How many?", {"answer": "1200"}),
    ]
    assert task.reward(queries[1], "He has 1,200 cards.\nThe answer is 1,200.") == 1.0

    path.write_text(
        json.dumps({"problem": "What is $1+1$?", "answer": "2"})
        + "\n"
        + json.dumps({"unique_id": "u7", "problem": "Half?", "answer": "\\frac12"})
        + "\n"
    )
    assert sorted(get_task("math500", data=path).queries(5, 1), key=lambda q: q.id) == [
        Query("math500-mine-0000", "What is $1+1$?", {"answer": "2"}),
        Query("u7", "Half?", {"answer": "\\frac12"}),
    ]


def test_malformed_data_names_file_line_and_fields(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + '\n{"question": "q"}\n')
    with pytest.raises(ConfigError) as e:
        get_task("gsm8k", data=path).queries(1, 0)
    assert str(e.value) == (
        f"{path} line 2 lacks answer; every line must be a JSON object with the fields "
        "question, answer"
    )
    path.write_text("{not json\n")
    with pytest.raises(ConfigError, match=rf"{path} line 1 is not JSON"):
        get_task("math500", data=path).queries(1, 0)
    path.write_text("")
    with pytest.raises(ConfigError, match="holds no rows"):
        get_task("gsm8k", data=path).queries(1, 0)


def test_subset_is_a_seeded_prefix_of_a_permutation():
    assert sorted(g.subset(5, 5, 3)) == [0, 1, 2, 3, 4]
    assert sorted(g.subset(5, 99, 3)) == [0, 1, 2, 3, 4]
    assert g.subset(100, 10, 3) == g.subset(100, 10, 3) == g.subset(100, 20, 3)[:10]
    assert g.subset(100, 10, 3) != g.subset(100, 10, 4)
    with pytest.raises(ConfigError, match="number of queries must be >= 1, got 0"):
        g.subset(5, 0, 3)


# --- GSM8K: pure logic -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("48/2 = 24 clips in May.\n48+24 = 72 clips.\nThe answer is 72.", "72"),
        ("The answer is 1,234.", "1234"),
        ("She pays $18.00 in all.\nThe answer is $18.00.", "18"),
        ("The answer is -5.", "-5"),
        ("He lost -$5 in the end", "-5"),
        ("The answer is 0.50 dollars per apple", "0.5"),
        ("The answer is 3.0", "3"),
        ("It is 12.25 km, so the answer is 12.25.", "12.25"),
        ("The answer is $1,000,000!", "1000000"),
        ("3 + 4 = <<3+4=7>>7\n#### 7", "7"),
        ("The answer is 5 apples. Later 6 more.", "5"),
        ("The answer is 5.\nQuestion: 9", "5"),
        ("The answer is unclear.\nIt is 8 or 9", "9"),  # no number on the answer line: last number
        ("3 apples and 4 pears make 7 fruits", "7"),
        ("She sells 12 eggs at $2.50 each, 30 dollars.", "30"),
        ("No number here.", None),
        ("", None),
    ],
)
def test_gsm8k_extract_answer(completion, answer):
    assert g.extract_answer(completion) == answer


@pytest.mark.parametrize(
    ("text", "normal"),
    [("1,200.50", "1200.5"), ("$7", "7"), ("-0", "0"), ("0.10", "0.1"), ("12", "12"), ("x", None)],
)
def test_gsm8k_normalise_number(text, normal):
    assert g.normalise_number(text) == normal


def test_gsm8k_reward_compares_numbers_and_answer_normalises():
    task = get_task("gsm8k")
    query = Query("q", "How much?", {"answer": "1000"})
    for right in ("The answer is 1,000.", "The answer is $1000.00", "#### 1000", "so 1000"):
        assert task.reward(query, right) == 1.0
        assert task.answer(right) == "1000"
    for wrong in ("The answer is 100.", "The answer is 1,000.5", "nothing", "1000 then 3"):
        assert task.reward(query, wrong) == 0.0
    assert task.answer("nothing") is None
    with pytest.raises(ConfigError, match="query q has no numeric reference answer"):
        task.reward(Query("q", "How much?"), "The answer is 3.")


def test_gsm8k_template():
    task = get_task("gsm8k")
    assert task.query_text("How many?") == "Question: How many?\nAnswer:"
    text = task.render("How many?")
    assert text == g.FEW_SHOT + "Question: How many?\nAnswer:"
    assert text.count("Question: ") == 5 and text.count("The answer is ") == 4
    assert "<<" not in text and "####" not in text
    assert g.worked_answer("a = <<1+1=2>>2\n#### 2") == "a = 2\nThe answer is 2."
    assert (task.name, task.stop, task.max_tokens) == ("gsm8k", ("\n\n", "Question:"), 256)


@needs_data
def test_gsm8k_few_shot_are_the_first_train_rows_and_not_test_questions():
    train = rows(GSM8K_TRAIN)[:4]
    assert [(r["question"], r["answer"]) for r in train] == list(g.EXAMPLES)
    test_questions = {r["question"] for r in rows(GSM8K_TEST)}
    assert not test_questions & {q for q, _ in g.EXAMPLES}


@needs_data
def test_gsm8k_every_gold_solution_gets_reward_1_and_a_wrong_answer_0():
    task = get_task("gsm8k")
    test = rows(GSM8K_TEST)
    queries = task.queries(10_000, 0)
    assert len(queries) == len(test) == 1319
    for q in queries:
        row = test[int(q.id.removeprefix("gsm8k-test-"))]
        assert q.prompt == row["question"]
        assert task.reward(q, row["answer"]) == 1.0, q.id
        assert task.reward(q, g.worked_answer(row["answer"])) == 1.0, q.id
        wrong = str(int(q.meta["answer"]) + 1)
        assert task.reward(q, f"The answer is {wrong}.") == 0.0


@needs_data
def test_gsm8k_queries_are_seeded_and_ids_distinct():
    task = get_task("gsm8k")
    a = task.queries(50, 7)
    assert a == get_task("gsm8k").queries(50, 7)
    assert a[:20] == task.queries(20, 7)
    assert len({q.id for q in a}) == 50
    assert all(q.id.startswith("gsm8k-test-") and len(q.id) == 15 for q in a)
    assert {q.id for q in task.queries(50, 8)} != {q.id for q in a}


# --- MATH-500: pure logic --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("so \\boxed{5}.", "5"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("first \\boxed{1}, then \\boxed{\\{1, 2\\}} and \\boxed{x^{2}}", "x^{2}"),
        ("\\fbox{7}", "7"),
        ("\\boxed {(7, 3)}", "(7, 3)"),
        ("\\boxed{\\frac{1}{2}", None),  # never closed
        ("\\boxed 5", None),
        ("no box", None),
    ],
)
def test_last_boxed(text, content):
    assert m.last_boxed(text) == content


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("x = 6.\nFinal Answer: The final answer is $6$. I hope it is correct.", "6"),
        ("Final Answer: The final answer is $\\frac{11}{12}$. ", "\\frac{11}{12}"),  # cut at stop
        ("The final answer is $$(7, 3)$$.", "(7, 3)"),
        ("The final answer is 3.5.", "3.5"),
        ("The final answer is 9\\pi", "9\\pi"),
        ("The final answer is \\boxed{\\frac{\\pi}{2}}.", "\\frac{\\pi}{2}"),
        ("So the final answer is $5$.\nWait, the final answer is $4$.", "4"),
        ("Thus $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("The final answer is $$. Hence \\boxed{3}", "3"),  # empty statement: the box
        ("Final Answer: The answer is $1$. ", "1"),  # no "final answer is", no box
        ("So the answer is $8$ which is correct.\n\n", "8"),
        ("The answer is: 12.", "12"),
        ("The answer is 3, so \\boxed{4}", "4"),  # a box beats a loose "answer is"
        ("The final answer is $2$, see \\boxed{4}", "2"),  # "final answer is" beats a box
        ("I do not know.", None),
        ("The final answer is .", None),
        ("", None),
    ],
)
def test_math_extract_answer(completion, answer):
    assert m.extract_answer(completion) == answer


def test_math_template():
    task = get_task("math500")
    assert task.query_text("Find $x$.") == "Problem:\nFind $x$.\n\nSolution:"
    text = task.render("Find $x$.")
    assert text == m.FEW_SHOT + "Problem:\nFind $x$.\n\nSolution:"
    assert text.count("Problem:\n") == 5
    assert text.count("Final Answer: The final answer is $") == 4
    answers = [m.extract_answer(part) for part in m.FEW_SHOT.split("Problem:")[1:]]
    assert answers == [a for _, _, a in m._EXAMPLES]
    assert (task.name, task.stop, task.max_tokens) == (
        "math500",
        ("Problem:", "I hope it is correct"),
        384,
    )


@needs_data
def test_math_few_shot_problems_are_not_test_problems():
    test = rows(MATH_TEST)
    for problem, _, _ in m._EXAMPLES:
        assert all(problem not in r["problem"] and r["problem"] not in problem for r in test)


@needs_data
def test_math_queries_are_seeded_with_unique_ids():
    task = get_task("math500")
    a = task.queries(40, 1)
    assert a == get_task("math500").queries(40, 1) and a[:10] == task.queries(10, 1)
    assert len({q.id for q in a}) == 40 and all(q.id.startswith("test/") for q in a)
    every = task.queries(500, 1)
    assert len({q.id for q in every}) == 500
    by_id = {r["unique_id"]: r for r in rows(MATH_TEST)}
    assert all(
        q.prompt == by_id[q.id]["problem"] and q.meta == {"answer": by_id[q.id]["answer"]}
        for q in every
    )


# --- MATH-500: math-verify in its child process -----------------------------------------------


@pytest.fixture(scope="module")
def math_task():
    task = m.Math500()
    yield task
    task.close()


@pytest.mark.integration
@needs_data
def test_math_every_gold_solution_gets_reward_1(math_task):
    test = rows(MATH_TEST)
    queries = {q.id: q for q in math_task.queries(500, 0)}
    failed = [
        r["unique_id"]
        for r in test
        if math_task.reward(queries[r["unique_id"]], r["solution"]) != 1.0
    ]
    assert failed == []  # math-verify accepts all 500 reference solutions


@pytest.mark.integration
@needs_data
def test_math_solution_against_the_next_rows_answer_is_0_unless_equal(math_task):
    test = rows(MATH_TEST)
    accepted = [
        (r["answer"], other["answer"])
        for r, other in zip(test, test[1:] + test[:1], strict=True)
        if math_task.reward(Query("q", "p", {"answer": other["answer"]}), r["solution"]) == 1.0
    ]
    assert accepted == [("5", "x=5"), ("7", "7"), ("3", "3")]


@pytest.mark.integration
def test_math_reward_and_answer_cases(math_task):
    half = Query("q", "p", {"answer": "\\frac{1}{2}"})
    for right in ("The final answer is $0.5$.", "so \\boxed{\\frac{2}{4}}", "final answer is 1/2"):
        assert math_task.reward(half, right) == 1.0, right
        assert math_task.answer(right) == "1/2"
    for wrong in ("The final answer is $\\frac{1}{3}$.", "\\boxed{2}", "1/2", "", "\\boxed{"):
        assert math_task.reward(half, wrong) == 0.0, wrong
    pair = Query("q", "p", {"answer": "(7, 3)"})
    assert math_task.reward(pair, "The final answer is $(7,3)$.") == 1.0
    assert math_task.reward(pair, "The final answer is $(3,7)$.") == 0.0
    assert math_task.answer("The final answer is $9\\pi$.") == "9*pi"
    assert math_task.answer("no answer") is None
    with pytest.raises(ConfigError, match="query q has no reference answer"):
        math_task.reward(Query("q", "p"), "\\boxed{1}")


@pytest.mark.integration
def test_math_reward_of_garbage_is_0(math_task):
    five = Query("q", "p", {"answer": "5"})
    garbage = [
        "The final answer is $\\frac{$.",
        "The final answer is \\boxed{\\left(}",
        "\\boxed{}}}{{\\\\}",
        "The final answer is $\\begin{pmatrix} 1 & \\end{array}$",
        "The final answer is " + "(" * 500,
        "The final answer is \x00\x01\ufffd",
        "The final answer is $1/0$.",
        "The final answer is $x^{1000000}$",
    ]
    start = time.perf_counter()
    assert [math_task.reward(five, text) for text in garbage] == [0.0] * len(garbage)
    assert math_task.answer("The final answer is " + "(" * 500) == "(" * 500  # not parsed
    assert math_task.answer("\\boxed{}}}{{\\\\}") is None  # an empty box states nothing
    assert all(
        isinstance(math_task.answer(text), str) for text in garbage if "\\boxed{}" not in text
    )
    assert time.perf_counter() - start < 8.0  # no check ran into the 10 s limit


@pytest.mark.integration
@needs_data
def test_reward_runs_in_worker_threads(math_task):
    test = rows(MATH_TEST)[:40]
    queries = [Query(r["unique_id"], r["problem"], {"answer": r["answer"]}) for r in test]
    with ThreadPoolExecutor(4) as pool:
        rewards = list(pool.map(math_task.reward, queries, [r["solution"] for r in test]))
        wrong = list(pool.map(math_task.reward, queries, ["\\boxed{-12345}"] * len(test)))
        answers = list(pool.map(math_task.answer, [r["solution"] for r in test]))
    assert rewards == [1.0] * 40 and wrong == [0.0] * 40
    assert answers[:3] == [math_task.answer(r["solution"]) for r in test[:3]]
    assert all(isinstance(a, str) for a in answers)
    gsm = get_task("gsm8k")
    gq = [Query(str(i), "q", {"answer": str(i)}) for i in range(40)]
    with ThreadPoolExecutor(4) as pool:
        assert (
            list(pool.map(gsm.reward, gq, [f"The answer is {i}." for i in range(40)])) == [1.0] * 40
        )


@pytest.mark.integration
@pytest.mark.slow
def test_a_check_that_never_ends_is_cut_and_scored_0():
    task = m.Math500(timeout=2.0)
    five = Query("q", "p", {"answer": "5"})
    try:
        assert task.reward(five, "The final answer is $5$.") == 1.0  # child started
        start = time.perf_counter()
        assert task.reward(five, "The final answer is $9^{9^{9}}$.") == 0.0  # sympy: forever
        assert time.perf_counter() - start < 3.0
        assert task.reward(five, "The final answer is $5$.") == 1.0  # a new child
    finally:
        task.close()
    with pytest.raises(ConfigError, match="timeout must be > 0 seconds, got 0"):
        m.Math500(timeout=0)
