"""CRUXEval output prediction: given a short Python function ``f`` and an input, state ``f(input)``.

The data is the benchmark's ``problems.jsonl`` (``id``, ``code``, ``input``, ``output``; see
``shared/data/cruxeval/README.md``); a query's prompt is ``{code}\\nassert f({input}) == ??``,
the prompt of the released pools ``output-t0.8/<model>.jsonl.gz``. A completion is the predicted
output; its reward is 1 when it denotes the same value as the true output (`normalize_answer`
of both compare equal), else 0.

Features of a query (`CruxEval.query_features`, the ``task`` feature source), in two parts:

- static (`static_features`, `STATIC_NAMES`): the program's size, its AST node kinds, loops and
  their nesting, string / list / dict method calls and builtins, the sizes of its literals and
  of the input;
- execution (`execution_features`, `EXEC_NAMES`): what running ``f(input)`` does, measured in
  the bubblewrap sandbox with ``sys.settrace``: lines executed, calls, loop iterations,
  recursion depth, the output's type, length and whether it appears in the prompt, exceptions,
  and a flag when the step or time limit stopped it. All programs of one call run in one
  sandboxed interpreter, one after the other, each with its own step and time limit; should
  one kill that interpreter, it is flagged and the batch resumes after it in a new sandbox.

The programs run in one interpreter, so a malicious one could forge the features of those after
it (never escape the sandbox): the features are hints to a predictor, not a verdict.
"""

from __future__ import annotations

import ast
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from howhard.errors import ConfigError, SandboxError
from howhard.pool import jsonl_rows
from howhard.sandbox import Limits, Sandbox
from howhard.tasks.base import Query, data_dir

_ASSERT = "\nassert f("
_TAIL = ") == ??"
LONGEST_LITERAL = 10_000  # longer texts are compared as stripped strings, not parsed

STRING_METHODS = frozenset(
    [
        "capitalize",
        "casefold",
        "center",
        "count",
        "endswith",
        "expandtabs",
        "find",
        "format",
        "index",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "isidentifier",
        "islower",
        "isnumeric",
        "isprintable",
        "isspace",
        "istitle",
        "isupper",
        "join",
        "ljust",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "replace",
        "rfind",
        "rindex",
        "rjust",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "swapcase",
        "title",
        "translate",
        "upper",
        "zfill",
    ]
)
LIST_METHODS = frozenset(
    ["append", "clear", "copy", "extend", "insert", "pop", "remove", "reverse", "sort"]
)
DICT_METHODS = frozenset(
    ["fromkeys", "get", "items", "keys", "popitem", "setdefault", "update", "values"]
)
BUILTINS = frozenset(
    [
        "abs",
        "all",
        "any",
        "bool",
        "chr",
        "dict",
        "divmod",
        "enumerate",
        "filter",
        "float",
        "int",
        "isinstance",
        "len",
        "list",
        "map",
        "max",
        "min",
        "ord",
        "range",
        "reversed",
        "round",
        "set",
        "sorted",
        "str",
        "sum",
        "tuple",
        "zip",
    ]
)
_KINDS: tuple[tuple[str, tuple[type[ast.AST], ...]], ...] = (
    ("for", (ast.For,)),
    ("while", (ast.While,)),
    ("if", (ast.If, ast.IfExp)),
    ("comprehension", (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)),
    ("lambda", (ast.Lambda,)),
    ("try", (ast.Try,)),
    ("return", (ast.Return,)),
    ("call", (ast.Call,)),
    ("attribute", (ast.Attribute,)),
    ("subscript", (ast.Subscript,)),
    ("slice", (ast.Slice,)),
    ("binop", (ast.BinOp,)),
    ("augassign", (ast.AugAssign,)),
    ("assign", (ast.Assign,)),
    ("compare", (ast.Compare,)),
    ("boolop", (ast.BoolOp,)),
    ("unaryop", (ast.UnaryOp,)),
    ("break_continue", (ast.Break, ast.Continue)),
    ("fstring", (ast.JoinedStr,)),
    ("nested_def", (ast.FunctionDef,)),  # f itself is subtracted
)
STATIC_NAMES: tuple[str, ...] = (
    "prompt_chars",
    "code_lines",
    "code_chars",
    "ast_nodes",
    "ast_depth",
    "loop_nesting",
    "f_args",
    *(f"n_{name}" for name, _ in _KINDS),
    "string_methods",
    "list_methods",
    "dict_methods",
    "builtin_calls",
    "distinct_calls",
    "code_str_literals",
    "code_str_chars",
    "code_int_literals",
    "code_max_int",
    "input_chars",
    "input_args",
    "input_nodes",
    "input_elements",
    "input_max_str",
    "input_max_int",
)
"""The static features of `static_features`, in order; counts are log1p-transformed."""

