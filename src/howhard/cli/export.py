"""``howhard export``: write the pool of a label store, atomically."""

from __future__ import annotations

import argparse
import os

from howhard.cli.common import command


def add(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "export",
        "write the pool (JSONL or Parquet) of a label store, atomically",
        "howhard export train.sqlite --out train.jsonl",
        run,
    )
    p.add_argument("store")
    p.add_argument("--out", required=True, help="pool file: .jsonl or .parquet")
    p.add_argument(
        "--reward-model",
        help="also score every sample with a reward model: a local HF sequence-classification "
        "directory, or the URL of a vLLM (/classify) or text-embeddings-inference (/predict) "
        "server",
    )
    p.add_argument("--reward-api", default="vllm", choices=["vllm", "tei"], help="for a URL")
    p.add_argument("--reward-model-name", help="vllm: the served model name")


def run(args: argparse.Namespace) -> int:
    from howhard.runs import ExportSpec, run_export

    spec = ExportSpec(
        store=args.store,
        out=args.out,
        reward_model=args.reward_model,
        reward_api=args.reward_api,
        reward_model_name=args.reward_model_name,
        api_key=os.environ.get("OPENAI_API_KEY"),
    )
    pool = run_export(spec)
    print(f"wrote {len(pool)} queries to {args.out}")
    return 0
