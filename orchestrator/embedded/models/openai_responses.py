"""A scripted OpenAI Responses API server, for the Codex CLI and other clients.

It speaks the wire protocol of ``POST /v1/responses`` (also ``/responses``,
for a base URL without ``/v1``). With ``"stream": true`` the answer is
server-sent events, each ``event: <type>`` with a JSON ``data`` that repeats
the ``type`` and carries a ``sequence_number``: ``response.created``,
``response.in_progress``, then per output item ``response.output_item.added``,
its deltas (``response.content_part.added``, ``response.output_text.delta``,
``response.output_text.done``, ``response.content_part.done`` for a message;
``response.function_call_arguments.delta``/``.done`` for a function call;
``response.custom_tool_call_input.delta``/``.done`` for a freeform tool),
``response.output_item.done``, and last ``response.completed`` with the whole
response and its usage. Without ``stream`` the answer is that response JSON.

A text turn becomes a ``message`` item (``output_text``). A tool turn becomes
a call of the tool the request offered under that name, in the shape its
type asks for: a ``function`` tool gets a ``function_call`` item with the
arguments as a JSON string; a ``custom`` (freeform) tool, such as Codex's
``apply_patch``, gets a ``custom_tool_call`` item whose ``input`` is the raw
text of ``arguments["input"]``. Both carry an item id (``fc_``/``ctc_``) and
a ``call_id`` (``call_``) that the client answers with its output. Tools in a
``namespace`` are looked up too. Usage follows the API: ``input_tokens``
counts every input token, cached ones included, so it is the turn's
``input_tokens + cache_read_tokens + cache_write_tokens``;
``input_tokens_details.cached_tokens`` is ``cache_read_tokens``;
``input_tokens_details.cache_write_tokens`` (a field Codex reads, which
OpenAI itself never sends) appears only when the turn has cache writes.

Main requests versus side requests: Codex tags every request it makes with
an ``x-codex-turn-metadata`` header whose ``request_kind`` is ``"turn"`` for
the agent loop, and marks its helper jobs (compaction, reviews, memory, the
approval reviewer) with an ``x-openai-subagent`` header. A request with
``x-openai-subagent``, or with a ``request_kind`` other than ``"turn"``, is a
side request: answered with ``side_text``, kept in ``side_requests``, never
consuming a turn. Any other request (another client sends neither header)
takes the script's next turn and is recorded in ``requests``. ``GET
/v1/models`` and ``/v1/models/{id}`` answer the model list and a model.
Codex's built-in OpenAI provider first tries the Responses API over a
WebSocket (a ``GET /v1/responses`` upgrade): that is refused with 426, on
which Codex falls back to HTTP at once. Any other path is a 404.

Errors have the API's shape, ``{"error": {"message", "type", "param",
"code"}}`` with an ``x-request-id`` header: 401 without an API key, 400 for a
body that is not JSON, lacks ``model`` or has an ``input`` that is neither a
string nor a list (a gzip or deflate body is decoded first). A responder
that raises ``ApiError`` makes the server answer that error instead of a
turn: as an HTTP error, or (``in_stream=True``) as a ``response.failed``
event after ``response.created``, the way the API reports a failure that
happens while it streams.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web

from orchestrator.embedded.models.base import ScriptedModelServer, Turn, json_body

CHUNK = 24  # characters per streamed delta: clients must join several
MODELS = ("gpt-5.5", "gpt-5.4", "gpt-5.4-mini")


class ApiError(Exception):
    """An OpenAI API error the server answers with (raise it from a responder)."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        code: str | None = None,
        *,
        in_stream: bool = False,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.code = status, kind, message, code
        self.in_stream = in_stream


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def error_response(
    status: int, kind: str, message: str, code: str | None = None, param: str | None = None
) -> web.Response:
    """The API's error body and its ``x-request-id`` header."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers={"x-request-id": _id("req")})


def usage(turn: Turn) -> dict[str, Any]:
    """The turn's tokens in the Responses API's usage fields."""
    total_in = turn.input_tokens + turn.cache_read_tokens + turn.cache_write_tokens
    details: dict[str, int] = {"cached_tokens": turn.cache_read_tokens}
    if turn.cache_write_tokens:
        details["cache_write_tokens"] = turn.cache_write_tokens
    return {
        "input_tokens": total_in,
        "input_tokens_details": details,
        "output_tokens": turn.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": total_in + turn.output_tokens,
    }


def _offered(tools: list[Any]) -> dict[str, dict[str, Any]]:
    """The tools a request offers, by name (those inside namespaces too)."""
    found: dict[str, dict[str, Any]] = {}
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "namespace":
            found.update(_offered(tool.get("tools") or []))
        elif isinstance(tool.get("name"), str):
            found[tool["name"]] = tool
    return found


def _tool_for(wanted: str, tools: list[Any]) -> tuple[str, dict[str, Any]]:
    """The offered tool's name as the client spelled it, and its definition."""
    offered = _offered(tools)
    if wanted in offered:
        return wanted, offered[wanted]
    folded = {name.lower(): name for name in offered}
    name = folded.get(wanted.lower(), wanted)
    return name, offered.get(name, {"type": "function"})


