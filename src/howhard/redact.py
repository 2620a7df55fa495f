"""Secrets out of every message that leaves the process: `Redactor` replaces each configured
secret (API keys, the password in a URL's userinfo) with ``***``, and strips the userinfo of any
URL it sees; `redact_logs` applies it to every log record of howhard, uvicorn and their HTTP
libraries."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

MASK = "***"
# scheme://userinfo@ : the userinfo (user, or user:password) is everything up to the "@" that
# comes before any "/", "?", "#" or whitespace.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#@]+@")


def display_url(url: str) -> str:
    """``url`` fit to print: its userinfo replaced by ``***`` (``http://***@host:8080/v1``)."""
    return _USERINFO.sub(rf"\1{MASK}@", url)


def url_secrets(url: str) -> list[str]:
    """The secret of a URL's userinfo: its password, or its user name when there is no password
    (``https://TOKEN@host``), percent-encoded and decoded; and the ``user:password`` pair as
    HTTP basic authentication sends it (base64)."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return []
    secret = parts.password if parts.password else parts.username
    if not secret:
        return []
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return [secret, unquote(secret), base64.b64encode(pair.encode()).decode()]


class Redactor:
    """``redactor(text)``: ``text`` with every secret replaced by ``***`` (also as it appears
    percent-encoded, JSON-escaped or repr'd), and the userinfo of every URL stripped. Made once at
    start-up from the configured secrets and URLs."""

    def __init__(self, secrets: Iterable[str | None] = (), urls: Iterable[str] = ()) -> None:
        found: set[str] = set()
        for secret in [*secrets, *(s for url in urls for s in url_secrets(url))]:
            if secret:
                found.update((secret, quote(secret, safe=""), json.dumps(secret)[1:-1]))
                found.add(repr(secret)[1:-1])
        found.discard("")
        self.secrets = tuple(sorted(found, key=len, reverse=True))  # longest first

    def __call__(self, text: str) -> str:
        return display_url(self.mask(text))

    def mask(self, text: str) -> str:
        """``text`` with the secrets replaced, URLs otherwise left as they are (for content that
        is not a message of ours, e.g. a model's output)."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def value(self, value: Any) -> Any:
        """A log argument: redacted as text if its text holds a secret, else as it was (so
        ``%d`` and ``%r`` format it as before)."""
        if value is None or isinstance(value, bool | int | float):
            return value
        text = value if isinstance(value, str) else str(value)
        clean = self(text)
        return value if clean == text else clean


class RedactingFilter(logging.Filter):
    """A logging filter that redacts a record's message, arguments, traceback and stack."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self.redactor
        record.msg = redact.value(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {k: redact.value(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(redact.value(a) for a in record.args)
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


LOGGERS = (
    *("", "howhard", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"),
    *("asyncio", "httpx", "httpcore", "starlette"),
)


def redact_logs(redactor: Redactor) -> Callable[[], None]:
    """Redact every record logged through howhard's and uvicorn's loggers (and asyncio's, httpx's,
    the root's), and every record their handlers emit; returns the function that undoes it.

    A logger's filter sees only records logged on that very logger, so the filter goes on each
    existing logger under those names, and on their handlers (for records propagated from
    loggers made later)."""
    where = logging.Logger.manager.loggerDict
    names = set(LOGGERS) | {
        n for n in where if n.split(".")[0] in {x.split(".")[0] for x in LOGGERS if x}
    }
    loggers = [logging.getLogger(n) if n else logging.getLogger() for n in sorted(names)]
    targets: list[logging.Filterer] = [*loggers, *(h for lg in loggers for h in lg.handlers)]
    targets = list({id(t): t for t in targets}.values())
    guard = RedactingFilter(redactor)
    for target in targets:
        target.addFilter(guard)

    def undo() -> None:
        for target in targets:
            target.removeFilter(guard)

    return undo
