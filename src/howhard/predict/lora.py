"""The paper's LoRA predictor: λ(x) from the LM itself, fine-tuned on (successes, trials).

The query text x is read by a causal LM (the embedded SmolLM2 GGUF, dequantised by
transformers, or any local Hugging Face directory) whose attention projections carry LoRA
adapters: a frozen weight W becomes W + (lora_alpha / rank) · B A with A (rank × d_in) and B
(d_out × rank) trained. A linear head on the final hidden state h(x) at the text's last token
gives the logit

    λ(x) = σ(w · h̃(x) + b),   h̃ = (h − mean) / scale,

and everything trained (A, B of every adapted projection, w, b) minimises the same mean
per-trial binomial cross-entropy as the other heads,

    L = −Σ_i [c_i log λ(x_i) + (n_i − c_i) log(1 − λ(x_i))] / Σ_i n_i
      =  Σ_i [c_i softplus(−z_i) + (n_i − c_i) softplus(z_i)] / Σ_i n_i,
    dL/dz_i = (n_i λ_i − c_i) / Σ_i n_i,

by AdamW on minibatches. The head starts as the L2-penalised logistic regression on the
untuned states (the `hidden` + logistic predictor; mean and scale are those states' and stay
fixed; its L2 strength the one of `START_ALPHAS` of lowest validation loss unless ``alpha`` is
given), B starts at zero, so epoch 0 is exactly that
predictor; a share ``validation`` of the training queries is held out, its loss measured after
every epoch, and the epoch of lowest validation loss is kept (early stopping after ``patience``
epochs without improvement). Best-of-b success and marginal gains follow as for every λ(x):
q̂(x, b) = 1 − (1 − λ)^b, Δ(x, b) = λ (1 − λ)^(b − 1).

Needs torch, transformers, gguf (``howhard[hf]``) and peft (``howhard[lora]``); they are imported
only when a model is fitted or predicts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from howhard.errors import ConfigError, ModelNotFoundError
from howhard.predict._io import json_meta, read_arrays, read_saved, write_npz
from howhard.predict.metrics import EPS, binomial_log_loss
from howhard.predict.success import SuccessPredictor, _as_counts

_LOG = logging.getLogger(__name__)

FORMAT = "howhard.LoraPredictor"
VERSION = 1
_HEADER_KEYS = ("params", "meta", "n_features_in", "n_iter", "loss", "converged", "adapter")


def binomial_nll(z: Any, c: Any, n: Any) -> Any:
    """The mean per-trial binomial cross-entropy of logits ``z`` (torch tensors of one shape):
    Σ [c softplus(−z) + (n − c) softplus(z)] / Σ n (see the module docstring)."""
    import torch.nn.functional as F

    return (c * F.softplus(-z) + (n - c) * F.softplus(z)).sum() / n.sum()


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise ModelNotFoundError(
            f"the lora head needs peft ({err}): pip install 'howhard[lora]'"
        ) from err
    return peft


def _as_texts(X: Any) -> list[str]:
    """The query texts of X: a sequence (or 1-D array) of strings."""
    if isinstance(X, str) or not isinstance(X, Sequence | np.ndarray):
        raise ConfigError(
            f"X must be a sequence of query texts for the lora head; got {type(X).__name__}"
        )
    texts = list(X)
    if np.ndim(np.asarray(X, dtype=object)) != 1 or not all(isinstance(t, str) for t in texts):
        raise ConfigError("X must be a 1-D sequence of strings (the query texts the LM reads)")
    if not texts or not all(t for t in texts):
        raise ConfigError("X must hold at least one text and no empty ones")
    return texts


@contextlib.contextmanager
def _torch_threads(n_threads: int | None) -> Iterator[None]:
    """torch uses ``n_threads`` (default: the project's one per usable core) inside, and its
    earlier setting again after."""
    import torch

    from howhard.backends.llamacpp import default_threads

    before = torch.get_num_threads()
    torch.set_num_threads(n_threads or default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Net:
    """The LM with LoRA adapters (a peft model of the decoder without its LM head), its
    tokenizer and the linear head; ``logits`` runs a batch of texts."""

    def __init__(self, params: LoraPredictor) -> None:
        import torch

        from howhard.backends.transformers import load_model

        peft = _peft()
        lm = load_model(params.model, device="cpu", dtype="float32")
        self.tokenizer = lm.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        config = peft.LoraConfig(
            r=params.rank,
            lora_alpha=params.lora_alpha,
            lora_dropout=0.0,
            target_modules=[t.strip() for t in params.targets.split(",")],
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.random_state or 0)  # A's initialisation; B starts at 0
            try:
                self.lm = peft.get_peft_model(lm.model.base_model, config)
            except ValueError as err:
                raise ConfigError(
                    f"targets {params.targets!r} name no module of {lm.path}: {err}",
                    param="targets",
                ) from err
        self.dim = int(lm.model.config.hidden_size)
        self.head = torch.nn.Linear(self.dim, 1)
        self.mean = torch.zeros(self.dim)  # h̃ = (h − mean) / scale, fixed at the start
        self.scale = torch.ones(self.dim)

    def adapter(self) -> dict[str, np.ndarray]:
        """The LoRA weights by peft's name (A and B of every adapted projection)."""
        state = _peft().get_peft_model_state_dict(self.lm)
        return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in state.items()}

    def set_adapter(self, weights: dict[str, np.ndarray], where: str) -> None:
        import torch

        expected = {k: tuple(v.shape) for k, v in self.adapter().items()}
        got = {k: tuple(v.shape) for k, v in weights.items()}
        if got != expected:
            raise ConfigError(
                f"{where}: its adapter does not fit the base model (saved for another model or "
                "other targets); load the model it was trained on"
            )
        state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in weights.items()}
        _peft().set_peft_model_state_dict(self.lm, state)

    def trainable(self) -> list[Any]:
        return [p for p in self.lm.parameters() if p.requires_grad] + list(self.head.parameters())

    def states(self, texts: Sequence[str]) -> Any:
        """h(x): the final hidden state at each text's last token, (len(texts), dim). Texts are
        right-padded; under causal attention the padding cannot change the last real token."""
        import torch

        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True)
        mask = enc["attention_mask"]
        out = self.lm(input_ids=enc["input_ids"], attention_mask=mask)
        last = mask.sum(dim=1) - 1
        return out.last_hidden_state[torch.arange(len(texts)), last]

    def logits(self, texts: Sequence[str]) -> Any:
        """z(x) = w · h̃(x) + b."""
        return self.head((self.states(texts) - self.mean) / self.scale).squeeze(-1)

    def predict(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Logits z(x) of ``texts`` in batches of similar length (no gradient)."""
        import torch

        z = np.zeros(len(texts))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        self.lm.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                z[rows] = self.logits([texts[i] for i in rows]).double().numpy()
        return z


START_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)  # the logistic start's L2 strengths tried (alpha None)


class LoraPredictor(SuccessPredictor):
    """λ(x) from the LM fine-tuned with LoRA adapters and a linear head (module docstring).

    Parameters: ``model`` the LM (a GGUF file or a local Hugging Face directory; None: the
    embedded SmolLM2), ``rank`` and ``lora_alpha`` of the adapters on the comma-separated
    ``targets`` (projection names), ``alpha`` the L2 penalty of the logistic head it starts from
    (None: the one of `START_ALPHAS` whose head has the lowest validation loss; ``fit`` sets
    ``start_alpha_`` to the one it used),
    ``lr`` AdamW's learning rate, ``batch_size`` queries per step, ``max_epochs``, ``patience``
    (epochs without a lower validation loss before stopping), ``validation`` the share of the
    training queries held out for early stopping, ``n_threads`` torch's CPU threads (default one
    per usable core), ``random_state`` seeding A, the split and the batch order.

    ``fit`` and the ``predict_*`` methods take the query *texts* (what the LM reads), not
    features. Learned state: ``adapter_`` (peft name → LoRA weights), ``mean_``, ``scale_``,
    ``coef_``, ``intercept_`` (the head), ``n_features_in_`` (the LM's hidden size),
    ``history_`` (validation loss after each epoch, epoch 0 the starting logistic head),
    ``n_iter_`` (the kept epoch), ``loss_`` (its validation loss), ``converged_`` (stopped
    early), ``meta_``.
    """

    head = "lora"  # not a parameter: what reports name this head

    def __init__(
        self,
        model: str | None = None,
        rank: int = 8,
        lora_alpha: float = 16.0,
        targets: str = "q_proj,v_proj",
        alpha: float | None = None,
        lr: float = 5e-4,
        batch_size: int = 16,
        max_epochs: int = 3,
        patience: int = 1,
        validation: float = 0.1,
        n_threads: int | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.model = model
        self.rank = rank
        self.lora_alpha = lora_alpha
        self.targets = targets
        self.alpha = alpha  # type: ignore[assignment]  # may be None, unlike a logistic's
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation = validation
        self.n_threads = n_threads
        self.random_state = random_state

    def _check_params(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}", param=name)

        for name in ("rank", "batch_size", "max_epochs", "patience"):
            positive_int(name)
        if self.n_threads is not None:
            positive_int("n_threads")
        for name, low in (("alpha", 0.0), ("lr", None), ("lora_alpha", None)):
            value = getattr(self, name)
            if name == "alpha" and value is None:
                continue
            ok = isinstance(value, Real) and np.isfinite(float(value))
            if not ok or (value < low if low is not None else value <= 0):
                what = ">= 0" if low is not None else "> 0"
                raise ConfigError(f"{name} must be a finite number {what}; got {value!r}")
        if not (isinstance(self.validation, Real) and 0 < self.validation < 1):
            raise ConfigError(
                f"validation must lie in (0, 1); got {self.validation!r}", param="validation"
            )
        if not isinstance(self.targets, str) or not self.targets.strip():
            raise ConfigError(
                "targets must name the projections to adapt, e.g. 'q_proj,v_proj'",
                param="targets",
            )

    # ------------------------------------------------------------------------------- fitting

    def fit(
        self,
        X: Any,
        y: Any,
        meta: dict[str, Any] | None = None,
        groups: Sequence[int] | None = None,
    ) -> LoraPredictor:
        """Fit λ(x) to ``y`` = [[successes, trials], ...] on the texts ``X``; returns self.
        ``groups`` is accepted for the common interface and ignored (X has no feature blocks)."""
        import torch

        self._check_params()
        texts = _as_texts(X)
        c, n = _as_counts(y)
        if c.size != len(texts):
            raise ConfigError(f"X has {len(texts)} texts but y has {c.size}; pass one per query")
        if len(texts) < 2:
            raise ConfigError("the lora head needs at least 2 queries (one held out)")
        self.meta_ = json_meta(meta)
        rng = np.random.default_rng(self.random_state)
        n_val = min(len(texts) - 1, max(1, round(self.validation * len(texts))))
        val = rng.permutation(len(texts)) < n_val
        train_rows, val_rows = np.flatnonzero(~val), np.flatnonzero(val)
        ct, nt = torch.tensor(c), torch.tensor(n)

        with _torch_threads(self.n_threads):
            net = _Net(self)
            self._net = net
            started = time.perf_counter()
            self._start_head(net, texts, c, n, train_rows, val_rows)
            history = [self._val_loss(net, texts, ct, nt, val_rows)]
            _LOG.info(
                "lora: logistic start (L2 %g) on %d texts, validation loss %.4f (%.0f s)",
                self.start_alpha_,
                train_rows.size,
                history[0],
                time.perf_counter() - started,
            )
            best = (history[0], 0, net.adapter(), self._head_weights(net))
            optimiser = torch.optim.AdamW(net.trainable(), lr=self.lr, weight_decay=0.0)
            waited, stopped = 0, False
            for epoch in range(1, self.max_epochs + 1):
                started = time.perf_counter()
                net.lm.train()
                order = rng.permutation(train_rows)
                for start in range(0, order.size, self.batch_size):
                    rows = order[start : start + self.batch_size]
                    z = net.logits([texts[i] for i in rows])
                    loss = binomial_nll(z.double(), ct[rows], nt[rows])
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                history.append(self._val_loss(net, texts, ct, nt, val_rows))
                _LOG.info(
                    "lora: epoch %d, validation loss %.4f (%.0f s)",
                    epoch,
                    history[-1],
                    time.perf_counter() - started,
                )
                if history[-1] < best[0]:
                    best, waited = (history[-1], epoch, net.adapter(), self._head_weights(net)), 0
                else:
                    waited += 1
                    if waited >= self.patience:
                        stopped = True
                        break
            net.set_adapter(best[2], "the kept epoch")
            self._set_head(net, self.mean_, self.scale_, *best[3])
        self.adapter_ = best[2]
        self.coef_, self.intercept_ = best[3]
        self.n_features_in_ = net.dim
        self.history_ = [float(h) for h in history]
        self.n_iter_ = int(best[1])
        self.loss_ = float(best[0])
        self.converged_ = stopped
        return self

    def _start_head(
        self,
        net: _Net,
        texts: list[str],
        c: np.ndarray,
        n: np.ndarray,
        rows: np.ndarray,
        val_rows: np.ndarray,
    ) -> None:
        """The head w, b of the logistic regression on the untuned states h(x) of the training
        rows, in h's own units: w = coef / scale, b = intercept − w · mean. Its L2 strength is
        ``alpha``, or when that is None the one of `START_ALPHAS` of lowest loss on
        ``val_rows``."""
        import torch

        order = [*rows, *val_rows]
        H = np.zeros((len(order), net.dim))
        net.lm.eval()
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                H[start : start + len(chunk)] = net.states([texts[i] for i in chunk]).numpy()
        fits = []
        for alpha in START_ALPHAS if self.alpha is None else (self.alpha,):
            logistic = SuccessPredictor(alpha=alpha, random_state=self.random_state)
            logistic.fit(H[: rows.size], np.column_stack([c[rows], n[rows]]))
            lam = logistic.predict_proba_success(H[rows.size :])
            fits.append((binomial_log_loss(lam, c[val_rows], n[val_rows]), alpha, logistic))
        _, self.start_alpha_, logistic = min(fits, key=lambda f: f[0])  # ties: the weakest L2
        self.mean_, self.scale_ = logistic.mean_, logistic.scale_
        self._set_head(net, self.mean_, self.scale_, logistic.coef_, logistic.intercept_)

    @staticmethod
    def _head_weights(net: _Net) -> tuple[np.ndarray, float]:
        return (
            net.head.weight.detach().numpy()[0].astype(np.float64),
            float(net.head.bias.detach().numpy()[0]),
        )

    @staticmethod
    def _set_head(
        net: _Net, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float
    ) -> None:
        import torch

        net.mean = torch.tensor(mean, dtype=torch.float32)
        net.scale = torch.tensor(scale, dtype=torch.float32)
        with torch.no_grad():
            net.head.weight.copy_(torch.tensor(np.asarray(coef)[None, :], dtype=torch.float32))
            net.head.bias.fill_(float(intercept))

    def _val_loss(self, net: _Net, texts: list[str], c: Any, n: Any, rows: np.ndarray) -> float:
        import torch

        z = net.predict([texts[i] for i in rows], self.batch_size)
        return float(binomial_nll(torch.tensor(z), c[rows], n[rows]))

    # ---------------------------------------------------------------------------- prediction

    def _network(self) -> _Net:
        """The fitted network, built from the saved weights on first use after `load`."""
        net: _Net | None = getattr(self, "_net", None)
        if net is None:
            with _torch_threads(self.n_threads):
                net = _Net(self)
            net.set_adapter(self.adapter_, "this LoraPredictor")
            self._set_head(net, self.mean_, self.scale_, self.coef_, self.intercept_)
            self._net = net
        return net

    def predict_proba_success(self, X: Any) -> np.ndarray:
        """λ(x) for each text of X, shape (n_queries,), clipped to [1e-6, 1 − 1e-6]."""
        self._check_fitted()
        texts = _as_texts(X)
        net = self._network()
        with _torch_threads(self.n_threads):
            z = net.predict(texts, self.batch_size)
        return np.clip(expit(z), EPS, 1 - EPS)

    # ------------------------------------------------------------------------------ file I/O

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_net", None)  # the torch network is rebuilt from the weights
        return state

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the adapter and head weights to one ``.npz`` (a JSON header naming the base
        model and every adapter array's peft name and shape; no pickle). The base model's own
        weights are not saved: `load` reads them from ``model`` again."""
        self._check_fitted()
        names = sorted(self.adapter_)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "params": self.get_params(),
            "meta": self.meta_,
            "n_features_in": self.n_features_in_,
            "n_iter": self.n_iter_,
            "loss": self.loss_,
            "converged": self.converged_,
            "history": self.history_,
            "adapter": [[name, list(self.adapter_[name].shape)] for name in names],
        }
        arrays: dict[str, Any] = {
            "mean": self.mean_,
            "scale": self.scale_,
            "coef": self.coef_,
            "intercept": np.asarray(self.intercept_),
        }
        arrays.update({f"adapter_{i}": self.adapter_[name] for i, name in enumerate(names)})
        return write_npz(path, header, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LoraPredictor:
        """Read a model written by `save`; the LM itself is loaded when it first predicts."""
        model, header, bad = read_saved(cls, "LoraPredictor", path, VERSION, _HEADER_KEYS)
        adapter = header["adapter"]
        if not (
            isinstance(adapter, list)
            and all(
                isinstance(a, list)
                and len(a) == 2
                and isinstance(a[0], str)
                and isinstance(a[1], list)
                and all(isinstance(s, int) and s >= 1 for s in a[1])
                for a in adapter
            )
        ):
            raise ConfigError(f"{bad} (header field 'adapter' must list [name, shape] pairs)")
        d = header["n_features_in"]
        shapes = [("mean", (d,)), ("scale", (d,)), ("coef", (d,)), ("intercept", ())]
        shapes += [(f"adapter_{i}", tuple(shape)) for i, (_, shape) in enumerate(adapter)]
        arrays = read_arrays(path, shapes, bad)
        model.adapter_ = {
            name: arrays[f"adapter_{i}"].astype(np.float32) for i, (name, _) in enumerate(adapter)
        }
        model.mean_, model.scale_ = arrays["mean"], arrays["scale"]
        model.coef_, model.intercept_ = arrays["coef"], float(arrays["intercept"])
        model.n_features_in_ = d
        model.meta_ = dict(header["meta"])
        model.n_iter_ = int(header["n_iter"])
        model.loss_ = float(header["loss"])
        model.converged_ = bool(header["converged"])
        history = header.get("history", [])
        model.history_ = [float(h) for h in history] if isinstance(history, list) else []
        return model
