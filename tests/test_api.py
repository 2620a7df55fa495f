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
    """Nor the predictors' scikit-learn, scipy.optimize or the rerankers' HTTP client: they
    load on first use of the names that need them, which still resolve."""
    code = "import sys, howhard; print(sorted(m for m in ('llama_cpp', 'torch', "
    code += "'sentence_transformers', 'matplotlib.pyplot', 'sklearn', 'scipy.optimize', "
    code += "'httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert {"SuccessPredictor", "get_reranker"} <= set(dir(howhard))
    assert howhard.SuccessPredictor().head == "logistic"
    try:
        howhard.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no attribute 'no_such_name'" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
