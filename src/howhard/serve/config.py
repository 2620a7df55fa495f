"""The server's configuration: one typed, frozen object, from flags and/or a TOML file, checked at
start-up (command line > config file > defaults).

Two modes. *Static* (``upstreams``, ``predictor``, ``calibration``): one upstream, k samples per
request decided before drawing, ``budget`` in samples. *Menu* (``[[decoder]]`` tables in the file,
or ``menu = "menu.toml"``, the schema of `howhard.menu.read_menu`): a policy family (``policy``)
draws in rounds over the decoders' upstreams, ``budget`` is the mean cost per request in the unit
of the decoders' prices, paced by the family's knob; ``max_per_query``, ``max_rounds``,
``max_cost`` and ``max_seconds`` cap one request, ``max_spend_per_second`` all of them."""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from howhard.backends.openai import normalise_endpoint
from howhard.errors import ConfigError
from howhard.menu import Decoder, menu_from_tables, read_menu
from howhard.redact import Redactor
from howhard.registry import did_you_mean

RERANKERS = ("majority", "reward-model")
OBSERVE = ("majority", "verifier")
ON_FAILURE = ("fail", "partial")
RESERVED_PARAMS = frozenset(
    {"model", "messages", "prompt", "n", "seed", "stream", "stream_options"}
)


