"""A menu of decoders, and per-query policies that draw from it in rounds.

A *decoder* is one way to answer a query at a price: offline a pool of its samples, live an
upstream + model + request parameters (a reasoning mode, ``max_tokens``). Its price is per sample
(``cost``) or per token (``input_cost`` per prompt token, ``output_cost`` per completion token,
from the pool's per-sample ``tokens`` or the upstream's ``usage``). The user writes the menu as a
TOML file, read by `read_menu`::

    [[decoder]]
    name = "codellama-7b"
    pool = "cruxeval/codellama-7b.jsonl.gz"   # relative to the menu file
    predictor = "codellama-7b.npz"            # optional: its one-sample success predictor
    cost = 0.2

    [[decoder]]
    name = "gpt-4-0613"
    upstream = ["https://api.example/v1"]    # live decoders (howhard serve)
    model = "gpt-4-0613"
    params = { max_tokens = 512 }
    input_cost = 0.03
    output_cost = 0.06

A *menu policy* decides, for one query, what to draw next from what it has seen: `MenuPolicy`
has ``decide(state) -> Draw | None`` (``None``: stop) and ``choose(state) -> index`` of the
sample returned. The same object runs offline, where `replay` feeds it a pool's samples in a
fixed order, and in ``howhard serve``, where the samples come from the upstreams; so what a
replay measures is what the server does.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from howhard.errors import ConfigError, PoolError, brief
from howhard.pool import Pool, read_pool

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DECODER_KEYS = (
    "name",
    "pool",
    "predictor",
    "cost",
    "input_cost",
    "output_cost",
    "upstream",
    "model",
    "params",
)


@dataclass(frozen=True)
class Decoder:
    """One decoder of the menu (see the module doc); paths are absolute."""

    name: str
    cost: float | None = None  # per sample
    input_cost: float | None = None  # per prompt token
    output_cost: float | None = None  # per completion token
    pool: Path | None = None
    predictor: Path | None = None
    upstream: tuple[str, ...] = ()
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        prices = {"cost": self.cost, "input_cost": self.input_cost, "output_cost": self.output_cost}
        for key, value in prices.items():
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"decoder {self.name!r}: {key} must be a finite number >= 0, got {value!r}",
                    param=key,
                )
        per_token = self.input_cost is not None or self.output_cost is not None
        if (self.cost is None) == (not per_token):
            raise ConfigError(
                f"decoder {self.name!r}: give a price per sample (cost = 2.0) or per token "
                "(input_cost and/or output_cost), not both and not neither",
                param="cost",
            )
        if self.cost is not None and self.cost <= 0:
            raise ConfigError(
                f"decoder {self.name!r}: cost per sample must be > 0, got {self.cost}", param="cost"
            )

    def sample_cost(self, prompt_tokens: float = 0.0, completion_tokens: float = 0.0) -> float:
        """The price of one sample: ``cost``, or the per-token prices times its token counts."""
        if self.cost is not None:
            return self.cost
        return (self.input_cost or 0.0) * prompt_tokens + (self.output_cost or 0.0) * (
            completion_tokens
        )

    def pool_costs(self, pool: Pool) -> list[FloatArray]:
        """Each query's per-sample prices on ``pool`` (per-token prices need the pool's
        per-sample ``tokens``, and ``prompt_tokens`` per row when ``input_cost`` is set)."""
        if self.cost is not None:
            return [np.full(len(r), self.cost) for r in pool.rewards]
        out = []
        for qid, r, extra in zip(pool.ids, pool.rewards, pool.extras, strict=True):
            tokens = extra.get("tokens")
            if tokens is None or (self.input_cost and "prompt_tokens" not in extra):
                raise PoolError(
                    f"decoder {self.name!r} is priced per token but query {qid!r} of its pool has "
                    "no per-sample 'tokens' (and 'prompt_tokens' for input_cost); give a price "
                    "per sample (cost = ...) instead"
                )
            prompt = float(extra.get("prompt_tokens", 0.0))
            out.append(np.array([self.sample_cost(prompt, float(t)) for t in tokens[: len(r)]]))
        return out


@dataclass(frozen=True)
class Menu:
    """The decoders, in the menu file's order."""

    decoders: tuple[Decoder, ...]

    def __post_init__(self) -> None:
        if not self.decoders:
            raise ConfigError("the menu has no decoder; add [[decoder]] tables", param="menu")
        names = [d.name for d in self.decoders]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"decoder names must be unique; {dup[0]!r} repeats", param="menu")

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.decoders]

    def __len__(self) -> int:
        return len(self.decoders)

    def pools(self) -> list[Pool]:
        """Every decoder's pool, read and put in the first one's query order (`aligned`)."""
        missing = [d.name for d in self.decoders if d.pool is None]
        if missing:
            raise ConfigError(
                f"decoder {missing[0]!r} has no pool; offline commands need pool = 'FILE' for "
                "every decoder",
                param="menu",
            )
        pools = [read_pool(d.pool) for d in self.decoders if d.pool is not None]
        names = [f"{d.name!r} ({d.pool})" for d in self.decoders]
        return aligned(pools, names)


