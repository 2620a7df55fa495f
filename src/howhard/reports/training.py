"""The held-out comparison `howhard train` prints: every feature source and head it tried."""

from __future__ import annotations

from howhard.runs.train import KEEP_RULE, TrainResult, alpha_text


def comparison_lines(result: TrainResult) -> str:
    """Every feature source x head tried (at its best L2 strength): held-out loss against the
    Avg and Opt baselines, share of the gap closed, and the compute saved by the greedy
    allocation at each budget (≥: a lower bound); the kept one marked, and the rule."""
    budgets = result.budgets
    width = max([20, *(len(c.features) for c in result.candidates)])  # the longest source
    hw = max([12, *(len(c.head) for c in result.candidates)])
    head = f"  {'features':{width}s} {'head':{hw}s} alpha   model    Avg      Opt      gap closed "
    head += "".join(f"  B={b:<4g}" for b in budgets)
    lines = [
        (
            f"{result.folds}-fold cross-validated comparison on {result.n_test} queries"
            if result.folds > 1
            else f"held-out comparison on {result.n_test} queries"
        )
        + f": {result.loss} (lower is better)"
        + (
            "; compute saved by the paper's greedy allocation vs uniform at equal success "
            "(higher is better)"
            if budgets
            else ""
        ),
        head,
    ]
    for c in result.candidates:
        t = c.table
        gap = "n/a" if t["gap_closed"] != t["gap_closed"] else f"{100 * t['gap_closed']:.0f}%"
        row = (
            f"  {c.features:{width}s} {c.head:{hw}s} {alpha_text(c.head, c.alpha):7s} "
            f"{t['model']:<8.4g} "
            f"{t['avg']:<8.4g} {t['opt']:<8.4g} {gap:11s}"
        )
        row += "".join(
            f"  {'≥' if low else ''}{100 * v:.0f}%".ljust(8)
            for v, low in zip(c.saved, c.lower_bound, strict=True)
        )
        lines.append(row + (" <- kept" if c is result.kept else ""))
    if result.oracle_saved:
        label = "oracle (greedy on the held-out queries' own gains)"
        saved = "".join(f"  {100 * v:.0f}%".ljust(8) for v in result.oracle_saved)
        lines.append(f"  {label:{width + hw + 48}s}{saved}")
    if len(result.candidates) > 1:
        lines.append(KEEP_RULE if budgets else "kept: the lowest held-out loss")
    kept = result.kept
    if kept is not None and kept.table["model"] > kept.table["avg"]:
        lines.append(
            f"warning: the kept predictor's held-out loss {kept.table['model']:.4g} is above "
            f"Avg's {kept.table['avg']:.4g}: it predicts worse than the constant training mean, "
            "and its allocation can lose to uniform; try another --head or --features, or more "
            "training queries"
        )
    return "\n".join(lines)


def kept_text(result: TrainResult) -> str:
    """The kept candidate as `howhard train` names it: source, head and L2 strength."""
    kept = result.kept
    if kept is None:
        return result.best
    return f"{kept.features} {kept.head} alpha={alpha_text(kept.head, kept.alpha)}"
