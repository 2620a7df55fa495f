"""The report of `howhard.bestof.best_of_k`: success vs k under each chooser, and the caps."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from howhard.reports._plot import pyplot, save_plot

if TYPE_CHECKING:
    from howhard.bestof import BestOfK

LABELS = {
    "oracle": "oracle (the benchmark's tests)",
    "verifier": "verifier (top score)",
    "majority": "majority (largest answer group)",
    "codet": "CodeT (dual agreement)",
    "random": "random",
}


def bestof_markdown(bk: BestOfK, ks: tuple[int, ...], title: str = "best-of-k") -> str:
    """The curves at ``ks`` (those <= kmax, and kmax), the caps and where the top groups stand."""
    methods = list(bk.curves)
    shown = sorted({k for k in ks if k <= bk.kmax} | {bk.kmax})
    reward = "binary" if bk.binary else "continuous"
    lines = [
        f"# {title}",
        "",
        f"{bk.n_queries} queries, {reward} rewards. Success = mean over queries of the exact "
        "expected reward of the one sample returned from k drawn without replacement from the "
        "pool, by each chooser (ties uniform)"
        + (
            f"; {LABELS['codet']} is a Monte-Carlo estimate from {bk.draws} random orders of each "
            f"query's samples (seed {bk.seed}; standard error at most {bk.mc_error['codet']:.4f}, "
            f"exact at k = {bk.kmax})."
            if "codet" in bk.curves
            else "."
        ),
        "",
        "| k | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for k in shown:
        lines.append(f"| {k} | " + " | ".join(f"{bk.at(m, k):.3f}" for m in methods) + " |")
    lines += [
        "",
        "Peak (the best k of each chooser, and its success): "
        + ", ".join(f"{m} k = {bk.peak_k[m]} ({bk.at(m, bk.peak_k[m]):.3f})" for m in methods)
        + ".",
        "",
        f"Queries with at least one correct sample among the {bk.kmax}: {bk.solvable:.3f} "
        "(the oracle's limit). What each chooser ranks first among all of them, on those queries "
        "(the cap: resampling cannot fix a query whose top group is wrong):",
        "",
        "| chooser | top group all correct | mixed | none correct | success at k = "
        f"{bk.kmax} | gap to the oracle | queries it cannot rank (of {bk.n_queries}) |",
        "|---|---|---|---|---|---|---|",
    ]
    oracle = bk.at("oracle", bk.kmax)
    for m, g in bk.top_groups.items():
        final = bk.at(m, bk.kmax)
        lines.append(
            f"| {m} | {g.all_correct} | {g.mixed} | {g.none_correct} | {final:.3f} | "
            f"{oracle - final:.3f} | {bk.blind[m]} |"
        )
    return "\n".join(lines) + "\n"


def bestof_plot(bk: BestOfK, path: str | Path, title: str = "") -> Path:
    """Success vs k (log scale), one line per chooser, each cap dotted."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ks = np.arange(1, bk.kmax + 1)
    for method, curve in bk.curves.items():
        (line,) = ax.plot(ks, curve, label=LABELS.get(method, method))
        if method in bk.top_groups:
            ax.axhline(curve[-1], color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("k (samples drawn per query)")
    ax.set_ylabel("success of the returned sample")
    ax.set_title(title or "best-of-k")
    return save_plot(fig, ax, path)
