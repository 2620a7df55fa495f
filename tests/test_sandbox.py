import math
import os
import socket
import stat
import uuid
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from howhard.errors import ConfigError, SandboxError
from howhard.sandbox import (
    INSTALL_HINT,
    RUNNER,
    Limits,
    Sandbox,
    _from_plain,
    _to_plain,
    assertion_mask,
)

SANDBOX_UIDS = 2_000_000_000  # as root, sandboxes run as uids above this


def leftovers() -> list[psutil.Process]:
    """Processes of any sandbox still alive: our descendants, the runner's command line, or (as
    root) a sandbox uid."""
    found = set(psutil.Process().children(recursive=True))
    for proc in psutil.process_iter(["cmdline", "uids"]):
        uids = proc.info["uids"]
        if RUNNER in (proc.info["cmdline"] or []) or (uids and uids.real >= SANDBOX_UIDS):
            found.add(proc)
    return sorted(found, key=lambda p: p.pid)


@pytest.fixture
def clean():
    """No sandbox process outlives a test. Processes alive before it (e.g. the math-verify
    child of another test's task) are not the test's."""
    before = set(leftovers())
    yield
    assert [p for p in leftovers() if p not in before] == []


# ------------------------------------------------------------------ pure logic

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
hashable = st.recursive(
    scalars.filter(lambda v: not (isinstance(v, float) and math.isnan(v))),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
plain = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.sets(hashable, max_size=3)
        | st.dictionaries(hashable, inner, max_size=3)
    ),
    max_leaves=10,
)


def same(a, b) -> bool:
    """Equal with exact types (and nan equal to nan)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=60, deadline=None)
@given(plain)
def test_plain_data_survives_the_json_round_trip_with_exact_types(value):
    import json

    assert same(_from_plain(json.loads(json.dumps(_to_plain(value)))), value)


def test_plain_encoding_is_tagged():
    assert _to_plain([1, (2.5, "a"), None, True]) == [1, {"tuple": [2.5, "a"]}, None, True]
    assert _to_plain({1: float("inf")}) == {"dict": [[1, {"float": "inf"}]]}


class AlwaysEqual:
    def __eq__(self, other):
        return True

    __hash__ = object.__hash__


class SneakyInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize(
    "value", [AlwaysEqual(), SneakyInt(3), (x for x in []), [1, AlwaysEqual()]]
)
def test_only_exact_plain_types_are_encoded(value):
    with pytest.raises(TypeError):
        _to_plain(value)


@pytest.mark.parametrize(
    "data",
    [{"evil": 1}, {"tuple": 1}, {"tuple": [], "set": []}, {"dict": [[1]]}, {"float": "1e9"}],
)
def test_decoding_refuses_anything_but_the_encoding(data):
    with pytest.raises(ValueError):
        _from_plain(data)


def test_assertions_are_the_top_level_statements_that_assert_on_the_candidate():
    test = """
def check(f):
    import math
    assert True
    assert f(1) == 2, "message"
    x = f(3)
    assert math.fabs(x) < 1
    for i in range(3):
        assert f(i) >= 0
    if True:
        assert f(0) == 0
