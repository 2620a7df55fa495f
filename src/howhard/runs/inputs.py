"""What every run reads: query and pool files, predictors (checked for their kind) and the query
features a predictor was trained on. The one place these inputs are opened and checked."""

from __future__ import annotations

import dataclasses
import os
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from howhard.errors import BudgetError, ConfigError, PoolError
from howhard.evaluate import check_budgets
from howhard.features import (
    EmbeddingServer,
    cached_transforms,
    get_featurizer,
    pass_group,
    source_names,
)
from howhard.features.server import served_model
from howhard.pool import Pool, check_samples, jsonl_rows, read_pool
from howhard.predict import GainsPredictor, MultiPredictor
from howhard.predict import load_predictor as _load_any
from howhard.tasks import Query, get_task

Predictor = Any  # Success-, Gains- or TailPredictor: fit(X, y, meta), predict_gains, save
Kind = Literal["any", "router", "predictor"]


def read_queries(path: str | os.PathLike[str], distinct: bool = False) -> list[Query]:
    """Queries from a JSONL file of rows with ``id`` and ``prompt`` (a pool file works too; its
    rewards are ignored, other fields are kept for the reward function). Ids must be unique;
    with ``distinct`` prompts too (a label store keys a query's samples by its prompt's hash,
    so two rows of one prompt would be one query)."""
    rows: list[Query] = []
    ids: dict[str, str] = {}
    prompts: dict[str, tuple[str, str]] = {}
    for where, raw in jsonl_rows(path):
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("id"), str)
            or not isinstance(raw.get("prompt"), str)
        ):
            raise PoolError(f"{where}: a query row needs string fields 'id' and 'prompt'")
        qid, prompt = raw["id"], raw["prompt"]
        if qid in ids:
            raise PoolError(
                f"{where}: id {qid!r} repeats the row at {ids[qid]}; ids must be unique"
            )
        if distinct and prompt in prompts:
            first, at = prompts[prompt]
            raise PoolError(
                f"{where}: the prompt of id {qid!r} repeats that of id {first!r} at {at}; a label "
                "store keys samples by the prompt's hash, so a prompt is labeled once: drop one "
                "of the rows"
            )
        ids[qid], prompts[prompt] = where, (qid, where)
        meta = {k: v for k, v in raw.items() if k not in ("id", "prompt", "rewards")}
        rows.append(Query(raw["id"], raw["prompt"], meta))
    if not rows:
        raise PoolError(f"{path} holds no queries")
    return rows


def read_pools(
    pool_path: str | os.PathLike[str],
    strong_path: str | os.PathLike[str] | None = None,
    binarize: bool = False,
) -> tuple[Pool, Pool | None]:
    """The pool at ``pool_path`` and the strong decoder's pool at ``strong_path`` (None when not
    given), each with reward 1 where reward == 1 and 0 elsewhere when ``binarize``."""
    pool = read_pool(pool_path)
    strong = read_pool(strong_path) if strong_path is not None else None
    if binarize:
        pool = pool.binarized()
        strong = strong.binarized() if strong is not None else None
    return pool, strong


def pool_budgets(
    pool: Pool,
    budgets: Sequence[float] | None,
    max_per_query: int | None,
    default: Sequence[float],
    most: int,
) -> tuple[int, tuple[float, ...]]:
    """The samples per query a run may use and its budgets, checked against the pool (once):
    ``max_per_query`` (BudgetError unless every query has that many), None: the smaller of
    ``most`` and the fewest samples of a query (a budget above those a BudgetError naming the
    query); ``budgets`` in [0, that cap] (`check_budgets`), None: those of ``default`` up to
    it."""
    if max_per_query is None:
        check_samples(pool, 1)  # names an empty pool
        n = pool.n_samples
        short = int(np.argmin(n))
        for b in budgets or ():
            if b > n[short]:
                raise BudgetError(
                    f"budget {b:g} is more than the {n[short]} samples of query "
                    f"{pool.ids[short]!r} (the fewest of the pool); use budgets up to "
                    f"{n[short]}, or label more samples per query",
                    param="budgets",
                )
        max_per_query = min(most, int(n[short]))
    check_samples(pool, max_per_query)
    if budgets is None:
        budgets = [b for b in default if b <= max_per_query]
    return max_per_query, tuple(check_budgets(budgets, max_per_query))


