"""howhard: decide how hard an LM should think about each input.

Label queries with sampled rewards, learn to predict each query's success rate or marginal gains,
and hand out a sample budget where it helps most (input-adaptive best-of-k, after Damani et al.,
ICLR 2025), or route the queries that gain most to a stronger decoder.
Importing howhard loads no model and reads no file; heavy parts load where they are used: the
predictors (scikit-learn) and rerankers (HTTP clients) on first use of their names here, so that
``import howhard``, ``howhard --help`` and a labelling worker process start in a fraction of the
time (the commands that train or evaluate import them anyway).
"""

import importlib
from typing import TYPE_CHECKING, Any

from howhard.allocate import BinnedPolicy, ThresholdPolicy, greedy, greedy_binary, uniform
from howhard.backends import BackendConfig, open_sampler
from howhard.backends.base import Completion, Sampler, SamplingParams
from howhard.compare import Comparison, compare
from howhard.errors import (
    BackendError,
    BudgetError,
    ConfigError,
    HowhardError,
    ModelNotFoundError,
    NotFittedError,
    PoolError,
    SandboxError,
    StoreError,
    UnknownNameError,
)
from howhard.evaluate import Evaluation, evaluate
from howhard.joint import allocate_joint
from howhard.pool import Pool, expected_best_of, read_pool, write_pool
from howhard.routing import RoutingPolicy, evaluate_routing
from howhard.sequential import SequentialPolicy
from howhard.store import LabelStore, StoreConfig
from howhard.tasks import Query, Task, get_task

if TYPE_CHECKING:
    from howhard.predict import GainsPredictor, SuccessPredictor, load_predictor
    from howhard.rerank import MajorityVote, get_reranker, reranked_q

_LAZY = {
    "GainsPredictor": "howhard.predict",
    "SuccessPredictor": "howhard.predict",
    "load_predictor": "howhard.predict",
    "MajorityVote": "howhard.rerank",
    "get_reranker": "howhard.rerank",
    "reranked_q": "howhard.rerank",
}


def __getattr__(name: str) -> Any:
    """The names of `_LAZY`, imported from their module on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'howhard' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "BackendConfig",
    "BackendError",
    "BinnedPolicy",
    "BudgetError",
    "Comparison",
    "Completion",
    "ConfigError",
    "Evaluation",
    "GainsPredictor",
    "HowhardError",
    "LabelStore",
    "MajorityVote",
    "ModelNotFoundError",
    "NotFittedError",
    "Pool",
    "PoolError",
    "Query",
    "RoutingPolicy",
    "Sampler",
    "SamplingParams",
    "SandboxError",
    "SequentialPolicy",
    "StoreConfig",
    "StoreError",
    "SuccessPredictor",
    "Task",
    "ThresholdPolicy",
    "UnknownNameError",
    "allocate_joint",
    "compare",
    "evaluate",
    "evaluate_routing",
    "expected_best_of",
    "get_reranker",
    "get_task",
    "greedy",
    "greedy_binary",
    "load_predictor",
    "open_sampler",
    "read_pool",
    "reranked_q",
    "uniform",
    "write_pool",
]
