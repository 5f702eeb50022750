"""A scripted Anthropic Messages API server, for Claude Code and other clients.

It speaks the wire protocol of ``POST /v1/messages`` (also ``?beta=true``):
with ``"stream": true`` the answer is server-sent events (``message_start``,
``ping``, ``content_block_start``/``content_block_delta``/``content_block_stop``
with ``text_delta`` or ``input_json_delta``, ``message_delta`` with the
``stop_reason`` and usage, ``message_stop``), otherwise one message JSON. A
text turn becomes a ``text`` block (``stop_reason`` ``end_turn``); a tool
turn becomes a ``tool_use`` block with a ``toolu_`` id, using the tool name
the client offered (``stop_reason`` ``tool_use``), after a ``text`` block
when the turn has text too. Each turn's tokens are reported as
``input_tokens``, ``output_tokens``, ``cache_read_input_tokens`` and
``cache_creation_input_tokens``.

Main requests versus side requests: Claude Code's agent loop (and a
subagent's) always offers its tools (``tools`` is a non-empty list); its
side calls (session titles, quota checks, summaries, the small fast
model's jobs) offer none. So a ``/v1/messages`` request with tools takes
the script's next turn and is recorded in ``requests``; one without tools
is answered with ``side_text`` (or a minimal instance of the JSON schema it
asks for) and kept in ``side_requests``, never consuming a turn. (Claude
Code 2.1.332 in print mode, with nonessential traffic off, sends none.)
``/v1/messages/count_tokens`` answers an estimate, ``/v1/models`` a model
list, ``/api/hello`` (Claude Code's reachability probe) 200: all kept in
``side_requests``, none takes a turn. Any other path is a 404
``not_found_error``.

Malformed requests get the API's own error shape
(``{"type": "error", "error": {"type": ..., "message": ...}}`` with a
``request-id`` header): 401 ``authentication_error`` without an API key
(``x-api-key`` or a bearer token), 400 ``invalid_request_error`` without an
``anthropic-version`` header, for a body that is not a JSON object, or one
that lacks ``model``, ``max_tokens`` or ``messages``. A responder that
raises ``ApiError`` makes the server answer that error instead of a turn.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from orchestrator.embedded.models.base import ScriptedModelServer, Turn, json_body

CHUNK = 24  # characters per streamed delta: clients must join several
MODELS = ("claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-4-5")  # for GET /v1/models


class ApiError(Exception):
    """An Anthropic API error the server answers with (raise it from a responder)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def error_response(status: int, kind: str, message: str) -> web.Response:
    """The API's error body and its ``request-id`` header."""
    request_id = f"req_{uuid.uuid4().hex[:24]}"
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    return web.json_response(body, status=status, headers={"request-id": request_id})