# Settings only menu mode reads: set in the single-upstream mode, they are an error, not ignored.
MENU_SETTINGS = (
    "policy",
    "knob",
    "observe",
    "task",
    "max_rounds",
    "max_cost",
    "max_seconds",
    "max_spend_per_second",
    "spend_burst_seconds",
    "on_upstream_failure",
    "request_log",
)


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``howhard serve`` needs; see ``howhard serve --help`` for each field."""

    budget: float  # mean samples per request; in menu mode, mean cost per request
    max_per_query: int  # samples one request may never exceed (over all decoders)
    api_keys: tuple[str, ...] = field(repr=False)
    upstreams: tuple[str, ...] = ()  # static mode
    predictor: Path | None = None  # static mode
    calibration: Path | None = None  # static mode: a pool file whose prompts calibrate
    min_per_query: int = 1
    upstream_model: str | None = None  # None: the first model the upstream lists
    upstream_api_key: str | None = field(default=None, repr=False)
    strong: tuple[str, ...] = ()
    strong_model: str | None = None
    router: Path | None = None
    strong_share: float | None = None
    reranker: str = "majority"
    reward_model: str | None = None  # URL or local directory, for reranker = "reward-model"
    reward_api: str = "vllm"
    reward_model_name: str | None = None
    feature_cache: Path | None = None  # None: a file per feature source in the user cache
    feature_url: str | None = None  # server features: embeddings from here (None: upstreams[0])
    feature_api_key: str | None = field(default=None, repr=False)  # None: upstream_api_key
    cache_features: bool = True  # False: featurise the calibration pool at every start
    decision_batch: int = 32  # queued requests featurised and decided together, at most
    decision_wait_ms: float = 0.0  # a lone queued request waits this long for others to join
    models: tuple[
        str, ...
    ] = ()  # model names clients may ask for; () = the upstream's and "howhard"
    host: str = "127.0.0.1"
    port: int = 8000
    max_tokens: int = 1024  # cap on a request's max_tokens
    default_max_tokens: int = 256  # when the request names none
    max_body_bytes: int = 1_000_000
    max_json_depth: int = 64  # nesting of arrays and objects in a request body
    max_prompt_chars: int = 200_000
    header_timeout: float = 10.0  # seconds for a request's head, from connection or last answer
    body_timeout: float = 30.0  # seconds for a request's body, from its head
    keep_alive_timeout: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 512  # connections (and requests) at once; beyond: 503
    max_header_bytes: int = 65_536  # size of a request's head
    max_concurrency: int = 64  # upstream samples in flight, over all requests
    max_waiting: int = 256  # requests waiting for capacity before new ones get 429
    per_upstream: int = 8  # requests in flight per upstream endpoint
    timeout: float = 300.0  # per upstream request
    retries: int = 2
    shutdown_timeout: float = 30.0  # SIGTERM lets requests in flight finish, then cancels them
    window: int = 500
    horizon: int = 50
    seed: int = 0
    log_level: str = "info"
    # Menu mode: set by [[decoder]] tables (or menu = FILE) in the config file.
    decoders: tuple[Decoder, ...] = ()
    policy: str | None = None  # a policy family (`howhard.serve.rounds.families`)
    knob: float | None = None  # a fixed knob (no pacing); None: paced to the budget
    observe: str = "majority"  # what a policy sees: answers, or a verifier's rewards too
    task: str | None = None  # whose answer extraction groups votes; None: the whole text
    max_rounds: int = 8  # rounds one request may never exceed
    max_cost: float | None = None  # cost one request may never exceed
    max_seconds: float | None = None  # wall time of one request's rounds
    max_spend_per_second: float | None = None  # over all requests (a token bucket)
    spend_burst_seconds: float = 1.0  # the bucket holds this many seconds of spend
    on_upstream_failure: str = "fail"  # "partial": answer from what was drawn before
    request_log: Path | None = None  # JSONL, one line per answered request

    @property
    def menu_mode(self) -> bool:
        return bool(self.decoders)

    def __post_init__(self) -> None:
        if self.menu_mode:
            self._check_menu()
        else:
            self._check_static()
        menu = (u for d in self.decoders for u in d.upstream)
        for url in (*self.upstreams, *self.strong, *menu, *filter(None, [self.feature_url])):
            normalise_endpoint(url)
        if not self.api_keys or any(not k for k in self.api_keys):
            raise ConfigError(
                "no API key configured for clients; set HOWHARD_API_KEYS=key1,key2 (or "
                "api_keys in the config file): every route but /health needs one"
            )
        if not 1 <= self.max_per_query <= self.max_concurrency:
            raise ConfigError(
                f"max_per_query ({self.max_per_query}) must lie in [1, max_concurrency = "
                f"{self.max_concurrency}]: one request may never need more than the global cap",
                param=("max_per_query", "max_concurrency"),
            )
        routing = (bool(self.strong), self.router is not None, self.strong_share is not None)
        if any(routing) and not all(routing):
            raise ConfigError(
                "routing needs strong (URLs), router (a file) and strong_share (in [0, 1]) "
                "together",
                param=("strong", "router", "strong_share"),
            )
        if self.strong_share is not None and not 0.0 <= self.strong_share <= 1.0:
            raise ConfigError(
                f"strong_share must lie in [0, 1], got {self.strong_share}", param="strong_share"
            )
        if self.reranker not in RERANKERS:
            raise ConfigError(
                f"unknown reranker {self.reranker!r}{did_you_mean(self.reranker, RERANKERS)}; "
                f"choose one of {', '.join(RERANKERS)}",
                param="reranker",
            )
        if self.reranker == "reward-model" and not self.reward_model:
            raise ConfigError(
                "reranker 'reward-model' needs reward_model=URL_OR_DIR",
                param=("reranker", "reward_model"),
            )
        if not 1 <= self.default_max_tokens <= self.max_tokens:
            raise ConfigError(
                f"need 1 <= default_max_tokens ({self.default_max_tokens}) <= max_tokens "
                f"({self.max_tokens})",
                param="max_tokens",
            )
        for name in (
            "max_body_bytes",
            "max_prompt_chars",
            "max_waiting",
            "per_upstream",
            "max_connections",
            "max_header_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}", param=name)
        if self.max_json_depth < 8:
            raise ConfigError(
                f"max_json_depth must be >= 8 (a chat request with text parts nests 5 deep), "
                f"got {self.max_json_depth}"
            )
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout", "shutdown_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(
                    f"{name} must be > 0 seconds, got {getattr(self, name)}", param=name
                )
        if self.timeout <= 0 or self.retries < 0:
            raise ConfigError(
                f"need timeout > 0 and retries >= 0, got {self.timeout}, {self.retries}",
                param=("timeout", "retries"),
            )
        if self.decision_batch < 1:
            raise ConfigError(f"decision_batch must be >= 1, got {self.decision_batch}")
        if not 0.0 <= self.decision_wait_ms <= 1000.0:
            raise ConfigError(
                f"decision_wait_ms must lie in [0, 1000] milliseconds, got {self.decision_wait_ms}"
            )
        if self.feature_cache is not None and not self.cache_features:
            raise ConfigError(
                "feature_cache names a cache file but cache_features is false; pass one of them"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must lie in [0, 65535], got {self.port}", param="port")
        for path in (self.predictor, self.calibration, self.router):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{path} is not a file; check the path")

    def _check_static(self) -> None:
        default = {f.name: f.default for f in fields(self)}
        menu = [n for n in MENU_SETTINGS if getattr(self, n) != default[n]]
        if menu:
            raise ConfigError(
                f"{menu[0]} is a setting of menu mode ([[decoder]] tables in the config file, or "
                "a menu file); the single-upstream mode draws one round and keeps no request log",
                param=menu[0],
            )
        if not self.upstreams:
            raise ConfigError(
                "no upstream server; give its base URL in upstreams (e.g. http://127.0.0.1:8080), "
                "or a menu of decoders ([[decoder]] tables in the config file)",
                param="upstreams",
            )
        missing = [n for n in ("predictor", "calibration") if getattr(self, n) is None]
        if missing:
            raise ConfigError(
                f"missing setting(s): {', '.join(missing)}; pass them as flags or in the file",
                param=tuple(missing),
            )
        if not 1 <= self.min_per_query <= self.budget <= self.max_per_query:
            raise ConfigError(
                f"need 1 <= min_per_query ({self.min_per_query}) <= budget ({self.budget}) <= "
                f"max_per_query ({self.max_per_query}); pass e.g. budget=4 and max_per_query=16",
                param=("min_per_query", "budget", "max_per_query"),
            )

    def _check_menu(self) -> None:
        from howhard.serve.rounds import families  # the policy registry

        static = [
            n
            for n in ("upstreams", "strong", "predictor", "calibration", "router")
            if getattr(self, n)
        ]
        if static:
            raise ConfigError(
                f"{static[0]} is a setting of the single-upstream mode; with [[decoder]] tables "
                "each decoder names its upstream, its pool (calibration) and its predictor",
                param=static[0],
            )
        for d in self.decoders:
            fixed = sorted(set(d.params) & RESERVED_PARAMS)
            if fixed:
                raise ConfigError(
                    f"decoder {d.name!r}: params may not set {fixed[0]!r} (the server sets "
                    f"{', '.join(sorted(RESERVED_PARAMS))})",
                    param="params",
                )
            if not d.upstream:
                raise ConfigError(
                    f"decoder {d.name!r} has no upstream; give upstream = ['http://...']",
                    param="upstream",
                )
            if d.pool is None:
                raise ConfigError(
                    f"decoder {d.name!r} has no pool; the server fits and calibrates its policy "
                    "on every decoder's pool of the same queries (pool = 'FILE')",
                    param="pool",
                )
            for path in (d.pool, d.predictor):
                if path is not None and not path.is_file():
                    raise ConfigError(f"decoder {d.name!r}: {path} is not a file; check the path")
        if self.policy is None:
            known = ", ".join(sorted(families()))
            raise ConfigError(f"a menu needs policy = NAME; known: {known}", param="policy")
        found = families()
        if self.policy not in found:
            raise ConfigError(
                f"unknown policy {self.policy!r}{did_you_mean(self.policy, found)}; known: "
                f"{', '.join(sorted(found))}",
                param="policy",
            )
        if not (math.isfinite(self.budget) and self.budget > 0):
            raise ConfigError(
                f"budget (mean cost per request) must be > 0, got {self.budget}", param="budget"
            )
        if self.observe not in OBSERVE:
            raise ConfigError(
                f"observe must be one of {', '.join(OBSERVE)}, got {self.observe!r}",
                param="observe",
            )
        if self.on_upstream_failure not in ON_FAILURE:
            raise ConfigError(
                f"on_upstream_failure must be one of {', '.join(ON_FAILURE)}, got "
                f"{self.on_upstream_failure!r}",
                param="on_upstream_failure",
            )
        if self.max_rounds < 1:
            raise ConfigError(f"max_rounds must be >= 1, got {self.max_rounds}", param="max_rounds")
        for name in ("knob", "max_cost", "max_seconds", "max_spend_per_second"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a number > 0, got {value}", param=name)
        if not self.spend_burst_seconds > 0:
            raise ConfigError(
                f"spend_burst_seconds must be > 0, got {self.spend_burst_seconds}",
                param="spend_burst_seconds",
            )
        if self.max_spend_per_second is not None:
            burst = self.max_spend_per_second * self.spend_burst_seconds
            if self.max_cost is None or self.max_cost > burst:
                raise ConfigError(
                    f"max_spend_per_second needs max_cost (the cost one request may never "
                    f"exceed) <= max_spend_per_second * spend_burst_seconds = {burst:g}, so that "
                    f"one request always fits in the spend bucket; got max_cost = {self.max_cost}",
                    param=("max_cost", "max_spend_per_second", "spend_burst_seconds"),
                )
        per_sample = [d.cost for d in self.decoders]
        if self.max_cost is not None and None not in per_sample:
            cheapest = min(c for c in per_sample if c is not None)
            if self.max_cost < cheapest:
                raise ConfigError(
                    f"max_cost ({self.max_cost:g}) is below the cheapest decoder's cost per "
                    f"sample ({cheapest:g}): no request could draw anything; raise max_cost",
                    param="max_cost",
                )
        if self.max_cost is not None and self.max_cost < self.budget:
            raise ConfigError(
                f"max_cost ({self.max_cost}) is below the budget ({self.budget}), the mean cost "
                "per request; raise max_cost or lower the budget",
                param=("max_cost", "budget"),
            )

    def __repr__(self) -> str:  # the generated one would show the credentials in URLs
        shown = (f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr)
        return self.redactor()(f"ServeConfig({', '.join(shown)})")

    def redactor(self) -> Redactor:
        """What hides every configured secret in messages and logs: the client and upstream
        keys, and the credentials in the upstream and reward-model URLs."""
        menu = (u for d in self.decoders for u in d.upstream)
        urls = (
            *self.upstreams,
            *self.strong,
            *menu,
            self.reward_model or "",
            self.feature_url or "",
        )
        keys = (self.upstream_api_key, self.feature_api_key, *self.api_keys)
        return Redactor(keys, urls)


_FIELDS = {f.name: f for f in dataclasses.fields(ServeConfig)}
_TUPLES = {"upstreams", "strong", "models", "api_keys"}
_PATHS = {"predictor", "calibration", "router", "feature_cache", "request_log"}
_FLOATS = {
    "budget",
    "strong_share",
    "timeout",
    "decision_wait_ms",
    "knob",
    "max_cost",
    "max_seconds",
    "max_spend_per_second",
    "spend_burst_seconds",
}


def load_config(file: str | os.PathLike[str] | None, **flags: Any) -> ServeConfig:
    """The configuration from a TOML ``file`` (keys: the field names) overridden by ``flags``
    that are not None. Client API keys come from the file's ``api_keys`` or the comma-separated
    environment variable named by ``api_keys_env`` (default ``HOWHARD_API_KEYS``); the upstream
    key from the variable named by ``upstream_api_key_env``. Keys are never read from flags, so
    they stay out of shell history and ``ps``."""
    values: dict[str, Any] = {}
    if file is not None:
        try:
            values = tomllib.loads(Path(file).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read the config file {file}: {e}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {file} is not valid TOML: {e}") from e
    values.update({k: v for k, v in flags.items() if v is not None})
    tables, menu = values.pop("decoder", None), values.pop("menu", None)
    if tables is not None and menu is not None:
        raise ConfigError(f"{file}: give [[decoder]] tables or menu = FILE, not both", param="menu")
    if tables is not None:
        base = Path(file).parent if file is not None else Path.cwd()
        values["decoders"] = menu_from_tables(tables, base, f"config file {file}").decoders
    elif menu is not None:  # in the file: relative to it, as the decoders' own paths
        if not isinstance(menu, str | Path):
            raise ConfigError(f"setting 'menu' must be a path, got {menu!r}", param="menu")
        flag = flags.get("menu") is not None
        where = Path(file).parent if file is not None and not flag else Path.cwd()
        values["decoders"] = read_menu(where / Path(menu).expanduser()).decoders
    keys_env = values.pop("api_keys_env", "HOWHARD_API_KEYS")
    upstream_env = values.pop("upstream_api_key_env", None)
    feature_env = values.pop("feature_api_key_env", None)
    if "api_keys" not in values:
        values["api_keys"] = [
            k.strip() for k in os.environ.get(keys_env, "").split(",") if k.strip()
        ]
    if upstream_env is not None:
        if upstream_env not in os.environ:
            raise ConfigError(f"the environment variable {upstream_env} (upstream key) is not set")
        values["upstream_api_key"] = os.environ[upstream_env]
    if feature_env is not None:
        if feature_env not in os.environ:
            raise ConfigError(f"the environment variable {feature_env} (feature key) is not set")
        values["feature_api_key"] = os.environ[feature_env]
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]!r}{did_you_mean(unknown[0], list(_FIELDS))} in "
            f"{file or 'the flags'}"
        )
    static = () if "decoders" in values else ("upstreams", "predictor", "calibration")
    missing = [n for n in static if n not in values] + [
        n for n, f in _FIELDS.items() if n not in values and f.default is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            f"missing setting(s): {', '.join(missing)}; pass them as flags or in the file"
        )
    for name, value in values.items():
        if name != "decoders":
            values[name] = _typed(name, value, file)
    return ServeConfig(**values)


def _typed(name: str, value: Any, file: Any) -> Any:
    """``value`` as the field's type, or a ConfigError naming the setting."""
    where = f"setting {name!r}" + (f" in {file}" if file else "")
    if name in _TUPLES:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{where} must be a list of strings, got {value!r}")
        return tuple(items)
    if name in _PATHS:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where} must be a path, got {value!r}")
        return Path(value).expanduser()
    default = _FIELDS[name].default
    kind = type(default) if default not in (None, dataclasses.MISSING) else None
    if name in _FLOATS:
        kind = float
    if name == "max_per_query":
        kind = int
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is not None and (
        not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)
    ):
        noun = {float: "a number", int: "an integer", bool: "true or false"}.get(
            kind, "a " + kind.__name__
        )
        raise ConfigError(f"{where} must be {noun}, got {value!r}")
    if kind is None and value is not None and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value
