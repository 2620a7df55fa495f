"""The never-solvable tail: a zero-inflated beta-binomial model of success (binary rewards).

A logistic λ(x) says every query is solved eventually; on a small model many are never solved,
and at budgets B >= 4 the saving lies in telling "never" from "rarely". This head gives each
query a point mass of never-solvable and a spread of rates otherwise:

    with probability π(x) the query is never solved (λ = 0),
    otherwise λ ~ Beta(α, β),  α = μ(x) κ,  β = (1 − μ(x)) κ,

where [logit π(x), logit μ(x)] are the two logits of a logistic (or one-hidden-layer mlp) head on
standardised features (`howhard.predict._net`) and the concentration κ = e^s is one fitted number.
Samples are independent given λ. A query with c successes in n samples has the probability of
its observed sequence (the binomial coefficient, constant in the weights, left out)

    P(c | x) = π [c = 0] + (1 − π) B(c + α, n − c + β) / B(α, β),

and the fit is L-BFGS-B on the mean per-trial negative log-likelihood plus an L2 penalty,

    L = −Σ_i log P(c_i | x_i) / Σ_i n_i + alpha · ||weights||².

With π = 0 and κ → ∞ it is the SuccessPredictor's binomial cross-entropy, so the two losses
compare. Gradients (ψ the digamma function, A = log B(c + α, n − c + β) − log B(α, β)):

    ∂A/∂α = ψ(c + α) − ψ(n + κ) − ψ(α) + ψ(κ),   ∂A/∂β = ψ(n − c + β) − ψ(n + κ) − ψ(β) + ψ(κ),
    ∂log P/∂logit π = w − π,   ∂log P/∂logit μ = r κ μ (1 − μ) (∂A/∂α − ∂A/∂β),
    ∂log P/∂s = r (α ∂A/∂α + β ∂A/∂β),

with w = π [c = 0] / P the posterior probability of "never" and r = 1 − w.

Best-of-b success and marginal gains, in closed form (E[(1 − λ)^b] = B(α, β + b) / B(α, β)):

    q̂(x, b) = E[1 − (1 − λ)^b] = (1 − π) (1 − B(α, β + b) / B(α, β)),
    Δ̂(x, b) = q̂(x, b) − q̂(x, b − 1) = (1 − π) B(α + 1, β + b − 1) / B(α, β),

so Δ̂(x, 1) = (1 − π) μ and Δ̂(x, b + 1) / Δ̂(x, b) = (β + b − 1) / (α + β + b) < 1: the gains
are positive and decreasing (q̂ concave), and `howhard.allocate.greedy` is exact on them.

What the samples identify: a query never solved in n samples is explained as well by π → 1 as by
μ → 0 (a Beta piled at 0), so π(x) alone is not "the chance it is unsolvable" unless rarely
solved queries pin κ and μ down; q̂(x, b), which is what allocates, is identified either way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, digamma, expit

from howhard.errors import ConfigError
from howhard.predict import _net
from howhard.predict._io import json_meta, read_arrays, read_saved, write_npz
from howhard.predict.metrics import EPS, check_counts
from howhard.predict.success import _as_counts, _as_matrix, _check_bmax, _Head, _unpack

VERSION = 1
_HEADER_KEYS = ("params", "meta", "n_features_in", "n_iter", "loss", "converged")
LOG_CONCENTRATION_BOUNDS = (-8.0, 8.0)
"""s = log κ is kept in [−8, 8] (κ from 3e-4, U-shaped, to 3000, near a point mass)."""
_MU_CLIP = 1e-10  # μ in [1e-10, 1 − 1e-10] keeps α, β > 0 for any logit


def zibb_log_likelihood(
    never: np.ndarray, mean: np.ndarray, concentration: float, c: np.ndarray, n: np.ndarray
) -> np.ndarray:
    """log P(c_i | x_i) of each query's observed sequence (the module doc's formula), given
    π = ``never``, μ = ``mean`` and κ = ``concentration``."""
    pi = np.asarray(never, dtype=float)
    mu = np.clip(np.asarray(mean, dtype=float), _MU_CLIP, 1 - _MU_CLIP)
    a, b = mu * concentration, (1 - mu) * concentration
    A = betaln(c + a, n - c + b) - betaln(a, b)
    with np.errstate(divide="ignore"):
        solvable = np.log1p(-pi) + A
        return np.where(c == 0, np.logaddexp(np.log(pi), solvable), solvable)


def tail_log_loss(
    never: np.ndarray, mean: np.ndarray, concentration: float, successes: Any, trials: Any
) -> float:
    """The mean per-trial negative log-likelihood −Σ log P(c_i | x_i) / Σ n_i (the module doc)."""
    c, n = check_counts(successes, trials)
    return float(-zibb_log_likelihood(never, mean, concentration, c, n).sum() / n.sum())


def _objective(
    theta: np.ndarray,
    X: np.ndarray,
    c: np.ndarray,
    n: np.ndarray,
    head: str,
    hidden: int,
    alpha: float,
) -> tuple[float, np.ndarray]:
    """The training loss L(theta) of the module doc and its exact gradient; theta packs the
    head's weights (`_net.shapes` with 2 logits: never, mean) and then s = log κ."""
    shapes = _net.shapes(head, X.shape[1], hidden, 2)
    w = _unpack(theta[:-1], shapes)
    s = float(theta[-1])
    kappa = np.exp(s)
    H, Z = _net.forward(w, X)
    pi = expit(Z[:, 0])
    mu = np.clip(expit(Z[:, 1]), _MU_CLIP, 1 - _MU_CLIP)
    a, b = mu * kappa, (1 - mu) * kappa
    A = betaln(c + a, n - c + b) - betaln(a, b)
    log_pi, log_solvable = -np.logaddexp(0.0, -Z[:, 0]), -np.logaddexp(0.0, Z[:, 0]) + A
    zero = c == 0
    ll = np.where(zero, np.logaddexp(log_pi, log_solvable), log_solvable)
    r = np.where(zero, np.exp(log_solvable - ll), 1.0)  # P(solvable | c, x)
    dA_da = digamma(c + a) - digamma(n + kappa) - digamma(a) + digamma(kappa)
    dA_db = digamma(n - c + b) - digamma(n + kappa) - digamma(b) + digamma(kappa)
    total = n.sum()
    dZ = np.empty_like(Z)
    dZ[:, 0] = -((1.0 - r) - pi) / total
    dZ[:, 1] = -r * kappa * mu * (1 - mu) * (dA_da - dA_db) / total
    ds = -float(np.sum(r * (a * dA_da + b * dA_db))) / total
    loss = -float(ll.sum()) / total + _net.penalty(w, alpha)
    grad = _net.backward(w, X, H, dZ, alpha)
    return loss, np.append(_net.pack(grad, shapes), ds)


