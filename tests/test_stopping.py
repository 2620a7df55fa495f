"""Stopping rules over a menu: the published baselines on hand-worked cases, the sequential menu
policy's posterior against a naive re-derivation, and every family's knob against its spend."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import integrate
from sklearn.linear_model import LogisticRegression

from howhard.menu import Draw, MenuData, QueryState, Seen, calibrate, random_orders, replay
from howhard.pool import Pool
from howhard.stopping import (
    ESC,
    FAMILIES,
    AdaptiveConsistency,
    BestSingle,
    Cascade,
    Escalate,
    Gate,
    ProbeEscalate,
    ProbeEscalatePolicy,
    RouteLLM,
    SequentialMenu,
    beta_confidence,
    fit_latent,
    fit_logistic,
    gate_features,
    latent_grid,
    lookahead_values,
    menu_joint,
    menu_lookahead,
    prediction_logits,
    wrong_shares,
)


def _pool(answers: list[list[str]], correct: list[str]) -> Pool:
    n = len(answers)
    return Pool(
        tuple(f"q{i}" for i in range(n)),
        tuple(f"prompt {i}" for i in range(n)),
        tuple(
            np.array([float(a == c) for a in row]) for row, c in zip(answers, correct, strict=True)
        ),
        tuple({"answers": row} for row in answers),
    )


def _data(pools: list[Pool], prices: list[float]) -> MenuData:
    costs = [[np.full(len(r), c) for r in p.rewards] for p, c in zip(pools, prices, strict=True)]
    return MenuData(pools, costs, np.full((len(pools[0]), len(pools)), np.nan))


def _synthetic(n: int, seed: int, accuracy: tuple[float, ...] = (0.35, 0.5, 0.8)) -> MenuData:
    """n queries, one decoder per accuracy (prices 1, 3, 20), 6 samples each; a query's ease
    shifts every decoder's accuracy; wrong answers come from a few shared strings."""
    rng = np.random.default_rng(seed)
    ease = rng.normal(size=n)
    pools = []
    for acc in accuracy:
        lam = 1 / (1 + np.exp(-(2 * ease + math.log(acc / (1 - acc)))))
        rows = [
            ["c" if rng.random() < lam[i] else f"w{rng.integers(3)}" for _ in range(6)]
            for i in range(n)
        ]
        pools.append(_pool(rows, ["c"] * n))
    return _data(pools, [1.0, 3.0, 20.0][: len(accuracy)])


def _one(answers: list[str], correct: str = "c") -> MenuData:
    return _data([_pool([answers], [correct])], [1.0])


# ---------------------------------------------------------------------------- baselines


def test_esc_stops_at_the_first_unanimous_window_and_returns_its_answer() -> None:
    data = _one(["a", "b", "a", "c", "c", "c", "a", "a", "a"])
    esc = ESC(window=3).fit(data, "majority")
    got = replay(esc.at(9), data.pools, data.costs)
    assert got.draws[0, 0] == 6 and got.rounds[0] == 2
    assert got.reward[0] == 1.0  # window 2's "c", though "a" leads 4 to 3 overall


def test_esc_returns_the_majority_of_all_when_no_window_agrees() -> None:
    data = _one(["a", "b", "a", "c", "a", "d"])
    got = replay(ESC(window=3).fit(data, "majority").at(6), data.pools, data.costs)
    assert got.draws[0, 0] == 6 and got.reward[0] == 0.0  # "a" (3 votes) is wrong


def test_esc_cap_cuts_the_last_window() -> None:
    data = _one(["a", "b", "c", "d", "e", "f"])
    assert (
        replay(ESC(window=3).fit(data, "majority").at(4), data.pools, data.costs).draws[0, 0] == 4
    )