def aligned(pools: Sequence[Pool], names: Sequence[str] | None = None) -> list[Pool]:
    """The pools with every one's rows in the first pool's order; PoolError, naming the two
    decoders (``names``, default "decoder 0", "decoder 1", ...), unless all hold the same ids
    with the same prompts."""
    names = list(names) if names is not None else [f"decoder {d}" for d in range(len(pools))]
    first = pools[0]
    out = [first]
    for name, pool in zip(names[1:], pools[1:], strict=True):
        extra = sorted(set(pool.ids) - set(first.ids))
        lacking = sorted(set(first.ids) - set(pool.ids))
        if extra or lacking:
            parts = [
                f"{len(ids)} ids only in {who}'s pool (e.g. {', '.join(map(repr, ids[:3]))})"
                for who, ids in ((name, extra), (names[0], lacking))
                if ids
            ]
            raise PoolError(
                f"the menu's pools must hold the same queries, but {'; '.join(parts)}. Label "
                "every decoder on the same query file, or keep the common queries"
            )
        pool = pool.select(first.ids)
        for qid, a, b in zip(first.ids, first.prompts, pool.prompts, strict=True):
            if a != b:
                raise PoolError(
                    f"query {qid!r} has another prompt in {name}'s pool ({brief(b)}) than in "
                    f"{names[0]}'s ({brief(a)}); the pools must come from the same query file"
                )
        out.append(pool)
    return out


def read_menu(path: str | os.PathLike[str]) -> Menu:
    """The menu in a TOML file (see the module doc); relative paths are taken from the file's
    directory. ConfigError naming the file and the key for anything wrong."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"menu file {path} does not exist", param="menu") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"menu file {path} is not readable TOML: {e}", param="menu") from None
    return menu_from_tables(raw.get("decoder"), path.parent, f"menu file {path}")


def menu_from_tables(tables: Any, base: Path, where: str) -> Menu:
    """The menu of the ``[[decoder]]`` tables of a TOML document (``tables``: their list, as
    `tomllib` reads it), relative paths taken from ``base``; ``where`` names the document in
    errors (``menu file menu.toml``). Shared by `read_menu` and ``howhard serve``'s config."""
    if not isinstance(tables, list) or not tables:
        raise ConfigError(
            f"{where} has no [[decoder]] tables; write one per decoder with name, pool "
            "or upstream, and cost",
            param="menu",
        )
    decoders = []
    for i, table in enumerate(tables, 1):
        at = f"{where}: decoder {i}"
        if not isinstance(table, dict):
            raise ConfigError(f"{at} is not a table; write [[decoder]] tables", param="menu")
        unknown = sorted(set(table) - set(DECODER_KEYS))
        if unknown:
            raise ConfigError(
                f"{at}: unknown key {unknown[0]!r}; keys are {', '.join(DECODER_KEYS)}",
                param="menu",
            )
        if not isinstance(table.get("name"), str) or not table["name"]:
            raise ConfigError(f"{at}: needs name = '...'", param="menu")
        try:
            decoders.append(_decoder(table, base))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}", param="menu") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{at} ({table['name']!r}): {e}", param="menu") from None
    try:
        return Menu(tuple(decoders))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}", param="menu") from None


