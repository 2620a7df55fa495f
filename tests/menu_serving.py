"""Helpers for ``howhard serve``'s menu mode in tests and benchmarks (plain functions, no fixtures).

``menu_pools(dir, n)`` writes two aligned pools of arithmetic queries ("small": 8 cheap samples,
often wrong on the hard ones; "large": 4 dear samples, mostly right), each sample's answer kept.
``ReplayUpstream(pools)`` is an httpx handler that answers each (model, prompt) with that query's
pooled samples in order, ``n`` at a time: text ``"<answer> [<model initial>-<letter>]"`` (the
letter: the sample's index in the pool), usage from the pool's tokens. ``menu_proxy(handler,
pools, ...)`` is the real `MenuStartup` and proxy over it (fleets on an httpx MockTransport),
ready; ``ask(proxy, bodies)`` sends requests in one event loop. ``menu_config`` writes a serve
config with [[decoder]] tables, ``menu_server(config)`` runs ``howhard serve`` on it for real.
"""

from __future__ import annotations

import asyncio
import json
import os
import string
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from serving import API_KEY, AUTH

from howhard.menu import Decoder
from howhard.pool import Pool, read_pool, write_pool
from howhard.tasks import get_task
from howhard.tasks.arithmetic import answer_of

LETTERS = string.ascii_lowercase + string.ascii_uppercase


def menu_pools(
    workdir: Path, n: int = 60, seed: int = 0, shift: float = 0.0, tag: str = ""
) -> tuple[Path, Path]:
    """(small.jsonl, large.jsonl): ``n`` arithmetic queries; query i's small decoder is right
    with probability p_i ~ Beta(2, 1.2) lowered by ``shift`` (harder traffic) and otherwise
    answers one of two wrong values; the large one is right with probability 0.6 + 0.4 p_i.
    Every sample keeps its answer and its tokens (the answer's characters + 3)."""
    rng = np.random.default_rng(seed)
    queries = get_task("arithmetic").queries(n, seed + 100)
    rows: dict[str, list[dict[str, Any]]] = {"small": [], "large": []}
    for q in queries:
        right = answer_of(q.prompt)
        p = float(np.clip(rng.beta(2.0, 1.2) - shift, 0.0, 1.0))
        for name, k, pr in (("small", 8, p), ("large", 4, 0.6 + 0.4 * p)):
            answers = [
                str(right) if rng.random() < pr else str(right + int(rng.choice([-1, 7])))
                for _ in range(k)
            ]
            rows[name].append(
                {
                    "id": q.id,
                    "prompt": q.prompt,
                    "rewards": [float(a == str(right)) for a in answers],
                    "answers": answers,
                    "tokens": [len(a) + 3 for a in answers],
                }
            )
    paths = []
    for name, data in rows.items():
        path = workdir / f"{name}{tag}.jsonl"
        write_pool(data, path)
        paths.append(path)
    return paths[0], paths[1]


def sample_text(answer: str | None, model: str, j: int) -> str:
    """A replayed sample's text: its answer, then its model's initial and a letter naming its
    index j in the pool (no digits: the answer is the text's first integer)."""
    return f"{answer or ''} [{model[0]}-{LETTERS[j]}]".strip()


def sample_of(text: str) -> tuple[str, int]:
    """(model initial, pool index) of a replayed sample, from its text."""
    tag = text.rsplit("[", 1)[1].rstrip("]")
    return tag[0], LETTERS.index(tag[2])


