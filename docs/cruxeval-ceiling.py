"""How far can reading a cheap probe's answers go on the CRUXEval menu, with majority vote only?

The ceiling of every "probe cheap decoders, escalate to GPT-4 when the probe looks wrong" policy
(cascade, escalate, probe-escalate, a gate on the probe's agreement): suppose a detector tells
*perfectly* whether the probe's majority answer is right. The policy returns that answer when it
is right, and escalates a share f of the queries where it is wrong to one GPT-4 sample. The
detector reads the probe, not GPT-4, so it cannot tell which wrong queries GPT-4 solves: it
escalates them at random (`random`). With q the problem's GPT-4 one-sample rate and w the
queries where the probe's answer is wrong (a tie counts by the share of tied answers that are
right, c_q),

    success(f) = mean_q c_q + f · Σ_{q ∈ w} (q_4 − c_q) / n,   cost(f) = cost(probe) + 60 f |w| / n.

`knows gpt-4` also knows GPT-4's rate on the wrong queries and escalates them best first: the
limit of a gate on both sides. The script prints the share of GPT-4's cost (60 per query) each
needs to reach 90 / 95 / 100% of GPT-4's one-sample success on problems 400-799 (the menu
report's held-out half), averaged over random sample orders of the pools.

    python docs/cruxeval-ceiling.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from howhard.pool import read_pool

DATA = Path(__file__).resolve().parents[2] / "shared/data/cruxeval/output-t0.8"
PRICE = {"codellama-7b": 0.2, "codellama-13b": 0.3, "codellama-34b": 0.8, "gpt-3.5": 2.0}
FILES = {
    "codellama-7b": "codellama-7b",
    "codellama-13b": "codellama-13b",
    "codellama-34b": "codellama-34b",
    "gpt-3.5": "gpt-3.5-turbo-0613",
    "gpt-4": "gpt-4-0613",
}
PROBES = {
    "gpt-3.5 x1": {"gpt-3.5": 1},
    "gpt-3.5 x3": {"gpt-3.5": 3},
    "codellama-34b x1 + gpt-3.5 x1": {"codellama-34b": 1, "gpt-3.5": 1},
    "each cheap decoder x1": dict.fromkeys(PRICE, 1),
    "each cheap decoder x3": dict.fromkeys(PRICE, 3),
}
TARGETS = (0.90, 0.95, 1.00)
ORDERS = 20


def load() -> dict[str, list[dict]]:
    """Each decoder's rows of problems 400-799 (ids sample_400 .. sample_799), answers read as
    `howhard.pool.read_pool` reads them (one spelling per value)."""
    out = {}
    for short, name in FILES.items():
        pool = read_pool(DATA / f"{name}.jsonl.gz")
        columns = zip(pool.ids, pool.rewards, pool.extras, strict=True)
        rows = {i: {**e, "rewards": r} for i, r, e in columns}
        out[short] = [rows[f"sample_{i}"] for i in range(400, 800)]
    return out


def majority_right(rows: list[dict], probe: dict[str, int], rng: np.random.Generator) -> float:
    """P(the probe's majority answer is right) for one problem: a random k of each decoder's
    samples; ties share the credit; no answer at all is wrong."""
    votes: dict[str, int] = {}
    right: dict[str, float] = {}
    for k, row in zip(probe.values(), rows, strict=True):
        for j in rng.permutation(len(row["answers"]))[:k]:
            a = row["answers"][j]
            if a is not None:
                votes[a] = votes.get(a, 0) + 1
                right[a] = row["rewards"][j]
    if not votes:
        return 0.0
    top = max(votes.values())
    return float(np.mean([right[a] for a, v in votes.items() if v == top]))


def cost_to_reach(c: np.ndarray, q4: np.ndarray, probe_cost: float, ordered: bool) -> list[float]:
    """Share of GPT-4's cost to reach each of TARGETS (inf: never), escalating the probe's
    wrong queries at random (the expectation) or best first by q4 (``ordered``)."""
    wrong = c < 1.0
    gains = (q4 - c)[wrong] / c.size
    if ordered:
        gains = np.sort(gains)[::-1]
    else:
        gains = np.full(gains.size, gains.mean() if gains.size else 0.0)
    success = c.mean() + np.concatenate([[0.0], np.cumsum(gains)])
    spend = probe_cost + 60.0 * np.arange(gains.size + 1) / c.size
    out = []
    for t in TARGETS:
        goal = t * q4.mean()
        hit = np.flatnonzero(success >= goal)
        if hit.size == 0:
            out.append(np.inf)
        elif hit[0] == 0:
            out.append(spend[0] / 60.0)
        else:
            i = hit[0]  # linear between the neighbours
            frac = (goal - success[i - 1]) / (success[i] - success[i - 1])
            out.append((spend[i - 1] + frac * (spend[i] - spend[i - 1])) / 60.0)
    return out


def main() -> None:
    pools = load()
    q4 = np.array([np.mean(r["rewards"]) for r in pools["gpt-4"]])
    rng = np.random.default_rng(0)
    print(f"GPT-4 one-sample success on problems 400-799: {q4.mean():.3f}\n")
    print("| probe | probe's cost | probe's majority right | detector | cost to 90% | 95% | 100% |")
    print("|---|---|---|---|---|---|---|")
    for label, probe in PROBES.items():
        probe_cost = sum(PRICE[d] * k for d, k in probe.items())
        shares: dict[bool, list[list[float]]] = {False: [], True: []}
        right = []
        for _ in range(ORDERS):
            c = np.array(
                [majority_right([pools[d][i] for d in probe], probe, rng) for i in range(q4.size)]
            )
            right.append(c.mean())
            for ordered in shares:
                shares[ordered].append(cost_to_reach(c, q4, probe_cost, ordered))
        for ordered, name in ((False, "random"), (True, "knows gpt-4")):
            mean = np.mean(shares[ordered], axis=0)
            cells = " | ".join("never" if np.isinf(s) else f"{100 * s:.0f}%" for s in mean)
            print(
                f"| {label} | {probe_cost:g} | {np.mean(right):.3f} | {name} | {cells} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