def menu_toml(menu: Menu, base: str | Path) -> str:
    """The menu as TOML that `read_menu` reads back from a file in the directory ``base``: file
    paths relative to ``base`` where they can be, every other key as given."""
    base = Path(base).resolve()

    def value(x: Any) -> str:
        if isinstance(x, bool):
            return "true" if x else "false"
        if isinstance(x, int | float):
            if not math.isfinite(x):
                raise ConfigError(f"{x!r} cannot be written to a menu file")
            return repr(x)
        if isinstance(x, str | Path):
            return json.dumps(str(x))  # a JSON string is a TOML basic string
        if isinstance(x, list | tuple):
            return "[" + ", ".join(value(v) for v in x) + "]"
        if isinstance(x, dict):
            return "{" + ", ".join(f"{json.dumps(str(k))} = {value(v)}" for k, v in x.items()) + "}"
        raise ConfigError(f"{x!r} ({type(x).__name__}) cannot be written to a menu file")

    def rel(path: Path) -> str:
        return os.path.relpath(path, base) if path.anchor == base.anchor else str(path)

    lines: list[str] = []
    for d in menu.decoders:
        lines += ["[[decoder]]", f"name = {value(d.name)}"]
        for key in DECODER_KEYS[1:]:
            x = getattr(d, key)
            if x is None or x == () or x == {}:
                continue
            lines.append(f"{key} = {value(rel(x) if isinstance(x, Path) else x)}")
        lines.append("")
    return "\n".join(lines)


def _decoder(table: dict[str, Any], base: Path) -> Decoder:
    def number(key: str) -> float | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"decoder {table['name']!r}: {key} must be a number, got {value!r}")
        return float(value)

    def file(key: str) -> Path | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"decoder {table['name']!r}: {key} must be a path string")
        return (base / value).resolve()

    upstream = table.get("upstream", ())
    upstream = (upstream,) if isinstance(upstream, str) else tuple(upstream)
    params = table.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"decoder {table['name']!r}: params must be a table, e.g. params = {{}}")
    return Decoder(
        name=table["name"],
        cost=number("cost"),
        input_cost=number("input_cost"),
        output_cost=number("output_cost"),
        pool=file("pool"),
        predictor=file("predictor"),
        upstream=upstream,
        model=table.get("model"),
        params=params,
    )


# ---------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class Draw:
    """Draw ``k`` more samples from decoder ``decoder`` (an index into the menu)."""

    decoder: int
    k: int = 1


@dataclass(frozen=True)
class Seen:
    """One drawn sample as the policy sees it: its decoder, its answer (None: states none), its
    verifier reward (None when no verifier is observed) and its price."""

    decoder: int
    answer: str | None
    reward: float | None
    cost: float


@dataclass
class QueryState:
    """One query's state: the predictions (per decoder, e.g. its predicted one-sample success;
    NaN where there is none), what is drawn so far, the rounds, and how many more samples each
    decoder can still give (``room``: the pool's rest offline, the per-request cap live)."""

    prediction: FloatArray
    room: list[int]
    seen: list[Seen] = field(default_factory=list)
    rounds: int = 0

    @property
    def cost(self) -> float:
        return float(sum(s.cost for s in self.seen))

    def count(self, decoder: int) -> int:
        return sum(1 for s in self.seen if s.decoder == decoder)


