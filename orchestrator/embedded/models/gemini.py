"""A scripted Gemini API server (``generativelanguage`` v1beta), for Gemini CLI.

It speaks the wire protocol of ``POST /v1beta/models/{model}:<method>``:

- ``:streamGenerateContent?alt=sse``: server-sent events, each
  ``data: <GenerateContentResponse>`` ended by ``\\r\\n\\r\\n`` (without
  ``alt=sse``, one JSON array of the same chunks, as the API does);
- ``:generateContent``: one ``GenerateContentResponse``;
- ``:countTokens``: ``{"totalTokens": n}`` (an estimate: 4 characters a token);
- ``GET /v1beta/models`` and ``/v1beta/models/{model}``: the model list/info.

A response has ``candidates[0].content`` (``role: model``) with ``parts``:
a text turn is ``{"text": ...}`` (streamed in several chunks), a tool turn
is ``{"functionCall": {"id", "name", "args"}, "thoughtSignature"}`` under
the name the CLI offered in ``tools[].functionDeclarations``; then
``finishReason: STOP``, ``usageMetadata`` (``promptTokenCount`` = the turn's
input plus cache-read tokens, ``cachedContentTokenCount``,
``candidatesTokenCount``, ``totalTokenCount``; cumulative per chunk, the
last chunk is complete; the API has no cache-write count, so
``cache_write_tokens`` is not reported), ``modelVersion`` (the model in the
path) and ``responseId``.

Main requests versus side requests: Gemini CLI runs its agent loop (and any
subagent's) through ``streamGenerateContent``; its side calls (the model
router's complexity score, the next-speaker check, loop detection, chat
compression, edit correction, session summaries, web search) go through
the unary ``generateContent``, and ``countTokens`` only counts. So a
streaming request takes the script's next turn and is recorded in
``requests``; a unary one is answered by ``side`` (default: a minimal
instance of the JSON schema it asks for, with ``next_speaker`` = ``user`` so
the loop stops, else ``side_text``) and kept in ``side_requests``; neither
it nor ``countTokens`` consumes a turn. ``reported`` keeps the usage of
every answer (main and side), for tests comparing the CLI's totals.

Malformed requests get the API's error shape (``{"error": {"code",
"message", "status"}}``): 403 ``PERMISSION_DENIED`` without an API key
(``x-goog-api-key`` header or ``key`` parameter), 400 ``API_KEY_INVALID``
for a wrong one (when ``api_key`` is set), 400 ``INVALID_ARGUMENT`` for a
body that is not JSON, an unknown field, no contents, an empty ``parts``, a
role other than user/model, or a function-call turn not answered by as many
function responses (the real API's check, which Gemini CLI 0.61 fails when
resuming a session that used tools); 404 ``NOT_FOUND`` for another path. A
responder that raises ``ApiError`` makes the server answer that error.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from orchestrator.embedded.models.base import ScriptedModelServer, Turn

CHUNK = 24  # characters of text per streamed chunk: the CLI must join several
REQUEST_FIELDS = {
    "model",
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
}
STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
CONTENT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.Content"
PAIRING = (
    "Please ensure that the number of function response parts is equal to the number "
    "of function call parts of the function call turn."
)

# Given a side request's JSON body, the turn to answer it with.
SideResponder = Callable[[dict[str, Any]], Turn]


class ApiError(Exception):
    """A Gemini API error the server answers with (raise it from a responder)."""

    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


def error_body(code: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """The API's error object (``google.rpc.Status`` as JSON)."""
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": STATUS.get(code, "UNKNOWN"),
    }
    if reason:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ]
    return {"error": error}


def error_response(code: int, message: str, reason: str | None = None) -> web.Response:
    return web.json_response(error_body(code, message, reason), status=code)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def usage_metadata(turn: Turn, output_tokens: int) -> dict[str, Any]:
    """The turn's usage as ``usageMetadata`` (zero fields left out, as proto3 JSON does)."""
    prompt = turn.input_tokens + turn.cache_read_tokens
    usage: dict[str, Any] = {"promptTokenCount": prompt}
    if output_tokens:
        usage["candidatesTokenCount"] = output_tokens
    if turn.cache_read_tokens:
        usage["cachedContentTokenCount"] = turn.cache_read_tokens
    usage["totalTokenCount"] = prompt + output_tokens
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    return usage


