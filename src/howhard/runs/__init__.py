"""The commands as library calls: one frozen, keyword-only spec per command, validated once in
``__post_init__`` (as `howhard.serve.ServeConfig` is), and one ``run_*(spec)`` that reads the
inputs, calls the computation and writes the report. The command line builds these specs from
its flags; a script builds them directly::

    from howhard.runs import EvaluateSpec, run_evaluate
    ev = run_evaluate(EvaluateSpec(pool="eval.jsonl", predictor="predictor.npz", budgets=[1, 4]))

The inputs every run shares (pools, predictors of a given kind, their features) are in
`howhard.runs.inputs`.
"""

from howhard.runs.compare import CompareSpec, run_compare
from howhard.runs.evaluate import EvaluateSpec, RoutingSpec, run_evaluate, run_evaluate_routing
from howhard.runs.inputs import (
    feature_source,
    load_predictor,
    predictor_features,
    read_pools,
    read_queries,
    trained_features,
)
from howhard.runs.label import ExportSpec, LabelSpec, label_queries, run_export, run_label
from howhard.runs.menu import (
    MenuCompareSpec,
    MenuEvaluateSpec,
    MenuTrainSpec,
    policy_families,
    run_menu_compare,
    run_menu_evaluate,
    run_menu_train,
)
from howhard.runs.train import TrainResult, TrainSpec, run_train, train, train_router

__all__ = [
    "CompareSpec",
    "EvaluateSpec",
    "ExportSpec",
    "LabelSpec",
    "MenuCompareSpec",
    "MenuEvaluateSpec",
    "MenuTrainSpec",
    "RoutingSpec",
    "TrainResult",
    "TrainSpec",
    "feature_source",
    "label_queries",
    "load_predictor",
    "policy_families",
    "predictor_features",
    "read_pools",
    "read_queries",
    "run_compare",
    "run_evaluate",
    "run_evaluate_routing",
    "run_export",
    "run_label",
    "run_menu_compare",
    "run_menu_evaluate",
    "run_menu_train",
    "run_train",
    "train",
    "train_router",
    "trained_features",
]
