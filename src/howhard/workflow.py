"""The steps a user runs, as library functions: label, export, train, evaluate (the CLI and the
demo call these; each takes typed arguments and does its own I/O)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from howhard.backends.base import SamplingParams
from howhard.errors import ConfigError, PoolError
from howhard.evaluate import (
    Evaluation,
    calibration_table,
    check_budgets,
    evaluate,
    markdown,
    plot,
)
from howhard.features import cached_transform, get_featurizer
from howhard.label import LabelStats, label
from howhard.pool import Pool, check_samples, read_pool, write_pool
from howhard.predict import SuccessPredictor, loss_table
from howhard.store import LabelStore, StoreConfig
from howhard.tasks import Query, get_task


def read_queries(path: str | os.PathLike[str]) -> list[Query]:
    """Queries from a JSONL file of rows with ``id`` and ``prompt`` (a pool file works too; its
    rewards are ignored, other fields are kept for the reward function)."""
    rows: list[Query] = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise PoolError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if (
                not isinstance(raw, dict)
                or not isinstance(raw.get("id"), str)
                or not isinstance(raw.get("prompt"), str)
            ):
                raise PoolError(
                    f"{path}:{lineno}: a query row needs string fields 'id' and 'prompt'"
                )
            meta = {k: v for k, v in raw.items() if k not in ("id", "prompt", "rewards")}
            rows.append(Query(raw["id"], raw["prompt"], meta))
    if not rows:
        raise PoolError(f"{path} holds no queries")
    return rows


def run_label(
    task_name: str,
    queries: Sequence[Query],
    store_path: str | os.PathLike[str],
    n_samples: int,
    params: SamplingParams,
    model: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> LabelStats:
    """Label ``queries`` into the store with the llama.cpp backend (resumes what is stored)."""
    from howhard.backends.llamacpp import LlamaCppSampler, resolve_model

    task = get_task(task_name)
    config = StoreConfig(task.name, resolve_model(model).name, params.to_json())
    with LabelStore(store_path, config) as store, LlamaCppSampler(model, workers) as sampler:
        return label(task, queries, sampler, store, n_samples, params, progress)


def run_export(store_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Pool:
    with LabelStore(store_path) as store:
        pool = store.to_pool()
    write_pool(pool, out)
    return pool


def featurize(
    pool: Pool, features: str, task_name: str, model: str | None, cache: str | None
) -> np.ndarray:
    """Features of the pool's queries (cached in ``cache`` when given)."""
    render = get_task(task_name).query_text
    source = f"{features}:{model or 'default model'}:{task_name}"
    return cached_transform(
        source, lambda: get_featurizer(features, model, render), pool.prompts, cache
    )


@dataclass(frozen=True)
class TrainResult:
    predictor: SuccessPredictor
    holdout: dict[str, dict[str, float]]  # "head alpha=..." -> loss table on the held-out split
    best: str


ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)


def _counts(pool: Pool) -> np.ndarray:
    return np.column_stack([pool.successes(), pool.n_samples])


def train(
    pool: Pool,
    X: np.ndarray,
    head: str = "auto",
    holdout: float = 0.2,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Fit λ(x) on a binary pool. Each head (both for ``auto``) and L2 strength is scored on a
    held-out split (binomial log-loss vs the paper's Avg and Opt baselines); the best is refit on
    the whole pool."""
    if not pool.binary:
        raise PoolError("the success predictor needs a binary pool (every reward 0 or 1)")
    if not 0 < holdout < 1:
        raise ConfigError(f"--holdout must lie in (0, 1), got {holdout}")
    heads = ["logistic", "mlp"] if head == "auto" else [head]
    y = _counts(pool)
    test = np.random.default_rng(seed).permutation(len(pool)) < round(holdout * len(pool))
    if test.sum() < 2 or (~test).sum() < 2:
        raise PoolError(f"the pool has {len(pool)} queries: too few to hold out {holdout:.0%}")
    train_mean = y[~test, 0].sum() / y[~test, 1].sum()
    tables: dict[str, dict[str, float]] = {}
    settings: dict[str, tuple[str, float]] = {}
    for h in heads:
        for alpha in ALPHAS:
            name = f"{h} alpha={alpha:g}"
            model = SuccessPredictor(head=h, alpha=alpha, random_state=seed)
            lam = model.fit(X[~test], y[~test]).predict_proba_success(X[test])
            tables[name] = loss_table(lam, y[test, 0], y[test, 1], train_mean)
            settings[name] = (h, alpha)
    best = min(tables, key=lambda k: tables[k]["model"])
    full_meta = {
        **(meta or {}),
        "holdout": tables,
        "train_mean": float(y[:, 0].sum() / y[:, 1].sum()),
    }
    h, alpha = settings[best]
    predictor = SuccessPredictor(head=h, alpha=alpha, random_state=seed).fit(X, y, meta=full_meta)
    return TrainResult(predictor, tables, best)


def run_train(
    pool_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    features: str = "hidden",
    task_name: str = "arithmetic",
    model: str | None = None,
    head: str = "auto",
    holdout: float = 0.2,
    seed: int = 0,
    cache: str | None = None,
) -> TrainResult:
    pool = read_pool(pool_path)
    X = featurize(pool, features, task_name, model, cache)
    meta = {
        "features": features,
        "task": task_name,
        "feature_model": model,
        "train_hashes": sorted(pool.hashes()),
    }
    result = train(pool, X, head, holdout, seed, meta)
    result.predictor.save(out)
    return result


def run_evaluate(
    pool_path: str | os.PathLike[str],
    budgets: Sequence[float],
    max_per_query: int,
    predictor_path: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    cache: str | None = None,
    seed: int = 0,
    title: str = "howhard evaluation",
) -> Evaluation:
    """Evaluate a pool (and a predictor on it); write report.md, report.json, plot.png to
    ``out_dir`` when given."""
    pool = read_pool(pool_path)
    check_budgets(budgets, max_per_query)  # before any featurising
    check_samples(pool, max_per_query)
    gains = None
    info: dict[str, Any] = {}
    if predictor_path is not None:
        predictor = SuccessPredictor.load(predictor_path)
        meta = predictor.meta_
        if "features" not in meta or "task" not in meta:
            raise ConfigError(
                f"predictor {predictor_path} does not record its feature source and task; "
                "train it with howhard train"
            )
        overlap = pool.hashes() & set(meta.get("train_hashes", []))
        if overlap:
            print(
                f"howhard: warning: {len(overlap)} of {len(pool)} queries in {pool_path} were in "
                "the predictor's training pool; the evaluation is optimistic. Evaluate on a "
                "disjoint pool.",
                file=sys.stderr,
            )
        X = featurize(pool, meta["features"], meta["task"], meta.get("feature_model"), cache)
        gains = predictor.predict_gains(X, max_per_query)
        lam = predictor.predict_proba_success(X)
        if pool.binary:
            info = {
                "head": predictor.head,
                "features": meta["features"],
                "eval_loss": loss_table(lam, pool.successes(), pool.n_samples, meta["train_mean"]),
                "train_holdout_loss": meta.get("holdout"),
                "calibration": calibration_table(lam, pool),
                "train_overlap": len(overlap),
            }
    ev = evaluate(pool, budgets, max_per_query, gains, seed)
    ev.predictor = info
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(markdown(ev, title) + "\n![plot](plot.png)\n")
        (out / "report.json").write_text(json.dumps(ev.to_json(), indent=2) + "\n")
        plot(ev, out / "plot.png", title)
    return ev
