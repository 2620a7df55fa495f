"""Tasks, found by name: ``get_task("arithmetic")``."""

from __future__ import annotations

from howhard.registry import Registry
from howhard.tasks.arithmetic import Arithmetic
from howhard.tasks.base import Query, Task

TASKS: Registry[Task] = Registry("task")
TASKS.register("arithmetic", Arithmetic)


def get_task(name: str) -> Task:
    return TASKS.get(name)()


__all__ = ["TASKS", "Arithmetic", "Query", "Task", "get_task"]
