"""When to stop drawing, and from which decoder of a menu: published baselines and the sequential
menu policy, each a `howhard.menu.PolicyFamily` (one knob, spend non-decreasing in it).

Every policy returns, under ``observe="majority"``, the most frequent answer (`vote`), and under
``observe="verifier"`` the sample of largest reward (`howhard.menu.best_reward_choice`), except
the sequential menu policy, which returns its posterior's most likely answer, and probe-escalate,
which returns the strong decoder's answer when it drew one. Answers are compared as the pools
and the live reader give them (`howhard.pool.canonical_answers`). Baselines, as published:

- ``esc``: Early-Stopping Self-Consistency (Li et al., "Escape Sky-high Cost: Early-stopping
  Self-Consistency for Multi-step Reasoning", ICLR 2024): draw from one decoder in windows of
  ``window`` samples; when every answer of a window is the same (its entropy is 0), stop and
  return that answer; else draw the next window, up to L samples (the last window cut to fit),
  and return the majority of all of them. Knob: L.
- ``adaptive-consistency``: Adaptive-Consistency (Aggarwal et al., "Let's Sample Step by Step:
  Adaptive-Consistency for Efficient Reasoning and Coding with LLMs", EMNLP 2023), their default
  Beta criterion: after each sample, with v1 >= v2 the two largest vote counts,

      P(p1 > p2) = ∫_{1/2}^1 x^v1 (1 - x)^v2 dx / B(v1 + 1, v2 + 1) = 1 - I_{1/2}(v1 + 1, v2 + 1),

  (I the regularised incomplete beta function); stop when P(p1 > p2) >= C, or at the cap.
  Knob: C in [0.5, 1] (C = 1 never stops early).
- ``cascade``: FrugalGPT (Chen et al., 2023) with the answer-consistency score of LLM cascades
  (Yue et al., "Large Language Model Cascades with Mixture of Thought Representations", ICLR
  2024; AutoMix, Aggarwal et al., 2024): decoders cheapest first, ``k`` samples each; accept the
  current decoder's majority when its agreement (the share of its k samples holding the top
  answer; under a verifier FrugalGPT's scorer is the verifier: the best reward) is >= τ, else
  escalate; the last decoder draws ``last_k`` samples and always accepts. Knob: τ in [0, 1].
- ``routellm``: RouteLLM (Ong et al., 2024): one sample, from the strong decoder when the router
  score (here pred[strong] - pred[weak]) exceeds a threshold calibrated so that a share s of the
  calibration queries go strong (ties at the threshold go strong at random, so that exactly s do;
  with no predictions every score ties: the random router). Knob: s.
- ``best-single``: for a budget b per query, the one decoder and sample count k (k · cost <= b)
  whose majority (or best reward) of k had the best success on the calibration data. Knob: b.

The project's methods: ``probe-escalate`` (`ProbeEscalate`: a cheap probe, then a learned gate,
FrugalGPT's learned scorer, sends a calibrated share to the strong decoder; it returns the strong
answer when drawn) and ``sequential-menu`` (`SequentialMenu`; its model and gain are in its
docstring; ``sequential-menu-flat`` ignores the predictions: the calibration means only).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from numpy.polynomial.hermite_e import hermegauss
from scipy.optimize import minimize
from scipy.special import betainc, expit, logsumexp

from howhard import sequential
from howhard.errors import ConfigError, NotFittedError, PoolError
from howhard.menu import (
    Draw,
    MenuData,
    PolicyFamily,
    QueryState,
    Seen,
    best_reward_choice,
    majority_choice,
)
from howhard.rerank.estimate import majority_best_of

FloatArray = npt.NDArray[np.float64]

OBSERVE = ("majority", "verifier")


# ---------------------------------------------------------------------------- answers and votes


def vote(seen: Sequence[Seen], observe: str) -> int:
    """The returned sample: best reward under a verifier, else the majority
    (`howhard.menu.majority_choice`)."""
    if observe == "verifier":
        return best_reward_choice(seen)
    return majority_choice(seen)


def beta_confidence(v1: float, v2: float) -> float:
    """Adaptive-Consistency's Beta criterion P(p1 > p2) = 1 - I_{1/2}(v1 + 1, v2 + 1)."""
    return float(1.0 - betainc(v1 + 1.0, v2 + 1.0, 0.5))


def _check_fit(data: MenuData, observe: str) -> None:
    if observe not in OBSERVE:
        raise ConfigError(f"observe must be 'majority' or 'verifier', got {observe!r}")
    if observe == "majority":
        for pool in data.pools:
            if not all("answers" in e for e in pool.extras):
                raise PoolError(
                    "majority vote needs each sample's answer and a pool of the menu has no "
                    "'answers'; re-export it with the current howhard, or pass observe='verifier'"
                )


def _mean_costs(data: MenuData) -> FloatArray:
    """Each decoder's mean per-sample price on ``data``."""
    return np.array([float(np.mean(np.concatenate(c))) for c in data.costs])


def _decoder_success(data: MenuData, d: int, observe: str) -> FloatArray:
    """Mean success of decoder d's majority of k (or its best reward of k), k = 1..K (K its
    fewest pooled samples of a query), on ``data``."""
    pool = data.pools[d]
    top = int(pool.n_samples.min())
    if observe == "verifier":
        return np.asarray(pool.q(top)[:, 1:].mean(axis=0), dtype=float)
    out = []
    for e, r in zip(pool.extras, pool.rewards, strict=True):
        out.append(majority_best_of(e["answers"], r, top))
    return np.asarray(np.mean(out, axis=0), dtype=float)


def _not_fitted(family: object) -> NotFittedError:
    name = type(family).__name__
    return NotFittedError(f"this {name} is not fitted yet; call .fit(data, observe) first")


# ---------------------------------------------------------------------------- single-decoder rules


@dataclass
class _OneDecoder:
    """What ESC and Adaptive-Consistency share: one decoder (an index; None: the one with the
    best one-sample success on the fitting data), its answers, the returned vote."""

    decoder: int | None = None

    def _fit(self, data: MenuData, observe: str) -> None:
        _check_fit(data, observe)
        self.observe_ = observe
        if self.decoder is None:
            rates = [float(p.success_rate().mean()) for p in data.pools]
            self.decoder_ = int(np.argmax(rates))
        elif 0 <= self.decoder < len(data.pools):
            self.decoder_ = self.decoder
        else:
            raise ConfigError(
                f"decoder must index the menu's {len(data.pools)} decoders, got {self.decoder}",
                param="decoder",
            )

    def _fitted(self) -> tuple[int, str]:
        if not hasattr(self, "decoder_"):
            raise _not_fitted(self)
        return self.decoder_, self.observe_


@dataclass(frozen=True)
class ESCPolicy:
    """ESC on decoder ``decoder``: windows of ``window``, at most ``cap`` samples (module doc)."""

    decoder: int
    window: int
    cap: int
    observe: str

    def decide(self, state: QueryState) -> Draw | None:
        drawn = len(state.seen)
        limit = min(self.cap, drawn + state.room[self.decoder])
        if drawn >= limit or (drawn and self._unanimous(state)):
            return None
        return Draw(self.decoder, min(self.window, limit - drawn))

    def _unanimous(self, state: QueryState) -> bool:
        """Whether the last full window's answers are all one (None never agrees)."""
        if len(state.seen) % self.window:
            return False
        last = state.seen[-self.window :]
        return last[0].answer is not None and len({s.answer for s in last}) == 1

    def choose(self, state: QueryState) -> int:
        if self.observe == "majority" and self._unanimous(state):
            return len(state.seen) - self.window  # the unanimous window's answer
        return vote(state.seen, self.observe)


