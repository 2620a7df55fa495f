"""The steps a user runs, as library functions: label, export, train, evaluate (the CLI and the
demo call these; each takes typed arguments and does its own I/O)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from howhard import routing
from howhard.backends import BackendConfig, open_sampler
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
from howhard.pool import Pool, check_samples, jsonl_rows, read_pool, write_pool
from howhard.predict import (
    GainsPredictor,
    SuccessPredictor,
    gains_loss_table,
    load_predictor,
    loss_table,
)
from howhard.routing import RoutingEvaluation, evaluate_routing, pair_pools, preference_counts
from howhard.store import LabelStore, StoreConfig, WriterLock
from howhard.tasks import Query, Task, get_task

Predictor = Any  # SuccessPredictor | GainsPredictor: fit(X, y, meta), predict_gains, save


def read_queries(path: str | os.PathLike[str]) -> list[Query]:
    """Queries from a JSONL file of rows with ``id`` and ``prompt`` (a pool file works too; its
    rewards are ignored, other fields are kept for the reward function)."""
    rows: list[Query] = []
    for where, raw in jsonl_rows(path):
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("id"), str)
            or not isinstance(raw.get("prompt"), str)
        ):
            raise PoolError(f"{where}: a query row needs string fields 'id' and 'prompt'")
        meta = {k: v for k, v in raw.items() if k not in ("id", "prompt", "rewards")}
        rows.append(Query(raw["id"], raw["prompt"], meta))
    if not rows:
        raise PoolError(f"{path} holds no queries")
    return rows


def run_label(
    task: Task,
    queries: Sequence[Query],
    store_path: str | os.PathLike[str],
    n_samples: int,
    params: SamplingParams,
    backend: BackendConfig | None = None,
    progress: bool = True,
) -> LabelStats:
    """Label ``queries`` into the store with the backend ``backend`` names (default: the embedded
    model through llama.cpp); resumes what is stored. The store's writer lock is taken first, so
    a second labeler of the same store is refused before it loads a model."""
    with (
        WriterLock(store_path) as writer,
        open_sampler(backend or BackendConfig(), task.answer) as sampler,
    ):
        config = StoreConfig(task.name, sampler.model_id, params.to_json())
        with LabelStore(store_path, config, writer) as store:
            return label(task, queries, sampler, store, n_samples, params, progress)


def run_export(
    store_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    reward_model: Any = None,
) -> Pool:
    """Write the store's pool, with each sample's tokens and extracted answer, and its score by
    ``reward_model`` (a `howhard.rerank` client, shown the bare query) when given."""
    with LabelStore(store_path) as store:
        task = get_task(store.config.task)
        pool = store.to_pool(task.answer, reward_model.score if reward_model else None)
    write_pool(pool, out)
    return pool


def feature_source(features: str, model: str | None, task_name: str) -> str:
    """How feature caches name what made their features: ``features:model:task``."""
    return f"{features}:{model or 'default model'}:{task_name}"


def trained_features(predictor: Predictor, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The predictor's recorded feature source, model and task (its ``meta_``), or a ConfigError
    when it has none (it was not made by howhard train)."""
    meta = predictor.meta_
    if "features" not in meta or "task" not in meta:
        raise ConfigError(
            f"predictor {path} does not record its feature source and task; "
            "train it with howhard train"
        )
    return meta


def featurize(
    pool: Pool, features: str, task_name: str, model: str | None, cache: str | None
) -> np.ndarray:
    """Features of the pool's queries (cached in ``cache`` when given)."""
    render = get_task(task_name).query_text
    source = feature_source(features, model, task_name)
    return cached_transform(
        source, lambda: get_featurizer(features, model, render), pool.prompts, cache
    )


@dataclass(frozen=True)
class TrainResult:
    predictor: Predictor
    holdout: dict[str, dict[str, float]]  # "head alpha=..." -> loss table on the held-out split
    best: str
    loss: str  # what the tables measure


ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)


