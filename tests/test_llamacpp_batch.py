"""The batched llama.cpp paths against the real SmolLM2: k samples of one prompt decoded together,
checked against the one-at-a-time ``create_completion`` path they replace, and the hidden-state
features of many texts decoded together, checked against one text per decode."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_model

from howhard.backends.base import SamplingParams
from howhard.errors import ConfigError
from howhard.tasks import get_task

pytestmark = [pytest.mark.integration, needs_model]

TASK = get_task("arithmetic")
PARAMS = SamplingParams(max_tokens=TASK.max_tokens)
SEEDS = list(range(100, 108))


@pytest.fixture(scope="module")
def sampler():
    from howhard.backends.llamacpp import LlamaCppSampler

    with LlamaCppSampler() as s:
        yield s


@pytest.fixture(scope="module")
def llm():
    """A high-level Llama for the one-at-a-time path."""
    from howhard.backends.llamacpp import _load, default_model_path

    return _load(default_model_path(), os.cpu_count() or 1, 1024)


def test_same_seeds_same_texts_and_diverse(sampler):
    prompt = TASK.render("What is 27 + 38?")
    first = sampler.sample(prompt, PARAMS, SEEDS, TASK.stop)
    sampler.sample(TASK.render("What is 9 * 6?"), PARAMS, SEEDS, TASK.stop)  # moves the cache
    again = sampler.sample(prompt, PARAMS, SEEDS, TASK.stop)
    assert again == first
    assert len({c.text for c in first}) >= 2


def test_stops_and_lengths(sampler):
    long = SamplingParams(temperature=1.5, top_p=1.0, max_tokens=6)
    out = sampler.sample(TASK.render("What is 512 - 87 + 3?"), long, range(16), TASK.stop)
    assert len(out) == 16
    assert all(not any(s in c.text for s in TASK.stop) for c in out)
    assert all(c.n_tokens <= long.max_tokens for c in out)


def test_greedy_matches_create_completion(sampler, llm):
    from howhard.backends.llamacpp import _complete

    greedy = SamplingParams(temperature=0.0, max_tokens=TASK.max_tokens)
    for question in ["What is 3 + 4?", "What is 40 * 7?"]:
        prompt = TASK.render(question)
        out = sampler.sample(prompt, greedy, [1, 2, 3, 4], TASK.stop)
        [ref] = _complete(llm, prompt, greedy, [1], TASK.stop)
        assert out == [ref] * 4  # same text and same n_tokens


def test_more_seeds_than_one_group_holds():
    from howhard.backends.llamacpp import LlamaCppSampler

    prompt = TASK.render("What is 6 + 7?")  # about 190 tokens
    with LlamaCppSampler(n_ctx=256) as small:
        # room for (256 - prompt tokens) // 8 sequences at a time: several groups
        out = small.sample(prompt, PARAMS, range(40), TASK.stop)
        assert len(out) == 40 and all(c.n_tokens <= PARAMS.max_tokens for c in out)
        with pytest.raises(ConfigError, match="larger n_ctx"):
            small.sample(prompt * 2, PARAMS, [1], TASK.stop)


@pytest.mark.extended  # token for token: test_greedy_matches_create_completion
def test_success_rate_matches_one_at_a_time(sampler, llm):
    from howhard.backends.llamacpp import _complete

    queries = TASK.queries(20, seed=7)
    seeds = [[PARAMS.sample_seed(q.id, j) for j in range(8)] for q in queries]

    def rate(draw):
        rewards = [
            TASK.reward(q, c.text)
            for q, s in zip(queries, seeds, strict=True)
            for c in draw(TASK.render(q.prompt), PARAMS, s, TASK.stop)
        ]
        return sum(rewards) / len(rewards)

    batched = rate(sampler.sample)
    one_at_a_time = rate(lambda *a: _complete(llm, *a))
    assert abs(batched - one_at_a_time) < 0.1, (batched, one_at_a_time)


def test_worker_processes_draw_what_one_process_draws(sampler):
    from howhard.backends.llamacpp import LlamaCppSampler

    prompts = [TASK.render(f"What is {a} + 17?") for a in (5, 48)]
    here = [sampler.sample(p, PARAMS, SEEDS, TASK.stop) for p in prompts]
    with LlamaCppSampler(workers=2) as pool:
        assert [pool.sample(p, PARAMS, SEEDS, TASK.stop) for p in prompts] == here


def _texts():
    """Queries in their templates, of 9 to about 50 tokens, one repeated (the shortest GSM8K
    questions of 40: the tokens are most of these tests' time)."""
    gsm8k = get_task("gsm8k")
    short = [TASK.query_text(q.prompt) for q in TASK.queries(12, seed=5)]
    longer = sorted((gsm8k.query_text(q.prompt) for q in gsm8k.queries(40, seed=5)), key=len)[:4]
    return [*short[:6], *longer, *short[6:], short[0]]


@pytest.fixture(scope="module")
def reference():
    """llama-cpp-python's own embed of a text: its last token's normed final state, decoded
    alone (cut to n_batch = 1024 tokens, as the featuriser cuts to its n_ctx)."""
    from howhard.backends.llamacpp import _llama, _load, default_model_path, default_threads

    last = _llama().LLAMA_POOLING_TYPE_LAST
    llm = _load(
        default_model_path(),
        default_threads(),
        1024,
        n_batch=1024,
        embedding=True,
        pooling_type=last,
    )
    return llm.embed


@pytest.fixture(scope="module")
def featurizer():
    from howhard.backends.llamacpp import LlamaCppHiddenState

    return LlamaCppHiddenState()


def test_loading_the_featurizer_prints_no_llama_cpp_note(capsys):
    from howhard.backends.llamacpp import LlamaCppHiddenState

    LlamaCppHiddenState(layers=[15]).close()
    err = capsys.readouterr().err
    assert "pooling_type" not in err and "llama_init_from_model" not in err


def test_batched_features_equal_one_at_a_time_bit_for_bit(featurizer, reference):
    texts = _texts()
    together = featurizer.transform(texts)
    alone = np.concatenate([featurizer.transform([t]) for t in texts])
    # the path this one replaced: llama-cpp-python's embed, one text per decode
    embedded = np.array([reference(t) for t in texts], dtype=np.float32)
    reversed_order = featurizer.transform(texts[::-1])[::-1]
    assert together.shape == (len(texts), 576) and together.dtype == np.float32
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together, embedded)
    np.testing.assert_array_equal(together, reversed_order)
    assert not np.array_equal(together[0], together[1])


