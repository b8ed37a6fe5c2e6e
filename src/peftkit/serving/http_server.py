"""The HTTP server behind `peftkit serve`: OpenAI's `/v1/completions`, `/v1/chat/completions` (both
streamed as server-sent events with `"stream": true`) and `/v1/models`, on the standard library's
`ThreadingHTTPServer`.

Each HTTP request runs in its own thread, submits its generation to the shared `BatchEngine` (which
batches it with every other running request, whatever its adapter) and turns the token ids that come back
into text: decoded incrementally, held back while a stop string or an incomplete character could still
form. Every bad request gets an OpenAI-style error body with a 4xx status; the server keeps serving.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import openai_api
from .engine import BatchEngine, GenerationRequest
from .openai_api import ApiError, ParsedRequest

MAX_BODY_BYTES = 4 << 20  # a request body larger than this is refused (413)
ENDPOINTS = {"/v1/completions": "completion", "/v1/chat/completions": "chat"}


class ServingApp:
    """What the handlers share: the engine, the tokenizer and the served model names.

    Args:
        engine: the running `BatchEngine`.
        tokenizer: the base model's tokenizer (with a chat template for chat completions).
        base_names: names the base model answers to besides `base`.
        request_timeout: seconds a request may wait for its next token before it fails.
    """

    def __init__(
        self, engine: BatchEngine, tokenizer: Any, base_names: list[str], request_timeout: float = 600
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.base_names = [n for n in base_names if n]
        self.request_timeout = request_timeout
        stops = getattr(getattr(engine.model, "generation_config", None), "eos_token_id", None)
        stops = stops if isinstance(stops, list) else [stops]
        self.stop_token_ids = frozenset(i for i in [*stops, tokenizer.eos_token_id] if i is not None)

    def model_table(self) -> dict[str, str]:
        return openai_api.model_table(self.base_names, self.engine.adapter_names())

    def encode(self, request: ParsedRequest) -> list[int]:
        if request.kind == "completion":
            return list(self.tokenizer(request.prompt_text)["input_ids"])
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiError(
                400, "The base model's tokenizer has no chat template: use /v1/completions.", "messages"
            )
        ids = self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # a BatchEncoding (transformers 5 returns one by default)
            ids = ids["input_ids"]
        return list(ids)

    def generate(self, request: ParsedRequest, usage: dict[str, int]) -> Iterator[tuple[str, str | None]]:
        """(text, None) pieces as they form, then ("", finish_reason); fills `usage` as it goes."""
        prompt_ids = self.encode(request)
        usage["prompt_tokens"], usage["completion_tokens"] = len(prompt_ids), 0
        generation = GenerationRequest(
            prompt_ids, request.adapter, request.max_tokens, request.sampling, self.stop_token_ids
        )
        try:
            handle = self.engine.submit(generation)
        except LookupError as err:
            raise ApiError(404, str(err), "model", "model_not_found") from err
        except ValueError as err:
            field = "prompt" if request.kind == "completion" else "messages"
            raise ApiError(400, str(err), field, "context_length_exceeded") from err
        hold = max((len(s) for s in request.stop), default=1) - 1
        ids: list[int] = []
        emitted = 0
        try:
            for kind, value in handle.stream(timeout=self.request_timeout):
                if kind == "error":
                    raise ApiError(500, value)
                if kind == "done":
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    yield text[emitted:], None
                    yield "", "length" if value == "length" else "stop"
                    return
                usage["completion_tokens"] += 1
                if value in self.stop_token_ids:
                    continue
                ids.append(value)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                cut = min((i for i in (text.find(s) for s in request.stop) if i >= 0), default=-1)
                if cut >= 0:  # a stop string: answer up to it, and stop generating
                    handle.cancel()
                    yield text[emitted:cut], None
                    yield "", "stop"
                    return
                ready = len(text) - hold
                if text.endswith("\ufffd"):  # a character whose bytes are still coming
                    ready = min(ready, len(text) - 1)
                if ready > emitted:
                    yield text[emitted:ready], None
                    emitted = ready
        finally:
            handle.cancel()  # a no-op when done; stops the row when the client went away


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    app: ServingApp
    quiet = True

    def log_message(self, format: str, *args: Any) -> None:
        if not self.quiet:
            super().log_message(format, *args)

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: ApiError) -> None:
        self._send_json(err.status, err.body())

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(200, openai_api.models_list(sorted(self.app.model_table())))
        elif self.path.rstrip("/") == "/health":
            self._send_json(200, {"status": "ok"})
        elif self.path in ENDPOINTS:
            self._send_error(ApiError(405, f"{self.path} takes POST requests."))
        else:
            self._send_error(
                ApiError(404, f"No route {self.path}; see /v1/models, /v1/completions, /v1/chat/completions.")
            )

    def do_POST(self) -> None:
        kind = ENDPOINTS.get(self.path.rstrip("/"))
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                raise ApiError(
                    413, f"The request body is {length} bytes, more than the {MAX_BODY_BYTES} allowed."
                )
            raw = self.rfile.read(length)
            if kind is None:
                raise ApiError(404, f"No route {self.path}; POST to /v1/completions or /v1/chat/completions.")
            request = openai_api.parse_request(kind, openai_api.parse_body(raw), self.app.model_table())
            if request.stream:
                self._stream(request)
            else:
                self._answer(request)
        except ApiError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _answer(self, request: ParsedRequest) -> None:
        usage: dict[str, int] = {}
        pieces, finish = [], "stop"
        for text, reason in self.app.generate(request, usage):
            pieces.append(text)
            finish = reason or finish
        request_id = openai_api.new_id(request.kind)
        body = openai_api.response(
            request, request_id, "".join(pieces), finish, usage["prompt_tokens"], usage["completion_tokens"]
        )
        self._send_json(200, body)

    def _stream(self, request: ParsedRequest) -> None:
        usage: dict[str, int] = {}
        pieces = self.app.generate(request, usage)
        first_piece = next(pieces)  # errors before the first token still get a plain error response
        request_id = openai_api.new_id(request.kind)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        first = True
        try:
            for text, finish in _chain(first_piece, pieces):
                if finish is None and not text:
                    continue
                piece = openai_api.chunk(request, request_id, text if finish is None else None, finish, first)
                first = False
                self._event(piece)
        except ApiError as err:
            self._event(err.body())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _event(self, body: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(body).encode() + b"\n\n")
        self.wfile.flush()


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


class _Server(ThreadingHTTPServer):
    # the listen backlog: socketserver's default of 5 makes the kernel refuse or reset connections
    # that arrive while the accepting thread waits for the GIL behind a decoding step, so that 64
    # clients connecting at once saw "connection reset by peer"
    request_queue_size = 1024


def make_server(
    app: ServingApp, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False
) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0: any free port; read it from `server.server_address`)."""
    handler = type("PeftkitHandler", (_Handler,), {"app": app, "quiet": not verbose})
    server = _Server((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Run `server.serve_forever()` in a daemon thread (tests; stop with `server.shutdown()`)."""
    thread = threading.Thread(target=server.serve_forever, name="peftkit-http", daemon=True)
    thread.start()
    return thread