def _counts(pool: Pool) -> np.ndarray:
    return np.column_stack([pool.successes(), pool.n_samples])


def _holdout_mask(n: int, holdout: float, seed: int) -> np.ndarray:
    if not 0 < holdout < 1:
        raise ConfigError(f"--holdout must lie in (0, 1), got {holdout}")
    test = np.random.default_rng(seed).permutation(n) < round(holdout * n)
    if test.sum() < 2 or (~test).sum() < 2:
        raise PoolError(f"the pool has {n} queries: too few to hold out {holdout:.0%}")
    return test


def _grid(
    X: np.ndarray,
    y: np.ndarray,
    make: Callable[[str, float], Predictor],
    table: Callable[[Predictor, np.ndarray], dict[str, float]],
    heads: Sequence[str],
    test: np.ndarray,
    meta: dict[str, Any],
) -> tuple[Predictor, dict[str, dict[str, float]], str]:
    """Score every head x L2 strength on the held-out split; refit the best on all of X.
    BLAS gets one thread: these small L-BFGS fits run many times slower spread over cores."""
    from threadpoolctl import threadpool_limits

    tables: dict[str, dict[str, float]] = {}
    with threadpool_limits(1):
        for h in heads:
            for alpha in ALPHAS:
                fitted = make(h, alpha).fit(X[~test], y[~test])
                tables[f"{h} alpha={alpha:g}"] = table(fitted, test)
        best = min(tables, key=lambda k: tables[k]["model"])
        best_head, best_alpha = best.split(" alpha=")
        # JSON has no NaN: an undefined share of the gap (no gap at all) is saved as null.
        saved = {
            k: {m: None if np.isnan(v) else v for m, v in t.items()} for k, t in tables.items()
        }
        predictor = make(best_head, float(best_alpha)).fit(X, y, meta={**meta, "holdout": saved})
    return predictor, tables, best


def train(
    pool: Pool,
    X: np.ndarray,
    head: str = "auto",
    holdout: float = 0.2,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    bmax: int | None = None,
) -> TrainResult:
    """Fit the predictor the pool calls for: λ(x) on a binary pool (binomial log-loss vs the
    paper's Avg and Opt baselines), the marginal gains Δ(x, 1..bmax) on a continuous one (MSE vs
    the Avg baseline; ``bmax`` defaults to the fewest samples any query has). Each head (both for
    ``auto``) and L2 strength is scored on a held-out split; the best is refit on the whole pool."""
    test = _holdout_mask(len(pool), holdout, seed)
    meta = dict(meta or {})
    if pool.binary:
        heads = ["logistic", "mlp"] if head == "auto" else [head.replace("linear", "logistic")]
        loss = "binomial log-loss per sample"
        return _train_counts(X, _counts(pool), heads, test, seed, meta, loss)
    heads = ["linear", "mlp"] if head == "auto" else [head.replace("logistic", "linear")]
    bmax = bmax or int(pool.n_samples.min())
    G = pool.gains(bmax)
    meta["train_mean_gains"] = G.mean(axis=0).tolist()
    predictor, tables, best = _grid(
        X,
        G,
        lambda h, a: GainsPredictor(head=h, alpha=a, random_state=seed),
        lambda m, t: gains_loss_table(m.predict_gains(X[t], bmax), G[t], G[~t].mean(axis=0)),
        heads,
        test,
        meta,
    )
    return TrainResult(predictor, tables, best, f"MSE of Δ(x, 1..{bmax})")


