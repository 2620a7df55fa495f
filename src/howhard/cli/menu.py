"""The --menu side of train, evaluate and compare: a TOML menu of decoders in place of the pool
(`howhard.runs.menu`)."""

from __future__ import annotations

import argparse
import json


def rows(text: str) -> list[int]:
    """An argparse type for START:STOP (the queries at those positions of a pool file)."""
    try:
        start, stop = (int(x) for x in text.split(":"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"rows must be START:STOP like 0:400; got {text!r}") from e
    return [start, stop]


def flags(p: argparse.ArgumentParser) -> None:
    """--menu (a TOML menu of decoders, in place of the pool) and --rows."""
    p.add_argument("--menu", help="TOML menu of decoders ([[decoder]] name, pool, cost, ...)")
    p.add_argument(
        "--rows",
        type=rows,
        help="with --menu: only the queries at positions START:STOP of the first decoder's pool "
        "(e.g. 0:400 to train, 400:800 to evaluate)",
    )


def chosen(args: argparse.Namespace, *pool_only: str) -> bool:
    """True when the command runs on --menu; a usage error unless exactly one of the pool and
    --menu is given, when --rows or --shared is given without --menu, or when a flag in
    ``pool_only`` (dests) is given with --menu."""
    if (args.pool is None) == (args.menu is None):
        args.parser.error("give a pool file or --menu MENU.toml (one of the two)")
    for dest in ("rows", "shared") if args.menu is None else ():
        if getattr(args, dest, None):
            args.parser.error(f"--{dest} goes with --menu")
    for dest in pool_only if args.menu is not None else ():
        if getattr(args, dest) is not None:
            args.parser.error(f"--{dest.replace('_', '-')} does not go with --menu")
    return args.menu is not None


def train(args: argparse.Namespace) -> int:
    from howhard.reports.training import comparison_lines
    from howhard.runs.menu import MenuTrainSpec, run_menu_train

    keys = ["menu", "out", "rows", "max_per_query", "task", "model", "head", "holdout", "folds"]
    keys += ["seed", "feature_cache", "binarize", "shared"]
    keys += ["features"] if args.features else []
    spec = MenuTrainSpec(**{k: getattr(args, k) for k in keys})
    for name, result in run_menu_train(spec).items():
        print(f"{name}:\n{comparison_lines(result)}")
    print(f"saved one predictor per decoder and the menu pointing at them: {args.out}/menu.toml")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from howhard.reports import menu_evaluation_markdown
    from howhard.runs.menu import MenuEvaluateSpec, run_menu_evaluate

    keys = ("menu", "rows", "binarize", "feature_cache", "out", "bootstrap")
    ev = run_menu_evaluate(MenuEvaluateSpec(**{k: getattr(args, k) for k in keys}))
    return show(args, ev, menu_evaluation_markdown(ev))


def compare(args: argparse.Namespace) -> int:
    from howhard.reports import menu_markdown
    from howhard.runs.menu import MenuCompareSpec, policy_families, run_menu_compare

    known = policy_families()
    wanted = list(known) if args.policies is None else names(args.policies)
    if unknown := [n for n in wanted if n not in known]:
        installed = ", ".join(known) or "none"
        args.parser.error(f"unknown policy family {unknown[0]!r}; installed: {installed}")
    keys = ("menu", "budgets", "replays", "seed", "rows", "binarize", "feature_cache", "out")
    spec = MenuCompareSpec(
        observe=names(args.observe or "majority,verifier"),
        families={n: known[n] for n in wanted},
        title=args.title if args.title != "howhard compare" else "howhard compare --menu",
        **{k: getattr(args, k) for k in keys},
    )
    cmp = run_menu_compare(spec)
    return show(args, cmp, menu_markdown(cmp))


def show(args: argparse.Namespace, data: object, markdown: str) -> int:
    """Print ``data`` as JSON with --json, else the Markdown report."""
    from howhard.reports import json_ready

    print(json.dumps(json_ready(data), allow_nan=False) if args.json else markdown)
    return 0


def names(text: str) -> list[str]:
    """The comma-separated names in ``text``."""
    return [x.strip() for x in text.split(",") if x.strip()]
