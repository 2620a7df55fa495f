"""``howhard train``: fit a predictor (or a router) and print its held-out loss."""

from __future__ import annotations

import argparse

from howhard.cli.common import BINARIZE_HELP, command
from howhard.cli.features import feature_server, server_flags


def add(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "train",
        "train a predictor: λ(x) on a binary pool, the marginal gains Δ(x, b) on a continuous "
        "one, P(strong beats weak | x) with --strong; prints held-out loss against the "
        "Avg and Opt baselines",
        "howhard train train.jsonl --features hidden --out predictor.npz\n"
        "  howhard train weak.jsonl --strong strong.jsonl --out router.npz\n"
        "  howhard train gpt4.jsonl --features hidden --task humaneval --out p.npz  "
        "(SmolLM2 reading GPT-4's queries)\n"
        "  howhard train pool.jsonl --features server --feature-url http://127.0.0.1:8080 "
        "--out p.npz",
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
        help="hidden (an LM's hidden state, llama.cpp: the pool's own model, or a small local "
        "proxy such as the default SmolLM2 for an API-only model's pool), hf-hidden, minilm, "
        "ngrams (no model: fastest), server (the embeddings of a running server: --feature-url)",
    )
    p.add_argument(
        "--head",
        default="auto",
        choices=["auto", "logistic", "linear", "mlp"],
        help="auto tries both; logistic and linear name the same linear head",
    )
    p.add_argument("--task", default="arithmetic", help="task whose prompt template the LM sees")
    p.add_argument(
        "--model",
        help="GGUF model for --features hidden (default: SmolLM2); the served model's name for "
        "--features server (default: the first the server lists)",
    )
    p.add_argument("--holdout", type=float, default=0.2, help="share of queries held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--feature-cache", help=".npz cache of features keyed by prompt hash")
    server_flags(p, train=True)


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
        feature_server=feature_server(args),
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
