"""The request log of menu mode: one JSON line per request that drew anything, and the report of
realised cost against the budget that `report` makes of it.

A line holds what the decision was made from and what it spent, never a key nor the texts::

    {"time": 1700000000.1, "status": 200, "query": "9f86d081884c7d65", "prediction": [0.8, null],
     "knob": 3.0, "rounds": 2, "decoders": {"small": 3, "large": 1}, "cost": 4.2,
     "prompt_tokens": 120, "completion_tokens": 64, "stop": "policy",
     "answer": "3a7bd3e2360a3d29"}

``query`` and ``answer`` are 16-hex-digit SHA-256 prefixes of the query text and of the chosen
answer's text (`howhard.pool.prompt_hash`): enough to join the log to a pool of the same
prompts, or to see two replicas answered alike, without keeping what the users wrote.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from howhard.errors import ConfigError


class RequestLog:
    """Appends lines to ``path`` (created with mode 0600), each flushed as written."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            raise ConfigError(
                f"cannot open the request log {self.path}: {e}", param="request_log"
            ) from e
        self._file: IO[str] = os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def write(self, entry: dict[str, Any]) -> None:
        self._file.write(json.dumps(_finite(entry), allow_nan=False) + "\n")

    def close(self) -> None:
        self._file.close()


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The entries of a request log; ConfigError naming the line that is not one."""
    entries = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"cannot read the request log {path}: {reason}; name the file the server's "
            "request log went to",
            param="log",
        ) from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"{path}:{i} is not a JSON line: {e}", param="log") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("cost"), int | float):
            raise ConfigError(f"{path}:{i} is not a request log entry (no cost)", param="log")
        entries.append(entry)
    return entries


@dataclass(frozen=True)
class LogReport:
    """Realised spend of a request log: requests, mean cost (and over the last half, to see a
    drift), its ratio to ``budget``, samples and cost by decoder, rounds and stop reasons."""

    requests: int
    failed: int
    mean_cost: float
    mean_cost_second_half: float
    budget: float | None
    samples: dict[str, int]
    cost_by_decoder: dict[str, float]
    rounds: dict[int, int]
    stops: dict[str, int]

    @property
    def ratio(self) -> float | None:
        return None if self.budget is None else self.mean_cost / self.budget

    def markdown(self) -> str:
        lines = [
            f"requests: {self.requests} ({self.failed} failed after drawing)",
            f"mean cost per request: {self.mean_cost:.6g} (second half: "
            f"{self.mean_cost_second_half:.6g})",
        ]
        if self.budget is not None and self.ratio is not None:
            lines.append(f"budget: {self.budget:g}; realised / budget = {self.ratio:.4f}")
        lines += ["", "| decoder | samples | cost |", "| --- | ---: | ---: |"]
        for name, n in self.samples.items():
            lines.append(f"| {name} | {n} | {self.cost_by_decoder.get(name, 0.0):.6g} |")
        lines += ["", "rounds: " + ", ".join(f"{r}: {n}" for r, n in sorted(self.rounds.items()))]
        lines.append("stops: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.stops.items())))
        return "\n".join(lines)


def report(entries: list[dict[str, Any]], budget: float | None = None) -> LogReport:
    """The `LogReport` of request log ``entries`` (`read_log`), against ``budget`` if given.
    Every entry counts, failed ones too: what they drew was spent."""
    if not entries:
        raise ConfigError("the request log is empty; nothing to report", param="log")
    costs = np.array([float(e["cost"]) for e in entries])
    samples: Counter[str] = Counter()
    cost_by: dict[str, float] = {}
    for e in entries:
        decoders = e.get("decoders") or {}
        samples.update(decoders)
        for name, share in (e.get("cost_by_decoder") or {}).items():
            cost_by[name] = cost_by.get(name, 0.0) + float(share)
    return LogReport(
        requests=len(entries),
        failed=sum(1 for e in entries if e.get("status") != 200),
        mean_cost=float(costs.mean()),
        mean_cost_second_half=float(costs[len(costs) // 2 :].mean()),
        budget=budget,
        samples=dict(samples),
        cost_by_decoder=cost_by,
        rounds=dict(Counter(int(e.get("rounds", 0)) for e in entries)),
        stops=dict(Counter(str(e.get("stop", "")) for e in entries)),
    )
