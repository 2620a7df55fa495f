"""One head for many decoders: every decoder's one-sample success λ_m(x) from shared features.

A menu holds M decoders' pools of the same queries (binary rewards). Query i has c_im successes
in n_im samples of decoder m (n_im = 0: decoder m has no samples of it). On standardised
features x̃, the logits of all decoders come from one representation (`howhard.predict._net`):

    lowrank:   λ_m(x) = σ((x̃ U) v_m + a_m)          U: d × r shared, v_m: r per decoder
    mlp:       λ_m(x) = σ(tanh(x̃ U + u) v_m + a_m)  a tanh layer of r units shared
    logistic:  λ_m(x) = σ(x̃ w_m + a_m)              no sharing: M separate logistic regressions

(r = ``hidden``). What a query's difficulty looks like in its text is shared by the decoders, so
the M pools all train U; each decoder keeps its own output weights v_m and offset a_m (a strong
decoder solves more at the same difficulty). The fit is L-BFGS-B on the per-trial binomial
cross-entropy pooled over all decoders, plus an L2 penalty on the weights (not the intercepts):

    L = −Σ_{i,m} [c_im log λ_m(x_i) + (n_im − c_im) log(1 − λ_m(x_i))] / Σ_{i,m} n_im
        + alpha · (||U||² + ||V||²),

with dL/dz_im = (n_im λ_m(x_i) − c_im) / Σ n. For each decoder, as for the SuccessPredictor,
q̂_m(x, b) = 1 − (1 − λ_m)^b and Δ̂_m(x, b) = λ_m (1 − λ_m)^(b − 1) (independent samples).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from howhard.errors import ConfigError, PoolError
from howhard.pool import Pool
from howhard.predict import _net
from howhard.predict._io import json_meta, read_arrays, read_model, write_npz
from howhard.predict.metrics import EPS
from howhard.predict.success import SuccessPredictor, _as_matrix, _check_bmax, _Head, _unpack

VERSION = 1
_HEADER_KEYS = ("params", "meta", "n_features_in", "n_iter", "loss", "converged", "decoders")


def _as_counts(y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Successes c and trials n, each (n_queries, M), from y of shape (n_queries, M, 2);
    0 <= c <= n, n >= 0, and every decoder has some trials."""
    try:
        y = np.asarray(y, dtype=float)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"counts must be numeric [successes, trials] pairs: {err}") from err
    if y.ndim != 3 or y.shape[2] != 2 or y.shape[0] == 0 or y.shape[1] == 0:
        raise ConfigError(
            f"counts must have shape (n_queries, n_decoders, 2) holding [successes, trials] of "
            f"each decoder; got {y.shape} (stack each decoder's np.column_stack([c, n]) on "
            "axis 1)"
        )
    if not np.all(np.isfinite(y)):
        raise ConfigError("counts contain NaN or infinite values; drop or fix those queries")
    c, n = y[..., 0], y[..., 1]
    if np.any(n < 0) or np.any(c < 0) or np.any(c > n):
        raise ConfigError(
            "counts must have 0 <= successes <= trials for every query and decoder (trials 0: "
            "the decoder has no samples of that query); check the labels"
        )
    empty = np.flatnonzero(n.sum(axis=0) == 0)
    if empty.size:
        raise ConfigError(
            f"decoder {int(empty[0])} has no trials at all; drop it or label some queries with it"
        )
    return c, n


def _objective(
    theta: np.ndarray,
    X: np.ndarray,
    c: np.ndarray,
    n: np.ndarray,
    head: str,
    hidden: int,
    alpha: float,
) -> tuple[float, np.ndarray]:
    """The training loss L(theta) of the module doc and its exact gradient."""
    shapes = _net.shapes(head, X.shape[1], hidden, c.shape[1])
    w = _unpack(theta, shapes)
    H, Z = _net.forward(w, X)
    total = n.sum()
    loss = float(np.sum(c * np.logaddexp(0.0, -Z) + (n - c) * np.logaddexp(0.0, Z))) / total
    dZ = (n * expit(Z) - c) / total
    grad = _net.backward(w, X, H, dZ, alpha)
    return loss + _net.penalty(w, alpha), _net.pack(grad, shapes)


