"""Time llama.cpp featurisation and sampling alone and beside a competing CPU load; run as
``python bench/bench_sharing.py``.

A user's machine is shared (a proxy beside its inference server, a labeler beside a notebook).
For each configuration below, a fresh process (libgomp reads its environment when llama.cpp
loads) loads SmolLM2-135M and measures, after a warm-up:

- features: hidden-state queries/s over N_FEATURES arithmetic queries in their template, one
  query per ``transform`` call (as a proxy deciding one request) and all in one call (as
  ``howhard train``);
- sampling: samples/s of `LlamaCppSampler`, N_QUERIES queries x N_SAMPLES samples.

Each configuration runs on the machine as it is ("quiet"), then at once beside two processes
that spin a core each ("shared"); the script prints both and the ratio shared/quiet (target
>= 0.40; an even share of 2 cores is 0.50). Configurations:

- default: howhard as shipped (``OMP_WAIT_POLICY=PASSIVE`` unless the user set it; a thread
  per core);
- old: libgomp's default wait, which howhard used before it set the policy (idle threads spin
  about 3 ms before they sleep; spelled ``GOMP_SPINCOUNT=300000``, libgomp's default, since
  howhard now leaves libgomp alone when that is set);
- active: ``OMP_WAIT_POLICY=ACTIVE`` (idle threads spin until there is work);
- 1 thread: the default wait policy with one llama.cpp thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

N_FEATURES = 32
N_QUERIES = 8
N_SAMPLES = 16
CONFIGS: dict[str, tuple[dict[str, str], int | None]] = {
    "default": ({}, None),
    "old": ({"GOMP_SPINCOUNT": "300000"}, None),
    "active": ({"OMP_WAIT_POLICY": "ACTIVE"}, None),
    "1 thread": ({}, 1),
}
METRICS = {
    "features_1": "features, 1 per call (queries/s)",
    "features_all": f"features, {N_FEATURES} per call (queries/s)",
    "samples": "sampling (samples/s)",
}


def child(threads: int | None) -> dict[str, float]:
    """The measurements of this process (run with the configuration's environment)."""
    from howhard.backends.base import SamplingParams
    from howhard.backends.llamacpp import LlamaCppHiddenState, LlamaCppSampler
    from howhard.tasks import get_task

    task = get_task("arithmetic")
    params = SamplingParams(max_tokens=task.max_tokens)
    texts = [task.query_text(q.prompt) for q in task.queries(N_FEATURES, seed=0)]
    queries = task.queries(N_QUERIES, seed=1)
    out = {}
    features = LlamaCppHiddenState(n_threads=threads)
    features.transform(texts[:2])
    start = time.perf_counter()
    for text in texts:
        features.transform([text])
    out["features_1"] = len(texts) / (time.perf_counter() - start)
    start = time.perf_counter()
    features.transform(texts)
    out["features_all"] = len(texts) / (time.perf_counter() - start)
    features.close()
    with LlamaCppSampler(n_threads=threads) as sampler:
        sampler.sample(task.render("What is 1 + 1?"), params, [0, 1], task.stop)
        start = time.perf_counter()
        for q in queries:
            sampler.sample(task.render(q.prompt), params, range(N_SAMPLES), task.stop)
        out["samples"] = N_QUERIES * N_SAMPLES / (time.perf_counter() - start)
    return out


def measure(name: str) -> dict[str, float]:
    """Run `child` in a fresh process with configuration ``name``."""
    extra, threads = CONFIGS[name]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    args = [sys.executable, __file__, "--child"] + ([f"--threads={threads}"] if threads else [])
    done = subprocess.run(
        args, env={**env, **extra}, capture_output=True, text=True, timeout=1800, check=True
    )
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="which configurations")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.threads)))
        return
    names = args.configs.split(",")
    print(f"SmolLM2-135M, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    quiet, shared = {}, {}
    for name in names:  # each configuration's two runs back to back, so both see the same machine
        quiet[name] = measure(name)
        load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        try:
            shared[name] = measure(name)
        finally:
            for p in load:
                p.kill()
                p.wait()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print("| config | measure | quiet | beside 2 busy threads | shared / quiet |")
    print("|---|---|---|---|---|")
    for name in names:
        for key, label in METRICS.items():
            q, s = quiet[name][key], shared[name][key]
            print(f"| {name} | {label} | {q:.1f} | {s:.1f} | {s / q:.2f} |")


if __name__ == "__main__":
    main()
