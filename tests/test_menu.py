"""The menu file and the replay of a menu policy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from howhard.errors import ConfigError
from howhard.menu import Draw, QueryState, Seen, majority_choice, read_menu, replay
from howhard.pool import Pool, write_pool
from howhard.tasks import get_task


def _pool(rewards: list[list[float]], answers: list[list[str | None]]) -> Pool:
    n = len(rewards)
    return Pool(
        tuple(f"q{i}" for i in range(n)),
        tuple(f"prompt {i}" for i in range(n)),
        tuple(np.array(r, dtype=float) for r in rewards),
        tuple({"answers": a} for a in answers),
    )


def test_read_menu_resolves_pools_beside_the_file_and_aligns_them(tmp_path: Path) -> None:
    weak = _pool([[1, 0], [0, 0]], [["a", "b"], ["c", "c"]])
    strong = Pool(weak.ids[::-1], weak.prompts[::-1], (np.ones(2), np.zeros(2)))
    write_pool(weak, tmp_path / "weak.jsonl")
    write_pool(strong, tmp_path / "strong.jsonl")
    (tmp_path / "menu.toml").write_text(
        '[[decoder]]\nname = "weak"\npool = "weak.jsonl"\ncost = 1\n'
        '[[decoder]]\nname = "strong"\npool = "strong.jsonl"\ninput_cost = 0.5\n'
    )
    menu = read_menu(tmp_path / "menu.toml")
    assert menu.names == ["weak", "strong"]
    assert menu.decoders[0].pool == (tmp_path / "weak.jsonl").resolve()
    assert menu.decoders[1].sample_cost(prompt_tokens=4) == 2.0
    pools = menu.pools()
    assert pools[1].ids == ("q0", "q1") and list(pools[1].rewards[0]) == [0.0, 0.0]


def test_pool_answers_are_read_by_the_task_the_rows_name_as_live_completions_are(
    tmp_path: Path,
) -> None:
    answers = [["'abc'", ' "abc" ', None], ["[1,2]", "f(3) ", "  "]]  # blank: no answer
    raw = _pool([[1, 1, 0], [1, 0, 1]], answers)
    named = replace(raw, extras=tuple({**e, "task": "cruxeval-o"} for e in raw.extras))
    write_pool(named, tmp_path / "named.jsonl")
    write_pool(raw, tmp_path / "raw.jsonl")
    (tmp_path / "menu.toml").write_text(
        '[[decoder]]\nname = "named"\npool = "named.jsonl"\ncost = 1\n'
        '[[decoder]]\nname = "raw"\npool = "raw.jsonl"\ncost = 2\n'
    )
    got = [[e["answers"] for e in p.extras] for p in read_menu(tmp_path / "menu.toml").pools()]
    assert got[0] == [["'abc'", "'abc'", None], ["[1, 2]", "f(3)", None]]
    assert got[1] == answers  # its rows name no task: as written
    cruxeval = get_task("cruxeval")
    assert got[0][1] == [cruxeval.answer(a) for a in answers[1]]


@pytest.mark.parametrize(
    ("task", "completions"),
    [
        ("cruxeval", ["'abc'", ' "abc"', "[1,2]", "f(3)"]),
        ("arithmetic", ["= 12", "-3 is the answer"]),
        ("gsm8k", ["The answer is 42.", "#### 1,000", "so x = 3.50"]),
    ],
)
def test_canonical_leaves_what_answer_gives_unchanged(task: str, completions: list[str]) -> None:
    t = get_task(task)
    for c in completions:
        a = t.answer(c)
        assert a is not None and t.canonical(a) == a


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"no \[\[decoder\]\] tables"),
        ('[[decoder]]\nname = "a"\n', "price per sample"),
        ('[[decoder]]\nname = "a"\ncost = 1\noutput_cost = 1\n', "not both"),
        ('[[decoder]]\nname = "a"\ncost = -1\n', "cost must be a finite number >= 0"),
        ('[[decoder]]\nname = "a"\ncost = 1\nprice = 2\n', "unknown key 'price'"),
        ('[[decoder]]\nname = "a"\ncost = 1\n[[decoder]]\nname = "a"\ncost = 2\n', "repeats"),
        ("[[decoder]\n", "not readable TOML"),
    ],
)
def test_bad_menus_are_refused_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "menu.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_menu(path)


def test_majority_choice_takes_the_first_holder_of_the_most_frequent_answer() -> None:
    seen = [Seen(0, a, None, 1.0) for a in ["x", None, "y", "y", "x"]]
    assert majority_choice(seen) == 0  # x and y tie at 2: x came first
    assert majority_choice(seen, among=[1, 2, 3]) == 2
    assert majority_choice([Seen(0, None, None, 1.0)]) == 0


class _Cascade:
    """One sample of decoder 0; escalate to one of decoder 1 when it answered 'b'."""

    def decide(self, state: QueryState) -> Draw | None:
        if not state.seen:
            return Draw(0, 1)
        if state.count(1) == 0 and state.seen[-1].answer == "b":
            return Draw(1, 1)
        return None

    def choose(self, state: QueryState) -> int:
        return len(state.seen) - 1


def test_replay_feeds_samples_in_order_counts_costs_and_scores_the_choice() -> None:
    weak = _pool([[1, 0], [0, 1], [0, 0]], [["a", "b"], ["b", "a"], ["a", "a"]])
    strong = _pool([[1], [1], [0]], [["s"], ["s"], ["s"]])
    costs = [[np.full(2, 1.0)] * 3, [np.full(1, 10.0)] * 3]
    orders = [[np.array([1, 0]), np.array([0, 1]), np.array([0, 1])], [np.array([0])] * 3]
    out = replay(_Cascade(), [weak, strong], costs, orders=orders)
    # q0 draws weak sample 1 ('b', reward 0) then strong; q1 weak sample 0 ('b') then strong;
    # q2 weak sample 0 ('a', reward 0) and stops.
    assert out.reward.tolist() == [1.0, 1.0, 0.0]
    assert out.cost.tolist() == [11.0, 11.0, 1.0]
    assert out.draws.tolist() == [[1, 1], [1, 1], [1, 0]]
    assert out.rounds.tolist() == [2, 2, 1]


def test_replay_refuses_a_draw_beyond_the_pool() -> None:
    class Greedy:
        def decide(self, state: QueryState) -> Draw | None:
            return Draw(0, 3)

        def choose(self, state: QueryState) -> int:
            return 0

    pool = _pool([[1, 0]], [["a", "b"]])
    with pytest.raises(ConfigError, match="3 samples of decoder 0 with room"):
        replay(Greedy(), [pool], [[np.ones(2)]])