def test_adaptive_consistency_beta_criterion_matches_its_integral() -> None:
    def integral(v1: float, v2: float) -> float:
        f = lambda x: x**v1 * (1 - x) ** v2  # noqa: E731
        return integrate.quad(f, 0.5, 1)[0] / integrate.quad(f, 0, 1)[0]

    assert beta_confidence(4, 1) == pytest.approx(integral(4, 1), abs=1e-10)
    assert beta_confidence(4, 1) == pytest.approx(57 / 64)  # 1 - I_1/2(5, 2) = 1 - 7/64
    assert beta_confidence(1, 0) == pytest.approx(0.75)
    assert beta_confidence(3, 3) == pytest.approx(0.5)


def test_adaptive_consistency_stops_when_the_confidence_reaches_the_threshold() -> None:
    # unanimous after n samples: P = 1 - 2^-(n+1): 0.75, 0.875, 0.9375, 0.96875
    data = _one(["c"] * 8)
    ac = AdaptiveConsistency().fit(data, "majority")
    assert [replay(ac.at(c), data.pools, data.costs).draws[0, 0] for c in (0.7, 0.9, 0.95)] == [
        1,
        3,
        4,
    ]
    split = _one(["a", "b", "a", "a", "a", "a", "a", "a"])  # (3,1): 0.8125, (4,1): 0.890625
    assert replay(ac.at(0.89), split.pools, split.costs).draws[0, 0] == 5


def test_cascade_escalates_when_the_cheap_samples_disagree() -> None:
    cheap = _pool([["a", "b", "c"], ["c", "c", "c"]], ["c", "c"])
    strong = _pool([["c"], ["c"]], ["c", "c"])
    data = _data([cheap, strong], [1.0, 10.0])
    cascade = Cascade(k=3).fit(data, "majority")
    got = replay(cascade.at(2 / 3), data.pools, data.costs)
    assert got.draws.tolist() == [[3, 1], [3, 0]]
    assert got.cost.tolist() == [13.0, 3.0] and got.success == 1.0
    assert replay(cascade.at(0.0), data.pools, data.costs).draws[:, 1].tolist() == [0, 0]


def test_cascade_under_a_verifier_accepts_a_positive_reward() -> None:
    cheap = _pool([["a", "b", "c"], ["a", "a", "b"]], ["c", "c"])
    strong = _pool([["c"], ["c"]], ["c", "c"])
    data = _data([cheap, strong], [1.0, 10.0])
    got = replay(
        Cascade(k=3).fit(data, "verifier").at(1.0), data.pools, data.costs, None, None, "verifier"
    )
    assert got.draws.tolist() == [[3, 0], [3, 1]] and got.success == 1.0


def test_escalate_goes_one_decoder_up_under_majority_and_on_while_a_verifier_fails() -> None:
    """A round of one sample always agrees with itself, so under majority vote escalate stops
    after the first step up; under a verifier it goes on while every sample fails."""
    cheap = _pool([["a", "b"], ["c", "c"]], ["c", "c"])
    middle = _pool([["b"], ["c"]], ["c", "c"])
    strong = _pool([["c"], ["c"]], ["c", "c"])
    data = _data([cheap, middle, strong], [1.0, 3.0, 10.0])
    majority = replay(Escalate().fit(data, "majority").at(2), data.pools, data.costs)
    assert majority.draws.tolist() == [[2, 1, 0], [2, 0, 0]]
    assert majority.cost.tolist() == [5.0, 2.0] and majority.success == 0.5  # "b", then "c"
    verifier = Escalate().fit(data, "verifier").at(2)
    got = replay(verifier, data.pools, data.costs, None, None, "verifier")
    assert got.draws.tolist() == [[2, 1, 1], [2, 0, 0]] and got.success == 1.0