class TailPredictor(_Head):
    """π(x), μ(x) and κ of the zero-inflated beta-binomial (module doc), hence q̂(x, b), Δ̂(x, b).

    Parameters: ``head`` ("logistic" or "mlp": a tanh layer of ``hidden`` units shared by the two
    logits), ``alpha`` the L2 penalty on weights, ``max_iter`` L-BFGS-B iterations,
    ``standardize`` features, ``random_state`` seeding the mlp's initial weights.

    Learned state: ``mean_``, ``scale_`` (feature standardisation), ``coef_`` (columns: the logit
    of π, the logit of μ), ``intercept_`` (2,), ``hidden_coef_``, ``hidden_intercept_`` (mlp),
    ``log_concentration_`` (s = log κ), ``n_features_in_``, ``n_iter_``, ``loss_``,
    ``converged_`` and ``meta_`` (the JSON-serialisable ``meta`` passed to ``fit``).
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

    def fit(
        self,
        X: Any,
        y: Any,
        meta: dict[str, Any] | None = None,
        groups: Sequence[int] | None = None,
    ) -> TailPredictor:
        """Fit π(x), μ(x), κ to ``y`` = [[successes, trials], ...] by maximum likelihood (module
        doc); returns self. Starts from the best constant model (fitted first, features unused).
        ``groups``: the widths of X's column blocks made by different feature sources, weighted
        to equal total variance as in `SuccessPredictor.fit`."""
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

        # The constant model: π, μ, κ shared by every query, from a moment-style guess.
        zero = float(np.mean(c == 0))
        pi0 = float(np.clip(zero / 2, 0.01, 0.9))
        mu0 = float(np.clip(c.sum() / n.sum() / (1 - pi0), 0.01, 0.99))
        const = _fit(
            np.zeros((c.size, 0)),
            c,
            n,
            "logistic",
            1,
            0.0,
            self.max_iter,
            {"coef": np.zeros((0, 2)), "intercept": np.log([pi0 / (1 - pi0), mu0 / (1 - mu0)])},
            0.0,
        )
        intercept, s0 = const[0]["intercept"], const[1]

        start = _net.init(self.head, d, self.hidden, intercept, self.random_state)
        weights, s, res = _fit(
            Xs, c, n, self.head, self.hidden, float(self.alpha), self.max_iter, start, s0
        )
        for stale in ("hidden_coef_", "hidden_intercept_"):  # from an earlier fit as an mlp
            self.__dict__.pop(stale, None)
        for name, value in weights.items():
            setattr(self, name + "_", value.copy())
        self.log_concentration_ = s
        self.n_iter_, self.loss_, self.converged_ = int(res.nit), float(res.fun), bool(res.success)
        return self

    # ---------------------------------------------------------------------------- prediction

    def _weights(self) -> dict[str, Any]:
        shapes = _net.shapes(self.head, self.n_features_in_, self.hidden, 2)
        return {name: getattr(self, name + "_") for name, _ in shapes}

    def _parts(self, X: Any) -> tuple[np.ndarray, np.ndarray, float]:
        """(π, μ, κ) for each row of X."""
        X = self._check_X(X)
        _, Z = _net.forward(self._weights(), (X - self.mean_) / self.scale_)
        mu = np.clip(expit(Z[:, 1]), _MU_CLIP, 1 - _MU_CLIP)
        return expit(Z[:, 0]), mu, float(np.exp(self.log_concentration_))

    @property
    def concentration_(self) -> float:
        """κ = e^s, the Beta's α + β."""
        self._check_fitted()
        return float(np.exp(self.log_concentration_))

    def predict_never(self, X: Any) -> np.ndarray:
        """π(x): the probability that a query is never solved, shape (n_queries,)."""
        return self._parts(X)[0]

    def predict_mean_rate(self, X: Any) -> np.ndarray:
        """μ(x): the mean success rate of a query that is solvable, shape (n_queries,)."""
        return self._parts(X)[1]

    def predict_proba_success(self, X: Any) -> np.ndarray:
        """E[λ | x] = (1 − π) μ, the one-sample success probability (= Δ̂(x, 1)), shape
        (n_queries,), clipped to [1e-6, 1 − 1e-6]."""
        pi, mu, _ = self._parts(X)
        return np.clip((1 - pi) * mu, EPS, 1 - EPS)

    def predict_q(self, X: Any, bmax: int) -> np.ndarray:
        """q̂(x, b) = (1 − π)(1 − B(α, β + b) / B(α, β)) for b = 0..bmax, shape
        (n_queries, bmax + 1); q̂(x, 0) = 0."""
        _check_bmax(bmax)
        pi, mu, kappa = self._parts(X)
        a, b = (mu * kappa)[:, None], ((1 - mu) * kappa)[:, None]
        k = np.arange(bmax + 1)[None, :]
        return (1 - pi)[:, None] * -np.expm1(betaln(a, b + k) - betaln(a, b))

    def predict_gains(self, X: Any, bmax: int) -> np.ndarray:
        """Δ̂(x, b) = (1 − π) B(α + 1, β + b − 1) / B(α, β) for b = 1..bmax, shape
        (n_queries, bmax): a running product of ratios (β + b − 1)/(α + β + b) < 1 from
        Δ̂(x, 1) = (1 − π) μ, so every row is exactly non-increasing (greedy is exact)."""
        _check_bmax(bmax)
        pi, mu, kappa = self._parts(X)
        b = np.arange(1, bmax)[None, :]
        beta = ((1 - mu) * kappa)[:, None]
        factors = np.empty((pi.size, bmax))
        factors[:, 0] = (1 - pi) * mu
        factors[:, 1:] = (beta + b - 1) / (kappa + b)
        return np.cumprod(factors, axis=1)

    def log_loss(self, X: Any, y: Any) -> float:
        """The model's own mean per-trial negative log-likelihood on y = [[c, n], ...]
        (`tail_log_loss`)."""
        pi, mu, kappa = self._parts(X)
        c, n = _as_counts(y)
        return tail_log_loss(pi, mu, kappa, c, n)

    def score(self, X: Any, y: Any) -> float:
        """−`log_loss` (higher is better, as scikit-learn's model selection expects)."""
        return -self.log_loss(X, y)

    # ------------------------------------------------------------------------------ file I/O

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model to one ``.npz`` file (arrays + a JSON header; no pickle),
        atomically. Returns the path."""
        self._check_fitted()
        header = {
            "format": "howhard.TailPredictor",
            "version": VERSION,
            "params": self.get_params(),
            "meta": self.meta_,
            "n_features_in": self.n_features_in_,
            "n_iter": self.n_iter_,
            "loss": self.loss_,
            "converged": self.converged_,
        }
        arrays = {
            "mean": self.mean_,
            "scale": self.scale_,
            "log_concentration": np.asarray(self.log_concentration_),
            **self._weights(),
        }
        return write_npz(path, header, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TailPredictor:
        """Read a model written by `save` (never unpickles anything)."""
        model, header, bad = read_saved(cls, "TailPredictor", path, VERSION, _HEADER_KEYS)
        d = header["n_features_in"]
        shapes = [
            ("mean", (d,)),
            ("scale", (d,)),
            ("log_concentration", ()),
            *_net.shapes(model.head, d, model.hidden, 2),
        ]
        arrays = read_arrays(path, shapes, bad)
        s = float(arrays.pop("log_concentration"))
        lo, hi = LOG_CONCENTRATION_BOUNDS
        if not lo <= s <= hi:
            raise ConfigError(f"{bad} (log_concentration {s:g} is outside [{lo:g}, {hi:g}])")
        for name, value in arrays.items():
            setattr(model, name + "_", value)
        model.log_concentration_ = s
        model.n_features_in_ = d
        model.meta_ = dict(header["meta"])
        model.n_iter_, model.loss_ = int(header["n_iter"]), float(header["loss"])
        model.converged_ = bool(header["converged"])
        return model


def _fit(
    X: np.ndarray,
    c: np.ndarray,
    n: np.ndarray,
    head: str,
    hidden: int,
    alpha: float,
    max_iter: int,
    start: dict[str, np.ndarray],
    s0: float,
) -> tuple[dict[str, np.ndarray], float, Any]:
    """L-BFGS-B on `_objective` from ``start`` and s = ``s0``: (weights, s, scipy's result)."""
    shapes = _net.shapes(head, X.shape[1], hidden, 2)
    theta0 = np.append(_net.pack(start, shapes), s0)
    bounds = [(None, None)] * (theta0.size - 1) + [LOG_CONCENTRATION_BOUNDS]
    res = minimize(
        _objective,
        theta0,
        args=(X, c, n, head, hidden, alpha),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": max_iter},
    )
    theta = np.asarray(res.x)
    return _unpack(theta[:-1], shapes), float(theta[-1]), res
