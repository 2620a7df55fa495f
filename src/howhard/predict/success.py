"""Predict a query's one-sample success probability λ(x) from its features (binary rewards).

Each training query i has features x_i (a sentence embedding or an LM hidden state) and c_i
successes out of n_i sampled answers (c_i may be fractional: soft labels). The model is

    logistic:  λ(x) = σ(w·x̃ + b)
    mlp:       λ(x) = σ(w·tanh(W x̃ + b_h) + b)

on standardised features x̃ = (x − mean) / scale, fitted by L-BFGS-B on the mean per-trial
binomial cross-entropy plus an L2 penalty on the weights (not the intercepts):

    L = −Σ_i [c_i log λ(x_i) + (n_i − c_i) log(1 − λ(x_i))] / Σ_i n_i + alpha · ||weights||².

Samples are assumed independent given x, so best-of-b success is q̂(x, b) = 1 − (1 − λ)^b and
the marginal gain of the b-th sample is Δ(x, b) = q̂(x, b) − q̂(x, b − 1) = λ (1 − λ)^(b − 1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.base import BaseEstimator

from howhard.errors import BudgetError, ConfigError, NotFittedError
from howhard.predict._io import json_meta, read_arrays, read_saved, write_npz
from howhard.predict.metrics import EPS, binomial_log_loss, check_counts

FORMAT = "howhard.SuccessPredictor"
VERSION = 1


def _shapes(head: str, n_features: int, hidden: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the learned weights, in the order they are packed for the optimiser."""
    if head == "logistic":
        return [("coef", (n_features,)), ("intercept", ())]
    return [
        ("hidden_coef", (n_features, hidden)),
        ("hidden_intercept", (hidden,)),
        ("coef", (hidden,)),
        ("intercept", ()),
    ]


