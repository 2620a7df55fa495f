"""The flags of feature sources: train's sources to compare, and those of server features
(``--features server``), shared by train, evaluate, compare."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from howhard.errors import ConfigError

if TYPE_CHECKING:
    from howhard.features import EmbeddingServer


def feature_flags(p: argparse.ArgumentParser) -> None:
    """train's --features, --compare-features and --budgets."""
    from howhard.cli.common import budgets  # common imports this module

    p.add_argument(
        "--features",
        help="hidden (an LM's hidden state, llama.cpp: the pool's own model, or a small local "
        "proxy such as the default SmolLM2 for an API-only model's pool), hf-hidden (the same "
        "through transformers, float32), hidden-lK / hf-hidden-lK (the state after K blocks: "
        "hidden-l18), hidden-layers (the default; not with --menu or --strong, whose default is "
        "hidden: the LM's final state, its states after n/2 and 3n/4 of its n blocks, and those "
        "two side by side, read in one pass, the one saving most on the hold-out kept and "
        "recorded by its name, e.g. hidden-l15+hidden-l22), "
        "minilm, "
        "ngrams (no model: fastest), task (the task's own features of a query: arithmetic, "
        "cruxeval), server (the embeddings of a running server: --feature-url); join sources "
        "with + to combine them (hidden+task), separate several with commas to compare them",
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
        help="average samples per query at which the held-out compute saved is measured, "
        "each at most the fewest samples of a query (default 1,2,4,8, those up to it); "
        "the kept predictor (source and head) is the one with the highest mean compute saved "
        "over them (whole percentage points), ties broken by the lower held-out loss",
    )


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