def test_small_groups_and_texts_longer_than_a_stream_give_the_same_features(featurizer):
    from howhard.backends.llamacpp import LlamaCppHiddenState

    texts = _texts()
    # 3 texts or 64 tokens per decode; texts over 24 tokens go one at a time through embed
    small = LlamaCppHiddenState(max_seqs=3, stream_tokens=24, n_batch=64)
    assert small.stream_tokens == 24 and small.n_batch == 64
    np.testing.assert_array_equal(small.transform(texts), featurizer.transform(texts))


def test_a_layer_inside_the_network_is_read_the_same_in_any_batch_and_for_long_texts(featurizer):
    """A block's output has a row per token, not only per output: each text's own row is read,
    and a text longer than a stream is decoded alone in a context of its own, not by embed."""
    from howhard.backends.llamacpp import LlamaCppHiddenState

    texts = _texts()
    middle = LlamaCppHiddenState(layer=18)
    together = middle.transform(texts)
    np.testing.assert_array_equal(together, np.concatenate([middle.transform([t]) for t in texts]))
    # texts over 24 tokens are long here: decoded alone, one graph each
    small = LlamaCppHiddenState(max_seqs=3, stream_tokens=24, n_batch=64, layer=18)
    np.testing.assert_array_equal(small.transform(texts), together)
    assert small._long is not None and middle._long is None
    assert not np.allclose(together, featurizer.transform(texts), atol=1e-2)


def test_a_shared_prefix_is_decoded_once_and_changes_no_feature(featurizer, reference):
    """Calls that set the prefix stream, keep it, shorten it, replace it and bypass it: every
    row equals llama-cpp-python's embed of the text alone, bit for bit."""
    from howhard.backends.llamacpp import LlamaCppHiddenState

    texts = _texts()
    arithmetic, gsm8k = texts[:6], texts[6:10]
    fresh = LlamaCppHiddenState(max_seqs=4)

    def prefix() -> str:
        return fresh._llm.detokenize(fresh._prefix).decode()

    calls = [
        (arithmetic[:3], "Q: What is"),  # three texts set it
        (arithmetic[3:4], "Q: What is"),  # one text alone uses it
        ([*gsm8k[:2], *arithmetic[:2]], "Q: What is"),  # nothing in common: bypassed
        (gsm8k[:3], gsm8k[0][:9]),  # replaced by the GSM8K template's opening
        ([gsm8k[3], "Question: no"], None),  # shortened to what both share
        (arithmetic[4:5], None),  # alone, sharing nothing with it: bypassed, kept
    ]
    for batch, opening in calls:
        got = fresh.transform(batch)
        want = np.array([reference(t) for t in batch], dtype=np.float32)
        np.testing.assert_array_equal(got, want)
        if opening is not None:
            assert prefix().startswith(opening.strip()), (prefix(), opening)
    assert "Question" in prefix() and len(fresh._prefix) >= 2
    # a second text alone in a row sharing nothing with it replaces it: an odd first request
    # does not keep a prefix that the requests after it never use
    held = fresh._prefix
    np.testing.assert_array_equal(fresh.transform(arithmetic[5:6]), [reference(arithmetic[5])])
    assert fresh._prefix != held and prefix().startswith("Q: What is")
    # and one odd text alone between texts that share it does not evict it
    held = fresh._prefix
    for text in (gsm8k[0], arithmetic[0]):
        np.testing.assert_array_equal(fresh.transform([text]), [reference(text)])
        assert fresh._prefix == held[: len(fresh._prefix)] and len(fresh._prefix) >= 2
    # texts one at a time from the start (a proxy whose calibration came from its cache): the
    # first sets the prefix, the next keep what they share with it; share_prefix=False decodes
    # every text whole, with the same features
    alone = LlamaCppHiddenState(max_seqs=4)
    whole = LlamaCppHiddenState(max_seqs=4, share_prefix=False)
    tokens = [alone._llm.tokenize(t.encode()) for t in arithmetic[:3]]
    for i, text in enumerate(arithmetic[:3]):
        got = alone.transform([text])
        np.testing.assert_array_equal(got, [reference(text)])
        np.testing.assert_array_equal(got, whole.transform([text]))
        if i == 0:
            assert alone._prefix == tokens[0][:-1]  # all but its last token
    common = next(k for k, (a, b, c) in enumerate(zip(*tokens, strict=False)) if not a == b == c)
    assert alone._prefix == tokens[0][:common] and common >= 2  # what the three share
    assert alone._llm.detokenize(alone._prefix).decode().strip().startswith("Q: What is")
    assert whole._prefix == []


