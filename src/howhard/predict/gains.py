"""Predict a query's marginal gains Δ(x, b), b = 1..Bmax, from its features (rewards in [0, 1]).

For non-binary rewards q(x, b) = E[max of b sampled rewards] has no one-parameter closed form, so
the whole vector Δ(x, b) = q(x, b) − q(x, b − 1) is predicted (Damani et al., ICLR 2025, §3).
The targets are the unbiased expected-max estimates from the pooled samples, ``pool.gains(bmax)``.

On standardised features x̃ = (x − mean) / scale, a head gives Bmax logits

    linear:  z(x) = C x̃ + c
    mlp:     z(x) = C tanh(W x̃ + b_h) + c

and the gains are products of sigmoids (the first gain, then each gain's ratio to the one before)

    Δ(x, 1) = σ(z_1(x)),   Δ(x, b) / Δ(x, b − 1) = σ(z_b(x)) in (0, 1),

i.e. Δ(x, b) = Π_{j<=b} σ(z_j(x)). Every prediction is thus in [0, 1] and nonincreasing in b, so
q̂(x, ·) is concave, as the true q is for i.i.d. samples, and the greedy allocator is exact on
it. For binary rewards, Δ = λ (1 − λ)^(b − 1) is the case z_1 = logit λ, z_b = −logit λ, so the
linear head contains the logistic SuccessPredictor. Asking for bmax < Bmax keeps the first bmax
gains of the Bmax fitted; asking for more extends them geometrically with the last fitted ratio,
Δ(x, b) = Δ(x, Bmax) σ(z_Bmax(x))^(b − Bmax) (exact for binary rewards, an extrapolation
otherwise: a training pool with n samples per query cannot show the gain of sample n + 1).
The fit is L-BFGS-B on

    L = Σ_{i,b} (Δ(x_i, b) − y_ib)² / (n Bmax v) + alpha · ||weights||²,

the mean squared error divided by the targets' variance v about their mean curve (the training
MSE of the Avg baseline), so L starts near 1 and alpha means the same for any reward scale.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from howhard.errors import ConfigError
from howhard.predict._io import json_meta, read_arrays, read_saved, write_npz
from howhard.predict.success import _as_matrix, _check_bmax, _Head, _hidden, _unpack

VERSION = 1
_HEADER_KEYS = ("params", "meta", "n_features_in", "bmax", "n_iter", "loss", "converged")


def _shapes(head: str, d: int, hidden: int, bmax: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the learned weights, in the order they are packed for the optimiser."""
    if head == "linear":
        return [("coef", (d, bmax)), ("intercept", (bmax,))]
    return [
        ("hidden_coef", (d, hidden)),
        ("hidden_intercept", (hidden,)),
        ("coef", (hidden, bmax)),
        ("intercept", (bmax,)),
    ]


def _gains(z: np.ndarray) -> np.ndarray:
    """Δ_b = Π_{j<=b} σ(z_j) = exp(−Σ_{j<=b} softplus(−z_j)) along the last axis: in [0, 1] and
    nonincreasing in b (a cumulative sum of nonnegative terms never decreases, even rounded)."""
    return np.exp(-np.cumsum(np.logaddexp(0.0, -z), axis=1))


def _objective(
    theta: np.ndarray, X: np.ndarray, Y: np.ndarray, head: str, hidden: int, alpha: float, v: float
) -> tuple[float, np.ndarray]:
    """The training loss L(theta) (see the module docstring) and its gradient."""
    shapes = _shapes(head, X.shape[1], hidden, Y.shape[1])
    w = _unpack(theta, shapes)
    H = _hidden(w, X)
    z = H @ w["coef"] + w["intercept"]
    gains = _gains(z)
    resid = gains - Y
    loss = float(np.sum(resid**2)) / (Y.size * v) + alpha * float(np.sum(w["coef"] ** 2))
    # dΔ_b/dz_j = Δ_b σ(−z_j) for j <= b, so dL/dz_j = σ(−z_j) Σ_{b>=j} Δ_b dL/dΔ_b.
    dgain = 2 * resid * gains / (Y.size * v)
    dz = np.cumsum(dgain[:, ::-1], axis=1)[:, ::-1] * expit(-z)
    grad = {"coef": H.T @ dz + 2 * alpha * w["coef"], "intercept": dz.sum(axis=0)}
    if head == "mlp":
        da = (dz @ w["coef"].T) * (1.0 - H**2)
        grad["hidden_coef"] = X.T @ da + 2 * alpha * w["hidden_coef"]
        grad["hidden_intercept"] = da.sum(axis=0)
        loss += alpha * float(np.sum(w["hidden_coef"] ** 2))
    return loss, np.concatenate([grad[name].ravel() for name, _ in shapes])


