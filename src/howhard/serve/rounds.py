"""Menu mode's per-request loop: a menu policy (`howhard.menu.MenuPolicy`) draws in rounds over
the decoders' upstreams until it stops or a cap does, then chooses the sample returned.

Per round: ``policy.decide(state)`` names a decoder and k; the loop clamps k to the decoder's
``room`` (what the per-request caps leave: samples, and cost at the round's worst case), takes
the round's worst-case cost from the global spend bucket (`SpendLimiter`), draws the k samples
(``draw``: one upstream call, ``n=k`` where honoured), prices them from the decoder's price (per
sample, or per token from the upstream's ``usage``), lets the policy see their answers (and
rewards, when a verifier is observed), and gives the bucket back what the round did not spend.

Worst case of one sample of decoder d: ``cost``, or ``input_cost * P + output_cost * T`` with
``T`` the sample's ``max_tokens`` and ``P`` a bound on the prompt's tokens (the caller's: the
prompt's characters plus a margin for the chat template; a token holds at least one character).
So no request spends more than ``max_cost``, and no second of traffic more than the bucket
allows, whatever the prompts make the policy want.

The loop is I/O-free but for the ``draw`` and ``observe`` callables it is given (the proxy passes
its fleets and rerankers; tests pass replayed pools). ``families`` is the policy registry.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from howhard.backends.base import Completion
from howhard.errors import BackendError, ConfigError
from howhard.menu import (
    FloatArray,
    MenuPolicy,
    PolicyFamily,
    QueryState,
    Seen,
)

# ---------------------------------------------------------------------------- policy families


def families() -> dict[str, Callable[[], PolicyFamily]]:
    """The policy families by name (`howhard.stopping.FAMILIES`: the same ones compare runs)."""
    from howhard.stopping import FAMILIES

    return dict(FAMILIES)


# ---------------------------------------------------------------------------- spend caps


class SpendLimiter:
    """A token bucket of spend: it holds at most ``burst`` and refills at ``rate`` per second, so
    what is taken over any t seconds is at most ``burst + rate * t``. ``clock``: seconds."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.level, self._at = burst, clock()
        self.taken = 0.0  # net of what was given back

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.burst, self.level + (now - self._at) * self.rate)
        self._at = now

    def take(self, amount: float) -> bool:
        """Take ``amount`` if the bucket holds it."""
        self._refill()
        if amount > self.level:
            return False
        self.level -= amount
        self.taken += amount
        return True

    def wait(self, amount: float) -> float:
        """Seconds until the bucket holds ``amount`` (infinite when it never will)."""
        self._refill()
        if amount > self.burst:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate)

    def give_back(self, amount: float) -> None:
        """Return what a reservation did not spend (negative: take more than reserved)."""
        self._refill()
        self.level = min(self.burst, self.level + amount)
        self.taken -= amount


@dataclass(frozen=True)
class Caps:
    """What one request may never exceed: samples (over all decoders), rounds, cost, seconds."""

    samples: int
    rounds: int
    cost: float | None = None
    seconds: float | None = None


# ---------------------------------------------------------------------------- the loop


@dataclass
class Rounds:
    """A request's draws: the policy's state (``seen`` in draw order), the completions aligned
    with it, the upstream's token counts per decoder, why it stopped, the chosen index (None
    when it failed)."""

    state: QueryState
    completions: list[Completion] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    stop: str = ""
    chosen: int | None = None

    def counts(self, m: int) -> list[int]:
        return [self.state.count(d) for d in range(m)]


