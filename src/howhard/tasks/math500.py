"""MATH-500 (Hendrycks et al., 2021; the 500-problem test subset of Lightman et al., 2023).

The data is ``$HOWHARD_DATA/math500/test.jsonl`` (or a file passed as ``data``), one JSON object a
line with ``problem`` and ``answer`` (a LaTeX final answer) and optionally ``unique_id``. The prompt
is Minerva-style: four short worked problems (written for this task, none from MATH-500) ending
``Final Answer: The final answer is X. I hope it is correct.``. A completion's final answer is the
X it states that way, else its last ``\\boxed{...}``, else the X of its last ``answer is X``; it is
right when math-verify finds it equal to the reference (``\\frac{1}{2}``, ``0.5`` and ``1/2`` are
one answer).

math-verify runs in a child process: its own timeouts use SIGALRM, which works only in the main
thread (the labeler scores samples in worker threads) and cannot stop one long C call anyway, and
some answers make sympy work forever (``9^{9^{9}}`` is a 370-million-digit integer). A check that
takes longer than ``timeout`` seconds kills the child, which is started again for the next one.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import re
import threading
import weakref
from collections.abc import Callable
from functools import cached_property
from multiprocessing.pool import Pool
from typing import Any, TypeVar

from howhard.errors import ConfigError
from howhard.tasks.base import Query
from howhard.tasks.gsm8k import data_file, read_jsonl, subset

_EXAMPLES = (
    (
        "Solve for $x$: $2x + 7 = 19$.",
        "Subtracting $7$ from both sides gives $2x = 12$, and dividing by $2$ gives $x = 6$.",
        "6",
    ),
    (
        "What is $\\frac{2}{3} + \\frac{1}{4}$? Express your answer as a common fraction.",
        "With the common denominator $12$, "
        "$\\frac{2}{3} + \\frac{1}{4} = \\frac{8}{12} + \\frac{3}{12} = \\frac{11}{12}$.",
        "\\frac{11}{12}",
    ),
    (
        "A circle has radius $3$ cm. What is its area, in square centimeters? Express your answer "
        "in terms of $\\pi$.",
        "A circle of radius $r$ has area $\\pi r^2$, so this one has area "
        "$\\pi \\cdot 3^2 = 9\\pi$ square centimeters.",
        "9\\pi",
    ),
    (
        "Solve the system $x + y = 10$, $x - y = 4$. Enter your answer as an ordered pair "
        "$(x, y)$.",
        "Adding the two equations gives $2x = 14$, so $x = 7$, and then $y = 10 - 7 = 3$.",
        "(7, 3)",
    ),
)
FEW_SHOT = "".join(
    f"Problem:\n{p}\n\nSolution:\n{s}\n"
    f"Final Answer: The final answer is ${a}$. I hope it is correct.\n\n"
    for p, s, a in _EXAMPLES
)
_FINAL = re.compile(r"final answer is(.*)", re.IGNORECASE)  # the rest of the line
_ANSWER = re.compile(r"answer is:?(.*)", re.IGNORECASE)
_HOPE = re.compile(r"\s*I hope it is correct.*$", re.IGNORECASE)
# Longer stated answers score 0 unchecked: MATH-500's longest is 53 characters, and math-verify
# needs seconds for a few hundred characters of garbage such as "((((...".
MAX_ANSWER_CHARS = 200
_LOG = logging.getLogger(__name__)
T = TypeVar("T")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced,
    or None if there is none or it is not closed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_ = text.find("{", start)
    if open_ < 0 or text[start:open_].strip() not in ("\\boxed", "\\fbox"):
        return None
    depth = 0
    for i in range(open_, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_ + 1 : i]
    return None


def _stated(pattern: re.Pattern[str], completion: str) -> str | None:
    """X in the last line where ``pattern`` is followed by a non-empty X: the math inside
    ``$...$``, else the text up to the end of the sentence; the content of a ``\\boxed{}`` in it."""
    for rest in reversed(pattern.findall(completion)):
        text = _HOPE.sub("", rest).strip()
        if text.startswith("$"):
            text = text.lstrip("$").split("$")[0]
        else:
            text = re.split(r"\.(?:\s|$)", text)[0]
        boxed = last_boxed(text)
        if boxed is not None:
            text = boxed
        if text.strip():
            return text.strip()
    return None


def extract_answer(completion: str) -> str | None:
    """The LaTeX final answer a completion states: X in its last ``final answer is X``, else the
    content of its last ``\\boxed{...}``, else X in its last ``answer is X`` (small models write
    ``Final Answer: The answer is X``); None if it states none (or an empty one)."""
    found = _stated(_FINAL, completion)
    if found is not None:
        return found
    boxed = last_boxed(completion)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    return _stated(_ANSWER, completion)


# --- run in the child process -------------------------------------------------------------------


def _start_child() -> None:
    import math_verify  # noqa: F401  (the import takes a second or two: do it before any check)

    # We disable math-verify's timeouts on purpose (the parent enforces one); silence its warning.
    logging.getLogger("math_verify").setLevel(logging.ERROR)


@functools.lru_cache(maxsize=4096)
def _parse(latex: str) -> list[Any]:
    from math_verify import parse

    return list(parse(f"${latex}$", parsing_timeout=None))


def _equivalent(gold: str, answer: str) -> bool:
    from math_verify import verify

    return bool(verify(_parse(gold), _parse(answer), timeout_seconds=None))


def _normal_form(answer: str) -> str:
    parsed = _parse(answer)
    return str(parsed[0]) if parsed and not isinstance(parsed[0], str) else "".join(answer.split())


# --- in the parent ------------------------------------------------------------------------------


class _Child:
    """One child process that runs functions with a hard time limit. Calls from several threads
    take turns, so each limit covers its own call only."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pool: Pool | None = None

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the child; raises multiprocessing.TimeoutError (after killing the
        child) when it takes over ``timeout`` seconds."""
        with self._lock:
            if self._pool is None:
                pool = multiprocessing.get_context("spawn").Pool(1, initializer=_start_child)
                weakref.finalize(self, pool.terminate)
                pool.apply(_start_child)  # wait for the start, outside the time limit
                self._pool = pool
            try:
                return self._pool.apply_async(fn, args).get(self.timeout)
            except multiprocessing.TimeoutError:
                self._stop()
                raise

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None


class Math500:
    """MATH-500 problems; ``reward`` is 1.0 when math-verify finds the stated final answer equal to
    the reference, 0.0 otherwise (no answer, unparsable, over ``MAX_ANSWER_CHARS`` characters, or
    a check over ``timeout`` seconds)."""

    name: str = "math500"
    stop: tuple[str, ...] = ("Problem:", "I hope it is correct")
    max_tokens: int = 384

    def __init__(self, data: str | os.PathLike[str] | None = None, timeout: float = 10.0) -> None:
        if timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        self.data = data
        self.timeout = timeout
        self._child = _Child(timeout)

    @cached_property
    def _rows(self) -> tuple[str, list[dict[str, Any]]]:
        path = data_file(self.data, "math500/test.jsonl", self.name)
        return path.stem, read_jsonl(path, ("problem", "answer"))

    def queries(self, n: int, seed: int) -> list[Query]:
        """``n`` problems drawn with ``seed``; a query's id is the row's ``unique_id`` (e.g.
        ``test/precalculus/807.json``), else ``math500-<file>-<row>``."""
        stem, rows = self._rows
        return [
            Query(
                str(rows[i].get("unique_id") or f"math500-{stem}-{i:04d}"),
                rows[i]["problem"],
                {"answer": rows[i]["answer"]},
            )
            for i in subset(len(rows), n, seed)
        ]

    def render(self, prompt: str) -> str:
        return f"{FEW_SHOT}{self.query_text(prompt)}"

    def query_text(self, prompt: str) -> str:
        return f"Problem:\n{prompt}\n\nSolution:"

    def reward(self, query: Query, completion: str) -> float:
        gold = query.meta.get("answer")
        if not isinstance(gold, str) or not gold.strip():
            raise ConfigError(
                f"query {query.id} has no reference answer in meta['answer'] (got {gold!r}); "
                "build queries with Math500.queries"
            )
        answer = extract_answer(completion)
        if answer is None or len(answer) > MAX_ANSWER_CHARS:
            return 0.0
        try:
            return 1.0 if self._child.run(_equivalent, gold, answer) else 0.0
        except multiprocessing.TimeoutError:
            _LOG.warning("math-verify took over %ss on %.80r; reward 0", self.timeout, answer)
            return 0.0

    def answer(self, completion: str) -> str | None:
        """The stated final answer in math-verify's (sympy's) form, e.g. ``1/2`` for both
        ``\\frac12`` and ``0.5``; its LaTeX without spaces if math-verify cannot parse it."""
        answer = extract_answer(completion)
        if answer is None:
            return None
        if len(answer) > MAX_ANSWER_CHARS:
            return "".join(answer.split())
        try:
            return self._child.run(_normal_form, answer)
        except multiprocessing.TimeoutError:
            return "".join(answer.split())

    def canonical(self, answer: str) -> str:
        return answer  # `answer` already gives one spelling per value

    def close(self) -> None:
        """Stop the math-verify child process (it also stops when the task is collected)."""
        self._child.close()