@dataclass
class ESC(_OneDecoder):
    """Early-Stopping Self-Consistency (module doc); knob: the cap L on samples, 1..``max_samples``
    (the paper's L, default: the decoder's pool size on the fitting data)."""

    window: int = 5
    max_samples: int | None = None
    name: str = "esc"
    knobs: tuple[float, float] = (1.0, 10.0)  # set by fit: (1, max_samples)
    discrete: bool = True

    def fit(self, data: MenuData, observe: str) -> ESC:
        if self.window < 1:
            raise ConfigError(f"window must be >= 1, got {self.window}", param="window")
        self._fit(data, observe)
        cap = int(data.pools[self.decoder_].n_samples.max())
        self.knobs = (1.0, float(cap if self.max_samples is None else self.max_samples))
        return self

    def at(self, knob: float) -> ESCPolicy:
        d, observe = self._fitted()
        return ESCPolicy(d, self.window, max(1, int(knob)), observe)


@dataclass(frozen=True)
class AdaptiveConsistencyPolicy:
    """Adaptive-Consistency on decoder ``decoder``: stop at confidence >= ``threshold``."""

    decoder: int
    threshold: float
    cap: int | None
    observe: str

    def decide(self, state: QueryState) -> Draw | None:
        drawn = len(state.seen)
        if state.room[self.decoder] < 1 or (self.cap is not None and drawn >= self.cap):
            return None
        if drawn and self.confidence(state) >= self.threshold:
            return None
        return Draw(self.decoder, 1)

    def confidence(self, state: QueryState) -> float:
        """P(p1 > p2) on the two largest vote counts (`beta_confidence`)."""
        answers = [s.answer for s in state.seen if s.answer is not None]
        top = [c for _, c in Counter(answers).most_common(2)] + [0, 0]
        return beta_confidence(top[0], top[1])

    def choose(self, state: QueryState) -> int:
        return vote(state.seen, self.observe)


@dataclass
class AdaptiveConsistency(_OneDecoder):
    """Adaptive-Consistency with the Beta criterion (module doc); knob: the confidence C."""

    max_samples: int | None = None  # the paper's cap (40); None: the pool's room
    name: str = "adaptive-consistency"
    knobs: tuple[float, float] = (0.5, 1.0)
    discrete: bool = False

    def fit(self, data: MenuData, observe: str) -> AdaptiveConsistency:
        self._fit(data, observe)
        return self

    def at(self, knob: float) -> AdaptiveConsistencyPolicy:
        d, observe = self._fitted()
        return AdaptiveConsistencyPolicy(d, knob, self.max_samples, observe)


# ---------------------------------------------------------------------------- across decoders


@dataclass(frozen=True)
class CascadePolicy:
    """Walk ``chain`` (decoder indices), ``k`` samples each (``last_k`` from the last); accept
    when the current decoder's score is >= ``tau`` (module doc)."""

    chain: tuple[int, ...]
    k: int
    last_k: int
    tau: float
    observe: str

    def _stage(self, state: QueryState) -> int:
        """Index in the chain of the decoder drawn last (-1 before any draw)."""
        return self.chain.index(state.seen[-1].decoder) if state.seen else -1

    def decide(self, state: QueryState) -> Draw | None:
        stage = self._stage(state)
        if stage >= 0 and (stage == len(self.chain) - 1 or self.score(state) >= self.tau):
            return None
        for nxt in range(stage + 1, len(self.chain)):
            d = self.chain[nxt]
            want = self.last_k if nxt == len(self.chain) - 1 else self.k
            if state.room[d] >= 1:
                return Draw(d, min(want, state.room[d]))
        return None

    def _current(self, state: QueryState) -> list[int]:
        d = state.seen[-1].decoder
        return [i for i, s in enumerate(state.seen) if s.decoder == d]

    def score(self, state: QueryState) -> float:
        """The current decoder's agreement (top answer's share of its samples), or under a
        verifier its best reward."""
        mine = [state.seen[i] for i in self._current(state)]
        if self.observe == "verifier":
            return max(float(s.reward or 0.0) for s in mine)
        votes = Counter(s.answer for s in mine if s.answer is not None)
        return max(votes.values(), default=0) / len(mine)

    def choose(self, state: QueryState) -> int:
        among = self._current(state)
        if self.observe == "verifier":
            return max(among, key=lambda i: float(state.seen[i].reward or 0.0))
        return majority_choice(state.seen, among)


@dataclass
class Cascade:
    """Cheapest-first cascade with a consistency score (module doc); knob: τ. ``chain``: the
    decoders in order (default: all, by mean price on the fitting data)."""

    k: int = 3
    last_k: int = 1
    chain: tuple[int, ...] | None = None
    name: str = "cascade"
    knobs: tuple[float, float] = (0.0, 1.0)
    discrete: bool = False

    def fit(self, data: MenuData, observe: str) -> Cascade:
        _check_fit(data, observe)
        if self.k < 1 or self.last_k < 1:
            raise ConfigError(f"k and last_k must be >= 1, got {self.k}, {self.last_k}", param="k")
        chain = self.chain or tuple(int(d) for d in np.argsort(_mean_costs(data), kind="stable"))
        if not chain or any(not 0 <= d < len(data.pools) for d in chain):
            raise ConfigError(f"chain must index the menu's decoders, got {chain}", param="chain")
        self.chain_, self.observe_ = tuple(chain), observe
        return self

    def at(self, knob: float) -> CascadePolicy:
        if not hasattr(self, "chain_"):
            raise _not_fitted(self)
        return CascadePolicy(self.chain_, self.k, self.last_k, knob, self.observe_)


@dataclass
class RoutePolicy:
    """One sample: ``strong`` when the score pred[strong] - pred[weak] (NaN -> 0) is above
    ``threshold``, or equal to it with probability ``p_tie`` (a seeded draw per query)."""

    weak: int
    strong: int
    threshold: float
    p_tie: float
    observe: str
    rng: np.random.Generator

    def decide(self, state: QueryState) -> Draw | None:
        if state.seen:
            return None
        u = self.rng.random()  # drawn for every query, so queries keep their u across knobs
        score = route_score(state.prediction, self.weak, self.strong)
        strong = score > self.threshold or (score == self.threshold and u < self.p_tie)
        pick = self.strong if strong and state.room[self.strong] else self.weak
        return Draw(pick, 1) if state.room[pick] else None

    def choose(self, state: QueryState) -> int:
        return 0


def route_score(prediction: FloatArray, weak: int, strong: int) -> float:
    """RouteLLM's win score here: pred[strong] - pred[weak], 0 when either is NaN."""
    gap = float(prediction[strong] - prediction[weak])
    return 0.0 if math.isnan(gap) else gap


@dataclass
class RouteLLM:
    """Two-model threshold router calibrated to a strong-call share (module doc); knob: the
    share. ``strong``: default the costliest decoder; ``weak``: default the best one-sample
    success among the others."""

    weak: int | None = None
    strong: int | None = None
    seed: int = 0
    name: str = "routellm"
    knobs: tuple[float, float] = (0.0, 1.0)
    discrete: bool = False

    def fit(self, data: MenuData, observe: str) -> RouteLLM:
        if observe not in OBSERVE:
            raise ConfigError(f"observe must be 'majority' or 'verifier', got {observe!r}")
        if len(data.pools) < 2:
            raise ConfigError("routellm needs a menu of at least 2 decoders", param="menu")
        costs = _mean_costs(data)
        strong = int(np.argmax(costs)) if self.strong is None else self.strong
        rates = np.array([p.success_rate().mean() for p in data.pools])
        rates[strong] = -np.inf
        weak = int(np.argmax(rates)) if self.weak is None else self.weak
        self.weak_, self.strong_, self.observe_ = weak, strong, observe
        pred = np.asarray(data.predictions, dtype=float)
        self.scores_ = np.sort([route_score(p, weak, strong) for p in pred])[::-1]
        return self

    def at(self, knob: float) -> RoutePolicy:
        if not hasattr(self, "scores_"):
            raise _not_fitted(self)
        threshold, p_tie = share_threshold(self.scores_, knob)
        rng = np.random.default_rng(self.seed)
        return RoutePolicy(self.weak_, self.strong_, threshold, p_tie, self.observe_, rng)


