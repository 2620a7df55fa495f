import subprocess
import sys

import howhard


def test_public_names_are_the_intended_ones():
    assert set(howhard.__all__) == {
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
    }
    assert all(hasattr(howhard, name) for name in howhard.__all__)


def test_errors_share_one_base():
    for name in (
        "BackendError",
        "SandboxError",
        "BudgetError",
        "ConfigError",
        "ModelNotFoundError",
        "NotFittedError",
        "PoolError",
        "StoreError",
        "UnknownNameError",
    ):
        assert issubclass(getattr(howhard, name), howhard.HowhardError)


def test_import_loads_no_model_runtime():
    code = "import sys, howhard; print(sorted(m for m in ('llama_cpp', 'torch', "
    code += "'sentence_transformers', 'matplotlib.pyplot') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
