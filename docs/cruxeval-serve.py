"""`howhard serve` in menu mode over the CRUXEval menu, fed by an upstream that replays the pools.

Two parts, both real processes on loopback:

- ``upstream``: an OpenAI-compatible server (Starlette + uvicorn) that serves the five decoders
  of a menu file by model name. A request for model m with prompt x and ``n = k`` gets the next k
  of x's pooled samples of m (text = the pooled answer, usage = 5 prompt tokens + 1 per sample),
  in pool order after ``POST /reset {"seed": 0}`` and in a fixed random order per (seed, model,
  query) after another seed (the runs use seeds 1, 2, ...: the codellama pools list each
  problem's samples roughly from the most to the least often correct, so pool order would flatter
  the first draws); a query asked for more than its pooled samples starts again from
  its first (counted in ``GET /stats`` as ``wrapped``).
- ``run``: for each (policy, budget) it writes a serve config (the menu's decoders with their
  predictors, the calibration pools = problems ``--calibration`` of the pool files, the
  upstream's URL, ``task = "cruxeval"``, a request log), starts ``python -m howhard serve
  --config``, waits for /ready, sends ``--passes`` passes over problems ``--traffic`` (each pass
  a new random problem order and a new random sample order upstream), ``--clients`` chat
  requests in flight at a time with the problem's prompt as the user message, then stops the
  server (SIGTERM) and reads its request log (`howhard.serve.requestlog.report`, also printed by
  ``howhard serve --report``). A request succeeds when the answer returned is a correct pooled
  answer of that problem. Offline numbers for the same family come from ``howhard compare
  --menu``'s report.json (``--compare``): its majority-vote success interpolated at the live
  run's realised mean cost.

    python docs/cruxeval-serve.py run --menu WORK/predictors/menu.toml \\
        --compare docs/cruxeval-menu/compare/report.json --out docs/cruxeval-serve --work WORK
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

KEY = "sk-cruxeval-serve"
RUNS = (  # (policy, budget): mean cost per request, the menu's prices (0.2 ... 60 per sample)
    ("best-single", 10.0),
    ("routellm", 10.0),
    ("routellm", 36.0),
    ("cascade", 10.0),
    ("cascade", 24.0),
    ("escalate", 1.5),
    ("sequential-menu", 10.0),
)


# ---------------------------------------------------------------------------- the upstream


def upstream_app(menu_path: Path) -> Any:
    """The replay upstream of the module doc over the decoders of ``menu_path``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from howhard.menu import read_menu

    menu = read_menu(menu_path)
    pools = dict(zip(menu.names, menu.pools(), strict=True))
    rows = {m: {p: i for i, p in enumerate(pool.prompts)} for m, pool in pools.items()}
    state: dict[str, Any] = {"seed": 0, "next": Counter(), "samples": Counter(), "wrapped": 0}

    def order(model: str, i: int) -> list[int]:
        n = len(pools[model].rewards[i])
        if state["seed"] == 0:
            return list(range(n))
        d = menu.names.index(model)
        return [int(j) for j in np.random.default_rng([state["seed"], d, i]).permutation(n)]

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": m} for m in pools]})

    async def reset(request: Request) -> JSONResponse:
        body = await request.json()
        state.update(seed=int(body["seed"]), next=Counter(), samples=Counter(), wrapped=0)
        return JSONResponse({"seed": state["seed"]})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({"samples": dict(state["samples"]), "wrapped": state["wrapped"]})

    async def complete(request: Request) -> JSONResponse:
        body = await request.json()
        model, chat = body.get("model"), "messages" in body
        if model not in pools:
            return JSONResponse({"error": {"message": f"no model {model!r}"}}, status_code=404)
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        i = rows[model].get(prompt)
        if i is None:
            return JSONResponse({"error": {"message": "unknown prompt"}}, status_code=400)
        answers, k = pools[model].extras[i]["answers"], int(body.get("n", 1))
        sequence = order(model, i)
        choices = []
        for c in range(k):
            at = state["next"][(model, i)]
            if at >= len(sequence):
                at, state["wrapped"] = 0, state["wrapped"] + 1
            state["next"][(model, i)] = at + 1
            text = answers[sequence[at]]
            choice: dict[str, Any] = {"index": c, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choices.append(choice)
        state["samples"][model] += k
        usage = {"prompt_tokens": 5, "completion_tokens": k, "total_tokens": 5 + k}
        return JSONResponse({"object": "chat.completion", "choices": choices, "usage": usage})

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", complete, methods=["POST"]),
            Route("/v1/completions", complete, methods=["POST"]),
            Route("/reset", reset, methods=["POST"]),
            Route("/stats", stats),
        ]
    )


def cmd_upstream(args: argparse.Namespace) -> None:
    import uvicorn

    uvicorn.run(upstream_app(args.menu), host="127.0.0.1", port=args.port, log_level="warning")


# ---------------------------------------------------------------------------- the runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], seconds: float, key: str = "") -> None:
    """Until GET ``url`` answers 200 (the process still running), at most ``seconds``."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args} exited with {process.returncode}; see its log")
        try:
            if httpx.get(url, headers=headers, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer 200 within {seconds:g} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def toml_value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v) if isinstance(v, Path) else v)


def serve_config(
    path: Path, menu: Any, calibration: list[Path], url: str, settings: dict[str, Any]
) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in settings.items()]
    for d, pool in zip(menu.decoders, calibration, strict=True):
        table = {
            "name": d.name,
            "pool": pool,
            "predictor": d.predictor,
            "cost": d.cost,
            "upstream": [url],
            "model": d.name,
        }
        lines += ["", "[[decoder]]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def majority_curves(paths: list[Path]) -> dict[str, Any]:
    """The majority-vote curves of the compare reports at ``paths``, by method (a method in
    several: the last report's)."""
    return {k: v for p in paths for k, v in json.loads(p.read_text())["tables"]["majority"].items()}


def offline(compare: dict[str, Any], policy: str, cost: float) -> tuple[float, float]:
    """(success of ``policy``'s majority-vote curve in ``compare`` (`majority_curves`) at mean
    cost ``cost``, linearly between its points in cost order; the nearest end outside; the
    curve's largest cost). NaN when the reports have no such curve."""
    curve = compare.get(policy)
    if curve is None:
        return float("nan"), float("nan")
    costs, success = np.asarray(curve["cost"]), np.asarray(curve["success"])
    order = np.argsort(costs, kind="stable")
    return float(np.interp(cost, costs[order], success[order])), float(costs.max())


def one_run(
    args: argparse.Namespace,
    policy: str,
    budget: float,
    menu: Any,
    calibration: list[Path],
    traffic: list[tuple[str, dict[str, float]]],
    upstream: str,
) -> dict[str, Any]:
    from howhard.serve.requestlog import read_log, report

    tag = f"{policy}-{budget:g}"
    log_path = args.work / f"{tag}.requests.jsonl"
    log_path.unlink(missing_ok=True)
    config = serve_config(
        args.work / f"{tag}.toml",
        menu,
        calibration,
        upstream,
        {
            "policy": policy,
            "budget": budget,
            "observe": "majority",
            "task": "cruxeval",
            "max_per_query": 16,
            "max_rounds": 8,
            "seed": 0,
            "request_log": log_path,
            "log_level": "warning",
        },
    )
    port = free_port()
    env = {**os.environ, "HOWHARD_API_KEYS": KEY, "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, "-m", "howhard", "serve", "--config", str(config)]
    started = time.monotonic()
    with (args.work / f"{tag}.serve.log").open("wb") as out:
        server = subprocess.Popen(
            [*command, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/ready", server, 600, KEY)
        ready = time.monotonic() - started
        won: list[float] = []
        latency: list[float] = []
        failed = [0]
        headers = {"Authorization": f"Bearer {KEY}"}

        def ask(c: httpx.Client, i: int) -> None:
            prompt, rewards = traffic[i]
            body = {
                "model": "howhard",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 100,
            }
            t0 = time.perf_counter()
            answer = c.post("/v1/chat/completions", json=body)
            latency.append(time.perf_counter() - t0)
            if answer.status_code != 200:
                failed[0] += 1
                return
            won.append(rewards[answer.json()["choices"][0]["message"]["content"]])

        with (
            httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as c,
            ThreadPoolExecutor(args.clients) as pool,
        ):
            for p in range(args.passes):
                httpx.post(f"{upstream}/reset", json={"seed": p + 1}).raise_for_status()
                order = np.random.default_rng([args.seed, p]).permutation(len(traffic))
                list(pool.map(lambda i: ask(c, int(i)), order))
            metrics = c.get("/metrics").text
            wrapped = httpx.get(f"{upstream}/stats").json()["wrapped"]
    finally:
        stop(server)
    entries = read_log(log_path)
    rep = report(entries, budget)
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "howhard",
            "serve",
            "--report",
            str(log_path),
            "--budget",
            str(budget),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    (args.out / "reports").mkdir(parents=True, exist_ok=True)
    (args.out / "reports" / f"{tag}.md").write_text(
        f"`howhard serve --report {tag}.requests.jsonl --budget {budget:g}`\n\n```\n{shown}```\n"
    )
    knob = [line for line in metrics.splitlines() if line.startswith("howhard_knob")]
    success = float(np.mean(won)) if won else float("nan")
    at_cost, top = offline(args.compare_report, policy, rep.mean_cost)
    return {
        "policy": policy,
        "budget": budget,
        "requests": rep.requests,
        "failed": failed[0],
        "failed_in_log": rep.failed,
        "mean_cost": rep.mean_cost,
        "mean_cost_second_half": rep.mean_cost_second_half,
        "ratio": rep.ratio,
        "success": success,
        "offline_success_at_cost": at_cost,
        "offline_max_cost": top,
        "samples": rep.samples,
        "cost_by_decoder": rep.cost_by_decoder,
        "rounds": {str(k): v for k, v in sorted(rep.rounds.items())},
        "stops": rep.stops,
        "knob_gauge": knob[-1].split()[-1] if knob else None,
        "wrapped": wrapped,
        "ready_seconds": ready,
        "latency_ms_p50": 1000 * float(np.percentile(latency, 50)),
        "latency_ms_p99": 1000 * float(np.percentile(latency, 99)),
        "warning": "\n".join(
            line
            for line in (args.work / f"{tag}.serve.log").read_text().splitlines()
            if "warning: the budget" in line
        ),
    }


def markdown(results: list[dict[str, Any]], names: list[str]) -> str:
    short = {
        n: n.replace("codellama-", "cl-").replace("-turbo-0613", "").replace("-0613", "")
        for n in names
    }
    head = (
        "| policy | budget | requests | realised cost | realised / budget | 2nd half | success "
        "| offline success at that cost | rounds (mean) | samples by decoder |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )
    lines = [head]
    for r in results:
        rounds = sum(int(k) * v for k, v in r["rounds"].items()) / r["requests"]
        samples = ", ".join(f"{short[n]}: {r['samples'][n]}" for n in names if n in r["samples"])
        lines.append(
            f"| {r['policy']} | {r['budget']:g} | {r['requests']} | {r['mean_cost']:.3f} | "
            f"{r['ratio']:.3f} | {r['mean_cost_second_half']:.3f} | {r['success']:.3f} | "
            f"{r['offline_success_at_cost']:.3f} | {rounds:.2f} | {samples} |"
        )
    return "\n".join(lines) + "\n"


def write_results(args: argparse.Namespace, menu: Any, results: list[dict[str, Any]]) -> None:
    """results.json and results.md in ``args.out`` (rewritten after every run)."""
    meta = {
        "menu": [{"name": d.name, "cost": d.cost} for d in menu.decoders],
        "calibration_rows": args.calibration,
        "traffic_rows": args.traffic,
        "passes": args.passes,
        "clients": args.clients,
        "seed": args.seed,
    }
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "runs": results}, indent=1) + "\n"
    )
    (args.out / "results.md").write_text(markdown(results, menu.names))


def cmd_run(args: argparse.Namespace) -> None:
    from howhard.menu import read_menu
    from howhard.pool import write_pool
    from howhard.runs.menu import menu_pools

    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    args.compare_report = majority_curves(args.compare)
    menu = read_menu(args.menu)
    cal_rows = tuple(int(x) for x in args.calibration.split(":"))
    calibration = []
    for d, pool in zip(menu.decoders, menu_pools(menu, cal_rows), strict=True):
        path = args.work / "calibration" / f"{d.name}.jsonl.gz"
        path.parent.mkdir(exist_ok=True)
        write_pool(pool, path)
        calibration.append(path)
    # traffic: each problem's prompt and the reward of every answer any decoder pooled for it
    pools = menu_pools(menu, tuple(int(x) for x in args.traffic.split(":")))
    traffic = []
    for i, prompt in enumerate(pools[0].prompts):
        rewards: dict[str, float] = {}
        for pool in pools:
            for a, r in zip(pool.extras[i]["answers"], pool.rewards[i], strict=True):
                if rewards.setdefault(a, float(r)) != float(r):
                    raise SystemExit(f"answer {a!r} of problem {i} is scored both ways")
        traffic.append((prompt, rewards))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (args.work / "upstream.log").open("wb") as out:
        upstream = subprocess.Popen(
            [sys.executable, __file__, "upstream", "--menu", str(args.menu), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    runs = [r for r in RUNS if not args.only or r[0] in args.only.split(",")]
    results = []
    try:
        wait_for(f"{url}/v1/models", upstream, 120)
        for policy, budget in runs:
            t0 = time.monotonic()
            result = one_run(args, policy, budget, menu, calibration, traffic, url)
            result["seconds"] = time.monotonic() - t0
            results.append(result)
            print(
                f"{policy} budget {budget:g}: cost {result['mean_cost']:.3f} "
                f"({result['ratio']:.3f} of budget), success {result['success']:.3f} "
                f"(offline {result['offline_success_at_cost']:.3f}), {result['requests']} "
                f"requests, {result['seconds']:.0f} s",
                flush=True,
            )
            write_results(args, menu, results)
    finally:
        stop(upstream)


def cmd_plot(args: argparse.Namespace) -> None:
    """Each policy's offline curve (compare's report, majority vote) and its live runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compare = majority_curves(args.compare)
    runs = json.loads((args.out / "results.json").read_text())["runs"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, policy in enumerate(dict.fromkeys(r["policy"] for r in runs)):
        color = f"C{i}"
        curve = compare.get(policy)
        if curve is not None:
            order = np.argsort(curve["cost"], kind="stable")
            x, y = np.asarray(curve["cost"])[order], np.asarray(curve["success"])[order]
            ax.plot(x, y, "-", color=color, alpha=0.5, label=f"{policy} (compare, offline)")
        live = [r for r in runs if r["policy"] == policy]
        ax.plot(
            [r["mean_cost"] for r in live],
            [r["success"] for r in live],
            "o",
            color=color,
            label=f"{policy} (howhard serve, live)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per request (prices 0.2 / 0.3 / 0.8 / 2 / 60 per sample)")
    ax.set_ylabel("success (majority vote)")
    ax.set_title("CRUXEval menu, problems 400-799: served live vs replayed offline")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "plot.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upstream", help="the replay upstream alone")
    up.add_argument("--menu", type=Path, required=True)
    up.add_argument("--port", type=int, required=True)
    run = sub.add_parser("run", help="every (policy, budget) of RUNS through howhard serve")
    run.add_argument("--menu", type=Path, required=True, help="menu.toml of howhard train --menu")
    run.add_argument(
        "--compare", type=Path, nargs="+", required=True, help="howhard compare's report.json(s)"
    )
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--work", type=Path, required=True)
    run.add_argument("--calibration", default="0:400", help="pool rows the server calibrates on")
    run.add_argument("--traffic", default="400:800", help="pool rows sent as requests")
    run.add_argument("--passes", type=int, default=3)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--clients", type=int, default=4, help="requests in flight at a time")
    run.add_argument("--only", help="policies to run, comma-separated (default: all of RUNS)")
    plot = sub.add_parser("plot", help="plot.png of --out's results.json over compare's curves")
    plot.add_argument(
        "--compare", type=Path, nargs="+", required=True, help="howhard compare's report.json(s)"
    )
    plot.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    {"upstream": cmd_upstream, "run": cmd_run, "plot": cmd_plot}[args.command](args)


if __name__ == "__main__":
    main()
