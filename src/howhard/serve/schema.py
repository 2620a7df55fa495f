"""What a client may send, checked before anything goes upstream, and OpenAI-style errors.

Requests are strict: an unknown field, a wrong type, a list of prompts, ``n`` other than 1 or a
``max_tokens`` above the server's cap is an `ApiError` (HTTP 4xx, OpenAI's error body), never a
silent default. ``howhard`` is this server's own extension field (the openai client sends it with
``extra_body={"howhard": {...}}``): a per-request reranker, e.g. a verifier with its reference.
"""

from __future__ import annotations

from typing import Any, Literal

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
    prompt: str

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


def parse_request(raw: Any, chat: bool, config: ServeConfig, models: tuple[str, ...]) -> Request:
    """The validated request, or an `ApiError` (400 naming the field, 404 for an unknown model)."""
    if not isinstance(raw, dict):
        raise ApiError(400, "the request body must be a JSON object")
    kind = ChatRequest if chat else CompletionRequest
    try:
        request = kind.model_validate(raw)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        hint = ""
        if first["type"] == "extra_forbidden":
            hint = " (this server accepts only the fields it can honour)"
        elif param == "n":
            hint = " (howhard returns one choice: the best of the samples it decides to draw)"
        elif param == "prompt":
            hint = " (one prompt per request: a string)"
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
        raise ApiError(
            400,
            f"max_tokens is {asked}, above this server's cap {config.max_tokens}",
            param="max_tokens",
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
