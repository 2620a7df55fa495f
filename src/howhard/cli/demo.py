"""``howhard demo``: the whole method on the embedded SmolLM2 (`howhard.demo`)."""

from __future__ import annotations

import argparse

from howhard.cli.common import command


def add(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "demo",
        "the whole method on the embedded SmolLM2 and mixed arithmetic: label, "
        "train, evaluate; writes a report and a plot (cached: a rerun is quick)",
        "howhard demo --size small",
        run,
    )
    p.add_argument("--size", default="default", choices=["small", "default", "large"])
    p.add_argument("--workdir", default="howhard-demo", help="labels, model and report go here")
    p.add_argument("--workers", type=int, help="model processes (default 1, a thread per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from howhard.demo import run_demo

    run_demo(args.size, args.workdir, args.workers, not args.quiet)
    return 0
