"""Every exception howhard raises. Each message says what was wrong and what to do."""

from __future__ import annotations


class HowhardError(Exception):
    """Base class of all howhard errors.

    ``param`` names the parameter(s) the message is about, as the message spells them (e.g.
    ``max_per_query``); the command line rewrites those words into its flags (``--max-per-query``),
    so a library user reads the names they passed and a CLI user the flags they typed."""

    def __init__(self, *args: object, param: str | tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.params: tuple[str, ...] = (param,) if isinstance(param, str) else tuple(param)


class ConfigError(HowhardError, ValueError):
    """A flag, parameter or configuration value is out of range or inconsistent."""


class BudgetError(ConfigError):
    """A budget is impossible: negative, above the per-query cap, or above the samples pooled."""


class PoolError(HowhardError, ValueError):
    """A pool file or pool row is malformed (names the file, line and field)."""


class StoreError(HowhardError):
    """The label store refuses an operation (e.g. resuming with other sampling parameters)."""


class BackendError(HowhardError):
    """An LM backend failed to return a sample (server down, timeout, bad response). The labeler
    records it as an error, never as a reward, and draws the sample again on the next run.
    ``status``: the HTTP status the server last answered, when it answered one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpstreamTimeout(BackendError):
    """Every attempt to reach the servers timed out (the proxy answers 504, not 502)."""


class SandboxError(HowhardError):
    """The code sandbox cannot run (e.g. bubblewrap is missing); the message says how to fix it."""


class ModelNotFoundError(HowhardError, FileNotFoundError):
    """A model file or package is missing."""


class NotFittedError(HowhardError, ValueError):
    """A predictor was used before `fit` (subclasses ValueError like scikit-learn's)."""


class UnknownNameError(HowhardError, KeyError):
    """A name looked up in a registry does not exist; the message suggests close names."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


def brief(value: object, limit: int = 60) -> str:
    """repr(value) cut to ``limit`` characters, for messages about input of any size."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
