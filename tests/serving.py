"""Helpers to run ``howhard serve`` for real in tests and benchmarks (plain functions, no fixtures).

``tiny_predictor(dir)`` trains a real success predictor on the embedded SmolLM2's hidden state from
a small arithmetic pool (rewards made up from the digit count: quick, and enough to serve), and
writes the pool as a calibration file. ``howhard_server(upstream_url, predictor, calibration)``
runs ``howhard serve`` in front of an upstream on a free loopback port until the block ends.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from servers import Server, free_port

API_KEY = "sk-howhard-test"


def tiny_predictor(workdir: Path, features: str = "hidden", n: int = 60) -> tuple[Path, Path]:
    """(predictor.npz, calibration.jsonl) in ``workdir``, made once and reused; ``features``:
    the feature source (``hidden``: SmolLM2's hidden state; ``ngrams``: no model, fastest)."""
    from howhard.runs import TrainSpec, run_train
    from howhard.tasks import get_task

    predictor, pool = workdir / f"predictor-{features}.npz", workdir / "pool.jsonl"
    if predictor.exists():
        return predictor, pool
    queries = get_task("arithmetic").queries(n, 7)
    with pool.open("w") as f:
        for i, q in enumerate(queries):
            digits = max(len(t) for t in q.prompt.replace("?", " ").split() if t.isdigit())
            wins = {1: 6, 2: 2}.get(digits, 0) + i % 2  # easier with fewer digits
            rewards = [1.0] * wins + [0.0] * (8 - wins)
            f.write(json.dumps({"id": q.id, "prompt": q.prompt, "rewards": rewards}) + "\n")
    run_train(TrainSpec(pool=pool, out=predictor, features=features, head="logistic"))
    return predictor, pool


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
) -> Iterator[Server]:
    """``howhard serve`` (budget 2, at most 4 samples unless ``extra`` says otherwise) in front of
    ``upstreams``, with client key `API_KEY`; stopped (SIGTERM) when the block ends."""
    port = free_port()
    urls = [upstreams] if isinstance(upstreams, str) else list(upstreams)
    flags = ["--budget", "2", "--max-per-query", "4", *extra]
    command = serve_command(port, urls, predictor, calibration, *flags)
    environ = {
        **os.environ,
        "HOWHARD_API_KEYS": API_KEY,
        "OMP_WAIT_POLICY": "PASSIVE",
        **(env or {}),
    }
    with Server(command, port, ready_path="/health", timeout=120, env=environ) as server:
        yield server.start()


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
