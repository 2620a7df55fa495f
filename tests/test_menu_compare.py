"""howhard.menu_compare: the M-decoder hull greedy against brute force and against the
2-decoder joint comparison, the curves, cost at a target, and the --menu commands end to end."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from howhard import allocate, joint
from howhard.cli import main
from howhard.compare import Strong, compare
from howhard.errors import PoolError
from howhard.menu import (
    Draw,
    MenuData,
    MenuPolicy,
    QueryState,
    majority_choice,
    read_menu,
)
from howhard.menu_compare import MenuCurve, compare_menu, cost_at, reached
from howhard.pool import Pool, write_pool
from howhard.runs.menu import MenuCompareSpec, run_menu_compare

# ---------------------------------------------------------------------------- fixtures


def make_pool(rates: np.ndarray, n_samples: int, seed: int, prefix: str = "q") -> Pool:
    """A binary pool: query i's samples are correct ('right') with rate rates[i], else one of
    two wrong answers."""
    rng = np.random.default_rng(seed)
    rewards, extras = [], []
    for p in rates:
        r = (rng.random(n_samples) < p).astype(float)
        wrong = rng.choice(["w1", "w2"], n_samples)
        rewards.append(r)
        extras.append({"answers": [("right" if x else w) for x, w in zip(r, wrong, strict=True)]})
    n = len(rates)
    ids = tuple(f"{prefix}{i}" for i in range(n))
    prompts = tuple(  # distinct texts for the n-gram features
        f"def f(x):\n    return x * {i} + {i % 3}\nassert f({i}) == ??" for i in range(n)
    )
    return Pool(ids, prompts, tuple(rewards), tuple(extras))


def menu_data(rates: list[np.ndarray], caps: list[int], prices: list[float], seed: int) -> MenuData:
    pools = [make_pool(r, c, seed + d) for d, (r, c) in enumerate(zip(rates, caps, strict=True))]
    costs = [[np.full(c, price)] * len(rates[0]) for c, price in zip(caps, prices, strict=True)]
    pred = np.column_stack([p.success_rate() for p in pools])
    return MenuData(pools, costs, pred)


# ---------------------------------------------------------------------------- the hull greedy


def brute_best(values: np.ndarray, costs: np.ndarray, total: float) -> float:
    """The best total value of any assignment of one option per query within ``total``."""
    n, o = values.shape
    best = -np.inf
    for combo in itertools.product(range(o), repeat=n):
        rows = np.arange(n)
        if costs[rows, list(combo)].sum() <= total + 1e-9:
            best = max(best, values[rows, list(combo)].sum())
    return float(best)


def three_decoder_instance(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3 queries, 3 decoders (caps 2, 2, 1), per-query per-sample prices (as with per-token
    prices), best-of-k values from per-query rates."""
    rng = np.random.default_rng(seed)
    opts = joint.options([2, 2, 1], [1.0, 1.0, 1.0], min_samples=1)
    unit = rng.uniform(0.5, 1.5, (3, 3)) * np.array([1.0, 2.0, 6.0])
    lam = rng.random((3, 3))
    values = 1 - (1 - lam[:, opts.decoder]) ** opts.k
    return values, opts.k * unit[:, opts.decoder]


@pytest.mark.parametrize("seed", range(8))
def test_three_decoders_greedy_is_the_integer_optimum_at_every_breakpoint(seed: int) -> None:
    values, costs = three_decoder_instance(seed)
    n = values.shape[0]
    hulls = [joint.upper_hull(c, v) for c, v in zip(costs, values, strict=True)]
    segs = sorted(
        (-(v[b] - v[a]) / (c[b] - c[a]), c[b] - c[a])
        for c, v, h in zip(costs, values, hulls, strict=True)
        for a, b in itertools.pairwise(h)
    )
    spent = sum(c[h[0]] for c, h in zip(costs, hulls, strict=True))
    for _, extra in [(0.0, 0.0), *segs]:
        spent += extra
        alloc = joint.allocate_joint(values, costs, spent / n)
        got = values[np.arange(n), alloc.choice].sum()
        assert got == pytest.approx(brute_best(values, costs, spent))
        # the stream rule at the greedy's own price makes the same choices (no segment skipped)
        np.testing.assert_array_equal(joint.priced_choice(values, costs, alloc.price), alloc.choice)


