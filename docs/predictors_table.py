"""The tables of docs/predictors.md, from the outputs of docs/predictors.sh (no number is typed
in by hand). Run from any directory:

    python docs/predictors_table.py RESULTS --doc docs/predictors.md [--summary predictors.json]

RESULTS holds one directory per pool with ``title.txt``, ``origin.txt`` and, per feature source x
head, ``<tag>.json`` (``howhard evaluate --json`` on the held-out pool) and ``<tag>.cmd`` (the
train and evaluate commands). The tables replace what lies between the two marker lines of the
doc (the prose around them is kept); ``--summary`` also writes the numbers as JSON.

Columns, all on the held-out pool: the binomial log-loss per sample of λ̂(x); the share of the
Avg → Opt gap it closes, (Avg − model) / (Avg − Opt), Avg the constant training mean and Opt each
query's own rate; the trial-weighted expected calibration error of λ̂ over 10 quantile bins; the
compute saved vs uniform at equal success by the paper's greedy allocation on the predicted gains
at average budget B (≥: a lower bound, uniform never reaches that success); and the share of the
oracle's saving it reaches, mean saved over B ≤ 8 / the oracle's mean over the same B.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BEGIN = "<!-- tables: written by docs/predictors_table.py from docs/predictors.sh's outputs -->"
END = "<!-- end of tables -->"
BUDGETS = (1.0, 2.0, 4.0, 8.0, 16.0)
SOURCES = (
    "hidden",
    "ngrams",
    "minilm",
    "task",
    "hidden+minilm",
    "combined",
    "hidden-l18",
    "hf-hidden",
    "hf-hidden-l18",
    "text",  # the lora head reads the query texts
    "hidden-l15+hidden-l22",  # added after the lora row (the rows are numbered in the prose)
)
HEADS = ("logistic", "mlp", "tail", "stacked", "stacked-tail")
ARITHMETIC_GAP, ARITHMETIC_ORACLE, CRUX_GAP = 0.75, 0.5, 0.30


@dataclass(frozen=True)
class Row:
    tag: str  # <features>-<head> as docs/predictors.sh names it
    features: str  # what the predictor was trained on (the kept one for "combined")
    head: str
    loss: float
    avg: float
    opt: float
    gap_closed: float
    ece: float
    saved: dict[float, float]  # budget -> compute saved vs uniform
    lower_bound: dict[float, bool]
    oracle: dict[float, float]  # budget -> the oracle's compute saved
    commands: list[str]

    def oracle_share(self) -> float:
        """Mean saved over B ≤ 8 / the oracle's mean saved over the same budgets."""
        bs = [b for b in self.saved if b <= 8]
        oracle = sum(self.oracle[b] for b in bs)
        return sum(self.saved[b] for b in bs) / oracle if oracle > 0 else float("nan")


def read_row(path: Path) -> Row:
    """One row from ``<tag>.json`` (evaluate's JSON) and ``<tag>.cmd`` beside it."""
    data = json.loads(path.read_text())
    p = data["predictor"]
    budgets = [float(b) for b in data["budgets"]]

    def by_budget(values: list[Any]) -> dict[float, Any]:
        return dict(zip(budgets, values, strict=True))

    return Row(
        tag=path.stem,
        features=p["features"],
        head=p["head"],
        loss=p["eval_loss"]["model"],
        avg=p["eval_loss"]["avg"],
        opt=p["eval_loss"]["opt"],
        gap_closed=p["eval_loss"]["gap_closed"],
        ece=p["calibration"]["ece"],
        saved=by_budget(data["saving_vs_uniform"]["adaptive"]),
        lower_bound=by_budget(data["saving_is_lower_bound"]["adaptive"]),
        oracle=by_budget(data["saving_vs_uniform"]["oracle"]),
        commands=path.with_suffix(".cmd").read_text().splitlines(),
    )


def order(row: Row) -> tuple[int, int]:
    if row.head == "lora":  # reads the query texts, whatever features its tag names
        return SOURCES.index("text"), 0
    head = max((h for h in HEADS if row.tag.endswith("-" + h)), key=len, default="")
    source = row.tag.removesuffix("-" + head)
    if head.startswith("stacked"):  # after every other row, by source, then by head
        return len(SOURCES) + len(source.split("+")), HEADS.index(head)
    first = SOURCES.index(source) if source in SOURCES else SOURCES.index("combined")
    return first, HEADS.index(head) if head in HEADS else len(HEADS)


def pct(x: float) -> str:
    return f"{round(100 * x) + 0:.0f}%"  # + 0: no "-0%"