def test_routellm_sends_the_calibrated_share_of_largest_score_gaps_strong() -> None:
    weak, strong = _pool([["c"]] * 4, ["c"] * 4), _pool([["c"]] * 4, ["c"] * 4)
    data = _data([weak, strong], [1.0, 10.0])
    pred = np.array([[0.9, 0.9], [0.1, 0.9], [0.5, 0.6], [0.2, 0.8]])
    data = MenuData(data.pools, data.costs, pred)
    router = RouteLLM().fit(data, "majority")
    got = replay(router.at(0.5), data.pools, data.costs, pred)
    assert got.draws[:, 1].tolist() == [0, 1, 0, 1]  # gaps 0, .8, .1, .6: the top two
    flat = RouteLLM().fit(_data([weak, strong], [1.0, 10.0]), "majority")
    spent = [replay(flat.at(0.5), data.pools, data.costs).draws[:, 1].sum() for _ in range(3)]
    assert spent == [spent[0]] * 3  # ties are broken by a seeded draw: repeatable


def test_best_single_picks_the_best_affordable_decoder_and_count() -> None:
    data = _synthetic(60, seed=1)
    best = BestSingle().fit(data, "majority")
    assert best.option(0.5) == (0, 1)  # below every price: the cheapest sample
    assert best.option(20.0)[0] == 2 and best.option(20.0)[1] == 1
    d, k = best.option(18.0)
    assert k * [1.0, 3.0, 20.0][d] <= 18.0


def test_fit_logistic_equals_scikit_learn_on_fractional_labels() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    y = np.clip(1 / (1 + np.exp(-(x @ [1.0, -2.0, 0.5] + 0.3))) + rng.normal(0, 0.1, 50), 0, 1)
    w = fit_logistic(x, y, l2=0.5)
    ref = LogisticRegression(C=2.0, tol=1e-10, max_iter=10_000).fit(
        np.vstack([x, x]), np.r_[np.ones(50), np.zeros(50)], sample_weight=np.r_[y, 1 - y]
    )
    assert w == pytest.approx(np.r_[ref.coef_[0], ref.intercept_], abs=1e-4)


def test_probe_escalate_draws_the_probe_then_escalates_on_the_gate() -> None:
    cheap = _pool([["a", "a"], ["a", "b"]], ["a", "c"])
    middle = _pool([["a"], ["d"]], ["a", "c"])
    strong = _pool([["a"], ["c"]], ["a", "c"])
    data = _data([cheap, middle, strong], [1.0, 2.0, 10.0])
    # gain 1/2 - σ(3 x share): share 1/3 (-0.23) escalates, share 1 (-0.45) does not
    size = 2 + 2 + 1
    kept = np.zeros(size + 1)
    kept[0] = 3.0
    gate = Gate(np.zeros(size), np.ones(size), kept, np.zeros(size + 1))
    rng = np.random.default_rng(0)
    policy = ProbeEscalatePolicy(((0, 2), (1, 1)), 2, gate, -0.25, 0.0, "majority", rng)
    got = replay(policy, data.pools, data.costs)
    assert got.draws.tolist() == [[2, 1, 0], [2, 1, 1]]
    assert got.rounds.tolist() == [2, 3] and got.success == 1.0  # the strong answer is returned
    seen = [Seen(0, "a", None, 1.0), Seen(0, "b", None, 1.0), Seen(1, "b", None, 2.0)]
    x = gate_features(seen, np.array([0.5, np.nan, 0.99]), [0, 1], 2, "majority")
    assert x == pytest.approx([2 / 3, 2 / 3, 0.5, 1.0, math.log(99)])
    x = gate_features(seen, np.array([0.5, np.nan, 0.99]), [1, 0], 2, "verifier")
    assert x[-2:] == pytest.approx([0.0, 0.0])  # no prediction for decoder 1; no reward seen


def _cheap_hard(n: int, seed: int) -> MenuData:
    """Odd queries defeat both cheap decoders (right 20% of the time, else one of ten wrong
    answers), even ones do not (90%); the strong decoder is right 90% of the time on both."""
    rng = np.random.default_rng(seed)

    def rows(odd: float, even: float) -> list[list[str]]:
        rate = [odd if i % 2 else even for i in range(n)]
        return [
            ["c" if rng.random() < r else f"w{rng.integers(10)}" for _ in range(6)] for r in rate
        ]

    pools = [_pool(rows(0.2, 0.9), ["c"] * n) for _ in range(2)]
    return _data([*pools, _pool(rows(0.9, 0.9), ["c"] * n)], [1.0, 2.0, 20.0])