EXEC_NAMES: tuple[str, ...] = (
    "lines_executed",
    "calls",
    "loop_iterations",
    "max_depth",
    "line_coverage",
    "max_line_hits",
    "str_calls",
    "list_calls",
    "dict_calls",
    "other_calls",
    "exception",
    "limit_hit",
    "output_repr_chars",
    "output_len",
    "output_nesting",
    "output_in_prompt",
    "output_is_input",
    "output_distinct_chars",
    "output_similarity",
    *(
        f"output_{t}"
        for t in ("none", "bool", "int", "float", "str", "list", "tuple", "dict", "set", "other")
    ),
)
"""The execution features of `execution_features`, in order (counts log1p-transformed;
``limit_hit`` is 1 when the step or time limit, or a crash of the interpreter, ended the run)."""

FEATURE_NAMES = STATIC_NAMES + EXEC_NAMES


def parse_prompt(prompt: str) -> tuple[str, str]:
    """(code, input) of a prompt ``{code}\\nassert f({input}) == ??``; ConfigError otherwise."""
    head, sep, tail = prompt.rpartition(_ASSERT)
    if not sep or not tail.endswith(_TAIL) or not head.strip():
        raise ConfigError(
            f"{prompt[-80:]!r} is not a CRUXEval output-prediction prompt "
            "('<code>\\nassert f(<input>) == ??'); use the cruxeval task's pools"
        )
    return head, tail[: -len(_TAIL)]


def normalize_answer(text: str) -> str:
    """A canonical form of a predicted output, so equal values compare equal (what majority vote
    counts): ``repr(ast.literal_eval(text))`` when the text is a Python literal (``'abc'`` and
    ``"abc"`` both give ``'abc'``; ``[1,2]`` gives ``[1, 2]``), else the stripped text (also for
    texts longer than 10,000 characters, not parsed)."""
    text = text.strip()
    if len(text) > LONGEST_LITERAL:
        return text
    try:
        return repr(ast.literal_eval(text))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def _log(x: float) -> float:
    return math.log1p(max(x, 0.0))


def _depth(node: ast.AST) -> int:
    return 1 + max((_depth(c) for c in ast.iter_child_nodes(node)), default=0)


def _loop_nesting(node: ast.AST, depth: int = 0) -> int:
    inner = depth + isinstance(node, ast.For | ast.While | ast.comprehension)
    return max([inner, *(_loop_nesting(c, inner) for c in ast.iter_child_nodes(node))])


