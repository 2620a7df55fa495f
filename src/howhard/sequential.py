"""Sequential (posterior) allocation: draw in rounds, learn from what the reranker observes.

The paper's allocators fix each query's b before any sample is drawn. Here every query starts from
the predictor's prior, each drawn sample updates it with what is observable at inference time, and
the next sample goes to the query whose posterior expected gain from it is largest; a query stops
when its gain no longer exceeds the budget's price (the Lagrange multiplier of Σ b_i = B·n).

Two observation models (``observe``):

- ``verifier``: every drawn sample's reward is observed (given unit tests, an exact checker), and
  the best drawn answer is returned: the oracle reranker of `howhard.pool.Pool.q`. Rewards are in
  [0, 1]. Model: a reward is positive with probability π_i, π_i ~ Beta(κ p_i, κ (1 - p_i)); a
  positive reward is drawn from G, the positive rewards seen on held-out data (G = {1} for binary
  rewards). The prior mean is p_i = μ̂_i / mean(G), μ̂_i the predicted mean reward (λ̂_i for binary
  rewards, the predicted Δ̂(x, 1) otherwise). After s draws with z zeros and best reward M so far,
  the gain of one more draw is the expected improvement of the running maximum,

      g = P(next > 0 | data) · E_G[(R - M)^+],   P(next > 0 | data) = (κ p + s - z) / (κ + s).

  For binary rewards: g = κ λ̂ / (κ + s) while no success has been found, 0 after one.
- ``majority``: only the extracted answers are observed; the majority answer (ties uniform) is
  returned and scored like `howhard.rerank.majority_best_of`. Binary rewards only. Model: a sample
  is correct with probability λ ~ Beta(κ λ̂, κ (1 - λ̂)); a wrong answer joins the wrong answers
  seen so far as a Chinese restaurant process with concentration θ (θ → 0: all wrong answers
  agree; θ → ∞: none do); a sample stating no answer (None) is wrong and does not vote. With
  counts n_a per answer, s draws and S answered ones, the posterior that answer a is the correct
  one, against H_0 (the correct answer not seen yet), is

      P(H_a) ∝ BB(n_a) · Γ(θ + S) / (θ Γ(n_a) Γ(θ + S - n_a)),   P(H_0) ∝ BB(0),
      BB(k) = B(α + k, β + s - k) / B(α, β).

  Under H_a the next draw is correct with probability p_c = (α + n_a) / (α + β + s) and joins the
  largest wrong answer (count m) with p_k = (1 - p_c) · m / (θ + S - n_a) (or (1 - p_c) / (1 + θ)
  when no wrong answer was seen). The value of drawing j more is approximated by the race between
  the correct answer and that one competitor with these rates held fixed: W(j) = Σ_h P(h) ·
  P(correct count > competitor count after j; ties count ½). One draw can only move the majority
  when the lead is 1 or 0 (otherwise E[W(1)] = W(0), the posterior being a martingale), so the
  gain looks ahead: g = max_{1 <= j <= J} (W(j) - W(0)) / j, the best gain per draw over the next
  J draws (like the concave envelope the batch greedy uses). Hypotheses beyond the ``top``
  largest answers are lumped into one, valued at the largest of their counts.

The strengths are fitted on held-out pools: κ by maximum marginal likelihood of the beta-binomial
(`fit_strength`), θ by maximum likelihood of the wrong answers' partition (`fit_concentration`).

Allocation from gain paths: fix the order in which each query's samples arrive; g_i(s) is query
i's gain after s draws. Handing each next sample to the largest current gain (ties: lower query)
takes the samples in non-increasing order of the running minimum min_{t <= s} g_i(t) (a sample
behind a smaller gain is reached only after it), so the batch allocation of T = ⌊B·n⌋ samples is
`howhard.allocate.greedy` on the running minima, and the stream rule "draw while g > price" is a
threshold on them, calibrated on held-out paths with `howhard.allocate.ThresholdPolicy`. A gain
<= 0 is never bought: the batch stops early when no query gains (spend below B).

Replay evaluation draws nothing new: each query's pooled samples are replayed in R random orders
(without replacement, so b <= the pool size); the b-th draw is the b-th sample of the order.
Success is averaged over the orders, with its standard error over them. A non-sequential
allocation scored this way averages to exactly q̂(x, b), so all methods see the same samples.
`cross_fit` replays a pool with 2-fold cross-fitting (each half's prior and price come from the
other half), as `howhard.compare` evaluates the method; `SequentialPolicy` is the stream mode for
queries that arrive one at a time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np
import numpy.typing as npt
from scipy.special import betaln, gammaln

from howhard import allocate
from howhard.crossfit import two_folds
from howhard.errors import BudgetError, ConfigError, NotFittedError, PoolError
from howhard.pool import Pool, check_samples

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

OBSERVE = ("verifier", "majority")
EPS = 1e-6
STRENGTH_BOUNDS = (1e-2, 1e4)
THETA_BOUNDS = (1e-3, 1e4)


# ---------------------------------------------------------------------------- priors


def _check_mean(mean: npt.ArrayLike, n: int | None = None) -> FloatArray:
    x = np.asarray(mean, dtype=float)
    if x.ndim != 1 or (n is not None and x.size != n):
        want = "one per query" if n is None else f"one per query of the pool ({n})"
        raise ConfigError(
            f"mean must be a 1-D array of predicted mean rewards, {want}; got {x.shape}"
        )
    if not np.all((x >= 0) & (x <= 1)):
        i = int(np.flatnonzero(~((x >= 0) & (x <= 1)))[0])
        raise ConfigError(
            f"mean has {x[i]!r} at query {i}; pass predicted mean rewards in [0, 1] "
            "(e.g. predictor.predict_gains(X, 1)[:, 0])"
        )
    return x


def _log_max(objective: object, bounds: tuple[float, float]) -> float:
    """argmax over x in bounds of ``objective(x)``, searched on log x."""
    from scipy.optimize import minimize_scalar  # here: it takes most of `import howhard`

    res = minimize_scalar(
        lambda t: -objective(math.exp(t)),  # type: ignore[operator]
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(res.x))


def fit_strength(mean: npt.ArrayLike, positives: npt.ArrayLike, trials: npt.ArrayLike) -> float:
    """κ = α + β of the Beta(κ p_i, κ (1 - p_i)) priors, by maximum marginal likelihood.

    Query i had ``positives[i]`` positive rewards in ``trials[i]`` draws and prior mean p_i =
    ``mean[i]`` (clipped to [1e-6, 1 - 1e-6]). Maximises the beta-binomial log-likelihood

        ℓ(κ) = Σ_i log B(κ p_i + c_i, κ (1 - p_i) + n_i - c_i) - log B(κ p_i, κ (1 - p_i))

    over κ in [1e-2, 1e4] (searched on log κ). A large κ trusts the predictor (the counts look
    binomial around p_i); a small one says the predictions are far off for single queries.
    """
    p = np.clip(_check_mean(mean), EPS, 1 - EPS)
    c = np.asarray(positives, dtype=float)
    n = np.asarray(trials, dtype=float)
    if c.shape != p.shape or n.shape != p.shape or np.any(c < 0) or np.any(c > n):
        raise ConfigError(
            "positives and trials must have one count per query with 0 <= positives <= trials"
        )

    def loglik(k: float) -> float:
        return float(np.sum(betaln(k * p + c, k * (1 - p) + n - c) - betaln(k * p, k * (1 - p))))

    return _log_max(loglik, STRENGTH_BOUNDS)


def fit_concentration(wrong_counts: Sequence[Sequence[int]]) -> float:
    """θ of the Chinese restaurant process of wrong answers, by maximum likelihood.

    ``wrong_counts[i]`` are the sizes m_1..m_K of query i's groups of equal wrong answers. The
    partition's probability (the exchangeable partition probability function) is

        EPPF(m) = θ^K Γ(θ) Π_j Γ(m_j) / Γ(θ + M),   M = Σ_j m_j,

    maximised over θ in [1e-3, 1e4]. Queries with fewer than 2 wrong answers say nothing about
    θ; when no query has 2, θ = 1.
    """
    groups = [np.asarray(m, dtype=float) for m in wrong_counts]
    groups = [m[m > 0] for m in groups]
    groups = [m for m in groups if m.sum() >= 2]
    if not groups:
        return 1.0
    k = np.array([m.size for m in groups], dtype=float)
    total = np.array([m.sum() for m in groups])

    def loglik(theta: float) -> float:
        return float(np.sum(k * math.log(theta) + gammaln(theta) - gammaln(theta + total)))

    return _log_max(loglik, THETA_BOUNDS)


@dataclass(frozen=True)
class Prior:
    """What the posterior models learn from held-out data (see the module doc)."""

    observe: str
    strength: float  # κ = α + β
    positive: tuple[float, ...] = (1.0,)  # G: held-out positive rewards (verifier)
    theta: float = 1.0  # concentration of wrong answers (majority)

    def alpha_beta(self, mean: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Per query (α, β) = κ (p, 1 - p), p = mean / mean(G) clipped to [1e-6, 1 - 1e-6]."""
        p = np.clip(_check_mean(mean) / float(np.mean(self.positive)), EPS, 1 - EPS)
        return self.strength * p, self.strength * (1 - p)


