"""Budget pacing for a stream of requests: per-request decisions whose running average meets a
target, even when the traffic drifts away from the data the decisions were calibrated on.

Both pacers keep a window of the most recent requests' predictions (seeded with the calibration
set) and, before each decision, recalibrate their threshold on that window for a corrected target

    target_t = clip(target + (target * t - spent_t) / horizon, lo, hi),

where t requests have been decided and spent_t is what they were given: the debt (or surplus)
of the past is paid back over about ``horizon`` requests. The window makes the threshold follow a
drifting mix (its calibration rows leave ``window // horizon`` per request, so traffic unlike the
calibration set is followed within a few ``horizon``s of requests); the debt term removes the
bias that remains (a window that still holds older traffic, integer sample counts, random ties),
so the average over a long stream converges to the target. `KnobPacer` does the same for the
one knob of a menu policy family, in cost units. Pure: no I/O, no clock; randomness from the
generator passed in.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from howhard.allocate import ThresholdPolicy
from howhard.errors import ConfigError
from howhard.menu import FloatArray, IntArray, MenuData, PolicyFamily, calibrate, replay


class _Window:
    """The rows a pacer recalibrates on: the last ``size`` requests' rows, topped up with
    calibration rows while fewer have arrived. The calibration rows leave ``size // horizon``
    per request (while at least ``horizon`` rows remain), so traffic unlike them is followed
    within a few ``horizon``s of requests, not only once ``size`` requests have pushed them out."""

    def __init__(self, calibration: npt.ArrayLike, size: int, horizon: int) -> None:
        self.calibration = np.asarray(calibration, dtype=float)[-size:]
        self.live = np.zeros((size, *self.calibration.shape[1:]))
        self.horizon, self.fade = horizon, max(1, size // horizon)
        self.filled = self.next = self.seen = 0

    def add(self, row: npt.ArrayLike) -> None:
        """Take one request's row."""
        self.live[self.next] = row
        self.next = (self.next + 1) % len(self.live)
        self.filled = min(self.filled + 1, len(self.live))
        self.seen += 1

    def rows(self) -> npt.NDArray[np.float64]:
        """The rows to recalibrate on, the latest request's among them."""
        n = len(self.calibration)
        keep = max(n - self.fade * (self.seen - 1), self.horizon - self.filled)
        keep = min(keep, n, len(self.live) - self.filled)
        return np.concatenate([self.calibration[n - max(0, keep) :], self.live[: self.filled]])


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
        self._window = _Window(gains, window, horizon)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.decided = 0
        self.spent = 0

    def decide(self, gains: npt.ArrayLike) -> int:
        """The samples for one request with gains ``gains`` (shape (K,)), counted as spent."""
        row = np.asarray(gains, dtype=float)
        if row.shape != (self.max_per_query,):
            raise ConfigError(f"gains have shape {row.shape}; pass {self.max_per_query} gains")
        self._window.add(row)
        rows = self._window.rows()
        target = _paced(
            self.budget,
            self.decided,
            self.spent,
            self.horizon,
            self.min_per_query,
            self.max_per_query,
        )
        policy = ThresholdPolicy(target, self.max_per_query, self.min_per_query, self.rng)
        k = int(policy.fit(rows).allocate(row)[0])
        self.decided += 1
        self.spent += k
        return k

    def refund(self, k: int) -> None:
        """Forget one decision of ``k`` samples that were never drawn (the request failed)."""
        self.decided -= 1
        self.spent -= k

    def trim(self, k: int) -> None:
        """Forget ``k`` samples of a decision that draws fewer than it was given."""
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
        self._window = _Window(scores, window, horizon)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.decided = 0
        self.routed = 0

    def decide(self, score: float) -> bool:
        """True: send this request to the strong decoder (counted)."""
        self._window.add(float(score))
        w = self._window.rows()
        share = _paced(self.share, self.decided, self.routed, self.horizon, 0.0, 1.0)
        above, tied = float((w > score).sum()), float((w == score).sum())
        # Strong when the score is among the top share of the window; a tie at the cut is
        # split at random so tied scores get exactly the share left for them.
        strong = bool(self.rng.random() < np.clip((share * w.size - above) / tied, 0.0, 1.0))
        self.decided += 1
        self.routed += strong
        return strong

    @property
    def window(self) -> list[float]:
        """The scores the last decision's cut was taken from."""
        return self._window.rows().tolist()

    def refund(self, strong: bool) -> None:
        """Forget one decision whose request failed before its decoder answered."""
        self.decided -= 1
        self.routed -= strong


