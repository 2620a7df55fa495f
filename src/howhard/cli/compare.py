"""``howhard compare``: every allocation method at the same realised average spend."""

from __future__ import annotations

import argparse
import json

from howhard.cli import menu
from howhard.cli.common import command, evaluation_flags
from howhard.cli.features import feature_server


def add(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "compare",
        "every allocation method (uniform, binned, greedy, threshold, sequential, joint, oracle) "
        "at the same realised average spend: success, compute saved vs uniform, share of the "
        "oracle's saving; with a verifier and with majority vote only. With --menu: every "
        "decoder alone, routing, joint menu x k, oracles and the menu policies as curves of "
        "success vs mean cost, and the cost each needs to reach 90/95/100%% of the costliest "
        "decoder's one-sample success",
        "howhard compare eval.jsonl --predictor predictor.npz --budgets 1,2,4,8 "
        "--max-per-query 16 --out compare/\n"
        "  howhard compare weak.jsonl --strong strong.jsonl --predictor weak.npz "
        "--strong-predictor strong.npz --budgets 1,2,4,8 --max-per-query 8\n"
        "  howhard compare --menu predictors/menu.toml --rows 400:800 --observe majority "
        "--out menu-report/",
        run,
    )
    evaluation_flags(p, "1,2,4,8, those up to the cap; with --menu a grid of mean costs", 16)
    menu.flags(p)
    p.add_argument("--predictor", help="success or gains predictor of the pool")
    p.add_argument(
        "--observe",
        help="verifier (rewards seen), majority (answers seen), or both (default; majority "
        "only where the pool has answers; with --menu both must apply)",
    )
    p.add_argument(
        "--policies",
        help="with --menu: the menu policy families to replay, comma-separated (default: all "
        "that are installed)",
    )
    p.add_argument("--replays", type=int, default=100, help="random sample orders replayed")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="relative spend mismatch flagged, over or under B (default 1%%)",
    )
    p.add_argument("--strong", help="strong decoder's pool of the same queries: joint methods")
    p.add_argument("--strong-predictor", help="predictor trained on the strong decoder's pool")
    p.add_argument("--router", help="or: router from howhard train WEAK --strong STRONG")
    p.add_argument("--cost-weak", type=float, help="cost per weak sample (default: its tokens)")
    p.add_argument("--cost-strong", type=float, help="cost per strong sample (default: tokens)")
    p.add_argument("--title", default="howhard compare", help="report title")


def run(args: argparse.Namespace) -> int:
    from howhard.reports import comparison_markdown, json_ready
    from howhard.runs import CompareSpec, run_compare

    if menu.chosen(args, "predictor", "strong", "strong_predictor", "router"):
        return menu.compare(args)
    if args.predictor is None:
        args.parser.error("--predictor is required with a pool")
    if args.policies is not None:
        args.parser.error("--policies goes with --menu")
    spec = CompareSpec(
        pool=args.pool,
        predictor=args.predictor,
        budgets=args.budgets,
        max_per_query=args.max_per_query,
        out=args.out,
        feature_cache=args.feature_cache,
        feature_server=feature_server(args),
        seed=args.seed,
        replays=args.replays,
        tolerance=args.tolerance,
        observe=_names(args.observe or "verifier,majority"),
        binarize=args.binarize,
        title=args.title,
        strong=args.strong,
        strong_predictor=args.strong_predictor,
        router=args.router,
        cost_weak=args.cost_weak,
        cost_strong=args.cost_strong,
    )
    cmp = run_compare(spec)
    print(json.dumps(json_ready(cmp), allow_nan=False) if args.json else comparison_markdown(cmp))
    return 0


def _names(text: str) -> list[str]:
    return menu.names(text)