def test_probe_escalate_sends_the_queries_its_probe_doubts_strong() -> None:
    fit, test = _cheap_hard(100, seed=3), _cheap_hard(100, seed=4)
    learned = ProbeEscalate().fit(fit, "majority")
    assert sorted(learned.probe_) == [(0, 1), (1, 1)] and learned.strong_ == 2
    flat = ProbeEscalate().fit(fit, "majority")
    size = len(flat.gate_.mean)
    flat.gate_ = Gate(np.zeros(size), np.ones(size), np.zeros(size + 1), np.zeros(size + 1))
    flat.scores_ = np.zeros(len(flat.scores_))  # every gain ties: a random share escalates
    orders = random_orders(test.pools, np.random.default_rng(1))
    a, b = (replay(f.at(0.5), test.pools, test.costs, None, orders) for f in (learned, flat))
    assert a.draws[:, 2].mean() == pytest.approx(0.5, abs=0.1)
    assert a.draws[1::2, 2].mean() > 0.7  # mostly the odd queries go strong (random: 0.5)
    assert a.success > b.success + 0.1


# ---------------------------------------------------------------------------- the sequential menu


def _naive_likelihood(
    lam: np.ndarray, theta: np.ndarray, gamma: float, draws: list[tuple[int, int]], h: int
) -> np.ndarray:
    """P(draws | H_h, z) on the grid, by walking the generative story one draw at a time (h = 0:
    the correct answer is unseen; h >= 1: answer h - 1 is correct)."""
    out = np.ones(lam.shape[1])
    counts: dict[tuple[int, int], int] = {}  # (answer, decoder) -> wrong draws

    for d, a in draws:
        if a == h - 1:
            out = out * lam[d]
            continue
        wrong = {k: v for k, v in counts.items() if k[0] != h - 1}
        w_d = sum(v for (b, e), v in wrong.items() if e == d)
        holders = {b for (b, _) in wrong}
        tables = {b: sum(1 for (c, _) in wrong if c == b) for b in holders}
        t = sum(tables.values())
        if a in holders:
            p = (wrong.get((a, d), 0) + theta[d] * tables[a] / (gamma + t)) / (theta[d] + w_d)
        else:
            p = theta[d] * gamma / (gamma + t) / (theta[d] + w_d)
        out = out * (1 - lam[d]) * p
        counts[(a, d)] = counts.get((a, d), 0) + 1
    return out


def _naive_marginal(
    lam: np.ndarray, w: np.ndarray, theta: np.ndarray, gamma: float, draws: list[tuple[int, int]]
) -> tuple[float, np.ndarray]:
    n_answers = 1 + max(a for _, a in draws)
    per_h = np.array(
        [w @ _naive_likelihood(lam, theta, gamma, draws, h) for h in range(n_answers + 1)]
    )
    return float(per_h.sum()), per_h / per_h.sum()


CASE_LAM = np.array([[0.2, 0.5, 0.8], [0.5, 0.7, 0.95]])
CASE_W = np.array([0.25, 0.5, 0.25])
CASE_THETA = np.array([0.7, 2.0])
CASE_DRAWS = [(0, 0), (0, 1), (1, 1), (0, 0), (1, 2), (0, 1)]


def test_menu_posterior_equals_the_generative_story_walked_by_hand() -> None:
    joint, counts = menu_joint(CASE_LAM, np.log(CASE_W), CASE_THETA, 1.5, CASE_DRAWS)
    _, naive = _naive_marginal(CASE_LAM, CASE_W, CASE_THETA, 1.5, CASE_DRAWS)
    assert joint.sum(axis=1) == pytest.approx(naive, rel=1e-9)
    assert counts.tolist() == [[2, 0], [2, 1], [0, 1]]


