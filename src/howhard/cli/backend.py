"""The backend and sampling flags of ``howhard label`` and the BackendConfig they make."""

from __future__ import annotations

import argparse
import os

from howhard.backends import BackendConfig
from howhard.backends.base import SamplingParams


def sampling_flags(p: argparse.ArgumentParser) -> None:
    """The backend (--backend, --model, --endpoint, ...) and sampling flags of label."""
    d = SamplingParams()
    g = p.add_argument_group("backend")
    g.add_argument("--backend", default="llamacpp", help="llamacpp (default), openai, transformers")
    g.add_argument(
        "--model",
        help="llamacpp/transformers: GGUF file or HF model directory (default: the embedded "
        "SmolLM2-135M-Instruct); openai: the model name the server serves",
    )
    g.add_argument(
        "--endpoint",
        dest="endpoints",
        action="append",
        default=[],
        help="openai: server base URL, e.g. http://127.0.0.1:8000/v1; repeat for a fleet",
    )
    g.add_argument("--chat", action="store_true", help="openai: use /v1/chat/completions")
    g.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="openai: environment variable holding the API key (default OPENAI_API_KEY)",
    )
    g.add_argument(
        "--per-endpoint", type=int, default=4, help="openai: requests in flight per endpoint"
    )
    g.add_argument(
        "--workers",
        type=int,
        help="llamacpp: N > 1 single-threaded model processes (default 1, a thread per core)",
    )
    g.add_argument(
        "--vote",
        type=int,
        default=1,
        help="K > 1: each sample is the majority answer of K samples (a costlier decoder)",
    )
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--max-tokens", type=int, help="completion length (default: the task's)")
    p.add_argument(
        "--seed", type=int, default=d.seed, help="base seed; each sample derives its own"
    )


def backend_config(args: argparse.Namespace) -> BackendConfig:
    """The BackendConfig of the --backend flags (the API key read from --api-key-env)."""
    return BackendConfig(
        backend=args.backend,
        model=args.model,
        endpoints=tuple(args.endpoints),
        chat=args.chat,
        api_key=os.environ.get(args.api_key_env),
        per_endpoint=args.per_endpoint,
        workers=args.workers,
        vote=args.vote,
    )
