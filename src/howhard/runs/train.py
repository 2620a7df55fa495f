"""``howhard train``: fit the predictor a pool calls for (or a router) and save it."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from howhard import allocate
from howhard.errors import ConfigError, PoolError
from howhard.evaluate import savings
from howhard.features import LAYER_SET, EmbeddingServer, expand_layer_set
from howhard.files import check_output
from howhard.pool import Pool
from howhard.predict import (
    GainsPredictor,
    MultiPredictor,
    SuccessPredictor,
    TailPredictor,
    gains_loss_table,
    loss_table,
)
from howhard.predict.multi import pool_counts
from howhard.predict.stacked import STACKED_HEADS, stacked_head
from howhard.reports import json_ready
from howhard.routing import preference_counts
from howhard.runs.inputs import (
    Predictor,
    feature_meta,
    feature_model,
    featurize_sources,
    pool_budgets,
    query_texts,
    read_pools,
)
from howhard.tasks import pool_task

Path_ = str | os.PathLike[str]
HEADS = ("auto", "logistic", "linear", "mlp", "tail", *STACKED_HEADS, "lora")
ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)
HOLDOUT = 0.2  # the share of queries held out by one split
FOLDS = 5  # the default: one 20% split's choice is noisy (docs/predictors.md)


BUDGETS = (1.0, 2.0, 4.0, 8.0)
DEFAULT_FEATURES = LAYER_SET  # train's default: the candidate layers of the LM, one kept
KEEP_RULE = (
    "kept: the highest mean compute saved over the budgets (in whole percentage points), ties "
    "broken by the lower held-out loss; each row's L2 strength is its lowest held-out loss "
    "(stacked heads: the top's is 0.001, each source's chosen by 5-fold cross-validation)"
)
Splits = list[np.ndarray]  # boolean masks of the held-out queries, one per fit


@dataclass(frozen=True)
class Candidate:
    """One feature source and head tried, at its L2 strength of lowest held-out loss: that
    loss table (model, Avg, Opt, gap_closed) and the compute saved on the held-out queries by
    the paper's greedy allocation on its predicted gains at each budget (``lower_bound``: the
    uniform allocation never reaches its success, so the saving is at least that); no savings
    for a router."""

    features: str
    head: str
    alpha: float
    table: dict[str, float]
    saved: list[float] = field(default_factory=list)
    lower_bound: list[bool] = field(default_factory=list)

    def mean_saved(self) -> float | None:
        return float(np.mean(self.saved)) if self.saved else None


@dataclass(frozen=True)
class TrainResult:
    predictor: Predictor
    holdout: dict[str, dict[str, float]]  # "[features ]head alpha=..." -> held-out loss table
    best: str  # the key of the kept predictor in holdout
    loss: str  # what the tables measure
    candidates: list[Candidate] = field(default_factory=list)  # one per feature source x head
    kept: Candidate | None = None
    budgets: list[float] = field(default_factory=list)  # where compute saved was measured
    oracle_saved: list[float] = field(default_factory=list)  # greedy on the true held-out gains
    n_test: int = 0
    folds: int = 1  # 1: one held-out split; k: every query held out once, in k folds


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """What `run_train` fits: a predictor of ``pool`` on ``features`` of its queries (rendered
    by ``task``'s prompt template; ``model`` for the LM features), or with ``strong`` a router of
    P(strong beats weak | x); saved to ``out``. ``head``, ``holdout``, ``folds`` and ``seed`` as
    in `compare`, but ``folds`` None means `FOLDS` (5), or one split of ``holdout`` (None: 0.2)
    when ``holdout`` is given or the head is lora (`resolve_split`); ``max_per_query`` is the K
    of Δ(x, 1..K) on continuous pools.

    ``features`` names one source (``hidden``), a combination (``hidden+task``: side by side,
    each source weighted equally) or several of either separated by commas (``ngrams,task,
    ngrams+task``), each then tried; ``compare_features`` adds ``task`` and ``<source>+task``
    for each when the task provides features. The kept one is chosen by `KEEP_RULE` at
    ``budgets`` (average samples per query; each at most the fewest samples of a query, None:
    those of `BUDGETS` up to it). ``hidden-layers`` stands for the candidate layers
    of ``model`` (`howhard.features.expand_layer_set`: the final state, those after ⌊n/2⌋ and
    ⌊3n/4⌋ of its n blocks, and those two side by side), read in one decode pass; the predictor
    records the source kept (``hidden-l15+hidden-l22``). None (the default): ``hidden-layers``;
    for a router ``hidden`` (a router is trained on one source).

    The features need not come from the model whose pool it is: ``hidden`` features of a small
    local model train a predictor of a larger or API-only model's success (proxy-model
    features). ``model`` is a GGUF file for ``hidden``, the served model's name for ``server``
    (whose endpoint is ``feature_server``; its URL and key are not saved; ``server`` is not
    combined with other sources)."""

    pool: Path_
    out: Path_
    features: str | None = None  # None: DEFAULT_FEATURES, for a router "hidden"
    task: str | None = None  # None: the task the pool's rows name, else arithmetic
    model: str | None = None
    head: str = "auto"
    holdout: float | None = None  # None: 0.2 (used with one split)
    folds: int | None = None  # None: `resolve_split`
    seed: int = 0
    feature_cache: str | None = None
    strong: Path_ | None = None
    binarize: bool = False
    max_per_query: int | None = None
    compare_features: bool = False
    budgets: tuple[float, ...] | None = None
    feature_server: EmbeddingServer | None = None

    def __post_init__(self) -> None:
        check_output(self.out, [self.pool, self.strong, self.feature_cache])
        if self.features is None:
            default = "hidden" if self.strong is not None else DEFAULT_FEATURES
            object.__setattr__(self, "features", default)
        holdout, folds = resolve_split(self.holdout, self.folds, self.head == "lora")
        object.__setattr__(self, "holdout", holdout)
        object.__setattr__(self, "folds", folds)
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.max_per_query is not None and self.max_per_query < 1:
            raise ConfigError(
                f"max_per_query must be >= 1, got {self.max_per_query}", param="max_per_query"
            )
        if self.budgets is not None and (not self.budgets or any(not b > 0 for b in self.budgets)):
            raise ConfigError(
                f"budgets must be average samples per query > 0, got {list(self.budgets)}",
                param="budgets",
            )
        task = self.task or "arithmetic"
        assert self.features is not None
        candidates = feature_candidates(self.features, self.compare_features, task)
        sets = any(LAYER_SET in n.split("+") for n in candidates)
        if self.strong is not None and (len(candidates) > 1 or sets):
            raise ConfigError(
                f"a router is trained on one feature source; got {', '.join(candidates)}",
                param="features",
            )


def feature_candidates(features: str, compare: bool, task: str) -> list[str]:
    """The feature sources to try: the comma-separated ``features`` (each a source or sources
    joined by ``+``, checked), and with ``compare`` also ``task`` and ``<source>+task`` for each
    when the task provides features of its queries. ``hidden-layers`` is kept as it is (checked
    as ``hidden``): run_train expands it once it knows the model (`expand_layer_set`)."""
    from howhard.features import source_names
    from howhard.tasks import get_task

    names = [f.strip() for f in features.split(",") if f.strip()]
    if not names:
        raise ConfigError(f"features names no feature source: {features!r}", param="features")
    if compare and callable(getattr(get_task(task), "query_features", None)):
        names += [
            n for f in list(names) if "task" not in source_names(f) for n in ("task", f + "+task")
        ]
    unique = list(dict.fromkeys(names))
    for name in unique:
        source_names("+".join("hidden" if p.strip() == LAYER_SET else p for p in name.split("+")))
    return unique


def run_train(spec: TrainSpec) -> TrainResult:
    """Train on the spec's pool (a router when it names a strong pool) and save the predictor
    (when several feature sources are named, the one `KEEP_RULE` keeps)."""
    pool, strong = read_pools(spec.pool, spec.strong, spec.binarize)
    budgets = pool_budgets(pool, spec.budgets, None, BUDGETS, int(pool.n_samples.max()))[1]
    spec = replace(spec, budgets=budgets)
    if spec.task is None:
        spec = replace(spec, task=pool_task(pool.extras, spec.pool))
        if not any(e.get("task") is not None for e in pool.extras):
            print(
                f"howhard: warning: no row of {spec.pool} names its task, so its queries are "
                f"read as {spec.task} ones; name the task if they are not (howhard train "
                "--task NAME)",
                file=sys.stderr,
            )
    assert spec.task is not None and spec.holdout is not None and spec.folds is not None
    assert spec.budgets is not None
    if spec.head == "lora":
        return _train_lora(spec, pool, strong)
    from howhard.features import source_names

    known: dict[str, np.ndarray] = {}
    assert spec.features is not None  # TrainSpec resolved it
    names = feature_candidates(spec.features, spec.compare_features, spec.task)
    if any(LAYER_SET in name.split("+") for name in names):
        from howhard.backends.llamacpp import n_blocks

        depth = n_blocks(spec.model)
        names = list(dict.fromkeys(n for name in names for n in expand_layer_set(name, depth)))
    parts = list(dict.fromkeys(p for name in names for p in source_names(name)))
    server = spec.feature_server if "server" in parts else None
    if server is not None and len(parts) > 1:
        raise ConfigError(
            "server features are trained alone; give features='server' without other sources",
            param="features",
        )
    model = feature_model(parts[0], spec.model, server)
    sources = {
        name: featurize_sources(
            pool, name, spec.task, model, spec.feature_cache, known, parts, server
        )
        for name in names
    }
    first = next(iter(sources.values()))[0]
    meta: dict[str, Any] = {
        **feature_meta(spec.features, model, server, first),
        "task": spec.task,
        "train_hashes": sorted(pool.hashes()),
    }
    if strong is None:
        result = compare(
            pool,
            sources,
            spec.head,
            spec.holdout,
            spec.seed,
            meta,
            spec.max_per_query,
            spec.budgets,
            spec.folds,
        )
    else:
        ((name, (X, groups)),) = sources.items()
        meta["features"] = name
        result = train_router(
            pool, strong, X, spec.head, spec.holdout, spec.seed, meta, groups, spec.folds
        )
    result.predictor.save(spec.out)
    return result


def _train_lora(spec: TrainSpec, pool: Pool, strong: Pool | None) -> TrainResult:
    """The lora head: the LM (``spec.model``) reads the query texts the task renders; no
    feature source is used."""
    if strong is not None:
        raise ConfigError("a router has no lora head; pick logistic or mlp", param="head")
    assert spec.task is not None  # run_train resolved it, TrainSpec the split
    assert spec.holdout is not None and spec.folds is not None and spec.budgets is not None
    texts = query_texts(pool, spec.task)
    meta: dict[str, Any] = {
        **feature_meta("text", feature_model("text", spec.model, None), None, texts),
        "task": spec.task,
        "train_hashes": sorted(pool.hashes()),
    }
    result = compare(
        pool,
        {"text": (texts, [1])},
        "lora",
        spec.holdout,
        spec.seed,
        meta,
        None,
        spec.budgets,
        spec.folds,
    )
    result.predictor.save(spec.out)
    return result


def check_holdout(holdout: float) -> float:
    """``holdout`` (the share of queries held out); ConfigError unless it lies in (0, 1)."""
    if not 0 < holdout < 1:
        raise ConfigError(f"holdout must lie in (0, 1), got {holdout}", param="holdout")
    return holdout


def resolve_split(
    holdout: float | None, folds: int | None, one_split: bool = False
) -> tuple[float, int]:
    """(holdout, folds), checked: ``holdout`` None is `HOLDOUT`; ``folds`` None is `FOLDS`,
    or 1 (one held-out split) when ``holdout`` is given or ``one_split`` (the lora head's fits
    take minutes; the shared heads have one split)."""
    if folds is None:
        folds = 1 if holdout is not None or one_split else FOLDS
    return check_holdout(HOLDOUT if holdout is None else holdout), check_folds(folds)


def check_folds(folds: int) -> int:
    """``folds`` (1: one held-out split; k > 1: k-fold cross-validation); ConfigError below 1."""
    if folds < 1:
        raise ConfigError(
            f"folds must be 1 (one held-out split) or more (cross-validation), got {folds}",
            param="folds",
        )
    return folds


def _counts(pool: Pool) -> np.ndarray:
    return np.column_stack([pool.successes(), pool.n_samples])


def _holdout_mask(n: int, holdout: float, seed: int) -> np.ndarray:
    check_holdout(holdout)
    test = np.random.default_rng(seed).permutation(n) < round(holdout * n)
    if test.sum() < 2 or (~test).sum() < 2:
        raise PoolError(f"the pool has {n} queries: too few to hold out {holdout:.0%}")
    return test


def _splits(n: int, holdout: float, seed: int, folds: int) -> Splits:
    """The held-out masks: one of ``holdout`` of the ``n`` queries when ``folds`` is 1, else
    ``folds`` disjoint ones covering every query (a seeded shuffle dealt round-robin)."""
    if check_folds(folds) == 1:
        return [_holdout_mask(n, holdout, seed)]
    if n < 2 * folds:
        raise PoolError(
            f"the pool has {n} queries: too few for {folds} folds (each needs 2); "
            "ask for fewer folds (1: one held-out split)"
        )
    fold = np.random.default_rng(seed).permutation(n) % folds
    return [fold == k for k in range(folds)]


def _merge(tables: list[dict[str, float]], weights: list[int]) -> dict[str, float]:
    """One loss table of several folds': each loss their mean weighted by ``weights`` (the
    folds' queries), the share of the gap closed recomputed from those means."""
    if len(tables) == 1:
        return tables[0]
    model, avg, opt = (
        float(np.average([t[k] for t in tables], weights=weights)) for k in ("model", "avg", "opt")
    )
    gap = (avg - model) / (avg - opt) if avg != opt else float("nan")
    return {"model": model, "avg": avg, "opt": opt, "gap_closed": gap}


