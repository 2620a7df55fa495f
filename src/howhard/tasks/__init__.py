"""Tasks, found by name: ``get_task("gsm8k")``, or ``get_task("gsm8k", data="my.jsonl")``."""

from __future__ import annotations

import os
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


def get_task(name: str, data: str | os.PathLike[str] | None = None) -> Task:
    """The task registered as ``name``; ``data`` replaces its default data file."""
    return TASKS.get(name)(data)


__all__ = ["TASKS", "Arithmetic", "Query", "Task", "get_task"]