@pytest.mark.parametrize("decoder", [0, 1])
def test_wrong_shares_and_lookahead_match_brute_force_over_the_next_answer(decoder: int) -> None:
    joint, counts = menu_joint(CASE_LAM, np.log(CASE_W), CASE_THETA, 1.5, CASE_DRAWS)
    assert wrong_shares(counts, decoder, CASE_THETA, 1.5).sum(axis=1) == pytest.approx(1.0)
    base, _ = _naive_marginal(CASE_LAM, CASE_W, CASE_THETA, 1.5, CASE_DRAWS)
    expected, mass = 0.0, 0.0
    for o in range(counts.shape[0] + 1):  # each seen answer, then a new one
        p, post = _naive_marginal(CASE_LAM, CASE_W, CASE_THETA, 1.5, [*CASE_DRAWS, (decoder, o)])
        mass += p / base
        expected += p / base * post[1:].max()
    values = lookahead_values(joint, counts, decoder, CASE_LAM[decoder], CASE_THETA, 1.5, 2, 0.0)
    assert mass == pytest.approx(1.0)
    assert values[0] == pytest.approx(joint[1:].sum(axis=1).max())
    assert values[1] == pytest.approx(expected, rel=1e-9)
    assert values[2] >= values[0] - 1e-12  # information never lowers the expected value


def _state(prediction_m: int, room: list[int], seen: list[Seen]) -> QueryState:
    return QueryState(np.full(prediction_m, np.nan), room, seen)


def test_sequential_menu_stops_exactly_when_the_best_gain_per_cost_is_below_the_price() -> None:
    data = _synthetic(80, seed=2)
    family = SequentialMenu().fit(data, "majority")
    state = _state(3, [6, 6, 6], [Seen(0, "c", None, 1.0), Seen(0, "w1", None, 1.0)])
    d, gain = family.best_draw(state)
    assert d >= 0 and gain > 0
    assert family.at(-math.log10(gain * 0.99)).decide(state) is not None
    assert family.at(-math.log10(gain * 1.01)).decide(state) is None


def test_sequential_menu_answers_every_query_however_high_the_price() -> None:
    """A request needs an answer: the first sample is drawn at any price (from the decoder of
    the best gain per cost), and nothing after it when the price is above every gain."""
    data = _synthetic(80, seed=2)
    family = SequentialMenu().fit(data, "majority")
    d, _ = family.best_draw(_state(3, [6, 6, 6], []))
    dear = family.at(-12.0)  # a price of 1e12 per unit of gain
    assert dear.decide(_state(3, [6, 6, 6], [])) == Draw(d, 1)
    assert dear.decide(_state(3, [6, 6, 6], [Seen(d, "c", None, 1.0)])) is None
    got = replay(dear, data.pools, data.costs)
    assert np.all(got.draws.sum(axis=1) == 1)
    assert dear.decide(_state(3, [0, 0, 0], [])) is None  # no room: nothing to draw


def test_sequential_menu_escalates_when_the_cheap_answers_disagree() -> None:
    data = _synthetic(200, seed=3, accuracy=(0.3, 0.9))  # prices 1 and 3
    family = SequentialMenu().fit(data, "majority")
    agree = [Seen(0, "c", None, 1.0)] * 4
    disagree = [Seen(0, a, None, 1.0) for a in ("w0", "w1", "c", "w2")]
    policy = family.at(1.0)
    assert policy.decide(_state(2, [2, 6], agree)) is None
    draw = policy.decide(_state(2, [2, 6], disagree))
    assert draw is not None and draw.decoder == 1


