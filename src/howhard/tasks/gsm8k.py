"""GSM8K (Cobbe et al., 2021): grade-school word problems with a numeric answer, 4-shot.

The data is the test split, ``$HOWHARD_DATA/gsm8k/test.jsonl`` (or a file passed as ``data``), one
JSON object a line with ``question`` and ``answer`` (a worked solution ending ``#### N``). The
prompt shows the first four problems of the *train* split with their worked solutions, whose last
line ``#### N`` reads ``The answer is N.``; a completion is right when the number it states equals
the reference numerically (``1,000``, ``$1000.00`` and ``1000`` are one answer).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from howhard.errors import ConfigError
from howhard.tasks.base import Query, data_dir

# The first four rows of the GSM8K train split, verbatim (never the test split).
EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
        "in May. How many clips did Natalia sell altogether in April and May?",
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
        "#### 72",
    ),
    (
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
        "babysitting. How much did she earn?",
        "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
        "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n"
        "#### 10",
    ),
    (
        "Betty is saving money for a new wallet which costs $100. Betty has only half of the "
        "money she needs. Her parents decided to give her $15 for that purpose, and her "
        "grandparents twice as much as her parents. How much more money does Betty need to buy "
        "the wallet?",
        "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\n"
        "Betty's grandparents gave her 15 * 2 = $<<15*2=30>>30.\n"
        "This means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.\n"
        "#### 5",
    ),
    (
        "Julie is reading a 120-page book. Yesterday, she was able to read 12 pages and today, "
        "she read twice as many pages as yesterday. If she wants to read half of the remaining "
        "pages tomorrow, how many pages should she read?",
        "Maila read 12 x 2 = <<12*2=24>>24 pages today.\n"
        "So she was able to read a total of 12 + 24 = <<12+24=36>>36 pages since yesterday.\n"
        "There are 120 - 36 = <<120-36=84>>84 pages left to be read.\n"
        "Since she wants to read half of the remaining pages tomorrow, then she should read "
        "84/2 = <<84/2=42>>42 pages.\n"
        "#### 42",
    ),
)

# A number as written in a solution: optional minus and dollar sign, thousands commas, decimals.
_NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_STATED = re.compile(r"answer is(.*)", re.IGNORECASE)  # the rest of the line
_HASHES = re.compile(r"####(.*)")


def worked_answer(answer: str) -> str:
    """A GSM8K solution as the prompt shows it: calculator notes ``<<48/2=24>>`` dropped and the
    last line ``#### N`` written ``The answer is N.``."""
    text = re.sub(r"<<[^>]*>>", "", answer)
    return re.sub(r"\n?####\s*(.*)\s*$", r"\nThe answer is \1.", text)


FEW_SHOT = "".join(f"Question: {q}\nAnswer: {worked_answer(a)}\n\n" for q, a in EXAMPLES)


def normalise_number(text: str) -> str | None:
    """``text``'s number in a canonical form (``$1,200.50`` -> ``1200.5``, ``3.0`` -> ``3``), or
    None if it is not one number, so numerically equal answers give equal strings."""
    try:
        value = Decimal(text.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(completion: str) -> str | None:
    """The number a completion states as its answer, normalised: the first number after the last
    ``The answer is`` (or ``####``) that is followed by one on its line, else the last number in
    the text; None if it has no number."""
    for pattern in (_STATED, _HASHES):
        for rest in reversed(pattern.findall(completion)):
            match = _NUMBER.search(rest)
            if match:
                return normalise_number(match.group())
    numbers = _NUMBER.findall(completion)
    return normalise_number(numbers[-1]) if numbers else None


def data_file(data: str | os.PathLike[str] | None, default: str, task: str) -> Path:
    """``data`` if given, else ``data_dir() / default``, after checking that the file exists."""
    if data is not None:
        path = Path(data).expanduser()
        if not path.is_file():
            raise ConfigError(f"{task} data file {path} does not exist; pass an existing file")
        return path
    path = data_dir() / default
    if not path.is_file():
        raise ConfigError(
            f"{task}'s default file {path} does not exist; set HOWHARD_DATA to the folder that "
            f"holds {default}, or pass the file itself as data=FILE",
            param="data",
        )
    return path


def read_jsonl(path: Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file, each checked to hold ``fields``."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path} line {line_no} is not JSON ({e}); fix the line") from e
            missing = [k for k in fields if not isinstance(row, dict) or k not in row]
            if missing:
                raise ConfigError(
                    f"{path} line {line_no} lacks {', '.join(missing)}; every line must be a "
                    f"JSON object with the fields {', '.join(fields)}"
                )
            rows.append(row)
    if not rows:
        raise ConfigError(f"{path} holds no rows; pass a file with at least one problem")
    return rows


def subset(size: int, n: int, seed: int) -> list[int]:
    """Row indices of ``n`` of ``size`` problems, the first ``n`` of a permutation drawn with
    ``seed`` (all of them, shuffled, when ``n >= size``): the same for the same seed, and the
    queries for a smaller ``n`` are the first ones of a larger ``n``."""
    if n < 1:
        raise ConfigError(f"number of queries must be >= 1, got {n}")
    return [int(i) for i in np.random.default_rng(seed).permutation(size)[:n]]


class GSM8K:
    """GSM8K test problems; ``reward`` is 1.0 when the stated number equals the reference."""

    name: str = "gsm8k"
    stop: tuple[str, ...] = ("\n\n", "Question:")
    max_tokens: int = 256

    def __init__(self, data: str | os.PathLike[str] | None = None) -> None:
        self.data = data

    @cached_property
    def _rows(self) -> tuple[str, list[dict[str, Any]]]:
        path = data_file(self.data, "gsm8k/test.jsonl", self.name)
        return path.stem, read_jsonl(path, ("question", "answer"))

    def queries(self, n: int, seed: int) -> list[Query]:
        """``n`` problems drawn with ``seed``; ids name the file and row (``gsm8k-test-0042``)."""
        stem, rows = self._rows
        out = []
        for i in subset(len(rows), n, seed):
            answer = extract_answer(rows[i]["answer"].split("####")[-1])
            if answer is None:
                raise ConfigError(f"{self.name} row {i} has no numeric answer after '####'")
            out.append(Query(f"gsm8k-{stem}-{i:04d}", rows[i]["question"], {"answer": answer}))
        return out

    def render(self, prompt: str) -> str:
        return f"{FEW_SHOT}{self.query_text(prompt)}"

    def query_text(self, prompt: str) -> str:
        return f"Question: {prompt}\nAnswer:"

    def reward(self, query: Query, completion: str) -> float:
        expected = normalise_number(str(query.meta.get("answer", "")))
        if expected is None:
            raise ConfigError(
                f"query {query.id} has no numeric reference answer in meta['answer'] "
                f"(got {query.meta.get('answer')!r}); build queries with GSM8K.queries"
            )
        return 1.0 if extract_answer(completion) == expected else 0.0

    def answer(self, completion: str) -> str | None:
        return extract_answer(completion)

    def canonical(self, answer: str) -> str:
        return answer  # `answer` already gives one spelling per value