class KnobPacer:
    """The knob of a menu policy family (`howhard.menu.PolicyFamily`), paced so the mean cost per
    request tracks ``budget`` (in the unit of the decoders' prices).

    ``knobs`` κ_1 < ... < κ_G and ``spends`` c_1 <= ... <= c_G are the family's spend curve on
    the calibration data (`spend_curve`). Before each request the pacer takes the debt-corrected
    target of the other pacers, target_t = budget + (budget t - spent_t) / horizon, divides it by

        scale_t = (cost realised) / (curve cost of the knobs used), over the last ``window``
        finished requests (1 before any),

    so traffic harder or easier than the calibration's (every knob costing more or less) moves
    the knob at once rather than through the debt, clips it to [c_1, c_G] and draws the knob
    from the two grid knobs whose spends bracket it, mixed so the curve's expected cost is
    exactly the target (c_g <= x < c_{g+1}: κ_{g+1} with probability (x - c_g)/(c_{g+1} - c_g);
    a flat stretch of the curve resolves to its largest knob). A request is counted when it
    finishes (`record`), so requests in flight do not distort the debt. Pure: no I/O, no clock.
    """

    def __init__(
        self,
        budget: float,
        knobs: npt.ArrayLike,
        spends: npt.ArrayLike,
        *,
        window: int = 500,
        horizon: int = 50,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.knobs = np.asarray(knobs, dtype=float)
        self.spends = np.asarray(spends, dtype=float)
        if self.knobs.ndim != 1 or self.knobs.shape != self.spends.shape or not self.knobs.size:
            raise ConfigError(
                f"the spend curve needs as many spends as knobs (at least one), got "
                f"{self.knobs.shape} and {self.spends.shape}"
            )
        if np.any(np.diff(self.knobs) <= 0) or np.any(np.diff(self.spends) < 0):
            raise ConfigError("the spend curve's knobs must increase and its spends not decrease")
        if not budget > 0:
            raise ConfigError(f"budget must be > 0, got {budget}", param="budget")
        if window < 1 or horizon < 1:
            raise ConfigError(f"window and horizon must be >= 1, got {window} and {horizon}")
        self.budget, self.horizon = budget, horizon
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._recent: deque[tuple[float, float]] = deque(maxlen=window)  # (expected, realised)
        self.decided = 0
        self.spent = 0.0
        self.mean_knob = float(self.knobs[-1])  # E[knob] of the last draw (a gauge)

    @property
    def scale(self) -> float:
        expected = sum(e for e, _ in self._recent)
        realised = sum(r for _, r in self._recent)
        return realised / expected if expected > 0 and realised > 0 else 1.0

    def next(self) -> tuple[float, float]:
        """The knob for the next request and the curve's cost at it (pass it to `record`)."""
        target = self.budget + (self.budget * self.decided - self.spent) / self.horizon
        x = float(np.clip(target / self.scale, self.spends[0], self.spends[-1]))
        g = int(np.searchsorted(self.spends, x, side="right")) - 1
        if g >= len(self.knobs) - 1:
            self.mean_knob = float(self.knobs[-1])
            return float(self.knobs[-1]), float(self.spends[-1])
        up = (x - self.spends[g]) / (self.spends[g + 1] - self.spends[g])
        self.mean_knob = float(self.knobs[g] + up * (self.knobs[g + 1] - self.knobs[g]))
        i = g + 1 if self.rng.random() < up else g
        return float(self.knobs[i]), float(self.spends[i])

    def record(self, expected: float, cost: float) -> None:
        """A finished request: the curve's cost at its knob and the cost it realised."""
        self._recent.append((expected, cost))
        self.decided += 1
        self.spent += cost

    @property
    def average(self) -> float:
        """Mean cost per finished request so far (the budget before any)."""
        return self.spent / self.decided if self.decided else self.budget


def spend_curve(
    family: PolicyFamily,
    data: MenuData,
    observe: str,
    budget: float,
    points: int = 17,
    orders: Sequence[Sequence[IntArray]] | None = None,
) -> tuple[FloatArray, FloatArray]:
    """The fitted ``family``'s mean cost per query on ``data`` (`howhard.menu.replay`) at about
    ``points`` knobs: its two ends, the knob `howhard.menu.calibrate` finds for ``budget``, then
    repeatedly the middle of the two neighbouring knobs whose spends differ most (the geometric
    middle when the range spans more than two decades from a positive end; integers only for a
    discrete family). Returns (knobs increasing, spends made non-decreasing)."""

    def spend(knob: float) -> float:
        policy = family.at(knob)
        return replay(policy, data.pools, data.costs, data.predictions, orders, observe).mean_cost

    lo, hi = (float(k) for k in family.knobs)
    curve = {lo: spend(lo), hi: spend(hi)}
    start = calibrate(family, data, budget, observe, orders)
    curve.setdefault(start, spend(start))
    geometric = lo > 0 and hi / lo > 100
    stuck: set[tuple[float, float]] = set()
    while len(curve) < points:
        ks = sorted(curve)
        pairs = [(a, b) for a, b in itertools.pairwise(ks) if (a, b) not in stuck]
        if not pairs:
            break
        a, b = max(pairs, key=lambda p: curve[p[1]] - curve[p[0]])
        if curve[b] - curve[a] <= 0:
            break
        mid = math.sqrt(a * b) if geometric else (a + b) / 2
        if family.discrete:
            mid = float(math.floor(mid))
        if mid <= a or mid >= b:
            stuck.add((a, b))
            continue
        curve[mid] = spend(mid)
    knobs = np.array(sorted(curve))
    spends = np.maximum.accumulate(np.array([curve[k] for k in knobs]))
    return knobs, spends
