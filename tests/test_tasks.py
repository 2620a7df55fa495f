import pytest

from howhard.errors import ConfigError, UnknownNameError
from howhard.tasks import Query, get_task
from howhard.tasks.arithmetic import answer_of, first_integer


def test_generator_is_seeded_distinct_and_bare():
    task = get_task("arithmetic")
    a, b = task.queries(300, 7), task.queries(300, 7)
    assert a == b
    assert len({q.prompt for q in a}) == 300
    assert all(q.prompt.startswith("What is ") and q.prompt.endswith("?") for q in a)
    assert all(q.meta["answer"] == answer_of(q.prompt) for q in a)
    ops = {op for q in a for op in ("+", "-", "*") if f" {op} " in q.prompt}
    assert ops == {"+", "-", "*"}
    assert any(q.prompt.count(" ") > 4 for q in a)  # two-step questions
    assert task.queries(50, 8) != a[:50]


def test_render_applies_the_template_around_the_bare_question():
    task = get_task("arithmetic")
    text = task.render("What is 37 + 48?")
    assert text.endswith("Q: What is 37 + 48?\nA:") and text.startswith("Q: What is 2 + 2?")


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is 37 + 48?", 85),
        ("What is 3 - 9?", -6),
        ("What is 250 + 38 - 61?", 227),
        ("What is 12 * 4?", 48),
    ],
)
def test_answer_of(question, answer):
    assert answer_of(question) == answer


def test_answer_of_refuses_other_text():
    with pytest.raises(ConfigError, match="is not an arithmetic question"):
        answer_of("What is two plus two?")
    with pytest.raises(ConfigError, match="holds something other than integers"):
        answer_of("What is 2 ** 100?")


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        (" 85", 1.0),
        (" 85\n", 1.0),
        (" 84", 0.0),
        ("", 0.0),
        (" 8 5", 0.0),
        (" The answer is 85", 1.0),
        (" 1,085", 0.0),
    ],
)
def test_exact_integer_verifier(completion, reward):
    q = Query("q", "What is 37 + 48?", {"answer": 85})
    assert get_task("arithmetic").reward(q, completion) == reward
    assert get_task("arithmetic").reward(Query("q", q.prompt), completion) == reward


def test_first_integer_reads_commas_and_signs():
    assert first_integer("x -1,234 y") == -1234
    assert first_integer("none") is None


def test_unknown_task_suggests_a_name():
    with pytest.raises(UnknownNameError, match="did you mean 'arithmetic'"):
        get_task("arithmetc")
