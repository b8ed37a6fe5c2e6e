"""The OpenAI completions and chat-completions wire format: reading requests, writing responses.

A request's `model` names the adapter to use, or the base model (`base`, or the base model's name).
Supported fields: `prompt` (a string, or a list of one string) / `messages`, `max_tokens` (chat also
`max_completion_tokens`), `temperature` (0 = greedy; OpenAI's default 1 samples), `top_p`, `seed`,
`stop` (a string or up to 4), `stream`, `n` (1 only), `user` (ignored). Anything else of OpenAI's
(`logprobs`, `tools`, ...) is refused with a 400 that names the field, rather than silently ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..tuners._mixed_batch import BASE_ADAPTER_NAME
from .sampling import SamplingSettings

BASE_MODEL_ALIAS = "base"
_COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "n",
    "user",
    "stream_options",
}
ALLOWED_FIELDS = {
    "completion": _COMMON | {"prompt"},
    "chat": _COMMON | {"messages", "max_completion_tokens"},
}


class ApiError(Exception):
    """An error answered as OpenAI does: an HTTP status and `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ParsedRequest:
    """A validated request: what to generate and how to answer."""

    kind: str  # "completion" or "chat"
    model: str  # as the client named it (echoed back)
    adapter: str  # the adapter name, or BASE_ADAPTER_NAME
    prompt_text: str | None
    messages: list[dict[str, str]] | None
    max_tokens: int
    sampling: SamplingSettings
    stop: list[str]
    stream: bool


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"The request body is not valid JSON ({err}); send a JSON object.") from err
    if not isinstance(body, dict):
        raise ApiError(400, f"The request body must be a JSON object, got {type(body).__name__}.")
    return body


def _number(body: dict, name: str, default: float, low: float, high: float, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise ApiError(400, f"'{name}' must be {what} from {low} to {high}, got {value!r}.", name)
    return value


def parse_request(kind: str, body: dict[str, Any], adapters: dict[str, str]) -> ParsedRequest:
    """Validate `body` for endpoint `kind`; `adapters` maps every served model id to an adapter name."""
    unknown = sorted(set(body) - ALLOWED_FIELDS[kind])
    if unknown:
        raise ApiError(
            400,
            f"Unsupported field(s) {', '.join(unknown)}: this server does not implement them.",
            unknown[0],
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required: the adapter's name, or 'base' for the base model.", "model")
    if model not in adapters:
        raise ApiError(
            404,
            f"The model '{model}' does not exist; this server has: {', '.join(sorted(adapters))}.",
            "model",
            "model_not_found",
        )
    if body.get("n") not in (None, 1):
        raise ApiError(400, f"Only 'n': 1 is supported (one answer per request), got {body['n']!r}.", "n")
    limit_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, limit_name, 16, 1, 1 << 20, integer=True)
    sampling = SamplingSettings(
        temperature=float(_number(body, "temperature", 1.0, 0.0, 2.0)),
        top_p=float(_number(body, "top_p", 1.0, 1e-9, 1.0)),
        seed=_number(body, "seed", None, -(1 << 63), (1 << 63) - 1, integer=True),
    )
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "'stop' must be a non-empty string or a list of up to 4 of them.", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", "stream")
    prompt_text, messages = None, None
    if kind == "completion":
        prompt_text = _prompt(body.get("prompt"))
    else:
        messages = _messages(body.get("messages"))
    return ParsedRequest(
        kind, model, adapters[model], prompt_text, messages, max_tokens, sampling, stop, stream
    )


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string (or a list of exactly one).", "prompt")
    return prompt


def _messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects.", "messages")
    out = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # OpenAI's content parts: text parts only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(400, f"messages[{i}]: only text content parts are supported.", "messages")
            content = "".join(p.get("text", "") for p in content)
        if role not in ("system", "user", "assistant", "developer") or not isinstance(content, str):
            raise ApiError(
                400,
                f"messages[{i}] must have a role (system, user, assistant) and a string content.",
                "messages",
            )
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


# ----- responses -----
def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response(
    request: ParsedRequest,
    request_id: str,
    text: str,
    finish: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """The whole (non-streamed) answer."""
    if request.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {
        "id": request_id,
        "object": obj,
        "created": int(time.time()),
        "model": request.model,
        "choices": [choice],
        "usage": _usage(prompt_tokens, completion_tokens),
    }


def chunk(
    request: ParsedRequest, request_id: str, text: str | None, finish: str | None, first: bool
) -> dict[str, Any]:
    """One streamed piece: new text, or (text None) the closing piece with the finish reason."""
    if request.kind == "chat":
        delta: dict[str, str] = {"role": "assistant"} if first else {}
        if text:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {
        "id": request_id,
        "object": obj,
        "created": int(time.time()),
        "model": request.model,
        "choices": [choice],
    }


def models_list(model_ids: list[str]) -> dict[str, Any]:
    created = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "peftkit"} for name in model_ids
        ],
    }


def model_table(base_names: list[str], adapter_names: list[str]) -> dict[str, str]:
    """Served model id -> adapter name: the base under each of its names, every adapter under its own."""
    table = {name: BASE_ADAPTER_NAME for name in [BASE_MODEL_ALIAS, *base_names]}
    table.update({name: name for name in adapter_names if name != BASE_ADAPTER_NAME})
    return table
