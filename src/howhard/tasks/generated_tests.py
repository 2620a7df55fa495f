"""Model-generated test assertions: an imperfect verifier of code, and a behaviour signature.

A deployed system never has a benchmark's hidden tests, but it can ask the model for tests
(CodeT, Chen et al. 2022). Each generated sample continues a prompt that ends in ``assert ``, so
its first line completes an assertion and later lines may hold more; many are wrong or malformed.

Parsing (`extract_assertions`, `literal_test`), robust to what models write:

- the sample is read as ``"assert " + sample`` and cut before every line that starts with
  ``assert``; whitespace and newlines right after ``assert`` are dropped (``assert \\n f(1) == 2``
  is read as ``assert f(1) == 2``), and each statement is the shortest run of its first lines
  that parses as one ``assert`` (a call whose brackets span lines is kept whole, trailing junk
  is not);
- only assertions the judge can check without running generated code are kept: a call of the
  entry point with literal arguments compared to a literal (``f(x) == y``, ``y == f(x)``,
  ``!=``), ``f(x) is / is not`` None, True or False, or the call's truth (``f(x)``,
  ``not f(x)``); everything else (placeholders like ``____ == f(1)``, expressions, other
  functions) is dropped. Literals are read with `ast.literal_eval` and must be plain data.

So no generated text is ever executed, in the judge or elsewhere: the candidate is called on the
literal inputs in the sandbox (`howhard.sandbox.Sandbox.calls`) and its plain results are
compared here. Tests repeated across samples count once (as in CodeT).

Three things per completion come out of its results on a problem's distinct inputs (`verdict`):

- ``score``: the fraction of the problem's generated tests it passes (0 when there are none),
  a per-sample verifier score, stored like a reward model's (the pool's ``scores``);
- ``passes``: which of them it passes, a bitmask in hex (bit i: ``tests[i]``), so completions can
  be grouped by the exact set of tests they pass (CodeT's dual agreement, `howhard.bestof`);
- ``answer``: its *behaviour signature*, a hash of what it returned (or raised) on every distinct
  input of the generated tests, expected values ignored (AlphaCode-style clustering on
  model-written inputs). Completions with equal signatures behave the same on those inputs, so
  majority vote over signatures picks the largest behaviour cluster. Floats are rounded to 10
  significant digits first, so that rounding noise does not split a cluster. A completion with no
  observable behaviour (it does not load, or every call raises or fails, or the problem has no
  usable input) gets ``None``: it abstains from the vote.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_STATEMENT_LINES = 30  # an assertion spanning more lines than this is dropped
MAX_STATEMENT_CHARS = 20_000
_ASSERT_LINE = re.compile(r"(?m)^[ \t]*assert\b")
_SINGLETONS = {"None": None, "True": True, "False": False}

Call = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class GeneratedTest:
    """One checkable assertion: ``inputs[call]`` of its problem, compared by ``check`` (one of
    ``==``, ``!=``, ``is``, ``is not``, ``truthy``, ``falsy``) with ``expected``."""

    call: int
    check: str
    expected: Any
    text: str


@dataclass(frozen=True)
class GeneratedTests:
    """The distinct checkable tests of one problem, the distinct inputs they call the entry point
    on (in a canonical order: by their JSON form), and how many assertions were read / kept."""

    entry_point: str
    inputs: tuple[Call, ...]
    tests: tuple[GeneratedTest, ...]
    assertions: int  # assertion statements found in the samples (before dropping and dedup)
    kept: int  # of those, checkable ones (before dedup)

    def digest(self) -> str:
        """A 16-hex-digit hash of the tests (what a score depends on)."""
        text = canonical([[list(a), k] for a, k in self.inputs])
        text += canonical([[t.call, t.check, t.expected] for t in self.tests])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Verdict:
    """One completion against one problem's generated tests (see the module doc)."""

    passed: int
    score: float
    answer: str | None
    passes: str  # hex bitmask: bit i set iff it passes tests.tests[i] ("0": none)


def extract_assertions(sample: str) -> list[str]:
    """The assertion statements of one generated sample (``assert ...``, each parsing as one
    statement), in order; see the module doc for the rules."""
    out = []
    for part in _ASSERT_LINE.split("assert " + sample)[1:]:
        lines = part.lstrip().split("\n")
        for k in range(1, min(len(lines), MAX_STATEMENT_LINES) + 1):
            text = "assert " + "\n".join(lines[:k]).rstrip()
            if len(text) > MAX_STATEMENT_CHARS:
                break
            try:
                tree = ast.parse(text)
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                continue
            if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
                out.append(text)
            break
    return out


def literal_test(statement: str, entry_point: str) -> tuple[Call, str, Any] | None:
    """``((args, kwargs), check, expected)`` of a checkable assertion on ``entry_point``, or None
    when the statement is not one (see the module doc)."""
    try:
        node = ast.parse(statement).body[0]
    except (SyntaxError, ValueError, RecursionError, MemoryError, IndexError):
        return None
    if not isinstance(node, ast.Assert):
        return None
    test = node.test
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        call = _literal_call(test.operand, entry_point)
        return None if call is None else (call, "falsy", None)
    if not isinstance(test, ast.Compare):
        call = _literal_call(test, entry_point)
        return None if call is None else (call, "truthy", None)
    if len(test.ops) != 1:
        return None
    left, right, op = test.left, test.comparators[0], test.ops[0]
    call = _literal_call(left, entry_point)
    other = right
    if call is None and isinstance(op, ast.Eq | ast.NotEq):
        call, other = _literal_call(right, entry_point), left
    if call is None:
        return None
    if isinstance(op, ast.Is | ast.IsNot):
        if not (isinstance(other, ast.Constant) and repr(other.value) in _SINGLETONS):
            return None
        return call, "is" if isinstance(op, ast.Is) else "is not", other.value
    if not isinstance(op, ast.Eq | ast.NotEq):
        return None
    ok, expected = _literal(other)
    return (call, "==" if isinstance(op, ast.Eq) else "!=", expected) if ok else None