@pytest.mark.parametrize("seed", range(8))
def test_three_decoders_greedy_stays_feasible_and_below_the_optimum(seed: int) -> None:
    values, costs = three_decoder_instance(seed)
    n = values.shape[0]
    cheapest = costs.min(axis=1).mean()
    for budget in np.linspace(cheapest, costs.max(), 15):
        alloc = joint.allocate_joint(values, costs, budget)
        rows = np.arange(n)
        assert costs[rows, alloc.choice].sum() <= budget * n + 1e-9
        assert values[rows, alloc.choice].sum() <= brute_best(values, costs, budget * n) + 1e-12


def test_with_two_decoders_the_menu_methods_equal_the_two_decoder_joint_comparison() -> None:
    # Every weak one-sample success (0.5 or 0.75 of 4 samples) is steeper than any other
    # segment, so the 2-decoder joint (which may leave a query at k = 0) answers every query
    # from budget 1 on, as the menu's joint (k >= 1) always does: the two must then agree.
    rng = np.random.default_rng(0)
    n, c_s = 12, 4.0
    weak = make_pool(rng.choice([0.5, 0.75], n), 4, 1)
    weak = Pool(
        weak.ids,
        weak.prompts,
        tuple(np.array([1, 1, 0, 0.0]) if i % 2 else np.array([1, 1, 1, 0.0]) for i in range(n)),
        weak.extras,
    )
    strong = make_pool(rng.uniform(0.6, 1.0, n), 3, 2)
    lam_w = rng.uniform(0.5, 0.6, n)
    lam_s = rng.uniform(0.6, 0.95, n)
    budgets = [1.0, 1.5, 2.0, 3.0, 4.0]
    two = compare(
        weak,
        allocate.binary_gains(lam_w, 4),
        budgets,
        4,
        observe=["verifier"],
        n_replays=2,
        strong=Strong(strong, allocate.binary_gains(lam_s, 3), c_s),
    ).tables["verifier"]
    data = MenuData(
        [weak, strong],
        [[np.ones(4)] * n, [np.full(3, c_s)] * n],
        np.column_stack([lam_w, lam_s]),
    )
    menu = compare_menu(data, ["weak", "strong"], budgets, ["verifier"]).tables["verifier"]
    same = {"routing": "routing", "joint": "joint", "oracle-joint": "joint-oracle"}
    for mine, theirs in same.items():
        assert menu[mine].budget == budgets
        np.testing.assert_allclose(menu[mine].success, two[theirs].success, atol=1e-12)
        np.testing.assert_allclose(menu[mine].cost, two[theirs].spend, atol=1e-12)


# ---------------------------------------------------------------------------- curves


