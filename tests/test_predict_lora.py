"""The lora head: its loss is the exact binomial likelihood, it round-trips through the predictor
file format, and a short fit lowers the loss. Fast tests use a tiny random Llama written as a
Hugging Face directory (real transformers and peft, a 2-layer model); the slow one fine-tunes
the embedded SmolLM2 GGUF itself."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from scipy.special import expit, gammaln  # noqa: E402
from scipy.stats import binom  # noqa: E402

from howhard.errors import ConfigError, ModelNotFoundError, NotFittedError  # noqa: E402
from howhard.predict import binomial_log_loss, load_predictor  # noqa: E402
from howhard.predict.lora import START_ALPHAS, LoraPredictor, binomial_nll  # noqa: E402

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 +-*?:\n"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer Llama of hidden size 32 with a character tokenizer, saved as an HF directory."""
    from tokenizers import Tokenizer, models

    path = tmp_path_factory.mktemp("tiny-llama")
    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{ch: i + 3 for i, ch in enumerate(CHARS)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )
    fast.save_pretrained(path)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def synthetic(m: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Texts whose success depends on the operator: '+' is easy (rate 0.9), '*' hard (0.1)."""
    rng = np.random.default_rng(seed)
    ops = rng.choice(["+", "*"], size=m)
    texts = [
        f"q: {a} {op} {b}?"
        for a, op, b in zip(rng.integers(10, 99, m), ops, rng.integers(10, 99, m), strict=True)
    ]
    n = np.full(m, 8.0)
    c = rng.binomial(8, np.where(ops == "+", 0.9, 0.1)).astype(float)
    return texts, np.column_stack([c, n])


def test_loss_is_the_exact_binomial_likelihood_per_trial() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, size=7)
    n = rng.integers(1, 20, size=7).astype(float)
    c = np.floor(rng.uniform(0, 1, 7) * (n + 1)).clip(0, n)
    log_choose = gammaln(n + 1) - gammaln(c + 1) - gammaln(n - c + 1)
    exact = -(binom.logpmf(c, n, expit(z)) - log_choose).sum() / n.sum()
    got = binomial_nll(torch.tensor(z), torch.tensor(c), torch.tensor(n))
    assert float(got) == pytest.approx(exact, rel=1e-10)
    assert float(got) == pytest.approx(binomial_log_loss(expit(z), c, n), rel=1e-9)


def test_loss_gradient_is_n_lambda_minus_c_over_total_trials() -> None:
    z = torch.tensor([-1.5, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    c, n = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([4.0, 2.0, 5.0])
    binomial_nll(z, c, n.double()).backward()
    expected = (n.double() * torch.sigmoid(z.detach()) - c) / n.sum()
    assert torch.allclose(z.grad, expected)


def test_fit_starts_at_the_logistic_head_and_a_few_epochs_lower_the_loss(tiny_lm: str) -> None:
    texts, y = synthetic(64)
    model = LoraPredictor(
        model=tiny_lm,
        rank=4,
        alpha=0.1,
        lr=1e-3,
        batch_size=8,
        max_epochs=4,
        patience=4,
        validation=0.25,
    ).fit(texts, y)
    assert len(model.history_) == 5  # epoch 0 (the logistic start) and 4 epochs
    assert model.loss_ == min(model.history_) < model.history_[0]
    assert model.n_iter_ >= 1 and any(np.abs(a).max() > 0 for a in model.adapter_.values())
    # The kept epoch's loss is the binomial log-loss of the model's own predictions on its
    # validation rows (the same split the seed draws).
    rng = np.random.default_rng(0)
    val = rng.permutation(64) < 16
    lam = model.predict_proba_success([t for t, v in zip(texts, val, strict=True) if v])
    assert binomial_log_loss(lam, y[val, 0], y[val, 1]) == pytest.approx(model.loss_, rel=1e-4)


def test_the_logistic_start_takes_the_l2_strength_of_lowest_validation_loss(tiny_lm: str) -> None:
    # Without it a start of weak L2 could overfit a small pool and begin (and, when no epoch
    # helps, end) worse than the constant training mean.
    texts, y = synthetic(48, seed=5)
    kw = {"model": tiny_lm, "rank": 2, "batch_size": 8, "max_epochs": 1, "validation": 0.25}
    auto = LoraPredictor(**kw).fit(texts, y)
    starts = {a: LoraPredictor(alpha=a, **kw).fit(texts, y).history_[0] for a in START_ALPHAS}
    assert auto.start_alpha_ == min(starts, key=lambda a: starts[a])
    assert auto.history_[0] == pytest.approx(min(starts.values()))
    assert max(starts.values()) > min(starts.values()) + 1e-3  # the choice mattered here


def test_fit_is_repeatable_with_a_seed(tiny_lm: str) -> None:
    texts, y = synthetic(16)
    a = LoraPredictor(model=tiny_lm, rank=2, max_epochs=1, batch_size=8).fit(texts, y)
    b = LoraPredictor(model=tiny_lm, rank=2, max_epochs=1, batch_size=8).fit(texts, y)
    assert a.history_ == b.history_
    np.testing.assert_array_equal(a.predict_proba_success(texts), b.predict_proba_success(texts))


def test_save_load_round_trip_predicts_the_same(tiny_lm: str, tmp_path: Path) -> None:
    texts, y = synthetic(16)
    model = LoraPredictor(model=tiny_lm, rank=2, lr=1e-2, max_epochs=2, batch_size=8)
    model.fit(texts, y, meta={"features": "text"})
    path = model.save(tmp_path / "lora.npz")
    again = load_predictor(path)
    assert isinstance(again, LoraPredictor)
    assert again.get_params() == model.get_params() and again.meta_ == {"features": "text"}
    assert again.history_ == model.history_ and again.n_iter_ == model.n_iter_
    np.testing.assert_allclose(
        again.predict_proba_success(texts), model.predict_proba_success(texts), rtol=1e-6
    )
    np.testing.assert_allclose(again.predict_gains(texts, 4), model.predict_gains(texts, 4))


def test_a_saved_adapter_for_another_model_is_refused(tiny_lm: str, tmp_path: Path) -> None:
    texts, y = synthetic(8)
    model = LoraPredictor(model=tiny_lm, rank=2, max_epochs=1).fit(texts, y)
    model.adapter_ = {k: v[:1] for k, v in model.adapter_.items()}
    again = LoraPredictor.load(model.save(tmp_path / "bad.npz"))
    with pytest.raises(ConfigError, match="does not fit the base model"):
        again.predict_proba_success(texts)


def test_inputs_are_checked() -> None:
    with pytest.raises(NotFittedError):
        LoraPredictor().predict_proba_success(["x"])
    with pytest.raises(ConfigError, match="sequence of query texts"):
        LoraPredictor().fit(np.zeros((2, 3)).tolist()[0][0], [[1, 2], [0, 2]])
    with pytest.raises(ConfigError, match="1-D sequence of strings"):
        LoraPredictor().fit(np.zeros((2, 3)), [[1, 2], [0, 2]])
    with pytest.raises(ConfigError, match="rank"):
        LoraPredictor(rank=0).fit(["a", "b"], [[1, 2], [0, 2]])
    with pytest.raises(ConfigError, match="validation"):
        LoraPredictor(validation=1.0).fit(["a", "b"], [[1, 2], [0, 2]])


def test_without_peft_the_error_names_the_extra(
    tiny_lm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(ModelNotFoundError, match=r"howhard\[lora\]"):
        LoraPredictor(model=tiny_lm).fit(["a b", "c d"], [[1, 2], [0, 2]])


def test_train_and_evaluate_with_the_lora_head(
    tiny_lm: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """howhard train --head lora reads the rendered query texts, saves a LoraPredictor, and
    howhard evaluate scores it on another pool from its recorded task."""
    import json

    from howhard.cli import main
    from howhard.pool import write_pool

    def pool(m: int, seed: int) -> list[dict[str, object]]:
        rng = np.random.default_rng(seed)
        rows = []
        for i in range(m):
            a, b, op = int(rng.integers(1, 99)), int(rng.integers(1, 99)), "+*"[i % 2]
            rate = 0.8 if op == "+" else 0.2
            rewards = rng.binomial(1, rate, size=4).astype(float).tolist()
            rows.append(
                {"id": f"q{seed}-{i}", "prompt": f"What is {a} {op} {b}?", "rewards": rewards}
            )
        return rows

    train, held = write_pool(pool(20, 0), tmp_path / "train.jsonl"), tmp_path / "eval.jsonl"
    write_pool(pool(10, 1), held)
    out = tmp_path / "lora.npz"
    assert main(["train", str(train), "--head", "lora", "--model", tiny_lm, "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert "text                 lora" in said.out
    assert "text                 lora         auto" in said.out  # it picks its start's L2
    assert "lora: logistic start (L2 " in said.err and "lora: epoch 1, validation loss" in said.err
    model = load_predictor(out)
    assert isinstance(model, LoraPredictor) and model.meta_["features"] == "text"
    assert model.meta_["task"] == "arithmetic" and model.model == tiny_lm
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                str(held),
                "--predictor",
                str(out),
                "--max-per-query",
                "4",
                "--budgets",
                "1,2",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["predictor"]["head"] == "lora" and report["predictor"]["features"] == "text"
    assert np.isfinite(report["predictor"]["eval_loss"]["model"])


@pytest.mark.extended  # the same path on a tiny real model: the tests above
@pytest.mark.integration
def test_one_epoch_on_smollm2_lowers_the_training_loss() -> None:
    """The embedded SmolLM2 GGUF (dequantised by transformers) fine-tuned for a few steps."""
    pytest.importorskip("gguf")
    texts, y = synthetic(24, seed=3)
    texts = [f"Q: What is {t[3:-1]}?\nA:" for t in texts]
    model = LoraPredictor(rank=4, lr=1e-3, batch_size=8, max_epochs=1, validation=0.25)
    model.fit(texts, y)
    assert model.n_features_in_ == 576 and len(model.history_) == 2
    assert np.all(np.isfinite(model.predict_proba_success(texts[:4])))
