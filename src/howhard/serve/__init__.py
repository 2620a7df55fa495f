"""``howhard serve``: the OpenAI-compatible proxy (see `howhard.serve.app`).

`build_proxy` loads what a `ServeConfig` names (predictor, featuriser, router, calibration pool,
upstream model names) and calibrates the pacers; `serve` runs it under uvicorn, which on SIGTERM
stops accepting connections, lets the requests in flight finish, and exits. Its logs and banner
are redacted (`howhard.redact`), and slow clients are cut off (`howhard.serve.connections`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence

import httpx
import numpy as np

from howhard.backends.openai import Fleet, normalise_endpoint
from howhard.errors import ConfigError
from howhard.features import Featurizer, cached_transform, get_featurizer
from howhard.pool import read_pool
from howhard.predict import load_predictor
from howhard.predict.gains import GainsPredictor
from howhard.predict.success import SuccessPredictor
from howhard.redact import display_url, redact_logs
from howhard.rerank.rerankers import MajorityVote, RewardModelReranker
from howhard.runs.inputs import feature_source, trained_features
from howhard.serve.app import Decision, Proxy, Upstream, create_app
from howhard.serve.config import ServeConfig, load_config
from howhard.serve.pacing import BudgetPacer, SharePacer
from howhard.tasks import get_task

Predictor = SuccessPredictor | GainsPredictor


def _featurizer(
    predictor: Predictor, path: object, loaded: dict[str, Featurizer]
) -> tuple[str, Featurizer]:
    """The feature source of ``predictor`` and its featurizer (one per source, shared by the
    predictor and the router)."""
    meta = trained_features(predictor, str(path))
    source = feature_source(meta["features"], meta.get("feature_model"), meta["task"])
    if source not in loaded:
        render = get_task(meta["task"]).query_text
        loaded[source] = get_featurizer(meta["features"], meta.get("feature_model"), render)
    return source, loaded[source]


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


def build_proxy(config: ServeConfig) -> Proxy:
    """Load and calibrate everything ``config`` names."""
    k = config.max_per_query
    predictor = load_predictor(config.predictor)
    if predictor.meta_.get("kind") == "router":
        raise ConfigError(
            f"{config.predictor} routes between two decoders (it was trained with a strong "
            "pool); pass it as router=PATH, and a file that `howhard train` fitted on one pool "
            "as predictor=PATH",
            param=("router", "predictor"),
        )
    loaded: dict[str, Featurizer] = {}
    source, featurizer = _featurizer(predictor, config.predictor, loaded)
    calibration = read_pool(config.calibration)
    cache = str(config.feature_cache) if config.feature_cache else None

    def calibration_features(source: str, featurizer: Featurizer) -> np.ndarray:
        return cached_transform(source, lambda: featurizer, calibration.prompts, cache)

    rng = np.random.default_rng(config.seed)
    gains = predictor.predict_gains(calibration_features(source, featurizer), k)
    pacer = BudgetPacer(
        config.budget,
        k,
        gains,
        min_per_query=config.min_per_query,
        window=config.window,
        horizon=config.horizon,
        rng=rng,
    )
    share_pacer = router = None
    if config.router is not None and config.strong_share is not None:
        router = load_predictor(config.router)
        if router.meta_.get("kind") != "router":
            raise ConfigError(
                f"{config.router} cannot route (it was trained on one pool); pass as router=PATH "
                "a file that `howhard train` fitted on a weak and a strong pool",
                param="router",
            )
        router_source, router_featurizer = _featurizer(router, config.router, loaded)
        scores = router.predict_proba_success(
            calibration_features(router_source, router_featurizer)
        )
        share_pacer = SharePacer(
            config.strong_share, scores, window=config.window, horizon=config.horizon, rng=rng
        )

    def decide(text: str) -> Decision:
        x = featurizer.transform([text])
        g = predictor.predict_gains(x, k)[0]
        if share_pacer is not None and router is not None:
            # One featurisation when the router reads the same features (the usual case).
            xr = x if router_featurizer is featurizer else router_featurizer.transform([text])
            score = router.predict_proba_success(xr)[0]
            if share_pacer.decide(float(score)):
                return Decision(1, "strong", float(g[0]), float(g[0]))
        n = pacer.decide(g)
        return Decision(n, "weak", float(g[0]), float(g[:n].sum()))

    fleet = functools.partial(
        Fleet,
        api_key=config.upstream_api_key,
        per_endpoint=config.per_upstream,
        timeout=config.timeout,
        retries=config.retries,
    )
    weak = Upstream(
        fleet(config.upstreams),
        _upstream_model(config.upstreams, config.upstream_model, config.upstream_api_key),
    )
    strong = None
    if config.strong:
        strong = Upstream(
            fleet(config.strong),
            _upstream_model(config.strong, config.strong_model, config.upstream_api_key),
        )
    task = get_task(predictor.meta_["task"])
    majority = MajorityVote(lambda c: task.answer(c) or " ".join(c.split()) or None)
    reward = None
    if config.reward_model:
        from howhard.rerank.clients import reward_client

        reward = RewardModelReranker(
            reward_client(
                config.reward_model, api=config.reward_api, model=config.reward_model_name
            )
        )
    return Proxy(config, decide, weak, strong, majority, reward, pacer, share_pacer)


def serve(config: ServeConfig) -> None:
    """Run the proxy until SIGTERM or Ctrl-C (requests in flight finish first)."""
    import uvicorn

    from howhard.serve.connections import guarded_protocol, uvicorn_protocol

    redact = config.redactor()
    undo = [redact_logs(redact)]  # start-up's own logs (e.g. fetching the model name) too
    proxy = build_proxy(config)
    upstreams = ", ".join(map(display_url, config.upstreams))
    print(
        redact(
            f"howhard serve: http://{config.host}:{config.port}/v1 -> {upstreams} "
            f"(model {proxy.weak.model}; budget {config.budget:g} samples per request on "
            f"average, at most {config.max_per_query})"
        ),
        file=sys.stderr,
        flush=True,
    )
    protocol = guarded_protocol(
        uvicorn_protocol(),
        config.header_timeout,
        config.max_header_bytes,
        closed=lambda reason: proxy.metrics.closed.update([reason]),
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(proxy),
            host=config.host,
            port=config.port,
            http=protocol,
            log_level=config.log_level,
            timeout_graceful_shutdown=int(config.timeout),
            timeout_keep_alive=config.keep_alive_timeout,  # type: ignore[arg-type]
            limit_concurrency=config.max_connections,
            access_log=False,
        )
    )
    undo.append(redact_logs(redact))  # again: uvicorn.Config replaced its loggers' handlers
    try:
        server.run()
    finally:
        for step in undo:
            step()


__all__ = ["Proxy", "ServeConfig", "build_proxy", "create_app", "load_config", "serve"]
