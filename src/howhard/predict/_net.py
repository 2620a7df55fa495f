"""The small network the tail and multi-decoder heads share: K logits from standardised features.

On x̃ (n × d) a head gives Z (n × K):

    logistic:  Z = x̃ C + c                       (K independent linear logits)
    lowrank:   Z = (x̃ U) C + c                   (a shared linear r-dim projection, r = hidden)
    mlp:       Z = tanh(x̃ U + u) C + c           (a shared tanh layer of `hidden` units)

with the L2 penalty alpha · (||C||² + ||U||²) on the weights (not the intercepts c, u).
Given dL/dZ, `backward` returns the exact gradient of every weight by the chain rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HEADS = ("logistic", "lowrank", "mlp")

Shapes = list[tuple[str, tuple[int, ...]]]


def shapes(head: str, d: int, hidden: int, k: int) -> Shapes:
    """Names and shapes of the weights of a head with d inputs and k logits, in packing order."""
    if head == "logistic":
        return [("coef", (d, k)), ("intercept", (k,))]
    if head == "lowrank":
        return [("hidden_coef", (d, hidden)), ("coef", (hidden, k)), ("intercept", (k,))]
    return [
        ("hidden_coef", (d, hidden)),
        ("hidden_intercept", (hidden,)),
        ("coef", (hidden, k)),
        ("intercept", (k,)),
    ]


def init(
    head: str, d: int, hidden: int, intercept: np.ndarray, random_state: int | None
) -> dict[str, np.ndarray]:
    """Starting weights: the constant predictor (zero output weights, the given intercepts) and,
    for a shared layer, U ~ N(0, 1/d) drawn from ``random_state``."""
    k = intercept.size
    out = {name: np.zeros(shape) for name, shape in shapes(head, d, hidden, k)}
    out["intercept"] = np.asarray(intercept, dtype=float).copy()
    if head != "logistic":
        rng = np.random.default_rng(random_state)
        out["hidden_coef"] = rng.normal(0.0, 1.0 / np.sqrt(max(d, 1)), size=(d, hidden))
    return out


def forward(w: dict[str, Any], X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, Z): the output layer's input H (x̃, x̃ U or tanh(x̃ U + u)) and the logits Z."""
    if "hidden_intercept" in w:
        H = np.tanh(X @ w["hidden_coef"] + w["hidden_intercept"])
    elif "hidden_coef" in w:
        H = X @ w["hidden_coef"]
    else:
        H = X
    return H, H @ w["coef"] + w["intercept"]


def penalty(w: dict[str, Any], alpha: float) -> float:
    """alpha · (||C||² + ||U||²)."""
    total = float(np.sum(w["coef"] ** 2))
    if "hidden_coef" in w:
        total += float(np.sum(w["hidden_coef"] ** 2))
    return alpha * total


def backward(
    w: dict[str, Any], X: np.ndarray, H: np.ndarray, dZ: np.ndarray, alpha: float
) -> dict[str, np.ndarray]:
    """The gradient of L + `penalty` with respect to every weight, given dL/dZ."""
    grad = {"coef": H.T @ dZ + 2 * alpha * w["coef"], "intercept": dZ.sum(axis=0)}
    if "hidden_coef" in w:
        dA = dZ @ w["coef"].T
        if "hidden_intercept" in w:
            dA = dA * (1.0 - H**2)
            grad["hidden_intercept"] = dA.sum(axis=0)
        grad["hidden_coef"] = X.T @ dA + 2 * alpha * w["hidden_coef"]
    return grad


def pack(values: dict[str, np.ndarray], names: Shapes) -> np.ndarray:
    return np.concatenate([np.asarray(values[name], dtype=float).ravel() for name, _ in names])