def share_threshold(scores: FloatArray, share: float) -> tuple[float, float]:
    """(threshold, p_tie) sending a ``share`` of ``scores`` (sorted, largest first) above it:
    every score > threshold, and a score equal to it with probability p_tie."""
    want = min(max(share, 0.0), 1.0) * scores.size
    if want <= 0:
        return math.inf, 0.0
    threshold = float(scores[min(math.ceil(want), scores.size) - 1])
    above = int(np.sum(scores > threshold))
    return threshold, (want - above) / int(np.sum(scores == threshold))


@dataclass(frozen=True)
class FixedPolicy:
    """Draw ``k`` samples of ``decoder`` in one round, return the vote."""

    decoder: int
    k: int
    observe: str

    def decide(self, state: QueryState) -> Draw | None:
        if state.seen or not state.room[self.decoder]:
            return None
        return Draw(self.decoder, min(self.k, state.room[self.decoder]))

    def choose(self, state: QueryState) -> int:
        return vote(state.seen, self.observe)


@dataclass
class BestSingle:
    """The best single decoder and sample count affordable at a budget b per query (module doc).
    Success of each (decoder, k) is measured on the fitting data (majority of k or best of k)."""

    name: str = "best-single"
    knobs: tuple[float, float] = (0.0, 1.0)  # set by fit: the cheapest and costliest option
    discrete: bool = False

    def fit(self, data: MenuData, observe: str) -> BestSingle:
        _check_fit(data, observe)
        self.costs_, self.observe_ = _mean_costs(data), observe
        self.options_: list[tuple[float, float, int, int]] = []  # (cost, success, decoder, k)
        for d in range(len(data.pools)):
            success = _decoder_success(data, d, observe)
            for k, rate in enumerate(success.tolist(), 1):
                self.options_.append((k * float(self.costs_[d]), rate, d, k))
        self.options_.sort()
        self.knobs = (self.options_[0][0], self.options_[-1][0])
        return self

    def option(self, budget: float) -> tuple[int, int]:
        """(decoder, k) of the best success with cost <= budget (ties: the cheaper; below every
        cost, the cheapest)."""
        best = self.options_[0]
        for opt in self.options_:
            if opt[0] <= budget and opt[1] > best[1]:
                best = opt
        return best[2], best[3]

    def at(self, knob: float) -> FixedPolicy:
        if not hasattr(self, "options_"):
            raise _not_fitted(self)
        d, k = self.option(knob)
        return FixedPolicy(d, k, self.observe_)


# ---------------------------------------------------------------------------- the sequential menu


def latent_grid(size: int = 24) -> tuple[FloatArray, FloatArray]:
    """Gauss-Hermite nodes z_g and weights w_g (summing to 1) for E[f(z)], z ~ N(0, 1)."""
    nodes, weights = hermegauss(size)
    return np.asarray(nodes, dtype=float), np.asarray(weights / weights.sum(), dtype=float)


def accuracy(slope: FloatArray, offset: FloatArray, z: FloatArray) -> FloatArray:
    """λ_d(z) = σ(a_d z + c_d) for each decoder d (rows) and grid node z (columns); ``offset``
    (M,) or one row per query (..., M) gives (..., M, G)."""
    return np.asarray(expit(slope[:, None] * z[None, :] + offset[..., None]), dtype=float)