"""
    assert assertion_mask(test) == [False, False, True, False, False, True, True]
    with pytest.raises(ValueError, match="check"):
        assertion_mask("def test(candidate):\n    assert candidate(1)\n")


def test_limits_are_validated():
    with pytest.raises(ConfigError, match="timeout"):
        Limits(timeout=0)
    with pytest.raises(ConfigError, match="processes"):
        Limits(processes=0)
    with pytest.raises(ConfigError, match="too small"):
        Limits(memory_mb=16)
    assert Limits(timeout=2.5).cpu == 4 and Limits(cpu_seconds=1).cpu == 1


def test_missing_bwrap_raises_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
        Sandbox().run("print(1)")
    with pytest.raises(SandboxError, match="never runs generated code outside"):
        Sandbox().check("def f():\n    return 1\n", "f", "def check(c):\n    assert c() == 1\n")


# ------------------------------------------------------------------ the real sandbox


@pytest.mark.integration
def test_bwrap_that_cannot_create_namespaces_raises(tmp_path, monkeypatch):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match="No permissions to create new namespace") as info:
        Sandbox().run("print(1)")
    assert INSTALL_HINT in str(info.value)


@pytest.mark.integration
def test_program_runs_unprivileged_in_its_own_pid_namespace(clean):
    result = Sandbox(Limits(timeout=10)).run(
        "import os\n"
        "status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n"
        "print(os.getuid(), os.getgid(), os.getgroups(), status['CapEff'].strip(),\n"
        "      status['NoNewPrivs'].strip(), sorted(os.listdir('/')), os.getcwd())\n"
        "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
        f"print(os.path.exists({__file__!r}),"
        f" os.path.exists({os.getcwd()!r} + '/pyproject.toml'))\n"
    )
    assert result.returncode == 0 and not result.timed_out, result
    first, pids, host_files = result.stdout.splitlines()
    uid, gid, groups, cap_eff, no_new_privs, *rest = first.split(" ", 5)
    assert int(uid) != 0 and int(gid) != 0 and groups == "[]"
    assert cap_eff == "0000000000000000" and no_new_privs == "1"
    # Only the interpreter's own directories are bound: not home, not this repository.
    assert "'home'" not in rest[0] and host_files == "False False"
    assert pids == "[1, 2]"  # bwrap's init and the program: no host process is visible


@pytest.mark.integration
def test_no_network(clean):
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]
    result = Sandbox(Limits(timeout=10)).run(
        "import socket\n"
        f"for address in [('127.0.0.1', {port}), ('1.1.1.1', 53), ('pypi.org', 443)]:\n"
        "    try:\n"
        "        socket.create_connection(address, timeout=2)\n"
        "        print('connected', address)\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__)\n"
        "print(sorted(name for _, name in socket.if_nameindex()))\n"
    )
    assert result.stdout.splitlines() == [
        "ConnectionRefusedError",
        "OSError",  # network is unreachable
        "gaierror",  # no DNS
        "['lo']",
    ]
    with pytest.raises(BlockingIOError):
        server.accept()
    server.close()


@pytest.mark.integration
def test_file_system_is_read_only_but_scratch(clean, tmp_path):
    token = uuid.uuid4().hex
    targets = [
        f"/tmp/hh-{token}",
        f"{tmp_path}/hh-{token}",
        f"{Path.home()}/hh-{token}",
        f"{Path.cwd()}/hh-{token}",
        f"/usr/hh-{token}",
        f"/etc/hh-{token}",
        f"/hh-{token}",
    ]
    result = Sandbox(Limits(timeout=10)).run(
        "import errno, os\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "        open(path, 'w').write('pwned')\n"
        "        print('wrote')\n"
        "    except OSError as e:\n"
        "        print(errno.errorcode[e.errno])\n"
    )
    # A checkout under /tmp (e.g. a fresh clone there) is shadowed by the scratch tmpfs too.
    cwd = "wrote" if Path.cwd().is_relative_to("/tmp") else "EACCES"
    assert result.stdout.split() == [
        "wrote",  # /tmp is the scratch tmpfs
        "wrote",  # and so is the pytest directory under it
        "EACCES",  # $HOME is not there
        cwd,  # nor the working directory (unless it lies under /tmp: then in the scratch)
        *["EROFS", "EROFS"],  # the system is read-only
        "EACCES",  # and the root is not writable
    ]
    assert not [t for t in targets if os.path.exists(t)]  # nothing reached the host


@pytest.mark.integration
def test_process_limit_holds_for_root(clean):
    result = Sandbox(Limits(timeout=10, processes=5)).run(
        "import os, time\n"
        "children = 0\n"
        "while children < 50:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    children += 1\n"
        "print(children)\n"
    )
    assert result.returncode == 0, result
    assert int(result.stdout) == (4 if os.geteuid() == 0 else 3)  # 5 with the program itself


@pytest.mark.integration
def test_memory_file_size_and_scratch_limits(clean):
    result = Sandbox(Limits(timeout=10, memory_mb=128, output_bytes=1 << 20, scratch_mb=2)).run(
        "import errno, os\n"
        "small = bytearray(32 << 20)\n"
        "try:\n"
        "    big = bytearray(256 << 20)\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n"
        "try:\n"
        "    with open('/tmp/big', 'wb') as f:\n"
        "        f.write(bytes((1 << 20) + 1))\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
        "os.remove('/tmp/big')\n"
        "try:\n"
        "    for i in range(3):\n"
        "        with open(f'/tmp/part{i}', 'wb') as f:\n"
        "            f.write(bytes(900_000))\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno], i)\n"
    )
    assert result.stdout.splitlines() == ["MemoryError", "EFBIG", "ENOSPC 2"], result


@pytest.mark.integration
def test_cpu_limit_kills_a_busy_loop(clean):
    result = Sandbox(Limits(timeout=30, cpu_seconds=1)).run("while True:\n    pass\n")
    assert not result.timed_out and result.returncode == 128 + 9, result
    assert result.seconds < 25


@pytest.mark.integration
def test_timeout_kills_the_whole_tree(clean):
    result = Sandbox(Limits(timeout=1.5)).run(
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv('/bin/sleep', ['sleep', '1000'])\n"
        "    os._exit(0)\n"
        "print('started', flush=True)\n"
        "time.sleep(1000)\n"
    )
    assert result.timed_out and result.stdout == "started\n"
    assert 1.5 <= result.seconds < 5


@pytest.mark.integration
def test_output_is_bounded(clean):
    result = Sandbox(Limits(timeout=10, output_bytes=1000)).run("print('x' * 10**7)\n")
    assert result.output_exceeded and result.stdout == "x" * 1000


@pytest.mark.integration
def test_check_gives_the_fraction_of_assertions_passed(clean):
    test = (
        "def check(candidate):\n"
        "    import random\n"
        "    assert candidate(1, 2) == 3\n"
        "    assert True\n"
        "    assert candidate(5, 1) == 6\n"
        "    for _ in range(20):\n"
        "        a, b = random.randint(0, 9), random.randint(0, 9)\n"
        "        assert candidate(a, b) == a + b\n"
        "    assert candidate(2, (2,)) == (2, 2)\n"
    )
    prompt = "def add(a, b):\n    '''a + b'''\n"
    sandbox = Sandbox(Limits(timeout=10))
    cases = {
        "    return a + b if isinstance(b, int) else (a, *b)\n": (True, True, True, True),
        "    return a + b\n": (True, True, True, False),
        "    return 3\n": (True, False, False, False),
        "    return a + b if a < 5 else 0\n": (True, False, False, False),
        "": (False, False, False, False),
    }
    for completion, passed in cases.items():
        result = sandbox.check(prompt + completion, "add", test, prelude=prompt)
        assert result.passed == passed, (completion, result)
        assert result.fraction == sum(passed) / 4 and result.ok == all(passed)
    broken = sandbox.check(prompt + "    return (\n", "add", test, prelude=prompt)
    assert broken.passed == (False,) * 4 and broken.status == "load_error"
    assert "SyntaxError" in broken.detail


@pytest.mark.integration
def test_the_test_never_enters_the_sandbox(clean):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    test = (
        "def check(candidate):\n"
        "    assert candidate(1) == 2\n"
        f"    assert candidate(0) == {secret!r}\n"
    )
    completion = (
        "    if x == 1:\n"
        "        return 2\n"
        "    import gc, os, sys\n"
        "    for o in gc.get_objects():\n"
        "        if isinstance(o, str) and 's3cr3t-' in o:\n"
        "            return o[o.index('s3cr3t-'):][:39]\n"
        "    for frame in sys._current_frames().values():\n"
        "        while frame:\n"
        "            for v in list(frame.f_locals.values()) + list(frame.f_globals.values()):\n"
        "                if 's3cr3t-' in repr(v):\n"
        "                    r = repr(v)\n"
        "                    return r[r.index('s3cr3t-'):][:39]\n"
        "            frame = frame.f_back\n"
        "    for pid in os.listdir('/proc'):\n"
        "        for name in ('cmdline', 'environ'):\n"
        "            try:\n"
        "                data = open(f'/proc/{pid}/{name}', 'rb').read().decode()\n"
        "            except OSError:\n"
        "                continue\n"
        "            if 's3cr3t-' in data:\n"
        "                return data[data.index('s3cr3t-'):][:39]\n"
        "    return 'not found'\n"
    )
    prompt = "def f(x):\n"
    result = Sandbox(Limits(timeout=10)).check(prompt + completion, "f", test)
    assert result.passed == (True, False) and result.status == "ok"


@pytest.mark.integration
def test_a_test_that_does_not_run_is_a_config_error():
    with pytest.raises(ConfigError, match="NameError"):
        Sandbox().check(
            "def f():\n    return 1\n", "f", "undefined_name\ndef check(c):\n    assert c()\n"
        )
