"""The command line: parses flags and calls the library (howhard.workflow, howhard.demo)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from howhard.backends import BackendConfig
from howhard.backends.base import SamplingParams
from howhard.errors import ConfigError, HowhardError
from howhard.tasks import TASKS

_TASK_HELP = f"one of {', '.join(TASKS.names())} (default arithmetic)"


def _budgets(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"budgets must be numbers like 1,2,4,8; got {text!r}"
        ) from e


def _add(
    sub: argparse._SubParsersAction, name: str, help: str, example: str
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _sampling_flags(p: argparse.ArgumentParser) -> None:
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


def _backend(args: argparse.Namespace) -> BackendConfig:
    return BackendConfig(
        args.backend,
        args.model,
        tuple(args.endpoint),
        args.chat,
        os.environ.get(args.api_key_env),
        args.per_endpoint,
        args.workers,
        args.vote,
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="howhard",
        description="Decide how hard an LM should think about each input: label queries with "
        "sampled rewards, learn to predict them, allocate samples adaptively, evaluate.",
    )
    sub = root.add_subparsers(dest="command", required=True)

    p = _add(
        sub,
        "label",
        "draw N samples per query from the LM, score them, store them "
        "(resumable: rerun the same command after a crash)",
        "howhard label --task arithmetic --queries 200 --samples 16 --store train.sqlite\n"
        "  howhard label --task gsm8k --queries 200 --samples 8 --store gsm8k.sqlite \\\n"
        "      --backend openai --endpoint http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-1.5B",
    )
    p.add_argument("--task", default="arithmetic", help=_TASK_HELP)
    p.add_argument("--data", help="the task's data file instead of its default")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--queries", type=int, default=100, help="generate this many queries")
    src.add_argument("--input", help="JSONL file of queries (rows with id and prompt)")
    p.add_argument("--query-seed", type=int, default=0, help="seed of the query generator")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        help="skip queries whose prompt is in this query or pool file (e.g. the training pool, "
        "for a disjoint evaluation set); repeatable",
    )
    p.add_argument("--samples", type=int, default=16, help="samples per query")
    p.add_argument("--store", required=True, help="SQLite label store file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _sampling_flags(p)

    p = _add(
        sub,
        "export",
        "write the pool (JSONL or Parquet) of a label store, atomically",
        "howhard export train.sqlite --out train.jsonl",
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

    p = _add(
        sub,
        "score",
        "score existing generations with the task's verifier (code runs in a bubblewrap "
        "sandbox); writes the rows with their reward (resumable)",
        "howhard score --task humaneval --input samples.jsonl --output scored.jsonl",
    )
    p.add_argument("--task", required=True, help=_TASK_HELP)
    p.add_argument("--data", help="the task's data file instead of its default")
    p.add_argument(
        "--input",
        required=True,
        help="JSONL rows with the problem id (task_id or id) and completion",
    )
    p.add_argument("--output", required=True, help="JSONL: the input rows plus reward and passed")
    p.add_argument("--workers", type=int, default=2, help="completions scored in parallel")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = _add(
        sub,
        "train",
        "train a predictor: λ(x) on a binary pool, the marginal gains Δ(x, b) on a continuous "
        "one, P(strong beats weak | x) with --strong; prints held-out loss against the "
        "Avg and Opt baselines",
        "howhard train train.jsonl --features hidden --out predictor.npz\n"
        "  howhard train weak.jsonl --strong strong.jsonl --out router.npz",
    )
    p.add_argument("pool")
    p.add_argument(
        "--strong", help="pool of the strong decoder on the same queries: train a router"
    )
    p.add_argument(
        "--binarize", action="store_true", help="reward 1 where reward == 1, else 0 (pass/fail)"
    )
    p.add_argument(
        "--max-per-query",
        type=int,
        help="continuous pools: predict Δ(x, 1..K) (default: the fewest samples of any query)",
    )
    p.add_argument("--out", required=True, help="model file (.npz, no pickle)")
    p.add_argument(
        "--features",
        default="hidden",
        help="hidden (the LM's own, llama.cpp), hf-hidden, minilm, ngrams (no model: fastest)",
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

    p = _add(
        sub,
        "evaluate",
        "success vs average budget for uniform, adaptive and oracle "
        "allocation, and the compute saved at equal success",
        "howhard evaluate eval.jsonl --predictor predictor.npz --budgets 1,2,4,8 "
        "--max-per-query 16 --out report/\n"
        "  howhard evaluate weak.jsonl --strong strong.jsonl --predictor router.npz",
    )
    p.add_argument("pool")
    p.add_argument(
        "--strong", help="pool of the strong decoder on the same queries: evaluate routing"
    )
    p.add_argument(
        "--shares",
        type=_budgets,
        default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        help="routing: strong-call shares to report",
    )
    p.add_argument(
        "--binarize", action="store_true", help="reward 1 where reward == 1, else 0 (pass/fail)"
    )
    p.add_argument("--predictor", help="model file from howhard train")
    p.add_argument("--budgets", type=_budgets, default=[1.0, 2.0, 4.0, 8.0, 16.0])
    p.add_argument("--max-per-query", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--out", help="directory for report.md, report.json and plot.png")
    p.add_argument("--feature-cache")
    p.add_argument("--seed", type=int, default=0)

    p = _add(
        sub,
        "serve",
        "an OpenAI-compatible proxy in front of your servers: per request it predicts how hard "
        "the query is, draws that many samples upstream (average --budget, at most "
        "--max-per-query) and returns the one its reranker picks. Client keys come from "
        "$HOWHARD_API_KEYS (comma-separated) or the config file, never from flags",
        "howhard serve --upstream http://127.0.0.1:8080 --predictor predictor.npz \\\n"
        "      --calibration eval.jsonl --budget 4 --max-per-query 16\n"
        "  (with the client keys in the environment, e.g. HOWHARD_API_KEYS=sk-local)",
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
    p.add_argument(
        "--no-feature-cache",
        dest="cache_features",
        action="store_const",
        const=False,
        help="featurise the calibration pool at every start",
    )
    p.add_argument(
        "--decision-batch",
        type=int,
        help="queued requests featurised and decided together, at most (default 32)",
    )
    p.add_argument(
        "--decision-wait-ms",
        type=float,
        help="how long a lone queued request waits for others to join its batch (default 0)",
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
    p.add_argument("--seed", type=int)

    p = _add(
        sub,
        "compare",
        "every allocation method (uniform, binned, greedy, threshold, sequential, joint, oracle) "
        "at the same realised average spend: success, compute saved vs uniform, share of the "
        "oracle's saving; with a verifier and with majority vote only",
        "howhard compare eval.jsonl --predictor predictor.npz --budgets 1,2,4,8 "
        "--max-per-query 16 --out compare/\n"
        "  howhard compare weak.jsonl --strong strong.jsonl --predictor weak.npz "
        "--strong-predictor strong.npz --budgets 1,2,4,8 --max-per-query 8",
    )
    p.add_argument("pool")
    p.add_argument("--predictor", required=True, help="success or gains predictor of the pool")
    p.add_argument("--budgets", type=_budgets, default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--max-per-query", type=int, default=16)
    p.add_argument(
        "--observe",
        default="verifier,majority",
        help="verifier (rewards seen), majority (answers seen), or both (default; majority "
        "only where the pool has answers)",
    )
    p.add_argument("--replays", type=int, default=100, help="random sample orders replayed")
    p.add_argument(
        "--tolerance", type=float, default=0.01, help="relative overspend flagged (default 1%%)"
    )
    p.add_argument("--strong", help="strong decoder's pool of the same queries: joint methods")
    p.add_argument("--strong-predictor", help="predictor trained on the strong decoder's pool")
    p.add_argument("--router", help="or: router from howhard train WEAK --strong STRONG")
    p.add_argument("--cost-weak", type=float, help="cost per weak sample (default: its tokens)")
    p.add_argument("--cost-strong", type=float, help="cost per strong sample (default: tokens)")
    p.add_argument(
        "--binarize", action="store_true", help="reward 1 where reward == 1, else 0 (pass/fail)"
    )
    p.add_argument("--title", default="howhard compare", help="report title")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--out", help="directory for report.md, report.json and plot.png")
    p.add_argument("--feature-cache")
    p.add_argument("--seed", type=int, default=0)

    p = _add(
        sub,
        "demo",
        "the whole method on the embedded SmolLM2 and mixed arithmetic: label, "
        "train, evaluate; writes a report and a plot (cached: a rerun is quick)",
        "howhard demo --size small",
    )
    p.add_argument("--size", default="default", choices=["small", "default", "large"])
    p.add_argument("--workdir", default="howhard-demo", help="labels, model and report go here")
    p.add_argument("--workers", type=int, help="model processes (default 1, a thread per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except HowhardError as e:
        print(f"howhard {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"howhard {args.command}: interrupted; rerun to resume", file=sys.stderr)
        return 130


def _params(args: argparse.Namespace, max_tokens: int) -> SamplingParams:
    return SamplingParams(args.temperature, args.top_p, args.max_tokens or max_tokens, args.seed)


def _run(args: argparse.Namespace) -> int:
    from howhard import workflow
    from howhard.tasks import get_task

    if args.command == "serve":
        try:
            from howhard.serve import load_config, serve
        except ImportError as e:
            raise ConfigError(f"howhard serve needs {e.name}: pip install 'howhard[serve]'") from e

        settings = vars(args).copy()
        for name in ("command", "config", "strong", "upstreams"):
            settings.pop(name)
        if args.strong:
            settings["strong"] = args.strong
        if args.upstreams:
            settings["upstreams"] = args.upstreams
        serve(load_config(args.config, **settings))
        return 0
    if args.command == "label":
        task = get_task(args.task, args.data)
        seen = {q.prompt for path in args.exclude for q in workflow.read_queries(path)}
        if args.input:
            queries = [q for q in workflow.read_queries(args.input) if q.prompt not in seen]
        else:
            drawn = task.queries(args.queries + len(seen), args.query_seed)
            queries = [q for q in drawn if q.prompt not in seen][: args.queries]
        stats = workflow.run_label(
            task,
            queries,
            args.store,
            args.samples,
            _params(args, task.max_tokens),
            _backend(args),
            not args.quiet,
        )
        print(
            f"{stats.samples} samples drawn in {stats.seconds:.1f}s "
            f"({stats.samples_per_second:.1f} samples/s, {stats.tokens_per_second:.0f} tokens/s); "
            f"store: {args.store}"
        )
        if stats.errors:
            print(
                f"howhard label: error: {stats.errors} queries failed in the backend (last: "
                f"{stats.last_error}); their samples are not stored. Rerun the same command to "
                "draw them.",
                file=sys.stderr,
            )
            return 1
    elif args.command == "score":
        from howhard.score import score_file

        scored = score_file(
            get_task(args.task, args.data), args.input, args.output, args.workers, not args.quiet
        )
        print(
            f"{scored.rows} rows ({scored.scored} scored now, {scored.resumed} kept from an "
            f"earlier run): {scored.passed} passed, mean reward {scored.mean_reward:.3f}; "
            f"wrote {args.output}"
        )
    elif args.command == "export":
        rm = None
        if args.reward_model:
            from howhard.rerank import reward_client

            rm = reward_client(
                args.reward_model,
                api=args.reward_api,
                model=args.reward_model_name,
                api_key=os.environ.get("OPENAI_API_KEY"),
            )
        pool = workflow.run_export(args.store, args.out, rm)
        print(f"wrote {len(pool)} queries to {args.out}")
    elif args.command == "train":
        result = workflow.run_train(
            args.pool,
            args.out,
            args.features,
            args.task,
            args.model,
            args.head,
            args.holdout,
            args.seed,
            args.feature_cache,
            args.strong,
            args.binarize,
            args.max_per_query,
        )
        print(_loss_lines(result.holdout, result.best, result.loss))
        print(f"saved the {result.best} predictor (refit on the whole pool) to {args.out}")
    elif args.command == "evaluate" and args.strong:
        from howhard.routing import markdown as routing_markdown

        rev = workflow.run_evaluate_routing(
            args.pool,
            args.strong,
            args.shares,
            args.predictor,
            args.out,
            args.feature_cache,
            args.seed,
            binarize=args.binarize,
        )
        print(json.dumps(rev.to_json()) if args.json else routing_markdown(rev))
    elif args.command == "evaluate":
        from howhard.evaluate import markdown

        ev = workflow.run_evaluate(
            args.pool,
            args.budgets,
            args.max_per_query,
            args.predictor,
            args.out,
            args.feature_cache,
            args.seed,
            binarize=args.binarize,
        )
        print(json.dumps(ev.to_json()) if args.json else markdown(ev))
    elif args.command == "compare":
        from howhard.compare import markdown as compare_markdown
        from howhard.compare import run_compare

        cmp = run_compare(
            args.pool,
            args.predictor,
            args.budgets,
            args.max_per_query,
            args.out,
            args.feature_cache,
            args.seed,
            args.replays,
            args.tolerance,
            [x.strip() for x in args.observe.split(",") if x.strip()],
            args.binarize,
            args.title,
            args.strong,
            args.strong_predictor,
            args.router,
            args.cost_weak,
            args.cost_strong,
        )
        print(json.dumps(cmp.to_json()) if args.json else compare_markdown(cmp))
    elif args.command == "demo":
        from howhard.demo import run_demo

        run_demo(args.size, args.workdir, args.workers, not args.quiet)
    else:  # pragma: no cover - argparse rejects other commands
        raise ConfigError(f"unknown command {args.command}")
    return 0


def _loss_lines(tables: dict[str, dict[str, float]], best: str, loss: str) -> str:
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


if __name__ == "__main__":
    sys.exit(main())