class ReplayUpstream:
    """An OpenAI-compatible upstream (an httpx MockTransport handler) that replays pools: the
    model named ``models[d]`` answers a prompt with the next samples of that query in pool
    ``pools[d]``, in pool order (with ``cycle``, from the start again when a round would run past
    the end). ``fail``: model names that answer HTTP 500. Counts samples."""

    def __init__(self, pools: Sequence[Pool], models: Sequence[str], cycle: bool = False) -> None:
        self.cycle = cycle  # True: a query asked again replays its samples from the start
        self.rows = {
            m: {p: i for i, p in enumerate(pool.prompts)}
            for m, pool in zip(models, pools, strict=True)
        }
        self.pools = dict(zip(models, pools, strict=True))
        self.next: Counter[tuple[str, str]] = Counter()
        self.samples: Counter[str] = Counter()
        self.fail: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        model = body["model"]
        if model in self.fail:
            return httpx.Response(500, json={"error": {"message": "down"}})
        prompt = body.get("prompt") or body["messages"][-1]["content"]
        pool, i = self.pools[model], self.rows[model][prompt]
        start, k = self.next[(model, prompt)], int(body.get("n", 1))
        answers, tokens = pool.extras[i]["answers"], pool.extras[i]["tokens"]
        if start + k > len(answers):
            if not self.cycle or k > len(answers):
                return httpx.Response(400, json={"error": {"message": "the pool ran out"}})
            start = 0
        self.next[(model, prompt)] = start + k
        self.samples[model] += k
        chat = "messages" in body
        choices = []
        for j in range(start, start + k):
            text = sample_text(answers[j], model, j)
            choice: dict[str, Any] = {"index": j - start, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choices.append(choice)
        used = sum(tokens[start : start + k])
        usage = {"prompt_tokens": 5, "completion_tokens": used, "total_tokens": 5 + used}
        return httpx.Response(200, json={"choices": choices, "usage": usage})


def decoders(
    small_pool: Path, large_pool: Path, fields: dict[str, dict[str, Any]] | None = None
) -> tuple[Decoder, Decoder]:
    """The two decoders of `menu_pools`, priced 1 and 4 per sample unless ``fields`` says
    otherwise (``{"small": {...}, "large": {...}}``: Decoder fields)."""
    specs = []
    for name, pool, cost in (("small", small_pool, 1.0), ("large", large_pool, 4.0)):
        fields_ = {"cost": cost, **(fields or {}).get(name, {})}
        specs.append(
            Decoder(
                name=name,
                pool=pool,
                upstream=(f"http://{name}:1",),
                model=f"{name}-model",
                **fields_,
            )
        )
    return specs[0], specs[1]


def menu_proxy(handler: Any, pools: tuple[Path, Path], **settings: Any) -> Any:
    """The real menu-mode proxy over ``handler`` (both decoders' fleets on it), started: its
    family fitted and paced on the pools; ``settings``: further `ServeConfig` fields."""
    from howhard.backends.openai import Fleet
    from howhard.serve import MenuStartup
    from howhard.serve.app import Upstream
    from howhard.serve.config import ServeConfig

    fields = settings.pop("decoder_fields", None)
    config = ServeConfig(
        **{
            "decoders": decoders(*pools, fields),
            "policy": "escalate",
            "task": "arithmetic",
            "budget": 3.0,
            "max_per_query": 16,
            "api_keys": (API_KEY,),
            "retries": 0,
            **settings,
        }
    )
    startup = MenuStartup(config)
    menu = startup.proxy.menu
    menu.decoders = [
        (d, Upstream(Fleet(d.upstream, transport=httpx.MockTransport(handler), retries=0), u.model))
        for d, u in menu.decoders
    ]
    return startup.run(wait_for_upstream=False)


def ask(
    proxy: Any, bodies: Sequence[dict[str, Any]], path: str = "/v1/completions"
) -> list[httpx.Response]:
    """POST each body to ``proxy``'s app in turn, in one event loop."""
    from howhard.serve.app import create_app

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(proxy))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            return [await client.post(path, json=b, headers=AUTH) for b in bodies]

    return asyncio.run(go())


def completion(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"model": "howhard", "prompt": prompt, "max_tokens": 8, **fields}


def pools_of(paths: tuple[Path, Path]) -> list[Pool]:
    return [read_pool(p) for p in paths]


def menu_config(path: Path, decoder_tables: Sequence[dict[str, Any]], **settings: Any) -> Path:
    """Write a ``howhard serve`` TOML config: ``settings`` at the top, then one [[decoder]]
    table per dict (values: strings, numbers, lists of strings, or dicts of those)."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(str(v) if isinstance(v, Path) else v)

    lines = [f"{k} = {value(v)}" for k, v in settings.items()]
    for table in decoder_tables:
        lines += ["", "[[decoder]]", *(f"{k} = {value(v)}" for k, v in table.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def menu_server(config: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[Any]:
    """``howhard serve --config CONFIG`` on a free loopback port, with client key `API_KEY`,
    once ready; stopped when the block ends."""
    from servers import Server, free_port
    from serving import wait_ready

    port = free_port()
    command = [sys.executable, "-m", "howhard", "serve", "--config", str(config)]
    command += ["--port", str(port), *extra]
    environ = {
        **os.environ,
        "HOWHARD_API_KEYS": API_KEY,
        "OMP_WAIT_POLICY": "PASSIVE",
        **(env or {}),
    }
    with Server(command, port, ready_path="/health", timeout=120, env=environ) as server:
        server.start()
        wait_ready(server)
        yield server