def heldout_savings(
    q: np.ndarray, predicted_gains: np.ndarray, budgets: Sequence[float]
) -> tuple[list[float], list[bool]]:
    """Compute saved vs uniform at equal success (`howhard.evaluate.savings`) by the paper's
    greedy allocation on ``predicted_gains`` (evaluate's ``adaptive``) at each budget, scored on
    the queries' pooled q(x, b), b = 0..K (``q``, shape (n, K + 1)), with the uniform curve their
    mean; and whether each saving is a lower bound."""
    rows, cap = np.arange(len(q)), q.shape[1] - 1
    successes, spends = [], []
    for budget in budgets:
        b = allocate.greedy(predicted_gains, budget)
        successes.append(float(q[rows, b].mean()))
        spends.append(float(b.mean()))
    return savings(successes, spends, q.mean(axis=0), cap)


def keep(candidates: Sequence[Candidate]) -> Candidate:
    """The candidate `KEEP_RULE` keeps: the highest mean compute saved (rounded to whole
    percentage points), ties broken by the lower held-out loss, then by order."""
    return min(
        candidates,
        key=lambda c: (-round(100 * (c.mean_saved() or 0.0)), c.table["model"]),
    )


Sources = dict[str, tuple[np.ndarray, list[int]]]  # feature source -> (X, column groups)


