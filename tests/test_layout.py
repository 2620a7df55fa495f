"""The shape of the package (redesign issue 12): modules keep to their own private names,
library errors name parameters (only the CLI names flags), each CLI module is small, a budget
is validated once per command, and every JSON output is strict JSON."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from howhard.cli import main
from howhard.evaluate import check_budgets
from howhard.pool import Pool, write_pool

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "howhard"


def modules() -> list[tuple[str, ast.Module]]:
    """(dotted module name, syntax tree) of every module of the package."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, ast.parse(path.read_text(), str(path))))
    return out


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def is_module(dotted: str) -> bool:
    path = SRC.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def private_reaches(name: str, tree: ast.Module, is_package: bool) -> list[str]:
    """Private names of other modules that module ``name`` imports or uses through a module
    alias; modules of one subpackage (siblings) may share their private helpers."""
    home = name if is_package else name.rpartition(".")[0]

    def foreign(owner: str) -> bool:  # owner: the module that defines the private name
        siblings = home != "howhard" and home in (owner, owner.rpartition(".")[0])
        return owner.startswith("howhard") and not siblings

    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            for k, part in enumerate(parts):
                if is_private(part) and foreign(".".join(parts[: k + 1])):
                    found.append(node.module)
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if is_module(full):
                    aliases[a.asname or a.name] = full
                if is_private(a.name) and foreign(full if is_module(full) else node.module):
                    found.append(full)
        elif isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name] = a.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and is_private(node.attr)
            and foreign(aliases[node.value.id])
        ):
            found.append(f"{aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names():
    reaches = {}
    for name, tree in modules():
        is_package = (SRC.joinpath(*name.split(".")) / "__init__.py").exists()
        got = private_reaches(name, tree, is_package)
        if got:
            reaches[name] = got
    assert reaches == {}


def test_the_private_name_check_can_fail():
    tree = ast.parse("from howhard.evaluate import _cross_fit\n")
    assert private_reaches("howhard.compare", tree, False) == ["howhard.evaluate._cross_fit"]
    tree = ast.parse("from howhard import evaluate\nevaluate._hidden(1)\n")
    assert private_reaches("howhard.runs.compare", tree, False) == ["howhard.evaluate._hidden"]
    tree = ast.parse("from howhard.predict.success import _unpack\n")
    assert private_reaches("howhard.predict.gains", tree, False) == []  # siblings
    tree = ast.parse("from howhard.reports._plot import save_plot\n")
    assert private_reaches("howhard.reports.routing", tree, False) == []
    assert private_reaches("howhard.runs.evaluate", tree, False) == ["howhard.reports._plot"]


def flag_messages(tree: ast.Module) -> list[str]:
    """String pieces containing ``--`` in the arguments of raised exceptions."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and "--" in str(part.value):
                    out.append(str(part.value))
    return out


def test_library_errors_name_parameters_not_flags():
    """Outside cli/, no raised message says ``--flag``: it names the parameter and passes
    ``param=``, and the command line words it as the flag (see test_cli)."""
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("cli/"):
            continue
        if found := flag_messages(ast.parse(path.read_text())):
            offenders[rel] = found
    assert offenders == {}


def test_each_command_line_module_is_short():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "cli").glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 100} == {}
    assert len(sizes) >= 9  # one per subcommand and the shared flags


def reject(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def pool_files(tmp_path: Path) -> tuple[str, str]:
    """A weak pool where the oracle saves nothing at B = 4 (every query solved or never: the
    oracle's share of the saving is undefined) and a strong pool of the same queries."""
    rng = np.random.default_rng(0)
    n = 40
    ids = tuple(f"q{i}" for i in range(n))
    prompts = tuple(f"prompt {i}" for i in range(n))
    weak = tuple(np.full(4, float(i % 2)) for i in range(n))
    strong = tuple((rng.random(4) < 0.7).astype(float) for _ in range(n))
    return (
        str(write_pool(Pool(ids, prompts, weak), tmp_path / "weak.jsonl")),
        str(write_pool(Pool(ids, prompts, strong), tmp_path / "strong.jsonl")),
    )


def test_json_outputs_and_reports_are_strict_json(capsys, tmp_path):
    weak, strong = pool_files(tmp_path)
    commands = {
        "evaluate": ["evaluate", weak, "--budgets", "1,2,4", "--max-per-query", "4"],
        "routing": ["evaluate", weak, "--strong", strong, "--shares", "0,0.5,1"],
    }
    for name, argv in commands.items():
        assert main([*argv, "--json", "--out", str(tmp_path / name)]) == 0
        printed = capsys.readouterr().out
        json.loads(printed, parse_constant=reject)
        saved = (tmp_path / name / "report.json").read_text()
        assert json.loads(saved, parse_constant=reject) == json.loads(printed)
    data = json.loads((tmp_path / "evaluate" / "report.json").read_text())
    assert data["oracle_fraction"]["oracle"] == [None, None, None]  # the oracle saves nothing


class CallCounter:
    """Counts calls of one function, however it was imported (a profile hook on its code)."""

    def __init__(self, function: object) -> None:
        self.code, self.calls = function.__code__, 0  # type: ignore[attr-defined]

    def __call__(self, frame, event, arg):
        if event == "call" and frame.f_code is self.code:
            self.calls += 1

    def __enter__(self) -> CallCounter:
        sys.setprofile(self)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)


def test_budgets_are_validated_once_per_command(capsys, tmp_path):
    weak, _ = pool_files(tmp_path)
    with CallCounter(check_budgets) as counter:
        assert main(["evaluate", weak, "--budgets", "1,2,4", "--max-per-query", "4"]) == 0
    assert counter.calls == 1
    from test_compare import synthetic, write_inputs

    pool_path, pred_path, cache = write_inputs(tmp_path, synthetic(n=30, samples=8)[0])
    argv = ["compare", pool_path, "--predictor", pred_path, "--feature-cache", cache]
    with CallCounter(check_budgets) as counter:
        assert main([*argv, "--budgets", "1,2", "--max-per-query", "8", "--replays", "3"]) == 0
    assert counter.calls == 1
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "flag_text"),
    [
        (["--budgets", "1,9", "--max-per-query", "4"], "outside [0, --max-per-query=4]"),
        (["--budgets", "", "--max-per-query", "4"], "--budgets is empty"),
        (["--budgets", "1", "--max-per-query", "5"], "Lower --max-per-query to <= 4"),
    ],
)
def test_the_cli_names_the_flag_of_a_parameter_error(capsys, tmp_path, argv, flag_text):
    weak, _ = pool_files(tmp_path)
    assert main(["evaluate", weak, *argv]) == 2
    assert flag_text in capsys.readouterr().err


def test_a_bad_share_is_not_reported_as_a_budget(capsys, tmp_path):
    weak, strong = pool_files(tmp_path)
    with pytest.raises(SystemExit):
        main(["evaluate", weak, "--strong", strong, "--shares", "0.5,x"])
    err = capsys.readouterr().err
    assert "error: argument --shares: shares must be numbers like 0.1,0.5" in err
