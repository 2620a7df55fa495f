"""`howhard serve` starts listening at once and calibrates in the background: /health answers,
/ready and completion requests answer 503 with the progress until the proxy is ready; the
calibration pool's features are cached per feature source, so a restart featurises nothing; bad
settings fail before it listens, a failure while calibrating stops it with the message. In
process with n-gram features, and for real (a `howhard serve` process, the LM's hidden state, a
1,000-prompt calibration pool) in the tests marked slow."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from servers import free_port
from serving import (
    API_KEY,
    AUTH,
    calibration_pool,
    howhard_server,
    serve_command,
    tiny_predictor,
    tiny_router,
    wait_ready,
)
from stub_upstream import stub_server

from howhard.errors import ConfigError, PoolError
from howhard.features import cached_transform
from howhard.serve import Startup, create_app, feature_cache_path
from howhard.serve.app import Proxy
from howhard.serve.config import ServeConfig
from howhard.tasks import get_task

CHAT = {"model": "howhard", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_predictor(tmp_path_factory.mktemp("startup"), "ngrams")


def config(files: tuple[Path, Path], **settings: Any) -> ServeConfig:
    predictor, pool = files
    base: dict[str, Any] = {
        "upstreams": ("http://127.0.0.1:9",),
        "upstream_model": "up-model",  # no upstream to ask
        "predictor": predictor,
        "calibration": pool,
        "budget": 2.0,
        "max_per_query": 4,
        "api_keys": (API_KEY,),
    }
    return ServeConfig(**{**base, **settings})


def call(proxy: Proxy, method: str, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(proxy))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            return await client.request(method, path, headers=AUTH, **kw)

    return asyncio.run(go())


def test_a_starting_proxy_is_alive_and_answers_503_with_the_reason_until_ready(files, tmp_path):
    startup = Startup(config(files), environ={"XDG_CACHE_HOME": str(tmp_path)})
    proxy = startup.proxy
    assert call(proxy, "GET", "/health").status_code == 200
    ready = call(proxy, "GET", "/ready")
    assert ready.status_code == 503
    assert ready.json() == {"status": "starting", "problems": ["starting"]}
    refused = call(proxy, "POST", "/v1/chat/completions", json=CHAT)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == "not_ready"
    assert "not ready: starting" in refused.json()["error"]["message"]
    assert call(proxy, "GET", "/v1/models").status_code == 503  # its name is not known yet
    metrics = call(proxy, "GET", "/metrics").text
    assert "howhard_ready 0" in metrics
    startup.run()
    assert proxy.starting is None
    models = call(proxy, "GET", "/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["up-model", "howhard"]
    metrics = call(proxy, "GET", "/metrics").text
    assert "howhard_ready 1" in metrics
    assert 'howhard_calibration_prompts{source="featurised"} 60' in metrics


def test_a_failed_start_up_says_why_and_asks_for_no_retry(files, tmp_path):
    proxy = Startup(config(files), environ={"XDG_CACHE_HOME": str(tmp_path)}).proxy
    proxy.fail("start-up failed: the cache is unreadable")
    ready = call(proxy, "GET", "/ready")
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "failed",
        "problems": ["start-up failed: the cache is unreadable"],
    }
    refused = call(proxy, "POST", "/v1/chat/completions", json=CHAT)
    assert refused.status_code == 503 and "retry-after" not in refused.headers


def test_calibration_features_are_cached_per_feature_source_and_reused(files, tmp_path, capsys):
    environ = {"XDG_CACHE_HOME": str(tmp_path)}
    first = Startup(config(files), environ=environ)
    first.run()
    cache = feature_cache_path(first.source, environ)
    assert cache.parent == tmp_path / "howhard" / "features" and cache.name.startswith("ngrams")
    assert cache.is_file()
    assert dict(first.proxy.metrics.calibration) == {"cache": 0, "featurised": 60}
    err = capsys.readouterr().err
    assert "0/60 featurised" in err and "60/60 featurised" in err
    assert re.search(
        r"ready in [0-9.]+ s: 60 calibration prompts, 0 from cache, 60 featurised", err
    )

    again = Startup(config(files), environ=environ)
    again.run()
    assert dict(again.proxy.metrics.calibration) == {"cache": 60, "featurised": 0}
    assert "60 from cache, 0 featurised" in capsys.readouterr().err
    texts = [q.prompt for q in get_task("arithmetic").queries(30, seed=4)]
    assert first.proxy.decide(texts) == again.proxy.decide(texts)  # the same calibration


def test_no_feature_cache_featurises_at_every_start(files, tmp_path):
    environ = {"XDG_CACHE_HOME": str(tmp_path)}
    for _ in range(2):
        startup = Startup(config(files, cache_features=False), environ=environ)
        startup.run()
        assert dict(startup.proxy.metrics.calibration) == {"cache": 0, "featurised": 60}
    assert not (tmp_path / "howhard").exists()


def test_a_named_feature_cache_is_used_instead(files, tmp_path):
    named = tmp_path / "mine.npz"
    environ = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    Startup(config(files, feature_cache=named), environ=environ).run()
    assert named.is_file() and not (tmp_path / "xdg").exists()


def featurizers_made(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The feature sources whose featurizer serve makes from now on, in order."""
    import howhard.serve

    made: list[str] = []
    real = howhard.serve.get_featurizer
    monkeypatch.setattr(
        howhard.serve, "get_featurizer", lambda f, *a: made.append(f) or real(f, *a)
    )
    return made