def offered_tools(body: dict[str, Any]) -> list[str]:
    """The function names the request declares."""
    names: list[str] = []
    for tool in body.get("tools") or []:
        for decl in (tool or {}).get("functionDeclarations") or []:
            if isinstance(decl, dict) and isinstance(decl.get("name"), str):
                names.append(decl["name"])
    return names


def _offered_name(wanted: str, names: list[str]) -> str:
    """The tool's name as the CLI spelled it (else as scripted)."""
    if wanted in names:
        return wanted
    return {n.lower(): n for n in names}.get(wanted.lower(), wanted)


def turn_parts(turn: Turn, body: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The turn's parts, one list per streamed chunk."""
    if turn.tool is not None:
        call = {
            "id": f"call_{uuid.uuid4().hex[:16]}",
            "name": _offered_name(turn.tool, offered_tools(body)),
            "args": turn.arguments,
        }
        signature = base64.b64encode(uuid.uuid4().bytes).decode()
        return [[{"functionCall": call, "thoughtSignature": signature}]]
    text = turn.text or ""
    pieces = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
    return [[{"text": piece}] for piece in pieces]


def chunks(turn: Turn, body: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """The ``GenerateContentResponse`` chunks of one answer (the last one finishes)."""
    groups = turn_parts(turn, body)
    response_id = uuid.uuid4().hex[:22]
    out: list[dict[str, Any]] = []
    for index, parts in enumerate(groups, start=1):
        last = index == len(groups)
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        spent = turn.output_tokens * index // len(groups)  # cumulative: the last is the total
        out.append(
            {
                "candidates": [candidate],
                "usageMetadata": usage_metadata(turn, spent),
                "modelVersion": model,
                "responseId": response_id,
            }
        )
    return out


def unary(turn: Turn, body: dict[str, Any], model: str) -> dict[str, Any]:
    """The whole answer as one ``GenerateContentResponse``."""
    parts = turn_parts(turn, body)[0] if turn.tool is not None else [{"text": turn.text or ""}]
    candidate = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
    return {
        "candidates": [candidate],
        "usageMetadata": usage_metadata(turn, turn.output_tokens),
        "modelVersion": model,
        "responseId": uuid.uuid4().hex[:22],
    }


def schema_instance(schema: Any) -> Any:
    """A minimal value of a (JSON or OpenAPI-style) schema."""
    if not isinstance(schema, dict):
        return "scripted"
    kind = str(schema.get("type", "")).lower()
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: schema_instance(v) for k, v in props.items()}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return False
    return "scripted"


def _asked_schema(body: dict[str, Any]) -> Any:
    config = body.get("generationConfig") or {}
    if config.get("responseMimeType") != "application/json":
        return None
    return config.get("responseJsonSchema") or config.get("responseSchema") or {}


def side_turn(body: dict[str, Any], side_text: str) -> Turn:
    """The default answer to a side request: the JSON it asks for, else text."""
    schema = _asked_schema(body)
    if schema is None:
        return Turn(
            text=side_text, input_tokens=_tokens(json.dumps(body)), output_tokens=_tokens(side_text)
        )
    value = schema_instance(schema)
    if isinstance(value, dict) and "next_speaker" in value:
        value["next_speaker"] = "user"  # the CLI's turn is over: do not continue the loop
    text = json.dumps(value)
    return Turn(text=text, input_tokens=_tokens(json.dumps(body)), output_tokens=_tokens(text))


def _check_contents(contents: Any) -> str | None:
    """The API's complaint about ``contents``, or None."""
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified\n"
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            return f"Invalid value at 'contents[{i}]' ({CONTENT_TYPE})"
        if content.get("role", "user") not in ("user", "model"):
            return "Please use a valid role: user, model."
        if not content.get("parts"):
            return (
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            )
    return _check_pairing(contents)


def _count(content: dict[str, Any], key: str) -> int:
    return sum(1 for part in content.get("parts") or [] if isinstance(part, dict) and key in part)


def _check_pairing(contents: list[dict[str, Any]]) -> str | None:
    """Each function-call turn must be followed by as many function responses."""
    for i, content in enumerate(contents):
        calls = _count(content, "functionCall") if content.get("role") == "model" else 0
        if not calls or i + 1 >= len(contents):
            continue
        answers = _count(contents[i + 1], "functionResponse")
        if answers != calls:
            return PAIRING
    return None


def check_body(body: Any) -> str | None:
    """The API's complaint about a generate request's body, or None."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    for name in body:
        if name not in REQUEST_FIELDS:
            return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    return _check_contents(body.get("contents"))


def _model_info(name: str) -> dict[str, Any]:
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name,
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
    }


def _sse(chunk: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(chunk)}\r\n\r\n".encode()


class GeminiServer(ScriptedModelServer):
    """The Gemini API, answered from the script (see the module doc)."""

    side_text = "Scripted summary."
    models = ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite")

    def __init__(
        self,
        *args: Any,
        api_key: str | None = None,
        side: SideResponder | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.api_key = api_key
        self.side = side
        self.side_requests: list[dict[str, Any]] = []
        # Every answer's usage: {"kind": "main"|"side", "model", "input", "cached", "output"}.
        self.reported: list[dict[str, Any]] = []

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{version}/models/{target}", self._call)
        app.router.add_get("/{version}/models", self._models)
        app.router.add_get("/{version}/models/{model}", self._model)
        app.router.add_route("*", "/{tail:.*}", self._not_found)

    def _auth_error(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return error_response(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
            )
        if self.api_key is not None and key != self.api_key:
            return error_response(
                400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"
            )
        return None

    async def _call(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        handlers = {
            "streamGenerateContent": self._stream,
            "generateContent": self._generate,
            "countTokens": self._count_tokens,
        }
        if method not in handlers:
            return await self._not_found(request)
        refused = self._auth_error(request)
        if refused is not None:
            return refused
        try:
            body = json.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            return error_response(400, f"Invalid JSON payload received. {exc}")
        return await handlers[method](request, model, body)

    def _note(self, kind: str, model: str, turn: Turn) -> None:
        self.reported.append(
            {
                "kind": kind,
                "model": model,
                "input": turn.input_tokens,
                "cached": turn.cache_read_tokens,
                "output": turn.output_tokens,
            }
        )

    async def _main_turn(self, request: web.Request, body: dict[str, Any]) -> Turn | web.Response:
        """The script's next turn for a main request (recorded), or the error to answer."""
        async with self._lock:
            self.record(request, body)
            try:
                return self.script.next(body)
            except ApiError as exc:
                return error_response(exc.code, exc.message, exc.reason)

    async def _stream(self, request: web.Request, model: str, body: Any) -> web.StreamResponse:
        complaint = check_body(body)
        if complaint is not None:
            self.record(request, body if isinstance(body, dict) else {"body": body})
            return error_response(400, complaint)
        turn = await self._main_turn(request, body)
        if isinstance(turn, web.Response):
            return turn
        self._note("main", model, turn)
        answer = chunks(turn, body, model)
        if request.query.get("alt") != "sse":
            return web.json_response(answer)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for chunk in answer:
            await response.write(_sse(chunk))
        await response.write_eof()
        return response

    async def _generate(self, request: web.Request, model: str, body: Any) -> web.Response:
        complaint = check_body(body)
        self.side_requests.append(
            {"path": request.path_qs, **(body if isinstance(body, dict) else {})}
        )
        if complaint is not None:
            return error_response(400, complaint)
        try:
            turn = self.side(body) if self.side else side_turn(body, self.side_text)
        except ApiError as exc:
            return error_response(exc.code, exc.message, exc.reason)
        self._note("side", model, turn)
        return web.json_response(unary(turn, body, model))

    async def _count_tokens(self, request: web.Request, model: str, body: Any) -> web.Response:
        if not isinstance(body, dict):
            return error_response(400, "Invalid JSON payload received. Expected an object.")
        self.side_requests.append({"path": request.path_qs, **body})
        counted = body.get("generateContentRequest") or body
        total = _tokens(json.dumps(counted.get("contents") or []))
        return web.json_response(
            {
                "totalTokens": total,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}],
            }
        )

    async def _models(self, request: web.Request) -> web.Response:
        refused = self._auth_error(request)
        return refused or web.json_response({"models": [_model_info(m) for m in self.models]})

    async def _model(self, request: web.Request) -> web.Response:
        refused = self._auth_error(request)
        return refused or web.json_response(_model_info(request.match_info["model"]))

    async def _not_found(self, request: web.Request) -> web.Response:
        return error_response(404, f"Method not found: {request.method} {request.path}")