def _check_observe(observe: str, pool: Pool) -> None:
    if observe not in OBSERVE:
        raise ConfigError(f"observe must be one of {', '.join(OBSERVE)}, got {observe!r}")
    if observe == "majority":
        if not pool.binary:
            raise ConfigError(
                "majority-vote sequential allocation needs binary rewards (a correct answer); "
                "binarize the pool (pool.binarized()) or pass observe='verifier'"
            )
        if not all("answers" in e for e in pool.extras):
            raise PoolError(
                "majority-vote allocation needs each sample's extracted answer, and this pool "
                "has no 'answers'; re-export the store with the current howhard "
                "(howhard export)"
            )


def fit_prior(mean: npt.ArrayLike, pool: Pool, observe: str = "verifier") -> Prior:
    """Fit the prior's strengths on a held-out pool and the predictions ``mean`` for its queries."""
    _check_observe(observe, pool)
    m = _check_mean(mean, len(pool))
    trials = pool.n_samples.astype(float)
    positives = np.array([float(np.sum(r > 0)) for r in pool.rewards])
    if observe == "majority":
        wrong = []
        for r, e in zip(pool.rewards, pool.extras, strict=True):
            answers = [a for a, x in zip(e["answers"], r, strict=True) if x < 1 and a is not None]
            wrong.append(list(np.unique(answers, return_counts=True)[1]) if answers else [])
        return Prior(observe, fit_strength(m, positives, trials), theta=fit_concentration(wrong))
    seen = np.concatenate([r[r > 0] for r in pool.rewards])
    positive = tuple(float(x) for x in np.sort(seen)) if seen.size else (1.0,)
    p = np.clip(m / float(np.mean(positive)), 0.0, 1.0)
    return Prior(observe, fit_strength(p, positives, trials), positive=positive)


