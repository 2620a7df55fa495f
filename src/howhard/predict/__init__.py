"""Estimators of how hard a query is: its success rate λ(x) (binary rewards) or its marginal gains
Δ(x, b) (any rewards), hence q̂(x, b). Both predictors expose ``predict_gains(X, bmax)``."""

from __future__ import annotations

import os

from howhard.predict._io import saved_kind
from howhard.predict.gains import GainsPredictor
from howhard.predict.metrics import binomial_log_loss, gains_loss_table, loss_table
from howhard.predict.success import SuccessPredictor

__all__ = [
    "GainsPredictor",
    "SuccessPredictor",
    "binomial_log_loss",
    "gains_loss_table",
    "load_predictor",
    "loss_table",
]


def load_predictor(path: str | os.PathLike[str]) -> SuccessPredictor | GainsPredictor:
    """The predictor saved at ``path``, of whichever kind its header names."""
    if saved_kind(path) == "GainsPredictor":
        return GainsPredictor.load(path)
    return SuccessPredictor.load(path)
