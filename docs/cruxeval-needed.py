"""How good must the success predictors be for learned routing to meet the CRUXEval menu's goal?

Routing sends each query to one sample of one decoder, chosen by each decoder's predicted
one-sample success under a mean cost budget (`howhard.joint.allocate_joint`, the `routing`
method of `howhard compare --menu`). This script gives it predictors of known quality and
measures the cost at which it reaches 90 / 95 / 100% of GPT-4's one-sample success on problems
400-799, as a share of GPT-4's cost (60 per query; GPT-4 is the menu's last decoder).

Each problem's 10 samples per decoder are split at random into two halves of 5. A synthetic
predictor sees half A: its score is the logit of (successes + 0.5) / 6 plus Gaussian noise of
standard deviation `noise`, turned into a probability by a logistic fit of half B's counts on
the score over problems 0-399 (so it is calibrated on training problems, as a trained
predictor is). Routing is scored on half B only, which the predictor never saw. `noise` 0 is the
best any predictor can do from 5 samples of the truth; large noise is a constant. The learned
rows are the predictors `docs/cruxeval-menu.sh` trains on problems 0-399 (WORK_DIR), scored on
the same half B. "Gap closed" is each predictor's share of the log-loss gap between the
training mean (Avg) and each problem's own rate (Opt) on half B: 5 samples, so a few points
off the 10-sample shares of the menu's predictor report. Medians over 20 random splits ("never":
not reached in half of them or more). For the learned rows it then prints what routing needs
from them: how their predictions for two decoders correlate (mean over pairs) against how the
decoders' rates do, and how the predicted gain of GPT-4 over GPT-3.5 correlates with the true.

    python docs/cruxeval-needed.py [WORK_DIR]     # WORK_DIR of docs/cruxeval-menu.sh; ~1 min
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from howhard.joint import allocate_joint
from howhard.menu import read_menu
from howhard.menu_compare import cost_at
from howhard.predict import SuccessPredictor
from howhard.predict.metrics import loss_table
from howhard.runs.menu import menu_data

MENU = Path(__file__).resolve().parent / "cruxeval-menu.toml"
NOISE = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0)
TARGETS = (0.90, 0.95, 1.00)
SPLITS = 20
HELD_OUT = slice(400, 800)


def rewards(menu_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(rewards (800, decoders, 10), each decoder's price per sample) of the menu's pools."""
    menu = read_menu(menu_file)
    pools = menu.pools()  # aligned to the first pool's query order
    r = np.stack([np.asarray(p.rewards, dtype=float) for p in pools], axis=1)
    return r, np.array([d.cost for d in menu.decoders])


def learned(work: Path) -> dict[str, np.ndarray]:
    """Each trained menu's held-out predictions (400, decoders), by a short name."""
    out = {}
    for sub, name in (("predictors", "char n-grams"), ("predictors-task", "task features")):
        cache = work / ("features.npz" if sub == "predictors" else "features-task.npz")
        data = menu_data(read_menu(work / sub / "menu.toml"), (400, 800), cache=str(cache))
        out[f"learned: {name}"] = data.predictions
    return out


def synthetic(halves: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Predictions (400, decoders) for problems 400-799 from half A's rates plus noise,
    calibrated on half B of problems 0-399."""
    a, b = halves[..., :5].sum(axis=2), halves[..., 5:].sum(axis=2)
    score = np.log((a + 0.5) / (5 - a + 0.5)) + noise * rng.standard_normal(a.shape)
    out = np.empty((400, a.shape[1]))
    for d in range(a.shape[1]):
        fit = SuccessPredictor(head="logistic", alpha=0.0)
        fit.fit(score[:400, d, None], np.column_stack([b[:400, d], np.full(400, 5)]))
        out[:, d] = fit.predict_proba_success(score[400:, d, None])
    return out


def costs_to_reach(pred: np.ndarray, value: np.ndarray, price: np.ndarray) -> list[float]:
    """Share of GPT-4's cost routing on ``pred`` needs for each of TARGETS (inf: never)."""
    budgets = np.geomspace(price.min(), price.max(), 200)
    rows = np.arange(len(value))
    curve = [allocate_joint(pred, price, b).choice for b in budgets]
    cost = [price[c].mean() for c in curve]
    success = [value[rows, c].mean() for c in curve]
    goal = value[:, -1].mean()
    reach = [cost_at(cost, success, t * goal)[0] / price[-1] for t in TARGETS]
    return [x if np.isfinite(x) else np.inf for x in reach]


def main() -> None:
    r, price = rewards(MENU)
    rng = np.random.default_rng(0)
    predictors = learned(Path(sys.argv[1])) if len(sys.argv) > 1 else {}
    rows: dict[str, tuple[list, list]] = {}
    for _ in range(SPLITS):
        halves = np.take_along_axis(r, rng.permuted(np.indices(r.shape)[2], axis=2), axis=2)
        b = halves[HELD_OUT, :, 5:].sum(axis=2)
        train_mean = halves[:400, :, 5:].mean(axis=(0, 2))
        made = {f"synthetic, noise {s:g}": synthetic(halves, s, rng) for s in NOISE}
        for name, pred in {**predictors, **made}.items():
            gaps = [
                loss_table(pred[:, d], b[:, d], np.full(400, 5), train_mean[d])["gap_closed"]
                for d in range(len(price))
            ]
            reach = costs_to_reach(pred, b / 5, price)
            rows.setdefault(name, ([], []))[0].append(gaps)
            rows[name][1].append(reach)
    gap = "gap closed (codellama 7b/13b/34b, gpt-3.5, gpt-4)"
    print(f"| predictors | {gap} | cost to 90% | 95% | 100% |")
    print("|---|---|---|---|---|")
    for name, (gaps, reach) in rows.items():
        g = "/".join(f"{100 * x:.0f}" for x in np.median(gaps, axis=0))
        cost = np.median(reach, axis=0)
        cells = [f"{100 * x:.0f}%" if np.isfinite(x) else "never" for x in cost]
        print(f"| {name} | {g}% | {' | '.join(cells)} |", flush=True)
    rate = r[HELD_OUT].mean(axis=2)
    pairs = np.triu_indices(len(price), 1)
    print(f"\nthe decoders' rates correlate {np.corrcoef(rate.T)[pairs].mean():.2f} between two")
    for name, pred in predictors.items():
        gain = np.corrcoef(pred[:, -1] - pred[:, -2], rate[:, -1] - rate[:, -2])[0, 1]
        print(
            f"{name}: predictions correlate {np.corrcoef(pred.T)[pairs].mean():.2f} between two "
            f"decoders; the predicted gain of GPT-4 over GPT-3.5 {gain:.2f} with the true"
        )


if __name__ == "__main__":
    main()
