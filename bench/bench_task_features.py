"""Time CRUXEval's task features (`howhard.tasks.cruxeval.CruxEval.query_features`: the
programs' AST, then one sandboxed run of every program) per batch of prompts, as
`howhard serve` computes them for each decision batch; run as ``python
bench/bench_task_features.py [--reps 5]``.

Each batch size is timed with the sandbox's interpreter tree already built in this process (as
shipped: it is built once per process) and with it rebuilt before the call (``_TREE.clear()``:
what every batch paid when each new `Sandbox` ran ``ldd`` again), alternating, the median of
``--reps`` calls each; prints both and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from howhard import sandbox
from howhard.tasks import get_task


def timed(task: Any, prompts: list[str], cold: bool) -> float:
    if cold:
        sandbox._TREE.clear()
    start = time.perf_counter()
    task.query_features(prompts)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed calls of each kind")
    args = parser.parse_args()
    task = get_task("cruxeval")
    prompts = [q.prompt for q in task.queries(64, seed=0)]
    timed(task, prompts[:1], cold=False)  # imports, the first tree
    print(f"CRUXEval task features per batch, median of {args.reps} calls (seconds)")
    print(f"{'prompts':>8} {'tree built':>11} {'tree rebuilt':>13} {'ratio':>6}")
    for n in (1, 8, 64):
        warm, cold = [], []
        for _ in range(args.reps):
            cold.append(timed(task, prompts[:n], cold=True))
            warm.append(timed(task, prompts[:n], cold=False))
        w, c = statistics.median(warm), statistics.median(cold)
        print(f"{n:8d} {w:11.3f} {c:13.3f} {c / w:5.1f}x", flush=True)


if __name__ == "__main__":
    main()
