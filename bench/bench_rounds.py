"""The latency that rounds add in `howhard serve`'s menu mode; run as
``python bench/bench_rounds.py [--requests 200] [--delay 0.02]``.

Two canned-answer stub upstreams (tests/stub_upstream.py, each answering after ``--delay``
seconds) form a menu; the proxy (the real `MenuStartup`, `Proxy` and fleets, served by uvicorn on
loopback in this process) runs a policy that draws exactly R rounds of one sample each, alternating
the decoders, for R = 1, 2, 4, 8 (``--rounds``). For each R it sends ``--requests`` sequential chat
requests (after a warm-up) and, interleaved with them, the same request straight to a stub.

Printed per R: p50/p99 of the proxied request, of a direct upstream call, the latency a round adds
(proxied / R) and the proxy's own overhead per round ((proxied - R x direct p50) / R, at p50 and
p99 of the proxied time). The policy is registered under the name ``bench-rounds`` in this
process only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


class FixedRounds:
    """R rounds of one sample, decoder r mod M in round r; returns the first sample. Knob R."""

    name, discrete = "bench-rounds", True

    def __init__(self) -> None:
        self.knobs = (1.0, 64.0)
        self.rounds = 1

    def fit(self, data: Any, observe: str) -> FixedRounds:
        return self

    def at(self, knob: float) -> FixedRounds:
        policy = FixedRounds()
        policy.rounds = int(knob)
        return policy

    def decide(self, state: Any) -> Any:
        from howhard.menu import Draw

        if state.rounds >= self.rounds:
            return None
        return Draw(state.rounds % len(state.room), 1)

    def choose(self, state: Any) -> int:
        return 0


def serve_in_thread(app: Any, port: int) -> Any:
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread


def main() -> None:
    from menu_serving import menu_pools
    from servers import free_port
    from serving import API_KEY
    from stub_upstream import MODEL, stub_server

    from howhard.menu import Decoder
    from howhard.serve import MenuStartup, create_app
    from howhard.serve.config import ServeConfig
    from howhard.stopping import FAMILIES
    from howhard.tasks import get_task

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.02, help="stub seconds per answer")
    parser.add_argument("--rounds", default="1,2,4,8")
    args = parser.parse_args()
    FAMILIES["bench-rounds"] = FixedRounds  # what howhard.serve.rounds.families() lists
    questions = [q.prompt for q in get_task("arithmetic").queries(97, seed=5)]
    workdir = Path(tempfile.mkdtemp(prefix="bench-rounds-"))
    small_pool, large_pool = menu_pools(workdir, 20)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    print(
        f"stub delay {args.delay * 1000:.0f} ms, {args.requests} requests per row; times in ms\n"
        "| rounds | proxied p50 | proxied p99 | direct p50 | direct p99 | per round p50 | "
        "per round p99 | overhead/round p50 | overhead/round p99 |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    with stub_server(args.delay) as one, stub_server(args.delay) as two:
        for r in (int(x) for x in args.rounds.split(",")):
            decoders = tuple(
                Decoder(name=name, cost=1.0, pool=pool, upstream=(server.url,), model=MODEL)
                for name, pool, server in (("a", small_pool, one), ("b", large_pool, two))
            )
            config = ServeConfig(
                decoders=decoders,
                policy="bench-rounds",
                knob=float(r),
                budget=float(r),
                max_per_query=64,
                max_rounds=64,
                api_keys=(API_KEY,),
            )
            proxy = MenuStartup(config).run(wait_for_upstream=False)
            port = free_port()
            server, thread = serve_in_thread(create_app(proxy), port)
            direct_t, proxied_t = [], []
            with (
                httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth) as to_proxy,
                httpx.Client(base_url=one.url) as to_stub,
            ):
                for i in range(args.warmup + args.requests):
                    q = [{"role": "user", "content": questions[i % len(questions)]}]
                    body = {"messages": q, "max_tokens": 8, "temperature": 0.0, "seed": 0}
                    t0 = time.perf_counter()
                    answer = to_proxy.post(
                        "/v1/chat/completions", json={**body, "model": "howhard"}
                    )
                    t1 = time.perf_counter()
                    direct = to_stub.post("/v1/chat/completions", json={**body, "model": MODEL})
                    t2 = time.perf_counter()
                    answer.raise_for_status()
                    direct.raise_for_status()
                    assert answer.headers["x-howhard-rounds"] == str(r)
                    if i >= args.warmup:
                        proxied_t.append(t1 - t0)
                        direct_t.append(t2 - t1)
            server.should_exit = True
            thread.join()
            p = 1000 * np.percentile(proxied_t, [50, 99])
            d = 1000 * np.percentile(direct_t, [50, 99])
            per = p / r
            over = (p - r * d[0]) / r
            print(
                f"| {r} | {p[0]:.1f} | {p[1]:.1f} | {d[0]:.1f} | {d[1]:.1f} | {per[0]:.1f} | "
                f"{per[1]:.1f} | {over[0]:.1f} | {over[1]:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
