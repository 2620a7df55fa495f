"""What a client may send, checked before anything goes upstream, and OpenAI-style errors.

Requests are strict: an unknown field, a wrong type, a list of prompts, ``n`` other than 1 or a
``max_tokens`` above the server's cap is an `ApiError` (HTTP 4xx, OpenAI's error body), never a
silent default. ``howhard`` is this server's own extension field (the openai client sends it with
``extra_body={"howhard": {...}}``): a per-request reranker, e.g. a verifier with its reference.

Before that, `decode_body` refuses bodies no request needs and that would break what reads them:
nesting deeper than a limit (checked before parsing: Python's parser recurses), numbers of more
than 100 digits or out of a double's range, ``NaN``/``Infinity``, and lone surrogates
(``"\\ud800"``: valid JSON, not valid Unicode).
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from howhard.serve.config import ServeConfig


class ApiError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with HTTP ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


MAX_DIGITS = 100  # in a JSON number: far above any a request needs, far below int()'s limit


def check_content_type(value: str | None) -> None:
    """Refuse (415) a body not declared as JSON: ``Content-Type: application/json``, optionally
    with ``charset=utf-8``."""
    media, _, rest = (value or "").partition(";")
    params = dict(p.strip().lower().partition("=")[::2] for p in rest.split(";") if p.strip())
    charset = params.get("charset", "utf-8").strip('"')
    if media.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        raise ApiError(
            415,
            f"the body must be JSON sent with the header Content-Type: application/json "
            f"(got {value!r})",
            param="content-type",
        )


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in the JSON text ``body``: the maximum over positions of
    (``[`` and ``{`` before it) - (``]`` and ``}`` before it), brackets inside strings ignored.

    A quote opens or closes a string unless an odd number of backslashes precede it; a position
    is inside a string when an odd number of such quotes precede it. Vectorised (13 to 50 ms of
    CPU for a 1 MB body, the most with many backslashes), no recursion; exact for valid JSON (for
    invalid JSON, e.g. an unterminated string, it may count brackets that a parser would not)."""
    text = np.frombuffer(body, dtype=np.uint8)
    if text.size == 0:
        return 0
    quote = text == ord('"')
    backslash = text == ord("\\")
    if backslash.any():
        seen = np.cumsum(backslash, dtype=np.int32)  # backslashes up to each position
        run = seen - np.maximum.accumulate(np.where(backslash, 0, seen))  # the run ending there
        quote[1:] &= run[:-1] % 2 == 0
    inside = np.logical_xor.accumulate(quote)
    steps = (text == ord("[")).view(np.int8) + (text == ord("{")).view(np.int8)
    steps -= (text == ord("]")).view(np.int8) + (text == ord("}")).view(np.int8)
    steps[inside] = 0
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ApiError(400, f"a number in the body has more than {MAX_DIGITS} digits")
    return int(text)


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ApiError(400, f"the number {text[:40]} in the body is out of range")
    return value


def _constant(name: str) -> Any:
    raise ApiError(400, f"{name} is not a JSON value; send a finite number")


def _lone_surrogate(value: Any, path: str = "") -> str | None:
    """The path (``messages.0.content``) of the first string or key holding a lone surrogate,
    or None. Recursion is bounded: callers check the depth first."""

    def bad(text: str) -> bool:
        if text.isascii():
            return False
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    def at(key: object) -> str:
        return f"{path}.{key}" if path else str(key)

    if isinstance(value, str):
        return (path or "body") if bad(value) else None
    if not isinstance(value, dict | list):
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(key, str) and bad(key):
            return at(key.encode("utf-8", "backslashreplace").decode())
        found = _lone_surrogate(item, at(key))
        if found:
            return found
    return None