@pytest.mark.parametrize("seed", range(4))
def test_routing_curves_stay_within_budget_and_oracle_routing_success_rises(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 30
    rates = [rng.uniform(0, 0.5, n), rng.uniform(0.1, 0.8, n), rng.uniform(0.3, 1.0, n)]
    data = menu_data(rates, [4, 3, 2], [1.0, 3.0, 20.0], seed)
    budgets = list(np.geomspace(1.0, 20.0, 12))
    cmp = compare_menu(data, ["a", "b", "c"], budgets, ["verifier", "majority"])
    table = cmp.tables["verifier"]
    # one sample: majority vote of one is that sample, so both modes route alike (float
    # rounding in the majority estimator buys nothing)
    for method in ("routing", "oracle-routing"):
        np.testing.assert_allclose(cmp.tables["majority"][method].cost, table[method].cost)
        np.testing.assert_allclose(cmp.tables["majority"][method].success, table[method].success)
    for method in ("routing", "oracle-routing", "joint", "oracle-joint"):
        curve = table[method]
        assert curve.budget == budgets
        assert np.all(np.array(curve.cost) <= np.array(budgets) + 1e-9)
        assert np.all(np.diff(curve.cost) >= -1e-12)
    assert np.all(np.diff(table["oracle-routing"].success) >= -1e-12)
    assert np.all(np.diff(table["oracle-joint"].success) >= -1e-12)
    # routing on perfect predictions (the pools' own rates) is oracle routing
    np.testing.assert_allclose(table["routing"].success, table["oracle-routing"].success)
    # more is never worse for the oracles: joint menu x k reaches at least what routing does
    assert np.all(np.array(table["oracle-joint"].success) >= table["oracle-routing"].success)
    alone = table["c best-of-k"]
    assert alone.cost == [20.0, 40.0] and alone.success[0] == pytest.approx(
        data.pools[2].success_rate().mean()
    )


def test_cost_at_interpolates_linearly_on_hand_cases() -> None:
    cost, success = [1.0, 3.0, 5.0], [0.2, 0.6, 0.8]
    assert cost_at(cost, success, 0.5) == (2.5, False)  # 1 + (0.3 / 0.4) * 2
    assert cost_at(cost, success, 0.8) == (5.0, False)
    assert cost_at(cost, success, 0.1) == (1.0, True)  # the cheapest point already reaches it
    c, at_most = cost_at(cost, success, 0.9)
    assert np.isnan(c) and not at_most
    # the first crossing in cost order, points given out of order
    assert cost_at([4.0, 1.0, 2.0], [0.7, 0.5, 0.3], 0.6) == (3.5, False)


def test_reached_gives_the_share_of_the_reference_cost_and_cost_of_pass() -> None:
    curve = MenuCurve([1, 3, 5], [1.0, 3.0, 5.0], [0.2, 0.6, 0.8], [0, 0, 0])
    r50, r10, r90 = reached(curve, [0.5, 0.1, 0.9], reference_cost=10.0)
    assert (r50.cost, r50.share_of_reference, r50.cost_of_pass) == (2.5, 0.25, 5.0)
    assert r10.at_most and r10.cost_of_pass == pytest.approx(1.0 / 0.2)
    assert r90.cost is None and r90.cost_of_pass is None


# ---------------------------------------------------------------------------- policy families


class CheapestK:
    """k samples of the cheapest decoder (decoder 0), majority or best reward returned."""

    discrete = True

    def __init__(self) -> None:
        self.name = "cheapest-k"
        self.knobs = (1.0, 1.0)

    def fit(self, data: MenuData, observe: str) -> CheapestK:
        self.knobs = (1.0, float(data.pools[0].n_samples.min()))
        return self

    def at(self, knob: float) -> MenuPolicy:
        return _Take(int(knob))


class _Take:
    def __init__(self, k: int) -> None:
        self.k = k

    def decide(self, state: QueryState) -> Draw | None:
        return Draw(0, self.k) if not state.seen else None

    def choose(self, state: QueryState) -> int:
        return majority_choice(state.seen)


def test_a_policy_family_is_calibrated_per_fold_and_replayed() -> None:
    rng = np.random.default_rng(5)
    n = 40
    data = menu_data([rng.uniform(0.2, 0.9, n), rng.uniform(0.5, 1, n)], [6, 2], [1.0, 5.0], 5)
    budgets = [1.0, 2.0, 3.5, 10.0]
    cmp = compare_menu(data, ["a", "b"], budgets, ["majority"], [CheapestK()], n_replays=30, seed=1)
    got = cmp.tables["majority"]["cheapest-k"]
    alone = cmp.tables["majority"]["a best-of-k"]
    # the knob is the largest k within budget on the other fold: k = 1, 2, 3, 6 samples of "a"
    assert got.cost == pytest.approx([1.0, 2.0, 3.0, 6.0])
    for k, success, se in zip([1, 2, 3, 6], got.success, got.success_se, strict=True):
        assert abs(success - alone.success[k - 1]) <= 4 * se + 1e-9  # the exact majority@k


# ---------------------------------------------------------------------------- files and CLI


def write_menu(tmp_path: Path, n: int = 16) -> Path:
    rng = np.random.default_rng(11)
    rates = [rng.uniform(0, 0.6, n), rng.uniform(0.2, 0.8, n), rng.uniform(0.4, 1.0, n)]
    lines = []
    for d, (name, price, cap) in enumerate((("small", 0.2, 5), ("mid", 1, 4), ("big", 10, 3))):
        pool = make_pool(rates[d], cap, d)
        order = rng.permutation(n)  # the pool files list the queries in different orders
        write_pool(pool.select([pool.ids[i] for i in order]), tmp_path / f"{name}.jsonl")
        lines += ["[[decoder]]", f'name = "{name}"', f'pool = "{name}.jsonl"', f"cost = {price}"]
    path = tmp_path / "menu.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_evaluate_and_compare_with_a_menu_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    menu = write_menu(tmp_path)
    pred = tmp_path / "pred"
    code, out, _ = run_cli(
        capsys, "train", "--menu", str(menu), "--rows", "0:12", "--features", "ngrams",
        "--head", "logistic", "--out", str(pred),
    )  # fmt: skip
    assert code == 0 and "saved one predictor per decoder" in out
    files = sorted(p.name for p in pred.iterdir())
    assert files == ["big.npz", "menu.toml", "mid.npz", "small.npz"]
    trained = read_menu(pred / "menu.toml")
    assert trained.names == ["small", "mid", "big"]
    assert trained.decoders[2].pool == (tmp_path / "big.jsonl").resolve()
    assert trained.decoders[2].predictor == (pred / "big.npz").resolve()
    assert trained.decoders[0].cost == 0.2

    code, out, _ = run_cli(capsys, "evaluate", "--menu", str(pred / "menu.toml"), "--json")
    rows = json.loads(out)["decoders"]
    assert code == 0 and [r["name"] for r in rows] == ["small", "mid", "big"]
    assert all(r["n_queries"] == 16 and r["loss"]["model"] > 0 for r in rows)
    assert all(r["gap_closed_interval"][0] <= r["gap_closed_interval"][1] for r in rows)
    for r in rows:  # the same model and Opt; Avg at the pool's own rate, the best constant
        own, loss = r["loss_pool_mean"], r["loss"]
        assert own["model"] == loss["model"] and own["opt"] == loss["opt"]
        rate = r["success"]  # equal trials per query: the pool's rate is the mean success
        assert own["avg"] == pytest.approx(-rate * np.log(rate) - (1 - rate) * np.log(1 - rate))
        assert own["avg"] <= loss["avg"]
    code, out, _ = run_cli(
        capsys, "evaluate", "--menu", str(pred / "menu.toml"), "--bootstrap", "0"
    )
    assert code == 0 and "| small |" in out and "% [" not in out
    own = 100 * rows[0]["loss_pool_mean"]["gap_closed"]
    assert f"| {100 * rows[0]['loss']['gap_closed']:.0f}% | {own:.0f}% |" in out

    report = tmp_path / "report"
    code, out, err = run_cli(
        capsys, "compare", "--menu", str(pred / "menu.toml"), "--rows", "4:16", "--json",
        "--budgets", "0.2,0.5,1,3,10", "--observe", "majority,verifier", "--out", str(report),
        "--replays", "3",
    )  # fmt: skip
    assert code == 0, err
    assert "were in the predictor's training pool" in err  # rows 4..11 were trained on
    data = json.loads(out)
    assert set(data["tables"]) == {"majority", "verifier"}
    methods = set(data["tables"]["verifier"])
    assert {"routing", "routing-stream", "joint", "oracle-routing", "oracle-joint"} <= methods
    assert {"small best-of-k", "mid best-of-k", "big best-of-k"} <= methods
    routing = data["tables"]["verifier"]["routing"]
    assert routing["budget"] == [0.2, 0.5, 1.0, 3.0, 10.0]
    assert len(routing["success"]) == len(routing["cost"]) == 5
    assert data["n_queries"] == 12 and data["reference"] == "big"
    assert set(data["reached"]["majority"]["oracle-joint"][0]) >= {"cost", "cost_of_pass"}
    for name in ("report.md", "report.json", "plot.png"):
        assert (report / name).stat().st_size > 0
    assert "| oracle-routing |" in (report / "report.md").read_text()


def test_train_with_a_menu_tries_heads_shared_by_the_decoders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from howhard.predict import SuccessPredictor

    menu, pred = write_menu(tmp_path), tmp_path / "pred"
    code, out, _ = run_cli(
        capsys, "train", "--menu", str(menu), "--features", "task", "--task", "cruxeval",
        "--head", "logistic", "--shared", "--out", str(pred),
    )  # fmt: skip
    assert code == 0 and out.count("shared lowrank r=4") == 3 and out.count("<- kept") == 3
    for name in ("small", "mid", "big"):
        saved = SuccessPredictor.load(pred / f"{name}.npz")
        assert saved.head == "logistic" and len(saved.meta_["comparison"]) == 3
    code, out, _ = run_cli(capsys, "evaluate", "--menu", str(pred / "menu.toml"), "--json")
    heads = {r["head"] for r in json.loads(out)["decoders"]}
    assert code == 0 and heads <= {"logistic", "shared lowrank r=1", "shared lowrank r=4"}
    with pytest.raises(SystemExit):
        main(["train", str(tmp_path / "small.jsonl"), "--shared", "--out", str(pred / "x.npz")])
    assert "--shared goes with --menu" in capsys.readouterr().err


def test_compare_with_a_menu_runs_the_given_policy_families(tmp_path: Path) -> None:
    spec = MenuCompareSpec(
        menu=write_menu(tmp_path),
        budgets=[0.2, 0.6, 1.0],
        observe=["majority"],
        replays=2,
        families={"cheapest-k": CheapestK},
    )
    cmp = run_menu_compare(spec)
    assert cmp.tables["majority"]["cheapest-k"].cost == pytest.approx([0.2, 0.6, 1.0])
    assert "learned methods" in cmp.info and "routing" not in cmp.tables["majority"]


def test_menu_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    menu = write_menu(tmp_path)
    code, _, err = run_cli(capsys, "compare", "--menu", str(menu), "--rows", "0:99")
    assert code == 2 and "give stop <= 16" in err and "--rows" in err
    with pytest.raises(SystemExit):
        main(["compare", "--menu", str(menu), "--policies", "no-such-policy"])
    assert "unknown policy family 'no-such-policy'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", str(tmp_path / "small.jsonl"), "--menu", str(menu)])
    assert "one of the two" in capsys.readouterr().err


def test_a_menu_whose_pools_hold_different_queries_is_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    menu = write_menu(tmp_path)
    mid = make_pool(np.full(17, 0.5), 4, 0)  # q0..q16: one query more than the others
    write_pool(mid.select(mid.ids[1:]), tmp_path / "mid.jsonl")  # q1..q16: lacks q0, adds q16
    with pytest.raises(PoolError, match=r"1 ids only in 'mid' .*'q16'.*; 1 ids only in 'small'"):
        read_menu(menu).pools()
    code, _, err = run_cli(capsys, "compare", "--menu", str(menu))
    assert code == 2 and "must hold the same queries" in err