# ---------------------------------------------------------------------------- gains


def verifier_gain(
    alpha: FloatArray,
    beta: FloatArray,
    drawn: npt.ArrayLike,
    zeros: npt.ArrayLike,
    best: npt.ArrayLike,
    positive: Sequence[float] = (1.0,),
) -> FloatArray:
    """g = (α + s - z) / (α + β + s) · E_G[(R - M)^+] (see the module doc), elementwise.

    ``drawn`` = s, ``zeros`` = z (draws with reward 0), ``best`` = M (the best reward so far, 0
    before any draw), ``positive`` = G.
    """
    s, z, best_ = (np.asarray(x, dtype=float) for x in (drawn, zeros, best))
    g = np.sort(np.asarray(positive, dtype=float))
    above = np.concatenate([np.cumsum(g[::-1])[::-1], [0.0]])  # Σ_{k >= j} g_k
    j = np.searchsorted(g, best_, side="right")  # first g > M
    improvement = (above[j] - best_ * (g.size - j)) / g.size
    return np.asarray((alpha + s - z) / (alpha + beta + s) * improvement, dtype=float)


def _race(
    p_c: FloatArray, p_k: FloatArray, lead: IntArray, both_unseen: npt.NDArray[np.bool_], j_max: int
) -> FloatArray:
    """P(correct beats the competitor after j more draws), j = 0..j_max; shape (..., j_max + 1).

    Each draw moves the lead (correct count - competitor count) by +1 with p_c, -1 with p_k, else
    0; a final lead > 0 wins, 0 wins half (the tie is broken uniformly), except when neither
    answer was ever drawn (``both_unseen`` and no move yet), which returns a wrong answer.
    """
    shape = lead.shape
    p_0, p_c, p_k = (1.0 - p_c - p_k)[..., None], p_c[..., None], p_k[..., None]
    dist = np.ones((*shape, 1))  # over lead changes -j..j after j draws
    out = np.empty((*shape, j_max + 1))
    for j in range(j_max + 1):
        if j:
            new = np.zeros((*shape, 2 * j + 1))
            new[..., 1:-1] = dist * p_0
            new[..., 2:] += dist * p_c
            new[..., :-2] += dist * p_k
            dist = new
        final = lead[..., None] + np.arange(-j, j + 1)
        value = (final > 0) + 0.5 * (final == 0)
        out[..., j] = (
            np.einsum("...w,...w->...", dist, value) - 0.5 * both_unseen * p_0[..., 0] ** j
        )
    return out


