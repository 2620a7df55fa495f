"""``howhard label`` and ``howhard export``: draw samples into a label store, write its pool."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from howhard.backends import BackendConfig, open_sampler
from howhard.backends.base import SamplingParams
from howhard.errors import ConfigError
from howhard.files import check_output
from howhard.label import LabelStats, label
from howhard.pool import Pool, write_pool
from howhard.runs.inputs import read_queries
from howhard.store import LabelStore, StoreConfig, WriterLock
from howhard.tasks import Query, Task, get_task

Path_ = str | os.PathLike[str]


def select_queries(
    task: Task, n: int, seed: int, exclude: Iterable[str] = (), input: Path_ | None = None
) -> list[Query]:
    """The queries to label: those of the file ``input`` when given, else the first ``n`` of
    the task's generator (seed ``seed``), leaving out every prompt in ``exclude``. The generator
    is asked for n + |exclude| queries, so n remain when all excluded ones are among them."""
    seen = set(exclude)
    if input is not None:
        return [q for q in read_queries(input, distinct=True) if q.prompt not in seen]
    return [q for q in task.queries(n + len(seen), seed) if q.prompt not in seen][:n]


@dataclass(frozen=True, kw_only=True)
class LabelSpec:
    """What `run_label` labels: ``samples`` samples of each query (``queries`` generated ones
    with ``query_seed``, or the rows of ``input``), minus the prompts of the ``exclude`` files,
    into the SQLite ``store``. ``max_tokens`` defaults to the task's."""

    store: Path_
    task: str = "arithmetic"
    data: str | None = None
    queries: int = 100
    input: Path_ | None = None
    query_seed: int = 0
    exclude: tuple[Path_, ...] = ()
    samples: int = 16
    temperature: float = SamplingParams.temperature
    top_p: float = SamplingParams.top_p
    max_tokens: int | None = None
    seed: int = SamplingParams.seed
    backend: BackendConfig = field(default_factory=BackendConfig)
    progress: bool = True
    the_task: Task = field(init=False, repr=False, compare=False)
    params: SamplingParams = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"samples must be >= 1, got {self.samples}", param="samples")
        if self.input is None and self.queries < 1:
            raise ConfigError(f"queries must be >= 1, got {self.queries}", param="queries")
        task = get_task(self.task, self.data)
        params = SamplingParams(
            self.temperature, self.top_p, self.max_tokens or task.max_tokens, self.seed
        )
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "the_task", task)
        object.__setattr__(self, "params", params)


def run_label(spec: LabelSpec) -> LabelStats:
    """Label the spec's queries into its store (resumes what is stored)."""
    seen = {q.prompt for path in spec.exclude for q in read_queries(path)}
    queries = select_queries(spec.the_task, spec.queries, spec.query_seed, seen, spec.input)
    return label_queries(
        spec.the_task, queries, spec.store, spec.samples, spec.params, spec.backend, spec.progress
    )


def label_queries(
    task: Task,
    queries: Sequence[Query],
    store_path: Path_,
    n_samples: int,
    params: SamplingParams,
    backend: BackendConfig | None = None,
    progress: bool = True,
) -> LabelStats:
    """Label ``queries`` into the store with the backend ``backend`` names (default: the embedded
    model through llama.cpp); resumes what is stored. The store's writer lock is taken first, so
    a second labeler of the same store is refused before it loads a model. A store this run
    created is removed again when the run fails before storing any sample (e.g. on a query
    the task's reward cannot read), so a failed first run leaves no empty store behind."""
    path = Path(store_path)
    new = not path.exists()
    with (
        WriterLock(store_path) as writer,
        open_sampler(backend or BackendConfig(), task.answer) as sampler,
    ):
        config = StoreConfig(task.name, sampler.model_id, params.to_json())
        empty = False
        try:
            with LabelStore(store_path, config, writer) as store:
                try:
                    return label(task, queries, sampler, store, n_samples, params, progress)
                except BaseException:
                    empty = new and store.count() == 0
                    raise
        finally:
            if empty:  # closed, and still locked against another labeler
                for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    leftover.unlink(missing_ok=True)


@dataclass(frozen=True, kw_only=True)
class ExportSpec:
    """What `run_export` writes: the pool of ``store`` to ``out`` (.jsonl or .parquet), each
    sample scored by ``reward_model`` (a directory or URL, `howhard.rerank.reward_client`) when
    given."""

    store: Path_
    out: Path_
    reward_model: str | None = None
    reward_api: str = "vllm"
    reward_model_name: str | None = None
    api_key: str | None = None

    def __post_init__(self) -> None:
        check_output(self.out, [self.store])


def run_export(spec: ExportSpec) -> Pool:
    """Write the store's pool, with each sample's tokens and extracted answer, and its reward
    model score (the model is shown the bare query) when the spec names one."""
    rm: Any = None
    if spec.reward_model:
        from howhard.rerank import reward_client

        rm = reward_client(
            spec.reward_model,
            api=spec.reward_api,
            model=spec.reward_model_name,
            api_key=spec.api_key,
        )
    with LabelStore(spec.store) as store:
        task = get_task(store.config.task)
        pool = store.to_pool(task.answer, rm.score if rm else None)
        added = store.query_count()
    write_pool(pool, spec.out)
    unfinished(spec.store, pool, added)
    return pool


def unfinished(store: Path_, pool: Pool, added: int) -> None:
    """Warn when the store's pool is not whole: queries with no sample yet (a labeler stopped
    early, or still running) or with fewer samples than the others."""
    n = pool.n_samples
    short = int((n < n.max()).sum()) if len(pool) else 0
    if added > len(pool) or short:
        print(
            f"howhard: warning: {store} is not finished: {added - len(pool)} of its {added} "
            f"queries have no sample yet and {short} have fewer samples than the most any has "
            f"({n.max() if len(pool) else 0}); the pool holds what is stored: rerun the "
            "labelling to finish it",
            file=sys.stderr,
        )