def test_a_predictor_on_combined_sources_reads_train_s_cache_file_of_each(
    files, tmp_path, monkeypatch
):
    """`howhard train --features ngrams+task --feature-cache f.npz` keeps each source in its own
    file (f.npz, f.task.npz): serve, given f.npz, reads both and featurises nothing; a part whose
    file is gone is featurised by that part of the featurizer requests use (made once)."""
    from howhard.runs import TrainSpec, run_train

    _, pool = files
    named, predictor = tmp_path / "f.npz", tmp_path / "p.npz"
    run_train(
        TrainSpec(
            pool=pool, out=predictor, features="ngrams+task", head="logistic", feature_cache=named
        )
    )
    assert named.is_file() and (tmp_path / "f.task.npz").is_file()
    before = {f: f.stat().st_mtime_ns for f in (named, tmp_path / "f.task.npz")}
    startup = Startup(config(files, predictor=predictor, feature_cache=named))
    startup.run()
    assert dict(startup.proxy.metrics.calibration) == {"cache": 60, "featurised": 0}
    assert {f: f.stat().st_mtime_ns for f in before} == before
    texts = [q.prompt for q in get_task("arithmetic").queries(5, seed=4)]
    fresh = Startup(config(files, predictor=predictor, cache_features=False))
    fresh.run()  # featurised from scratch, with the two sources' featurizer side by side
    first = startup.proxy.decide(texts)  # each proxy's first decisions: its pacer as started
    assert first == fresh.proxy.decide(texts)
    made = featurizers_made(monkeypatch)
    named.unlink()  # the ngrams part's file
    again = Startup(config(files, predictor=predictor, feature_cache=named))
    again.run()
    assert dict(again.proxy.metrics.calibration) == {"cache": 0, "featurised": 60}
    assert made == ["ngrams+task"]
    assert again.proxy.decide(texts) == first


@pytest.mark.integration
@pytest.mark.parametrize(
    "features", ["hidden-l20+hidden", "hidden-l20+hidden+hidden-prompt-l20+task"]
)
def test_layers_of_one_lm_are_read_in_one_pass_by_the_request_featurizer(
    tmp_path, monkeypatch, capsys, features
):
    """A predictor on ``hidden-l20+hidden`` (two layers of SmolLM2), or on those beside a layer
    read on the whole prompt and the task's features: calibration features missing from the
    per-part cache files are read by the featurizer requests use (one model per text kind, the
    neighbouring layers in one pass, not one per part), written to each part's file, and a
    restart featurises nothing."""
    predictor, pool = tiny_predictor(tmp_path, features, n=24)
    made = featurizers_made(monkeypatch)
    cache = tmp_path / "g.npz"
    files = (predictor, pool)
    startup = Startup(config(files, feature_cache=cache))
    startup.run()
    assert dict(startup.proxy.metrics.calibration) == {"cache": 0, "featurised": 24}
    assert made == [features]
    err = capsys.readouterr().err  # every run of parts reports its progress
    runs = ["hidden-l20+hidden", *(["hidden-prompt-l20", "task"] if "task" in features else [])]
    assert all(f"part {run}: 24/24 featurised" in err for run in runs), err
    # each layer's file holds what train and evaluate write for that layer (source_caches)
    from howhard.pool import read_pool
    from howhard.runs.inputs import featurize_sources

    ours = tmp_path / "t.npz"
    featurize_sources(read_pool(pool), features, "arithmetic", None, str(ours))
    for served, written in [(cache, ours), (tmp_path / "g.hidden.npz", tmp_path / "t.hidden.npz")]:
        with np.load(served) as a, np.load(written) as b:
            assert str(a["source"]) == str(b["source"])
            assert dict(zip(a["keys"].tolist(), a["values"].tolist(), strict=True)) == dict(
                zip(b["keys"].tolist(), b["values"].tolist(), strict=True)
            )
    again = Startup(config(files, feature_cache=cache))
    again.run()
    assert dict(again.proxy.metrics.calibration) == {"cache": 24, "featurised": 0}
    texts = [q.prompt for q in get_task("arithmetic").queries(5, seed=4)]
    assert startup.proxy.decide(texts) == again.proxy.decide(texts)