class MultiPredictor(_Head):
    """λ_m(x) for each of M decoders from shared features (module doc).

    Parameters: ``head`` ("lowrank", "mlp" or "logistic"), ``hidden`` the rank r of the shared
    representation (lowrank, mlp), ``alpha`` the L2 penalty on weights, ``max_iter`` L-BFGS-B
    iterations, ``standardize`` features, ``random_state`` seeding the shared layer's start.

    Learned state: ``mean_``, ``scale_``, ``coef_`` (r × M, or d × M for logistic),
    ``intercept_`` (M,), ``hidden_coef_`` (d × r), ``hidden_intercept_`` (mlp), ``decoders_``
    (the M names), ``n_features_in_``, ``n_iter_``, ``loss_``, ``converged_``, ``meta_``.
    """

    heads = _net.HEADS

    def __init__(
        self,
        head: str = "lowrank",
        hidden: int = 8,
        alpha: float = 1e-2,
        max_iter: int = 500,
        standardize: bool = True,
        random_state: int | None = 0,
    ) -> None:
        self.head = head
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.standardize = standardize
        self.random_state = random_state

    def _check_params(self) -> None:
        super()._check_params()
        if self.head == "lowrank" and (
            not isinstance(self.hidden, int | np.integer) or self.hidden < 1
        ):
            raise ConfigError(f"hidden must be a positive integer; got {self.hidden!r}")

    def fit(
        self,
        X: Any,
        counts: Any,
        decoders: Sequence[str] | None = None,
        meta: dict[str, Any] | None = None,
        groups: Sequence[int] | None = None,
    ) -> MultiPredictor:
        """Fit every λ_m(x) to ``counts`` of shape (n_queries, M, 2) holding [successes, trials]
        of decoder m on query i; ``decoders`` names the M decoders (default "0".."M-1");
        ``groups`` the widths of X's column blocks of different feature sources, weighted as
        the SuccessPredictor weights them. Returns self."""
        self._check_params()
        X = _as_matrix(X)
        c, n = _as_counts(counts)
        if c.shape[0] != X.shape[0]:
            raise ConfigError(
                f"X has {X.shape[0]} rows but counts has {c.shape[0]}; pass one per query"
            )
        names = [str(m) for m in range(c.shape[1])] if decoders is None else list(decoders)
        if len(names) != c.shape[1] or len(set(names)) != len(names):
            raise ConfigError(
                f"decoders must be {c.shape[1]} distinct names, one per column of counts; "
                f"got {names!r}"
            )
        self.meta_ = json_meta(meta)
        d = X.shape[1]
        self.n_features_in_, self.decoders_ = d, names
        self._set_standardisation(X, groups)

        rate = np.clip(c.sum(axis=0) / n.sum(axis=0), EPS, 1 - EPS)
        start = _net.init(self.head, d, self.hidden, np.log(rate / (1 - rate)), self.random_state)
        shapes = _net.shapes(self.head, d, self.hidden, len(names))
        res = minimize(
            _objective,
            _net.pack(start, shapes),
            args=((X - self.mean_) / self.scale_, c, n, self.head, self.hidden, float(self.alpha)),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter},
        )
        for stale in ("hidden_coef_", "hidden_intercept_"):  # from an earlier fit
            self.__dict__.pop(stale, None)
        for name, value in _unpack(np.asarray(res.x), shapes).items():
            setattr(self, name + "_", value.copy())
        self.n_iter_, self.loss_, self.converged_ = int(res.nit), float(res.fun), bool(res.success)
        return self

    def _weights(self) -> dict[str, Any]:
        shapes = _net.shapes(self.head, self.n_features_in_, self.hidden, len(self.decoders_))
        return {name: getattr(self, name + "_") for name, _ in shapes}

    def predict_proba_success(self, X: Any) -> np.ndarray:
        """λ_m(x) for each query and decoder, shape (n_queries, M), clipped to [1e-6, 1 − 1e-6]."""
        X = self._check_X(X)
        _, Z = _net.forward(self._weights(), (X - self.mean_) / self.scale_)
        return np.clip(expit(Z), EPS, 1 - EPS)

    def predict(self, X: Any) -> np.ndarray:
        """The same as `predict_proba_success`: shape (n_queries, M)."""
        return self.predict_proba_success(X)

    def predict_q(self, X: Any, bmax: int) -> np.ndarray:
        """q̂_m(x, b) = 1 − (1 − λ_m(x))^b for b = 0..bmax, shape (n_queries, M, bmax + 1)."""
        _check_bmax(bmax)
        lam = self.predict_proba_success(X)
        return -np.expm1(np.log1p(-lam)[..., None] * np.arange(bmax + 1))

    def predict_gains(self, X: Any, bmax: int) -> np.ndarray:
        """Δ̂_m(x, b) = λ_m (1 − λ_m)^(b − 1) for b = 1..bmax, shape (n_queries, M, bmax);
        ``[:, m, :]`` is decoder m's gains matrix for `howhard.allocate.greedy`."""
        _check_bmax(bmax)
        lam = self.predict_proba_success(X)
        return lam[..., None] * np.exp(np.log1p(-lam)[..., None] * np.arange(bmax))

    def log_loss(self, X: Any, counts: Any) -> np.ndarray:
        """Each decoder's mean per-trial binomial cross-entropy on ``counts`` (n_queries, M, 2),
        shape (M,) (NaN for a decoder with no trials there)."""
        lam = self.predict_proba_success(X)
        c, n = _as_counts_lenient(counts, lam.shape)
        total = n.sum(axis=0)
        loss = -(c * np.log(lam) + (n - c) * np.log1p(-lam)).sum(axis=0)
        return np.where(total > 0, loss / np.where(total > 0, total, 1), np.nan)

    def score(self, X: Any, counts: Any) -> float:
        """Negative per-trial cross-entropy pooled over all decoders (higher is better)."""
        lam = self.predict_proba_success(X)
        c, n = _as_counts(counts)
        return float((c * np.log(lam) + (n - c) * np.log1p(-lam)).sum() / n.sum())

    def decoder(self, name: str, meta: dict[str, Any] | None = None) -> SuccessPredictor:
        """Decoder ``name``'s λ(x) alone, as a SuccessPredictor that predicts exactly its column
        of `predict_proba_success` (and saves, loads and serves like any other): a lowrank
        head's U v_m folded into a logistic head's coefficients, an mlp head's shared tanh
        layer with v_m on top. ``meta`` (default this model's) is the slice's."""
        self._check_fitted()
        if name not in self.decoders_:
            raise ConfigError(
                f"no decoder {name!r} in this MultiPredictor; it has {self.decoders_}"
            )
        m = self.decoders_.index(name)
        w = self._weights()
        params = self.get_params()
        params["head"] = "mlp" if self.head == "mlp" else "logistic"
        one = SuccessPredictor(**params)
        one.n_features_in_, one.mean_, one.scale_ = self.n_features_in_, self.mean_, self.scale_
        weights = {"coef": w["coef"][:, m], "intercept": w["intercept"][m]}
        if self.head == "lowrank":
            weights["coef"] = w["hidden_coef"] @ weights["coef"]
        elif self.head == "mlp":
            weights |= {k: w[k] for k in ("hidden_coef", "hidden_intercept")}
        one._set_weights({k: np.asarray(v) for k, v in weights.items()})
        one.meta_ = json_meta(self.meta_ if meta is None else meta)
        one.n_iter_, one.loss_, one.converged_ = self.n_iter_, self.loss_, self.converged_
        return one

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model to one ``.npz`` file (arrays + a JSON header; no pickle),
        atomically. Returns the path."""
        self._check_fitted()
        header = {
            "format": "howhard.MultiPredictor",
            "version": VERSION,
            "params": self.get_params(),
            "meta": self.meta_,
            "n_features_in": self.n_features_in_,
            "decoders": self.decoders_,
            "n_iter": self.n_iter_,
            "loss": self.loss_,
            "converged": self.converged_,
        }
        return write_npz(
            path, header, {"mean": self.mean_, "scale": self.scale_, **self._weights()}
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MultiPredictor:
        """Read a model written by `save` (never unpickles anything)."""
        header, bad = read_model(path, "MultiPredictor", VERSION, _HEADER_KEYS, cls().get_params())
        names = header["decoders"]
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(m, str) for m in names)
            or len(set(names)) != len(names)
        ):
            raise ConfigError(f"{bad} (header field 'decoders' must be a list of distinct names)")
        model = cls(**header["params"])
        try:
            model._check_params()
        except ConfigError as err:
            raise ConfigError(f"{bad} (saved parameters: {err})") from err
        d = header["n_features_in"]
        shapes = _net.shapes(model.head, d, model.hidden, len(names))
        arrays = read_arrays(path, [("mean", (d,)), ("scale", (d,)), *shapes], bad)
        for name, value in arrays.items():
            setattr(model, name + "_", value)
        model.n_features_in_, model.decoders_ = d, list(names)
        model.meta_ = dict(header["meta"])
        model.n_iter_, model.loss_ = int(header["n_iter"]), float(header["loss"])
        model.converged_ = bool(header["converged"])
        return model


def _as_counts_lenient(counts: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """`_as_counts` allowing a decoder without trials, checked against (n_queries, M)."""
    y = np.asarray(counts, dtype=float)
    if y.shape != (*shape, 2):
        raise ConfigError(f"counts must have shape {(*shape, 2)}; got {y.shape}")
    c, n = y[..., 0], y[..., 1]
    if not np.all(np.isfinite(y)) or np.any(n < 0) or np.any(c < 0) or np.any(c > n):
        raise ConfigError("counts must be finite with 0 <= successes <= trials; check the labels")
    return c, n


def pool_counts(pools: Sequence[Pool]) -> np.ndarray:
    """[successes, trials] of every pool's queries, shape (n_queries, M, 2); the pools must hold
    the same queries in the same order (`howhard.menu.aligned` puts them so) with binary rewards."""
    if not pools:
        raise ConfigError("pools is empty; pass one pool per decoder", param="pools")
    first = pools[0]
    for m, pool in enumerate(pools):
        if pool.ids != first.ids:
            raise PoolError(
                f"pool {m} does not hold pool 0's queries in pool 0's order; align them first "
                "with howhard.menu.aligned(pools)"
            )
        if not pool.binary:
            raise PoolError(
                f"pool {m} has non-binary rewards; the multi-decoder head predicts success "
                "rates: binarize it first (pool.binarized())"
            )
    return np.stack([np.column_stack([p.successes(), p.n_samples]) for p in pools], axis=1)


def fit_multi(
    X: Any,
    pools: Sequence[Pool],
    names: Sequence[str] | None = None,
    head: str = "lowrank",
    hidden: int = 8,
    alpha: float = 1e-2,
    random_state: int | None = 0,
    meta: dict[str, Any] | None = None,
) -> MultiPredictor:
    """A MultiPredictor fitted on the features X of pool 0's queries and the counts of every
    pool (`pool_counts`); ``names`` the decoders (default "0".."M-1"). Its
    ``predict_proba_success(X)`` has shape (n_queries, M)."""
    model = MultiPredictor(head=head, hidden=hidden, alpha=alpha, random_state=random_state)
    return model.fit(X, pool_counts(pools), decoders=names, meta=meta)
