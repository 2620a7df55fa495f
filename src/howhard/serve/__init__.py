"""``howhard serve``: the OpenAI-compatible proxy (see `howhard.serve.app`).

`Startup` loads what a `ServeConfig` names in two parts: at once what is quick (the predictor,
router and calibration files, the feature sources, the fleets), so a bad setting fails before the
server listens; then what is slow (the featurizer, the calibration pool's features, kept in a
feature cache on disk so a restart reuses them; the pacers; the upstream model names). `serve`
runs the slow part in the background while uvicorn listens: /health answers at once, /ready and
completion requests answer 503 with the progress until the proxy is ready. On SIGTERM uvicorn
stops accepting connections, lets the requests in flight finish for up to ``shutdown_timeout``
seconds, cancels those left (closing their upstream requests), and exits. `build_proxy` does
both parts in the caller's thread. Logs and the banner are redacted (`howhard.redact`), and slow
clients are cut off (`howhard.serve.connections`).

A config with ``[[decoder]]`` tables starts in menu mode instead (`MenuStartup`, chosen by
`startup`): the decoders' pools are the calibration data; the policy family is fitted on them and
its knob paced to the budget in cost (`howhard.serve.rounds`, `howhard.serve.pacing.KnobPacer`).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from howhard.backends.openai import Fleet, normalise_endpoint
from howhard.errors import ConfigError
from howhard.features import (
    Combined,
    EmbeddingServer,
    Featurizer,
    cached_transform,
    cached_transforms,
    get_featurizer,
    reading_runs,
    source_names,
)
from howhard.menu import Menu, MenuData, random_orders
from howhard.pool import read_pool
from howhard.predict import load_predictor
from howhard.predict.gains import GainsPredictor
from howhard.predict.success import SuccessPredictor
from howhard.redact import display_url, redact_logs
from howhard.rerank.rerankers import MajorityVote, RewardModelReranker
from howhard.runs.inputs import feature_source, source_caches, trained_features, trained_server
from howhard.serve.app import Decision, MenuState, Proxy, Upstream, create_app
from howhard.serve.config import ServeConfig, load_config
from howhard.serve.pacing import BudgetPacer, KnobPacer, SharePacer, spend_curve
from howhard.serve.requestlog import RequestLog
from howhard.serve.rounds import Caps, SpendLimiter, families
from howhard.tasks import get_task

Predictor = SuccessPredictor | GainsPredictor


def _upstream_model(endpoints: Sequence[str], model: str | None, key: str | None) -> str:
    """``model``, or the first model the first reachable endpoint lists at /v1/models."""
    if model:
        return model
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for endpoint in endpoints:
        try:
            answer = httpx.get(
                normalise_endpoint(endpoint) + "/models", headers=headers, timeout=10
            )
            return str(answer.json()["data"][0]["id"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            continue
    raise ConfigError(
        f"cannot ask {', '.join(map(display_url, endpoints))} for its model name "
        "(GET /v1/models); start the upstream server first, or pass upstream_model=NAME",
        param="upstream_model",
    )


@dataclass
class Decider:
    """The decisions for query texts in arrival order: the features of all of them in one
    ``featurizer.transform`` call, then for each query, in order, its predicted gains
    Δ̂(x, 1..K) (one row at a time, as for a lone query) and the pacers' decision, which moves
    their thresholds for the next query. So a batch is decided exactly as its queries one at a
    time, given the same features. Routing: when ``share_pacer`` sends a query to the strong
    decoder (by the router's score P(strong beats weak | x)), it gets one strong sample."""

    featurizer: Featurizer
    predictor: Predictor
    pacer: BudgetPacer
    router: Predictor | None = None
    router_featurizer: Featurizer | None = None
    share_pacer: SharePacer | None = None

    def __call__(self, texts: Sequence[str]) -> list[Decision]:
        k = self.pacer.max_per_query
        x = self.featurizer.transform(texts)
        scores = None
        if self.router is not None and self.share_pacer is not None:
            # One featurisation when the router reads the same features (the usual case).
            other = self.router_featurizer
            xr = x if other is None or other is self.featurizer else other.transform(texts)
            scores = [self.router.predict_proba_success(xr[i : i + 1])[0] for i in range(len(xr))]
        decisions = []
        for i in range(len(texts)):
            g = self.predictor.predict_gains(x[i : i + 1], k)[0]
            if (
                scores is not None
                and self.share_pacer is not None
                and self.share_pacer.decide(float(scores[i]))
            ):
                decisions.append(Decision(1, "strong", float(g[0]), float(g[0])))
                continue
            n = self.pacer.decide(g)
            decisions.append(Decision(n, "weak", float(g[0]), float(g[:n].sum())))
        return decisions


def feature_cache_path(source: str, environ: Mapping[str, str]) -> Path:
    """Where the proxy caches the calibration features of ``source`` when the configuration names
    no cache: ``$XDG_CACHE_HOME/howhard/features/`` (``~/.cache/howhard/features/`` when unset),
    one file per feature source (its name and a hash of it), rows keyed by prompt hash (see
    `cached_transform`), so any calibration pool featurised once starts at once."""
    base = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", source).strip("-")[:64]
    return base / "howhard" / "features" / f"{slug}-{digest}.npz"


class _Stopped(Exception):
    """The server stopped while starting."""


def _say(message: str) -> None:
    print(f"howhard serve: {message}", file=sys.stderr, flush=True)


PROGRESS_EVERY = 5.0  # seconds between progress lines while featurising


class Startup:
    """The proxy's start-up. Made from a `ServeConfig`, it checks and loads what is quick (the
    predictor and router, the calibration pool, their feature sources, the fleets) and holds a
    `Proxy` that is not ready (``proxy.starting`` says why); `run` does what is slow and makes
    it ready; `start` runs `run` in a background thread, where a failure makes /ready report it
    and stops the server (`serve` then raises ``error``)."""

    def __init__(self, config: ServeConfig, environ: Mapping[str, str] | None = None) -> None:
        self._begin(config, environ)
        # ServeConfig checks that static mode names both.
        assert config.predictor is not None and config.calibration is not None
        self.predictor = load_predictor(config.predictor)
        if self.predictor.meta_.get("kind") == "router":
            raise ConfigError(
                f"{config.predictor} routes between two decoders (it was trained with a strong "
                "pool); pass it as router=PATH, and a file that `howhard train` fitted on one "
                "pool as predictor=PATH",
                param=("router", "predictor"),
            )
        self.source = self._source(self.predictor, config.predictor)
        self.router: Predictor | None = None
        self.router_source = ""
        if config.router is not None and config.strong_share is not None:
            self.router = load_predictor(config.router)
            if self.router.meta_.get("kind") != "router":
                raise ConfigError(
                    f"{config.router} cannot route (it was trained on one pool); pass as "
                    "router=PATH a file that `howhard train` fitted on a weak and a strong pool",
                    param="router",
                )
            self.router_source = self._source(self.router, config.router)
        self.calibration = read_pool(config.calibration)
        weak = Upstream(self._fleet(config.upstreams), config.upstream_model or "")
        strong = None
        if config.strong:
            strong = Upstream(self._fleet(config.strong), config.strong_model or "")
        task = get_task(self.predictor.meta_["task"])
        majority = MajorityVote(lambda c: task.answer(c) or " ".join(c.split()) or None)
        self.proxy = Proxy(config, None, weak, strong, majority, None, None)

    def _begin(self, config: ServeConfig, environ: Mapping[str, str] | None) -> None:
        self.began = time.perf_counter()
        self.config = config
        self.environ = os.environ if environ is None else environ
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._makers: dict[str, Callable[[], Featurizer]] = {}
        # each source's parts (a+b: the sources of a and b), each with a cache file of its own
        self._parts: dict[str, list[str]] = {}
        self._runs: dict[str, list[list[str]]] = {}  # the parts each featurizer of a source reads
        self._featurizers: dict[str, Featurizer] = {}

    def _fleet(self, endpoints: Sequence[str]) -> Fleet:
        config = self.config
        return Fleet(
            endpoints,
            api_key=config.upstream_api_key,
            per_endpoint=config.per_upstream,
            timeout=config.timeout,
            retries=config.retries,
        )

    def _reward_model(self) -> None:
        config = self.config
        if config.reward_model:
            from howhard.rerank.clients import reward_client

            self.proxy.starting = "loading the reward model"
            self.proxy.reward_model = RewardModelReranker(
                reward_client(
                    config.reward_model, api=config.reward_api, model=config.reward_model_name
                )
            )

    def _source(self, predictor: Predictor, path: object) -> str:
        """The feature source ``predictor`` was trained on (checked to exist); its featurizer is
        made when first needed (one per source, shared by the predictor and the router)."""
        meta = trained_features(predictor, str(path))
        features, model, task = meta["features"], meta.get("feature_model"), meta["task"]
        parts = source_names(features)
        render = get_task(task).query_text
        config = self.config
        # server features: the first upstream's own embeddings unless feature_url says otherwise
        url = config.feature_url or (config.upstreams[0] if config.upstreams else None)
        key = config.feature_api_key or config.upstream_api_key
        endpoint = None if url is None else EmbeddingServer(url, key, timeout=config.timeout)
        server = trained_server(meta, endpoint, str(path))
        source = feature_source(features, model, task, server)
        self._makers[source] = lambda: get_featurizer(features, model, render, task, server)
        self._parts[source] = [feature_source(part, model, task, server) for part in parts]
        self._runs[source] = reading_runs(parts)
        return source

    def featurizer(self, source: str) -> Featurizer:
        if source not in self._featurizers:
            self._featurizers[source] = self._makers[source]()
        return self._featurizers[source]

    def _reader(self, source: str, i: int) -> Featurizer:
        """Featurizer i of the one requests use for ``source`` (one per run of its parts,
        `reading_runs`), so calibration loads no model of its own beside it."""
        made = self.featurizer(source)
        return made.parts[i] if isinstance(made, Combined) else made

    def cache(self, source: str) -> Path | None:
        """The calibration feature cache of ``source`` (None: no cache)."""
        if not self.config.cache_features:
            return None
        if self.config.feature_cache is not None:  # or the file beside it of another source
            return source_caches(self.config.feature_cache, [source])[0]
        return feature_cache_path(source, self.environ)

    def features(self, source: str) -> np.ndarray:
        """The calibration pool's features from ``source``, those of prompts featurised before
        from its cache, with progress in ``proxy.starting`` and a line every few seconds."""
        proxy, prompts = self.proxy, self.calibration.prompts
        distinct = len(set(prompts))
        said = [0.0]

        def progress(done: int, todo: int, part: str = "", count: bool = True) -> None:
            """Progress of featurising (``part``: the run of parts being read, when the source
            is read in several); ``count``: add to the calibration metrics, which count each
            prompt once (by the first run)."""
            if self.stopping.is_set():
                raise _Stopped
            cached = distinct - todo
            proxy.starting = (
                f"calibrating{part}: {done}/{todo} prompts featurised ({cached} from cache)"
            )
            now = time.perf_counter()
            if todo and (done in (0, todo) or now - said[0] >= PROGRESS_EVERY):
                said[0] = now
                _say(f"calibration features ({source}){part}: {done}/{todo} featurised")
            if done == todo and count:
                proxy.metrics.calibration["cache"] += cached
                proxy.metrics.calibration["featurised"] += todo

        parts = self._parts[source]
        if self.config.cache_features and self.config.feature_cache is not None and len(parts) > 1:
            # a+b: each part from its own file, as train and evaluate keep them (source_caches);
            # what the files lack is read by the request featurizer, each of its featurizers
            # filling the files of its run of parts (neighbouring layers: one decode pass)
            files = source_caches(self.config.feature_cache, parts)
            blocks, start = [], 0
            for i, names in enumerate(self._runs[source]):
                run = slice(start, start + len(names))
                reader = lambda i=i: self._reader(source, i)  # noqa: E731
                part = ", part " + "+".join(names)
                told = lambda d, t, p=part, c=i == 0: progress(d, t, p, c)  # noqa: E731
                blocks += cached_transforms(parts[run], reader, prompts, files[run], told)
                start += len(names)
            return np.concatenate(blocks, axis=1)
        cache = self.cache(source)
        return cached_transform(source, lambda: self.featurizer(source), prompts, cache, progress)

    def run(self, wait_for_upstream: bool = True) -> Proxy:
        """Featurise the calibration pool, fit the pacers, ask the upstreams their model names
        (while they do not answer: wait, or with ``wait_for_upstream`` false raise), and make
        the proxy ready."""
        config, proxy = self.config, self.proxy
        k = config.max_per_query
        rng = np.random.default_rng(config.seed)
        gains = self.predictor.predict_gains(self.features(self.source), k)
        pacer = BudgetPacer(
            config.budget,
            k,
            gains,
            min_per_query=config.min_per_query,
            window=config.window,
            horizon=config.horizon,
            rng=rng,
        )
        share_pacer = router_featurizer = None
        if self.router is not None and config.strong_share is not None:
            scores = self.router.predict_proba_success(self.features(self.router_source))
            share_pacer = SharePacer(
                config.strong_share, scores, window=config.window, horizon=config.horizon, rng=rng
            )
            router_featurizer = self.featurizer(self.router_source)
        proxy.starting = "loading the featurizer"
        featurizer = self.featurizer(self.source)  # not made yet when every prompt was cached
        self._reward_model()
        for upstream, endpoints in ((proxy.weak, config.upstreams), (proxy.strong, config.strong)):
            if upstream is not None and not upstream.model:
                upstream.model = self._upstream_model(endpoints, wait_for_upstream)
        decide = Decider(
            featurizer, self.predictor, pacer, self.router, router_featurizer, share_pacer
        )
        seconds = time.perf_counter() - self.began
        proxy.metrics.startup_seconds = seconds
        proxy.ready(decide, pacer, share_pacer)
        counts = proxy.metrics.calibration
        _say(
            f"ready in {seconds:.1f} s: {len(self.calibration.prompts)} calibration prompts, "
            f"{counts['cache']} from cache, {counts['featurised']} featurised; upstream model "
            f"{proxy.weak.model}"
        )
        return proxy

    def _upstream_model(self, endpoints: Sequence[str], wait: bool) -> str:
        while True:
            try:
                return _upstream_model(endpoints, None, self.config.upstream_api_key)
            except ConfigError as e:
                if not wait:
                    raise
                reason = f"waiting for upstream: {e}"
                if self.proxy.starting != reason:
                    _say(reason)
                self.proxy.starting = reason
            if self.stopping.wait(1.0):
                raise _Stopped

    def start(self, stop_serving: Callable[[], None]) -> None:
        """Run `run` in a background thread; if it fails, call ``stop_serving``."""

        def work() -> None:
            try:
                self.run()
            except _Stopped:
                pass
            except BaseException as e:
                self.error = e
                self.proxy.fail(f"start-up failed: {e}")
                if not isinstance(e, ConfigError):
                    traceback.print_exc()
                _say(f"start-up failed: {e}")
                stop_serving()  # then serve raises the error

        self._thread = threading.Thread(target=work, name="howhard-startup", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop `run` at its next progress report (at most one chunk of featurising later)."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)


def normalised_text(completion: str) -> str | None:
    """A completion's whole text, whitespace collapsed (None when empty): the answer majority
    vote counts when no task says how to extract one."""
    return " ".join(completion.split()) or None


class MenuStartup(Startup):
    """Menu mode's start-up (`ServeConfig.decoders`). At once: the decoders' pools (read and
    aligned: the calibration data), their predictors and feature sources, the policy family,
    the fleets, the request log. In `run`: the predictions on the pools, the family fitted on
    them, its spend curve (over a random order of each query's pooled samples, seeded by
    ``seed``) and the `KnobPacer` for the budget (unless ``knob`` fixes it), the
    decoders' model names; then the proxy is ready."""

    def __init__(self, config: ServeConfig, environ: Mapping[str, str] | None = None) -> None:
        self._begin(config, environ)
        assert config.policy is not None  # ServeConfig checks it in menu mode
        menu = Menu(config.decoders)
        self.pools = menu.pools()
        self.calibration = self.pools[0]
        self.costs = [d.pool_costs(p) for d, p in zip(config.decoders, self.pools, strict=True)]
        self.predictors: list[tuple[Predictor, str] | None] = []
        for d in config.decoders:
            if d.predictor is None:
                self.predictors.append(None)
                continue
            predictor = load_predictor(d.predictor)
            if predictor.meta_.get("kind") == "router":
                raise ConfigError(
                    f"decoder {d.name!r}: {d.predictor} is a router; give each decoder the "
                    "predictor `howhard train` fitted on its own pool",
                    param="predictor",
                )
            self.predictors.append((predictor, self._source(predictor, d.predictor)))
        self.family = families()[config.policy]()
        tasks = [p.meta_.get("task") for p, _ in filter(None, self.predictors)]
        task = config.task or next((t for t in tasks if t), None)
        answer = get_task(task).answer if task else normalised_text
        spend = None
        if config.max_spend_per_second is not None:
            rate = config.max_spend_per_second
            spend = SpendLimiter(rate, rate * config.spend_burst_seconds)
        state = MenuState(
            decoders=[(d, Upstream(self._fleet(d.upstream), d.model or "")) for d in menu.decoders],
            caps=Caps(config.max_per_query, config.max_rounds, config.max_cost, config.max_seconds),
            answer=answer,
            spend=spend,
            log=None if config.request_log is None else RequestLog(config.request_log),
        )
        first = state.decoders[0][1]
        self.proxy = Proxy(config, None, first, None, MajorityVote(answer), None, None, menu=state)

    def predict(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's per-decoder predicted one-sample success q̂(x, 1) (NaN for a decoder
        without a predictor), one featurisation per feature source."""
        out = np.full((len(texts), len(self.predictors)), np.nan)
        features: dict[str, np.ndarray] = {}
        for d, entry in enumerate(self.predictors):
            if entry is not None:
                predictor, source = entry
                if source not in features:
                    features[source] = self.featurizer(source).transform(texts)
                out[:, d] = predictor.predict_gains(features[source], 1)[:, 0]
        return list(out)

    def run(self, wait_for_upstream: bool = True) -> Proxy:
        config, proxy = self.config, self.proxy
        menu = proxy.menu
        assert menu is not None
        predictions = np.full((len(self.calibration), len(self.predictors)), np.nan)
        for d, entry in enumerate(self.predictors):
            if entry is not None:
                predictor, source = entry
                predictions[:, d] = predictor.predict_gains(self.features(source), 1)[:, 0]
        data = MenuData(self.pools, self.costs, predictions)
        proxy.starting = f"fitting the policy family {config.policy!r}"
        family = self.family.fit(data, config.observe)
        pacer = None
        if config.knob is None:
            proxy.starting = "calibrating the knob to the budget"
            # Replayed over a random order of each query's samples (as `howhard compare`
            # calibrates): the order in a pool file need not be random (the CRUXEval pools list
            # agreeing, correct samples first), and traffic draws in no particular order.
            orders = random_orders(self.pools, np.random.default_rng(config.seed))
            knobs, spends = spend_curve(family, data, config.observe, config.budget, orders=orders)
            if not spends[0] <= config.budget <= spends[-1]:
                _say(
                    f"warning: the budget {config.budget:g} lies outside what the policy spends "
                    f"on the calibration pools ({spends[0]:.4g} to {spends[-1]:.4g} per "
                    "request); the pacer will hold the nearest end"
                )
            pacer = KnobPacer(
                config.budget,
                knobs,
                spends,
                window=config.window,
                horizon=config.horizon,
                rng=np.random.default_rng(config.seed),
            )
        predict = None
        if any(self.predictors):
            for entry in filter(None, self.predictors):
                self.featurizer(entry[1])  # made now, not by the first request
            predict = self.predict
        self._reward_model()
        for decoder, upstream in menu.decoders:
            if not upstream.model:
                upstream.model = self._upstream_model(decoder.upstream, wait_for_upstream)
        seconds = time.perf_counter() - self.began
        proxy.metrics.startup_seconds = seconds
        proxy.ready_menu(family, pacer, config.knob, predict)
        knob = f"knob {config.knob:g} (fixed)" if pacer is None else "knob paced"
        _say(
            f"ready in {seconds:.1f} s: menu {', '.join(menu.names)}, policy {config.policy}, "
            f"{knob}, budget {config.budget:g} per request, calibrated on "
            f"{len(self.calibration)} queries"
        )
        return proxy


def startup(config: ServeConfig, environ: Mapping[str, str] | None = None) -> Startup:
    """The start-up of ``config``'s mode: `MenuStartup` when it has decoders, else `Startup`."""
    return (MenuStartup if config.menu_mode else Startup)(config, environ)


def build_proxy(config: ServeConfig) -> Proxy:
    """Load and calibrate everything ``config`` names, in this thread (an upstream that does not
    answer is a ConfigError)."""
    return startup(config).run(wait_for_upstream=False)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (as uvicorn binds one), or a ConfigError naming
    the port when it cannot be bound (e.g. another process listens on it)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); choose another port, or stop "
            "the process that listens there",
            param="port",
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(config: ServeConfig) -> None:
    """Run the proxy until SIGTERM or Ctrl-C (requests in flight finish first, for up to
    ``shutdown_timeout`` seconds); it listens before it is calibrated (see `Startup`), and raises
    the error of a start-up that failed (a port it cannot listen on: before starting)."""
    import uvicorn

    from howhard.serve.connections import guarded_protocol, uvicorn_protocol

    redact = config.redactor()
    sock = listen(config.host, config.port)  # a port in use fails before anything starts
    undo = [sock.close, redact_logs(redact)]  # start-up's own logs (e.g. the model name) too
    starting = startup(config)
    proxy = starting.proxy
    if config.menu_mode:
        upstreams = ", ".join(
            f"{d.name}: {', '.join(map(display_url, d.upstream))}" for d in config.decoders
        )
        spend = f"budget {config.budget:g} cost per request on average, policy {config.policy}"
    else:
        upstreams = ", ".join(map(display_url, config.upstreams))
        spend = (
            f"budget {config.budget:g} samples per request on average, "
            f"at most {config.max_per_query}"
        )
    print(
        redact(f"howhard serve: http://{config.host}:{config.port}/v1 -> {upstreams} ({spend})"),
        file=sys.stderr,
        flush=True,
    )
    protocol = guarded_protocol(
        uvicorn_protocol(),
        config.header_timeout,
        config.max_header_bytes,
        closed=lambda reason: proxy.metrics.closed.update([reason]),
    )

    def stop_serving() -> None:  # after a failed start-up (no request was answered but 503s)
        server.should_exit = True

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(proxy, on_start=lambda: starting.start(stop_serving)),
            host=config.host,
            port=config.port,
            http=protocol,
            log_level=config.log_level,
            timeout_graceful_shutdown=config.shutdown_timeout,  # type: ignore[arg-type]
            timeout_keep_alive=config.keep_alive_timeout,  # type: ignore[arg-type]
            limit_concurrency=config.max_connections,
            access_log=False,
        )
    )
    undo.append(redact_logs(redact))  # again: uvicorn.Config replaced its loggers' handlers
    try:
        server.run(sockets=[sock])
    finally:
        starting.stop()
        for step in undo:
            step()
    if starting.error is not None:
        raise starting.error


__all__ = [
    "Decider",
    "MenuStartup",
    "Proxy",
    "ServeConfig",
    "Startup",
    "build_proxy",
    "create_app",
    "load_config",
    "serve",
    "startup",
]
