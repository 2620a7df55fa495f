"""Time the batched llama.cpp sampler against one create_completion per sample; run as
``python bench/bench_sampling.py``.

30 arithmetic queries x 16 samples with SmolLM2-135M (the labeler's default task and model), the
same per-sample seeds for both paths. Prints samples/s of each, the speed-up, the success rate
of each (fraction of samples whose first integer is the answer) and how many samples drew the
same text from the same seed (not all do: batched logits differ in the last bits).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from howhard.backends.base import Completion, SamplingParams
from howhard.backends.llamacpp import LlamaCppSampler, _complete, _load, default_model_path
from howhard.tasks import get_task

N_QUERIES = 30
N_SAMPLES = 16
TASK = get_task("arithmetic")
PARAMS = SamplingParams(max_tokens=TASK.max_tokens)

Draw = Callable[[str, SamplingParams, Sequence[int], Sequence[str]], list[Completion]]


def timed(draw: Draw, prompts: list[str], seeds: list[list[int]]) -> tuple[list[str], float]:
    """Every completion's text and the seconds all took (after one warm-up call)."""
    draw(TASK.render("What is 1 + 1?"), PARAMS, [0, 1], TASK.stop)
    start = time.perf_counter()
    texts = [
        c.text
        for prompt, some in zip(prompts, seeds, strict=True)
        for c in draw(prompt, PARAMS, some, TASK.stop)
    ]
    return texts, time.perf_counter() - start


def one_at_a_time(prompts: list[str], seeds: list[list[int]]) -> tuple[list[str], float]:
    llm = _load(default_model_path(), os.cpu_count() or 1, 1024)
    return timed(lambda *args: _complete(llm, *args), prompts, seeds)


def batched(prompts: list[str], seeds: list[list[int]]) -> tuple[list[str], float]:
    with LlamaCppSampler() as sampler:
        return timed(sampler.sample, prompts, seeds)


def main() -> None:
    queries = TASK.queries(N_QUERIES, seed=0)
    prompts = [TASK.render(q.prompt) for q in queries]
    seeds = [[PARAMS.sample_seed(q.id, j) for j in range(N_SAMPLES)] for q in queries]
    per_sample = [q for q in queries for _ in range(N_SAMPLES)]
    n = len(per_sample)
    print(f"{N_QUERIES} arithmetic queries x {N_SAMPLES} samples, SmolLM2-135M")
    results = {"one at a time": one_at_a_time(prompts, seeds), "batched": batched(prompts, seeds)}
    for name, (texts, seconds) in results.items():
        rewards = [TASK.reward(q, t) for q, t in zip(per_sample, texts, strict=True)]
        print(
            f"{name:14s} {n / seconds:6.1f} samples/s ({seconds:5.1f} s), "
            f"success rate {sum(rewards) / n:.3f}"
        )
    (old, old_s), (new, new_s) = results.values()
    same = sum(a == b for a, b in zip(old, new, strict=True))
    print(f"speed-up {old_s / new_s:.1f}x; same text from the same seed: {same} of {n}")


if __name__ == "__main__":
    main()
