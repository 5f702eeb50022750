"""The JSON API beside /readyz (agogctl and the board use it).

=======  ==========================  =======  ==================================
method   path                        auth     what
=======  ==========================  =======  ==================================
GET      /api/reqs                   read     REQ rows with stage cells; filters
                                              ``status``, ``stage``, ``priority``,
                                              ``limit`` (orchestrator.api.views)
POST     /api/reqs                   token    submit a REQ (idempotent)
GET      /api/reqs/{req}             read     the full history of one REQ
GET      /api/reqs/{req}/logs        read     an attempt's agent output (``stage``,
                                              ``attempt``, ``since`` bytes)
GET      /api/reqs/{req}/diff        read     what its branch changed (``stage``);
                                              AGOG_REPO (orchestrator.api.diffs)
POST     /api/reqs/{req}/{action}    token    retry, cancel, resume, decide
                                              (orchestrator.api.actions)
GET      /api/streams                read     every agog_* stream: messages,
                                              bytes, consumers and their lag
GET      /api/events                 read     live events, server-sent
                                              (orchestrator.api.events)
POST     /api/infra/report           token    Miki's infrastructure report
GET      /api/memory/search          read     hybrid recall over the deliverable
                                              memory (orchestrator.api.memory)
GET      /api/deploys[/{id}]         read     deployment records, newest first, or
                                              one in full (orchestrator.api.deploys)
POST     /api/deploys/{id}/...       token    ``restore-db``: the app database from
                                              the record's backup
=======  ==========================  =======  ==================================

*token*: ``Authorization: Bearer <AGOG_API_TOKEN>``; without a configured
token, actions are refused (403) rather than left open. *read*: open on
loopback, unless ``AGOG_API_READ_AUTH`` is true (its default when
``AGOG_HTTP_HOST`` is beyond loopback); then every GET under ``/api/`` needs
the token as well, as the header or ``?token=`` (an ``EventSource`` cannot
send headers). /healthz, /readyz and /metrics stay open. A request whose
``Host`` agogd does not know is a 421 (orchestrator.api.guard).

Errors are always JSON, ``{"error": "...", "code": "..."}``: 400 malformed,
401 missing or wrong token, 403 no token configured, 404 unknown REQ or
route, 409 an action the REQ's state refuses, 503 NATS or Postgres away, and
500 with a ``request_id`` (also in the log line and the ``X-Request-Id``
header) for anything unexpected. Never a stack trace.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from orchestrator.api import actions as api_actions
from orchestrator.api import deploys as api_deploys
from orchestrator.api import diffs as api_diffs
from orchestrator.api import events as api_events
from orchestrator.api import guard as http_guard
from orchestrator.api import memory as api_memory
from orchestrator.api import views as api_views
from orchestrator.api.common import (
    CONTEXT_KEY,
    PIPELINE_KEY,
    SETTINGS_KEY,
    ApiContext,
    ApiError,
    context_of,
    error_response,
    json_ok,
    pipeline_of,
    pool_of,
    read_object,
    req_of,
    require_token,
    settings_of,
    token_problem,
)
from orchestrator.core.registry import Pipeline
from orchestrator.engine import requirements, store
from orchestrator.inbound import intake
from orchestrator.runtime.context import Late
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.settings import Settings
from workers.infra.entries import DEFAULT_FEATURE
from workers.infra.inspect import inspect_streams
from workers.infra.report import publish_report

__all__ = ["install"]

log = get_logger("agogd.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Postgres or NATS away: the request may well succeed later (503, not 500).
UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    ConnectionRefusedError,
    TimeoutError,
)


def _error(status: int, message: str) -> web.Response:
    return error_response(status, message)


def _authorized(request: web.Request) -> web.Response | None:
    """None if the request carries the API token, else the 401/403 answer."""
    problem = token_problem(request)
    return error_response(problem.status, problem.message) if problem else None


# --- middlewares -----------------------------------------------------------------
@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON; an unexpected exception is logged with a request id
    and answered 500 with that id, never with its traceback."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.message, **exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        response = error_response(exc.status, exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except UNAVAILABLE as exc:
        log.warning(
            "api.unavailable",
            request_id=request_id,
            method=request.method,
            path=request.path,
            error=repr(exc),
        )
        response = error_response(
            503, "a dependency (Postgres or NATS) is unavailable", request_id=request_id
        )
    except Exception as exc:
        log.error(
            "api.internal_error",
            request_id=request_id,
            method=request.method,
            path=request.path,
            error=repr(exc),
            exc_info=exc,
        )
        response = error_response(500, "internal error", request_id=request_id)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


@web.middleware
async def read_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With AGOG_API_READ_AUTH (by default whenever agogd listens beyond
    loopback), GETs under /api/ need the token too."""
    if (
        request.method in ("GET", "HEAD")
        and request.path.startswith("/api/")
        and request.path not in OPEN_PATHS
        and settings_of(request).reads_need_token()
    ):
        problem = token_problem(request, allow_query=True)
        if problem is not None:
            raise problem
    return await handler(request)


# --- reads -------------------------------------------------------------------------
async def list_reqs(request: web.Request) -> web.Response:
    """``GET /api/reqs?status=IN_PROGRESS,BLOCKED&stage=roy&priority=P0&limit=50``."""
    pipeline = pipeline_of(request)
    try:
        filters = api_views.parse_filters(pipeline, request.query)
    except api_views.BadFilter as exc:
        raise ApiError(400, str(exc)) from None
    async with pool_of(request).acquire() as conn:
        body = await api_views.list_reqs(conn, pipeline, filters)
    return json_ok(body)


