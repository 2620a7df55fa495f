"""Estimators of how hard a query is: its success rate λ(x) (binary rewards), its marginal gains
Δ(x, b) (any rewards), a never-solvable tail with a Beta of rates (binary), hence q̂(x, b); and
every decoder's λ_m(x) of a menu at once; and λ(x) from one head per feature source stacked under
a second-level head. The one-pool predictors expose ``predict_gains(X, bmax)``."""

from __future__ import annotations

import os

from howhard.predict._io import saved_kind
from howhard.predict.gains import GainsPredictor
from howhard.predict.metrics import binomial_log_loss, gains_loss_table, loss_table
from howhard.predict.multi import MultiPredictor, fit_multi
from howhard.predict.stacked import StackedPredictor
from howhard.predict.success import SuccessPredictor
from howhard.predict.tail import TailPredictor

__all__ = [
    "GainsPredictor",
    "MultiPredictor",
    "StackedPredictor",
    "SuccessPredictor",
    "TailPredictor",
    "binomial_log_loss",
    "fit_multi",
    "gains_loss_table",
    "load_predictor",
    "loss_table",
]


def load_predictor(
    path: str | os.PathLike[str],
) -> SuccessPredictor | GainsPredictor | TailPredictor | MultiPredictor | StackedPredictor:
    """The predictor saved at ``path``, of whichever kind its header names."""
    kind = saved_kind(path)
    if kind == "GainsPredictor":
        return GainsPredictor.load(path)
    if kind == "TailPredictor":
        return TailPredictor.load(path)
    if kind == "MultiPredictor":
        return MultiPredictor.load(path)
    if kind == "StackedPredictor":
        return StackedPredictor.load(path)
    if kind == "LoraPredictor":  # torch and peft are imported only when it predicts
        from howhard.predict.lora import LoraPredictor

        return LoraPredictor.load(path)
    return SuccessPredictor.load(path)