def _unpack(theta: np.ndarray, shapes: list[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        out[name] = theta[start : start + size].reshape(shape)
        start += size
    return out


def _hidden(weights: dict[str, Any], X: np.ndarray) -> np.ndarray:
    """The output layer's input: tanh(W x̃ + b_h) for the mlp, x̃ itself for the logistic head."""
    if "hidden_coef" in weights:
        return np.tanh(X @ weights["hidden_coef"] + weights["hidden_intercept"])
    return X


def _objective(
    theta: np.ndarray,
    X: np.ndarray,
    c: np.ndarray,
    n: np.ndarray,
    head: str,
    hidden: int,
    alpha: float,
) -> tuple[float, np.ndarray]:
    """The training loss L(theta) (see the module docstring) and its gradient.

    With λ = σ(z): −log λ = softplus(−z), −log(1 − λ) = softplus(z), dL/dz_i = (n_i λ_i − c_i)/N.
    """
    shapes = _shapes(head, X.shape[1], hidden)
    w = _unpack(theta, shapes)
    total = n.sum()
    H = _hidden(w, X)
    z = H @ w["coef"] + w["intercept"]
    loss = (c @ np.logaddexp(0.0, -z) + (n - c) @ np.logaddexp(0.0, z)) / total
    dz = (n * expit(z) - c) / total
    grad = {"coef": H.T @ dz + 2 * alpha * w["coef"], "intercept": np.asarray(dz.sum())}
    loss += alpha * float(w["coef"] @ w["coef"])
    if head == "mlp":
        da = np.outer(dz, w["coef"]) * (1.0 - H**2)
        grad["hidden_coef"] = X.T @ da + 2 * alpha * w["hidden_coef"]
        grad["hidden_intercept"] = da.sum(axis=0)
        loss += alpha * float(np.sum(w["hidden_coef"] ** 2))
    return float(loss), np.concatenate([grad[name].ravel() for name, _ in shapes])


def _as_matrix(X: Any) -> np.ndarray:
    try:
        arr = np.asarray(X, dtype=float)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"X must be a numeric matrix of features (n_queries, d): {err}") from err
    if arr.ndim != 2:
        raise ConfigError(
            f"X must be a 2-D array of shape (n_queries, n_features); got shape {arr.shape} "
            "(for a single query use X.reshape(1, -1))"
        )
    if not np.all(np.isfinite(arr)):
        raise ConfigError("X contains NaN or infinite values; check the featurizer output")
    return arr


def _as_counts(y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Successes c and trials n from y = [[c, n], ...], validated (0 <= c <= n, n > 0)."""
    y = np.asarray(y, dtype=float)
    if y.ndim != 2 or y.shape[1] != 2:
        raise ConfigError(
            f"y must have shape (n_queries, 2) holding [successes, trials]; got {y.shape} "
            "(build it with np.column_stack([successes, trials]))"
        )
    return check_counts(y[:, 0], y[:, 1])


class _Head(BaseEstimator):
    """What both predictors share: their parameters' checks, the not-fitted error and the
    feature check. ``heads`` names the output heads a subclass offers."""

    heads: tuple[str, ...] = ()
    head: str
    hidden: int
    alpha: float
    max_iter: int
    n_features_in_: int
    meta_: dict[str, Any]

    def _check_params(self) -> None:
        if self.head not in self.heads:
            raise ConfigError(f"head must be one of {self.heads}; got {self.head!r}")
        if self.head == "mlp" and (
            not isinstance(self.hidden, int | np.integer) or self.hidden < 1
        ):
            raise ConfigError(f"hidden must be a positive integer; got {self.hidden!r}")
        if not (isinstance(self.alpha, Real) and np.isfinite(self.alpha) and self.alpha >= 0):
            raise ConfigError(f"alpha (L2 penalty) must be a finite number >= 0; got {self.alpha}")
        if not isinstance(self.max_iter, int | np.integer) or self.max_iter < 1:
            raise ConfigError(f"max_iter must be a positive integer; got {self.max_iter!r}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            name = type(self).__name__
            raise NotFittedError(
                f"this {name} is not fitted yet: call fit(X, y) first "
                f"(or {name}.load(path) a saved one)"
            )

    def _set_standardisation(self, X: np.ndarray, groups: Sequence[int] | None) -> None:
        """``mean_`` and ``scale_`` so that x̃ = (x − mean_) / scale_ is standardised (when
        ``standardize``) and, with ``groups`` (the widths of consecutive blocks of columns, one
        per feature source, summing to d), block s of width d_s is then multiplied by
        w_s = sqrt(d / (S d_s)): every source has the same total variance d / S, so a source
        of a few features is not drowned by one of thousands under the one L2 penalty."""
        d = X.shape[1]
        self.mean_ = X.mean(axis=0) if self.standardize else np.zeros(d)
        scale = X.std(axis=0) if self.standardize else np.ones(d)
        scale = np.where(scale > 0, scale, 1.0)
        if groups is not None:
            widths = [int(g) for g in groups]
            if sum(widths) != d or min(widths, default=0) < 1:
                raise ConfigError(
                    f"groups {widths} must be positive widths of column blocks summing to the "
                    f"{d} features of X",
                    param="groups",
                )
            weights = np.repeat([np.sqrt(d / (len(widths) * w)) for w in widths], widths)
            scale = scale / weights
        self.scale_ = scale

    def _check_X(self, X: Any) -> np.ndarray:
        return _checked_features(self, X)


def _checked_features(model: Any, X: Any) -> np.ndarray:
    """``X`` as a matrix, after checking that ``model`` is fitted, and on as many features."""
    model._check_fitted()
    X = _as_matrix(X)
    if X.shape[1] != model.n_features_in_:
        raise ConfigError(
            f"X has {X.shape[1]} features but the {type(model).__name__} was fitted on "
            f"{model.n_features_in_}; featurize queries with the featurizer used for fit"
            + (f" ({model.meta_})" if model.meta_ else "")
        )
    return X


class SuccessPredictor(_Head):
    """λ(x), the one-sample success probability of a query, from its features.

    Parameters: ``head`` ("logistic" or "mlp"), ``hidden`` units of the mlp's tanh layer,
    ``alpha`` the L2 penalty on weights, ``max_iter`` L-BFGS-B iterations, ``standardize``
    features to zero mean and unit variance, ``random_state`` seeding the mlp's initial weights.

    Learned state: ``mean_``, ``scale_`` (feature standardisation), ``coef_``, ``intercept_``
    (output layer), ``hidden_coef_``, ``hidden_intercept_`` (mlp only), ``n_features_in_``,
    ``n_iter_``, ``loss_`` (final training objective), ``converged_`` and ``meta_`` (the
    JSON-serialisable ``meta`` passed to ``fit``, e.g. which featurizer made X).
    """

    heads = ("logistic", "mlp")

    def __init__(
        self,
        head: str = "logistic",
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

    # ------------------------------------------------------------------------------- fitting

    def fit(
        self,
        X: Any,
        y: Any,
        meta: dict[str, Any] | None = None,
        groups: Sequence[int] | None = None,
    ) -> SuccessPredictor:
        """Fit λ(x) to ``y`` = [[successes, trials], ...], shape (n_queries, 2); returns self.

        ``meta`` (optional, JSON-serialisable) is stored as ``meta_`` and saved with the model.
        ``groups``: the widths of X's column blocks made by different feature sources, weighted
        to equal total variance (`_set_standardisation`; the weights live in ``scale_``).
        """
        self._check_params()
        X = _as_matrix(X)
        c, n = _as_counts(y)
        if c.size != X.shape[0]:
            raise ConfigError(f"X has {X.shape[0]} rows but y has {c.size}; pass one per query")
        self.meta_ = json_meta(meta)

        d = X.shape[1]
        self.n_features_in_ = d
        self._set_standardisation(X, groups)
        Xs = (X - self.mean_) / self.scale_

        # Start from the constant predictor λ = overall success rate (random hidden layer).
        rate = float(np.clip(c.sum() / n.sum(), EPS, 1 - EPS))
        shapes = _shapes(self.head, d, self.hidden)
        init = {name: np.zeros(shape) for name, shape in shapes}
        init["intercept"] = np.asarray(np.log(rate / (1 - rate)))
        if self.head == "mlp":
            rng = np.random.default_rng(self.random_state)
            init["hidden_coef"] = rng.normal(0.0, 1.0 / np.sqrt(d), size=(d, self.hidden))
        theta0 = np.concatenate([init[name].ravel() for name, _ in shapes])

        res = minimize(
            _objective,
            theta0,
            args=(Xs, c, n, self.head, self.hidden, float(self.alpha)),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter},
        )
        for stale in ("hidden_coef_", "hidden_intercept_"):  # from an earlier fit as an mlp
            self.__dict__.pop(stale, None)
        self._set_weights(_unpack(np.asarray(res.x), shapes))
        self.n_iter_ = int(res.nit)
        self.loss_ = float(res.fun)
        self.converged_ = bool(res.success)
        return self

    def _set_weights(self, weights: dict[str, np.ndarray]) -> None:
        for name, value in weights.items():
            setattr(self, name + "_", float(value) if value.ndim == 0 else value.copy())

    def _weights(self) -> dict[str, Any]:
        names = [name for name, _ in _shapes(self.head, self.n_features_in_, self.hidden)]
        return {name: getattr(self, name + "_") for name in names}

    # ---------------------------------------------------------------------------- prediction

    def predict_proba_success(self, X: Any) -> np.ndarray:
        """λ(x) for each row of X, shape (n_queries,), clipped to [1e-6, 1 − 1e-6]."""
        X = self._check_X(X)
        Xs = (X - self.mean_) / self.scale_
        z = _hidden(self._weights(), Xs) @ self.coef_ + self.intercept_
        return np.clip(expit(z), EPS, 1 - EPS)

    def predict_q(self, X: Any, bmax: int) -> np.ndarray:
        """q̂(x, b) = 1 − (1 − λ(x))^b for b = 0..bmax, shape (n_queries, bmax + 1); q̂(x, 0) = 0."""
        _check_bmax(bmax)
        lam = self.predict_proba_success(X)
        b = np.arange(bmax + 1)
        return -np.expm1(np.outer(np.log1p(-lam), b))

    def predict_gains(self, X: Any, bmax: int) -> np.ndarray:
        """Δ(x, b) = λ (1 − λ)^(b − 1) for b = 1..bmax, shape (n_queries, bmax)."""
        _check_bmax(bmax)
        lam = self.predict_proba_success(X)
        b = np.arange(1, bmax + 1)
        return lam[:, None] * np.exp(np.outer(np.log1p(-lam), b - 1))

    def score(self, X: Any, y: Any) -> float:
        """Negative mean per-trial binomial log loss on y = [[successes, trials], ...] (higher is
        better, as scikit-learn's model selection expects)."""
        return -binomial_log_loss(self.predict_proba_success(X), *_as_counts(y))

    # ------------------------------------------------------------------------------ file I/O

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model to one ``.npz`` file (arrays + a JSON header; no pickle).

        The file is written atomically (temp file beside it, then rename). Returns the path.
        """
        self._check_fitted()
        header = {
            "format": FORMAT,
            "version": VERSION,
            "params": self.get_params(),
            "meta": self.meta_,
            "n_features_in": self.n_features_in_,
            "n_iter": self.n_iter_,
            "loss": self.loss_,
            "converged": self.converged_,
        }
        arrays: dict[str, Any] = {"mean": self.mean_, "scale": self.scale_, **self._weights()}
        return write_npz(path, header, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SuccessPredictor:
        """Read a model written by `save` (never unpickles anything)."""
        model, header, bad = read_saved(cls, "SuccessPredictor", path, VERSION, _HEADER_KEYS)
        d = header["n_features_in"]
        shapes = _shapes(model.head, d, model.hidden)
        arrays = read_arrays(path, [("mean", (d,)), ("scale", (d,)), *shapes], bad)
        model.n_features_in_ = d
        model.mean_, model.scale_ = arrays["mean"], arrays["scale"]
        model._set_weights({name: arrays[name] for name, _ in shapes})
        model.meta_ = dict(header["meta"])
        model.n_iter_ = int(header["n_iter"])
        model.loss_ = float(header["loss"])
        model.converged_ = bool(header["converged"])
        return model


_HEADER_KEYS = ("params", "meta", "n_features_in", "n_iter", "loss", "converged")


def _check_bmax(bmax: int) -> None:
    if not isinstance(bmax, int | np.integer) or bmax < 1:
        raise BudgetError(f"bmax (max samples per query) must be an integer >= 1; got {bmax!r}")
