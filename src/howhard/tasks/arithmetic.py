"""Arithmetic of mixed difficulty: a seeded generator, a few-shot template, an exact verifier.

Questions look like ``What is 37 + 48?``: sums, differences and products of 1-3 digit operands and
two-step sums/differences. A small LM solves the 1-digit ones often and the 3-digit ones rarely,
so a pool holds many queries that are neither always nor never solved: a real, fast testbed.
"""

from __future__ import annotations

import ast
import operator
import re

import numpy as np

from howhard.errors import ConfigError
from howhard.pool import prompt_hash
from howhard.tasks.base import Query

FEW_SHOT = "".join(
    f"Q: What is {e}?\nA: {a}\n"
    for e, a in [
        ("2 + 2", 4),
        ("7 + 1", 8),
        ("5 - 3", 2),
        ("3 * 4", 12),
        ("6 + 9", 15),
        ("10 + 13", 23),
        ("40 - 15", 25),
        ("8 * 7", 56),
        ("100 + 200", 300),
        ("3 + 4 + 1", 8),
    ]
)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_QUESTION = re.compile(r"^What is ([0-9 +\-*()]+)\?$")
_INTEGER = re.compile(r"-?\d[\d,]*")


def _operand(rng: np.random.Generator, digits: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return int(rng.integers(low, 10**digits))


def _expression(rng: np.random.Generator) -> str:
    """Mostly 1-2 digit operands (what a small LM sometimes solves), some 3-digit and two-step."""
    digits = lambda p: int(rng.choice([1, 2, 3], p=p))  # noqa: E731
    kind = rng.choice(["+", "-", "*", "two-step"], p=[0.4, 0.25, 0.2, 0.15])
    if kind == "*":
        return f"{_operand(rng, digits([0.7, 0.3, 0.0]))} * {_operand(rng, 1)}"
    if kind == "two-step":
        a, b, c = (_operand(rng, digits([0.8, 0.2, 0.0])) for _ in range(3))
        return f"{a} {rng.choice(['+', '-'])} {b} {rng.choice(['+', '-'])} {c}"
    a, b = _operand(rng, digits([0.5, 0.3, 0.2])), _operand(rng, digits([0.6, 0.25, 0.15]))
    return f"{a} {kind} {b}"


def answer_of(question: str) -> int:
    """The exact integer answer of a question in this task's form (``What is 3 + 4 * 2?``)."""
    match = _QUESTION.match(question.strip())
    if not match:
        raise ConfigError(f"{question!r} is not an arithmetic question like 'What is 3 + 4?'")

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return int(_OPS[type(node.op)](value(node.left), value(node.right)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ConfigError(f"{question!r} holds something other than integers and + - *")

    return value(ast.parse(match.group(1), mode="eval").body)


def first_integer(completion: str) -> int | None:
    """The first integer in a completion (``1,234`` reads as 1234), or None."""
    match = _INTEGER.search(completion)
    return int(match.group().replace(",", "")) if match else None


class Arithmetic:
    """The arithmetic task; ``reward`` is 1.0 for the exact integer answer, else 0.0."""

    name: str = "arithmetic"
    stop: tuple[str, ...] = ("\n", "Q:")
    max_tokens: int = 8

    def queries(self, n: int, seed: int) -> list[Query]:
        """``n`` distinct questions, the same for the same seed."""
        if n < 1:
            raise ConfigError(f"number of queries must be >= 1, got {n}")
        rng = np.random.default_rng(seed)
        seen: set[str] = set()
        out: list[Query] = []
        for _ in range(100 * n):
            question = f"What is {_expression(rng)}?"
            if question not in seen:
                seen.add(question)
                answer = answer_of(question)
                out.append(Query(f"arith-{prompt_hash(question)}", question, {"answer": answer}))
                if len(out) == n:
                    return out
        raise ConfigError(f"could not draw {n} distinct arithmetic questions; ask for fewer")

    def render(self, prompt: str) -> str:
        return f"{FEW_SHOT}{self.query_text(prompt)}"

    def query_text(self, prompt: str) -> str:
        return f"Q: {prompt}\nA:"

    def reward(self, query: Query, completion: str) -> float:
        answer = query.meta.get("answer")
        expected = int(answer) if answer is not None else answer_of(query.prompt)
        return 1.0 if first_integer(completion) == expected else 0.0

    def answer(self, completion: str) -> str | None:
        value = first_integer(completion)
        return None if value is None else str(value)
