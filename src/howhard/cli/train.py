"""``howhard train``: fit a predictor (or a router) and print its held-out loss."""

from __future__ import annotations

import argparse

from howhard.cli import menu
from howhard.cli.common import BINARIZE_HELP, command


def add(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "train",
        "train a predictor: λ(x) on a binary pool, the marginal gains Δ(x, b) on a continuous "
        "one, P(strong beats weak | x) with --strong; prints held-out loss against the "
        "Avg and Opt baselines",
        "howhard train train.jsonl --features hidden --out predictor.npz\n"
        "  howhard train weak.jsonl --strong strong.jsonl --out router.npz\n"
        "  howhard train --menu menu.toml --rows 0:400 --features ngrams --out predictors/",
        run,
    )
    p.add_argument("pool", nargs="?", help="the pool file (or give --menu)")
    p.add_argument(
        "--strong", help="pool of the strong decoder on the same queries: train a router"
    )
    menu.flags(p)
    p.add_argument("--binarize", action="store_true", help=BINARIZE_HELP)
    p.add_argument(
        "--max-per-query",
        type=int,
        help="continuous pools: predict Δ(x, 1..K) (default: the fewest samples of any query)",
    )
    p.add_argument(
        "--out", required=True, help="model file (.npz, no pickle); with --menu a directory"
    )
    p.add_argument(
        "--features",
        default="hidden",
        help="hidden (the LM's own, llama.cpp), hf-hidden, minilm, ngrams (no model: fastest)",
    )
    p.add_argument(
        "--head",
        default="auto",
        choices=["auto", "logistic", "linear", "mlp", "tail"],
        help="auto tries logistic and mlp; logistic and linear name the same linear head; "
        "tail: a point mass of never-solved queries plus a Beta of rates (binary pools)",
    )
    p.add_argument("--task", default="arithmetic", help="task whose prompt template the LM sees")
    p.add_argument("--model", help="GGUF model for --features hidden (default: SmolLM2)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of queries held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--feature-cache", help=".npz cache of features keyed by prompt hash")


def run(args: argparse.Namespace) -> int:
    from howhard.runs import TrainSpec, run_train

    if menu.chosen(args, "strong"):
        return menu.train(args)
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
    )
    result = run_train(spec)
    print(loss_lines(result.holdout, result.best, result.loss))
    print(f"saved the {result.best} predictor (refit on the whole pool) to {args.out}")
    return 0


def loss_lines(tables: dict[str, dict[str, float]], best: str, loss: str) -> str:
    """The held-out loss of every head and L2 strength against the Avg and Opt baselines."""
    lines = [
        f"held-out {loss} (lower is better):",
        "  predictor            model    Avg      Opt      gap closed",
    ]
    for head, t in tables.items():
        mark = " <- kept" if head == best else ""
        lines.append(
            f"  {head:20s} {t['model']:<8.4g} {t['avg']:<8.4g} {t['opt']:<8.4g} "
            f"{100 * t['gap_closed']:.0f}%{mark}"
        )
    return "\n".join(lines)
