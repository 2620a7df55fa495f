"""Held-out comparison of the tail and multi-decoder heads against their one-pool baselines.

python bench/bench_heads.py cruxeval [DATA_DIR]
    One MultiPredictor on the five decoders' pools vs one SuccessPredictor per decoder,
    ngrams features, trained on problems 0–399 (id order), held out 400–799. L2 strength
    (and the shared rank) chosen on 320–399 after fitting on 0–319, then refit on 0–399.
    Prints per decoder: held-out log-loss, share of the Avg→Opt gap closed, compute saved
    by the greedy allocation at B = 1/2/4/8 (10 samples pooled per problem).

python bench/bench_heads.py arithmetic TRAIN_POOL EVAL_POOL [FEATURES] [FEATURE_CACHE]
    `howhard train --head logistic|mlp|tail` (runs.train.train: L2 strength chosen on a 20%
    held-out split, refit on the whole pool) on TRAIN_POOL, evaluated on EVAL_POOL:
    log-loss, gap closed, and compute saved at B = 1/2/4/8/16 (greedy on predicted gains).
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from howhard.evaluate import evaluate
from howhard.features import NGrams
from howhard.pool import pool_from_rows, read_pool
from howhard.predict import MultiPredictor, SuccessPredictor, TailPredictor, loss_table
from howhard.predict.multi import pool_counts
from howhard.runs.inputs import featurize

DECODERS = ("codellama-7b", "codellama-13b", "codellama-34b", "gpt-3.5-turbo-0613", "gpt-4-0613")
ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)


def cruxeval(data: Path) -> None:
    pools = []
    for name in DECODERS:
        with gzip.open(data / "output-t0.8" / f"{name}.jsonl.gz", "rt") as f:
            rows = sorted((json.loads(line) for line in f), key=lambda r: int(r["id"][7:]))
        pools.append(pool_from_rows(((f"{name} {r['id']}", r) for r in rows), name))
    counts = pool_counts(pools)
    X = NGrams().transform(pools[0].prompts).astype(float)
    train_rows, test_rows = np.arange(400), np.arange(400, 800)
    fit_rows, val_rows = np.arange(320), np.arange(320, 400)

    def val_loss(lam: np.ndarray, m: int) -> float:
        c, n = counts[val_rows, m, 0], counts[val_rows, m, 1]
        return float(-(c @ np.log(lam) + (n - c) @ np.log1p(-lam)) / n.sum())

    t0 = time.perf_counter()
    single: list[SuccessPredictor] = []
    for m in range(len(DECODERS)):
        y = counts[:, m]
        best = min(
            ALPHAS,
            key=lambda a: val_loss(
                SuccessPredictor(alpha=a)
                .fit(X[fit_rows], y[fit_rows])
                .predict_proba_success(X[val_rows]),
                m,
            ),
        )
        single.append(SuccessPredictor(alpha=best).fit(X[train_rows], y[train_rows]))
    t_single = time.perf_counter() - t0

    t0 = time.perf_counter()
    grid = [(h, r, a) for h in ("lowrank", "mlp") for r in (2, 8) for a in ALPHAS]
    scores = {}
    for h, r, a in grid:
        model = MultiPredictor(head=h, hidden=r, alpha=a).fit(X[fit_rows], counts[fit_rows])
        lam = model.predict_proba_success(X[val_rows])
        scores[(h, r, a)] = sum(val_loss(lam[:, m], m) for m in range(len(DECODERS)))
    h, r, a = min(scores, key=lambda k: scores[k])
    multi = MultiPredictor(head=h, hidden=r, alpha=a).fit(
        X[train_rows], counts[train_rows], decoders=DECODERS
    )
    t_multi = time.perf_counter() - t0
    print(
        f"per-decoder logistic: {t_single:.1f} s; multi ({h}, r={r}, alpha={a:g}): "
        f"{t_multi:.1f} s for its grid of {len(grid)} and the refit"
    )

    lam_multi = multi.predict_proba_success(X[test_rows])
    budgets = [1.0, 2.0, 4.0, 8.0]
    print("decoder | head | held-out log-loss | Avg | Opt | gap closed | saved B=1/2/4/8 (oracle)")
    for m, name in enumerate(DECODERS):
        c, n = counts[:, m, 0], counts[:, m, 1]
        mean = float(c[train_rows].sum() / n[train_rows].sum())
        held = pools[m].select([pools[m].ids[i] for i in test_rows])
        for label, lam in (
            ("one per decoder", single[m].predict_proba_success(X[test_rows])),
            ("multi", lam_multi[:, m]),
        ):
            t = loss_table(lam, c[test_rows], n[test_rows], mean)
            gains = lam[:, None] * (1 - lam[:, None]) ** np.arange(10)
            ev = evaluate(held, budgets, 10, gains)
            saved = "/".join(f"{100 * s:.0f}" for s in ev.saving_vs_uniform["adaptive"])
            oracle = "/".join(f"{100 * s:.0f}" for s in ev.saving_vs_uniform["oracle"])
            print(
                f"{name} | {label} | {t['model']:.4f} | {t['avg']:.4f} | {t['opt']:.4f} | "
                f"{100 * t['gap_closed']:.1f}% | {saved}% ({oracle}%)"
            )


HEADS = {
    "logistic": lambda a: SuccessPredictor(head="logistic", alpha=a),
    "mlp": lambda a: SuccessPredictor(head="mlp", alpha=a),
    "tail": lambda a: TailPredictor(head="logistic", alpha=a),
    "tail-mlp": lambda a: TailPredictor(head="mlp", alpha=a),
}
OWN = ("tail-own", "tail-mlp-own")
"""Tail heads whose L2 strength is chosen by their own held-out likelihood (see `select`)."""
HEADS["tail-own"], HEADS["tail-mlp-own"] = HEADS["tail"], HEADS["tail-mlp"]


def select(
    X: np.ndarray, y: np.ndarray, make: Any, own: bool = False, seed: int = 0
) -> tuple[Any, float]:
    """What `howhard train` does for one head: each L2 strength fitted on 80% of the queries and
    scored (binomial log-loss of Δ̂(x, 1)) on the other 20%; the best refit on all. ``own``:
    scored by the model's own held-out likelihood instead (`TailPredictor.log_loss`)."""
    test = np.random.default_rng(seed).permutation(len(X)) < round(0.2 * len(X))
    losses = {}
    for a in ALPHAS:
        model = make(a).fit(X[~test], y[~test])
        if own:
            losses[a] = model.log_loss(X[test], y[test])
            continue
        lam = model.predict_proba_success(X[test])
        c, n = y[test, 0], y[test, 1]
        losses[a] = -(c @ np.log(lam) + (n - c) @ np.log1p(-lam)) / n.sum()
    best = min(losses, key=lambda a: losses[a])
    return make(best).fit(X, y), best