def load_predictor(path: str | os.PathLike[str], kind: Kind = "any") -> Predictor:
    """The predictor saved at ``path``; with ``kind="router"`` a ConfigError unless it is a
    router (P(strong beats weak | x), from training on a weak and a strong pool), with
    ``kind="predictor"`` unless it is a success or gains predictor of one pool."""
    predictor = _load_any(path)
    if kind != "any" and isinstance(predictor, MultiPredictor):
        raise ConfigError(
            f"{path} is a multi-decoder predictor (λ of every decoder of a menu), not a "
            f"{kind} of one pool; use it with the menu it was trained on"
        )
    is_router = predictor.meta_.get("kind") == "router"
    if kind == "router" and not is_router:
        raise ConfigError(
            f"{path} is not a router; train one on a weak and a strong pool of the same "
            "queries (howhard train WEAK_POOL with the strong pool STRONG_POOL)"
        )
    if kind == "predictor" and is_router:
        raise ConfigError(
            f"{path} is a router (it predicts P(strong beats weak | x)), not a success or gains "
            "predictor of one pool; evaluate it with the strong pool, or give it as the router "
            "of a joint comparison next to a success predictor of the weak pool"
        )
    return predictor


def warn_binarized(predictor: Predictor, path: str | os.PathLike[str], binarize: bool) -> None:
    """Warn when a gains predictor (trained on continuous rewards: Δ(x, b) of e.g. the fraction of
    tests passed) is used on a binarized pool (pass/fail), whose gains it does not predict."""
    if binarize and isinstance(predictor, GainsPredictor):
        print(
            f"howhard: warning: predictor {path} was trained on continuous rewards (it predicts "
            "the gains of the reward, such as the fraction of tests passed), but the pool is "
            "binarized to pass/fail; for pass/fail train on the binarized pool (howhard train "
            "--binarize)",
            file=sys.stderr,
        )


def feature_source(
    features: str, model: str | None, task_name: str, server: EmbeddingServer | None = None
) -> str:
    """How feature caches name what made their features: ``features:model:task``; for
    ``server``, ``server(api, pooling):model:task``: the served model's name, never its URL, so
    the features of one model are shared by every URL that serves it and never used for
    another model."""
    if features == "server":
        if not model or server is None:
            raise ConfigError("server features are named by the served model and the server")
        features = f"server({server.api}, {server.pooling})"
    return f"{features}:{model or 'default model'}:{task_name}"


def feature_model(features: str, model: str | None, server: EmbeddingServer | None) -> str | None:
    """``model``, or for ``server`` features without one the first model the server lists; a
    local model file or folder (``./m.gguf``) as its absolute path, so that feature caches and
    the predictor name one file wherever they are used from."""
    if features != "server" and model and Path(model).expanduser().exists():
        return str(Path(model).expanduser().resolve())
    if features == "server" and not model:
        if server is None:
            raise ConfigError(
                "features=server reads the embeddings of a running server; pass its URL as "
                "feature_url",
                param="feature_url",
            )
        return served_model(server)
    return model


def feature_meta(
    features: str, model: str | None, server: EmbeddingServer | None, X: np.ndarray
) -> dict[str, Any]:
    """What a predictor records of its features: the source and model, and for ``server`` the
    API, pooling and dimension (never the URL or key: they are given again where it is used)."""
    meta: dict[str, Any] = {"features": features, "feature_model": model}
    if features == "server" and server is not None:
        meta.update(feature_api=server.api, feature_pooling=server.pooling, feature_dim=X.shape[1])
    return meta


def trained_server(
    meta: dict[str, Any], server: EmbeddingServer | None, path: str | os.PathLike[str]
) -> EmbeddingServer | None:
    """For a predictor on ``server`` features (its ``meta``): ``server`` (the URL and key given
    now) reading the API and pooling the predictor was trained with; None for other sources."""
    if meta.get("features") != "server":
        return None
    if server is None:
        raise ConfigError(
            f"predictor {path} was trained on the embeddings of {meta.get('feature_model')} "
            "from its server; pass the URL of a server of that model as feature_url",
            param="feature_url",
        )
    return dataclasses.replace(server, api=meta["feature_api"], pooling=meta["feature_pooling"])


