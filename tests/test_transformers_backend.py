"""The transformers backend against the real SmolLM2 GGUF (dequantised by transformers) on CPU,
checked against transformers' own ``generate`` and against the llama.cpp backend."""

import copy
import importlib.util

import numpy as np
import pytest
from conftest import needs_model

from howhard.backends.base import SamplingParams
from howhard.errors import ConfigError, ModelNotFoundError
from howhard.features import get_featurizer
from howhard.tasks import get_task

HAS_HF = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "gguf", "accelerate"))
pytestmark = [
    pytest.mark.integration,
    needs_model,
    pytest.mark.skipif(not HAS_HF, reason="needs howhard[hf]: torch, transformers, gguf"),
]

TASK = get_task("arithmetic")
PARAMS = SamplingParams(max_tokens=TASK.max_tokens)
GREEDY = SamplingParams(temperature=0.0, max_tokens=8)
SEEDS = list(range(100, 108))


@pytest.fixture(scope="module")
def lm():
    """The embedded GGUF loaded once. One torch thread: OpenMP threads that spin-wait on
    shared, oversubscribed cores made every forward pass 10x slower here."""
    import torch

    from howhard.backends.transformers import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(device="cpu")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sampler(lm):
    from howhard.backends.transformers import TransformersSampler

    return TransformersSampler(lm)


def generate(lm, prompt, n):
    """transformers' own greedy decoding: the new token ids."""
    ids = lm.tokenizer(prompt, return_tensors="pt")
    out = lm.model.generate(**ids, do_sample=False, max_new_tokens=n)
    return out[0, ids.input_ids.shape[1] :].tolist()


def test_model_id_is_the_file_name(sampler):
    assert sampler.model_id == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_one_completion_per_seed_reproducible_and_diverse(sampler):
    prompt = TASK.render("What is 27 + 38?")
    first = sampler.sample(prompt, PARAMS, SEEDS, TASK.stop)
    sampler.sample(TASK.render("What is 9 * 6?"), PARAMS, SEEDS, TASK.stop)  # moves the cache
    again = sampler.sample(prompt, PARAMS, SEEDS, TASK.stop)
    assert len(first) == len(SEEDS) and again == first
    assert len({c.text for c in first}) >= 3  # different seeds draw different texts
    assert all(0 < c.n_tokens <= TASK.max_tokens for c in first)
    assert sampler.sample(prompt, PARAMS, [], TASK.stop) == []


def test_a_seed_draws_the_same_text_alone_and_in_any_batch(lm, sampler):
    from howhard.backends.transformers import TransformersSampler

    small = TransformersSampler(lm, batch_size=3)  # chunks of 3, 3, 2
    prompt = TASK.render("What is 86 + 258?")
    batch = sampler.sample(prompt, PARAMS, SEEDS, TASK.stop)
    assert len({c.text for c in batch}) >= 4
    assert small.sample(prompt, PARAMS, SEEDS[::-1], TASK.stop) == batch[::-1]
    for j in (0, 6):
        assert sampler.sample(prompt, PARAMS, [SEEDS[j]], TASK.stop) == [batch[j]]


def test_stop_strings_end_completions_as_in_llamacpp(lm, sampler):
    """A sample ends at the first step whose text holds a stop string, cut before the first
    listed one it holds; n_tokens counts the token that completed it."""
    prompt = TASK.render("What is 3 - 0?")
    tokens = generate(lm, prompt, 8)
    assert "\nQ:" in lm.tokenizer.decode(tokens)  # the model goes on with the next question
    for stop in [("\n",), ("Q:", "\n"), ("3\n", "\n"), ("\n", "3\n"), ("What",), ("Z",)]:
        expected = (lm.tokenizer.decode(tokens), 8)  # brute force over the greedy tokens:
        for k in range(1, 9):
            text = lm.tokenizer.decode(tokens[:k])
            hits = [s for s in stop if s in text]
            if hits:
                expected = (text[: text.index(hits[0])], k)
                break
        (c,) = sampler.sample(prompt, GREEDY, [0], stop)
        assert (c.text, c.n_tokens) == expected
    for c in sampler.sample(prompt, PARAMS, SEEDS, TASK.stop):
        assert "\n" not in c.text and "Q:" not in c.text


