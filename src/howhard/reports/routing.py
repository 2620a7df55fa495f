"""The report of `howhard.routing.evaluate_routing`: success against strong-call share, the
share each method needs to match all-strong, and the router's loss."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from howhard.reports._plot import pyplot, save_plot
from howhard.reports.evaluation import loss_lines

if TYPE_CHECKING:
    from howhard.routing import RoutingEvaluation


def share_percent(x: float | None) -> str:
    """A share to one decimal as a percentage; "never" for None (no share reaches the target)."""
    return "never" if x is None else f"{100 * x:.1f}%"


def routing_markdown(ev: RoutingEvaluation, title: str = "howhard routing evaluation") -> str:
    """The routing evaluation as a Markdown report."""
    methods = list(ev.curves)
    calibrated = bool(ev.calibrated_share)
    head = ["share"] + [f"{m} success" for m in methods]
    head += ["calibrated success (realised share)"] if calibrated else []
    lines = [
        f"# {title}",
        "",
        f"{ev.n_queries} queries, {'binary' if ev.binary else 'continuous'} rewards "
        f"({ev.weak_samples:g} weak and {ev.strong_samples:g} strong samples per query on "
        f"average). All-weak success {ev.all_weak:.3f}, all-strong {ev.all_strong:.3f}; the "
        f"oracle's ceiling is {ev.oracle_best:.3f} with {share_percent(ev.positive_gain_share)} "
        "of queries routed (those where strong does better).",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---|" * (len(head) - 1),
    ]
    for j, x in enumerate(ev.shares):
        cells = [f"{100 * x:g}%"] + [f"{ev.curves[m][j]:.3f}" for m in methods]
        if calibrated:
            cells.append(
                f"{ev.calibrated_success[j]:.3f} ({share_percent(ev.calibrated_share[j])})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Smallest strong-call share whose success matches all-strong:",
        "",
        "| " + " | ".join(methods) + " |",
        "|" + "---|" * len(methods),
        "| " + " | ".join(share_percent(ev.share_to_match_strong[m]) for m in methods) + " |",
    ]
    loss = ev.info.get("eval_loss")
    if loss is not None:
        lines += [
            "",
            f"Router ({ev.info['head']} head on {ev.info['features']} features): log-loss of "
            "P(strong beats weak) per (strong, weak) sample pair on this pool, against the "
            "training mean (Avg) and each query's own pair frequency (Opt).",
            "",
            *loss_lines(loss),
        ]
    return "\n".join(lines) + "\n"


def routing_plot(ev: RoutingEvaluation, path: str | Path, title: str = "") -> Path:
    """Success vs strong-call share, one line per method, all-weak and all-strong as levels."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    start = [] if 0.0 in ev.shares else [0.0]  # every method is all-weak at share 0
    for method, curve in ev.curves.items():
        ax.plot(start + ev.shares, [ev.all_weak] * len(start) + curve, marker="o", label=method)
    if ev.calibrated_share:
        ax.scatter(ev.calibrated_share, ev.calibrated_success, marker="x", color="k", zorder=3)
        ax.plot([], [], "kx", label="calibrated (realised share)")
    ax.axhline(ev.all_strong, color="0.4", ls="--", lw=1, label="all strong")
    ax.axhline(ev.all_weak, color="0.6", ls=":", lw=1, label="all weak")
    ax.set_xlabel("share of queries sent to the strong decoder")
    ax.set_ylabel("success (mean reward)")
    ax.set_title(title or "routing: success vs strong-call share")
    return save_plot(fig, ax, path)