def decode_body(body: bytes, max_depth: int) -> Any:
    """The JSON value of a request body, or a 400 `ApiError` saying what is wrong with it."""
    depth = json_depth(body)
    if depth > max_depth:
        raise ApiError(
            400, f"the body nests arrays or objects {depth} deep; this server allows {max_depth}"
        )
    try:
        value = json.loads(body, parse_int=_integer, parse_float=_number, parse_constant=_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    where = _lone_surrogate(value)
    if where is not None:
        raise ApiError(
            400,
            f"invalid Unicode (a lone surrogate, e.g. \\ud800) in '{where}'; send UTF-8 text",
            param=where,
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, max_length=64)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class Verifier(_Strict):
    task: str = Field(max_length=64)  # a registered task: its reward is the score
    meta: dict[str, Any] = {}  # what the task's reward needs, e.g. {"answer": "42"}


class HowhardOptions(_Strict):
    reranker: Literal["majority", "reward-model", "verifier"] | None = None
    verifier: Verifier | None = None


class _Request(_Strict):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: Literal[1] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**31)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[Literal["include_usage"], bool] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: str | None = Field(default=None, max_length=256)
    howhard: HowhardOptions | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def wants_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk (``stream_options``)."""
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def query(self) -> str:
        raise NotImplementedError

    def chars(self) -> int:
        raise NotImplementedError


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1, max_length=512)

    def query(self) -> str:
        """The text the predictor reads: the last user message (the question being asked)."""
        users = [m for m in self.messages if m.role == "user"]
        return (users[-1] if users else self.messages[-1]).text()

    def chars(self) -> int:
        return sum(len(m.text()) for m in self.messages)


class CompletionRequest(_Request):
    prompt: str = Field(min_length=1)  # empty: no question (llama-cpp-python answers 500)

    def query(self) -> str:
        return self.prompt

    def chars(self) -> int:
        return len(self.prompt)


Request = _Request

FORWARDED = (
    "max_tokens",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "user",
)


def _branch(part: Any) -> bool:
    """Whether ``part`` of a validation error's location names a branch of a union (``str``,
    ``list[TextPart]``), not a field."""
    return isinstance(part, str) and (part in ("str", "int", "float") or "[" in part)


def parse_request(raw: Any, chat: bool, config: ServeConfig, models: tuple[str, ...]) -> Request:
    """The validated request, or an `ApiError` (400 naming the field, 404 for an unknown model)."""
    if not isinstance(raw, dict):
        raise ApiError(400, "the request body must be a JSON object")
    kind = ChatRequest if chat else CompletionRequest
    try:
        request = kind.model_validate(raw)
    except pydantic.ValidationError as e:
        first = max(e.errors(), key=lambda x: len(x["loc"]))  # in a union: the input's branch
        param = ".".join(str(p) for p in first["loc"] if not _branch(p)) or None
        hint = ""
        if first["type"] == "extra_forbidden":
            hint = " (this server accepts only the fields it can honour)"
        elif param == "n":
            hint = " (howhard returns one choice: the best of the samples it decides to draw)"
        elif param == "prompt" and first["type"] != "string_too_short":
            hint = " (one prompt per request: a string)"
        elif param is not None and ".content" in param:
            hint = " (content is a string or a list of text parts)"
        raise ApiError(400, f"invalid '{param}': {first['msg']}{hint}", param=param) from None
    if request.model not in models:
        raise ApiError(
            404,
            f"the model {request.model!r} does not exist here; use one of {', '.join(models)}",
            param="model",
            code="model_not_found",
        )
    if request.max_tokens is not None and request.max_completion_tokens is not None:
        raise ApiError(
            400, "give max_tokens or max_completion_tokens, not both", param="max_tokens"
        )
    asked = request.max_tokens or request.max_completion_tokens
    if asked is not None and asked > config.max_tokens:
        field = "max_tokens" if request.max_tokens is not None else "max_completion_tokens"
        raise ApiError(
            400, f"{field} is {asked}, above this server's cap {config.max_tokens}", param=field
        )
    request.max_tokens = asked or config.default_max_tokens
    stops = request.stops()
    if len(stops) > 4 or any(len(s) > 256 or not s for s in stops):
        raise ApiError(
            400, "stop must be at most 4 non-empty strings of <= 256 characters", param="stop"
        )
    if request.chars() > config.max_prompt_chars:
        raise ApiError(
            400,
            f"the prompt has {request.chars()} characters, above this server's cap "
            f"{config.max_prompt_chars}",
            param="messages" if chat else "prompt",
        )
    if request.stream_options is not None and not request.stream:
        raise ApiError(
            400, "stream_options is only allowed with stream: true", param="stream_options"
        )
    options = request.howhard
    if options is not None and (options.reranker == "verifier") != (options.verifier is not None):
        raise ApiError(
            400,
            'a verifier needs both "reranker": "verifier" and "verifier": {"task": ...}',
            param="howhard",
        )
    return request


def upstream_payload(request: Request, model: str) -> dict[str, Any]:
    """The body sent upstream (without ``n``/``seed``/``stream``): the request's own fields, the
    upstream's model name, the capped ``max_tokens``."""
    payload: dict[str, Any] = {"model": model}
    if isinstance(request, ChatRequest):
        payload["messages"] = [m.model_dump(exclude_none=True) for m in request.messages]
    else:
        assert isinstance(request, CompletionRequest)
        payload["prompt"] = request.prompt
    for name in FORWARDED:
        value = getattr(request, name)
        if value is not None:
            payload[name] = value
    if request.stop is not None:
        payload["stop"] = request.stops()
    return payload