def trained_features(predictor: Predictor, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The predictor's recorded feature source, model and task (its ``meta_``), or a ConfigError
    when it has none (it was not made by howhard train)."""
    meta = predictor.meta_
    if "features" not in meta or "task" not in meta:
        raise ConfigError(
            f"predictor {path} does not record its feature source and task; "
            "train it with howhard train"
        )
    return dict(meta)


def featurize(
    pool: Pool,
    features: str,
    task_name: str,
    model: str | None,
    cache: str | None,
    server: EmbeddingServer | None = None,
) -> np.ndarray:
    """Features of the pool's queries (cached in ``cache`` when given); sources joined by ``+``
    side by side (`featurize_sources`); ``server``: the embedding server of ``server``
    features (``model`` its served model, resolved already)."""
    return featurize_sources(pool, features, task_name, model, cache, server=server)[0]


def featurize_sources(
    pool: Pool,
    features: str,
    task_name: str,
    model: str | None,
    cache: str | None,
    known: dict[str, np.ndarray] | None = None,
    all_parts: Sequence[str] = (),
    server: EmbeddingServer | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Features of the pool's queries from ``features`` (sources joined by ``+``, e.g.
    ``hidden+task``), side by side, and the width of each source's block (the predictor's
    ``groups``). Each source is featurised and cached on its own (`source_caches`), so another
    combination reuses it (llama.cpp layers of the same texts, such as ``hidden`` and
    ``hidden-lK``, in one decode pass of the model: those of ``all_parts`` too); ``known``
    (source -> features of this pool), when given, is read and filled, so a comparison of
    several combinations featurises each source once; it then names in ``all_parts`` every
    source it featurises, so each finds the same cache file."""
    render = get_task(task_name).query_text
    parts = source_names(features)
    known = {} if known is None else known
    everyone = list(dict.fromkeys([*all_parts, *parts]))
    names = [feature_source(p, model, task_name, server) for p in everyone]
    files = dict(zip(everyone, source_caches(cache, names), strict=True))
    for part in parts:
        if part in known:
            continue
        # llama.cpp layers of the same texts: every one still to featurise, in one decode pass
        group = pass_group(part)
        together = [p for p in everyone if p not in known and group and pass_group(p) == group]
        together = together or [part]
        joined = "+".join(together)
        values = cached_transforms(
            [feature_source(p, model, task_name, server) for p in together],
            lambda: get_featurizer(joined, model, render, task_name, server),  # noqa: B023
            pool.prompts,
            [files[p] for p in together],
        )
        known.update(zip(together, values, strict=True))
    blocks = [known[p] for p in parts]
    return np.concatenate(blocks, axis=1), [b.shape[1] for b in blocks]


def query_texts(pool: Pool, task_name: str) -> np.ndarray:
    """The texts an LM reads of the pool's queries (the task's `query_text`), as a 1-D object
    array: what the lora head takes instead of features."""
    render = get_task(task_name).query_text
    return np.array([render(p) for p in pool.prompts], dtype=object)


def source_caches(cache: str | os.PathLike[str] | None, sources: list[str]) -> list[Path | None]:
    """The cache file of each feature source: ``cache`` itself serves the one of ``sources`` it
    holds (the first when it does not exist yet), every other source a file beside it named
    after the source's first word (``f.npz`` -> ``f.task.npz`` for ``task:default
    model:cruxeval``). When ``cache`` holds none of them, a source whose file beside it exists
    (made by a train that compared sources, e.g. ``hidden,hidden-l18``) reads that file, and
    the first source is given ``cache`` itself otherwise, which `cached_transform` refuses."""
    if cache is None:
        return [None] * len(sources)
    path = Path(cache)
    beside = [path.with_name(f"{path.stem}.{s.split(':')[0]}{path.suffix}") for s in sources]
    held = sources[0]
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                held = str(z["source"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # cached_transform names the damage
    if held not in sources:
        held = sources[0] if not beside[0].exists() else ""
    return [path if s == held else b for s, b in zip(sources, beside, strict=True)]


def predictor_features(
    predictor: Predictor,
    predictor_path: str | os.PathLike[str],
    pool: Pool,
    cache: str | None,
    server: EmbeddingServer | None = None,
) -> np.ndarray:
    """The pool's features from the source the predictor was trained on (warns when the pool
    shares queries with its training pool); ``server``: where to read ``server`` features (its
    API and pooling are the predictor's)."""
    meta = trained_features(predictor, predictor_path)
    overlap = pool.hashes() & set(meta.get("train_hashes", []))
    if overlap:
        print(
            f"howhard: warning: {len(overlap)} of {len(pool)} queries were in the predictor's "
            "training pool; the evaluation is optimistic. Evaluate on a disjoint pool.",
            file=sys.stderr,
        )
    if meta["features"] == "text":  # the lora head reads the texts itself
        return query_texts(pool, meta["task"])
    server = trained_server(meta, server, predictor_path)
    model = meta.get("feature_model")
    X = featurize(pool, meta["features"], meta["task"], model, cache, server)
    if server is not None and X.shape[1] != meta["feature_dim"]:
        raise ConfigError(
            f"the server at feature_url answers {X.shape[1]}-dimensional embeddings, but "
            f"predictor {predictor_path} was trained on {meta['feature_dim']}-dimensional ones "
            f"of {model}; pass the URL of a server of {model}",
            param="feature_url",
        )
    return X


def reranker_curves(pool: Pool, bmax: int) -> dict[str, np.ndarray]:
    """q_r(x, b), b = 0..bmax, for each reranker the pool has data for: ``majority`` (rows with
    ``answers``) and ``reward-model`` (rows with ``scores``)."""
    from howhard import rerank

    return {
        name: rerank.reranked_q(pool.rewards, [e[field] for e in pool.extras], bmax, name)
        for name, field in (("majority", "answers"), ("reward-model", "scores"))
        if all(field in e for e in pool.extras)
    }