def test_the_q4_0_copy_of_smollm2_is_made_once_and_featurises_the_same_alone(
    featurizer, tmp_path, monkeypatch
):
    from howhard.backends.llamacpp import LlamaCppHiddenState, resolve_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = resolve_model("smollm2-q4_0")
    assert path == tmp_path / "howhard" / "models" / "SmolLM2-135M-Instruct.Q4_0.gguf"
    made = path.stat().st_mtime_ns
    assert resolve_model("smollm2-q4_0").stat().st_mtime_ns == made
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no part file left
    texts = _texts()
    fast = LlamaCppHiddenState("smollm2-q4_0")
    together = fast.transform(texts)
    np.testing.assert_array_equal(together, np.concatenate([fast.transform([t]) for t in texts]))
    # a second rounding of the same weights: other features, each still nearest its own text's
    shipped = featurizer.transform(texts)
    assert not np.array_equal(together, shipped)
    a, b = (x - shipped.mean(0) for x in (together, shipped))
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    cosine = a @ b.T
    others = cosine[~np.eye(len(texts), dtype=bool)]
    assert np.diag(cosine).mean() > others.mean() + 0.2


def test_no_texts_one_text_and_an_empty_text(featurizer):
    assert featurizer.transform([]).shape == (0, 576)
    [text] = _texts()[:1]
    one = featurizer.transform([text])
    assert one.shape == (1, 576) and np.all(np.isfinite(one))
    with pytest.raises(ConfigError, match=r"texts\[1\] has no tokens"):
        featurizer.transform([text, ""])


def test_llama_cpp_is_imported_in_one_place():
    """Every import of llama_cpp in the package goes through `_llama`, which sets the OpenMP
    wait policy before the library loads."""
    package = Path(__file__).parent.parent / "src" / "howhard"
    imports = [
        f"{path.name}:{n}"
        for path in package.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"^\s*(import llama_cpp|from llama_cpp\b)", line)
    ]
    assert len(imports) == 1 and imports[0].startswith("llamacpp.py:"), imports


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, "PASSIVE"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
        ({"GOMP_SPINCOUNT": "300000"}, None),  # the user tunes libgomp's spinning: left alone
    ],
)
def test_llama_cpp_loads_with_passive_omp_waiting_unless_the_user_chose(given, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = (
        "import os, sys\n"
        "from howhard.backends.llamacpp import LlamaCppHiddenState\n"
        "assert 'llama_cpp' not in sys.modules\n"
        "LlamaCppHiddenState()\n"
        "print(os.environ.get('OMP_WAIT_POLICY'), 'llama_cpp' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, **given},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert done.stdout.split() == [str(expected), "True"]


def test_several_layers_in_one_pass_equal_each_layer_read_alone_bit_for_bit(featurizer):
    """layers=[None, 15, 30]: one decode per group reads every layer (the default state, a
    block's output, and the last block again, which is the default state), each block of
    columns equal to a featurizer of that layer alone, in any batch."""
    from howhard.backends.llamacpp import LlamaCppHiddenState

    texts = _texts()[:5]
    several = LlamaCppHiddenState(layers=[None, 15, 30])
    decodes = []
    run = several._run
    several._run = lambda *a, **k: decodes.append(1) or run(*a, **k)
    together = several.transform(texts)
    assert together.shape == (5, 3 * 576)
    single = LlamaCppHiddenState(layer=15)
    single_decodes = []
    single_run = single._run
    single._run = lambda *a, **k: single_decodes.append(1) or single_run(*a, **k)
    middle = single.transform(texts)
    assert len(decodes) == len(single_decodes)  # one pass for three layers
    final = featurizer.transform(texts)
    np.testing.assert_array_equal(together[:, :576], final)
    np.testing.assert_array_equal(together[:, 576:1152], middle)
    np.testing.assert_array_equal(together[:, 1152:], final)
    alone = np.concatenate([several.transform([t]) for t in texts])
    np.testing.assert_array_equal(alone, together)
    with pytest.raises(ConfigError, match="layer or layers, not both"):
        LlamaCppHiddenState(layer=3, layers=[4])