def _usage(turn: Turn, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": turn.input_tokens,
        "cache_creation_input_tokens": turn.cache_write_tokens,
        "cache_read_input_tokens": turn.cache_read_tokens,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _offered_name(wanted: str, tools: list[dict[str, Any]]) -> str:
    """The tool's name as the client spelled it in ``tools`` (else as scripted)."""
    names = [t.get("name", "") for t in tools if isinstance(t, dict)]
    if wanted in names:
        return wanted
    folded = {n.lower(): n for n in names}
    return folded.get(wanted.lower(), wanted)


def content_blocks(turn: Turn, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The turn's content: its text (if any), then its ``tool_use`` (if any),
    as a model that says what it is about to do and then calls the tool."""
    blocks: list[dict[str, Any]] = []
    if turn.text or turn.tool is None:
        blocks.append({"type": "text", "text": turn.text})
    if turn.tool is not None:
        blocks.append(
            {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:24]}",
                "name": _offered_name(turn.tool, tools),
                "input": turn.arguments,
            }
        )
    return blocks


def message(turn: Turn, body: dict[str, Any]) -> dict[str, Any]:
    """The full (non-streaming) message for a turn."""
    blocks = content_blocks(turn, body.get("tools") or [])
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": blocks,
        "stop_reason": "tool_use" if turn.tool is not None else "end_turn",
        "stop_sequence": None,
        "usage": _usage(turn, turn.output_tokens),
    }


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _pieces(text: str) -> list[str]:
    return [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)]


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    """One content block: its empty start, its deltas, its stop."""
    if block["type"] == "text":
        empty: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"])]
    else:
        empty = {**block, "input": {}}
        pieces = _pieces(json.dumps(block["input"]))
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
    start = {"type": "content_block_start", "index": index, "content_block": empty}
    events = [_sse("content_block_start", start)]
    events += [
        _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
        for d in deltas
    ]
    return [*events, _sse("content_block_stop", {"type": "content_block_stop", "index": index})]


def stream_events(msg: dict[str, Any], turn: Turn) -> list[bytes]:
    """The server-sent events of ``msg``, in the API's order."""
    start = {**msg, "content": [], "stop_reason": None, "usage": _usage(turn, 1)}
    events = [
        _sse("message_start", {"type": "message_start", "message": start}),
        _sse("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(msg["content"]):
        events += _block_events(index, block)
    end = {"stop_reason": msg["stop_reason"], "stop_sequence": None}
    delta = {"type": "message_delta", "delta": end, "usage": {"output_tokens": turn.output_tokens}}
    return [*events, _sse("message_delta", delta), _sse("message_stop", {"type": "message_stop"})]


def schema_instance(schema: dict[str, Any]) -> Any:
    """A minimal value of a JSON schema (for side requests that ask for JSON)."""
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: schema_instance(v) for k, v in props.items() if isinstance(v, dict)}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    return "scripted"


def _asked_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request asks its answer to follow, if any."""
    for holder in (body.get("output_config"), body):
        fmt = (
            holder.get("format") or holder.get("output_format")
            if isinstance(holder, dict)
            else None
        )
        if isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):
            return fmt["schema"]
    return None


def _check(request: web.Request, body: Any) -> web.Response | None:
    """The API's error for a malformed request, or None."""
    if not (request.headers.get("x-api-key") or request.headers.get("authorization")):
        return error_response(401, "authentication_error", "x-api-key header is required")
    if not request.headers.get("anthropic-version"):
        return error_response(400, "invalid_request_error", "anthropic-version: header is required")
    if not isinstance(body, dict):
        return error_response(400, "invalid_request_error", "request body must be a JSON object")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return error_response(400, "invalid_request_error", f"{name}: Field required")
    if not isinstance(body["messages"], list) or not body["messages"]:
        return error_response(
            400, "invalid_request_error", "messages: at least one message is required"
        )
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        return error_response(
            400, "invalid_request_error", "max_tokens: must be a positive integer"
        )
    return None


class AnthropicServer(ScriptedModelServer):
    """The Anthropic Messages API, answered from the script (see the module doc).

    ``requests`` holds the main requests (each took a turn); ``side_requests``
    everything else the client sent (side messages, token counts, model
    lists, probes), in order, with ``method`` and ``path``.
    """

    side_text = "Scripted session"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.side_requests: list[dict[str, Any]] = []

    def cli_env(self, home: Path, api_key: str = "test-key") -> dict[str, str]:
        """What points the real Claude Code CLI at this server, hermetically: a
        private HOME, this URL, a dummy key, no telemetry or error reports."""
        return {
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": api_key,
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
        }

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_route("*", "/api/hello", self._hello)
        app.router.add_route("*", "/{tail:.*}", self._not_found)

    def _note(self, request: web.Request, body: Any) -> None:
        """Keep a request that takes no turn."""
        fields = body if isinstance(body, dict) else {}
        entry = {"method": request.method, "path": request.path_qs, **fields}
        self.side_requests.append({**entry, "headers": dict(request.headers)})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        problem = _check(request, body)
        if problem is not None:
            self._note(request, body)
            return problem
        if not body.get("tools"):
            return await self._side(request, body)
        async with self._lock:  # turns go out in the order requests came in
            self.record(request, body)
            try:
                turn = self.script.next(body)
            except ApiError as exc:
                return error_response(exc.status, exc.kind, exc.message)
        return await self._answer(request, body, turn)

    async def _side(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """A side call (no tools offered): answered, recorded apart, no turn used."""
        self._note(request, body)
        schema = _asked_schema(body)
        text = json.dumps(schema_instance(schema)) if schema else self.side_text
        return await self._answer(request, body, Turn(text=text, input_tokens=1, output_tokens=1))

    async def _answer(
        self, request: web.Request, body: dict[str, Any], turn: Turn
    ) -> web.StreamResponse:
        msg = message(turn, body)
        if not body.get("stream"):
            return web.json_response(msg, headers={"request-id": f"req_{uuid.uuid4().hex[:24]}"})
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for event in stream_events(msg, turn):
            await response.write(event)
        await response.write_eof()
        return response

    async def _count_tokens(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        self._note(request, body)
        if not isinstance(body, dict) or "messages" not in body or "model" not in body:
            return error_response(400, "invalid_request_error", "model and messages are required")
        return web.json_response({"input_tokens": max(1, len(json.dumps(body)) // 4)})

    async def _models(self, request: web.Request) -> web.Response:
        self._note(request, None)
        data = [_model_info(name) for name in MODELS]
        return web.json_response(
            {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        )

    async def _model(self, request: web.Request) -> web.Response:
        self._note(request, None)
        return web.json_response(_model_info(request.match_info["model"]))

    async def _hello(self, request: web.Request) -> web.Response:
        self._note(request, None)
        return web.Response(status=200)

    async def _not_found(self, request: web.Request) -> web.Response:
        self._note(request, None)
        return error_response(404, "not_found_error", f"Not found: {request.method} {request.path}")


def _model_info(name: str) -> dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name, "created_at": "2025-01-01T00:00:00Z"}
