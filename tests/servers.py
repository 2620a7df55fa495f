"""Real OpenAI-compatible servers for integration tests and benchmarks (plain helpers, no fixtures).

``with llama_server() as server: ... server.url ...`` runs llama_cpp.server
(`llama_server_command`) with the embedded SmolLM2 on a free loopback port, in its own session
(process group), until the block ends; ``server.kill()`` kills it like a crash (SIGKILL) and
``server.restart()`` starts it again on the same port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server subprocess: ``command`` must make it listen on 127.0.0.1:``port`` and answer
    ``GET ready_path`` once it is ready. Its stdout and stderr go to ``log``; ``env`` is its
    environment (default: this process's)."""

    def __init__(
        self,
        command: Sequence[str],
        port: int,
        ready_path: str = "/v1/models",
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.env = env
        self.port = port
        self.ready_path = ready_path
        self.timeout = timeout
        self.url = f"http://127.0.0.1:{port}"
        self.log = Path(tempfile.mkstemp(prefix=f"server-{port}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        """Start the process and wait until it answers; raises RuntimeError with its log if it
        exits or does not answer within ``timeout`` seconds."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends all it started
                env=self.env,
            )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail(f"exited with code {self.proc.returncode}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        self._fail(f"did not answer GET {self.ready_path} within {self.timeout}s")
        raise AssertionError("unreachable")

    def _fail(self, what: str) -> None:
        tail = self.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"server {' '.join(self.command)} {what}; its output:\n{tail}")

    def stop(self) -> None:
        """SIGTERM, then after 5 s SIGKILL, to the whole process group (idempotent)."""
        self._signal(signal.SIGTERM)
        if self.proc is not None:
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the process group, as a crash would, and reap the process."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # the group id is the pid: start_new_session

    def restart(self) -> Server:
        """Stop the server if it runs, then start it again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log.unlink(missing_ok=True)


def llama_server_command(
    port: int, model: str | os.PathLike[str] | None = None, extra_args: Sequence[str] = ()
) -> list[str]:
    """``python -m howhard.backends.llamacpp_server`` (llama_cpp.server with howhard's llama.cpp
    settings) on 127.0.0.1:``port`` with one thread, a 2048-token context, quiet, serving
    ``model`` (default: the embedded SmolLM2); ``extra_args`` are appended (a later flag
    overrides an earlier one)."""
    if model is None:
        from howhard.backends.llamacpp import default_model_path

        model = default_model_path()
    return [
        sys.executable,
        "-m",
        "howhard.backends.llamacpp_server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        "1",
        "--n_threads_batch",
        "1",
        "--verbose",
        "false",
        *extra_args,
    ]


@contextmanager
def llama_server(
    model: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    port: int | None = None,
    timeout: float = 60,
) -> Iterator[Server]:
    """A running llama-cpp-python server, stopped when the block ends."""
    port = port or free_port()
    with Server(llama_server_command(port, model, extra_args), port, timeout=timeout) as server:
        yield server.start()
