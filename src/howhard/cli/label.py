"""``howhard label``: draw samples per query into a label store (resumable)."""

from __future__ import annotations

import argparse
import sys

from howhard.cli.backend import backend_config, sampling_flags
from howhard.cli.common import TASK_HELP, command


def add(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "label",
        "draw N samples per query from the LM, score them, store them "
        "(resumable: rerun the same command after a crash)",
        "howhard label --task arithmetic --queries 200 --samples 16 --store train.sqlite\n"
        "  howhard label --task gsm8k --queries 200 --samples 8 --store gsm8k.sqlite \\\n"
        "      --backend openai --endpoint http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-1.5B",
        run,
    )
    p.add_argument("--task", default="arithmetic", help=TASK_HELP + " (default arithmetic)")
    p.add_argument("--data", help="the task's data file instead of its default")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--queries", type=int, default=100, help="generate this many queries (default 100)"
    )
    src.add_argument("--input", help="JSONL file of queries (rows with unique id and prompt)")
    p.add_argument("--query-seed", type=int, default=0, help="seed of the query generator")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        help="skip queries whose prompt is in this query or pool file (e.g. the training pool, "
        "for a disjoint evaluation set); repeatable",
    )
    p.add_argument("--samples", type=int, default=16, help="samples per query")
    p.add_argument(
        "--store",
        required=True,
        help="SQLite label store file (created with its directory when missing)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar (shown on a terminal)")
    sampling_flags(p)


def run(args: argparse.Namespace) -> int:
    from howhard.runs import LabelSpec, run_label

    spec = LabelSpec(
        store=args.store,
        task=args.task,
        data=args.data,
        queries=args.queries,
        input=args.input,
        query_seed=args.query_seed,
        exclude=tuple(args.exclude),
        samples=args.samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
        backend=backend_config(args),
        progress=not args.quiet,
    )
    stats = run_label(spec)
    print(
        f"{stats.queries} queries: {stats.samples} samples drawn in {stats.seconds:.1f}s "
        f"({stats.samples_per_second:.1f} samples/s, {stats.tokens_per_second:.0f} tokens/s); "
        f"store: {args.store}"
    )
    if stats.errors:
        print(
            f"howhard label: error: {stats.errors} queries failed in the backend (last: "
            f"{stats.last_error}); their samples are not stored. Rerun the same command to "
            "draw them.",
            file=sys.stderr,
        )
        return 1
    return 0
