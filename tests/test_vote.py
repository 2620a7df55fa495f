from collections import Counter

import pytest
from conftest import needs_model

from howhard.backends.base import Completion, SamplingParams
from howhard.backends.vote import VoteSampler, majority, vote_seeds
from howhard.errors import BackendError, ConfigError
from howhard.tasks import get_task

PARAMS = SamplingParams(max_tokens=8)


class FakeSampler:
    """Answers seed s with the text table[s] (default "A: <s mod 3>"), s mod 5 + 1 tokens."""

    model_id = "fake.gguf"

    def __init__(self, table=None, drop=0):
        self.table = table or {}
        self.calls = []
        self.drop = drop

    def sample(self, prompt, params, seeds, stop):
        self.calls.append((prompt, params, list(seeds), tuple(stop)))
        out = [Completion(self.table.get(s, f"A: {s % 3}"), s % 5 + 1) for s in seeds]
        return out[: len(out) - self.drop]


def answer(text):
    digits = "".join(ch for ch in text if ch.isdigit())
    return digits or None


def c(text, n=1):
    return Completion(text, n)


def test_vote_seeds_are_deterministic_distinct_and_31_bit():
    seeds = vote_seeds(42, 5)
    assert seeds == vote_seeds(42, 5)
    assert vote_seeds(42, 3) == seeds[:3]
    assert len(set(seeds)) == 5 and all(0 <= s < 2**31 for s in seeds)
    assert set(seeds).isdisjoint(vote_seeds(43, 5))


def test_majority_answer_wins_and_costs_every_sample():
    assert majority([c("1", 2), c("2", 3), c("x2y", 4)], answer) == Completion("2", 9)
    # "2" first appears in the second completion: its text is the one returned
    assert majority([c("1"), c("q 2"), c("2")], answer) == Completion("q 2", 3)


def test_majority_ties_go_to_the_earliest_answer_and_blanks_do_not_vote():
    assert majority([c("none"), c("4"), c("3"), c("3"), c("4")], answer).text == "4"
    assert majority([c("none"), c("blank"), c("7")], answer) == Completion("7", 3)
    assert majority([c("none", 2), c("blank", 5)], answer) == Completion("none", 7)
    with pytest.raises(ConfigError, match="at least one completion"):
        majority([], answer)


def test_one_inner_call_with_every_derived_seed():
    inner = FakeSampler()
    sampler = VoteSampler(inner, 3, answer)
    out = sampler.sample("Q: x?", PARAMS, [7, 8], ["\n"])
    expected_seeds = vote_seeds(7, 3) + vote_seeds(8, 3)
    assert inner.calls == [("Q: x?", PARAMS, expected_seeds, ("\n",))]
    for j, outer in enumerate([7, 8]):
        group = [Completion(f"A: {s % 3}", s % 5 + 1) for s in vote_seeds(outer, 3)]
        assert out[j] == majority(group, answer)
        assert out[j].n_tokens == sum(s % 5 + 1 for s in vote_seeds(outer, 3))
    assert sampler.sample("Q: x?", PARAMS, [7, 8], ["\n"]) == out


def test_vote_picks_the_majority_of_its_own_group():
    a, b, d = vote_seeds(1, 3)
    inner = FakeSampler({a: "5", b: "6", d: "6", **dict.fromkeys(vote_seeds(2, 3), "9")})
    out = VoteSampler(inner, 3, answer).sample("p", PARAMS, [1, 2], [])
    assert [o.text for o in out] == ["6", "9"]


def test_model_id_concurrency_and_bad_arguments():
    inner = FakeSampler()
    sampler = VoteSampler(inner, 5, answer)
    assert sampler.model_id == "fake.gguf+vote5"
    assert not hasattr(sampler, "concurrency")
    inner.concurrency = 4
    assert VoteSampler(inner, 5, answer).concurrency == 4
    for k in (0, -1, 2.0, True):
        with pytest.raises(ConfigError, match=r"k \(samples per vote\) must be an integer >= 1"):
            VoteSampler(inner, k, answer)
    with pytest.raises(BackendError, match="returned 5 completions for 6 seeds"):
        VoteSampler(FakeSampler(drop=1), 3, answer).sample("p", PARAMS, [1, 2], [])


@pytest.mark.integration
@pytest.mark.slow
@needs_model
def test_votes_over_real_smollm2_samples():
    from howhard.backends.llamacpp import LlamaCppSampler

    task = get_task("arithmetic")
    params = SamplingParams(max_tokens=task.max_tokens, seed=3)
    k, outer = 5, [11, 12]
    inner_seeds = [s for seed in outer for s in vote_seeds(seed, k)]
    with LlamaCppSampler() as inner:
        sampler = VoteSampler(inner, k, task.answer)
        assert sampler.model_id == "SmolLM2-135M-Instruct.Q4_1.gguf+vote5"
        assert sampler.concurrency == inner.concurrency
        n_voted = 0
        for question in ["What is 23 + 58?", "What is 7 * 8?"]:
            prompt = task.render(question)
            votes = sampler.sample(prompt, params, outer, task.stop)
            # the same prompt and seed list give the same texts, so these are the voters
            drawn = inner.sample(prompt, params, inner_seeds, task.stop)
            for j, vote in enumerate(votes):
                group = drawn[j * k : (j + 1) * k]
                counts = Counter(a for a in map(task.answer, (g.text for g in group)) if a)
                assert vote.n_tokens == sum(g.n_tokens for g in group)
                assert vote.text in [g.text for g in group]
                if counts:
                    n_voted += 1
                    assert counts[task.answer(vote.text)] == max(counts.values())
    assert n_voted >= 3
