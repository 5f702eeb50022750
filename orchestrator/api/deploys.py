"""Deployment records over HTTP (``agogctl deploys``, ``agogctl deploy ...``).

=======  ===============================  =====  ==================================
method   path                             auth   what
=======  ===============================  =====  ==================================
GET      /api/deploys                     read   records, newest first: ``env``,
                                                 ``req``, ``status``, ``limit``
                                                 (1-1000, default 50), ``before``
                                                 (an id: the next page)
GET      /api/deploys/{id}                read   one record in full
POST     /api/deploys/{id}/restore-db     token  restore the app database from the
                                                 record's backup
                                                 (orchestrator.api.deploy_restore)
=======  ===============================  =====  ==================================

The restore's body (all optional): ``{"restore_id": "...", "by": "alice",
"undo": false}``. ``restore_id`` (or an ``Idempotency-Key`` header) names
the restore: sent again once it succeeded, the recorded restore is the
answer (``duplicate: true``). ``by`` is who asked, for the record. 200 with
the restore; 409 when it is refused (no app database configured, no backup,
a missing or changed file, another restore running) or pg_restore failed
(and rolled back); 404 for an unknown id; 400 for a bad id or body.
"""

from __future__ import annotations

import re
import uuid

from aiohttp import web

from orchestrator.api import deploy_records as records
from orchestrator.api.common import (
    ApiError,
    context_of,
    json_ok,
    pool_of,
    read_object,
    require_token,
)
from orchestrator.api.deploy_restore import RestoreAsk, RestoreRefused, restore_db
from orchestrator.core.safe_text import neutralise
from orchestrator.runtime.logs import get_logger

log = get_logger("agogd.deploys")

_RESTORE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
BY_MAX = 100


def _id_of(request: web.Request) -> int:
    try:
        return records.parse_id(request.match_info["id"])
    except records.BadQuery as exc:
        raise ApiError(400, str(exc)) from None


async def list_deploys(request: web.Request) -> web.Response:
    """``GET /api/deploys?env=staging&req=REQ-1&limit=20``."""
    try:
        filters = records.parse_filters(request.query)
    except records.BadQuery as exc:
        raise ApiError(400, str(exc)) from None
    async with pool_of(request).acquire() as conn:
        return json_ok(await records.list_records(conn, filters))


async def show_deploy(request: web.Request) -> web.Response:
    """``GET /api/deploys/{id}``: every column of one record."""
    deployment_id = _id_of(request)
    async with pool_of(request).acquire() as conn:
        body = await records.get_record(conn, deployment_id)
    if body is None:
        raise ApiError(404, f"no deployment {deployment_id}")
    return json_ok(body)


def _ask(request: web.Request, deployment_id: int, fields: dict[str, object]) -> RestoreAsk:
    given = request.headers.get("Idempotency-Key") or fields.get("restore_id")
    if given is not None and (not isinstance(given, str) or not _RESTORE_ID.match(given)):
        raise ApiError(400, "restore_id (or Idempotency-Key) is 1-100 letters, digits or _.:-")
    by = fields.get("by", "api")
    if not isinstance(by, str) or not by.strip() or len(by) > BY_MAX:
        raise ApiError(400, f"by names who asks for the restore, in 1-{BY_MAX} characters")
    undo = fields.get("undo", False)
    if not isinstance(undo, bool):
        raise ApiError(400, "undo is true or false")
    unknown = set(fields) - {"restore_id", "by", "undo"}
    if unknown:
        raise ApiError(
            400, f"unknown field(s) {', '.join(sorted(unknown))}: use restore_id, by, undo"
        )
    return RestoreAsk(deployment_id, given or uuid.uuid4().hex, neutralise(by.strip()), undo)


async def restore(request: web.Request) -> web.Response:
    """``POST /api/deploys/{id}/restore-db``: see the module docstring."""
    require_token(request)
    deployment_id = _id_of(request)
    ask = _ask(request, deployment_id, await read_object(request))
    try:
        body = await restore_db(context_of(request).rt, ask)
    except RestoreRefused as exc:
        log.warning(
            "deploy.restore_refused",
            deployment_id=deployment_id,
            status=exc.status,
            reason=exc.message,
            by=ask.by,
        )
        raise ApiError(exc.status, exc.message, **exc.extra) from None
    return json_ok(body)


def install(app: web.Application) -> None:
    app.router.add_get("/api/deploys", list_deploys)
    app.router.add_get("/api/deploys/{id}", show_deploy)
    app.router.add_post("/api/deploys/{id}/restore-db", restore)