def test_sequential_menu_never_draws_beyond_the_room() -> None:
    data = _synthetic(30, seed=4)
    family = SequentialMenu().fit(data, "majority")
    got = replay(family.at(6.0), data.pools, data.costs)  # replay refuses a draw beyond room
    assert got.draws.max() <= 6 and got.draws.sum(axis=1).min() >= 1


def test_sequential_menu_under_a_verifier_stops_at_a_success() -> None:
    data = _synthetic(60, seed=5)
    family = SequentialMenu().fit(data, "verifier")
    policy = family.at(4.0)
    assert policy.decide(_state(3, [6, 6, 6], [Seen(0, "c", 1.0, 1.0)])) is None
    draw = policy.decide(_state(3, [6, 6, 6], [Seen(0, "w0", 0.0, 1.0)]))
    assert draw is not None


def _reference_lookahead(
    joint: np.ndarray,
    counts: np.ndarray,
    decoder: int,
    lam: np.ndarray,
    theta: np.ndarray,
    gamma: float,
    depth: int,
    tiny: float,
) -> np.ndarray:
    """`lookahead_values` walked one outcome at a time at every depth (the first version)."""
    n_answers = counts.shape[0]
    out = np.zeros(depth + 1)
    out[0] = joint[1:].sum(axis=1).max() if n_answers else 0.0
    if depth == 0:
        return out
    share = wrong_shares(counts, decoder, theta, gamma)
    wrong, right = joint * (1.0 - lam), joint * lam
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
        out[1:] += pred[o] * _reference_lookahead(
            child / pred[o], grown, decoder, lam, theta, gamma, depth - 1, tiny
        )
    return out


def _reference_best_draw(family: SequentialMenu, state: QueryState) -> tuple[int, float]:
    """`SequentialMenu.best_draw` (majority) without its memo, λ written out from the fit."""
    z, w = family.grid_
    logit = np.where(np.isfinite(state.prediction), prediction_logits(state.prediction), 0.0)
    offset = family.offset_ + (0.0 if family.flat else family.weight_ * logit)
    lam = np.clip(1 / (1 + np.exp(-(family.slope_[:, None] * z + offset[:, None]))), 1e-9, 1)
    lam = np.minimum(lam, 1 - 1e-9)
    index: dict[str, int] = {}
    draws = [
        (s.decoder, -1 if s.answer is None else index.setdefault(s.answer, len(index)))
        for s in state.seen
    ]
    joint, counts = menu_joint(lam, np.log(w), family.theta_, family.gamma_, draws)
    best = (-1, -math.inf)
    for d, room in enumerate(state.room):
        r = min(room, family.lookahead)
        if r < 1:
            continue
        v = _reference_lookahead(joint, counts, d, lam[d], family.theta_, family.gamma_, r, 1e-3)
        gain = float(np.max((v[1:] - v[0]) / np.arange(1, r + 1))) / family.costs_[d]
        if gain > best[1]:
            best = (d, gain)
    return best


def _random_case(rng: np.random.Generator) -> tuple:
    m, g = 3, 8
    lam = rng.uniform(0.05, 0.95, (m, g))
    theta, gamma = rng.uniform(0.3, 3, m), float(rng.uniform(0.3, 3))
    draws: list[tuple[int, int]] = []
    for _ in range(rng.integers(0, 12)):
        seen = 1 + max((a for _, a in draws), default=-1)
        draws.append((int(rng.integers(m)), int(rng.integers(-1, seen + 1))))
    joint, counts = menu_joint(lam, np.log(rng.dirichlet(np.ones(g))), theta, gamma, draws)
    return lam, theta, gamma, joint, counts


@pytest.mark.parametrize("tiny", [0.0, 1e-3, 0.05])
def test_lookahead_sums_the_last_draw_as_walking_each_of_its_outcomes(tiny: float) -> None:
    rng = np.random.default_rng(11)
    for _ in range(25):
        lam, theta, gamma, joint, counts = _random_case(rng)
        for d, depth in itertools.product(range(3), (1, 2, 3)):
            fast = lookahead_values(joint, counts, d, lam[d], theta, gamma, depth, tiny)
            slow = _reference_lookahead(joint, counts, d, lam[d], theta, gamma, depth, tiny)
            assert fast == pytest.approx(slow, abs=1e-14, rel=1e-12)