def _as_gains(y: Any) -> np.ndarray:
    """Target gains y, shape (n_queries, Bmax), finite and in [−1e-9, 1]."""
    try:
        y = np.asarray(y, dtype=float)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"y must be a numeric matrix of gains (n_queries, Bmax): {err}") from err
    if y.ndim != 2 or y.shape[1] < 1:
        raise ConfigError(
            f"y must have shape (n_queries, Bmax) holding the gains Δ(x, b), b = 1..Bmax; got "
            f"{y.shape} (pass pool.gains(bmax))"
        )
    if not np.all(np.isfinite(y)):
        raise ConfigError("y contains NaN or infinite gains; drop those queries or re-estimate")
    if y.size and (y.min() < -1e-9 or y.max() > 1):
        raise ConfigError(
            f"y must hold gains in [0, 1] (rewards lie in [0, 1]); got values in "
            f"[{y.min():g}, {y.max():g}]: pass pool.gains(bmax), not q or raw rewards"
        )
    return y


class GainsPredictor(_Head):
    """Δ(x, b), the marginal gain of a query's b-th sample, b = 1..Bmax, from its features.

    Parameters: ``head`` ("linear" or "mlp"), ``hidden`` units of the mlp's tanh layer,
    ``alpha`` the L2 penalty on weights, ``max_iter`` L-BFGS-B iterations, ``standardize``
    features, ``random_state`` seeding the mlp's initial weights.

    Learned state: ``mean_``, ``scale_`` (feature standardisation), ``coef_``, ``intercept_``,
    ``hidden_coef_``, ``hidden_intercept_`` (mlp only), ``n_features_in_``, ``bmax_`` (Bmax of
    the targets), ``mean_gains_`` (their mean curve: the Avg baseline), ``n_iter_``, ``loss_``,
    ``converged_`` and ``meta_`` (the JSON-serialisable ``meta`` passed to ``fit``).
    """

    heads = ("linear", "mlp")

    def __init__(
        self,
        head: str = "linear",
        hidden: int = 64,
        alpha: float = 1e-3,
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

    def fit(
        self,
        X: Any,
        y: Any,
        meta: dict[str, Any] | None = None,
        groups: Sequence[int] | None = None,
    ) -> GainsPredictor:
        """Fit Δ(x, b) to target gains ``y`` of shape (n_queries, Bmax); returns self.

        ``y`` is ``pool.gains(bmax)``; ``meta`` (optional, JSON-serialisable) is kept as ``meta_``;
        ``groups`` as in `SuccessPredictor.fit` (feature sources weighted to equal variance).
        """
        self._check_params()
        X, Y = _as_matrix(X), _as_gains(y)
        if Y.shape[0] != X.shape[0] or X.shape[0] == 0:
            raise ConfigError(f"X has {X.shape[0]} rows but y has {Y.shape[0]}; pass one per query")
        self.meta_ = json_meta(meta)
        d, bmax = X.shape[1], Y.shape[1]
        self.n_features_in_, self.bmax_ = d, bmax
        self._set_standardisation(X, groups)
        self.mean_gains_ = Y.mean(axis=0)
        v = max(float(np.mean((Y - self.mean_gains_) ** 2)), 1e-12)

        # Start from the constant curve closest to the mean targets (random hidden layer).
        mean = np.clip(self.mean_gains_, 1e-9, 1.0)
        ratios = np.clip(mean / np.append(1.0, mean[:-1]), 1e-6, 1 - 1e-6)
        shapes = _shapes(self.head, d, self.hidden, bmax)
        init = {name: np.zeros(shape) for name, shape in shapes}
        init["intercept"] = np.log(ratios / (1 - ratios))  # σ⁻¹
        if self.head == "mlp":
            rng = np.random.default_rng(self.random_state)
            init["hidden_coef"] = rng.normal(0.0, 1.0 / np.sqrt(d), size=(d, self.hidden))
        res = minimize(
            _objective,
            np.concatenate([init[name].ravel() for name, _ in shapes]),
            args=((X - self.mean_) / self.scale_, Y, self.head, self.hidden, float(self.alpha), v),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter},
        )
        for stale in ("hidden_coef_", "hidden_intercept_"):  # from an earlier fit as an mlp
            self.__dict__.pop(stale, None)
        for name, value in _unpack(np.asarray(res.x), shapes).items():
            setattr(self, name + "_", value.copy())
        self.n_iter_, self.loss_, self.converged_ = int(res.nit), float(res.fun), bool(res.success)
        return self

    def _weights(self) -> dict[str, Any]:
        shapes = _shapes(self.head, self.n_features_in_, self.hidden, self.bmax_)
        return {name: getattr(self, name + "_") for name, _ in shapes}

    def predict_gains(self, X: Any, bmax: int) -> np.ndarray:
        """Δ̂(x, b) for b = 1..bmax, shape (n_queries, bmax); nonnegative and nonincreasing in b
        (beyond bmax_, the geometric extension of the module doc)."""
        self._check_fitted()
        _check_bmax(bmax)
        X = self._check_X(X)
        w = self._weights()
        z = _hidden(w, (X - self.mean_) / self.scale_) @ w["coef"] + w["intercept"]
        gains = _gains(z)
        if bmax > self.bmax_:
            steps = np.arange(1, bmax - self.bmax_ + 1)
            tail = gains[:, -1:] * expit(z[:, -1:]) ** steps
            gains = np.concatenate([gains, tail], axis=1)
        return np.ascontiguousarray(gains[:, :bmax])

    def predict_q(self, X: Any, bmax: int) -> np.ndarray:
        """q̂(x, b) = Σ_{k<=b} Δ̂(x, k) for b = 0..bmax, shape (n_queries, bmax + 1); q̂(x, 0) = 0."""
        gains = self.predict_gains(X, bmax)
        return np.concatenate([np.zeros((gains.shape[0], 1)), np.cumsum(gains, axis=1)], axis=1)

    def score(self, X: Any, y: Any) -> float:
        """Negative mean squared error of the predicted gains against ``y`` (n_queries, b <= Bmax)
        (higher is better, as scikit-learn's model selection expects)."""
        Y = _as_gains(y)
        return -float(np.mean((self.predict_gains(X, Y.shape[1]) - Y) ** 2))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model to one ``.npz`` file (arrays + a JSON header; no pickle),
        atomically. Returns the path."""
        self._check_fitted()
        header = {
            "format": "howhard.GainsPredictor",
            "version": VERSION,
            "params": self.get_params(),
            "meta": self.meta_,
            "n_features_in": self.n_features_in_,
            "bmax": self.bmax_,
            "n_iter": self.n_iter_,
            "loss": self.loss_,
            "converged": self.converged_,
        }
        arrays = {"mean": self.mean_, "scale": self.scale_, "mean_gains": self.mean_gains_}
        return write_npz(path, header, {**arrays, **self._weights()})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GainsPredictor:
        """Read a model written by `save` (never unpickles anything)."""
        model, header, bad = read_saved(cls, "GainsPredictor", path, VERSION, _HEADER_KEYS)
        d, bmax = header["n_features_in"], header["bmax"]
        shapes = _shapes(model.head, d, model.hidden, bmax)
        shapes = [("mean", (d,)), ("scale", (d,)), ("mean_gains", (bmax,)), *shapes]
        arrays = read_arrays(path, shapes, bad)
        for name, _ in shapes:
            setattr(model, name + "_", arrays[name])
        model.n_features_in_, model.bmax_ = d, bmax
        model.meta_ = dict(header["meta"])
        model.n_iter_, model.loss_ = int(header["n_iter"]), float(header["loss"])
        model.converged_ = bool(header["converged"])
        return model
