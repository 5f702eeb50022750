"""The JSON API beside /readyz: submit and inspect REQs (agogctl uses it).

Actions need ``Authorization: Bearer <AGOG_API_TOKEN>``; without a configured
token, actions are refused rather than left open.
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from orchestrator import intake
from orchestrator.notices import validate_req_id

if TYPE_CHECKING:
    from orchestrator.daemon import Daemon

DAEMON_KEY: web.AppKey[Any] = web.AppKey("daemon", object)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _authorized(request: web.Request) -> web.Response | None:
    daemon: Daemon = request.app[DAEMON_KEY]
    token = daemon.settings.api_token
    if token is None:
        return _error(403, "actions are disabled: set AGOG_API_TOKEN")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not given or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        return _error(401, "a valid bearer token is required")
    return None


async def submit_req(request: web.Request) -> web.Response:
    denied = _authorized(request)
    if denied:
        return denied
    daemon: Daemon = request.app[DAEMON_KEY]
    if daemon.pool is None:
        return _error(503, "agogd is not ready")
    body = await request.read()
    try:
        req = intake.parse_requirement(body, daemon.settings.max_message_bytes)
    except intake.IntakeError as exc:
        return _error(400, f"{exc.reason}: {exc.message}")
    async with daemon.pool.acquire() as conn, conn.transaction():
        created = await intake.submit(conn, req, "api")
    if daemon.engine is not None:
        daemon.engine.wake_dispatcher.set()
    return web.json_response(
        {"req_number": req.req_number, "created": created}, status=201 if created else 200
    )


async def get_req(request: web.Request) -> web.Response:
    daemon: Daemon = request.app[DAEMON_KEY]
    try:
        req = validate_req_id(request.match_info["req"])
    except ValueError as exc:
        return _error(400, str(exc))
    if daemon.pool is None:
        return _error(503, "agogd is not ready")
    async with daemon.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT req_number, title, priority, status, current_stage, commit_sha,"
            " deployed_at, deployed_by, created_at, updated_at FROM workflow_state"
            " WHERE req_number = $1",
            req,
        )
        if row is None:
            return _error(404, f"no workflow for {req}")
        attempts = await conn.fetch(
            "SELECT stage, agent, attempt, status, reason, started_at, deadline, finished_at"
            " FROM stage_attempts WHERE req_number = $1 ORDER BY id",
            req,
        )
    body = {**dict(row), "attempts": [dict(a) for a in attempts]}
    return web.json_response(json.loads(json.dumps(body, default=str)))


async def infra_report(request: web.Request) -> web.Response:
    """Build and publish Miki's infrastructure report now; returns it.
    Body (optional): ``{"feature": "nats-fix"}``."""
    denied = _authorized(request)
    if denied:
        return denied
    from workers.infra_report import DEFAULT_FEATURE, publish_report

    daemon: Daemon = request.app[DAEMON_KEY]
    body = await request.read()
    try:
        fields = json.loads(body) if body.strip() else {}
    except ValueError:
        return _error(400, "the body is not JSON")
    feature = fields.get("feature") if isinstance(fields, dict) else None
    if not isinstance(fields, dict) or not isinstance(feature or "", str):
        return _error(400, 'the body is a JSON object such as {"feature": "nats-fix"}')
    result = await publish_report(daemon, feature or DEFAULT_FEATURE, reason="api")
    return web.json_response(json.loads(json.dumps(result, default=str)))


def install(app: web.Application, daemon: Daemon) -> None:
    app[DAEMON_KEY] = daemon
    app.router.add_post("/api/reqs", submit_req)
    app.router.add_get("/api/reqs/{req}", get_req)
    app.router.add_post("/api/infra/report", infra_report)
