"""``howhard train``: fit a predictor (or a router) and print its held-out loss."""

from __future__ import annotations

import argparse

from howhard.cli import menu
from howhard.cli.common import BINARIZE_HELP, command, log_to_stderr
from howhard.cli.features import feature_flags, feature_server, server_flags


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
        "  howhard train weak.jsonl --strong strong.jsonl --out router.npz\n"
        "  howhard train --menu menu.toml --rows 0:400 --features ngrams --out predictors/\n"
        "  howhard train pool.jsonl --features server --feature-url http://127.0.0.1:8080 "
        "--out p.npz",
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
    feature_flags(p)
    p.add_argument(
        "--head",
        default="auto",
        choices=["auto", "logistic", "linear", "mlp", "tail", "stacked", "stacked-tail", "lora"],
        help="auto tries logistic and mlp; logistic and linear name the same linear head; "
        "tail: a point mass of never-solved queries plus a Beta of rates (binary pools); "
        "stacked: a logistic head per source of --features a+b (L2 by 5-fold CV), a logistic "
        "(stacked-tail: a tail) head on their out-of-fold logits; lora: fine-tune the LM "
        "(--model, default SmolLM2) with LoRA adapters and a linear head on the query text "
        "(binary pools; --features unused; pip install 'howhard[lora]')",
    )
    p.add_argument("--task", help="task whose prompt template the LM sees (default: the pool's)")
    p.add_argument(
        "--model",
        help="GGUF model for --features hidden (default: SmolLM2); the served model's name for "
        "--features server (default: the first the server lists)",
    )
    p.add_argument(
        "--shared",
        action="store_true",
        help="with --menu: also try heads shared by the decoders, fitted on every pool at once "
        "(logistic: lowrank, mlp: a tanh layer, auto: both); each decoder keeps what saves most",
    )
    p.add_argument("--holdout", type=float, help="compare on one split holding out this share")
    folds = "compare the candidates by k-fold cross-validation (default 5; 1 with --holdout, "
    p.add_argument("--folds", type=int, help=folds + "--shared or head lora: one split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--feature-cache",
        help=".npz cache of features keyed by prompt hash (it serves the source it holds; other "
        "sources get a file beside it: f.npz -> f.task.npz)",
    )
    server_flags(p, train=True)


def run(args: argparse.Namespace) -> int:
    from howhard.reports.training import comparison_lines, kept_text
    from howhard.runs import TrainSpec, run_train

    if args.holdout is not None and (args.folds or 1) > 1:
        args.parser.error("--holdout makes one split, --folds k > 1 k folds: give one of them")
    if menu.chosen(args, "strong"):
        return menu.train(args)
    keys = ["pool", "out", "features", "task", "model", "head", "holdout", "folds", "seed"]
    keys += ["strong", "feature_cache", "binarize", "max_per_query", "compare_features"]
    spec = TrainSpec(
        **{k: getattr(args, k) for k in keys},
        budgets=None if args.budgets is None else tuple(args.budgets),
        feature_server=feature_server(args),
    )
    with log_to_stderr("howhard.predict.lora"):  # its epochs take minutes each
        result = run_train(spec)
    print(comparison_lines(result))
    print(f"saved the {kept_text(result)} predictor (refit on the whole pool) to {args.out}")
    return 0