def majority_log_odds(
    alpha: FloatArray, beta: FloatArray, theta: float, counts: npt.ArrayLike, n_none: npt.ArrayLike
) -> FloatArray:
    """log P(H_a | data) - log P(H_0 | data) for each column a of ``counts`` (k, D) (-inf where
    the count is 0): answer a is the correct one, against H_0, the correct answer not drawn yet
    (module doc). ``n_none``: each query's draws stating no answer."""
    c = np.asarray(counts, dtype=float)
    answered = c.sum(axis=1)
    s = answered + np.asarray(n_none, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_w = (
            betaln(alpha[:, None] + c, beta[:, None] + s[:, None] - c)
            - betaln(alpha, beta + s)[:, None]
            + gammaln(theta + answered)[:, None]
            - math.log(theta)
            - gammaln(np.maximum(c, 1))
            - gammaln(theta + answered[:, None] - c)
        )
    log_w[c == 0] = -np.inf
    return np.asarray(log_w, dtype=float)


def majority_posterior(
    alpha: FloatArray, beta: FloatArray, theta: float, counts: npt.ArrayLike, n_none: npt.ArrayLike
) -> FloatArray:
    """(P(H_0 | data), P(H_1 | data), ..., P(H_D | data)) per query, shape (k, 1 + D)."""
    log_w = majority_log_odds(alpha, beta, theta, counts, n_none)
    full = np.concatenate([np.zeros((log_w.shape[0], 1)), log_w], axis=1)
    full = np.exp(full - full.max(axis=1, keepdims=True))
    return np.asarray(full / full.sum(axis=1, keepdims=True), dtype=float)


def majority_gain(
    alpha: FloatArray,
    beta: FloatArray,
    theta: float,
    counts: npt.ArrayLike,
    n_none: npt.ArrayLike,
    room: npt.ArrayLike,
    lookahead: int = 6,
    top: int = 4,
) -> FloatArray:
    """g = max_{1 <= j <= min(J, room)} (W(j) - W(0)) / j for each query (see the module doc).

    ``counts`` (k, D): each query's draws per distinct answer (any order, zeros for padding);
    ``n_none``: its draws stating no answer; ``room``: draws it may still take (the cap minus
    draws so far); ``lookahead`` = J. Queries with no room get -inf.
    """
    c = -np.sort(-np.asarray(counts, dtype=float), axis=1)  # descending
    c = c[:, : max(1, int((c > 0).sum(axis=1).max(initial=0)))]  # drop all-zero columns
    k, d = c.shape
    room_ = np.broadcast_to(np.asarray(room), (k,))
    answered = c.sum(axis=1)
    s = answered + np.asarray(n_none, dtype=float)
    log_w = majority_log_odds(alpha, beta, theta, c, n_none)
    kept = min(top, d)
    rest = d - kept
    # hypotheses: H_0, the `kept` largest answers, and the rest lumped
    n_h = 1 + kept + (1 if rest else 0)
    log_post = np.full((k, n_h), -np.inf)
    log_post[:, 0] = 0.0
    log_post[:, 1 : 1 + kept] = log_w[:, :kept]
    correct = np.zeros((k, n_h))
    correct[:, 1 : 1 + kept] = c[:, :kept]
    if rest:
        with np.errstate(divide="ignore"):
            peak = np.max(log_w[:, kept:], axis=1)
            safe = np.where(np.isfinite(peak), peak, 0.0)
            log_post[:, -1] = safe + np.log(np.exp(log_w[:, kept:] - safe[:, None]).sum(axis=1))
        correct[:, -1] = c[:, kept]
    log_post -= np.max(log_post, axis=1, keepdims=True)
    post = np.exp(log_post)
    post /= post.sum(axis=1, keepdims=True)
    # the competitor of H_h: the largest other answer
    first = c[:, :1] if d else np.zeros((k, 1))
    second = c[:, 1:2] if d > 1 else np.zeros((k, 1))
    rival = np.where(correct == first, second, first)
    rival[:, 0] = first[:, 0]
    if rest:
        rival[:, -1] = first[:, 0]
    p_c = (alpha[:, None] + correct) / (alpha + beta + s)[:, None]
    wrong = answered[:, None] - correct
    share = np.where(rival > 0, rival / (theta + wrong), 1.0 / (1.0 + theta))
    p_k = (1.0 - p_c) * share
    both_unseen = (correct == 0) & (rival == 0)
    wins = _race(p_c, p_k, (correct - rival).astype(np.int64), both_unseen, lookahead)
    value = np.einsum("kh,khj->kj", post, wins)
    per_draw = (value[:, 1:] - value[:, :1]) / np.arange(1, lookahead + 1)
    per_draw[np.arange(1, lookahead + 1)[None, :] > room_[:, None]] = -np.inf
    return np.asarray(per_draw.max(axis=1), dtype=float)


# ---------------------------------------------------------------------------- replays


def replay_orders(
    n_samples: npt.ArrayLike, length: int, n_replays: int, rng: np.random.Generator
) -> IntArray:
    """R random orders of each query's pooled samples, first ``length`` of each; (R, n, length).

    Query i's order is a uniform permutation of its n_i samples (drawn without replacement)."""
    n = np.asarray(n_samples, dtype=np.int64)
    if n_replays < 1:
        raise ConfigError(f"n_replays must be >= 1, got {n_replays}; pass e.g. 100")
    if length > int(n.min(initial=length)):
        raise BudgetError(f"replays of {length} draws need >= {length} pooled samples per query")
    keys = rng.random((n_replays, n.size, int(n.max(initial=0))))
    keys[:, np.arange(int(n.max(initial=0)))[None, :] >= n[:, None]] = np.inf
    return np.asarray(np.argsort(keys, axis=2)[:, :, :length], dtype=np.int64)


def _padded(rows: Sequence[npt.ArrayLike], fill: float) -> FloatArray:
    width = max(len(r) for r in rows)  # type: ignore[arg-type]
    out = np.full((len(rows), width), fill)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r  # type: ignore[arg-type]
    return out


@dataclass(frozen=True)
class Paths:
    """Per replay r, query i and draw count s: ``gains[r, i, s]``, the gain of draw s + 1 after
    s draws (s < cap), and ``returned[r, i, s]``, the reward of the answer returned after s draws
    (s <= cap)."""

    gains: FloatArray
    returned: FloatArray


def paths(
    prior: Prior, mean: npt.ArrayLike, pool: Pool, orders: IntArray, lookahead: int = 6
) -> Paths:
    """Gain and returned-reward paths of ``pool``'s queries when their samples arrive in
    ``orders`` (R, n, cap) (see `replay_orders`), under ``prior``."""
    _check_observe(prior.observe, pool)
    alpha, beta = prior.alpha_beta(_check_mean(mean, len(pool)))
    r_count, n, cap = orders.shape
    rows = np.arange(n)[None, :, None]
    rewards = _padded(pool.rewards, 0.0)[rows, orders]  # (R, n, cap)
    if prior.observe == "verifier":
        best = np.concatenate([np.zeros((r_count, n, 1)), np.maximum.accumulate(rewards, 2)], 2)
        drawn = np.arange(cap)
        zeros = np.concatenate([np.zeros((r_count, n, 1)), np.cumsum(rewards == 0, 2)], 2)
        gains = verifier_gain(
            alpha[None, :, None],
            beta[None, :, None],
            drawn,
            zeros[:, :, :cap],
            best[:, :, :cap],
            prior.positive,
        )
        return Paths(gains, best)
    codes, code_reward = _answer_codes(pool)
    none = code_reward.shape[1] - 1
    code = codes[rows, orders]  # (R, n, cap)
    counts = np.zeros((r_count * n, none + 1))
    flat = code.reshape(r_count * n, cap)
    reward_of = np.tile(code_reward, (r_count, 1))  # row r·n + i is query i
    gains = np.empty((r_count * n, cap))
    returned = np.empty((r_count * n, cap + 1))
    at = np.arange(r_count * n)
    query = np.tile(np.arange(n), r_count)
    for step in range(cap + 1):
        returned[:, step] = majority_returned(counts, reward_of)
        if step == cap:
            break
        # Replays of one query often reach the same counts: compute each distinct state once.
        ranked = -np.sort(-counts[:, :none], axis=1)
        first, back = _distinct_rows([query, counts[:, none].astype(np.int64)], ranked, cap + 1)
        q = query[first]
        gains[:, step] = majority_gain(
            alpha[q],
            beta[q],
            prior.theta,
            ranked[first],
            counts[first, none],
            cap - step,
            lookahead,
        )[back]
        counts[at, flat[:, step]] += 1
    return Paths(gains.reshape(r_count, n, cap), returned.reshape(r_count, n, cap + 1))


def _distinct_rows(
    keys: Sequence[IntArray], digits: FloatArray, base: int
) -> tuple[IntArray, IntArray]:
    """Group the rows of (``keys`` as columns, then the integer ``digits`` in [0, base)): the
    first row of each distinct group and each row's group. The digits are packed exactly into
    int64 keys (base-``base`` numbers of as many digits as fit in 62 bits) and lexsorted."""
    per_key = max(1, int(62 // math.log2(base)))
    cols = list(keys)
    d = digits.astype(np.int64)
    for start in range(0, d.shape[1], per_key):
        chunk = d[:, start : start + per_key]
        cols.append(chunk @ (base ** np.arange(chunk.shape[1], dtype=np.int64)))
    order = np.lexsort(cols[::-1])
    ordered = np.stack(cols, axis=1)[order]
    new = np.r_[True, np.any(ordered[1:] != ordered[:-1], axis=1)]
    back = np.empty(order.size, dtype=np.int64)
    back[order] = np.cumsum(new) - 1
    return order[new], back


def _answer_codes(pool: Pool) -> tuple[FloatArray, FloatArray]:
    """Per query, each sample's answer code (0..D_i - 1; None gets the last code, D) and the mean
    pooled reward of each code's samples (D = the most distinct answers of any query)."""
    raw: list[IntArray] = []
    for e in pool.extras:
        index: dict[str, int] = {}
        code = [-1 if a is None else index.setdefault(str(a), len(index)) for a in e["answers"]]
        raw.append(np.array(code, dtype=np.int64))
    width = max(int(c.max(initial=-1)) + 1 for c in raw)
    codes = [np.where(c < 0, width, c) for c in raw]  # None -> the last code
    reward = np.zeros((len(pool), width + 1))
    for i, (c, r) in enumerate(zip(codes, pool.rewards, strict=True)):
        held = np.bincount(c, minlength=width + 1)
        reward[i] = np.bincount(c, r, width + 1) / np.maximum(held, 1)
    return _padded(codes, width).astype(np.int64), reward


def majority_returned(counts: FloatArray, reward_of: FloatArray) -> FloatArray:
    """Expected reward of the majority answer's sample: the mean over the answers tied at the top
    count of each one's mean reward; with no answer drawn, the mean reward of the None samples (a
    uniformly random sample), 0 with no draws. The last column of both arrays is None."""
    answered = counts[:, :-1]
    top = answered.max(axis=1, initial=0)
    tied = (answered == top[:, None]) & (top[:, None] > 0)
    voted = (tied * reward_of[:, :-1]).sum(axis=1) / np.maximum(tied.sum(axis=1), 1)
    return np.where(top > 0, voted, np.where(counts[:, -1] > 0, reward_of[:, -1], 0.0))


# ---------------------------------------------------------------------------- allocation


def running_min(gains: FloatArray, min_per_query: int = 0) -> FloatArray:
    """min_{m <= t <= s} g(t) along the last axis from column m on (the columns before m are the
    unconditional draws and are left as they are)."""
    out = np.array(gains, dtype=float)
    out[..., min_per_query:] = np.minimum.accumulate(out[..., min_per_query:], axis=-1)
    return out


def _positive_room(floor: FloatArray, min_per_query: int) -> IntArray:
    return np.asarray(min_per_query + (floor[..., min_per_query:] > 0).sum(axis=-1), dtype=np.int64)


def batch_counts(gains: FloatArray, budget: float, min_per_query: int = 0) -> IntArray:
    """Draws per replay and query, (R, n), when ⌊B·n⌋ draws go one at a time to the largest current
    gain (after min_per_query unconditional draws each), never to a gain <= 0.

    Exactly `howhard.allocate.greedy` on each replay's running minima (module doc); the count is
    then clipped to the draws whose running minimum is positive."""
    floor = running_min(gains, min_per_query)
    out = np.stack([allocate.greedy(f, budget, min_per_query) for f in floor])
    return np.minimum(out, _positive_room(floor, min_per_query))


def stream_policy(
    gains: FloatArray, budget: float, min_per_query: int = 0
) -> allocate.ThresholdPolicy:
    """The price for queries that arrive one at a time: a ThresholdPolicy fitted on held-out gain
    paths (R, n, cap) so that their mean draws per query over the replays is ``budget``."""
    floor = running_min(gains, min_per_query)
    cap = floor.shape[-1]
    policy = allocate.ThresholdPolicy(budget, cap, min_per_query)
    return policy.fit(floor.reshape(-1, cap))


def stream_counts(
    gains: FloatArray, policy: allocate.ThresholdPolicy, min_per_query: int = 0
) -> IntArray:
    """Draws per replay and query, (R, n), when each query draws while its gain exceeds the price
    ``policy.threshold_`` (ties drawn with ``policy.p_tie_``), never a gain <= 0."""
    floor = running_min(gains, min_per_query)
    r_count, n, cap = floor.shape
    out = policy.allocate(floor.reshape(-1, cap)).reshape(r_count, n)
    return np.minimum(out, _positive_room(floor, min_per_query))


@dataclass(frozen=True)
class ReplayScore:
    """Mean over replays of the per-replay mean returned reward and draws per query, with the
    standard error over replays; the largest draw count of any query in any replay."""

    success: float
    success_se: float
    spend: float
    spend_se: float
    max_draws: int


def score(returned: FloatArray, counts: IntArray) -> ReplayScore:
    """Score draw counts (R, n) against returned-reward paths (R, n, cap + 1)."""
    if counts.max(initial=0) >= returned.shape[-1]:
        raise BudgetError(
            f"draw counts reach {counts.max()} but the paths hold {returned.shape[-1] - 1}"
        )
    got = np.take_along_axis(returned, counts[..., None], axis=-1)[..., 0].mean(axis=1)
    spent = counts.mean(axis=1)
    r_count = max(got.size, 1)

    def se(x: FloatArray) -> float:
        return float(x.std(ddof=1) / math.sqrt(r_count)) if x.size > 1 else 0.0

    return ReplayScore(
        float(got.mean()), se(got), float(spent.mean()), se(spent), int(counts.max())
    )


# ---------------------------------------------------------------------------- cross-fitting


@dataclass(frozen=True)
class CrossFit:
    """Replays of a pool for evaluation with 2-fold cross-fitting: the queries of fold f (``folds
    == f``) are replayed under ``priors[f]``, fitted on the other fold, whose own replays under
    that prior (``heldout_gains[f]``, empty without the stream mode) calibrate fold f's price."""

    paths: Paths
    folds: IntArray
    priors: tuple[Prior, Prior]
    heldout_gains: tuple[FloatArray, ...]
    min_per_query: int = 0


def cross_fit(
    pool: Pool,
    mean: npt.ArrayLike,
    max_per_query: int,
    observe: str = "verifier",
    n_replays: int = 100,
    seed: int = 0,
    lookahead: int = 6,
    flat: bool = False,
    min_per_query: int = 0,
    with_stream: bool = True,
) -> CrossFit:
    """Replay ``pool`` ``n_replays`` times for the sequential method, each half under a prior
    fitted on the other half (``mean``: predicted mean rewards). ``flat`` replaces every
    prediction by the calibration half's mean reward (no predictor). ``with_stream`` also replays
    each calibration half for the stream price (`stream`), which doubles the work. The folds are
    `howhard.crossfit.two_folds` of ``default_rng(seed)``, as every evaluation cross-fits."""
    check_samples(pool, max_per_query)
    n, cap = len(pool), max_per_query
    m = _check_mean(mean, n)
    if n < 2:
        raise PoolError("cross-fitting needs at least 2 queries")
    rng = np.random.default_rng(seed)
    folds = two_folds(n, rng)
    orders = replay_orders(pool.n_samples, cap, n_replays, rng)
    gains = np.empty((n_replays, n, cap))
    returned = np.empty((n_replays, n, cap + 1))
    priors, heldout = [], []
    for f in (0, 1):
        cal, app = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        cal_pool = pool.select([pool.ids[i] for i in cal])
        app_pool = pool.select([pool.ids[i] for i in app])
        m_cal, m_app = m[cal], m[app]
        if flat:
            level = float(cal_pool.success_rate().mean())
            m_cal, m_app = np.full(cal.size, level), np.full(app.size, level)
        prior = fit_prior(m_cal, cal_pool, observe)
        p = paths(prior, m_app, app_pool, orders[:, app], lookahead)
        gains[:, app], returned[:, app] = p.gains, p.returned
        if with_stream:
            cal_orders = replay_orders(cal_pool.n_samples, cap, n_replays, rng)
            heldout.append(paths(prior, m_cal, cal_pool, cal_orders, lookahead).gains)
        priors.append(prior)
    return CrossFit(
        Paths(gains, returned), folds, (priors[0], priors[1]), tuple(heldout), min_per_query
    )


def batch(fit: CrossFit, budget: float) -> IntArray:
    """Draws per replay and query (R, n) of the batch method at ``budget`` (`batch_counts`)."""
    return batch_counts(fit.paths.gains, budget, fit.min_per_query)


def stream(fit: CrossFit, budget: float) -> IntArray:
    """Draws per replay and query (R, n) when each fold draws at the price calibrated for
    ``budget`` on the other fold (`stream_policy`, `stream_counts`)."""
    if not fit.heldout_gains:
        raise ConfigError("this replay has no stream calibration; run cross_fit(with_stream=True)")
    out = np.empty(fit.paths.gains.shape[:2], dtype=np.int64)
    for f in (0, 1):
        app = fit.folds == f
        policy = stream_policy(fit.heldout_gains[f], budget, fit.min_per_query)
        out[:, app] = stream_counts(fit.paths.gains[:, app], policy, fit.min_per_query)
    return out


# ---------------------------------------------------------------------------- the policy


class SequentialPolicy:
    """Stream mode for one query at a time: draw while the posterior gain exceeds a price.

    ``fit(mean_heldout, pool_heldout)`` fits the prior's strengths on a held-out pool with the
    predictor's mean rewards for its queries (``prior_``), replays its samples ``n_replays`` times
    and sets the price so that the mean draws per query there is ``budget`` (``price_``, with
    ties drawn with probability ``p_tie_``). ``gain`` and ``wants_more`` then decide for a new
    query from its prediction and what it has shown so far (rewards for ``observe="verifier"``,
    answers for ``"majority"``); no query draws beyond ``max_per_query``.
    """

    def __init__(
        self,
        budget: float,
        max_per_query: int,
        observe: str = "verifier",
        min_per_query: int = 0,
        lookahead: int = 6,
        n_replays: int = 100,
        random_state: int | None = 0,
    ) -> None:
        self.budget = budget
        self.max_per_query = max_per_query
        self.observe = observe
        self.min_per_query = min_per_query
        self.lookahead = lookahead
        self.n_replays = n_replays
        self.random_state = random_state

    def fit(self, mean_heldout: npt.ArrayLike, pool_heldout: Pool) -> Self:
        """Fit ``prior_`` and calibrate ``price_`` on a held-out pool and its predictions."""
        check_samples(pool_heldout, self.max_per_query)
        self.prior_ = fit_prior(mean_heldout, pool_heldout, self.observe)
        rng = np.random.default_rng(self.random_state)
        orders = replay_orders(pool_heldout.n_samples, self.max_per_query, self.n_replays, rng)
        self.heldout_gains_ = paths(
            self.prior_, mean_heldout, pool_heldout, orders, self.lookahead
        ).gains
        return self.calibrate(self.budget)

    def calibrate(self, budget: float) -> Self:
        """Set the price for another budget on the held-out paths kept by ``fit`` (the prior is
        not refitted)."""
        if not hasattr(self, "heldout_gains_"):
            raise NotFittedError("this SequentialPolicy is not fitted yet; call .fit(mean, pool)")
        self.budget = budget
        self.stream_ = stream_policy(self.heldout_gains_, budget, self.min_per_query)
        self.price_, self.p_tie_ = self.stream_.threshold_, self.stream_.p_tie_
        return self

    def gain(self, mean: float, observed: Sequence[float] | Sequence[str | None]) -> float:
        """The posterior gain of one more draw for a query with predicted mean reward ``mean``
        after the draws ``observed`` (their rewards, or their answers for majority)."""
        if not hasattr(self, "prior_"):
            raise NotFittedError("this SequentialPolicy is not fitted yet; call .fit(mean, pool)")
        alpha, beta = self.prior_.alpha_beta([mean])
        s = len(observed)
        if self.observe == "verifier":
            r = np.asarray(observed, dtype=float)
            best = float(r.max(initial=0.0))
            return float(
                verifier_gain(alpha, beta, s, np.sum(r == 0), best, self.prior_.positive)[0]
            )
        answers = [str(a) for a in observed if a is not None]
        counts = list(Counter(answers).values())
        row = np.zeros((1, max(len(counts), 1)))
        row[0, : len(counts)] = counts
        room = self.max_per_query - s
        if room <= 0:
            return -math.inf
        return float(
            majority_gain(
                alpha, beta, self.prior_.theta, row, [s - len(answers)], [room], self.lookahead
            )[0]
        )

    def wants_more(self, mean: float, observed: Sequence[float] | Sequence[str | None]) -> bool:
        """Whether the query should draw again (the price's ties: with probability p_tie_).
        Ask after every draw and stop at the first False: a query that stopped never resumes."""
        s = len(observed)
        if s >= self.max_per_query:
            return False
        if s < self.min_per_query:
            return True
        g = self.gain(mean, observed)
        if g <= 0 or g < self.price_:
            return False
        return bool(g > self.price_ or self.stream_.rng_.random() < self.p_tie_)
