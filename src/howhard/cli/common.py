"""What several subcommands share: the subparser with its example, number lists, and the pool,
budget and report flags of evaluate and compare."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from howhard.errors import ConfigError
from howhard.tasks import TASKS

if TYPE_CHECKING:
    from howhard.features import EmbeddingServer

TASK_HELP = f"one of {', '.join(TASKS.names())} (default arithmetic)"
BINARIZE_HELP = "reward 1 where reward == 1, else 0 (pass/fail)"


Run = Callable[[argparse.Namespace], int]


def command(
    sub: argparse._SubParsersAction, name: str, help: str, example: str, run: Run
) -> argparse.ArgumentParser:
    """A subcommand with ``help`` as its description, ``example`` in its epilog, and ``run``
    called with the parsed flags."""
    p = sub.add_parser(
        name,
        help=help,
        description=help,
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


def evaluation_flags(p: argparse.ArgumentParser, budgets_default: list[float], cap: int) -> None:
    """The pool, the strong pool, --binarize, --budgets, --max-per-query and the report flags
    (--json, --out, --feature-cache, --seed) of evaluate and compare."""
    p.add_argument("pool")
    p.add_argument("--binarize", action="store_true", help=BINARIZE_HELP)
    p.add_argument("--budgets", type=budgets, default=budgets_default)
    p.add_argument("--max-per-query", type=int, default=cap)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--out", help="directory for report.md, report.json and plot.png")
    p.add_argument("--feature-cache")
    p.add_argument("--seed", type=int, default=0)
    server_flags(p)


def server_flags(p: argparse.ArgumentParser, train: bool = False) -> None:
    """--feature-url and --feature-api-key-env (and when ``train``, --feature-api and
    --feature-pooling: a predictor records them) for predictors on server embeddings."""
    p.add_argument(
        "--feature-url",
        help="--features server: base URL of the server whose embeddings are the features "
        "(not saved with the predictor: give it again to evaluate or serve)",
    )
    p.add_argument(
        "--feature-api-key-env", help="environment variable holding that server's API key"
    )
    if train:
        p.add_argument(
            "--feature-api",
            default="openai",
            choices=["openai", "llamacpp", "pooling"],
            help="openai: POST /v1/embeddings (vLLM, OpenAI, llama_cpp.server); llamacpp: "
            "llama-server's /embedding; pooling: vLLM's /pooling",
        )
        p.add_argument(
            "--feature-pooling",
            default="last",
            choices=["last", "mean", "server"],
            help="per-token vectors pooled by the last token (default) or the mean; server: "
            "the server pooled them (vLLM, OpenAI)",
        )


def feature_server(args: argparse.Namespace) -> EmbeddingServer | None:
    """The embedding server the flags name (None without --feature-url), its key read from the
    environment variable --feature-api-key-env names."""
    from howhard.features import EmbeddingServer

    if args.feature_url is None:
        return None
    key = None
    if args.feature_api_key_env is not None:
        key = os.environ.get(args.feature_api_key_env)
        if key is None:
            raise ConfigError(
                f"the environment variable {args.feature_api_key_env} (the embedding server's "
                "key) is not set"
            )
    return EmbeddingServer(
        args.feature_url,
        key,
        api=getattr(args, "feature_api", "openai"),
        pooling=getattr(args, "feature_pooling", "last"),
    )