def output_item(turn: Turn, tools: list[Any]) -> dict[str, Any]:
    """The turn as one finished output item: a message, a function or a custom tool call."""
    if turn.tool is None:
        text = {"type": "output_text", "text": turn.text, "annotations": [], "logprobs": []}
        return {
            "id": _id("msg"),
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [text],
        }
    name, tool = _tool_for(turn.tool, tools)
    if tool.get("type") == "custom":
        raw = turn.arguments.get("input", "")
        return {
            "id": _id("ctc"),
            "type": "custom_tool_call",
            "status": "completed",
            "call_id": _id("call"),
            "name": name,
            "input": raw if isinstance(raw, str) else json.dumps(raw),
        }
    return {
        "id": _id("fc"),
        "type": "function_call",
        "status": "completed",
        "call_id": _id("call"),
        "name": name,
        "arguments": json.dumps(turn.arguments),
    }


def response_object(body: dict[str, Any], status: str, output: list[Any]) -> dict[str, Any]:
    """A response object as the API returns it (usage is added when complete)."""
    return {
        "id": _id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model"),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": body.get("store", True),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "usage": None,
        "metadata": body.get("metadata") or {},
    }


def _pieces(text: str) -> list[str]:
    return [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]


def _item_events(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The events between an item's ``output_item.added`` and ``.done``."""
    at = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "function_call":
        deltas = [
            {"type": "response.function_call_arguments.delta", **at, "delta": p}
            for p in _pieces(item["arguments"])
        ]
        done = {"name": item["name"], "arguments": item["arguments"]}
        return [*deltas, {"type": "response.function_call_arguments.done", **at, **done}]
    if item["type"] == "custom_tool_call":
        deltas = [
            {"type": "response.custom_tool_call_input.delta", **at, "delta": p}
            for p in _pieces(item["input"])
        ]
        return [
            *deltas,
            {"type": "response.custom_tool_call_input.done", **at, "input": item["input"]},
        ]
    part = item["content"][0]
    at = {**at, "content_index": 0}
    deltas = [
        {"type": "response.output_text.delta", **at, "delta": p, "logprobs": []}
        for p in _pieces(part["text"])
    ]
    return [
        {"type": "response.content_part.added", **at, "part": {**part, "text": ""}},
        *deltas,
        {"type": "response.output_text.done", **at, "text": part["text"], "logprobs": []},
        {"type": "response.content_part.done", **at, "part": part},
    ]


def _started(item: dict[str, Any]) -> dict[str, Any]:
    """The item as ``output_item.added`` shows it: in progress, nothing in it yet."""
    empty: dict[str, Any] = {"content": []} if item["type"] == "message" else {}
    if item["type"] == "function_call":
        empty = {"arguments": ""}
    elif item["type"] == "custom_tool_call":
        empty = {"input": ""}
    return {**item, **empty, "status": "in_progress"}


def stream_events(final: dict[str, Any]) -> list[dict[str, Any]]:
    """The server-sent events of a finished response, in the API's order."""
    item = final["output"][0]
    opening = {**final, "status": "in_progress", "output": [], "usage": None}
    events = [
        {"type": "response.created", "response": opening},
        {"type": "response.in_progress", "response": opening},
        {"type": "response.output_item.added", "output_index": 0, "item": _started(item)},
        *_item_events(item),
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": final},
    ]
    return _numbered(events)


def failed_events(body: dict[str, Any], error: ApiError) -> list[dict[str, Any]]:
    """A stream that fails after it started: ``response.created``, ``response.failed``."""
    opening = response_object(body, "in_progress", [])
    failed = {
        **opening,
        "status": "failed",
        "error": {"code": error.code or error.kind, "message": error.message},
    }
    return _numbered(
        [
            {"type": "response.created", "response": opening},
            {"type": "response.failed", "response": failed},
        ]
    )


def _numbered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**event, "sequence_number": n} for n, event in enumerate(events)]


def sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _check(request: web.Request, body: Any) -> web.Response | None:
    """The API's error for a malformed request, or None."""
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("bearer ") or not auth[7:].strip():
        return error_response(
            401,
            "invalid_request_error",
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if not isinstance(body, dict):
        return error_response(
            400,
            "invalid_request_error",
            "We could not parse the JSON body of your request. The OpenAI API expects a "
            "JSON payload.",
        )
    if not isinstance(body.get("model"), str) or not body["model"]:
        return error_response(
            400,
            "invalid_request_error",
            "Missing required parameter: 'model'.",
            "missing_required_parameter",
            "model",
        )
    if "input" in body and not isinstance(body["input"], str | list):
        return error_response(
            400,
            "invalid_request_error",
            "Invalid type for 'input': expected a string or an array of input items.",
            "invalid_type",
            "input",
        )
    return None


def is_side_request(request: web.Request) -> bool:
    """A Codex helper job rather than its agent loop (see the module doc)."""
    if request.headers.get("x-openai-subagent"):
        return True
    meta = request.headers.get("x-codex-turn-metadata")
    if not meta:
        return False
    try:
        kind = json.loads(meta).get("request_kind")
    except (ValueError, AttributeError):
        return False
    return kind not in (None, "turn")


class OpenAIResponsesServer(ScriptedModelServer):
    """The OpenAI Responses API, answered from the script (see the module doc)."""

    side_text = "Scripted side answer"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.side_requests: list[dict[str, Any]] = []
        self.websocket_attempts = 0

    def add_routes(self, app: web.Application) -> None:
        for prefix in ("/v1", ""):
            app.router.add_post(f"{prefix}/responses", self._responses)
            app.router.add_get(f"{prefix}/responses", self._websocket)
            app.router.add_get(f"{prefix}/models", self._models)
            app.router.add_get(f"{prefix}/models/{{model}}", self._model)
        app.router.add_route("*", "/{tail:.*}", self._not_found)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        problem = _check(request, body)
        if problem is not None:
            return problem
        if is_side_request(request):
            self.side_requests.append(
                {"path": request.path_qs, "headers": dict(request.headers), **body}
            )
            return await self._answer(
                request, body, Turn(text=self.side_text, input_tokens=1, output_tokens=1)
            )
        async with self._lock:  # turns go out in the order requests came in
            self.record(request, body)
            try:
                turn = self.script.next(body)
            except ApiError as exc:
                return await self._fail(request, body, exc)
        return await self._answer(request, body, turn)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], turn: Turn
    ) -> web.StreamResponse:
        final = response_object(body, "completed", [output_item(turn, body.get("tools") or [])])
        final["usage"] = usage(turn)
        if not body.get("stream"):
            return web.json_response(final, headers={"x-request-id": _id("req")})
        return await self._stream(request, stream_events(final))

    async def _fail(
        self, request: web.Request, body: dict[str, Any], error: ApiError
    ) -> web.StreamResponse:
        if error.in_stream and body.get("stream"):
            return await self._stream(request, failed_events(body, error))
        return error_response(error.status, error.kind, error.message, error.code)

    async def _stream(
        self, request: web.Request, events: list[dict[str, Any]]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "x-request-id": _id("req"),
            }
        )
        await response.prepare(request)
        for event in events:
            await response.write(sse(event))
        await response.write_eof()
        return response

    async def _websocket(self, request: web.Request) -> web.Response:
        if request.headers.get("upgrade", "").lower() != "websocket":
            return error_response(405, "invalid_request_error", "Use POST for /v1/responses.")
        self.websocket_attempts += 1
        return error_response(
            426, "invalid_request_error", "WebSocket transport is not supported here."
        )

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [_model_info(name) for name in MODELS]})

    async def _model(self, request: web.Request) -> web.Response:
        return web.json_response(_model_info(request.match_info["model"]))

    async def _not_found(self, request: web.Request) -> web.Response:
        return error_response(
            404, "invalid_request_error", f"Invalid URL ({request.method} {request.path})"
        )


def _model_info(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "openai"}