def _compare(
    sources: Sources,
    y: np.ndarray,
    make: Callable[[str, float], Predictor],
    table: Callable[[Predictor, np.ndarray, np.ndarray], dict[str, float]],
    heads: Sequence[str],
    splits: Splits,
    meta: dict[str, Any],
    q_test: np.ndarray | None,
    budgets: Sequence[float],
) -> tuple[Predictor, dict[str, dict[str, float]], str, list[Candidate], Candidate]:
    """Score every source x head x L2 strength on the held-out ``splits`` (each fitted on the
    rest; the splits' tables merged by `_merge`); per source and head, the strength of lowest
    loss is a candidate, with the compute saved when ``q_test`` (the pooled q of the queries
    held out, in row order) is given, by the greedy allocation on every held-out query's
    prediction at once; the candidate `keep` keeps is refit on all rows.
    BLAS gets one thread: these small L-BFGS fits run many times slower spread over cores."""
    from threadpoolctl import threadpool_limits

    tables: dict[str, dict[str, float]] = {}
    candidates: list[Candidate] = []
    prefix = len(sources) > 1
    held_out = np.any(splits, axis=0)
    jobs = [
        (name, h, alpha)
        for name in sources
        for h in heads
        for alpha in (ALPHAS[:1] if h in (*STACKED_HEADS, "lora") else ALPHAS)
    ]
    fits = dict(zip(jobs, _fit_all(make, sources, y, jobs, splits), strict=True))
    with threadpool_limits(1):
        for name, (X, _) in sources.items():
            for h in heads:
                fitted = {a: m for (n, hh, a), m in fits.items() if (n, hh) == (name, h)}
                for alpha in fitted:
                    key = _key(prefix, name, h, alpha)
                    tables[key] = _merge(
                        [table(m, X, t) for m, t in zip(fitted[alpha], splits, strict=True)],
                        [int(t.sum()) for t in splits],
                    )
                alpha = min(fitted, key=lambda a: tables[_key(prefix, name, h, a)]["model"])
                saved: tuple[list[float], list[bool]] = ([], [])
                if q_test is not None and budgets:
                    gains = np.zeros((len(X), q_test.shape[1] - 1))
                    for m, held in zip(fitted[alpha], splits, strict=True):
                        gains[held] = m.predict_gains(X[held], q_test.shape[1] - 1)
                    saved = heldout_savings(q_test, gains[held_out], budgets)
                chosen = tables[_key(prefix, name, h, alpha)]
                candidates.append(Candidate(name, h, alpha, chosen, *saved))
        kept = keep(candidates)
        X, groups = sources[kept.features]
        meta = {
            **meta,
            **({"features": kept.features} if "features" in meta else {}),
            "feature_groups": groups,
            "holdout": json_ready(tables),  # an undefined share of the gap (none) is null
            "comparison": json_ready([asdict(c) for c in candidates]),
        }
        predictor = make(kept.head, kept.alpha).fit(X, y, meta=meta, groups=groups)
    return predictor, tables, _key(prefix, kept.features, kept.head, kept.alpha), candidates, kept