def fit_latent(
    positives: FloatArray,
    trials: FloatArray,
    grid: tuple[FloatArray, FloatArray],
    logits: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(a, c, b) of the one-factor model λ_qd = σ(a_d z_q + c_d + b_d x_qd), z_q ~ N(0, 1), by
    maximum marginal likelihood of the counts (``positives``, ``trials``: (n, M), query q's
    positive rewards among decoder d's draws):

        ℓ(a, c, b) = Σ_q log Σ_g w_g Π_d λ_qd(z_g)^k_qd (1 - λ_qd(z_g))^(n_qd - k_qd)

    a_d > 0 says how strongly decoder d's success follows the query's shared ease z; the
    decoders are independent given z. ``logits`` (n, M): x_qd, e.g. logit of the predicted
    one-sample success (`prediction_logits`; 0 where there is none); None: b = 0, fitted from
    a = 1, c = logit of each decoder's mean (L-BFGS). With ``logits``, (a, c) start from that
    fit and b from 0; b_d stays 0 for a decoder whose x is 0 on every query."""
    k, n = np.asarray(positives, dtype=float), np.asarray(trials, dtype=float)
    z, w = grid
    m = k.shape[1]
    mean = np.clip(k.sum(axis=0) / n.sum(axis=0), sequential.EPS, 1 - sequential.EPS)

    def loss(x: FloatArray) -> float:
        lam = np.clip(accuracy(x[:m], x[m:], z), 1e-12, 1 - 1e-12)  # (M, G)
        ll = k @ np.log(lam) + (n - k) @ np.log1p(-lam)  # (n, G)
        return -float(np.sum(logsumexp(ll + np.log(w), axis=1)))

    start = np.concatenate([np.ones(m), np.log(mean / (1 - mean))])
    res = minimize(loss, start, method="L-BFGS-B")
    a, c = np.asarray(res.x[:m], dtype=float), np.asarray(res.x[m:], dtype=float)
    if logits is None:
        return a, c, np.zeros(m)
    x_qd = np.asarray(logits, dtype=float)
    used = np.flatnonzero(np.any(x_qd != 0, axis=0))  # decoders with a prediction somewhere
    if used.size == 0:
        return a, c, np.zeros(m)

    def loss_b(x: FloatArray) -> float:
        b = np.zeros(m)
        b[used] = x[2 * m :]
        offset = x[m : 2 * m] + b * x_qd  # (n, M)
        lam = np.clip(accuracy(x[:m], offset, z), 1e-12, 1 - 1e-12)  # (n, M, G)
        ll = np.einsum("qd,qdg->qg", k, np.log(lam)) + np.einsum(
            "qd,qdg->qg", n - k, np.log1p(-lam)
        )
        return -float(np.sum(logsumexp(ll + np.log(w), axis=1)))

    res = minimize(loss_b, np.concatenate([a, c, np.zeros(used.size)]), method="L-BFGS-B")
    b = np.zeros(m)
    b[used] = res.x[2 * m :]
    return np.asarray(res.x[:m], dtype=float), np.asarray(res.x[m : 2 * m], dtype=float), b


def prediction_logits(prediction: npt.ArrayLike, eps: float = 1e-4) -> FloatArray:
    """logit(p̂) of each predicted one-sample success, p̂ clipped to [eps, 1 - eps]; 0 where
    there is no prediction (NaN), so that b_d logit(p̂) drops out there."""
    p = np.asarray(prediction, dtype=float)
    clipped = np.clip(p, eps, 1 - eps)
    return np.where(np.isfinite(p), np.log(clipped / (1 - clipped)), 0.0)


def wrong_shares(
    counts: FloatArray, decoder: int | npt.NDArray[np.int64], theta: FloatArray, gamma: float
) -> FloatArray:
    """P(a wrong draw of ``decoder`` is answer b | H_h), shape (1 + D, D + 1): rows H_0, H_1..H_D,
    columns the seen answers and, last, a new one; ``counts`` (D, M) the draws per answer and
    decoder so far. Wrong answers follow a Chinese restaurant franchise with one table per
    (decoder, answer) (the minimal-path approximation): with n_bd the draws of b by d, W_d =
    Σ_b n_bd, t_b the decoders that drew b, t = Σ_b t_b, each counted without the answer h
    (correct under H_h),

        P(b | H_h) = (n_bd + θ_d t_b / (γ + t)) / (θ_d + W_d),   P(new | H_h) = θ_d γ / (γ + t)
        / (θ_d + W_d),

    so a decoder repeats its own wrong answers (θ_d small) more than it meets another's (γ).

    Batched: ``counts`` (..., D, M) and ``decoder`` an int array of the leading shape give
    (..., 1 + D, D + 1), one table per state."""
    counts = np.asarray(counts, dtype=float)
    n_answers = counts.shape[-2]
    if np.ndim(decoder) == 0:
        mine = counts[..., int(decoder)]  # (..., D)
    else:
        mine = np.take_along_axis(counts, np.asarray(decoder)[..., None, None], axis=-1)[..., 0]
    tables = (counts > 0).sum(axis=-1).astype(float)
    zero = np.zeros((*mine.shape[:-1], 1))
    own = np.concatenate([zero, mine], axis=-1)  # n_hd, 0 under H_0
    t_h = np.concatenate([zero, tables], axis=-1)
    th = np.asarray(theta[decoder])[..., None]
    menu = gamma + tables.sum(axis=-1, keepdims=True) - t_h  # γ + t under H_h, (..., 1 + D)
    out = np.empty((*mine.shape[:-1], n_answers + 1, n_answers + 1))
    out[..., :n_answers] = (
        mine[..., None, :] + th[..., None] * tables[..., None, :] / menu[..., None]
    )
    out[..., n_answers] = th * gamma / menu
    out /= (th + mine.sum(axis=-1, keepdims=True) - own)[..., None]
    h = np.arange(1, n_answers + 1)
    out[..., h, h - 1] = 0.0
    return out


def menu_joint(
    lam: FloatArray,
    log_w: FloatArray,
    theta: FloatArray,
    gamma: float,
    draws: Sequence[tuple[int, int]],
) -> tuple[FloatArray, FloatArray]:
    """P(H_h, z_g | draws), shape (1 + D, G), and the counts (D, M), from the draws in order
    (``draws``: (decoder, answer index in first-seen order, -1 for no answer)). H_0: the correct
    answer is none of the D seen ones; H_a: answer a is; z_g the query's latent ease (``lam`` =
    λ_d(z_g) (M, G), ``log_w`` = log w_g). Filtering: each draw of d multiplies P(H_h, z) by

        λ_d(z) when it states h;  (1 - λ_d(z)) P(answer | H_h) (`wrong_shares`) otherwise;
        (1 - λ_d(z)) when it states no answer,

    and a new answer a splits H_0 into H_a (factor λ_d(z)) and H_0 (a is wrong)."""
    walk = JointWalk(np.log(lam), np.log1p(-lam), log_w, theta, gamma)
    for d, a in draws:
        walk.add(d, a)
    return walk.joint(), walk.counts


class JointWalk:
    """`menu_joint`'s filter one draw at a time, so that a walk extended by a draw costs one
    step: ``log_joint`` the unnormalised log P(H_h, z_g, draws) (1 + D, G), ``counts`` (D, M)."""

    def __init__(
        self,
        log_lam: FloatArray,
        log_miss: FloatArray,
        log_w: FloatArray,
        theta: FloatArray,
        gamma: float,
    ) -> None:
        self.log_lam, self.log_miss, self.theta, self.gamma = log_lam, log_miss, theta, gamma
        self.log_joint = np.asarray(log_w, dtype=float)[None, :].copy()
        self.counts = np.zeros((0, log_lam.shape[0]))

    def add(self, d: int, a: int) -> None:
        """One more draw of decoder ``d`` stating answer ``a`` (first-seen index; -1: none)."""
        seen = self.counts.shape[0]
        if a < 0:
            self.log_joint += self.log_miss[d]
            return
        share = wrong_shares(self.counts, d, self.theta, self.gamma)
        if a == seen:  # a new answer: wrong under every hypothesis so far, or correct (H_a)
            hit = self.log_joint[0] + self.log_lam[d]
            self.log_joint += self.log_miss[d] + np.log(share[:, seen])[:, None]
            self.log_joint = np.vstack([self.log_joint, hit])
            self.counts = np.vstack([self.counts, np.zeros(self.counts.shape[1])])
        else:
            rows = np.arange(1 + seen) != 1 + a
            self.log_joint[rows] += self.log_miss[d] + np.log(share[rows, a])[:, None]
            self.log_joint[1 + a] += self.log_lam[d]
        self.counts[a, d] += 1

    def joint(self) -> FloatArray:
        """P(H_h, z_g | draws), normalised."""
        joint = np.exp(self.log_joint - self.log_joint.max())
        return np.asarray(joint / joint.sum(), dtype=float)


def lookahead_values(
    joint: FloatArray,
    counts: FloatArray,
    decoder: int,
    lam: FloatArray,
    theta: FloatArray,
    gamma: float,
    depth: int,
    tiny: float = 1e-3,
) -> FloatArray:
    """E[V_j], j = 0..depth: the expected posterior probability that the returned (most likely)
    answer is correct after j more draws from ``decoder`` (accuracy ``lam`` = λ_d(z_g) (G,)),
    V = max_{a >= 1} Σ_g P(H_a, z_g) (0 with no answer seen); ``joint`` and ``counts`` from
    `menu_joint`. One draw under (H_h, z) states h with λ(z), else a wrong answer by
    `wrong_shares` (a new answer under H_0 with λ(z) too: it splits H_0); the joint after an
    outcome is the joint times its probability, normalised. Outcomes are enumerated exactly
    (every draw states an answer); branches of probability < ``tiny`` are dropped.

    The last draw is summed over its outcomes at once: with W_h = Σ_g P(H_h, z_g)(1 - λ(z_g)),
    R_h = Σ_g P(H_h, z_g) λ(z_g) and S = `wrong_shares`, outcome o (a seen answer, or new: o = D)
    leaves hypothesis h with mass W_h S_ho + [h = o + 1] R_h (and the new answer's H_{D+1} with
    R_0), so E[V_1] = Σ_{o: P(o) >= tiny} max_{a >= 1} of those masses; only the draws before
    the last are walked one outcome at a time."""
    n_answers = counts.shape[0]
    out = np.zeros(depth + 1)
    out[0] = joint[1:].sum(axis=1).max() if n_answers else 0.0
    if depth == 0:
        return out
    share = wrong_shares(counts, decoder, theta, gamma)
    wrong = joint * (1.0 - lam)  # (H, G)
    right = joint * lam
    if depth == 1:
        mass = wrong.sum(axis=1)[:, None] * share  # (H, D + 1): hypothesis h after outcome o
        hit = right.sum(axis=1)
        seen = np.arange(n_answers)
        mass[seen + 1, seen] += hit[1:]
        pred = mass.sum(axis=0)
        pred[n_answers] += hit[0]
        top = mass[1:].max(axis=0, initial=0.0)
        top[n_answers] = max(top[n_answers], hit[0])
        out[1] = top[pred >= tiny].sum()
        return out
    pred = wrong.sum(axis=1) @ share
    hit = right.sum(axis=1)
    pred[:n_answers] += hit[1:]
    pred[n_answers] += hit[0]
    for o in range(n_answers + 1):
        if pred[o] < tiny:
            continue
        child = wrong * share[:, o, None]
        if o < n_answers:
            child[o + 1] += right[o + 1]
            grown = counts.copy()
            grown[o, decoder] += 1
        else:
            child = np.vstack([child, right[0]])
            grown = np.vstack([counts, np.eye(counts.shape[1])[decoder]])
        out[1:] += pred[o] * lookahead_values(
            child / pred[o], grown, decoder, lam, theta, gamma, depth - 1, tiny
        )
    return out


def menu_lookahead(
    joint: FloatArray,
    counts: FloatArray,
    lam: FloatArray,
    theta: FloatArray,
    gamma: float,
    depth: int,
    tiny: float = 1e-3,
) -> FloatArray:
    """`lookahead_values` of every decoder at once, (M, depth + 1) (``lam`` = λ_d(z_g) (M, G)).

    Up to two draws the sums over z close: with μ_h(f) = Σ_g P(H_h, z_g) f(λ(z_g)) and S the
    `wrong_shares` of the current counts, outcome o of the first draw leaves hypothesis h with
    mass μ_h(1 - λ) S_ho + [h = o + 1] μ_h(λ) (the new answer's row: μ_0(λ)); of that mass,
    μ_h((1 - λ)^2) S_ho + [h = o + 1] μ_h(λ(1 - λ)) fails the second draw and μ_h(λ(1 - λ)) S_ho
    + [h = o + 1] μ_h(λ^2) succeeds, which with the shares S' of the grown counts (padded to
    D + 1 answers: a seen answer o leaves the last one empty) gives the masses after outcome o'
    as before; E[V_j] sums each kept branch's largest mass over a >= 1, branches pruned as in
    `lookahead_values` (probability < ``tiny`` given their parent). Deeper lookaheads walk
    `lookahead_values` per decoder."""
    m, n_answers = lam.shape[0], counts.shape[0]
    if depth > 2:
        return np.array(
            [
                lookahead_values(joint, counts, d, lam[d], theta, gamma, depth, tiny)
                for d in range(m)
            ]
        )
    out = np.zeros((m, depth + 1))
    out[:, 0] = joint[1:].sum(axis=1).max() if n_answers else 0.0
    if depth == 0:
        return out
    miss, hit = 1.0 - lam, lam
    a1, b1 = miss @ joint.T, hit @ joint.T  # (M, H): μ_h(1 - λ), μ_h(λ)
    decoders = np.arange(m)
    share = wrong_shares(np.broadcast_to(counts, (m, *counts.shape)), decoders, theta, gamma)
    seen = np.arange(n_answers)
    mass = a1[:, :, None] * share  # (M, H, O): hypothesis h after outcome o
    mass[:, seen + 1, seen] += b1[:, 1:]
    pred = mass.sum(axis=1)
    pred[:, n_answers] += b1[:, 0]
    keep = pred >= tiny
    top = mass[:, 1:].max(axis=1, initial=0.0)
    top[:, n_answers] = np.maximum(top[:, n_answers], b1[:, 0])
    out[:, 1] = np.where(keep, top, 0.0).sum(axis=1)
    if depth == 1:
        return out
    a2, c2, b2 = (miss * miss) @ joint.T, (miss * hit) @ joint.T, (hit * hit) @ joint.T
    # after outcome o: (M, O, H + 1) masses failing (x) and passing (y) the second draw
    x = np.zeros((m, n_answers + 1, n_answers + 2))
    y = np.zeros_like(x)
    x[:, :, : n_answers + 1] = np.swapaxes(share * a2[:, :, None], 1, 2)
    y[:, :, : n_answers + 1] = np.swapaxes(share * c2[:, :, None], 1, 2)
    x[:, seen, seen + 1] += c2[:, 1:]
    y[:, seen, seen + 1] += b2[:, 1:]
    x[:, n_answers, n_answers + 1] = c2[:, 0]
    y[:, n_answers, n_answers + 1] = b2[:, 0]
    grown = np.zeros((m, n_answers + 1, n_answers + 1, counts.shape[1]))
    grown[:, :, :n_answers] = counts
    grown[
        decoders[:, None], np.arange(n_answers + 1), np.arange(n_answers + 1), decoders[:, None]
    ] += 1
    share2 = wrong_shares(grown, np.broadcast_to(decoders[:, None], grown.shape[:2]), theta, gamma)
    wide = np.arange(n_answers + 1)
    mass2 = x[..., None] * share2  # (M, O, H + 1, O')
    mass2[:, :, wide + 1, wide] += y[:, :, 1:]
    pred2 = mass2.sum(axis=2)
    pred2[:, :, n_answers + 1] += y[:, :, 0]
    top2 = mass2[:, :, 1:].max(axis=2)
    top2[:, :, n_answers + 1] = np.maximum(top2[:, :, n_answers + 1], y[:, :, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        keep2 = keep[:, :, None] & (pred2 / pred[:, :, None] >= tiny)
    out[:, 2] = np.where(keep2, top2, 0.0).sum(axis=(1, 2))
    return out


@dataclass
class SequentialMenuPolicy:
    """Draw one sample at a time from the decoder of the largest posterior gain per unit cost
    while it is >= ``price`` (see `SequentialMenu`); the first sample always (a query is
    answered), from that decoder."""

    family: SequentialMenu
    price: float

    def decide(self, state: QueryState) -> Draw | None:
        d, gain = self.family.best_draw(state)
        if d < 0 or (state.seen and (gain <= 0 or gain < self.price)):
            return None
        return Draw(d, 1)

    def choose(self, state: QueryState) -> int:
        return self.family.returned(state)


@dataclass
class _QueryModel:
    """What `SequentialMenu` knows of one query before any draw: λ_d(z_g) (M, G), their logs."""

    lam: FloatArray
    log_lam: FloatArray
    log_miss: FloatArray


@dataclass
class _Track:
    """One query state as `SequentialMenu` has read it: its draws (decoder, answer index), the
    answers' indices, the node of the draws in the memo's prefix tree, the walk of `menu_joint`
    through the first ``walked`` draws under ``walk_query``'s λ."""

    state: QueryState
    draws: list[tuple[int, int]] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    node: int = 0
    last: Seen | None = None
    walk: JointWalk | None = None
    walk_query: _QueryModel | None = None
    walked: int = 0


@dataclass
class SequentialMenu:
    """Stop, draw again or escalate by posterior expected gain per unit cost against a price.

    Model (one query). The decoders' successes are strongly correlated across queries (on
    CRUXEval the per-query success rates of two decoders correlate 0.4-0.8), so they share one
    latent ease z ~ N(0, 1) of the query; the query's predictions p̂_d (each decoder's predicted
    one-sample success, `QueryState.prediction`) shift it per decoder: decoder d's one-sample
    accuracy is

        λ_qd(z) = σ(a_d z + c_d + b_d logit(p̂_qd)),

    the decoders independent given z; (a, c, b) by maximum marginal likelihood on the fitting
    data's counts and predictions (`fit_latent`; the fitting data's predictions must be held out
    from the predictors' training, as `howhard compare` gives them). A missing prediction (NaN)
    contributes 0; ``flat=True`` ignores the predictions (b = 0). One answer string is correct
    for every decoder; a sample of d is correct with probability λ_d, and a wrong one (from any
    decoder) joins the wrong answers seen so far as one Chinese restaurant process of
    concentration θ (`howhard.sequential.fit_concentration` on each fitting query's wrong answers
    pooled over decoders), so agreeing answers pool evidence across decoders. The posterior of
    "answer a is correct" is `menu_joint` summed over z; the returned answer is its most likely
    one (a majority weighted by each decoder's reliability on this query).

    Gain (majority). V = max_a P(H_a | data), the posterior probability that the returned answer
    is correct; drawing j from d is worth E[V_j] - V (`lookahead_values`, exact, j <= J =
    ``lookahead``). Decoder d's gain per cost is g_d = max_{1 <= j <= min(J, room_d)} (E[V_j] -
    V) / (j c_d), c_d its mean price on the fitting data. One sample of the best d is drawn while
    g_d >= price (> 0); the knob is log10(1 / price), so spend is non-decreasing in it (the draw
    chosen does not depend on the price, only when the walk stops).

    Gain (verifier). Rewards are seen (a sample is positive when its reward is > 0): g_d =
    P(next draw of d is positive | data) · E_G[(R - M)^+] / c_d, P = Σ_g P(z_g | data) λ_d(z_g)
    (as `howhard.sequential.verifier_gain`, with the latent posterior), M the best reward so far,
    G the positive rewards of the fitting data; the best reward is returned.

    Memo. The best draw depends on the query only through its predictions and on the state
    only through the draws (decoder, answer index) in order and the room (capped at J), so it
    is kept per (predictions, draws, room), up to ``cache_size`` entries (then the memo starts
    afresh); a replay's walk, which only grows, extends the last posterior by its new draws.
    """

    flat: bool = False
    lookahead: int = 2
    grid: int = 24
    name: str = "sequential-menu"
    knobs: tuple[float, float] = (-1.0, 3.0)
    discrete: bool = False
    cache_size: int = 500_000
    cache: dict[tuple[object, ...], tuple[int, float]] = field(default_factory=dict, repr=False)

    def fit(self, data: MenuData, observe: str) -> SequentialMenu:
        _check_fit(data, observe)
        if self.lookahead < 1:
            raise ConfigError(f"lookahead must be >= 1, got {self.lookahead}", param="lookahead")
        self.observe_, self.costs_ = observe, _mean_costs(data)
        self.grid_ = latent_grid(self.grid)
        positives = np.array([[float(np.sum(r > 0)) for r in p.rewards] for p in data.pools]).T
        trials = np.array([p.n_samples for p in data.pools], dtype=float).T
        logits = None if self.flat else prediction_logits(data.predictions)
        self.slope_, self.offset_, self.weight_ = fit_latent(positives, trials, self.grid_, logits)
        seen = np.concatenate([r[r > 0] for p in data.pools for r in p.rewards])
        self.positive_ = np.sort(seen) if seen.size else np.ones(1)
        self.theta_, self.gamma_ = np.ones(len(data.pools)), 1.0
        if observe == "majority":
            self.theta_, self.gamma_ = self._fit_wrong(data)
        self.cache.clear()
        self.queries_: dict[bytes, tuple[bytes | None, _QueryModel]] = {}
        self.nodes_: dict[tuple[int, int, int], int] = {}  # (parent, decoder, answer) -> node
        self.track_: _Track | None = None
        self.full_room_ = (self.lookahead,) * len(data.pools)
        return self

    def at(self, knob: float) -> SequentialMenuPolicy:
        if not hasattr(self, "slope_"):
            raise _not_fitted(self)
        return SequentialMenuPolicy(self, 10.0 ** (-knob))

    def _fit_wrong(self, data: MenuData) -> tuple[FloatArray, float]:
        """θ_d: `howhard.sequential.fit_concentration` on each query's wrong answers of decoder
        d; γ: the same on each query's tables, the decoders holding each wrong answer."""
        per_decoder: list[list[list[int]]] = [[] for _ in data.pools]
        tables = []
        for i in range(len(data.pools[0])):
            holders: Counter[str | None] = Counter()
            for d, p in enumerate(data.pools):
                wrong = Counter(
                    a
                    for a, r in zip(p.extras[i]["answers"], p.rewards[i], strict=True)
                    if r < 1 and a is not None
                )
                per_decoder[d].append(list(wrong.values()))
                holders.update(wrong.keys())
            tables.append(list(holders.values()))
        theta = np.array([sequential.fit_concentration(w) for w in per_decoder])
        return theta, sequential.fit_concentration(tables)

    def _lam(self, prediction: FloatArray) -> FloatArray:
        """λ_qd(z_g) (M, G) for a query of predictions ``prediction`` (M,)."""
        offset = self.offset_
        if not self.flat:
            offset = offset + self.weight_ * prediction_logits(prediction)
        return np.clip(accuracy(self.slope_, offset, self.grid_[0]), 1e-9, 1 - 1e-9)

    def _query(self, prediction: FloatArray) -> tuple[bytes | None, _QueryModel]:
        """The memo key of a query (None when its predictions do not change λ) and its λ."""
        raw = np.asarray(prediction, dtype=float).tobytes()
        if raw not in self.queries_:
            if len(self.queries_) >= self.cache_size:
                self.queries_.clear()
            logits = prediction_logits(prediction)
            key = None if self.flat or not np.any(self.weight_ * logits) else logits.tobytes()
            lam = self._lam(prediction)
            self.queries_[raw] = (key, _QueryModel(lam, np.log(lam), np.log1p(-lam)))
        return self.queries_[raw]

    def _track(self, state: QueryState) -> _Track:
        """The state's draws as (decoder, answer index, -1 for no answer) with their node in
        the memo's prefix tree: the last state's track extended by the samples appended to it
        since, else built afresh."""
        track = self.track_
        done = len(track.draws) if track is not None else 0
        if (
            track is None
            or track.state is not state
            or len(state.seen) < done
            or (done and state.seen[done - 1] is not track.last)
        ):
            track = self.track_ = _Track(state)
            done = 0
        for s in state.seen[done:]:
            answer = s.answer
            a = -1 if answer is None else track.index.setdefault(answer, len(track.index))
            step = (track.node, s.decoder, a)
            track.node = self.nodes_.setdefault(step, len(self.nodes_) + 1)
            track.draws.append((s.decoder, a))
            track.last = s
        return track

    def _joint(self, track: _Track, query: _QueryModel) -> tuple[FloatArray, FloatArray]:
        """`menu_joint` of the track's draws, its walk extended by the draws since its last call
        (a walk of another query's λ is started afresh)."""
        if track.walk is None or track.walk_query is not query:
            log_w = np.log(self.grid_[1])
            track.walk = JointWalk(query.log_lam, query.log_miss, log_w, self.theta_, self.gamma_)
            track.walk_query, track.walked = query, 0
        for d, a in track.draws[track.walked :]:
            track.walk.add(d, a)
        track.walked = len(track.draws)
        return track.walk.joint(), track.walk.counts

    def _remember(self, key: tuple[object, ...], value: tuple[int, float]) -> tuple[int, float]:
        if len(self.cache) >= self.cache_size or len(self.nodes_) >= self.cache_size:
            self.cache.clear()  # node ids restart: no memo entry may name an old one
            self.nodes_.clear()
            self.track_ = None
            return value
        self.cache[key] = value
        return value

    def best_draw(self, state: QueryState) -> tuple[int, float]:
        """(decoder, gain per unit cost) of the best next draw; (-1, -inf) with no room."""
        key, query = self._query(state.prediction)
        if self.observe_ == "verifier":
            return self._verifier_draw(state, key, query.lam)
        track = self._track(state)
        cap = self.lookahead
        room = self.full_room_ if min(state.room) >= cap else tuple(min(r, cap) for r in state.room)
        memo = ("draw", key, track.node, room)
        if memo in self.cache:
            return self.cache[memo]
        joint, counts = self._joint(track, query)
        v = menu_lookahead(joint, counts, query.lam, self.theta_, self.gamma_, max(room))
        best = (-1, -math.inf)
        for d, r in enumerate(room):
            if r < 1:
                continue
            gain = float(np.max((v[d, 1 : r + 1] - v[d, 0]) / np.arange(1, r + 1))) / self.costs_[d]
            if gain > best[1]:
                best = (d, gain)
        return self._remember(memo, best)

    def _verifier_draw(
        self, state: QueryState, key: bytes | None, lam: FloatArray
    ) -> tuple[int, float]:
        m = len(state.room)
        pos, neg = np.zeros(m), np.zeros(m)
        for s in state.seen:
            if float(s.reward or 0.0) > 0:
                pos[s.decoder] += 1
            else:
                neg[s.decoder] += 1
        best = max((float(s.reward or 0.0) for s in state.seen), default=0.0)
        open_ = tuple(r > 0 for r in state.room)
        memo = ("verifier", key, pos.tobytes(), neg.tobytes(), best, open_)
        if memo in self.cache:
            return self.cache[memo]
        log_post = np.log(self.grid_[1]) + pos @ np.log(lam) + neg @ np.log1p(-lam)
        post = np.exp(log_post - log_post.max())
        p_next = lam @ (post / post.sum())  # (M,)
        improvement = float(np.mean(np.maximum(self.positive_ - best, 0.0)))
        gain = np.where(np.array(open_), p_next * improvement / self.costs_, -math.inf)
        d = int(np.argmax(gain))
        return self._remember(
            memo, (d, float(gain[d])) if np.isfinite(gain[d]) else (-1, -math.inf)
        )

    def returned(self, state: QueryState) -> int:
        """The sample returned: the best reward (verifier), else the first sample holding the
        posterior's most likely answer."""
        if self.observe_ == "verifier":
            return best_reward_choice(state.seen)
        key, query = self._query(state.prediction)
        track = self._track(state)
        if not track.index:
            return 0
        memo = ("returned", key, track.node)
        top = self.cache.get(memo)
        if top is None:
            joint, _ = self._joint(track, query)
            top = self._remember(memo, (int(np.argmax(joint[1:].sum(axis=1))), 0.0))
        return next(i for i, (_, a) in enumerate(track.draws) if a == top[0])


# ---------------------------------------------------------------------------- learned escalation


def gate_features(
    seen: Sequence[Seen],
    prediction: FloatArray,
    probe: Sequence[int],
    strong: int,
    observe: str,
) -> FloatArray:
    """What the gate of `ProbeEscalate` reads after the probe: the returned answer's share of
    the samples, the number of distinct answers per sample, each probe decoder's share of
    samples agreeing with the returned answer (0 when it drew none), the predicted logit gap
    logit(p_strong) - logit(p_probe[0]) (predictions clipped to [0.01, 0.99]; 0 where either is
    NaN: one feature, not one per decoder, as weak predictors overfit) and, under a verifier,
    the best reward."""
    top = seen[vote(seen, observe)].answer
    answers = [x.answer for x in seen if x.answer is not None]
    agree = [
        float(np.mean([x.answer == top for x in mine]))
        if (mine := [x for x in seen if x.decoder == d])
        else 0.0
        for d in probe
    ]
    p = np.clip(prediction[[strong, probe[0]]], 0.01, 0.99)
    gap = np.diff(np.log((1 - p) / p))[0]  # logit(p[0]) - logit(p[1])
    n = len(seen)
    x = [answers.count(top) / n if top is not None else 0.0, len(set(answers)) / n]
    x += [*agree, 0.0 if math.isnan(gap) else float(gap)]
    if observe == "verifier":
        x.append(max(float(v.reward or 0.0) for v in seen))
    return np.array(x, dtype=float)


def fit_logistic(x: FloatArray, y: FloatArray, l2: float) -> FloatArray:
    """Weights w (last entry the intercept) minimising the Bernoulli log-loss of σ(x·w + b)
    against labels y in [0, 1] (fractions allowed) plus l2/2 ‖w‖² (the intercept free)."""
    design = np.hstack([x, np.ones((len(x), 1))])
    penalty = np.r_[np.full(x.shape[1], l2), 0.0]

    def loss(w: FloatArray) -> tuple[float, FloatArray]:
        z = design @ w
        nll = float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * w * w))
        return nll, design.T @ (expit(z) - y) + penalty * w

    return np.asarray(minimize(loss, np.zeros(design.shape[1]), jac=True).x, dtype=float)


