"""What several subcommands share: the subparser with its example, number lists, and the pool,
budget and report flags of evaluate and compare."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

from howhard.cli.features import server_flags
from howhard.tasks import TASKS

TASK_HELP = f"one of {', '.join(TASKS.names())}"
BINARIZE_HELP = "reward 1 where reward == 1, else 0 (pass/fail)"


Run = Callable[[argparse.Namespace], int]


def command(
    sub: argparse._SubParsersAction, name: str, help: str, example: str, run: Run
) -> argparse.ArgumentParser:
    """A subcommand with ``help`` as its description (where argparse does not expand ``%%``),
    ``example`` in its epilog, and ``run`` called with the parsed flags."""
    p = sub.add_parser(
        name,
        help=help,
        description=help.replace("%%", "%"),
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=run, parser=p)
    return p


def numbers(what: str, example: str) -> Callable[[str], list[float]]:
    """An argparse type for a comma-separated list of numbers; its error names ``what``."""

    def parse(text: str) -> list[float]:
        try:
            return [float(x) for x in text.split(",") if x.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(
                f"{what} must be numbers like {example}; got {text!r}"
            ) from e

    return parse


budgets = numbers("budgets", "1,2,4,8")


def evaluation_flags(p: argparse.ArgumentParser, budgets_default: str, cap: int) -> None:
    """The pool, the strong pool, --binarize, --budgets, --max-per-query and the report flags
    (--json, --out, --feature-cache, --seed) of evaluate and compare; the defaults of the
    budgets and the cap are the run spec's (None), stated here."""
    p.add_argument("pool", nargs="?", help="the pool file (or give --menu)")
    p.add_argument("--binarize", action="store_true", help=BINARIZE_HELP)
    p.add_argument(
        "--budgets",
        type=budgets,
        help=f"average samples per query (default {budgets_default})",
    )
    p.add_argument(
        "--max-per-query",
        type=int,
        help=f"the cap: samples per query at most (default {cap}, or the fewest samples of a "
        "query in the pool when fewer)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--out", help="directory for report.md, report.json and plot.png")
    p.add_argument("--feature-cache")
    p.add_argument("--seed", type=int, default=0)
    server_flags(p)


@contextlib.contextmanager
def log_to_stderr(name: str) -> Iterator[None]:
    """Show logger ``name``'s INFO messages on stderr while the block runs (the progress of a
    long fit, e.g. the lora head's epochs)."""
    logger = logging.getLogger(name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
