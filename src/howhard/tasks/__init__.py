"""Tasks, found by name: ``get_task("gsm8k")``, or ``get_task("gsm8k", data="my.jsonl")``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from howhard.errors import ConfigError
from howhard.registry import Registry
from howhard.tasks.arithmetic import Arithmetic
from howhard.tasks.base import Query, Task

TASKS: Registry[Task] = Registry("task")


def _gsm8k(data: Any = None) -> Task:
    from howhard.tasks.gsm8k import GSM8K

    return GSM8K(data)


def _math500(data: Any = None) -> Task:
    from howhard.tasks.math500 import Math500

    return Math500(data)


def _humaneval(data: Any = None) -> Task:
    from howhard.tasks.humaneval import HumanEval

    return HumanEval(data)


def _cruxeval(data: Any = None) -> Task:
    from howhard.tasks.cruxeval import CruxEval

    return CruxEval(data)


def _arithmetic(data: Any = None) -> Task:
    if data is not None:
        raise ConfigError(f"the arithmetic task generates its questions; drop the data file {data}")
    return Arithmetic()


TASKS.register("arithmetic", _arithmetic)
TASKS.register("gsm8k", _gsm8k)
TASKS.register("math500", _math500)
TASKS.register("humaneval", _humaneval)
TASKS.register("cruxeval", _cruxeval)


# Names other tools give tasks that howhard has: the released CRUXEval pools say "cruxeval-o".
ALIASES = {"cruxeval-o": "cruxeval"}


def pool_task(extras: Iterable[Mapping[str, Any]], where: object) -> str:
    """The task the rows of a pool name in their ``task`` field (``extras``: the rows' other
    fields; ``where``: the pool, for messages), ``arithmetic`` when no row names one."""
    named = sorted({str(e["task"]) for e in extras if e.get("task") is not None})
    if not named:
        return "arithmetic"
    if len(named) > 1:
        raise ConfigError(
            f"{where}: its rows name several tasks ({', '.join(named)}); pass task=NAME",
            param="task",
        )
    name = ALIASES.get(named[0], named[0])
    if name not in TASKS.names():
        raise ConfigError(
            f"{where}: its rows name the task {named[0]!r}, which howhard does not know; pass "
            f"task=NAME, one of {', '.join(TASKS.names())}",
            param="task",
        )
    return name


def get_task(name: str, data: str | os.PathLike[str] | None = None) -> Task:
    """The task registered as ``name``; ``data`` replaces its default data file."""
    return TASKS.get(name)(data)


__all__ = ["ALIASES", "TASKS", "Arithmetic", "Query", "Task", "get_task", "pool_task"]
