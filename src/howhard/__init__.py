"""howhard: decide how hard an LM should think about each input.

Label queries with sampled rewards, learn to predict each query's success rate, and hand out a
sample budget where it helps most (input-adaptive best-of-k, after Damani et al., ICLR 2025).
Importing howhard loads no model and reads no file; heavy parts load where they are used.
"""

from howhard.allocate import BinnedPolicy, ThresholdPolicy, greedy, greedy_binary, uniform
from howhard.backends.base import Completion, Sampler, SamplingParams
from howhard.errors import (
    BudgetError,
    ConfigError,
    HowhardError,
    ModelNotFoundError,
    NotFittedError,
    PoolError,
    StoreError,
    UnknownNameError,
)
from howhard.evaluate import Evaluation, evaluate
from howhard.pool import Pool, expected_best_of, read_pool, write_pool
from howhard.predict import SuccessPredictor
from howhard.store import LabelStore, StoreConfig
from howhard.tasks import Query, Task, get_task

__version__ = "0.1.0"

__all__ = [
    "BinnedPolicy",
    "BudgetError",
    "Completion",
    "ConfigError",
    "Evaluation",
    "HowhardError",
    "LabelStore",
    "ModelNotFoundError",
    "NotFittedError",
    "Pool",
    "PoolError",
    "Query",
    "Sampler",
    "SamplingParams",
    "StoreConfig",
    "StoreError",
    "SuccessPredictor",
    "Task",
    "ThresholdPolicy",
    "UnknownNameError",
    "evaluate",
    "expected_best_of",
    "get_task",
    "greedy",
    "greedy_binary",
    "read_pool",
    "uniform",
    "write_pool",
]