def _gate_weights(
    z: FloatArray, kept: FloatArray, lam: FloatArray, l2: float, cols: npt.NDArray[np.bool_]
) -> tuple[FloatArray, FloatArray]:
    """The gate's two models fitted on the columns ``cols`` of ``z`` (the others weigh 0)."""
    out = []
    for y in (kept, lam):
        w = np.zeros(z.shape[1] + 1)
        w[np.r_[cols, True]] = fit_logistic(z[:, cols], y, l2)
        out.append(w)
    return out[0], out[1]


def _held_out_success(
    z: FloatArray,
    kept: FloatArray,
    lam: FloatArray,
    folds: npt.NDArray[np.int64],
    l2: float,
    cols: npt.NDArray[np.bool_],
) -> float:
    """The gate judged by what it allocates: on each fold, fitted on the other, the mean success
    of escalating the rows of largest gain (the strong decoder's λ there, the probe's answer's
    reward elsewhere), averaged over escalated shares 0.1, 0.2, ..., 0.9 and both folds."""
    total = 0.0
    for fold in (0, 1):
        train = folds != fold
        gate = Gate(
            np.zeros(z.shape[1]),
            np.ones(z.shape[1]),
            *_gate_weights(z[train], kept[train], lam[train], l2, cols),
        )
        order = np.argsort([-gate.gain(r) for r in z[~train]], kind="stable")
        k, s = kept[~train][order], lam[~train][order]
        for share in np.arange(1, 10) / 10:
            top = np.arange(len(k)) < round(share * len(k))
            total += float(np.mean(np.where(top, s, k))) / 18
    return total


