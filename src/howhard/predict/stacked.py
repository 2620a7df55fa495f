"""Stacked sources: one head per feature source, a second-level head on their held-out logits.

The features X of a query are S blocks side by side, one per source (``groups``: the widths
d_1..d_S, as `howhard train` passes for ``hidden+task``). Concatenating them under one L2
penalty lets the widest source dominate; stacking keeps them apart (binary rewards):

1. Level one: for each source s a `SuccessPredictor` λ_s(x) = σ(z_s(x)) on block s alone. Its
   L2 strength a_s is chosen among ``base_alphas`` by K-fold cross-validation: the queries are
   split into K folds (`howhard.crossfit.k_folds`), and each fold's logits z_s are predicted by
   the head fitted on the other K − 1 folds (out of fold); a_s minimises the binomial log-loss
   of those out-of-fold predictions,

       CV_s(a) = −Σ_i [c_i log σ(z_s^a(x_i)) + (n_i − c_i) log(1 − σ(z_s^a(x_i)))] / Σ_i n_i.

   Then each λ_s is refitted on every query at a_s.
2. Level two: a head on the S out-of-fold logits Z_i = (z_1(x_i), .., z_S(x_i)) at the chosen
   strengths (not standardised: a weight of 1 on one source and 0 elsewhere reproduces it):

       logistic:  λ(x) = σ(v·Z + b), by the binomial likelihood of (c_i, n_i) plus alpha·||v||²
       tail:      the zero-inflated beta-binomial of `TailPredictor` with [logit π, logit μ] linear
                  in Z (a never-solvable mass; see howhard.predict.tail).

   The level-two head sees logits made without the query's own labels, so it learns how far to
   trust each source on new queries, not on the rows each head memorised.

Prediction on a new query uses the refitted level-one heads: λ(x) from Z(x) = (z_s(x))_s.
With the logistic top, q̂(x, b) = 1 − (1 − λ)^b and Δ(x, b) = λ (1 − λ)^(b − 1) as in
`SuccessPredictor`; with the tail top, the tail's closed forms.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logit
from sklearn.base import BaseEstimator

from howhard.crossfit import k_folds
from howhard.errors import ConfigError, NotFittedError
from howhard.predict import _net
from howhard.predict._io import json_meta, read_arrays, read_saved, write_npz
from howhard.predict.metrics import binomial_log_loss
from howhard.predict.success import (
    SuccessPredictor,
    _as_counts,
    _as_matrix,
    _checked_features,
    _shapes,
)
from howhard.predict.tail import LOG_CONCENTRATION_BOUNDS, TailPredictor

VERSION = 1
STACKED_HEADS = ("stacked", "stacked-tail")
"""The names `howhard train` gives the stacked head: a logistic or a tail head on top."""
BASE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)
_HEADER_KEYS = ("params", "meta", "n_features_in", "n_iter", "loss", "converged", "groups")

Top = SuccessPredictor | TailPredictor


class StackedPredictor(BaseEstimator):
    """λ(x) (and q̂, Δ̂) from one head per feature source stacked under a second-level head
    (module doc).

    Parameters: ``base`` ("logistic" or "mlp") the head of each source, ``top`` ("logistic" or
    "tail") the second-level head, ``alpha`` its L2 penalty, ``base_alphas`` the L2 strengths
    each source's head chooses from by cross-validation, ``folds`` K of that cross-validation,
    ``hidden`` units of an mlp base, ``max_iter`` L-BFGS-B iterations, ``random_state`` seeding
    the folds and the mlp's initial weights.

    Learned state: ``groups_`` (block widths), ``base_alphas_`` (a_s per source), ``cv_losses_``
    (S × len(base_alphas): CV_s(a)), ``bases_`` (the refitted level-one heads), ``top_`` (the
    second-level head), ``n_features_in_``, ``n_iter_``, ``loss_``, ``converged_`` (the top's
    fit) and ``meta_``.
    """

    bases = ("logistic", "mlp")
    tops = ("logistic", "tail")

    def __init__(
        self,
        base: str = "logistic",
        top: str = "logistic",
        alpha: float = 1e-3,
        base_alphas: Sequence[float] = BASE_ALPHAS,
        folds: int = 5,
        hidden: int = 64,
        max_iter: int = 500,
        random_state: int | None = 0,
    ) -> None:
        self.base = base
        self.top = top
        self.alpha = alpha
        self.base_alphas = base_alphas
        self.folds = folds
        self.hidden = hidden
        self.max_iter = max_iter
        self.random_state = random_state

    @property
    def head(self) -> str:
        """How reports name this head: ``stacked (<base> per source, <top> on top)``."""
        return f"stacked ({self.base} per source, {self.top} on top)"

    def _check_params(self) -> None:
        if self.base not in self.bases:
            raise ConfigError(f"base must be one of {self.bases}; got {self.base!r}", param="base")
        if self.top not in self.tops:
            raise ConfigError(f"top must be one of {self.tops}; got {self.top!r}", param="top")
        alphas = list(self.base_alphas)
        if not alphas or not all(_is_strength(a) for a in alphas):
            raise ConfigError(
                f"base_alphas must be finite L2 strengths >= 0; got {alphas!r}", param="base_alphas"
            )
        if not isinstance(self.folds, int | np.integer) or self.folds < 2:
            raise ConfigError(f"folds must be an integer >= 2; got {self.folds!r}", param="folds")
        # The remaining parameters are checked by the heads they are passed to.
        self._make_base(float(alphas[0]))._check_params()
        self._make_top()._check_params()

    def _make_base(self, alpha: float) -> SuccessPredictor:
        return SuccessPredictor(
            head=self.base,
            hidden=self.hidden,
            alpha=alpha,
            max_iter=self.max_iter,
            random_state=self.random_state,
        )

    def _make_top(self) -> Top:
        kind = SuccessPredictor if self.top == "logistic" else TailPredictor
        return kind(head="logistic", alpha=self.alpha, max_iter=self.max_iter, standardize=False)

    # ------------------------------------------------------------------------------- fitting

    def fit(
        self,
        X: Any,
        y: Any,
        meta: dict[str, Any] | None = None,
        groups: Sequence[int] | None = None,
    ) -> StackedPredictor:
        """Fit the level-one heads (strengths by K-fold CV) and the level-two head on their
        out-of-fold logits (module doc) to ``y`` = [[successes, trials], ...]; returns self.
        ``groups``: the widths of X's column blocks, one per source (default: one block)."""
        self._check_params()
        X = _as_matrix(X)
        c, n = _as_counts(y)
        y = np.column_stack([c, n])
        if c.size != X.shape[0]:
            raise ConfigError(f"X has {X.shape[0]} rows but y has {c.size}; pass one per query")
        if c.size < 2 * self.folds:
            raise ConfigError(
                f"{c.size} queries are too few for {self.folds}-fold stacking: give at least "
                f"{2 * self.folds} or lower folds",
                param="folds",
            )
        widths = _check_groups(groups, X.shape[1])
        self.meta_ = json_meta(meta)
        fold = k_folds(c.size, int(self.folds), np.random.default_rng(self.random_state))
        alphas = [float(a) for a in self.base_alphas]
        Z = np.empty((c.size, len(widths)))
        cv = np.empty((len(widths), len(alphas)))
        bases, chosen = [], []
        for s, block in enumerate(_blocks(widths)):
            Xs = X[:, block]
            oof = [self._out_of_fold(Xs, y, fold, a) for a in alphas]
            cv[s] = [binomial_log_loss(_sigmoid(z), c, n) for z in oof]
            best = int(np.argmin(cv[s]))
            Z[:, s] = oof[best]
            chosen.append(alphas[best])
            bases.append(self._make_base(alphas[best]).fit(Xs, y))
        top = self._make_top().fit(Z, y)
        self.groups_ = widths
        self.base_alphas_ = chosen
        self.cv_losses_ = cv
        self.bases_ = bases
        self.top_ = top
        self.n_features_in_ = X.shape[1]
        self.n_iter_, self.loss_, self.converged_ = top.n_iter_, top.loss_, top.converged_
        return self

    def _out_of_fold(
        self, X: np.ndarray, y: np.ndarray, fold: np.ndarray, alpha: float
    ) -> np.ndarray:
        """z(x_i) of each query by the head (at L2 strength ``alpha``) fitted without its fold."""
        z = np.empty(len(X))
        for f in np.unique(fold):
            out = fold == f
            head = self._make_base(alpha).fit(X[~out], y[~out])
            z[out] = logit(head.predict_proba_success(X[out]))
        return z

    # ---------------------------------------------------------------------------- prediction

    def _check_fitted(self) -> None:
        if not hasattr(self, "top_"):
            raise NotFittedError(
                "this StackedPredictor is not fitted yet: call fit(X, y, groups=...) first "
                "(or StackedPredictor.load(path) a saved one)"
            )

    def source_logits(self, X: Any) -> np.ndarray:
        """Z(x): each source's logit z_s(x) by its refitted head, shape (n_queries, S)."""
        X = _checked_features(self, X)
        return np.column_stack(
            [
                logit(head.predict_proba_success(X[:, block]))
                for head, block in zip(self.bases_, _blocks(self.groups_), strict=True)
            ]
        )

    def predict_proba_success(self, X: Any) -> np.ndarray:
        """λ(x), the level-two head's one-sample success probability on Z(x), shape (n,)."""
        Z = self.source_logits(X)
        return self.top_.predict_proba_success(Z)

    def predict_q(self, X: Any, bmax: int) -> np.ndarray:
        """q̂(x, b) for b = 0..bmax, shape (n_queries, bmax + 1), by the level-two head."""
        Z = self.source_logits(X)
        return self.top_.predict_q(Z, bmax)

    def predict_gains(self, X: Any, bmax: int) -> np.ndarray:
        """Δ̂(x, b) for b = 1..bmax, shape (n_queries, bmax), by the level-two head."""
        Z = self.source_logits(X)
        return self.top_.predict_gains(Z, bmax)

    def score(self, X: Any, y: Any) -> float:
        """Negative mean per-trial binomial log loss of λ(x) on y = [[successes, trials], ...]."""
        return -binomial_log_loss(self.predict_proba_success(X), *_as_counts(y))

    # ------------------------------------------------------------------------------ file I/O

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model to one ``.npz`` file (arrays + a JSON header; no pickle):
        each level-one head's arrays prefixed ``base<s>_``, the top's ``top_``. The heads' own
        fit diagnostics (iterations, loss) are not saved, only what predicts. Atomic."""
        self._check_fitted()
        header = {
            "format": "howhard.StackedPredictor",
            "version": VERSION,
            "params": self.get_params(),
            "meta": self.meta_,
            "n_features_in": self.n_features_in_,
            "n_iter": self.n_iter_,
            "loss": self.loss_,
            "converged": self.converged_,
            "groups": self.groups_,
            "base_alphas": self.base_alphas_,
        }
        arrays: dict[str, Any] = {"cv_losses": self.cv_losses_}
        for s, head in enumerate(self.bases_):
            arrays.update({f"base{s}_{k}": v for k, v in _arrays(head).items()})
        arrays.update({f"top_{k}": v for k, v in _arrays(self.top_).items()})
        return write_npz(path, header, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StackedPredictor:
        """Read a model written by `save` (never unpickles anything)."""
        model, header, bad = read_saved(cls, "StackedPredictor", path, VERSION, _HEADER_KEYS)
        try:
            widths = _check_groups(header["groups"], header["n_features_in"])
        except ConfigError as err:
            raise ConfigError(f"{bad} (saved parameters: {err})") from err
        chosen = header.get("base_alphas")
        if not (
            isinstance(chosen, list)
            and len(chosen) == len(widths)
            and all(_is_strength(a) for a in chosen)
        ):
            raise ConfigError(f"{bad} (base_alphas must be one L2 strength per source)")
        bases = [model._make_base(float(a)) for a in chosen]
        top = model._make_top()
        shapes: list[tuple[str, tuple[int, ...]]] = [
            ("cv_losses", (len(widths), len(list(model.base_alphas))))
        ]
        for s, (head, d) in enumerate(zip(bases, widths, strict=True)):
            shapes += [(f"base{s}_{k}", shape) for k, shape in _array_shapes(head, d)]
        shapes += [(f"top_{k}", shape) for k, shape in _array_shapes(top, len(widths))]
        arrays = read_arrays(path, shapes, bad)
        for s, (head, d) in enumerate(zip(bases, widths, strict=True)):
            _set_arrays(head, d, arrays, f"base{s}_", bad)
        _set_arrays(top, len(widths), arrays, "top_", bad)
        model.groups_, model.base_alphas_ = widths, [float(a) for a in chosen]
        model.cv_losses_ = arrays["cv_losses"]
        model.bases_, model.top_ = bases, top
        model.n_features_in_ = header["n_features_in"]
        model.meta_ = dict(header["meta"])
        model.n_iter_, model.loss_ = int(header["n_iter"]), float(header["loss"])
        model.converged_ = bool(header["converged"])
        return model


def stacked_head(name: str, alpha: float, random_state: int | None) -> StackedPredictor:
    """The StackedPredictor a head name of `STACKED_HEADS` stands for: logistic heads per source
    under a logistic (``stacked``) or tail (``stacked-tail``) head with L2 penalty ``alpha``."""
    if name not in STACKED_HEADS:
        raise ConfigError(f"head must be one of {STACKED_HEADS}; got {name!r}", param="head")
    top = "tail" if name == "stacked-tail" else "logistic"
    return StackedPredictor(top=top, alpha=alpha, random_state=random_state)


def _is_strength(alpha: Any) -> bool:
    """Whether ``alpha`` is an L2 strength: a finite real number >= 0 (not a bool)."""
    return isinstance(alpha, Real) and not isinstance(alpha, bool) and 0 <= float(alpha) < np.inf


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _check_groups(groups: Sequence[int] | None, d: int) -> list[int]:
    """The block widths (default [d]): positive integers summing to the d features."""
    if groups is None:
        return [d]
    widths = list(groups)
    if not all(isinstance(w, int | np.integer) and w >= 1 for w in widths) or sum(widths) != d:
        raise ConfigError(
            f"groups {widths} must be positive widths of column blocks summing to the {d} "
            "features of X",
            param="groups",
        )
    return [int(w) for w in widths]


def _blocks(widths: Sequence[int]) -> list[slice]:
    ends = np.cumsum(widths)
    return [slice(int(e - w), int(e)) for e, w in zip(ends, widths, strict=True)]


def _array_shapes(head: Top, d: int) -> list[tuple[str, tuple[int, ...]]]:
    """The arrays that make a fitted level-one or level-two head on d inputs predict."""
    if isinstance(head, TailPredictor):
        weights = _net.shapes(head.head, d, head.hidden, 2)
        return [("mean", (d,)), ("scale", (d,)), ("log_concentration", ()), *weights]
    return [("mean", (d,)), ("scale", (d,)), *_shapes(head.head, d, head.hidden)]


def _arrays(head: Top) -> dict[str, np.ndarray]:
    names = [k for k, _ in _array_shapes(head, head.n_features_in_)]
    return {k: np.asarray(getattr(head, k + "_"), dtype=float) for k in names}


def _set_arrays(head: Top, d: int, arrays: dict[str, np.ndarray], prefix: str, bad: str) -> None:
    """Make ``head`` the fitted head of d inputs whose arrays are ``arrays[prefix + name]``."""
    for name, shape in _array_shapes(head, d):
        value = arrays[prefix + name]
        setattr(head, name + "_", float(value) if shape == () else value)
    if isinstance(head, TailPredictor):
        lo, hi = LOG_CONCENTRATION_BOUNDS
        if not lo <= head.log_concentration_ <= hi:
            raise ConfigError(f"{bad} (log_concentration is outside [{lo:g}, {hi:g}])")
    head.n_features_in_, head.meta_ = d, {}
    head.n_iter_, head.loss_, head.converged_ = 0, float("nan"), True
