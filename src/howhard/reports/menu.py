"""Reports of a menu comparison (`howhard.menu_compare`) and of a menu's predictors
(`howhard.runs.menu`): Markdown tables and plots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from howhard.reports._plot import pyplot, save_plot
from howhard.reports.evaluation import interval_text

if TYPE_CHECKING:
    from howhard.menu_compare import MenuComparison, Reached
    from howhard.runs.menu import MenuEvaluation

HEADINGS = {
    "verifier": "With a verifier (every drawn sample's reward is seen, the best is returned)",
    "majority": "Majority vote only (the answers are seen, the majority answer is returned)",
}


def _reach(r: Reached) -> tuple[str, str]:
    if r.cost is None:
        return "never", "n/a"
    mark = "≤ " if r.at_most else ""
    share = "" if r.share_of_reference is None else f" ({100 * r.share_of_reference:.0f}%)"
    cop = "n/a" if r.cost_of_pass is None else f"{mark}{r.cost_of_pass:.4g}"
    return f"{mark}{r.cost:.4g}{share}", cop


def menu_markdown(cmp: MenuComparison) -> str:
    """One section per observation mode: the cost each method needs to reach each target, then
    every method's curve."""
    prices = ", ".join(f"{n} {c:.4g}" for n, c in zip(cmp.decoders, cmp.sample_cost, strict=True))
    lines = [
        f"# {cmp.title}",
        "",
        f"{cmp.n_queries} queries; mean price per sample: {prices}. Costs are mean cost per "
        f"query. Targets are shares of the one-sample success of {cmp.reference} (the costliest "
        f"decoder, {max(cmp.sample_cost):.4g} per sample); the cost to reach one is interpolated "
        "linearly between a curve's points (in brackets: as a share of "
        f"{cmp.reference}'s one-sample cost; ≤: the curve's cheapest point already reaches it). "
        "Cost-of-pass = cost / success there. Replayed policies: mean ± standard error over "
        f"{cmp.n_replays} random sample orders; the other methods exactly.",
    ]
    for mode, table in cmp.tables.items():
        ref = cmp.reference_success[mode]
        header = " | ".join(f"cost to {100 * t:g}% | cost-of-pass" for t in cmp.targets)
        lines += [
            "",
            f"## {HEADINGS[mode]}",
            "",
            f"{cmp.reference} one-sample success: {ref:.3f}; targets "
            + ", ".join(f"{100 * t:g}% = {t * ref:.3f}" for t in cmp.targets),
            "",
            f"| method | {header} |",
            "|---|" + "---|---|" * len(cmp.targets),
        ]
        for method, reached in cmp.reached[mode].items():
            cells = " | ".join(" | ".join(_reach(r)) for r in reached)
            lines.append(f"| {method} | {cells} |")
        lines += ["", "| method | (mean cost, success) in budget order |", "|---|---|"]
        for method, c in table.items():
            points = "; ".join(
                f"({cost:.4g}, {s:.3f}{f' ± {se:.3f}' if se else ''})"
                for cost, s, se in zip(c.cost, c.success, c.success_se, strict=True)
            )
            lines.append(f"| {method} | {points} |")
    lines += ["", "Budgets: " + ", ".join(f"{b:.4g}" for b in cmp.budgets)]
    for key, value in cmp.info.items():
        lines += ["", f"{key}: {value}"]
    return "\n".join(lines) + "\n"