@dataclass(frozen=True)
class Gate:
    """Two logistic models on standardised `gate_features`: P(the probe's answer is correct)
    and the strong decoder's one-sample success; gain = the second minus the first."""

    mean: FloatArray
    scale: FloatArray
    kept: FloatArray
    strong: FloatArray

    def gain(self, x: FloatArray) -> float:
        z = np.append((x - self.mean) / self.scale, 1.0)
        return float(expit(z @ self.strong) - expit(z @ self.kept))


@dataclass
class ProbeEscalatePolicy:
    """Draw the probe (``k`` samples of each of its decoders, one round each), then one sample
    of ``strong`` when the gate's gain is above ``threshold`` (equal: with probability
    ``p_tie``, a seeded draw per query). Returns the strong decoder's answer when drawn (the
    best reward under a verifier), else the probe's vote."""

    probe: tuple[tuple[int, int], ...]
    strong: int
    gate: Gate
    threshold: float
    p_tie: float
    observe: str
    rng: np.random.Generator

    def decide(self, state: QueryState) -> Draw | None:
        drawn = {s.decoder for s in state.seen}
        if self.strong in drawn:
            return None
        for d, k in self.probe:
            if d not in drawn and state.room[d] >= 1:
                return Draw(d, min(k, state.room[d]))
        u = self.rng.random()  # one draw per query, so queries keep their u across knobs
        if not state.room[self.strong]:
            return None
        if state.seen:
            probe = [d for d, _ in self.probe]
            x = gate_features(state.seen, state.prediction, probe, self.strong, self.observe)
            g = self.gate.gain(x)
            if g < self.threshold or (g == self.threshold and u >= self.p_tie):
                return None
        return Draw(self.strong, 1)

    def choose(self, state: QueryState) -> int:
        if self.observe == "verifier":
            return best_reward_choice(state.seen)
        strong = [i for i, s in enumerate(state.seen) if s.decoder == self.strong]
        if strong and state.seen[strong[0]].answer is not None:
            return strong[0]
        return vote(state.seen, self.observe)


