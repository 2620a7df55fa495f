"""Stopping rules over the CRUXEval menu: cost to reach 95% and 100% of GPT-4's success.

Five decoders of the shared CRUXEval pools (10 samples per problem at T = 0.8) with the issue's
price sheet; problems 0-399 fit and calibrate every family, problems 400-799 score it. For each
budget b the knob is `howhard.menu.calibrate`d on 0-399 (random sample orders) and the policy is
replayed on 400-799 (other random orders); the cost to reach a success level is read off the
held-out (mean cost, success) points, linearly between neighbours.

    PYTHONPATH=src python docs/cruxeval-stopping.py                       # every family
    PYTHONPATH=src python docs/cruxeval-stopping.py --families cascade --observe verifier
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from howhard.menu import MenuData, aligned, calibrate, random_orders, replay
from howhard.pool import read_pool
from howhard.stopping import (
    ESC,
    FAMILIES,
    AdaptiveConsistency,
    Cascade,
)

DATA = Path("/work/shared/data/cruxeval/output-t0.8")
MENU = {
    "codellama-7b": 0.2,
    "codellama-13b": 0.3,
    "codellama-34b": 0.8,
    "gpt-3.5-turbo-0613": 2.0,
    "gpt-4-0613": 60.0,
}
BUDGETS = (1, 2, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32, 36, 40, 45, 50, 60, 70, 80)


def load() -> tuple[MenuData, MenuData]:
    pools = aligned([read_pool(DATA / f"{name}.jsonl.gz") for name in MENU])
    order = np.argsort([int(i.rsplit("_", 1)[1]) for i in pools[0].ids], kind="stable")
    costs = [
        [np.full(len(r), c) for r in p.rewards] for p, c in zip(pools, MENU.values(), strict=True)
    ]
    data = MenuData(pools, costs, np.full((len(pools[0]), len(pools)), np.nan))
    return data.subset(order[:400]), data.subset(order[400:])


def variants() -> dict[str, object]:
    """Every family of `FAMILIES` with its defaults, plus the single-decoder rules on
    GPT-3.5 and GPT-4, the cascade on (GPT-3.5, GPT-4), and answer normalisation."""
    out: dict[str, object] = {name: make() for name, make in FAMILIES.items()}
    for d, short in ((3, "gpt-3.5"), (4, "gpt-4")):
        out[f"esc[{short}]"] = ESC(decoder=d)
        out[f"adaptive-consistency[{short}]"] = AdaptiveConsistency(decoder=d)
    out["cascade[gpt-3.5>gpt-4]"] = Cascade(chain=(3, 4))
    out["cascade[gpt-3.5>gpt-4]+normalize"] = Cascade(chain=(3, 4), normalize=True)
    out["cascade[gpt-3.5x5>gpt-4]"] = Cascade(k=5, chain=(3, 4))
    return out


def reach(cost: list[float], success: list[float], level: float) -> float | None:
    """The least mean cost at which the held-out curve reaches ``level`` (linear between
    points sorted by cost), None when it never does."""
    previous: tuple[float, float] | None = None
    for c, s in sorted(zip(cost, success, strict=True)):
        if s >= level:
            if previous is None:
                return c
            c0, s0 = previous
            return c0 + (level - s0) * (c - c0) / (s - s0)
        previous = (c, s)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="", help="comma-separated names (default all)")
    parser.add_argument("--observe", default="majority,verifier")
    parser.add_argument("--json", type=Path, help="write the curves here")
    args = parser.parse_args()
    cal, test = load()
    gpt4 = float(test.pools[4].success_rate().mean())
    cal_orders = random_orders(cal.pools, np.random.default_rng(0))
    test_orders = random_orders(test.pools, np.random.default_rng(1))
    chosen = variants()
    if args.families:
        chosen = {k: v for k, v in chosen.items() if k in args.families.split(",")}
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    print(f"GPT-4 one-sample success on 400-799: {gpt4:.3f} at cost 60")
    for observe in args.observe.split(","):
        results[observe] = {}
        print(f"\n[{observe}]  method: cost for 95% ({0.95 * gpt4:.3f}) | 100% ({gpt4:.3f})")
        for name, family in chosen.items():
            start = time.time()
            family.fit(cal, observe)  # type: ignore[attr-defined]
            cost, success = [], []
            for budget in BUDGETS:
                knob = calibrate(family, cal, budget, observe, cal_orders)  # type: ignore[arg-type]
                got = replay(
                    family.at(knob),  # type: ignore[attr-defined]
                    test.pools,
                    test.costs,
                    test.predictions,
                    test_orders,
                    observe,
                )
                cost.append(got.mean_cost)
                success.append(got.success)
            results[observe][name] = {"cost": cost, "success": success}
            at95, at100 = reach(cost, success, 0.95 * gpt4), reach(cost, success, gpt4)

            def show(x: float | None) -> str:
                return "never" if x is None else f"{x:.1f} ({x / 60:.0%})"

            best = max(success)
            print(
                f"  {name:38s} {show(at95):>14s} | {show(at100):>14s}   best {best:.3f} "
                f"[{time.time() - start:.0f}s]",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