def _fit_all(
    make: Callable[[str, float], Predictor],
    sources: Sources,
    y: np.ndarray,
    jobs: Sequence[tuple[str, str, float]],
    splits: Splits,
) -> list[list[Predictor]]:
    """Each job (source, head, L2 strength) fitted on the rows outside each of ``splits``, in
    that order. The fits are independent and single-threaded, so they run in one worker
    process per core (none for the lora head, which fine-tunes the LM with its own threads),
    with a progress bar on a terminal."""
    from joblib import Parallel, cpu_count, delayed
    from tqdm import tqdm

    tasks = [(make, h, a, *sources[name], y, ~t) for name, h, a in jobs for t in splits]
    workers = 1 if any(h == "lora" for _, h, _ in jobs) else min(len(tasks), cpu_count())
    done = Parallel(n_jobs=workers, return_as="generator")(delayed(_fit)(*t) for t in tasks)
    fits = list(tqdm(done, total=len(tasks), unit="fit", desc="train", disable=None))
    k = len(splits)
    return [fits[i * k : (i + 1) * k] for i in range(len(jobs))]


def _fit(
    make: Callable[[str, float], Predictor],
    head: str,
    alpha: float,
    X: np.ndarray,
    groups: list[int],
    y: np.ndarray,
    rows: np.ndarray,
) -> Predictor:
    """One fit of `_fit_all`, with BLAS on one thread (see `_compare`)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return make(head, alpha).fit(X[rows], y[rows], groups=groups)


def _key(prefix: bool, name: str, head: str, alpha: float) -> str:
    key = f"{head} alpha={alpha_text(head, alpha)}"
    return f"{name} {key}" if prefix else key


def alpha_text(head: str, alpha: float) -> str:
    """A candidate's L2 strength as reports show it: the lora head chooses its own
    (`howhard.predict.lora.LoraPredictor` with alpha None), so its one job's ``alpha`` is a
    placeholder."""
    return "auto" if head == "lora" else f"{alpha:g}"


def train(
    pool: Pool,
    X: np.ndarray,
    head: str = "auto",
    holdout: float = 0.2,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    bmax: int | None = None,
    budgets: Sequence[float] = BUDGETS,
    groups: list[int] | None = None,
    folds: int = 1,
) -> TrainResult:
    """`compare` on one feature source ``X`` (named by ``meta["features"]``, default "X")."""
    meta = dict(meta or {})
    name = str(meta.get("features", "X"))
    return compare(
        pool, {name: (X, groups or [X.shape[1]])}, head, holdout, seed, meta, bmax, budgets, folds
    )


def compare(
    pool: Pool,
    sources: Sources,
    head: str = "auto",
    holdout: float = 0.2,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    bmax: int | None = None,
    budgets: Sequence[float] = BUDGETS,
    folds: int = 1,
) -> TrainResult:
    """Fit the predictor the pool calls for on each feature source (``sources``: name -> (X,
    the widths of its sources' column blocks)): λ(x) on a binary pool (binomial log-loss vs
    the paper's Avg and Opt baselines), the marginal gains Δ(x, 1..bmax) on a continuous one
    (MSE vs the Avg baseline; ``bmax`` defaults to the fewest samples any query has). Each
    source x head (both for ``auto``) x L2 strength is scored on held-out queries, by its loss
    and by the compute the greedy allocation on its predictions saves at ``budgets`` (those
    up to the fewest samples of a query); the one `keep` keeps is refit on the whole pool.
    The held-out queries are a share ``holdout`` of the pool when ``folds`` is 1, else every
    query, each predicted by the fit on the other ``folds`` - 1 folds (cross-validation: a
    steadier choice than one split, at ``folds`` times the fits)."""
    splits = _splits(len(pool), holdout, seed, folds)
    test = np.any(splits, axis=0)
    meta = dict(meta or {})
    if head == "lora" and any(X.ndim != 1 for X, _ in sources.values()):
        raise ConfigError(
            "head 'lora' reads the query texts, not features; train it on one pool with "
            "run_train, not on a menu",
            param="head",
        )
    if head in ("tail", "lora", *STACKED_HEADS) and not pool.binary:
        raise ConfigError(
            f"head {head!r} (a success-rate head) needs binary rewards; set binarize "
            "or pick head linear or mlp",
            param=("head", "binarize"),
        )
    cap = int(pool.n_samples.min())
    used = [float(b) for b in budgets if b <= cap]
    q_test = pool.q(cap)[test]
    oracle = heldout_savings(q_test, np.diff(q_test, axis=1), used)[0] if used else []
    if pool.binary:
        heads = ["logistic", "mlp"] if head == "auto" else [head.replace("linear", "logistic")]
        y = _counts(pool)
        meta["train_mean"] = float(y[:, 0].sum() / y[:, 1].sum())
        loss = "binomial log-loss per sample"

        def table(m: Predictor, X: np.ndarray, t: np.ndarray) -> dict[str, float]:
            return loss_table(m.predict_proba_success(X[t]), y[t, 0], y[t, 1], _mean(y, ~t))

        def make(h: str, a: float) -> Predictor:
            if h == "lora":
                from howhard.predict.lora import LoraPredictor

                return LoraPredictor(meta.get("feature_model"), random_state=seed)
            if h in STACKED_HEADS:
                return stacked_head(h, a, seed)
            if h == "tail":
                return TailPredictor(alpha=a, random_state=seed)
            return SuccessPredictor(head=h, alpha=a, random_state=seed)

    else:
        heads = ["linear", "mlp"] if head == "auto" else [head.replace("logistic", "linear")]
        bmax = bmax or cap
        y = pool.gains(bmax)
        meta["train_mean_gains"] = y.mean(axis=0).tolist()
        loss = f"MSE of Δ(x, 1..{bmax})"

        def table(m: Predictor, X: np.ndarray, t: np.ndarray) -> dict[str, float]:
            return gains_loss_table(m.predict_gains(X[t], bmax), y[t], y[~t].mean(axis=0))

        make = lambda h, a: GainsPredictor(head=h, alpha=a, random_state=seed)  # noqa: E731
    predictor, tables, best, candidates, kept = _compare(
        sources, y, make, table, heads, splits, meta, q_test, used
    )
    return TrainResult(
        predictor, tables, best, loss, candidates, kept, used, oracle, int(test.sum()), folds
    )


def _mean(y: np.ndarray, rows: np.ndarray) -> float:
    """The success rate of the (successes, trials) ``y`` over ``rows``: the Avg baseline."""
    return float(y[rows, 0].sum() / y[rows, 1].sum())


SHARED_HEADS = {"lowrank": (1, 4), "mlp": (16,)}  # one head for many decoders: ranks tried


def compare_shared(
    pools: Sequence[Pool],
    names: Sequence[str],
    X: np.ndarray,
    groups: list[int],
    head: str = "auto",
    holdout: float = 0.2,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    budgets: Sequence[float] = BUDGETS,
) -> dict[str, TrainResult]:
    """One predictor per decoder against one head shared by them all (issue 14's comparison).

    ``pools`` are the decoders' binary pools of the same queries (``names`` their names), ``X``
    the queries' features. Each decoder gets `compare` with ``head`` (auto: logistic and mlp)
    on its own pool, and beside it every shared head of ``head`` (`SHARED_HEADS`: auto both,
    logistic the lowrank head, mlp the mlp head) at each rank: a `MultiPredictor` fitted on
    the held-out split's training queries of every pool at once, at the L2 strength of lowest
    pooled held-out loss, then scored on each decoder's held-out queries by its slice (its
    loss table and the compute its greedy allocation saves). Each decoder keeps what
    `KEEP_RULE` keeps among its own heads and the shared ones; a shared head kept is refit on
    every query of every pool and saved as that decoder's slice (a plain SuccessPredictor)."""
    if head not in ("auto", "logistic", "linear", "mlp"):
        raise ConfigError(
            f"a head shared by the decoders is lowrank or mlp (head auto, logistic or mlp); "
            f"got head {head!r}",
            param="head",
        )
    if not all(p.binary for p in pools):
        raise ConfigError(
            "a head shared by the decoders predicts success rates: the pools need binary "
            "rewards; set binarize",
            param="binarize",
        )
    from threadpoolctl import threadpool_limits

    meta = dict(meta or {})
    source = str(meta.get("features", "X"))
    counts = pool_counts(pools)
    c, n = counts[..., 0], counts[..., 1]
    test = _holdout_mask(len(X), holdout, seed)
    wanted = ("lowrank", "mlp") if head == "auto" else ("mlp" if head == "mlp" else "lowrank",)
    shared = {f"shared {h} r={r}": (h, r) for h in wanted for r in SHARED_HEADS[h]}
    results = [
        compare(pool, {source: (X, groups)}, head, holdout, seed, meta, None, budgets)
        for pool in pools
    ]
    q_tests = [pool.q(int(pool.n_samples.min()))[test] for pool in pools]
    extra: list[list[Candidate]] = [[] for _ in names]
    tables: list[dict[str, dict[str, float]]] = [{} for _ in names]
    with threadpool_limits(1):
        for label, (h, r) in shared.items():
            fits = {}
            for a in ALPHAS:
                fits[a] = MultiPredictor(head=h, hidden=r, alpha=a, random_state=seed)
                fits[a].fit(X[~test], counts[~test], decoders=names, groups=groups)
                lam = fits[a].predict_proba_success(X[test])
                for m in range(len(names)):
                    mean = c[~test, m].sum() / n[~test, m].sum()
                    table = loss_table(lam[:, m], c[test, m], n[test, m], mean)
                    tables[m][f"{label} alpha={a:g}"] = table
            best = max(fits, key=lambda a: fits[a].score(X[test], counts[test]))  # pooled
            for m, (res, q_test) in enumerate(zip(results, q_tests, strict=True)):
                gains = fits[best].predict_gains(X[test], q_test.shape[1] - 1)[:, m]
                saved = heldout_savings(q_test, gains, res.budgets) if res.budgets else ([], [])
                table = tables[m][f"{label} alpha={best:g}"]
                extra[m].append(Candidate(source, label, best, table, *saved))
        out, refits = {}, {}
        for m, (name, res) in enumerate(zip(names, results, strict=True)):
            candidates = [*res.candidates, *extra[m]]
            kept = keep(candidates)
            predictor = res.predictor
            if kept.head in shared:
                h, r = shared[kept.head]
                if kept.head not in refits:
                    fit = MultiPredictor(head=h, hidden=r, alpha=kept.alpha, random_state=seed)
                    refits[kept.head] = fit.fit(X, counts, decoders=names, groups=groups)
                how = {"decoders": list(names), "head": h, "rank": r, "alpha": kept.alpha}
                predictor = refits[kept.head].decoder(name, {**res.predictor.meta_, "shared": how})
            holdout_tables = {**res.holdout, **tables[m]}
            predictor.meta_["holdout"] = json_ready(holdout_tables)
            predictor.meta_["comparison"] = json_ready([asdict(x) for x in candidates])
            out[name] = replace(
                res,
                predictor=predictor,
                holdout=holdout_tables,
                best=f"{kept.head} alpha={kept.alpha:g}",
                candidates=candidates,
                kept=kept,
            )
    return out


def train_router(
    weak: Pool,
    strong: Pool,
    X: np.ndarray,
    head: str = "auto",
    holdout: float = 0.2,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    groups: list[int] | None = None,
    folds: int = 1,
) -> TrainResult:
    """Fit P(strong beats weak | x), the paper's preference predictor, on the pairs of samples
    of two pools of the same queries (``X`` are the weak pool's query features), scored by
    log-loss on held-out queries (``holdout`` and ``folds`` as in `compare`) against the
    training mean; ``meta`` gains the whole pool's mean as ``train_mean`` (the Avg baseline of
    later evaluations)."""
    splits = _splits(len(weak), holdout, seed, folds)
    if head in ("tail", *STACKED_HEADS):
        raise ConfigError(f"a router has no {head} head; pick logistic or mlp", param="head")
    heads = ["logistic", "mlp"] if head == "auto" else [head]
    y = np.column_stack(preference_counts(weak, strong))
    meta = {**(meta or {}), "kind": "router"}
    name = str(meta.get("features", "X"))
    meta["train_mean"] = float(y[:, 0].sum() / y[:, 1].sum())

    def table(m: Predictor, X: np.ndarray, t: np.ndarray) -> dict[str, float]:
        return loss_table(m.predict_proba_success(X[t]), y[t, 0], y[t, 1], _mean(y, ~t))

    predictor, tables, best, candidates, kept = _compare(
        {name: (X, groups or [X.shape[1]])},
        y,
        lambda h, a: SuccessPredictor(head=h, alpha=a, random_state=seed),
        table,
        heads,
        splits,
        meta,
        None,
        [],
    )
    loss = "log-loss of P(strong beats weak) per pair"
    n_test = int(np.any(splits, axis=0).sum())
    return TrainResult(predictor, tables, best, loss, candidates, kept, n_test=n_test, folds=folds)
