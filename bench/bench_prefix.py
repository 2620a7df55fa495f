"""Time SmolLM2's hidden-state features of texts that arrive one at a time, as `howhard serve`
featurises requests, with and without the shared-prefix stream (`LlamaCppHiddenState`'s
``share_prefix``), in the same run; run as ``python bench/bench_prefix.py [--texts 40]``.

The texts are the arithmetic task's whole prompts (``task.render``: a few-shot prompt, then the
query), what the demo's default predictor reads (``hidden-prompt-l15+hidden-prompt-l22``); the
first text of each featurizer is left out of the timing (it sets the prefix). Prints ms per text
for each and their ratio, and checks that both give the same features, bit for bit.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from howhard.backends.llamacpp import LlamaCppHiddenState
from howhard.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=40, help="texts featurised one at a time")
    args = parser.parse_args()
    task = get_task("arithmetic")
    texts = [task.render(q.prompt) for q in task.queries(args.texts + 1, seed=1)]
    seconds, rows = {}, {}
    for share in (True, False):
        featurizer = LlamaCppHiddenState(layers=[15, 22], share_prefix=share)
        featurizer.transform(texts[:1])
        start = time.perf_counter()
        rows[share] = np.concatenate([featurizer.transform([t]) for t in texts[1:]])
        seconds[share] = time.perf_counter() - start
    tokens = len(featurizer._llm.tokenize(texts[1].encode()))
    print(f"{args.texts} arithmetic prompts of about {tokens} tokens, one at a time, 2 layers:")
    for share, name in ((True, "shared prefix"), (False, "whole texts")):
        print(f"  {name:14s} {1000 * seconds[share] / args.texts:8.1f} ms per text")
    print(f"  ratio (whole / shared prefix): {seconds[False] / seconds[True]:.1f}x")
    print(f"  same features: {np.array_equal(rows[True], rows[False])}")


if __name__ == "__main__":
    main()