class MenuPolicy(Protocol):
    """Decides one query's draws; the same object serves replay and ``howhard serve``."""

    def decide(self, state: QueryState) -> Draw | None:
        """The next round (``k`` <= ``state.room[decoder]``), or None to stop. Called first with
        nothing seen, then after every round."""
        ...

    def choose(self, state: QueryState) -> int:
        """Index into ``state.seen`` of the sample returned (called once, after the stop)."""
        ...


def majority_choice(seen: Sequence[Seen], among: Sequence[int] | None = None) -> int:
    """The first drawn sample holding the most frequent answer among the samples ``among``
    (indices into ``seen``; default all). Ties go to the answer reached first; samples with
    no answer do not vote; with no answer at all, the first sample."""
    idx = list(range(len(seen))) if among is None else list(among)
    if not idx:
        raise ConfigError("nothing was drawn; a policy must draw at least one sample")
    votes = Counter(seen[i].answer for i in idx if seen[i].answer is not None)
    if not votes:
        return idx[0]
    top = max(votes.values())
    return next(i for i in idx if seen[i].answer is not None and votes[seen[i].answer] == top)


def best_reward_choice(seen: Sequence[Seen]) -> int:
    """The first drawn sample with the largest verifier reward (majority when none is seen)."""
    rewards = [s.reward for s in seen]
    if any(r is None for r in rewards):
        return majority_choice(seen)
    return int(np.argmax(np.array(rewards, dtype=float)))


@dataclass(frozen=True)
class Replayed:
    """A replay of one policy over aligned pools: per query the returned sample's reward, the
    cost spent, the samples drawn from each decoder (n, M) and the rounds."""

    reward: FloatArray
    cost: FloatArray
    draws: IntArray
    rounds: IntArray

    @property
    def success(self) -> float:
        return float(self.reward.mean())

    @property
    def mean_cost(self) -> float:
        return float(self.cost.mean())


def replay(
    policy: MenuPolicy,
    pools: Sequence[Pool],
    costs: Sequence[Sequence[FloatArray]],
    predictions: npt.ArrayLike | None = None,
    orders: Sequence[Sequence[IntArray]] | None = None,
    observe: str = "majority",
    max_rounds: int = 1000,
) -> Replayed:
    """Run ``policy`` on every query of the aligned ``pools`` (one per decoder), handing out
    each decoder's pooled samples in ``orders[d][i]`` (default: pool order). ``costs[d][i]`` are
    the per-sample prices (`Decoder.pool_costs`); ``predictions`` (n, M) the per-decoder
    predictions (default NaN). ``observe``: "majority" shows answers only, "verifier" rewards
    too. The returned reward is the pooled reward of the chosen sample."""
    if observe not in ("majority", "verifier"):
        raise ConfigError(f"observe must be 'majority' or 'verifier', got {observe!r}")
    n, m = len(pools[0]), len(pools)
    pred = np.full((n, m), np.nan) if predictions is None else np.asarray(predictions, float)
    if pred.shape != (n, m):
        raise ConfigError(f"predictions must have shape (n_queries, n_decoders) = {(n, m)}")
    reward, cost = np.zeros(n), np.zeros(n)
    draws, rounds = np.zeros((n, m), dtype=np.int64), np.zeros(n, dtype=np.int64)
    for i in range(n):
        order = [
            np.arange(len(p.rewards[i])) if orders is None else np.asarray(orders[d][i])
            for d, p in enumerate(pools)
        ]
        state = QueryState(pred[i].copy(), [len(o) for o in order])
        origin: list[tuple[int, int]] = []
        while (draw := policy.decide(state)) is not None:
            d, k = draw.decoder, draw.k
            if not (0 <= d < m and 1 <= k <= state.room[d]) or state.rounds >= max_rounds:
                raise ConfigError(
                    f"policy asked for {k} samples of decoder {d} with room {state.room} after "
                    f"{state.rounds} rounds on query {pools[0].ids[i]!r}"
                )
            start = draws[i, d]
            for j in order[d][start : start + k]:
                answers = pools[d].extras[i].get("answers")
                r = float(pools[d].rewards[i][j])
                state.seen.append(
                    Seen(
                        d,
                        None if answers is None else answers[j],
                        r if observe == "verifier" else None,
                        float(costs[d][i][j]),
                    )
                )
                origin.append((d, int(j)))
            draws[i, d] += k
            state.room[d] -= k
            state.rounds += 1
        if not state.seen:
            continue  # no answer: reward 0, cost 0
        d, j = origin[policy.choose(state)]
        reward[i] = pools[d].rewards[i][j]
        cost[i] = state.cost
        rounds[i] = state.rounds
    return Replayed(reward, cost, draws, rounds)


