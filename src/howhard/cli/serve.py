"""``howhard serve``: the OpenAI-compatible proxy (settings: flags > config file > defaults)."""

from __future__ import annotations

import argparse

from howhard.cli.common import command
from howhard.cli.serve_flags import connection_flags, menu_flags
from howhard.errors import ConfigError


def add(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "serve",
        "an OpenAI-compatible proxy in front of your servers: per request it predicts how hard "
        "the query is, draws that many samples upstream (average --budget, at most "
        "--max-per-query) and returns the one its reranker picks. Client keys come from "
        "$HOWHARD_API_KEYS (comma-separated) or the config file, never from flags",
        "howhard serve --upstream http://127.0.0.1:8080 --predictor predictor.npz \\\n"
        "      --calibration eval.jsonl --budget 4 --max-per-query 16\n"
        "  (with the client keys in the environment, e.g. HOWHARD_API_KEYS=sk-local)\n"
        "  howhard serve --config serve.toml   # a menu: [[decoder]] tables, policy, budget\n"
        "  howhard serve --report requests.jsonl --budget 3   # realised cost of a request log",
        run,
    )
    p.add_argument("--config", help="TOML file with these settings (flags override it)")
    p.add_argument(
        "--upstream",
        dest="upstreams",
        action="append",
        help="upstream base URL; repeat for a fleet",
    )
    p.add_argument(
        "--upstream-model", help="model name the upstream serves (default: asked from it)"
    )
    p.add_argument("--upstream-api-key-env", help="environment variable holding the upstream's key")
    p.add_argument("--predictor", help="success or gains predictor from howhard train")
    p.add_argument(
        "--calibration", help="pool file whose prompts calibrate the thresholds (held-out)"
    )
    p.add_argument(
        "--feature-cache",
        help=".npz cache of the calibration pool's features (default: one per feature source "
        "in $XDG_CACHE_HOME/howhard/features, or ~/.cache/howhard/features)",
    )
    p.add_argument("--feature-url", help="server features' URL (default: the first --upstream)")
    p.add_argument("--feature-api-key-env", help="variable holding its key (default: upstream's)")
    p.add_argument(
        "--no-feature-cache",
        dest="cache_features",
        action="store_const",
        const=False,
        help="featurise the calibration pool at every start",
    )
    p.add_argument("--decision-batch", type=int, help="requests decided together (default 32)")
    p.add_argument(
        "--decision-wait-ms", type=float, help="a lone request's wait for a batch (default 0)"
    )
    p.add_argument("--budget", type=float, help="target mean samples per request")
    p.add_argument("--max-per-query", type=int, help="samples one request may never exceed")
    p.add_argument("--min-per-query", type=int, help="samples every request gets (default 1)")
    p.add_argument("--strong", action="append", help="strong decoder's base URL (routing)")
    p.add_argument("--strong-model", help="model name the strong upstream serves")
    p.add_argument("--router", help="router from howhard train WEAK --strong STRONG")
    p.add_argument("--strong-share", type=float, help="share of requests sent to --strong")
    p.add_argument("--reranker", help="majority (default) or reward-model")
    p.add_argument("--reward-model", help="reward model URL or local directory")
    p.add_argument("--reward-api", help="vllm (default) or tei")
    p.add_argument("--reward-model-name", help="served name of a vLLM reward model")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--max-tokens", type=int, help="cap on a request's max_tokens (default 1024)")
    p.add_argument("--max-concurrency", type=int, help="upstream samples in flight (default 64)")
    connection_flags(p)
    p.add_argument("--seed", type=int)
    menu_flags(p)


def run(args: argparse.Namespace) -> int:
    if args.report:
        from howhard.serve.requestlog import read_log, report

        print(report(read_log(args.report), args.budget).markdown())
        return 0
    try:
        from howhard.serve import load_config, serve
    except ImportError as e:
        raise ConfigError(f"howhard serve needs {e.name}: pip install 'howhard[serve]'") from e

    settings = vars(args).copy()
    for name in ("command", "run", "parser", "config", "strong", "upstreams", "report"):
        settings.pop(name)
    if args.strong:
        settings["strong"] = args.strong
    if args.upstreams:
        settings["upstreams"] = args.upstreams
    serve(load_config(args.config, **settings))
    return 0
