"""Rerankers (which one of the k samples is returned) and the exact success under each.

Estimators (pure numpy): `scored_best_of`, `majority_best_of`, `reranked_q` (a drop-in for
``pool.q`` when a reranker, not an oracle, chooses). Rerankers for serving and labeling, found by
name: ``get_reranker("majority", task)``, ``get_reranker("reward-model", task,
client=reward_client("http://127.0.0.1:8000", model="my-rm"))``, ``get_reranker("oracle", task,
queries=queries)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from howhard.registry import Registry
from howhard.rerank.clients import (
    HFEndpointRewardClient,
    LocalRewardModel,
    VLLMRewardClient,
    reward_client,
    reward_of,
)
from howhard.rerank.estimate import majority_best_of, reranked_q, scored_best_of
from howhard.rerank.rerankers import (
    MajorityVote,
    OracleReranker,
    Reranker,
    RewardClient,
    RewardModelReranker,
    VerifierReranker,
    top_index,
)
from howhard.tasks.base import Query, Task

RERANKERS: Registry[Reranker] = Registry("reranker")


def _oracle(task: Task, queries: Iterable[Query] = ()) -> Reranker:
    return OracleReranker(task, queries)


def _majority(task: Task) -> Reranker:
    return MajorityVote(task.answer)


def _reward_model(task: Task, client: RewardClient) -> Reranker:
    return RewardModelReranker(client)


RERANKERS.register("oracle", _oracle)
RERANKERS.register("majority", _majority)
RERANKERS.register("reward-model", _reward_model)


def get_reranker(name: str, task: Task, **options: Any) -> Reranker:
    """The reranker registered as ``name`` for ``task`` (``oracle``: queries=...,
    ``reward-model``: client=...)."""
    return RERANKERS.get(name)(task, **options)


__all__ = [
    "RERANKERS",
    "HFEndpointRewardClient",
    "LocalRewardModel",
    "MajorityVote",
    "OracleReranker",
    "Reranker",
    "RewardClient",
    "RewardModelReranker",
    "VLLMRewardClient",
    "VerifierReranker",
    "get_reranker",
    "majority_best_of",
    "reranked_q",
    "reward_client",
    "reward_of",
    "scored_best_of",
    "top_index",
]