def arithmetic(
    train_pool: str, eval_pool: str, features: str, cache: str | None, heads: list[str]
) -> None:
    pool, held = read_pool(train_pool), read_pool(eval_pool)
    X = featurize(pool, features, "arithmetic", None, cache).astype(float)
    Xh = featurize(held, features, "arithmetic", None, cache).astype(float)
    budgets = [1.0, 2.0, 4.0, 8.0, 16.0]
    y_train = np.column_stack([pool.successes(), pool.n_samples])
    y = np.column_stack([held.successes(), held.n_samples])
    mean = float(pool.successes().sum() / pool.n_samples.sum())
    print(f"{features}: train {len(pool)} queries, held out {len(held)}", flush=True)
    print(
        "head | alpha | held-out log-loss | Avg | Opt | gap closed | own NLL/trial | "
        "saved B=1/2/4/8/16 | oracle",
        flush=True,
    )
    for head in heads:
        t0 = time.perf_counter()
        model, alpha = select(X, y_train, HEADS[head], own=head in OWN)
        secs = time.perf_counter() - t0
        gains = model.predict_gains(Xh, 32)
        t = loss_table(gains[:, 0], y[:, 0], y[:, 1], mean)
        own = model.log_loss(Xh, y) if isinstance(model, TailPredictor) else t["model"]
        ev = evaluate(held, budgets, 32, gains)
        saved = "/".join(f"{100 * s:.0f}" for s in ev.saving_vs_uniform["adaptive"])
        oracle = "/".join(f"{100 * s:.0f}" for s in ev.saving_vs_uniform["oracle"])
        extra = ""
        if isinstance(model, TailPredictor):
            pi = model.predict_never(Xh)
            extra = f" (kappa={model.concentration_:.3g}, mean pi={pi.mean():.3f})"
        print(
            f"{head} | {alpha:g} | {t['model']:.4f} | {t['avg']:.4f} | {t['opt']:.4f} | "
            f"{100 * t['gap_closed']:.1f}% | {own:.4f} | {saved}% | {oracle}% "
            f"[{secs:.0f} s]{extra}",
            flush=True,
        )


if __name__ == "__main__":
    with threadpool_limits(1):
        if sys.argv[1] == "cruxeval":
            cruxeval(Path(sys.argv[2] if len(sys.argv) > 2 else "/work/shared/data/cruxeval"))
        else:
            arithmetic(
                sys.argv[2],
                sys.argv[3],
                sys.argv[4] if len(sys.argv) > 4 else "ngrams",
                sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else None,
                sys.argv[6].split(",") if len(sys.argv) > 6 else ["logistic", "tail"],
            )