def test_max_tokens_is_respected(lm, sampler):
    prompt = TASK.render("What is 86 + 258?")
    short = SamplingParams(max_tokens=2)
    assert all(c.n_tokens == 2 for c in sampler.sample(prompt, short, SEEDS, []))
    (c,) = sampler.sample(prompt, SamplingParams(temperature=0.0, max_tokens=2), [0], [])
    assert c.text == lm.tokenizer.decode(generate(lm, prompt, 2))


def test_temperature_zero_is_transformers_greedy_decoding(lm, sampler):
    for query in TASK.queries(2, 7):
        prompt = TASK.render(query.prompt)
        tokens = generate(lm, prompt, 8)
        texts = sampler.sample(prompt, GREEDY, [1, 2, 3], [])
        assert texts[0].text == lm.tokenizer.decode(tokens) and texts[0].n_tokens == 8
        assert texts[1] == texts[2] == texts[0]  # the seed does not matter


def test_bad_prompts_are_refused(sampler):
    with pytest.raises(ConfigError, match="prompt is empty"):
        sampler.sample("", PARAMS, [0], [])
    with pytest.raises(ConfigError, match=r"exceeds the model's 8192-token context"):
        sampler.sample("1 " * 10000, PARAMS, [0], [])


@pytest.mark.extended  # sample for sample: the greedy and seeded tests above
def test_success_rate_matches_llamacpp(sampler):
    """Both backends sample the same (dequantised) model with the same chain: close rates."""
    from howhard.backends.llamacpp import LlamaCppSampler

    queries = TASK.queries(30, 0)

    def rate(s):
        rewards = [
            TASK.reward(q, c.text)
            for q in queries
            for c in s.sample(
                TASK.render(q.prompt),
                PARAMS,
                [PARAMS.sample_seed(q.id, j) for j in range(4)],
                TASK.stop,
            )
        ]
        assert len(rewards) == 120
        return np.mean(rewards)

    with LlamaCppSampler(workers=2) as reference:  # single-threaded workers: fast on busy cores
        expected = rate(reference)
    got = rate(sampler)
    assert 0.08 <= got <= 0.4 and 0.08 <= expected <= 0.4
    assert abs(got - expected) <= 0.12, (got, expected)


def test_hidden_states(lm):
    from howhard.backends.llamacpp import LlamaCppHiddenState
    from howhard.backends.transformers import TransformersHiddenState

    hidden = TransformersHiddenState(lm, batch_size=4)
    texts = [TASK.query_text(q.prompt) for q in TASK.queries(6, 1)]
    texts.append("A longer text than the others, so that the batch holds padding.")
    feats = hidden.transform(texts)
    assert feats.shape == (7, 576) and feats.dtype == np.float32 and np.all(np.isfinite(feats))
    assert hidden.name == "hf-hidden:SmolLM2-135M-Instruct.Q4_1.gguf"
    np.testing.assert_array_equal(hidden.transform(texts), feats)
    alone = np.stack([hidden.transform([t])[0] for t in texts])
    np.testing.assert_allclose(alone, feats, atol=1e-4, rtol=1e-5)
    assert min(np.abs(feats[i] - feats[j]).max() for i in range(7) for j in range(i)) > 0.1
    # the same state llama.cpp reads from the quantised weights, up to quantisation
    reference = LlamaCppHiddenState().transform(texts)
    norms = np.linalg.norm(feats, axis=1) * np.linalg.norm(reference, axis=1)
    assert np.all((feats * reference).sum(1) / norms > 0.999)
    with pytest.raises(ConfigError, match="prompt is empty"):
        hidden.transform(["Q: 1?", ""])


