"""``howhard bestof``: best-of-k under the oracle, a verifier's scores, majority vote, random."""

from __future__ import annotations

import argparse
import json

from howhard.cli.common import BINARIZE_HELP, command


def add(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "bestof",
        "success of best-of-k (k = 1..max) when the benchmark's tests (oracle), the pool's "
        "per-sample scores (an imperfect verifier), majority vote over its answers or CodeT's "
        "dual agreement over its generated tests passed choose, and the cap the imperfect "
        "choosers put on resampling",
        "howhard bestof pool.jsonl.gz --binarize --out report/",
        run,
    )
    p.add_argument("pool")
    p.add_argument("--binarize", action="store_true", help=BINARIZE_HELP)
    p.add_argument("--max-k", type=int, help="largest k (default: the fewest samples of a query)")
    p.add_argument("--title", default="best-of-k", help="the report's title")
    p.add_argument(
        "--draws",
        type=int,
        default=2000,
        help="random orders of each query's samples for the CodeT curve (a Monte-Carlo estimate)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the CodeT curve's draws")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--out", help="directory for report.md, report.json and plot.png")


def run(args: argparse.Namespace) -> int:
    from howhard.bestof import REPORT_KS, best_of_k
    from howhard.pool import read_pool
    from howhard.reports import json_ready, write_report
    from howhard.reports.bestof import bestof_markdown, bestof_plot

    pool = read_pool(args.pool)
    if args.binarize:
        pool = pool.binarized()
    result = best_of_k(pool, args.max_k, args.draws, args.seed)
    text = bestof_markdown(result, REPORT_KS, args.title)
    if args.out:
        write_report(args.out, text, result, lambda path: bestof_plot(result, path, args.title))
    print(json.dumps(json_ready(result), allow_nan=False) if args.json else text)
    return 0