@pytest.mark.parametrize("tiny", [0.0, 1e-3, 0.05])
def test_menu_lookahead_closes_two_draws_as_walking_each_outcome_of_each_decoder(
    tiny: float,
) -> None:
    rng = np.random.default_rng(16)
    for _ in range(40):
        lam, theta, gamma, joint, counts = _random_case(rng)
        for depth in (0, 1, 2, 3):
            got = menu_lookahead(joint, counts, lam, theta, gamma, depth, tiny)
            for d in range(3):
                slow = _reference_lookahead(joint, counts, d, lam[d], theta, gamma, depth, tiny)
                assert got[d] == pytest.approx(slow, abs=1e-14, rel=1e-12)


def _with_predictions(data: MenuData, seed: int, noise: float) -> MenuData:
    """``data`` with predictions: each query's true success rate per decoder, logit-noised."""
    rng = np.random.default_rng(seed)
    rate = np.clip(np.column_stack([p.success_rate() for p in data.pools]), 0.02, 0.98)
    logit = np.log(rate / (1 - rate)) + noise * rng.normal(size=rate.shape)
    return MenuData(data.pools, data.costs, 1 / (1 + np.exp(-logit)))


class _Checked:
    """A policy that asserts, at every decision, that the family's memoised gain equals
    `_reference_best_draw`'s (up to float rounding) and its decision at the price too (gains
    within rounding of 0, where any decoder ties, stop either way; the first draw is always
    made), and counts the decisions."""

    def __init__(self, family: SequentialMenu, knob: float) -> None:
        self.family, self.policy, self.checked = family, family.at(knob), 0

    def decide(self, state: QueryState) -> Draw | None:
        _, gain = self.family.best_draw(state)
        ref_d, ref_gain = _reference_best_draw(self.family, state)
        assert gain == pytest.approx(ref_gain, rel=1e-12, abs=1e-14)
        stop = ref_d < 0 or (state.seen and ref_gain < max(self.policy.price, 1e-14))
        ref = None if stop else Draw(ref_d, 1)
        got = self.policy.decide(state)
        assert got == ref
        self.checked += 1
        return got

    def choose(self, state: QueryState) -> int:
        return self.policy.choose(state)


@pytest.mark.parametrize("flat", [True, False])
def test_sequential_menu_memo_and_fast_lookahead_equal_the_reference_on_every_decision(
    flat: bool,
) -> None:
    data = _with_predictions(_synthetic(25, seed=12), seed=0, noise=0.5)
    family = SequentialMenu(flat=flat).fit(data, "majority")
    assert (family.weight_ == 0).all() == flat
    rng = np.random.default_rng(1)
    for knob in (2.0, 4.0):
        for _ in range(2):  # a second order replays states met before (memo hits)
            checked = _Checked(family, knob)
            orders = random_orders(data.pools, rng)
            got = replay(checked, data.pools, data.costs, data.predictions, orders)
            assert checked.checked > 2 * 25 and got.draws.sum(axis=1).max() >= 3


def test_sequential_menu_flat_ignores_the_predictions() -> None:
    data = _synthetic(40, seed=13)
    informed = _with_predictions(data, seed=1, noise=0.3)
    orders = random_orders(data.pools, np.random.default_rng(2))
    flat = SequentialMenu(flat=True).fit(informed, "majority")
    plain = SequentialMenu().fit(data, "majority")  # no predictions: NaN, b stays 0
    assert (plain.weight_ == 0).all()
    np.testing.assert_array_equal(flat.offset_, plain.offset_)
    a = replay(flat.at(2.0), data.pools, data.costs, informed.predictions, orders)
    b = replay(plain.at(2.0), data.pools, data.costs, None, orders)
    np.testing.assert_array_equal(a.draws, b.draws)
    np.testing.assert_array_equal(a.reward, b.reward)