@dataclass
class ProbeEscalate:
    """A cheap probe, then a learned gate sends a share of the queries to the strong decoder.

    FrugalGPT's cascade as published learns its scorer (a model of whether an answer is
    correct) instead of thresholding agreement; here the scorer reads what the probe showed
    (`gate_features`: how the probe's samples agree, per decoder, and the predicted gap)
    and two logistic models (`fit_logistic`, on the fitting data's queries, each under
    ``orders`` random orders of its samples) estimate P(the probe's answer is correct) and the
    strong decoder's success λ_s(x). A query escalates (one sample of the strong decoder, whose
    answer is returned) when λ_s - P(probe correct) is among the largest: the knob is the share
    of fitting queries that escalate, the threshold their gain's quantile (ties at random), so
    spend is non-decreasing in it.

    ``probe``: (decoder, k) pairs, one round each, default one sample of each of the two best
    decoders by one-sample success below ``strong`` (default: the costliest decoder). ``l2``:
    the models' L2 penalty per fitting query. ``use_predictions``: whether the gate reads the
    predictions; None: whichever allocates better over two folds of the fitting queries
    (`_held_out_success`; weak predictors only add noise: on CRUXEval's char-n-gram ones they
    cost success)."""

    probe: tuple[tuple[int, int], ...] | None = None
    strong: int | None = None
    orders: int = 8
    l2: float = 1.0
    use_predictions: bool | None = None
    seed: int = 0
    name: str = "probe-escalate"
    knobs: tuple[float, float] = (0.0, 1.0)
    discrete: bool = False

    def fit(self, data: MenuData, observe: str) -> ProbeEscalate:
        _check_fit(data, observe)
        m = len(data.pools)
        if m < 2:
            raise ConfigError("probe-escalate needs a menu of at least 2 decoders", param="menu")
        strong = int(np.argmax(_mean_costs(data))) if self.strong is None else self.strong
        rates = np.array([p.success_rate().mean() for p in data.pools])
        others = [int(d) for d in np.argsort(-rates, kind="stable") if d != strong]
        probe = self.probe or tuple((d, 1) for d in others[:2])
        decoders = [d for d, _ in probe]
        if not 0 <= strong < m or any(not 0 <= d < m or d == strong for d in decoders):
            raise ConfigError(
                f"strong and the probe's decoders must index the menu's {m} decoders, the probe "
                f"without the strong one; got strong {strong}, probe {probe}",
                param="probe",
            )
        if len(set(decoders)) < len(decoders) or any(k < 1 for _, k in probe):
            raise ConfigError(
                f"the probe's decoders must differ, each k >= 1; got {probe}", param="probe"
            )
        rng = np.random.default_rng(self.seed)
        rows, kept, lam, query = [], [], [], []
        for i in range(len(data.pools[0])):
            for _ in range(self.orders):
                seen, reward = [], []
                for d, k in probe:
                    pool = data.pools[d]
                    answers = pool.extras[i].get("answers") or [None] * len(pool.rewards[i])
                    for j in rng.permutation(len(pool.rewards[i]))[:k]:
                        r = float(pool.rewards[i][j])
                        seen.append(Seen(d, answers[j], r if observe == "verifier" else None, 0.0))
                        reward.append(r)
                x = gate_features(seen, data.predictions[i], decoders, strong, observe)
                rows.append(x)
                kept.append(reward[vote(seen, observe)])
                lam.append(float(np.mean(data.pools[strong].rewards[i])))
                query.append(i)
        x = np.array(rows)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0
        z, y_kept, y_lam = (x - mean) / scale, np.array(kept), np.array(lam)
        l2 = self.l2 * self.orders  # per query: its orders are one query's evidence
        everything = np.ones(x.shape[1], dtype=bool)
        without = everything.copy()
        without[2 + len(probe)] = False  # the predicted gap
        options = {True: everything, False: without}
        if self.use_predictions is None:
            folds = np.array(query) % 2
            got = {k: _held_out_success(z, y_kept, y_lam, folds, l2, c) for k, c in options.items()}
            self.use_predictions_ = got[True] > got[False]
        else:
            self.use_predictions_ = self.use_predictions
        cols = options[self.use_predictions_]
        self.gate_ = Gate(mean, scale, *_gate_weights(z, y_kept, y_lam, l2, cols))
        self.scores_ = np.sort([self.gate_.gain(r) for r in rows])[::-1]
        self.probe_, self.strong_, self.observe_ = tuple(probe), strong, observe
        return self

    def at(self, knob: float) -> ProbeEscalatePolicy:
        if not hasattr(self, "gate_"):
            raise _not_fitted(self)
        threshold, p_tie = share_threshold(self.scores_, knob)
        return ProbeEscalatePolicy(
            self.probe_,
            self.strong_,
            self.gate_,
            threshold,
            p_tie,
            self.observe_,
            np.random.default_rng(self.seed),
        )


