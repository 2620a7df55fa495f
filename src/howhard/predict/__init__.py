"""Estimators of how hard a query is: its success rate λ(x), hence q̂(x, b) and Δ(x, b)."""

from howhard.predict.metrics import binomial_log_loss, loss_table
from howhard.predict.success import SuccessPredictor

__all__ = ["SuccessPredictor", "binomial_log_loss", "loss_table"]
