"""What every API module shares: its context, JSON errors, the token check.

A handler raises ``ApiError(status, message)``; the error middleware of
``orchestrator.api.routes`` turns it into ``{"error": message, "code": ...}`` with
that status. Nothing else ever reaches the client as an error body.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web

from orchestrator.core.registry import Pipeline
from orchestrator.inbound import intake
from orchestrator.inbound.notices import validate_req_id
from orchestrator.runtime.context import Late, NotBound, Runtime
from orchestrator.runtime.settings import Settings
from workers.branches.worktrees import Worktrees

if TYPE_CHECKING:
    from orchestrator.memory.service import Memory


@dataclass(frozen=True)
class ApiContext:
    """What the API's handlers use once agogd is connected."""

    rt: Runtime
    # The deliverable memory, where it is on (AGOG_MEMORY_ENABLED).
    memory: Memory | None
    # A REQ may be admitted now (the engine's dispatcher).
    wake_dispatcher: Callable[[], None]
    # The REQs' branches and worktrees (AGOG_REPO), for their diffs.
    worktrees: Worktrees | None = None


# Known before agogd connects: the token check and the body limits work at once.
SETTINGS_KEY = web.AppKey("settings", Settings)
PIPELINE_KEY = web.AppKey("pipeline", Pipeline)
# Bound once the connections are up; until then a handler that needs it answers 503.
CONTEXT_KEY = web.AppKey("api_context", Late)

# status -> the machine-readable code beside the message
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "too_large",
    421: "misdirected_request",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer: status, a readable message, and optional extra fields."""

    def __init__(self, status: int, message: str, /, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def error_body(status: int, message: str, /, **extra: Any) -> dict[str, Any]:
    return {"error": message, "code": CODES.get(status, "error"), **extra}


def error_response(status: int, message: str, /, **extra: Any) -> web.Response:
    return web.json_response(error_body(status, message, **extra), status=status)


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, default=_default)


def json_ok(body: Any, status: int = 200) -> web.Response:
    """A JSON answer; datetimes become ISO 8601 strings."""
    return web.json_response(body, status=status, dumps=dumps)


def settings_of(request: web.Request) -> Settings:
    return request.app[SETTINGS_KEY]


def pipeline_of(request: web.Request) -> Pipeline:
    return request.app[PIPELINE_KEY]


def context_of(request: web.Request) -> ApiContext:
    """The API's context; 503 while agogd is still starting."""
    try:
        return request.app[CONTEXT_KEY].get()  # type: ignore[no-any-return]
    except NotBound as exc:
        raise ApiError(503, str(exc)) from None


def pool_of(request: web.Request) -> asyncpg.Pool:
    return context_of(request).rt.pool


def given_token(request: web.Request, allow_query: bool = False) -> str:
    """The bearer token of a request; GETs may pass it as ``?token=`` (an
    EventSource cannot set headers)."""
    header = request.headers.get("Authorization", "").strip()
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if allow_query:
        return request.query.get("token", "").strip()
    return ""


def token_problem(request: web.Request, allow_query: bool = False) -> ApiError | None:
    """Why a request may not act (401/403), or None if its token is right."""
    token = settings_of(request).api_token
    if token is None:
        return ApiError(403, "actions are disabled: set AGOG_API_TOKEN")
    given = given_token(request, allow_query)
    # surrogatepass: aiohttp decodes header bytes that are not UTF-8 (a Latin-1
    # token, say) to lone surrogates, which a plain encode() refused with a 500.
    sent = given.encode("utf-8", "surrogatepass")
    wanted = token.get_secret_value().encode("utf-8", "surrogatepass")
    if not given or not hmac.compare_digest(sent, wanted):
        return ApiError(401, "a valid bearer token is required")
    return None


def require_token(request: web.Request) -> None:
    problem = token_problem(request)
    if problem is not None:
        raise problem


def req_of(request: web.Request) -> str:
    """The ``{req}`` of the path, validated (400 if unsafe)."""
    try:
        return validate_req_id(request.match_info["req"])
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


async def read_object(request: web.Request, empty_ok: bool = True) -> dict[str, Any]:
    """The JSON object body (an empty body is ``{}`` when allowed), else 400."""
    data = await request.read()
    if not data.strip():
        if empty_ok:
            return {}
        raise ApiError(400, "a JSON object body is required")
    try:
        return intake.json_object(data, settings_of(request).max_message_bytes, "the body")
    except intake.IntakeError as exc:
        raise ApiError(400, f"{exc.reason}: {exc.message}") from None
