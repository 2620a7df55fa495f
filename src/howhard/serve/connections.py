"""Slow clients are cut off: a deadline on each request's head, which uvicorn lacks.

uvicorn closes a keep-alive connection that stays idle after a response (``timeout_keep_alive``),
but a connection that never sends a request, or sends its head one byte at a time, stays open for
ever. `guarded_protocol` wraps uvicorn's HTTP protocol class (httptools' or h11's, whichever
uvicorn would pick) so that each request's head (request line and headers) must arrive within
``header_timeout`` seconds of the connection opening (the first request) or of its own first byte
(the next ones: the idle time between is the keep-alive timeout's), and be at most
``max_header_bytes`` long; otherwise the connection is closed (with a 408 or a 431 when part of a
head came). The body's deadline is the app's (`howhard.serve.app.Proxy.read_json`); the cap on
connections is uvicorn's ``limit_concurrency`` (503 beyond it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

_CLOSE = b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
TIMEOUT = b"HTTP/1.1 408 Request Timeout" + _CLOSE
TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large" + _CLOSE


def uvicorn_protocol() -> type[asyncio.Protocol]:
    """The HTTP protocol class uvicorn's ``http="auto"`` picks (httptools' if installed, else
    h11's)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol


def guarded_protocol(
    base: type[Any],
    header_timeout: float,
    max_header_bytes: int,
    closed: Callable[[str], None] = lambda reason: None,
) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol class) with a deadline and a size cap on request heads;
    ``closed(reason)`` is called for each connection it closes ("header_timeout" or
    "header_too_large"). A connection is "waiting for a head" from its start, or from the end of
    the previous response, until uvicorn starts its next request cycle (which it does once the
    head is parsed); the deadline runs from the start, or from the first byte after a response."""

    class Guarded(base):
        _head_timer: asyncio.TimerHandle | None = None
        _waiting_since: Any = None  # the cycle current when the wait began (None: no request yet)
        _head_bytes = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_head()
            self._start_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._await_head()  # the deadline starts with the next head's first byte

        def data_received(self, data: bytes) -> None:
            waiting = self._waiting()
            if waiting and self._head_timer is None:
                self._start_deadline()
            super().data_received(data)
            if waiting and self._waiting():  # the head is still incomplete
                self._head_bytes += len(data)
                if self._head_bytes > max_header_bytes:
                    self._close(TOO_LARGE, "header_too_large")

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            self._waiting_since, self._head_bytes = self.cycle, 0

        def _start_deadline(self) -> None:
            self._head_timer = asyncio.get_running_loop().call_later(
                header_timeout, self._head_overdue
            )

        def _waiting(self) -> bool:
            """No request cycle began since the wait began, and none is running."""
            cycle = self.cycle
            return cycle is self._waiting_since and (cycle is None or cycle.response_complete)

        def _head_overdue(self) -> None:
            self._head_timer = None
            if self._waiting():
                self._close(TIMEOUT if self._head_bytes else b"", "header_timeout")

        def _close(self, answer: bytes, reason: str) -> None:
            if self.transport.is_closing():
                return
            if answer:
                self.transport.write(answer)
            self.transport.close()
            closed(reason)

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded
