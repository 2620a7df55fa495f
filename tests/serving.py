"""Helpers to run ``howhard serve`` for real in tests and benchmarks (plain functions, no fixtures).

``tiny_predictor(dir)`` trains a real success predictor on the embedded SmolLM2's hidden state from
a small arithmetic pool (rewards made up from the digit count: quick, and enough to serve), and
writes the pool as a calibration file. ``howhard_server(upstream_url, predictor, calibration)``
runs ``howhard serve`` in front of an upstream on a free loopback port until the block ends.
``fake_proxy(handler, ...)`` is the real `Proxy` and fleet in process over a fake upstream (an
httpx handler), deciding a fixed sample count; ``call(proxy, ...)`` sends it one request.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn

import httpx
from servers import Server, free_port

API_KEY = "sk-howhard-test"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def tiny_predictor(
    workdir: Path, features: str = "hidden", n: int = 60, model: str | None = None
) -> tuple[Path, Path]:
    """(predictor.npz, calibration.jsonl) in ``workdir``, made once and reused; ``features``:
    the feature source (``hidden``: SmolLM2's hidden state; ``ngrams``: no model, fastest);
    ``model``: the LM of ``hidden`` (None: SmolLM2)."""
    from howhard.runs import TrainSpec, run_train
    from howhard.tasks import get_task

    name = f"{features}-{model}" if model else features
    predictor, pool = workdir / f"predictor-{name}.npz", workdir / "pool.jsonl"
    if predictor.exists():
        return predictor, pool
    queries = get_task("arithmetic").queries(n, 7)
    with pool.open("w") as f:
        for i, q in enumerate(queries):
            digits = max(len(t) for t in q.prompt.replace("?", " ").split() if t.isdigit())
            wins = {1: 6, 2: 2}.get(digits, 0) + i % 2  # easier with fewer digits
            rewards = [1.0] * wins + [0.0] * (8 - wins)
            f.write(json.dumps({"id": q.id, "prompt": q.prompt, "rewards": rewards}) + "\n")
    run_train(TrainSpec(pool=pool, out=predictor, features=features, model=model, head="logistic"))
    return predictor, pool


def calibration_pool(path: Path, n: int, seed: int = 21) -> Path:
    """A calibration pool file of ``n`` arithmetic queries (rewards made up: calibration reads
    only the prompts)."""
    from howhard.tasks import get_task

    with path.open("w") as f:
        for i, q in enumerate(get_task("arithmetic").queries(n, seed)):
            f.write(json.dumps({"id": q.id, "prompt": q.prompt, "rewards": [i % 2, 1.0]}) + "\n")
    return path


def serve_command(
    port: int, upstreams: Sequence[str], predictor: Path, calibration: Path, *extra: str
) -> list[str]:
    command = [sys.executable, "-m", "howhard", "serve", "--port", str(port)]
    for url in upstreams:
        command += ["--upstream", url]
    return [*command, "--predictor", str(predictor), "--calibration", str(calibration), *extra]


@contextmanager
def howhard_server(
    upstreams: str | Sequence[str],
    predictor: Path,
    calibration: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    ready: bool = True,
) -> Iterator[Server]:
    """``howhard serve`` (budget 2, at most 4 samples unless ``extra`` says otherwise) in front of
    ``upstreams``, with client key `API_KEY`, once it is ready (GET /ready answers 200; with
    ``ready`` false: once it listens); stopped (SIGTERM) when the block ends. Its feature cache
    is a fresh temporary directory unless ``env`` names an ``XDG_CACHE_HOME``."""
    port = free_port()
    urls = [upstreams] if isinstance(upstreams, str) else list(upstreams)
    flags = ["--budget", "2", "--max-per-query", "4", *extra]
    command = serve_command(port, urls, predictor, calibration, *flags)
    cache = tempfile.TemporaryDirectory(prefix="howhard-cache-")  # unless env names one
    environ = {
        **os.environ,
        "HOWHARD_API_KEYS": API_KEY,
        "OMP_WAIT_POLICY": "PASSIVE",
        "XDG_CACHE_HOME": cache.name,
        **(env or {}),
    }
    with cache, Server(command, port, ready_path="/health", timeout=120, env=environ) as server:
        server.start()
        if ready:
            wait_ready(server)
        yield server


def wait_ready(server: Server, timeout: float = 600) -> float:
    """Seconds until ``server`` (a howhard serve) answers GET /ready with 200; raises
    RuntimeError with its log when it exits or is not ready within ``timeout`` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.proc is not None and server.proc.poll() is not None:
            _fail(server, f"exited with code {server.proc.returncode}")
        with suppress(httpx.TransportError):
            answer = httpx.get(server.url + "/ready", headers=AUTH, timeout=5.0)
            if answer.status_code == 200:
                return time.monotonic() - start
        time.sleep(0.05)
    _fail(server, f"was not ready within {timeout}s")


def _fail(server: Server, what: str) -> NoReturn:
    tail = server.log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"howhard serve {what}; its output:\n{tail}")


def tiny_router(workdir: Path, features: str = "ngrams") -> Path:
    """A real router (P(strong beats weak | x)) trained on made-up weak and strong pools of the
    `tiny_predictor` queries: strong wins on the 3-digit questions."""
    from howhard.runs import TrainSpec, run_train

    router = workdir / f"router-{features}.npz"
    if router.exists():
        return router
    _, pool = tiny_predictor(workdir, features)
    strong = workdir / "strong.jsonl"
    with pool.open() as weak_rows, strong.open("w") as out:
        for line in weak_rows:
            row = json.loads(line)
            hard = max(len(t) for t in row["prompt"].replace("?", " ").split() if t.isdigit()) >= 3
            row["rewards"] = [1.0] * 4 if hard else row["rewards"][:4]
            out.write(json.dumps(row) + "\n")
    spec = TrainSpec(pool=pool, out=router, features=features, head="logistic", strong=strong)
    run_train(spec)
    return router


def fake_proxy(
    handler: Any,
    *,
    client_key: str,
    upstream_key: str,
    upstream: str = "http://up:1",
    samples: int = 3,
    budget: float = 2.0,
    k: int = 4,
    **config: Any,
) -> Any:
    """The real proxy and fleet over ``handler`` (an httpx MockTransport handler), every request
    decided ``samples`` samples; ``config``: further `ServeConfig` settings."""
    import asyncio

    import numpy as np

    from howhard.allocate import binary_gains
    from howhard.backends.openai import Fleet
    from howhard.rerank.rerankers import MajorityVote
    from howhard.serve.app import Decision, Proxy, Upstream
    from howhard.serve.config import ServeConfig
    from howhard.serve.pacing import BudgetPacer
    from howhard.tasks import get_task

    settings = {
        "upstreams": (upstream,),
        "predictor": __file__,
        "calibration": __file__,
        "budget": budget,
        "max_per_query": k,
        "api_keys": (client_key,),
        "upstream_api_key": upstream_key,
        "retries": 1,
        **config,
    }
    cfg = ServeConfig(**settings)
    fleet = Fleet(
        cfg.upstreams,
        api_key=upstream_key,
        transport=httpx.MockTransport(handler),
        retries=cfg.retries,
        backoff=0,
        sleep=lambda s: asyncio.sleep(0),
    )
    pacer = BudgetPacer(budget, k, binary_gains(np.linspace(0.05, 0.95, 20), k))
    return Proxy(
        cfg,
        lambda texts: [Decision(samples, "weak", 0.25, 0.5) for _ in texts],
        Upstream(fleet, "up-model"),
        None,
        MajorityVote(get_task("arithmetic").answer),
        None,
        pacer,
    )


def call(proxy: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request to ``proxy``'s app, in process."""
    import asyncio

    from howhard.serve.app import create_app

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(proxy))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())
