"""``python -m howhard.backends.llamacpp_server ARGS``: llama-cpp-python's OpenAI-compatible
server (``python -m llama_cpp.server ARGS``) with howhard's llama.cpp settings
(`howhard.backends.llamacpp._llama`): OpenMP threads that sleep while they wait, and on CPUs with
AMX tiles, where llama.cpp's AMX kernels crash, models loaded without extra weight buffers;
llama.cpp's log read at ggml's levels (`howhard.backends.llamacpp._log`)."""

from __future__ import annotations

import runpy

from howhard.backends.llamacpp import _llama

if __name__ == "__main__":
    _llama()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