async def get_req(request: web.Request) -> web.Response:
    """``GET /api/reqs/{req}[?events=N]``: the REQ and its whole history."""
    req = req_of(request)
    raw = request.query.get("events", str(api_views.MAX_EVENTS))
    # isdecimal, not isdigit: int() refuses "²", and the ValueError was a 500.
    if not raw.isdecimal() or not 0 <= int(raw) <= 10 * api_views.MAX_EVENTS:
        raise ApiError(400, f"events must be a count between 0 and {10 * api_views.MAX_EVENTS}")
    async with pool_of(request).acquire() as conn:
        body = await api_views.req_detail(conn, pipeline_of(request), req, int(raw))
    if body is None:
        raise ApiError(404, f"no workflow for {req}")
    return json_ok(body)


def _whole(request: web.Request, name: str, limit: int = 2**31 - 1) -> int | None:
    """An optional whole-number query parameter, 400 if it is anything else."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdecimal() or int(raw) > limit:
        raise ApiError(400, f"{name} must be a whole number")
    return int(raw)


async def logs(request: web.Request) -> web.Response:
    """``GET /api/reqs/{req}/logs[?stage=S][&attempt=N][&since=BYTES]``: an
    attempt's agent output as the runner kept it (the last
    AGOG_RUNNER_TRANSCRIPT_BYTES); ``since`` asks for what came after."""
    req = req_of(request)
    stage: int | None = None
    if request.query.get("stage"):
        try:
            stage = api_views.find_stage(pipeline_of(request), request.query["stage"]).index
        except api_views.BadFilter as exc:
            raise ApiError(400, str(exc)) from None
    attempt, since = _whole(request, "attempt"), _whole(request, "since", 2**62)
    async with pool_of(request).acquire() as conn:
        body = await api_views.transcript(conn, req, stage, attempt, since)
        if body is None:
            if not await store.workflow_exists(conn, req):
                raise ApiError(404, f"no workflow for {req}")
            # Nothing kept (yet): its agents run outside agogd's runner, or the
            # runner has not started one. Not an error: a follower looks again.
            body = {"req_number": req, "kept": False, "running": False, "text": ""}
    return json_ok(body)


async def streams(request: web.Request) -> web.Response:
    """``GET /api/streams``: each agog_* stream with its messages, bytes and
    consumers (pending, ack pending, lag), as in Miki's report."""
    nats, entries = await inspect_streams(context_of(request).rt.nc, pipeline_of(request))
    if not nats.get("reachable"):
        raise ApiError(503, f"NATS: {nats.get('error')}", nats=nats)
    return json_ok({"nats": nats, "streams": entries})


# --- actions -------------------------------------------------------------------------
async def submit_req(request: web.Request) -> web.Response:
    """``POST /api/reqs``: a requirement, as on ``agog.requirements.new``."""
    require_token(request)
    context = context_of(request)
    body = await request.read()
    try:
        req = intake.parse_requirement(body, settings_of(request).max_message_bytes)
    except intake.IntakeError as exc:
        raise ApiError(400, f"{exc.reason}: {exc.message}") from None
    async with context.rt.pool.acquire() as conn, conn.transaction():
        created = await requirements.submit(conn, req, "api", context.memory)
    context.wake_dispatcher()
    return json_ok(
        {"req_number": req.req_number, "created": created}, status=201 if created else 200
    )


async def infra_report(request: web.Request) -> web.Response:
    """Build and publish Miki's infrastructure report now; returns it.
    Body (optional): ``{"feature": "nats-fix"}``."""
    require_token(request)
    context = context_of(request)
    fields = await read_object(request)
    feature = fields.get("feature")
    if not isinstance(feature or "", str):
        raise ApiError(400, 'the body is a JSON object such as {"feature": "nats-fix"}')
    result = await publish_report(context.rt, feature or DEFAULT_FEATURE, reason="api")
    return json_ok(result)


def install(
    app: web.Application, settings: Settings, pipeline: Pipeline, context: Late[ApiContext]
) -> None:
    """Add the API to agogd's app before it listens; ``context`` is bound once
    agogd is connected (503 until then)."""
    app[SETTINGS_KEY] = settings
    app[PIPELINE_KEY] = pipeline
    app[CONTEXT_KEY] = context
    allowed = http_guard.AllowedHosts.build(settings.http_host, settings.http_allowed_hosts)
    # Outermost first: errors as JSON, the Host check (before anything is read
    # or answered), the body deadline, then the read token.
    app.middlewares.insert(0, errors_middleware)
    app.middlewares.insert(1, http_guard.host_middleware(allowed))
    app.middlewares.insert(2, http_guard.body_timeout_middleware(settings.http_body_timeout))
    app.middlewares.append(read_auth_middleware)
    app.router.add_get("/api/reqs", list_reqs)
    app.router.add_post("/api/reqs", submit_req)
    app.router.add_get("/api/reqs/{req}", get_req)
    app.router.add_get("/api/reqs/{req}/logs", logs)
    api_diffs.install(app)
    app.router.add_post("/api/reqs/{req}/{action}", api_actions.act)
    app.router.add_get("/api/streams", streams)
    api_events.install(app, pipeline)
    app.router.add_post("/api/infra/report", infra_report)
    api_memory.install(app)
    api_deploys.install(app)
