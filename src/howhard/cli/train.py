"""``howhard train``: fit a predictor (or a router) and print its held-out loss."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from howhard.cli.common import BINARIZE_HELP, budgets, command

if TYPE_CHECKING:
    from howhard.runs import TrainResult


def add(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "train",
        "train a predictor: λ(x) on a binary pool, the marginal gains Δ(x, b) on a continuous "
        "one, P(strong beats weak | x) with --strong; prints held-out loss against the "
        "Avg and Opt baselines",
        "howhard train train.jsonl --features hidden --out predictor.npz\n"
        "  howhard train crux.jsonl --task cruxeval --features ngrams,task,ngrams+task "
        "--out p.npz\n"
        "  howhard train weak.jsonl --strong strong.jsonl --out router.npz",
        run,
    )
    p.add_argument("pool")
    p.add_argument(
        "--strong", help="pool of the strong decoder on the same queries: train a router"
    )
    p.add_argument("--binarize", action="store_true", help=BINARIZE_HELP)
    p.add_argument(
        "--max-per-query",
        type=int,
        help="continuous pools: predict Δ(x, 1..K) (default: the fewest samples of any query)",
    )
    p.add_argument("--out", required=True, help="model file (.npz, no pickle)")
    p.add_argument(
        "--features",
        default="hidden",
        help="hidden (the LM's own, llama.cpp), hf-hidden, minilm, ngrams (no model: fastest), "
        "task (the task's own features of a query: arithmetic, cruxeval); join sources with + to "
        "combine them (hidden+task), separate several with commas to compare them "
        "(ngrams,task,ngrams+task)",
    )
    p.add_argument(
        "--compare-features",
        action="store_true",
        help="also try task and SOURCE+task for each --features SOURCE (when the task provides "
        "features)",
    )
    p.add_argument(
        "--budgets",
        type=budgets,
        default=[1.0, 2.0, 4.0, 8.0],
        help="average samples per query at which the held-out compute saved is measured; "
        "the kept predictor (source and head) is the one with the highest mean compute saved "
        "over them (whole percentage points), ties broken by the lower held-out loss",
    )
    p.add_argument(
        "--head",
        default="auto",
        choices=["auto", "logistic", "linear", "mlp"],
        help="auto tries both; logistic and linear name the same linear head",
    )
    p.add_argument("--task", default="arithmetic", help="task whose prompt template the LM sees")
    p.add_argument("--model", help="GGUF model for --features hidden (default: SmolLM2)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of queries held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--feature-cache", help=".npz cache of features keyed by prompt hash")


def run(args: argparse.Namespace) -> int:
    from howhard.runs import TrainSpec, run_train

    spec = TrainSpec(
        pool=args.pool,
        out=args.out,
        features=args.features,
        task=args.task,
        model=args.model,
        head=args.head,
        holdout=args.holdout,
        seed=args.seed,
        feature_cache=args.feature_cache,
        strong=args.strong,
        binarize=args.binarize,
        max_per_query=args.max_per_query,
        compare_features=args.compare_features,
        budgets=tuple(args.budgets),
    )
    result = run_train(spec)
    print(comparison_lines(result))
    kept = result.kept
    what = (
        f"{kept.features} {result.best}"
        if kept and kept.features not in result.best
        else result.best
    )
    print(f"saved the {what} predictor (refit on the whole pool) to {args.out}")
    return 0


def comparison_lines(result: TrainResult) -> str:
    """Every feature source x head tried (at its best L2 strength): held-out loss against the
    Avg and Opt baselines, share of the gap closed, and the compute saved by the greedy
    allocation at each budget (≥: a lower bound); the kept one marked, and the rule."""
    from howhard.runs.train import KEEP_RULE

    budgets = result.budgets
    head = "  features             head      alpha   model    Avg      Opt      gap closed "
    head += "".join(f"  B={b:<4g}" for b in budgets)
    lines = [
        f"held-out comparison on {result.n_test} queries: {result.loss} (lower is better)"
        + (
            "; compute saved by the paper's greedy allocation vs uniform at equal success "
            "(higher is better)"
            if budgets
            else ""
        ),
        head,
    ]
    for c in result.candidates:
        t = c.table
        gap = "n/a" if t["gap_closed"] != t["gap_closed"] else f"{100 * t['gap_closed']:.0f}%"
        row = (
            f"  {c.features:20s} {c.head:9s} {c.alpha:<7g} {t['model']:<8.4g} {t['avg']:<8.4g} "
            f"{t['opt']:<8.4g} {gap:11s}"
        )
        row += "".join(
            f"  {'≥' if low else ''}{100 * v:.0f}%".ljust(8)
            for v, low in zip(c.saved, c.lower_bound, strict=True)
        )
        lines.append(row + (" <- kept" if c is result.kept else ""))
    if result.oracle_saved:
        label = "oracle (greedy on the held-out queries' own gains)"
        lines.append(
            f"  {label:77s}" + "".join(f"  {100 * v:.0f}%".ljust(8) for v in result.oracle_saved)
        )
    if len(result.candidates) > 1:
        lines.append(KEEP_RULE if budgets else "kept: the lowest held-out loss")
    return "\n".join(lines)