def train_router(
    weak: Pool,
    strong: Pool,
    X: np.ndarray,
    head: str = "auto",
    holdout: float = 0.2,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Fit P(strong beats weak | x), the paper's preference predictor, on the pairs of samples
    of two pools of the same queries (``X`` are the weak pool's query features)."""
    test = _holdout_mask(len(weak), holdout, seed)
    heads = ["logistic", "mlp"] if head == "auto" else [head]
    y = np.column_stack(preference_counts(weak, strong))
    meta = {**(meta or {}), "kind": "router"}
    loss = "log-loss of P(strong beats weak) per pair"
    return _train_counts(X, y, heads, test, seed, meta, loss)


def _train_counts(
    X: np.ndarray,
    y: np.ndarray,
    heads: list[str],
    test: np.ndarray,
    seed: int,
    meta: dict[str, Any],
    loss: str,
) -> TrainResult:
    """A SuccessPredictor on rows y = [successes, trials] (samples, or routing's sample pairs),
    scored by log-loss on the held-out rows against the training mean; ``meta`` gains the
    whole pool's mean as ``train_mean`` (the Avg baseline of later evaluations)."""
    train_mean = y[~test, 0].sum() / y[~test, 1].sum()
    meta = {**meta, "train_mean": float(y[:, 0].sum() / y[:, 1].sum())}
    predictor, tables, best = _grid(
        X,
        y,
        lambda h, a: SuccessPredictor(head=h, alpha=a, random_state=seed),
        lambda m, t: loss_table(m.predict_proba_success(X[t]), y[t, 0], y[t, 1], train_mean),
        heads,
        test,
        meta,
    )
    return TrainResult(predictor, tables, best, loss)


def _read_pools(
    pool_path: str | os.PathLike[str], strong_path: str | os.PathLike[str] | None, binarize: bool
) -> tuple[Pool, Pool | None]:
    pool = read_pool(pool_path)
    strong = read_pool(strong_path) if strong_path is not None else None
    if binarize:
        pool = pool.binarized()
        strong = strong.binarized() if strong is not None else None
    return pool, strong


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
    strong_path: str | os.PathLike[str] | None = None,
    binarize: bool = False,
    bmax: int | None = None,
) -> TrainResult:
    """Train on a pool (the router when ``strong_path`` names the strong decoder's pool of the
    same queries) and save the predictor to ``out``."""
    pool, strong = _read_pools(pool_path, strong_path, binarize)
    X = featurize(pool, features, task_name, model, cache)
    meta = {
        "features": features,
        "task": task_name,
        "feature_model": model,
        "train_hashes": sorted(pool.hashes()),
    }
    if strong is None:
        result = train(pool, X, head, holdout, seed, meta, bmax)
    else:
        result = train_router(pool, strong, X, head, holdout, seed, meta)
    result.predictor.save(out)
    return result


def _predictor_features(
    predictor: Predictor, predictor_path: str | os.PathLike[str], pool: Pool, cache: str | None
) -> np.ndarray:
    """The pool's features from the source the predictor was trained on (warns when the pool
    shares queries with its training pool)."""
    meta = trained_features(predictor, predictor_path)
    overlap = pool.hashes() & set(meta.get("train_hashes", []))
    if overlap:
        print(
            f"howhard: warning: {len(overlap)} of {len(pool)} queries were in the predictor's "
            "training pool; the evaluation is optimistic. Evaluate on a disjoint pool.",
            file=sys.stderr,
        )
    return featurize(pool, meta["features"], meta["task"], meta.get("feature_model"), cache)


def reranker_curves(pool: Pool, bmax: int) -> dict[str, np.ndarray]:
    """q_r(x, b), b = 0..bmax, for each reranker the pool has data for: ``majority`` (rows with
    ``answers``) and ``reward-model`` (rows with ``scores``)."""
    from howhard import rerank

    return {
        name: rerank.reranked_q(pool.rewards, [e[field] for e in pool.extras], bmax, name)
        for name, field in (("majority", "answers"), ("reward-model", "scores"))
        if all(field in e for e in pool.extras)
    }


def _write_report(
    out_dir: str | os.PathLike[str], md: str, data: dict[str, Any], draw: Any
) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(md + "\n![plot](plot.png)\n")
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    draw(out / "plot.png")


def run_evaluate(
    pool_path: str | os.PathLike[str],
    budgets: Sequence[float],
    max_per_query: int,
    predictor_path: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    cache: str | None = None,
    seed: int = 0,
    title: str = "howhard evaluation",
    binarize: bool = False,
) -> Evaluation:
    """Evaluate a pool (and a predictor on it) under the oracle verifier and every reranker the
    pool has data for; write report.md, report.json, plot.png to ``out_dir`` when given."""
    pool, _ = _read_pools(pool_path, None, binarize)
    check_budgets(budgets, max_per_query)  # before any featurising
    check_samples(pool, max_per_query)
    gains = None
    info: dict[str, Any] = {}
    if predictor_path is not None:
        predictor = load_predictor(predictor_path)
        if predictor.meta_.get("kind") == "router":
            raise ConfigError(
                f"{predictor_path} is a router; evaluate it with --strong STRONG_POOL"
            )
        X = _predictor_features(predictor, predictor_path, pool, cache)
        gains = predictor.predict_gains(X, max_per_query)
        meta = predictor.meta_
        info = {
            "head": predictor.head,
            "features": meta["features"],
            "train_holdout_loss": meta.get("holdout"),
            "calibration": calibration_table(gains[:, 0], pool),
        }
        if isinstance(predictor, SuccessPredictor) and pool.binary:
            y = _counts(pool)
            info["eval_loss"] = loss_table(gains[:, 0], y[:, 0], y[:, 1], meta["train_mean"])
            info["loss"] = "binomial log-loss per sample"
        elif isinstance(predictor, GainsPredictor):
            bmax = min(predictor.bmax_, max_per_query, int(pool.n_samples.min()))
            mean = np.asarray(meta["train_mean_gains"])[:bmax]
            info["eval_loss"] = gains_loss_table(gains[:, :bmax], pool.gains(bmax), mean)
            info["loss"] = f"MSE of Δ(x, 1..{bmax}) (Opt = 0: the noisy targets themselves)"
    ev = evaluate(pool, budgets, max_per_query, gains, seed, reranker_curves(pool, max_per_query))
    ev.predictor = info
    if out_dir is not None:
        _write_report(
            out_dir, markdown(ev, title), ev.to_json(), lambda path: plot(ev, path, title)
        )
    return ev


def run_evaluate_routing(
    weak_path: str | os.PathLike[str],
    strong_path: str | os.PathLike[str],
    shares: Sequence[float],
    predictor_path: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    cache: str | None = None,
    seed: int = 0,
    title: str = "howhard routing evaluation",
    binarize: bool = False,
) -> RoutingEvaluation:
    """Success vs strong-call share for random, learned (the router at ``predictor_path``) and
    oracle routing between two pools of the same queries."""
    weak, strong = _read_pools(weak_path, strong_path, binarize)
    assert strong is not None
    scores = None
    info: dict[str, Any] = {}
    if predictor_path is not None:
        router = load_predictor(predictor_path)
        if router.meta_.get("kind") != "router":
            raise ConfigError(
                f"{predictor_path} is not a router; train one with "
                "howhard train WEAK_POOL --strong STRONG_POOL"
            )
        weak, strong = pair_pools(weak, strong)
        scores = router.predict_proba_success(
            _predictor_features(router, predictor_path, weak, cache)
        )
        wins, trials = preference_counts(weak, strong)
        info = {
            "head": router.head,
            "features": router.meta_["features"],
            "eval_loss": loss_table(scores, wins, trials, router.meta_["train_mean"]),
        }
    ev = evaluate_routing(weak, strong, scores, shares, seed, info)
    if out_dir is not None:
        _write_report(
            out_dir,
            routing.markdown(ev, title),
            ev.to_json(),
            lambda path: routing.plot(ev, path, title),
        )
    return ev
