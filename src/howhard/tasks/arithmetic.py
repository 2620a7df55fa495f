"""Arithmetic of mixed difficulty: a seeded generator, a few-shot template, an exact verifier.

Questions look like ``What is 37 + 48?``: sums, differences and products of 1-3 digit operands and
two-step sums/differences. A small LM solves the 1-digit ones often and the 3-digit ones rarely,
so a pool holds many queries that are neither always nor never solved: a real, fast testbed.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Sequence

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


FEATURE_NAMES = (
    "n_operands",
    "n_add",
    "n_sub",
    "n_mul",
    "min_digits",
    "max_digits",
    "total_digits",
    "carries",
    "max_step_carries",
    "negative_step",
    "answer_digits",
    "answer_negative",
    "log10_answer",
    "answer_trailing_zero",
)
"""What `query_features` returns for a question, in this order (see its docstring)."""


def _digits(value: int) -> list[int]:
    """Decimal digits of |value|, least significant first (0 has the one digit 0)."""
    return [int(d) for d in reversed(str(abs(value)))]


def column_carries(a: int, b: int, op: str) -> int:
    """How many columns of the schoolbook method produce a carry or a borrow, for a, b >= 0.

    - ``+``: columns whose digit sum plus the incoming carry is >= 10 (58 + 67: 8+7 = 15, 5+6+1
      = 12: 2 carries);
    - ``-``: borrows of |a − b| computed as the larger minus the smaller (52 − 38: 2 < 8: 1);
    - ``*``: carries of each partial product a · (a digit of b) plus those of adding the
      partial products column by column (a column carries when its sum is >= 10).
    """
    if op == "+":
        carry, count = 0, 0
        x, y = _digits(a), _digits(b)
        for i in range(max(len(x), len(y))):
            total = (x[i] if i < len(x) else 0) + (y[i] if i < len(y) else 0) + carry
            carry = total // 10
            count += carry > 0
        return count
    if op == "-":
        big, small = max(a, b), min(a, b)
        borrow, count = 0, 0
        x, y = _digits(big), _digits(small)
        for i in range(len(x)):
            diff = x[i] - (y[i] if i < len(y) else 0) - borrow
            borrow = int(diff < 0)
            count += borrow
        return count
    count, partials = 0, []
    for shift, d in enumerate(_digits(b)):
        carry, row = 0, []
        for digit in _digits(a):
            total = digit * d + carry
            carry = total // 10
            count += carry > 0
            row.append(total % 10)
        if carry:
            row.append(carry)
        partials.append([0] * shift + row)
    carry = 0
    for i in range(max(map(len, partials))):
        total = sum(p[i] for p in partials if i < len(p)) + carry
        carry = total // 10
        count += len(partials) > 1 and carry > 0
    return count


def _column_op(op: str, left: int, right: int) -> str:
    """The schoolbook operation on |left| and |right| that a step ``left op right`` is: a sum of
    numbers of opposite signs is a subtraction, a difference of opposite signs a sum."""
    if op == "*":
        return op
    same_sign = (left < 0) == ((right < 0) if op == "+" else (right > 0))
    return "+" if same_sign else "-"


def query_features(question: str) -> list[float]:
    """The hand-made difficulty features of one question, named by `FEATURE_NAMES`.

    Every step a ∘ b of the expression (Python's precedence, left to right) is computed on |a|
    and |b| by the schoolbook method (−5 + 10 as 10 − 5); ``carries`` sums `column_carries` over the
    steps, ``max_step_carries`` is the largest, ``negative_step`` counts steps whose result is
    negative. Digits are those of the literal operands; ``answer_digits`` those of |answer|,
    ``log10_answer`` = log10(1 + |answer|).
    """
    match = _QUESTION.match(question.strip())
    if not match:
        raise ConfigError(f"{question!r} is not an arithmetic question like 'What is 3 + 4?'")
    ops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}
    operands: list[int] = []
    steps: list[tuple[str, int]] = []  # (operator, carries)
    negative = 0

    def value(node: ast.AST) -> int:
        nonlocal negative
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            operands.append(node.value)
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            left, right = value(node.left), value(node.right)
            op = ops[type(node.op)]
            steps.append((op, column_carries(abs(left), abs(right), _column_op(op, left, right))))
            result = int(_OPS[type(node.op)](left, right))
            negative += result < 0
            return result
        raise ConfigError(f"{question!r} holds something other than integers and + - *")

    answer = value(ast.parse(match.group(1), mode="eval").body)
    digits = [len(_digits(x)) for x in operands]
    carries = [c for _, c in steps]
    return [
        float(len(operands)),
        float(sum(op == "+" for op, _ in steps)),
        float(sum(op == "-" for op, _ in steps)),
        float(sum(op == "*" for op, _ in steps)),
        float(min(digits)),
        float(max(digits)),
        float(sum(digits)),
        float(sum(carries)),
        float(max(carries, default=0)),
        float(negative),
        float(len(_digits(answer))),
        float(answer < 0),
        float(np.log10(1 + abs(answer))),
        float(answer != 0 and answer % 10 == 0),
    ]


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

    feature_names: tuple[str, ...] = FEATURE_NAMES

    def query_features(self, prompts: Sequence[str]) -> np.ndarray:
        """`query_features` of each question, shape (len(prompts), len(FEATURE_NAMES))."""
        return np.array([query_features(p) for p in prompts], dtype=np.float32).reshape(
            len(prompts), len(FEATURE_NAMES)
        )

    def reward(self, query: Query, completion: str) -> float:
        answer = query.meta.get("answer")
        expected = int(answer) if answer is not None else answer_of(query.prompt)
        return 1.0 if first_integer(completion) == expected else 0.0

    def answer(self, completion: str) -> str | None:
        value = first_integer(completion)
        return None if value is None else str(value)

    def canonical(self, answer: str) -> str:
        return answer  # `answer` already gives one spelling per value