def test_bad_files_fail_before_the_server_listens(files, tmp_path):
    bad_pool = tmp_path / "bad.jsonl"
    bad_pool.write_text('{"id": "a", "prompt": "What is 1 + 1?"}\n')  # no rewards
    with pytest.raises(PoolError, match=r"bad\.jsonl"):
        Startup(config(files, calibration=bad_pool))
    router = tiny_router(files[0].parent)
    with pytest.raises(ConfigError, match=r"routes between two decoders.*router=PATH"):
        Startup(config(files, predictor=router))


def test_an_unreadable_feature_cache_is_named(files, tmp_path):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip file")
    with pytest.raises(ConfigError, match=r"broken\.npz is unreadable .*delete it"):
        Startup(config(files, feature_cache=broken)).run()


# ---------------------------------------------------------------- a real `howhard serve` process


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", headers=AUTH).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.integration
@pytest.mark.slow
def test_a_real_proxy_listens_at_once_and_a_restart_reuses_the_cached_features(tmp_path):
    predictor, _ = tiny_predictor(tmp_path, "hidden")
    pool = calibration_pool(tmp_path / "calibration.jsonl", 50)  # 1,000: bench_startup.py
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    with stub_server() as upstream:
        with howhard_server(upstream.url, predictor, pool, env=env, ready=False) as proxy:
            ready = httpx.get(proxy.url + "/ready", headers=AUTH)
            assert ready.status_code == 503 and ready.json()["status"] == "starting"
            refused = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            assert httpx.get(proxy.url + "/health").status_code == 200
            wait_ready(proxy)
            first_log = proxy.log.read_text()
            answer = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
            assert answer.status_code == 200
        assert re.search(r"/50 featurised", first_log)  # progress while featurising
        assert "50 calibration prompts, 0 from cache, 50 featurised" in first_log

        with howhard_server(upstream.url, predictor, pool, env=env, ready=False) as proxy:
            wait_ready(proxy)
            assert "50 calibration prompts, 50 from cache, 0 featurised" in proxy.log.read_text()
            assert metric(proxy.url, 'howhard_calibration_prompts{source="featurised"}') == 0
            assert metric(proxy.url, "howhard_startup_seconds") > 0


@pytest.mark.integration
def test_a_failure_while_calibrating_stops_the_real_proxy_with_the_message(files, tmp_path):
    predictor, pool = files
    other = tmp_path / "other.npz"  # a cache of another feature source
    cached_transform("hidden:other:arithmetic", lambda: _Zeros(), ["What is 1 + 1?"], other)
    command = serve_command(free_port(), ["http://127.0.0.1:9"], predictor, pool)
    command += ["--budget", "2", "--max-per-query", "4", "--upstream-model", "m"]
    command += ["--feature-cache", str(other)]
    env = {**os.environ, "HOWHARD_API_KEYS": API_KEY, "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "start-up failed" in done.stderr
    assert f"howhard serve: error: feature cache {other} holds features of hidden:other" in (
        done.stderr
    )


class _Zeros:
    name = "zeros"

    def transform(self, texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), 3), dtype=np.float32)