class RoundsFailed(Exception):
    """The request cannot be answered: ``reason`` (``upstream``, ``timeout``, ``spend_rate``,
    ``caps``, ``empty``, ``error``: another exception, its ``__cause__``), ``rounds`` what was
    drawn (and spent) before, ``retry_after`` seconds for ``spend_rate``."""

    def __init__(self, reason: str, rounds: Rounds, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.reason, self.rounds, self.retry_after = reason, rounds, retry_after


DrawFn = Callable[[int, int, int], Awaitable[tuple[list[Completion], int]]]
ObserveFn = Callable[[int, list[Completion]], Awaitable[list[tuple[str | None, float | None]]]]


def round_cost(
    price: tuple[float | None, float | None, float | None],
    completions: Sequence[Completion],
    prompt_tokens: int,
) -> list[float]:
    """Each sample's share of a round's cost: ``cost`` per sample, or ``output_cost`` times its
    completion tokens plus an equal share of ``input_cost`` times the round's prompt tokens (as
    the upstream counted them over the requests it made: once for ``n=k``, k times for k
    requests). ``price``: (cost, input_cost, output_cost)."""
    cost, input_cost, output_cost = price
    if cost is not None:
        return [cost] * len(completions)
    share = (input_cost or 0.0) * prompt_tokens / max(1, len(completions))
    return [share + (output_cost or 0.0) * c.n_tokens for c in completions]


async def draw_rounds(
    policy: MenuPolicy,
    prediction: FloatArray,
    prices: Sequence[tuple[float | None, float | None, float | None]],
    worst: Sequence[float],
    caps: Caps,
    draw: DrawFn,
    observe: ObserveFn,
    *,
    spend: SpendLimiter | None = None,
    partial: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> Rounds:
    """Run ``policy`` for one request (see the module doc). ``prices[d]``: decoder d's
    (cost, input_cost, output_cost); ``worst[d]``: the worst-case cost of one of its samples;
    ``draw(d, k, drawn)``: k samples of decoder d (``drawn``: samples drawn before, for seeds)
    and the round's prompt tokens; ``observe(d, completions)``: their (answer, reward).

    Stops when the policy does (``policy``) or a cap leaves no room (``max_samples``,
    ``max_cost``, ``max_rounds``, ``max_seconds``), or the spend bucket cannot take a later
    round (``spend_rate``). A failed round (the upstream, or the time cap) raises `RoundsFailed`
    unless ``partial`` and something was drawn before: then it stops there (``upstream``,
    ``max_seconds``). A first round the bucket cannot take waits for it while the time cap
    allows, else raises `RoundsFailed` (``spend_rate``)."""
    m = len(prices)
    started = clock()
    out = Rounds(QueryState(np.asarray(prediction, dtype=float), [0] * m), [], [0] * m, [0] * m)
    state = out.state

    def remaining() -> float:
        return math.inf if caps.seconds is None else caps.seconds - (clock() - started)

    while True:
        left = caps.samples - len(state.seen)
        budget_left = math.inf if caps.cost is None else caps.cost - state.cost
        for d in range(m):
            fits = left
            if worst[d] > 0 and budget_left < math.inf:
                fits = min(left, math.floor(budget_left / worst[d] + 1e-9))
            state.room[d] = max(0, fits)
        if state.rounds >= caps.rounds:
            out.stop = "max_rounds"
            break
        if remaining() <= 0:
            out.stop = "max_seconds"
            break
        want = policy.decide(state)
        if want is None:
            out.stop = "policy"
            break
        d = want.decoder
        if not 0 <= d < m or want.k < 1:
            raise ConfigError(f"the policy asked for {want.k} samples of decoder {d} of {m}")
        k = min(want.k, state.room[d])
        if k < 1:
            out.stop = "max_samples" if left < 1 else "max_cost"
            break
        reserved = k * worst[d]
        if spend is not None and not spend.take(reserved):
            if state.seen:
                out.stop = "spend_rate"
                break
            wait = spend.wait(reserved)
            while wait <= remaining() and wait < math.inf:
                await asyncio.sleep(wait)
                if spend.take(reserved):
                    break
                wait = spend.wait(reserved)
            else:
                raise RoundsFailed("spend_rate", out, wait)
        try:
            async with asyncio.timeout(None if caps.seconds is None else max(0.0, remaining())):
                completions, prompt_tokens = await draw(d, k, len(state.seen))
                observed = await observe(d, completions)
        except (BackendError, TimeoutError) as e:
            if spend is not None:
                spend.give_back(reserved)
            reason = "max_seconds" if isinstance(e, TimeoutError) else "upstream"
            if partial and state.seen:
                out.stop = reason
                break
            raise RoundsFailed("timeout" if reason == "max_seconds" else "upstream", out) from e
        except Exception as e:  # e.g. the proxy refused more samples (429): its cause says
            if spend is not None:
                spend.give_back(reserved)
            raise RoundsFailed("error", out) from e
        except BaseException:  # cancelled (the client left)
            if spend is not None:
                spend.give_back(reserved)
            raise
        costs = round_cost(prices[d], completions, prompt_tokens)
        if spend is not None:
            spend.give_back(reserved - sum(costs))
        for c, (answer, reward), cost in zip(completions, observed, costs, strict=True):
            state.seen.append(Seen(d, answer, reward, cost))
            out.completions.append(c)
        out.prompt_tokens[d] += prompt_tokens
        out.completion_tokens[d] += sum(c.n_tokens for c in completions)
        state.rounds += 1
    if not state.seen:
        capped = out.stop.startswith("max_") or not any(state.room)  # no sample fits the caps
        raise RoundsFailed("caps" if capped else "empty", out)
    out.chosen = policy.choose(state)
    if not 0 <= out.chosen < len(state.seen):
        raise ConfigError(f"the policy chose sample {out.chosen} of {len(state.seen)}")
    return out