def parse_generated_tests(samples: Sequence[str], entry_point: str) -> GeneratedTests:
    """The distinct checkable tests of all ``samples`` of one problem."""
    found = kept = 0
    by_input: dict[str, Call] = {}
    tests: dict[str, tuple[str, str, Any, str]] = {}
    for sample in samples:
        for statement in extract_assertions(sample):
            found += 1
            parsed = literal_test(statement, entry_point)
            if parsed is None:
                continue
            kept += 1
            call, check, expected = parsed
            key = canonical([list(call[0]), call[1]])
            by_input.setdefault(key, call)
            tests.setdefault(canonical([key, check, expected]), (key, check, expected, statement))
    order = sorted(by_input)
    index = {key: i for i, key in enumerate(order)}
    return GeneratedTests(
        entry_point,
        tuple(by_input[key] for key in order),
        tuple(
            GeneratedTest(index[key], check, expected, text)
            for _, (key, check, expected, text) in sorted(tests.items())
        ),
        found,
        kept,
    )


def verdict(tests: GeneratedTests, outcomes: Sequence[tuple[str, Any]]) -> Verdict:
    """Score and behaviour signature of a completion from its outcomes on ``tests.inputs``
    (as `howhard.sandbox.Sandbox.calls` returns them)."""
    if len(outcomes) != len(tests.inputs):
        raise ValueError(f"{len(outcomes)} outcomes for {len(tests.inputs)} inputs")
    mask = sum(_passes(t, outcomes[t.call]) << i for i, t in enumerate(tests.tests))
    passed = mask.bit_count()
    score = passed / len(tests.tests) if tests.tests else 0.0
    if not any(kind == "value" for kind, _ in outcomes):
        return Verdict(passed, score, None, f"{mask:x}")
    signature = canonical([[kind, _rounded(value)] for kind, value in outcomes])
    answer = "b:" + hashlib.sha256(signature.encode()).hexdigest()[:16]
    return Verdict(passed, score, answer, f"{mask:x}")


def canonical(value: Any) -> str:
    """A JSON text of plain data (None, bool, int, float, str, and lists, tuples, sets,
    frozensets, dicts of them) equal for equal values: containers are tagged by type, set items
    and dict items sorted. TypeError for anything else (e.g. complex, objects)."""
    return json.dumps(_tagged(value), separators=(",", ":"), allow_nan=True)


def _tagged(value: Any) -> Any:
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if value == value and abs(value) != float("inf") else {"float": repr(value)}
    if kind is list:
        return [_tagged(v) for v in value]
    if kind is tuple:
        return {"tuple": [_tagged(v) for v in value]}
    if kind in (set, frozenset):
        return {kind.__name__: sorted((_tagged(v) for v in value), key=json.dumps)}
    if kind is dict:
        items = [[_tagged(k), _tagged(v)] for k, v in value.items()]
        return {"dict": sorted(items, key=json.dumps)}
    raise TypeError(f"{kind.__name__} is not plain data")


def _rounded(value: Any) -> Any:
    """``value`` with every float rounded to 10 significant digits (for signatures)."""
    kind = type(value)
    if kind is float:
        return float(f"{value:.10g}")
    if kind in (list, tuple, set, frozenset):
        return kind(_rounded(v) for v in value)
    if kind is dict:
        return {_rounded(k): _rounded(v) for k, v in value.items()}
    return value


def _literal(node: ast.AST) -> tuple[bool, Any]:
    """(True, value) when ``node`` is a literal of plain data, else (False, None)."""
    try:
        value = ast.literal_eval(node)
        canonical(value)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return False, None
    return True, value


def _literal_call(node: ast.AST, entry_point: str) -> Call | None:
    """(args, kwargs) of ``entry_point(<literals>)``, else None."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == entry_point
    ):
        return None
    args = []
    for arg in node.args:
        ok, value = _literal(arg)
        if not ok:
            return None
        args.append(value)
    kwargs = {}
    for keyword in node.keywords:
        ok, value = _literal(keyword.value)
        if keyword.arg is None or not ok:
            return None
        kwargs[keyword.arg] = value
    return tuple(args), kwargs


def _passes(test: GeneratedTest, outcome: tuple[str, Any]) -> bool:
    """Would the assertion hold, given the call's outcome? (A call that raised fails it.)"""
    kind, value = outcome
    if kind != "value":
        return False
    try:
        if test.check == "==":
            return bool(value == test.expected)
        if test.check == "!=":
            return bool(value != test.expected)
        if test.check == "is":
            return value is test.expected
        if test.check == "is not":
            return value is not test.expected
        return bool(value) == (test.check == "truthy")
    except RecursionError:
        return False
