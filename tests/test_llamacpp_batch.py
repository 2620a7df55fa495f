"""The batched llama.cpp path (k samples of one prompt decoded together) against the real SmolLM2,
checked against the one-at-a-time ``create_completion`` path it replaces."""

import os

import pytest
from conftest import needs_model

from howhard.backends.base import SamplingParams
from howhard.errors import ConfigError
from howhard.tasks import get_task

pytestmark = [pytest.mark.integration, needs_model]

TASK = get_task("arithmetic")
PARAMS = SamplingParams(max_tokens=TASK.max_tokens)
SEEDS = list(range(100, 108))


@pytest.fixture(scope="module")
def sampler():
    from howhard.backends.llamacpp import LlamaCppSampler

    with LlamaCppSampler() as s:
        yield s


@pytest.fixture(scope="module")
def llm():
    """A high-level Llama for the one-at-a-time path."""
    from howhard.backends.llamacpp import _load, default_model_path

    return _load(default_model_path(), os.cpu_count() or 1, 1024)


def test_same_seeds_same_texts_and_diverse(sampler):
    prompt = TASK.render("What is 27 + 38?")
    first = sampler.sample(prompt, PARAMS, SEEDS, TASK.stop)
    sampler.sample(TASK.render("What is 9 * 6?"), PARAMS, SEEDS, TASK.stop)  # moves the cache
    again = sampler.sample(prompt, PARAMS, SEEDS, TASK.stop)
    assert again == first
    assert len({c.text for c in first}) >= 2


def test_stops_and_lengths(sampler):
    long = SamplingParams(temperature=1.5, top_p=1.0, max_tokens=6)
    out = sampler.sample(TASK.render("What is 512 - 87 + 3?"), long, range(16), TASK.stop)
    assert len(out) == 16
    assert all(not any(s in c.text for s in TASK.stop) for c in out)
    assert all(c.n_tokens <= long.max_tokens for c in out)


def test_greedy_matches_create_completion(sampler, llm):
    from howhard.backends.llamacpp import _complete

    greedy = SamplingParams(temperature=0.0, max_tokens=TASK.max_tokens)
    for question in ["What is 3 + 4?", "What is 40 * 7?"]:
        prompt = TASK.render(question)
        out = sampler.sample(prompt, greedy, [1, 2, 3, 4], TASK.stop)
        [ref] = _complete(llm, prompt, greedy, [1], TASK.stop)
        assert out == [ref] * 4  # same text and same n_tokens


def test_more_seeds_than_one_group_holds():
    from howhard.backends.llamacpp import LlamaCppSampler

    prompt = TASK.render("What is 6 + 7?")  # about 190 tokens
    with LlamaCppSampler(n_ctx=256) as small:
        # room for (256 - prompt tokens) // 8 sequences at a time: several groups
        out = small.sample(prompt, PARAMS, range(40), TASK.stop)
        assert len(out) == 40 and all(c.n_tokens <= PARAMS.max_tokens for c in out)
        with pytest.raises(ConfigError, match="larger n_ctx"):
            small.sample(prompt * 2, PARAMS, [1], TASK.stop)


def test_success_rate_matches_one_at_a_time(sampler, llm):
    from howhard.backends.llamacpp import _complete

    queries = TASK.queries(20, seed=7)
    seeds = [[PARAMS.sample_seed(q.id, j) for j in range(8)] for q in queries]

    def rate(draw):
        rewards = [
            TASK.reward(q, c.text)
            for q, s in zip(queries, seeds, strict=True)
            for c in draw(TASK.render(q.prompt), PARAMS, s, TASK.stop)
        ]
        return sum(rewards) / len(rewards)

    batched = rate(sampler.sample)
    one_at_a_time = rate(lambda *a: _complete(llm, *a))
    assert abs(batched - one_at_a_time) < 0.1, (batched, one_at_a_time)


def test_worker_processes_draw_what_one_process_draws(sampler):
    from howhard.backends.llamacpp import LlamaCppSampler

    prompts = [TASK.render(f"What is {a} + 17?") for a in (5, 48)]
    here = [sampler.sample(p, PARAMS, SEEDS, TASK.stop) for p in prompts]
    with LlamaCppSampler(workers=2) as pool:
        assert [pool.sample(p, PARAMS, SEEDS, TASK.stop) for p in prompts] == here