def random_orders(pools: Sequence[Pool], rng: np.random.Generator) -> list[list[IntArray]]:
    """One random order of each query's samples per decoder (``orders`` for `replay`)."""
    return [[rng.permutation(len(r)) for r in p.rewards] for p in pools]


# ---------------------------------------------------------------------------- families and knobs


@dataclass(frozen=True)
class MenuData:
    """What a policy is fitted or scored on: the aligned pools (one per decoder, menu order),
    each decoder's per-sample prices (`Decoder.pool_costs`) and per-decoder predictions (n, M),
    NaN where a decoder has no predictor."""

    pools: list[Pool]
    costs: list[list[FloatArray]]
    predictions: FloatArray

    def __post_init__(self) -> None:
        n, m = len(self.pools[0]), len(self.pools)
        if len(self.costs) != m or np.shape(self.predictions) != (n, m):
            raise ConfigError(
                f"need one cost list per decoder and predictions of shape {(n, m)}; got "
                f"{len(self.costs)} and {np.shape(self.predictions)}"
            )

    def subset(self, rows: npt.ArrayLike) -> MenuData:
        """The queries ``rows`` (indices) of every pool, in that order."""
        idx = np.asarray(rows, dtype=np.int64)
        ids = [self.pools[0].ids[i] for i in idx]
        return MenuData(
            [p.select(ids) for p in self.pools],
            [[c[i] for i in idx] for c in self.costs],
            np.asarray(self.predictions)[idx],
        )


class PolicyFamily(Protocol):
    """Policies indexed by one scalar knob, spend non-decreasing in it (a price's inverse, a
    window, a confidence, a share). ``fit`` learns what the family needs from held-out data
    (priors, strengths), ``at(knob)`` gives the policy; the knob meeting a budget is found by
    `calibrate` offline and paced online by ``howhard serve``."""

    name: str
    knobs: tuple[float, float]  # the knob's range, spend lowest at knobs[0]
    discrete: bool  # True: only integer knobs

    def fit(self, data: MenuData, observe: str) -> PolicyFamily: ...

    def at(self, knob: float) -> MenuPolicy: ...


def calibrate(
    family: PolicyFamily,
    data: MenuData,
    budget: float,
    observe: str,
    orders: Sequence[Sequence[IntArray]] | None = None,
    steps: int = 30,
) -> float:
    """The largest knob whose replay on ``data`` spends at most ``budget`` per query (bisection;
    the family's lowest knob when even it overspends). ``family`` must be fitted."""

    def within(knob: float) -> bool:  # up to float rounding: 3 samples at 0.2 fit 0.6
        policy = family.at(knob)
        out = replay(policy, data.pools, data.costs, data.predictions, orders, observe)
        return out.mean_cost <= budget * (1 + 1e-9)

    lo, hi = family.knobs
    if within(hi):
        return hi
    if not within(lo):
        return lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        if family.discrete:
            mid = float(math.floor(mid))
            if mid <= lo:
                break
        if within(mid):
            lo = mid
        else:
            hi = mid
        if family.discrete and hi - lo <= 1:
            break
    return lo
