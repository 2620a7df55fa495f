"""The report of `howhard.compare.compare`: one table per observation setting, every method at
matched realised spend, and a plot of success against realised spend."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from howhard.reports._plot import pyplot, save_plot

if TYPE_CHECKING:
    from howhard.compare import Comparison

REPLAYED = ("sequential", "sequential-stream", "sequential-flat")  # scored over replays
HEADINGS = {
    "verifier": "With a verifier (every drawn sample's reward is seen, the best is returned)",
    "majority": "Majority vote only (the answers are seen, the majority answer is returned)",
}


def rounded_percent(x: float) -> str:
    """``x`` as a whole percentage; "n/a" when undefined (non-finite)."""
    return "n/a" if not math.isfinite(x) else f"{round(100 * x)}%"


def comparison_markdown(cmp: Comparison) -> str:
    """The comparison as Markdown: one table per observation setting."""
    lines = [
        f"# {cmp.title}",
        "",
        f"{cmp.n_queries} queries, {'binary' if cmp.binary else 'continuous'} rewards, at most "
        f"{cmp.max_per_query} samples per query; budgets and spend in {cmp.unit} per query. "
        f"Every method runs at the same realised mean spend B, to within "
        f"{100 * cmp.tolerance:g}% (the calibrated methods' nominal B tuned to it), except the "
        "rows marked at the spend they reach instead: ⚠ spends more, ↓ spends less (a knob "
        "that cannot get closer, or a sequential method that has stopped on every query "
        "before spending B). Sequential methods: mean ± standard error over "
        f"{cmp.n_replays} replays of each query's pooled samples in random order; the others "
        "exactly. Saved = compute saved vs uniform at equal success, 1 − spend / B_u, B_u the "
        "smallest uniform budget reaching the method's success (≥: uniform never reaches it "
        "within the cap, a lower bound); a success that ties uniform's at the same B (within "
        "two standard errors) saves only its spend difference from uniform at B, so uniform "
        "saves 0 even where its curve is flat (majority of 2 is no better than majority of 1). "
        "Share = saved / the oracle's saved at the same spend (for a marked row, the oracle "
        "re-run at that row's spend); the oracle allocates up front, so a sequential method, "
        "which sees its draws, can exceed 100%. ≥ or ≤ when one of the two savings is a lower "
        "bound, † when both are: then undetermined.",
    ]
    for name, table in cmp.tables.items():
        lines += [
            "",
            f"## {HEADINGS[name]}",
            "",
            "| B | method | success | spend | nominal B | saved | share of oracle's saving |",
            "|---|---|---|---|---|---|---|",
        ]
        for j, b in enumerate(cmp.budgets):
            for method, c in table.items():
                if j >= len(c.success):
                    continue
                se = f" ± {c.success_se[j]:.4f}" if method in REPLAYED else ""
                flag = " ⚠" if c.overspent[j] else " ↓" if c.underspent[j] else ""
                nominal = "" if c.nominal[j] is None else f"{c.nominal[j]:.2f}"
                saved = ("≥" if c.saving_lower[j] else "") + rounded_percent(c.saving[j])
                # a larger true oracle saving shrinks the share's size, whatever its sign
                shrinks = "≤" if c.saving[j] > 1e-9 else "≥" if c.saving[j] < -1e-9 else ""
                bound = {(True, False): "≥", (False, True): shrinks, (True, True): "†"}
                mark = bound.get((c.saving_lower[j], c.oracle_saving_lower[j]), "")
                mark = mark if math.isfinite(c.oracle_share[j]) else ""
                share = rounded_percent(c.oracle_share[j])
                share = share + mark if mark == "†" else mark + share
                lines.append(
                    f"| {b:g} | {method} | {c.success[j]:.3f}{se} | {c.spend[j]:.2f}{flag} | "
                    f"{nominal} | {saved} | {share} |"
                )
    for key, value in cmp.info.items():
        lines += ["", f"{key}: {value}"]
    return "\n".join(lines) + "\n"


def comparison_plot(cmp: Comparison, path: str | Path) -> Path:
    """Success vs realised spend, one panel per observation setting, one line per method (the
    same style in every panel), the legend in a column of its own."""
    plt = pyplot()
    panels = list(cmp.tables)
    methods = list(dict.fromkeys(m for t in cmp.tables.values() for m in t if m != "uniform"))
    style: dict[str, dict[str, Any]] = {  # the 10 default colours, then dashed
        m: {"color": f"C{i % 10}", "ls": "-" if i < 10 else "--"}
        for i, m in enumerate(m for m in methods if m != "oracle")
    }
    style["oracle"] = {"color": "k", "ls": "--"}
    style["uniform"] = {"color": "0.6", "ls": "-", "lw": 1, "marker": ""}
    fig, axes = plt.subplots(
        1,
        len(panels) + 1,
        figsize=(5.6 * len(panels) + 2.4, 4.4),
        gridspec_kw={"width_ratios": [5.6] * len(panels) + [2.4]},
    )
    for ax, name in zip(axes[:-1], panels, strict=True):
        curve = cmp.uniform_curves[name]
        ax.plot(np.arange(1, len(curve)), curve[1:], **style["uniform"])
        for method, c in cmp.tables[name].items():
            if method != "uniform":
                ax.errorbar(
                    c.spend, c.success, yerr=c.success_se, marker="o", ms=4, **style[method]
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"realised {cmp.unit} per query")
        ax.set_ylabel("success")
        ax.set_title(f"{cmp.title}: {name}", fontsize=9)
        ax.grid(alpha=0.3)
    key = axes[-1]
    key.axis("off")
    key.plot([], [], label="uniform (every integer b)", **style["uniform"])
    for method in methods:
        key.plot([], [], marker="o", ms=4, label=method, **style[method])
    return save_plot(fig, key, path)