def test_fit_latent_recovers_the_weight_of_the_predictions() -> None:
    rng = np.random.default_rng(14)
    n, trials = 1500, 10
    a, c, b = np.array([1.0, 1.5, 0.8]), np.array([-0.5, 0.3, 1.0]), np.array([0.8, 0.4, 1.2])
    x = rng.normal(size=(n, 3))
    z = rng.normal(size=n)
    lam = 1 / (1 + np.exp(-(a * z[:, None] + c + b * x)))
    k = rng.binomial(trials, lam).astype(float)
    got_a, got_c, got_b = fit_latent(k, np.full((n, 3), float(trials)), latent_grid(24), x)
    assert got_b == pytest.approx(b, abs=0.15)
    assert got_a == pytest.approx(a, abs=0.2)
    assert got_c == pytest.approx(c, abs=0.2)
    _, _, none = fit_latent(k, np.full((n, 3), float(trials)), latent_grid(24))
    assert (none == 0).all()


def test_sequential_menu_with_predictions_spends_where_they_say_the_answer_is_uncertain() -> None:
    """Two queries alike but for their predictions: the one whose cheap decoder is predicted
    unreliable escalates at a price where the other stops."""
    data = _with_predictions(_synthetic(300, seed=15, accuracy=(0.3, 0.9)), seed=3, noise=0.3)
    family = SequentialMenu().fit(data, "majority")
    assert (family.weight_ > 0.3).all()
    seen = [Seen(0, "c", None, 1.0)] * 2
    sure = QueryState(np.array([0.95, 0.99]), [4, 6], list(seen))
    unsure = QueryState(np.array([0.2, 0.6]), [4, 6], list(seen))
    _, gain_sure = family.best_draw(sure)
    _, gain_unsure = family.best_draw(unsure)
    assert gain_unsure > 3 * gain_sure


# ---------------------------------------------------------------------------- every family


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("observe", ["majority", "verifier"])
def test_every_family_spends_more_as_its_knob_grows(name: str, observe: str) -> None:
    if (name, observe) == ("escalate", "verifier"):
        pytest.skip("escalate under a verifier: more first-round samples find a success more often")
    data = _synthetic(40, seed=6)
    orders = random_orders(data.pools, np.random.default_rng(0))
    family = FAMILIES[name]().fit(data, observe)
    lo, hi = family.knobs
    knobs = np.linspace(lo, hi, 7)
    if family.discrete:
        knobs = np.unique(np.floor(knobs))
    spend = [
        replay(family.at(float(k)), data.pools, data.costs, None, orders, observe).mean_cost
        for k in knobs
    ]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(spend)), spend
    assert spend[-1] > spend[0]


@pytest.mark.parametrize("name", ["sequential-menu", "cascade", "best-single"])
def test_calibrate_meets_a_budget_on_held_out_data(name: str) -> None:
    fit, test = _synthetic(60, seed=7), _synthetic(60, seed=8)
    orders = random_orders(fit.pools, np.random.default_rng(0))
    family = FAMILIES[name]().fit(fit, "majority")
    knob = calibrate(family, fit, 6.0, "majority", orders)
    spent = replay(family.at(knob), fit.pools, fit.costs, None, orders).mean_cost
    assert spent <= 6.0
    assert replay(family.at(family.knobs[1]), fit.pools, fit.costs, None, orders).mean_cost > 6.0
    held_out = replay(family.at(knob), test.pools, test.costs).mean_cost
    assert held_out == pytest.approx(6.0, rel=0.5)


def test_latent_grid_integrates_the_standard_normal() -> None:
    z, w = latent_grid(24)
    assert w.sum() == pytest.approx(1.0)
    assert w @ z**2 == pytest.approx(1.0)
