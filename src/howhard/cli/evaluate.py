"""``howhard evaluate``: success vs average budget (or vs strong-call share with --strong)."""

from __future__ import annotations

import argparse
import json

from howhard.cli import menu
from howhard.cli.common import command, evaluation_flags, numbers
from howhard.cli.features import feature_server


def add(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "evaluate",
        "success vs average budget for uniform, adaptive and oracle "
        "allocation, and the compute saved at equal success; with --menu, each decoder's "
        "predictor on its pool (log-loss, calibration)",
        "howhard evaluate eval.jsonl --predictor predictor.npz --budgets 1,2,4,8 "
        "--max-per-query 16 --out report/\n"
        "  howhard evaluate weak.jsonl --strong strong.jsonl --predictor router.npz\n"
        "  howhard evaluate --menu predictors/menu.toml --rows 400:800",
        run,
    )
    evaluation_flags(p, "1,2,4,8,16, those up to the cap", 32)
    menu.flags(p)
    p.add_argument(
        "--strong", help="pool of the strong decoder on the same queries: evaluate routing"
    )
    p.add_argument(
        "--shares",
        type=numbers("shares", "0.1,0.5"),
        default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        help="routing: strong-call shares to report",
    )
    p.add_argument("--predictor", help="model file from howhard train")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="resamples of the queries for 95%% intervals of the savings and of the share of "
        "the log-loss gap closed (0: none)",
    )


def run(args: argparse.Namespace) -> int:
    from howhard import runs
    from howhard.reports import evaluation_markdown, json_ready, routing_markdown

    data: object
    if menu.chosen(args, "strong", "predictor"):
        return menu.evaluate(args)
    if args.strong:
        spec = runs.RoutingSpec(
            pool=args.pool,
            strong=args.strong,
            shares=args.shares,
            predictor=args.predictor,
            out=args.out,
            feature_cache=args.feature_cache,
            feature_server=feature_server(args),
            seed=args.seed,
            binarize=args.binarize,
        )
        rev = runs.run_evaluate_routing(spec)
        text, data = routing_markdown(rev), rev
    else:
        ev = runs.run_evaluate(
            runs.EvaluateSpec(
                pool=args.pool,
                budgets=args.budgets,
                max_per_query=args.max_per_query,
                predictor=args.predictor,
                out=args.out,
                feature_cache=args.feature_cache,
                feature_server=feature_server(args),
                seed=args.seed,
                binarize=args.binarize,
                bootstrap=args.bootstrap,
            )
        )
        text, data = evaluation_markdown(ev), ev
    print(json.dumps(json_ready(data), allow_nan=False) if args.json else text)
    return 0