def menu_plot(cmp: MenuComparison, path: str | Path) -> Path:
    """Success vs mean cost per query (log x), one panel per observation mode, one line per
    method (single decoders thin and dashed, oracles black), the targets as dotted lines."""
    plt = pyplot()
    modes = list(cmp.tables)
    methods = list(dict.fromkeys(m for t in cmp.tables.values() for m in t))
    alone = [m for m in methods if m.endswith(" best-of-k")]
    others = [m for m in methods if m not in alone and not m.startswith("oracle-")]
    style: dict[str, dict[str, Any]] = {
        m: {"color": f"C{i % 10}", "ls": "-" if i < 10 else "-."} for i, m in enumerate(others)
    }
    style |= {
        m: {"color": f"C{(len(others) + i) % 10}", "ls": ":", "lw": 1} for i, m in enumerate(alone)
    }
    style |= {
        "oracle-routing": {"color": "k", "ls": "--"},
        "oracle-joint": {"color": "k", "ls": "-."},
    }
    fig, axes = plt.subplots(
        1,
        len(modes) + 1,
        figsize=(5.6 * len(modes) + 2.8, 4.6),
        gridspec_kw={"width_ratios": [5.6] * len(modes) + [2.8]},
    )
    for ax, mode in zip(axes[:-1], modes, strict=True):
        for method, c in cmp.tables[mode].items():
            order = np.argsort(c.cost, kind="stable")
            ax.errorbar(
                np.asarray(c.cost)[order],
                np.asarray(c.success)[order],
                yerr=np.asarray(c.success_se)[order],
                marker="o",
                ms=3,
                **style[method],
            )
        for t in cmp.targets:
            ax.axhline(t * cmp.reference_success[mode], color="0.5", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("mean cost per query")
        ax.set_ylabel("success")
        ax.set_title(f"{cmp.title}: {mode}", fontsize=9)
        ax.grid(alpha=0.3)
    key = axes[-1]
    key.axis("off")
    for method in methods:
        key.plot([], [], marker="o", ms=3, label=method, **style[method])
    key.plot([], [], color="0.5", ls=":", lw=0.8, label=f"targets ({cmp.reference})")
    return save_plot(fig, key, path)


def menu_evaluation_markdown(ev: MenuEvaluation) -> str:
    """One row per decoder: its pool's success, its predictor's mean prediction, log-loss
    against the Avg and Opt baselines and the calibration error."""
    lines = [
        f"# {ev.title}",
        "",
        "Log-loss: binomial per sample (lower is better); Avg = the training mean for every "
        "query, Opt = each query's own rate; gap closed = (Avg - model) / (Avg - Opt), with "
        "[low, high] its 95% interval over resamples of the queries where computed; own rate: "
        "the same share with Avg at this pool's own success rate (the best constant here), "
        "which gives no credit for a difference between the training and this pool's rates. "
        "ECE: expected calibration error over 10 quantile bins of the prediction.",
        "",
        "| decoder | cost/sample | queries | success | predictor | predicted | model | Avg "
        "| Opt | gap closed | own rate | ECE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in ev.decoders:
        loss = d.loss or {}

        def num(key: str, loss: dict[str, float] = loss) -> str:
            return f"{loss[key]:.4f}" if key in loss else ""

        gap_text = share_text(loss.get("gap_closed"))
        if gap_text and d.gap_closed_interval:
            gap_text += interval_text(d.gap_closed_interval)
        own_text = share_text((d.loss_pool_mean or {}).get("gap_closed"))
        ece = "" if d.calibration is None else f"{d.calibration['ece']:.3f}"
        predicted = "" if d.predicted is None else f"{d.predicted:.3f}"
        who = "none" if d.predictor is None else f"{d.predictor} ({d.head}, {d.features})"
        lines.append(
            f"| {d.name} | {d.sample_cost:.4g} | {d.n_queries} | {d.success:.3f} | {who} | "
            f"{predicted} | {num('model')} | {num('avg')} | {num('opt')} | {gap_text} | "
            f"{own_text} | {ece} |"
        )
    return "\n".join(lines) + "\n"


def share_text(share: float | None) -> str:
    """A share of the gap as a whole percentage, blank when there is none."""
    return "" if share is None or not np.isfinite(share) else f"{100 * share:.0f}%"


def menu_evaluation_plot(ev: MenuEvaluation, path: str | Path) -> Path:
    """Reliability: per decoder, mean observed success against mean prediction per bin."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="calibrated")
    for i, d in enumerate(ev.decoders):
        if d.calibration is None:
            continue
        bins = d.calibration["bins"]
        ax.plot(
            [b["predicted"] for b in bins],
            [b["observed"] for b in bins],
            marker="o",
            ms=3,
            color=f"C{i % 10}",
            label=d.name,
        )
    ax.set_xlabel("predicted one-sample success")
    ax.set_ylabel("observed")
    ax.set_title(ev.title, fontsize=9)
    return save_plot(fig, ax, path)