# ---------------------------------------------------------------------------- escalation


class EscalatePolicy:
    """``k`` samples of decoder 0 in one round; while the last round's samples do not all state
    one answer (with a verifier observed: none has reward 1), one sample of the next decoder, in
    menu order. Returns the majority answer of the last decoder drawn (the best reward when
    rewards are observed). Under majority vote a round of one sample always agrees with itself,
    so the policy goes at most one decoder up; under a verifier it goes on while samples fail."""

    def __init__(self, k: int) -> None:
        self.k = k

    def decide(self, state: QueryState) -> Draw | None:
        if not state.seen:
            return Draw(0, min(self.k, state.room[0])) if state.room[0] >= 1 else None
        last = state.seen[-1].decoder
        round_ = [s for s in state.seen if s.decoder == last]
        if round_[0].reward is not None:
            settled = max(s.reward or 0.0 for s in round_) >= 1.0
        else:
            settled = round_[0].answer is not None and len({s.answer for s in round_}) == 1
        nxt = last + 1
        if settled or nxt >= len(state.room) or state.room[nxt] < 1:
            return None
        return Draw(nxt, 1)

    def choose(self, state: QueryState) -> int:
        if state.seen[0].reward is not None:
            return best_reward_choice(state.seen)
        last = state.seen[-1].decoder
        return majority_choice(
            state.seen, [i for i, s in enumerate(state.seen) if s.decoder == last]
        )


class Escalate:
    """The family of `EscalatePolicy` over its first round's size: knob k in [1, ``max_k``]
    (fitted: at most every query's pooled samples of decoder 0). Under majority vote spend is
    non-decreasing in k: more samples, and more chances that they disagree and escalate. Under a
    verifier it need not be (more first-round samples find a success more often and escalate
    less), so `menu.calibrate` and the server's pacer, which assume it, may miss the budget's
    best knob there."""

    name = "escalate"
    discrete = True

    def __init__(self, max_k: int = 8) -> None:
        self.max_k = max_k
        self.knobs = (1.0, float(max_k))

    def fit(self, data: MenuData, observe: str) -> Escalate:
        fewest = min(len(r) for r in data.pools[0].rewards)
        self.knobs = (1.0, float(max(1, min(self.max_k, fewest))))
        return self

    def at(self, knob: float) -> EscalatePolicy:
        return EscalatePolicy(max(1, int(knob)))


FAMILIES: dict[str, Callable[[], PolicyFamily]] = {
    "esc": ESC,
    "adaptive-consistency": AdaptiveConsistency,
    "cascade": Cascade,
    "escalate": Escalate,
    "routellm": RouteLLM,
    "best-single": BestSingle,
    "probe-escalate": ProbeEscalate,
    "sequential-menu": SequentialMenu,
    "sequential-menu-flat": lambda: SequentialMenu(flat=True, name="sequential-menu-flat"),
}

__all__ = [
    "ESC",
    "FAMILIES",
    "AdaptiveConsistency",
    "BestSingle",
    "Cascade",
    "Escalate",
    "EscalatePolicy",
    "ProbeEscalate",
    "RouteLLM",
    "SequentialMenu",
    "beta_confidence",
    "fit_latent",
    "lookahead_values",
    "menu_joint",
    "menu_lookahead",
    "prediction_logits",
]