def static_features(code: str, arg: str) -> list[float]:
    """The static features of program ``code`` called on ``arg`` (the text between ``f(`` and
    ``)``), named by `STATIC_NAMES`. Counts are log1p(count); a program or input that does not
    parse gives ConfigError."""
    try:
        tree = ast.parse(code)
        call = ast.parse(f"f({arg})", mode="eval").body
    except SyntaxError as e:
        raise ConfigError(f"CRUXEval program or input does not parse: {e}") from e
    assert isinstance(call, ast.Call)
    nodes = list(ast.walk(tree))
    f_def = next((n for n in nodes if isinstance(n, ast.FunctionDef) and n.name == "f"), None)
    kinds = [sum(isinstance(n, types) for n in nodes) for _, types in _KINDS]
    kinds[-1] -= f_def is not None
    methods = [
        n.func.attr for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    ]
    names = [n.func.id for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    strings = [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    ints = [
        n.value
        for n in nodes
        if isinstance(n, ast.Constant) and type(n.value) is int  # not bool
    ]
    inputs = [n for a in [*call.args, *call.keywords] for n in ast.walk(a)]
    in_strings = [
        n.value for n in inputs if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]
    in_ints = [n.value for n in inputs if isinstance(n, ast.Constant) and type(n.value) is int]
    elements = sum(
        len(n.elts) if isinstance(n, ast.List | ast.Tuple | ast.Set) else len(n.keys)
        for n in inputs
        if isinstance(n, ast.List | ast.Tuple | ast.Set | ast.Dict)
    )
    prompt = f"{code}{_ASSERT}{arg}{_TAIL}"
    return [
        _log(len(prompt)),
        _log(len([line for line in code.splitlines() if line.strip()])),
        _log(len(code)),
        _log(len(nodes)),
        float(_depth(tree)),
        float(_loop_nesting(tree)),
        float(len(f_def.args.args)) if f_def is not None else 0.0,
        *(_log(k) for k in kinds),
        _log(sum(m in STRING_METHODS for m in methods)),
        _log(sum(m in LIST_METHODS for m in methods)),
        _log(sum(m in DICT_METHODS for m in methods)),
        _log(sum(n in BUILTINS for n in names)),
        _log(len(set(methods) | set(names))),
        _log(len(strings)),
        _log(sum(map(len, strings))),
        _log(len(ints)),
        _log(max((abs(i) for i in ints), default=0)),
        _log(len(arg)),
        float(len(call.args) + len(call.keywords)),
        _log(len(inputs)),
        _log(elements),
        _log(max(map(len, in_strings), default=0)),
        _log(max((abs(i) for i in in_ints), default=0)),
    ]


# The program run in the sandbox: standard library only. It reads the batch from the literal
# appended below it, writes one JSON line per program to the original stdout (the programs' own
# output goes to /dev/null), and gives each program fresh builtins, a step and a time limit.
_BATCH = r"""
import ast, builtins, difflib, json, os, signal, sys

_OUT = os.dup(1)
_NULL = os.open(os.devnull, os.O_RDWR)
os.dup2(_NULL, 1)
os.dup2(_NULL, 2)
_PRISTINE = dict(vars(builtins))
_RECURSION = sys.getrecursionlimit()
_TYPES = ("NoneType", "bool", "int", "float", "str", "list", "tuple", "dict", "set")


class _Limit(BaseException):
    pass


def _alarm(signum, frame):
    raise _Limit("time")


def _nesting(value, depth=0):
    if depth > 50 or not isinstance(value, (list, tuple, dict, set, frozenset)):
        return 0
    items = value.values() if isinstance(value, dict) else value
    return 1 + max((_nesting(v, depth + 1) for v in items), default=0)


def _measure(code, arg, steps, seconds):
    tree = ast.parse(code)
    loops = {
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, (ast.For, ast.While, ast.ListComp, ast.SetComp, ast.DictComp,
                          ast.GeneratorExp))
    }
    lines = {n.lineno for n in ast.walk(tree) if isinstance(n, ast.stmt)}
    c = {"lines": 0, "calls": 0, "loops": 0, "depth": 0, "max_depth": 0}
    c.update({"c_str": 0, "c_list": 0, "c_dict": 0, "c_other": 0})
    seen = {}

    def local(frame, event, _):
        if event == "line":
            c["lines"] += 1
            line = frame.f_lineno
            seen[line] = seen.get(line, 0) + 1
            if line in loops:
                c["loops"] += 1
            if c["lines"] > steps:
                raise _Limit("steps")
        elif event == "return":
            c["depth"] -= 1
        return local

    def builtin_calls(frame, event, function):
        if event == "c_call" and frame.f_code.co_filename == "<program>":
            owner = type(getattr(function, "__self__", None))
            kind = {str: "c_str", list: "c_list", dict: "c_dict"}.get(owner, "c_other")
            c[kind] += 1

    def top(frame, event, _):
        if frame.f_code.co_filename != "<program>":
            return None
        c["calls"] += 1
        c["depth"] += 1
        c["max_depth"] = max(c["max_depth"], c["depth"])
        return local

    namespace = {"__builtins__": dict(_PRISTINE), "__name__": "__program__"}
    result, error, limit = None, 0, 0
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        exec(compile(tree, "<program>", "exec"), namespace)
        call = compile("f(" + arg + ")", "<input>", "eval")
        sys.settrace(top)
        sys.setprofile(builtin_calls)
        try:
            result = eval(call, namespace)
        finally:
            sys.setprofile(None)
            sys.settrace(None)
    except _Limit:
        limit = 1
    except BaseException:
        error = 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.setprofile(None)
        sys.settrace(None)
        sys.setrecursionlimit(_RECURSION)
    out = {
        "lines_executed": c["lines"], "calls": c["calls"], "loop_iterations": c["loops"],
        "max_depth": c["max_depth"], "line_coverage": len(set(seen) & lines) / max(len(lines), 1),
        "max_line_hits": max(seen.values(), default=0), "str_calls": c["c_str"],
        "list_calls": c["c_list"], "dict_calls": c["c_dict"], "other_calls": c["c_other"],
        "exception": error, "limit_hit": limit,
    }
    if not (error or limit):
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            text = repr(result)
            first = eval(compile("(" + arg + ",)", "<input>", "eval"), {"__builtins__": {}})
            out["output_repr_chars"] = len(text)
            out["output_len"] = len(result) if hasattr(result, "__len__") else len(text)
            out["output_nesting"] = _nesting(result)
            out["output_in_prompt"] = int(text in code or text in arg)
            out["output_is_input"] = int(len(first) > 0 and repr(first[0]) == text)
            out["output_distinct_chars"] = len(set(text))
            before = repr(first[0])[:1000] if len(first) else ""
            out["output_similarity"] = difflib.SequenceMatcher(None, before, text[:1000]).ratio()
            name = type(result).__name__
            out["output_type"] = name if name in _TYPES else "other"
        except BaseException:
            out["output_type"] = "other"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return out


def _write(message):
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(_OUT, data):]


def _main(batch):
    signal.signal(signal.SIGALRM, _alarm)
    _write({"ready": True})
    for i, (code, arg) in batch["items"]:
        try:
            features = _measure(code, arg, batch["steps"], batch["seconds"])
        except BaseException:
            features = {"exception": 1}
        _write({"i": i, "features": features})
"""


def _vector(features: dict[str, Any]) -> list[float]:
    """`EXEC_NAMES` values from one program's measurements (missing ones are 0)."""
    get = lambda name: float(features.get(name, 0) or 0)  # noqa: E731
    kind = features.get("output_type")
    types = ("NoneType", "bool", "int", "float", "str", "list", "tuple", "dict", "set", "other")
    return [
        _log(get("lines_executed")),
        _log(get("calls")),
        _log(get("loop_iterations")),
        _log(get("max_depth")),
        get("line_coverage"),
        _log(get("max_line_hits")),
        _log(get("str_calls")),
        _log(get("list_calls")),
        _log(get("dict_calls")),
        _log(get("other_calls")),
        get("exception"),
        get("limit_hit"),
        _log(get("output_repr_chars")),
        _log(get("output_len")),
        get("output_nesting"),
        get("output_in_prompt"),
        get("output_is_input"),
        _log(get("output_distinct_chars")),
        get("output_similarity"),
        *(float(kind == t) for t in types),
    ]


def execution_features(
    programs: Sequence[tuple[str, str]],
    sandbox: Sandbox | None = None,
    steps: int = 1_000_000,
    seconds: float = 2.0,
) -> np.ndarray:
    """`EXEC_NAMES` features of running each (code, arg) as ``f(arg)``, shape (n, len(EXEC_NAMES)).

    All programs run in one sandboxed interpreter (``sandbox``, by default one whose batch time
    limit is 30 s plus ``seconds`` per program), each stopped after ``steps`` traced lines or
    ``seconds`` of wall time (``limit_hit`` = 1). A program that ends the interpreter itself
    (``os._exit``, a signal, the batch time limit) gets ``limit_hit`` = 1, and the programs after
    it run in a new sandbox. SandboxError when the sandbox cannot run at all.
    """
    if steps < 1 or not seconds > 0:
        raise ConfigError(f"steps must be >= 1 and seconds > 0; got {steps} and {seconds}")
    if sandbox is None:
        timeout = 30.0 + seconds * len(programs)
        sandbox = Sandbox(Limits(timeout=timeout, memory_mb=1024, output_bytes=16 << 20))
    found: dict[int, dict[str, Any]] = {}
    start = 0
    while start < len(programs):
        items = [[i, list(programs[i])] for i in range(start, len(programs))]
        batch = {"items": items, "steps": steps, "seconds": seconds}
        run = sandbox.run(f"{_BATCH}\n_main(json.loads({json.dumps(json.dumps(batch))}))\n")
        lines = run.stdout.splitlines()
        if not lines or lines[0] != '{"ready": true}':
            raise SandboxError(
                f"the feature batch did not start in the sandbox (exit {run.returncode}): "
                f"{run.stderr[-500:]}"
            )
        for line in lines[1:]:
            try:
                row = json.loads(line)
                found[int(row["i"])] = dict(row["features"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by the end of the run
        missing = [i for i in range(start, len(programs)) if i not in found]
        if not missing:
            break
        found[missing[0]] = {"limit_hit": 1}  # it ended the interpreter
        start = missing[0] + 1
    return np.array([_vector(found[i]) for i in range(len(programs))], dtype=np.float32).reshape(
        len(programs), len(EXEC_NAMES)
    )


def default_data_path() -> Path:
    """``cruxeval/problems.jsonl`` in the data folder (`howhard.tasks.base.data_dir`)."""
    return data_dir() / "cruxeval" / "problems.jsonl"


def read_problems(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """Problems by id from a CRUXEval ``problems.jsonl`` (string fields id, code, input, output)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"CRUXEval data file {path} does not exist; pass data=PATH to problems.jsonl"
        )
    problems: dict[str, dict[str, str]] = {}
    for where, row in jsonl_rows(path, ConfigError):
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), str) for k in ("id", "code", "input", "output")
        ):
            raise ConfigError(f"{where}: a problem needs string fields id, code, input, output")
        problems[row["id"]] = {k: row[k] for k in ("id", "code", "input", "output")}
    if not problems:
        raise ConfigError(f"{path} holds no problems")
    return problems


class CruxEval:
    """The CRUXEval output-prediction task; ``reward`` is 1.0 when the completion's
    `normalize_answer` equals the true output's, else 0.0."""

    name: str = "cruxeval"
    stop: tuple[str, ...] = ("\n",)
    max_tokens: int = 100
    feature_names: tuple[str, ...] = FEATURE_NAMES

    def __init__(
        self,
        data: str | os.PathLike[str] | None = None,
        steps: int = 1_000_000,
        seconds: float = 2.0,
    ) -> None:
        self.data = data
        self.steps = steps
        self.seconds = seconds
        self._problems: dict[str, dict[str, str]] | None = None

    @property
    def problems(self) -> dict[str, dict[str, str]]:
        if self._problems is None:
            self._problems = read_problems(self.data or default_data_path())
        return self._problems

    def queries(self, n: int, seed: int) -> list[Query]:
        """``n`` problems drawn without replacement (all when n >= 800), in the file's order."""
        if n < 1:
            raise ConfigError(f"number of queries must be >= 1, got {n}")
        ids = list(self.problems)
        if n < len(ids):
            chosen = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
            ids = [ids[i] for i in sorted(chosen)]
        return [
            Query(
                i,
                f"{self.problems[i]['code']}{_ASSERT}{self.problems[i]['input']}{_TAIL}",
                {"answer": self.problems[i]["output"]},
            )
            for i in ids
        ]

    def render(self, prompt: str) -> str:
        return (
            "Complete the assertion with the literal output of the function on the input.\n\n"
            f"{prompt}\nAnswer:"
        )

    def query_text(self, prompt: str) -> str:
        return prompt

    def reward(self, query: Query, completion: str) -> float:
        expected = query.meta.get("answer")
        if not isinstance(expected, str):
            raise ConfigError(f"query {query.id!r} has no reference 'answer'; label from the task")
        return float(normalize_answer(completion) == normalize_answer(expected))

    def answer(self, completion: str) -> str | None:
        """The completion's answer for majority vote: `normalize_answer` (None when empty)."""
        return normalize_answer(completion) or None

    def canonical(self, answer: str) -> str | None:
        return self.answer(answer)  # a pooled answer is the completion's output text

    def query_features(self, prompts: Sequence[str]) -> np.ndarray:
        """Static then execution features of each prompt, shape (n, len(FEATURE_NAMES)); the
        programs run in one sandbox batch (`execution_features`)."""
        pairs = [parse_prompt(p) for p in prompts]
        static = np.array([static_features(c, a) for c, a in pairs], dtype=np.float32)
        static = static.reshape(len(pairs), len(STATIC_NAMES))
        run = execution_features(pairs, steps=self.steps, seconds=self.seconds)
        return np.concatenate([static, run], axis=1)
