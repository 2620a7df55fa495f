"""Time `howhard serve`'s start-up: seconds from launching the process to GET /ready answering 200,
with a ``--prompts``-prompt calibration pool (arithmetic queries), on the first start (an empty
feature cache: every calibration prompt is featurised) and on restarts (the features come from
the cache the first start wrote); run as ``python bench/bench_startup.py [--features hidden]``.

The upstream is the canned-answer stub of tests/stub_upstream.py (it answers at once, so the time
is the proxy's own). Also prints the proxy's own "ready in" line (which starts after its imports).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=1000, help="calibration pool size")
    parser.add_argument("--features", default="hidden", help="the predictor's feature source")
    parser.add_argument("--restarts", type=int, default=3, help="timed restarts after the first")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from serving import calibration_pool, howhard_server, tiny_predictor, wait_ready
    from stub_upstream import stub_server

    print(
        f"howhard serve start-up, launch to /ready 200: {args.prompts} calibration prompts, "
        f"{args.features} features, stub upstream"
    )
    print(f"{'start':10} {'seconds':>8}  proxy's log")
    with tempfile.TemporaryDirectory() as tmp, stub_server() as upstream:
        workdir = Path(tmp)
        predictor, _ = tiny_predictor(workdir, args.features)
        pool = calibration_pool(workdir / "calibration.jsonl", args.prompts)
        env = {"XDG_CACHE_HOME": str(workdir / "cache")}
        for i in range(1 + args.restarts):
            start = time.monotonic()
            with howhard_server(upstream.url, predictor, pool, env=env, ready=False) as proxy:
                wait_ready(proxy, timeout=3600)
                seconds = time.monotonic() - start
                line = re.search(r"ready in .*", proxy.log.read_text())
            name = "first" if i == 0 else f"restart {i}"
            print(f"{name:10} {seconds:8.2f}  {line.group(0) if line else '?'}", flush=True)


if __name__ == "__main__":
    main()
