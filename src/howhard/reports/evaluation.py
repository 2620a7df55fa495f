"""The report of `howhard.evaluate.evaluate`: success and compute saved per budget, success under
each reranker, the predictor's loss against the paper's baselines and its calibration."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from howhard.reports._plot import pyplot, save_plot

if TYPE_CHECKING:
    from howhard.evaluate import Evaluation


def evaluation_markdown(ev: Evaluation, title: str = "howhard evaluation") -> str:
    """The evaluation as a Markdown report."""
    methods = list(ev.curves)
    lines = [
        f"# {title}",
        "",
        f"{ev.n_queries} queries, {'binary' if ev.binary else 'continuous'} rewards, "
        f"at most {ev.max_per_query} samples per query. Success = mean expected best-of-b reward "
        "under each allocation; spend = realised average samples per query.",
        "",
        "| B | " + " | ".join(f"{m} success (spend)" for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for j, b in enumerate(ev.budgets):
        cells = [f"{ev.curves[m][j]:.3f} ({ev.spend[m][j]:.2f})" for m in methods]
        lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
    sure = (
        f"; [low, high]: the 95% interval over {ev.bootstrap} resamples of the queries"
        if ev.saving_interval
        else ""
    )
    lines += ["", f"Compute saved vs uniform at equal success (≥: uniform never reaches it{sure}):"]
    lines += ["", "| B | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for j, b in enumerate(ev.budgets):
        cells = [
            ("≥" if ev.saving_is_lower_bound[m][j] else "")
            + f"{round(100 * ev.saving_vs_uniform[m][j])}%"
            + (interval_text(ev.saving_interval[m][j]) if m in ev.saving_interval else "")
            for m in methods
        ]
        lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
    for name, curves in ev.reranked.items():
        lines += [
            "",
            f"Success when the answer is chosen by the {name} reranker (same allocations):",
            "",
            "| B | " + " | ".join(curves) + " |",
            "|---|" + "---|" * len(curves),
        ]
        for j, b in enumerate(ev.budgets):
            lines.append(f"| {b:g} | " + " | ".join(f"{c[j]:.3f}" for c in curves.values()) + " |")
    if ev.predictor:
        lines += _predictor_lines(ev.predictor)
    return "\n".join(lines) + "\n"


def interval_text(low_high: list[float]) -> str:
    """`` [low, high]`` in whole percent (nan where undefined; never ``-0``)."""
    ends = [f"{100 * v:.0f}" for v in low_high]
    return " [{}, {}]".format(*("0" if e == "-0" else e for e in ends))


def loss_lines(loss: dict[str, float], interval: list[float] | None = None) -> list[str]:
    """The table of a predictor's loss against the Avg and Opt baselines (`loss_table`), with
    the 95% interval of the share of the gap closed when given."""
    return [
        "| model | Avg | Opt | share of the Avg→Opt gap closed |",
        "|---|---|---|---|",
        f"| {loss['model']:.4g} | {loss['avg']:.4g} | {loss['opt']:.4g} | "
        f"{100 * loss['gap_closed']:.0f}%{interval_text(interval) if interval else ''} |",
    ]


def _predictor_lines(info: dict[str, Any]) -> list[str]:
    lines = []
    loss = info.get("eval_loss")
    if loss is not None:
        lines += [
            "",
            f"Predictor ({info['head']} head on {info['features']} features): "
            f"{info.get('loss', 'binomial log-loss per sample')} on this pool, against the "
            "paper's baselines (Avg: the training mean for every query; Opt: each query's own "
            "empirical values)"
            + (
                "; [low, high]: its 95% interval over resamples of the queries."
                if info.get("gap_closed_interval")
                else "."
            ),
            "",
            *loss_lines(loss, info.get("gap_closed_interval")),
        ]
    own = info.get("eval_loss_pool_mean")
    if own is not None:
        lines += [
            "",
            f"Success rate {own['pool_mean']:.3g} on this pool, {own['train_mean']:.3g} in "
            f"training. With Avg at this pool's own rate (the best constant here) the predictor "
            f"closes {100 * own['gap_closed']:.0f}% of the gap: the share above also credits it "
            "with any difference between the two rates.",
        ]
    lines += [
        "",
        f"Calibration of the predicted one-sample reward (quantile bins; expected calibration "
        f"error {info['calibration']['ece']:.3f}):",
        "",
        "| predicted | observed mean reward | queries |",
        "|---|---|---|",
    ]
    lines += [
        f"| {b['predicted']:.3f} | {b['observed']:.3f} | {b['queries']} |"
        for b in info["calibration"]["bins"]
    ]
    return lines


def evaluation_plot(ev: Evaluation, path: str | Path, title: str = "") -> Path:
    """Success vs realised average samples per query, one line per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ks = np.arange(ev.max_per_query + 1)
    ax.plot(ks[1:], ev.uniform_curve[1:], color="0.6", lw=1, label="uniform (every integer b)")
    for method in ev.curves:
        ax.plot(ev.spend[method], ev.curves[method], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("average samples per query")
    ax.set_ylabel("success (expected best-of-b reward)")
    ax.set_title(title or "success vs average budget")
    return save_plot(fig, ax, path)
