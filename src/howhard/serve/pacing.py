"""Budget pacing for a stream of requests: per-request decisions whose running average meets a
target, even when the traffic drifts away from the data the decisions were calibrated on.

Both pacers keep a window of the most recent requests' predictions (seeded with the calibration
set) and, before each decision, recalibrate their threshold on that window for a corrected target

    target_t = clip(target + (target * t - spent_t) / horizon, lo, hi),

where t requests have been decided and spent_t is what they were given: the debt (or surplus)
of the past is paid back over about ``horizon`` requests. The window makes the threshold follow a
drifting mix; the debt term removes the bias that remains (a window that still holds older
traffic, integer sample counts, random ties), so the average over a long stream converges to the
target. Pure: no I/O, no clock; randomness from the generator passed in.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

from howhard.allocate import ThresholdPolicy
from howhard.errors import ConfigError


def _paced(target: float, decided: int, spent: float, horizon: int, lo: float, hi: float) -> float:
    return float(np.clip(target + (target * decided - spent) / horizon, lo, hi))


class BudgetPacer:
    """Samples per request from its predicted marginal gains Δ̂(x, 1..K): a `ThresholdPolicy`
    refitted on the window for the paced budget, so the mean samples per request tracks
    ``budget``; every request gets between ``min_per_query`` and ``max_per_query`` samples."""

    def __init__(
        self,
        budget: float,
        max_per_query: int,
        calibration_gains: npt.ArrayLike,
        *,
        min_per_query: int = 1,
        window: int = 500,
        horizon: int = 50,
        rng: np.random.Generator | None = None,
    ) -> None:
        gains = np.asarray(calibration_gains, dtype=float)
        if gains.ndim != 2 or gains.shape[0] == 0 or gains.shape[1] != max_per_query:
            raise ConfigError(
                f"calibration gains have shape {gains.shape}; pass one row of {max_per_query} "
                "gains per calibration query (and at least one query)"
            )
        if not min_per_query <= budget <= max_per_query:
            raise ConfigError(
                f"budget {budget} is outside [min_per_query, max_per_query] = [{min_per_query}, "
                f"{max_per_query}] (the samples a request may get); pass a budget in that range",
                param=("budget", "min_per_query", "max_per_query"),
            )
        if window < 1 or horizon < 1:
            raise ConfigError(f"window and horizon must be >= 1, got {window} and {horizon}")
        self.budget, self.max_per_query, self.min_per_query = budget, max_per_query, min_per_query
        self.horizon = horizon
        self._rows = np.zeros((window, max_per_query))  # a ring buffer of the window's gains
        start = gains[-window:]
        self._rows[: len(start)] = start
        self._filled, self._next = len(start), len(start) % window
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.decided = 0
        self.spent = 0

    def decide(self, gains: npt.ArrayLike) -> int:
        """The samples for one request with gains ``gains`` (shape (K,)), counted as spent."""
        row = np.asarray(gains, dtype=float)
        if row.shape != (self.max_per_query,):
            raise ConfigError(f"gains have shape {row.shape}; pass {self.max_per_query} gains")
        self._rows[self._next] = row
        self._next = (self._next + 1) % len(self._rows)
        self._filled = min(self._filled + 1, len(self._rows))
        target = _paced(
            self.budget,
            self.decided,
            self.spent,
            self.horizon,
            self.min_per_query,
            self.max_per_query,
        )
        policy = ThresholdPolicy(target, self.max_per_query, self.min_per_query, self.rng)
        k = int(policy.fit(self._rows[: self._filled]).allocate(row)[0])
        self.decided += 1
        self.spent += k
        return k

    def refund(self, k: int) -> None:
        """Forget one decision of ``k`` samples that were never drawn (the request failed)."""
        self.decided -= 1
        self.spent -= k

    @property
    def average(self) -> float:
        """Mean samples per decided request so far (the budget before any request)."""
        return self.spent / self.decided if self.decided else self.budget


class SharePacer:
    """Route a request to the strong decoder when its score (e.g. P(strong beats weak | x)) lies
    in the top ``share`` of the window, with the share paced so the fraction of requests routed
    to strong tracks ``share``."""

    def __init__(
        self,
        share: float,
        calibration_scores: npt.ArrayLike,
        *,
        window: int = 500,
        horizon: int = 50,
        rng: np.random.Generator | None = None,
    ) -> None:
        scores = np.asarray(calibration_scores, dtype=float).ravel()
        if scores.size == 0:
            raise ConfigError("no calibration scores; calibrate the router on at least one query")
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"the strong share must lie in [0, 1], got {share}")
        if window < 1 or horizon < 1:
            raise ConfigError(f"window and horizon must be >= 1, got {window} and {horizon}")
        self.share, self.horizon = share, horizon
        self.window: deque[float] = deque(scores[-window:].tolist(), maxlen=window)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.decided = 0
        self.routed = 0

    def decide(self, score: float) -> bool:
        """True: send this request to the strong decoder (counted)."""
        self.window.append(float(score))
        share = _paced(self.share, self.decided, self.routed, self.horizon, 0.0, 1.0)
        w = np.asarray(self.window)
        above, tied = float((w > score).sum()), float((w == score).sum())
        # Strong when the score is among the top share of the window; a tie at the cut is
        # split at random so tied scores get exactly the share left for them.
        strong = bool(self.rng.random() < np.clip((share * w.size - above) / tied, 0.0, 1.0))
        self.decided += 1
        self.routed += strong
        return strong

    def refund(self, strong: bool) -> None:
        """Forget one decision whose request failed before its decoder answered."""
        self.decided -= 1
        self.routed -= strong
