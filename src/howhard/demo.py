"""``howhard demo``: the whole method on the embedded SmolLM2 and mixed-difficulty arithmetic.

1. label training queries (N samples each) and 2. a disjoint evaluation set, into SQLite stores
   (a rerun finds the samples there and draws nothing);
3. train a success predictor λ(x) on the LM's own hidden state, the layer (of train's default
   candidates, `howhard.features.candidate_layers`) that saves most in train's cross-validation;
4. evaluate uniform vs adaptive vs oracle allocation on the evaluation set; write a report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from howhard.backends import BackendConfig
from howhard.backends.base import SamplingParams
from howhard.pool import write_pool
from howhard.reports import evaluation_markdown
from howhard.runs import EvaluateSpec, ExportSpec, TrainSpec, run_evaluate, run_export, run_train
from howhard.runs.label import label_queries, select_queries
from howhard.tasks import get_task


@dataclass(frozen=True)
class DemoSize:
    train: int  # training queries
    eval: int  # evaluation queries
    train_samples: int
    eval_samples: int  # also the per-query cap of the evaluation
    budgets: tuple[float, ...]


SIZES = {
    "small": DemoSize(150, 100, 8, 8, (1, 2, 4)),
    "default": DemoSize(1000, 500, 16, 32, (1, 2, 4, 8, 16)),
    "large": DemoSize(3000, 1000, 16, 64, (1, 2, 4, 8, 16, 32)),
}
TRAIN_SEED, EVAL_SEED = 1, 2


def run_demo(size: str, workdir: str, workers: int | None, progress: bool = True) -> Path:
    """Run the demo; returns the report directory."""
    s = SIZES[size]
    work = Path(workdir)
    task = get_task("arithmetic")
    params = SamplingParams(max_tokens=task.max_tokens)
    train_q = select_queries(task, s.train, TRAIN_SEED)
    eval_q = select_queries(task, s.eval, EVAL_SEED, exclude={q.prompt for q in train_q})
    start = time.perf_counter()

    def step(text: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {text}", flush=True)

    for name, queries, n in (("train", train_q, s.train_samples), ("eval", eval_q, s.eval_samples)):
        step(f"label {len(queries)} {name} queries x {n} samples (SmolLM2 via llama.cpp)")
        store = work / f"{name}.sqlite"
        stats = label_queries(
            task, queries, store, n, params, BackendConfig(workers=workers), progress
        )
        if stats.samples:
            step(f"  {stats.samples_per_second:.1f} samples/s, {stats.tokens_per_second:.0f} tok/s")
        # The store may hold more queries or samples (from a larger size): keep this size's.
        pool = run_export(ExportSpec(store=store, out=work / f"{name}-all.jsonl"))
        write_pool(pool.select([q.id for q in queries], n), work / f"{name}-{size}.jsonl")

    step("train the success predictor on the LM's hidden states (its candidate layers)")
    cache = str(work / "features-hidden.npz")  # hidden; other layers beside it
    predictor = work / f"predictor-{size}.npz"
    result = run_train(
        TrainSpec(
            pool=work / f"train-{size}.jsonl",
            out=predictor,
            task=task.name,  # features: train's default, the candidate layers
            feature_cache=cache,
        )
    )
    t = result.holdout[result.best]
    how = f"{result.folds}-fold cross-validated" if result.folds > 1 else "held-out"
    step(
        f"  kept {result.best}: {how} log-loss {t['model']:.4f} vs Avg {t['avg']:.4f}, "
        f"Opt {t['opt']:.4f} ({100 * t['gap_closed']:.0f}% of the gap closed)"
    )
    step("evaluate uniform vs adaptive vs oracle on the evaluation pool")
    report = work / f"report-{size}"
    ev = run_evaluate(
        EvaluateSpec(
            pool=work / f"eval-{size}.jsonl",
            budgets=s.budgets,
            max_per_query=s.eval_samples,
            predictor=predictor,
            out=report,
            feature_cache=cache,
            title=f"howhard demo ({size}): SmolLM2-135M on mixed arithmetic",
        )
    )
    print(evaluation_markdown(ev, f"howhard demo ({size})"))
    step(f"done; report in {report}/report.md, plot {report}/plot.png")
    return report