def test_a_layer_reads_the_stream_after_that_many_blocks_in_both_backends(lm):
    """layer K is transformers' hidden_states[K] at the last token (K = 30, the last block, is
    the final normed state); llama.cpp reads the same state from the quantised weights: nearest
    to hidden_states[K] of all the layers, up to quantisation."""
    import torch

    from howhard.backends.llamacpp import LlamaCppHiddenState
    from howhard.backends.transformers import TransformersHiddenState

    texts = [TASK.query_text(q.prompt) for q in TASK.queries(4, 1)]
    with torch.inference_mode():
        every = np.stack(
            [
                np.stack([h[0, -1].numpy() for h in lm.model(**ids, output_hidden_states=True)[2]])
                for ids in (lm.tokenizer(t, return_tensors="pt") for t in texts)
            ]
        )  # (texts, 31 states, 576)
    np.testing.assert_allclose(
        TransformersHiddenState(lm).transform(texts), every[:, 30], atol=1e-4
    )
    for layer in (1, 18, 30):
        hf = TransformersHiddenState(lm, batch_size=2, layer=layer)
        assert hf.name.endswith(f"@{layer}")
        np.testing.assert_allclose(hf.transform(texts), every[:, layer], atol=1e-4, rtol=1e-4)
        cpp = LlamaCppHiddenState(layer=layer).transform(texts)
        cosine = np.einsum("td,tld->tl", cpp, every) / (
            np.linalg.norm(cpp, axis=1)[:, None] * np.linalg.norm(every, axis=2)
        )
        assert np.all(cosine.argmax(axis=1) == layer) and np.all(cosine[:, layer] > 0.999)
    np.testing.assert_array_equal(
        LlamaCppHiddenState(layer=30).transform(texts), LlamaCppHiddenState().transform(texts)
    )
    for layer in (0, 31):
        with pytest.raises(ConfigError, match=f"layer must be 1 to 30 .*got {layer}"):
            TransformersHiddenState(lm, layer=layer)
        with pytest.raises(ConfigError, match=f"layer must be 1 to 30 .*got {layer}"):
            LlamaCppHiddenState(layer=layer)
    with pytest.raises(ConfigError, match="feature source 'hidden-l31': layer must be 1 to 30"):
        get_featurizer("hidden-l31", None, str)


@pytest.mark.slow
def test_a_local_model_directory_works_too(lm, sampler, tmp_path):
    from howhard.backends.transformers import TransformersSampler

    # the GGUF model holds dequantised weights; transformers only refuses to save it because it
    # remembers its GGUF origin, so save a shallow copy without that record
    plain = copy.copy(lm.model)
    plain.hf_quantizer, plain.config = None, copy.deepcopy(lm.model.config)
    del plain.config.quantization_config
    plain.save_pretrained(tmp_path / "smol")
    lm.tokenizer.save_pretrained(tmp_path / "smol")
    local = TransformersSampler(tmp_path / "smol", device="cpu")
    assert local.model_id == "smol"
    prompt = TASK.render("What is 55 * 6?")
    assert local.sample(prompt, GREEDY, [0], []) == sampler.sample(prompt, GREEDY, [0], [])
    assert local.sample(prompt, PARAMS, SEEDS, TASK.stop) == sampler.sample(
        prompt, PARAMS, SEEDS, TASK.stop
    )


def test_missing_or_wrong_paths_say_what_to_pass(tmp_path):
    from howhard.backends.transformers import TransformersHiddenState, TransformersSampler

    with pytest.raises(ModelNotFoundError, match=r"nowhere\.gguf does not exist; pass model=PATH"):
        TransformersSampler(tmp_path / "nowhere.gguf")
    with pytest.raises(ModelNotFoundError, match=r"has no config\.json"):
        TransformersHiddenState(tmp_path)
    bad = tmp_path / "model.gguf"
    bad.write_text("not a model")
    with pytest.raises(ModelNotFoundError, match=r"could not load .*model\.gguf"):
        TransformersSampler(bad)
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        TransformersSampler(bad, batch_size=0)