def pool_table(name: str, directory: Path, rows: list[Row]) -> list[str]:
    """The Markdown section of one pool: title, origin, table, the commands of each row."""
    budgets = [b for b in BUDGETS if any(b in r.saved for r in rows)]
    best = {b: max(r.saved[b] for r in rows) for b in budgets}
    first = rows[0]
    lines = [
        f"### {(directory / 'title.txt').read_text().strip()}",
        "",
        f"Pools: {(directory / 'origin.txt').read_text().strip()}. Held-out log-loss of the "
        f"constant training mean (Avg) {first.avg:.4f}, of each query's own rate (Opt) "
        f"{first.opt:.4f}.",
        "",
        "| # | features | head | log-loss | gap closed | ECE | "
        + " | ".join(f"saved B={b:g}" for b in budgets)
        + " | of oracle (B ≤ 8) |",
        "|---|---|---|---|---|---|" + "---|" * len(budgets) + "---|",
    ]
    for i, r in enumerate(rows, 1):
        cells = []
        for b in budgets:
            text = ("≥" if r.lower_bound[b] else "") + pct(r.saved[b])
            cells.append(f"**{text}**" if r.saved[b] == best[b] > 0 else text)
        features = r.features + (
            " (kept of the combinations)" if r.tag.startswith("combined") else ""
        )
        lines.append(
            f"| {i} | {features} | {r.head} | {r.loss:.4f} | {pct(r.gap_closed)} | "
            f"{r.ece:.3f} | " + " | ".join(cells) + f" | {pct(r.oracle_share())} |"
        )
    lines.append(
        "| | oracle (true rates) | | | | | "
        + " | ".join(pct(first.oracle[b]) for b in budgets)
        + " | 100% |"
    )
    lines += ["", "Commands (WORK is the work directory of docs/predictors.sh):", ""]
    for i, r in enumerate(rows, 1):
        lines.append(f"{i}. `{r.commands[0]}`  ")
        lines.extend(f"   `{c}`" for c in r.commands[1:])
    return [*lines, ""]


def targets(pools: dict[str, list[Row]]) -> list[str]:
    """Issue 14's targets, checked on the rows."""
    lines = ["### Issue 14's targets, checked", ""]
    for name, rows in pools.items():
        if not name.endswith("arithmetic"):
            continue
        hand = next((r for r in rows if r.tag == "task-logistic"), None)
        if hand is None:
            continue
        lines.append(
            f"{name}: learned predictors without hand features vs the task-feature logistic "
            f"(≥ {pct(ARITHMETIC_GAP)} of the gap, ≥ {pct(ARITHMETIC_ORACLE)} of the oracle's "
            "saving over B ≤ 8, more saved than the task logistic at every budget evaluated):"
        )
        lines.append("")
        for r in rows:
            if "task" in r.features:
                continue
            wins = sum(r.saved[b] > hand.saved[b] for b in r.saved)
            met = (
                wins == len(r.saved)
                and r.oracle_share() >= ARITHMETIC_ORACLE
                and r.gap_closed >= ARITHMETIC_GAP
            )
            lines.append(
                f"- {r.features} {r.head}: beats it at {wins} of {len(r.saved)} budgets; "
                f"{pct(r.oracle_share())} of the oracle's saving; {pct(r.gap_closed)} of the gap "
                f"closed: {'met' if met else 'not met'}"
            )
        lines.append("")
    for name, rows in pools.items():
        if not name.startswith("cruxeval"):
            continue
        top = max(rows, key=lambda r: r.gap_closed)
        lines.append(
            f"- {name}: the most of the gap closed is {pct(top.gap_closed)} ({top.features} "
            f"{top.head}); target ≥ {pct(CRUX_GAP)}: "
            + ("met" if top.gap_closed >= CRUX_GAP else "not met")
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="docs/predictors.sh's WORK/results")
    parser.add_argument("--doc", type=Path, required=True, help="the Markdown file to update")
    parser.add_argument("--order", default="", help="pool names in table order, commas")
    parser.add_argument("--summary", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    named = [n for n in args.order.split(",") if n]
    found = sorted(d.name for d in args.results.iterdir() if any(d.glob("*.json")))
    pools = {
        name: sorted((read_row(p) for p in (args.results / name).glob("*.json")), key=order)
        for name in [n for n in named if n in found] + [n for n in found if n not in named]
    }
    lines = [BEGIN, ""]
    for name, rows in pools.items():
        lines += pool_table(name, args.results / name, rows)
    lines += [*targets(pools), END]
    text = args.doc.read_text() if args.doc.exists() else f"# Predictors\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{args.doc} lacks the marker lines {BEGIN!r} and {END!r}; add them")
    head, _, rest = text.partition(BEGIN)
    tail = rest.partition(END)[2]
    args.doc.write_text(head + "\n".join(lines) + tail)
    if args.summary is not None:
        summary = {
            name: [asdict(r) | {"oracle_share": r.oracle_share()} for r in rows]
            for name, rows in pools.items()
        }
        args.summary.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.doc} ({sum(map(len, pools.values()))} rows from {len(pools)} pools)")


if __name__ == "__main__":
    main()
