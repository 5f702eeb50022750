"""Operator actions on a REQ: retry, cancel, resume, decide.

Every action is a strategic decision. It is checked first, against the REQ's
current row in Postgres, with the same parser the engine uses
(``messages.parse_decision``) and the pure ``workflow.apply``: a malformed body
is a 400, an unknown REQ a 404, and an action the state machine refuses (retry
a finished REQ) a 409 with its reason. Only then is it published on
``agog.strategic.decisions.<REQ>``, signed (``orchestrator.core.decision_auth``), with
``Nats-Msg-Id: api-decision:<REQ>:<id>:<tag>``.
The engine applies it through its durable consumer, exactly as a decision
from Claude or a human on NATS; the API never writes workflow state itself.

Actions (``POST /api/reqs/{req}/<action>``, JSON body, all fields optional
except ``decision``):

=======  =====================================================================
retry    RETRY the current stage (``{"stage": ...}`` naming an earlier stage
         restarts from there: REQUEST_CHANGES with ``restart_stage``; naming
         a follow-up, ``tim``, runs it again on a finished REQ: RETRY with
         ``restart_stage``, and the REQ stays DEPLOYED)
cancel   CANCEL
resume   RETRY the current stage of a BLOCKED or ESCALATED REQ (409 otherwise):
         the stage runs again with a fresh retry budget and the instructions
decide   ``{"decision": "APPROVE" | "REQUEST_CHANGES" | "RETRY" | "CANCEL" |
         "ESCALATE_HUMAN", "restart_stage": 2 | "roy" | "Backend",
         "instructions": "..." | {...}, "reason": "..."}``
=======  =====================================================================

``reason`` becomes the decision's ``reasoning``; ``instructions`` reach the
agent in its assignment. An ``Idempotency-Key`` header (or ``decision_id``)
names the decision: sent again, it is published once (JetStream's duplicate
window) and, once applied, answered from the record.

The answer is 202 with the decision id. With ``?wait=<seconds>`` (at most
30) the API waits for the engine: 200 with the REQ's new row once applied,
409 if the engine refused it after all (the state moved in between), or 202
still pending when the wait runs out.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

from aiohttp import web
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.api import views as api_views
from orchestrator.api.common import (
    ApiError,
    context_of,
    json_ok,
    pipeline_of,
    pool_of,
    read_object,
    req_of,
    require_token,
    settings_of,
)
from orchestrator.core import decision_auth
from orchestrator.core.workflow import DecisionRejected, Workflow, apply
from orchestrator.engine import store
from orchestrator.inbound.messages import Rejected, parse_decision
from orchestrator.runtime.logs import get_logger

log = get_logger("agogd.api")

ACTIONS = ("retry", "cancel", "resume", "decide")
RESUMABLE = ("BLOCKED", "ESCALATED")
MAX_WAIT = 30.0
_DECISION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


class ActionBody(BaseModel):
    """The body of an action; unknown fields are a 400 (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid")

    decision: str | None = None
    restart_stage: int | str | None = None
    stage: int | str | None = None
    instructions: str | dict[str, Any] | None = None
    reason: str = Field(default="", max_length=4000)
    decision_id: str | None = None
    # A new budget for the REQ (USD): resume/retry/decide a REQ blocked on it.
    budget_usd: float | None = Field(default=None, gt=0, lt=1e6, allow_inf_nan=False)


def _wait_of(request: web.Request) -> float:
    raw = request.query.get("wait", "0")
    try:
        wait = float(raw)
    except ValueError:
        raise ApiError(400, f"wait={raw!r} is not a number of seconds") from None
    if not 0 <= wait <= MAX_WAIT:
        raise ApiError(400, f"wait must be between 0 and {MAX_WAIT:g} seconds")
    return wait


def _decision_id(request: web.Request, body: ActionBody) -> tuple[str, bool]:
    """(the decision id, whether the client chose it)."""
    given = request.headers.get("Idempotency-Key") or body.decision_id
    if given is None:
        return uuid.uuid4().hex, False
    if not _DECISION_ID.match(given):
        raise ApiError(400, "an idempotency key is 1-100 letters, digits or _.:-")
    return given, True


def _stage_index(request: web.Request, value: int | str, what: str) -> int:
    """A pipeline stage's or a follow-up's index (the workflow says what may
    be done with a follow-up: only retried, once the pipeline has finished)."""
    try:
        stage = api_views.find_stage(pipeline_of(request), value)
    except api_views.BadFilter as exc:
        raise ApiError(400, f"{what}: {exc}") from None
    return stage.index


def _decision_fields(
    request: web.Request, action: str, body: ActionBody, wf: Workflow
) -> dict[str, Any]:
    """The decision an action stands for, given the REQ's current state."""
    if action != "decide" and (body.decision is not None or body.restart_stage is not None):
        raise ApiError(400, f"{action} takes no decision or restart_stage (use decide)")
    if action != "retry" and body.stage is not None:
        raise ApiError(400, f"{action} takes no stage (retry does)")
    if action == "decide":
        if not body.decision:
            raise ApiError(
                400,
                "decide needs a decision: APPROVE, REQUEST_CHANGES, RETRY,"
                " CANCEL or ESCALATE_HUMAN",
            )
        restart = body.restart_stage
        if restart is not None:
            restart = _stage_index(request, restart, "restart_stage")
        return {"decision": body.decision, "restart_stage": restart}
    if action == "cancel":
        return {"decision": "CANCEL"}
    if action == "resume":
        if wf.status not in RESUMABLE:
            raise ApiError(
                409,
                f"{wf.req} is {wf.status}; only a BLOCKED or ESCALATED REQ can be resumed",
                req_status=wf.status,
            )
        return {"decision": "RETRY"}
    # retry
    if body.stage is None:
        return {"decision": "RETRY"}
    index = _stage_index(request, body.stage, "stage")
    if pipeline_of(request).is_followup(index):
        return {"decision": "RETRY", "restart_stage": index}
    if wf.stage is None:
        return {"decision": "RETRY"}
    if index == wf.stage:
        return {"decision": "RETRY"}
    if index > wf.stage:
        raise ApiError(
            409,
            f"{wf.req} is at stage {wf.stage}; a retry goes back to stage {index}, never ahead",
            req_status=wf.status,
        )
    return {"decision": "REQUEST_CHANGES", "restart_stage": index}


async def _already_applied(pool: Any, req: str, decision_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "SELECT decision, applied_at FROM strategic_decisions"
        " WHERE req_number = $1 AND payload->>'decision_id' = $2 ORDER BY id LIMIT 1",
        req,
        decision_id,
    )
    return dict(row) if row is not None else None


async def _outcome(pool: Any, stream: str, seq: int, wait: float) -> tuple[str, str | None]:
    """The engine's outcome for a stream message: applied, rejected, or pending."""
    deadline = time.monotonic() + wait
    while True:
        row = await pool.fetchrow(
            "SELECT outcome, detail FROM processed_messages WHERE stream = $1 AND stream_seq = $2",
            stream,
            seq,
        )
        if row is not None and row["outcome"] != "processing":
            return ("rejected" if row["outcome"] == "rejected" else "applied"), row["detail"]
        if time.monotonic() >= deadline:
            return "pending", None
        await asyncio.sleep(0.05)


async def act(request: web.Request) -> web.Response:
    """``POST /api/reqs/{req}/{action}``."""
    require_token(request)
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise ApiError(404, f"no action {action!r}: use one of {', '.join(ACTIONS)}")
    pipeline, settings = pipeline_of(request), settings_of(request)
    req = req_of(request)
    wait = _wait_of(request)
    raw = await read_object(request)
    try:
        body = ActionBody.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "body"
        raise ApiError(400, f"wrong_schema: {where}: {first.get('msg')}") from None
    decision_id, chosen = _decision_id(request, body)
    pool = pool_of(request)
    if chosen:
        done = await _already_applied(pool, req, decision_id)
        if done is not None:
            async with pool.acquire() as conn:
                summary = await api_views.req_summary(conn, pipeline, req)
            return json_ok(
                {
                    "decision_id": decision_id,
                    "req_number": req,
                    "action": action,
                    "decision": done["decision"],
                    "outcome": "applied",
                    "duplicate": True,
                    "req": summary,
                }
            )
    row = await pool.fetchrow(
        "SELECT status, current_stage, budgets FROM workflow_state WHERE req_number = $1", req
    )
    if row is None:
        raise ApiError(404, f"no workflow for {req}")
    wf = Workflow.from_row(req, row["status"], row["current_stage"], json.loads(row["budgets"]))
    fields = _decision_fields(request, action, body, wf)
    payload: dict[str, Any] = {
        "req_number": req,
        **fields,
        "reasoning": body.reason or f"{action} via the API",
        "decision_id": decision_id,
        "source": "api",
        "action": action,
        "requested_at": store.now_iso(),
    }
    if body.instructions:
        payload["instructions"] = body.instructions
    if body.budget_usd is not None:
        payload["budget_usd"] = body.budget_usd
    data = json.dumps(payload).encode()
    try:
        decision = parse_decision(data, req, pipeline, settings.max_message_bytes)
    except Rejected as exc:
        raise ApiError(400, f"{exc.reason}: {exc.message}") from None
    try:
        apply(pipeline, wf, decision.to_event())
    except DecisionRejected as exc:
        raise ApiError(409, str(exc), req_status=wf.status) from None
    ack = await _publish(request, req, decision_id, data)
    log.info(
        "api.decision_published",
        req_number=req,
        action=action,
        decision=decision.decision,
        decision_id=decision_id,
        seq=ack.seq,
        duplicate=bool(ack.duplicate),
    )
    answer: dict[str, Any] = {
        "decision_id": decision_id,
        "req_number": req,
        "action": action,
        "decision": decision.decision,
        "restart_stage": decision.restart_stage,
        "subject": pipeline.subject("decision", req=req),
        "stream": ack.stream,
        "seq": ack.seq,
        "duplicate": bool(ack.duplicate),
        "outcome": "pending",
    }
    if wait <= 0:
        return json_ok(answer, status=202)
    outcome, detail = await _outcome(pool, ack.stream, ack.seq, wait)
    answer["outcome"] = outcome
    if outcome == "rejected":
        raise ApiError(409, detail or "the engine refused the decision", **answer)
    if outcome == "applied":
        async with pool.acquire() as conn:
            answer["req"] = await api_views.req_summary(conn, pipeline, req)
        return json_ok(answer)
    return json_ok(answer, status=202)


async def _publish(request: web.Request, req: str, decision_id: str, data: bytes) -> Any:
    pipeline, settings = pipeline_of(request), settings_of(request)
    nc = context_of(request).rt.nc
    if not nc.is_connected:
        raise ApiError(503, "agogd is not connected to NATS; the action was not published")
    subject = pipeline.subject("decision", req=req)
    key = decision_auth.signing_key(settings.api_token)
    if key is None:  # require_token let the call through: there is a token
        raise ApiError(503, "no API token is set; decisions cannot be signed")
    try:
        return await nc.jetstream().publish(
            subject,
            data,
            timeout=5,
            headers={
                "Nats-Msg-Id": decision_auth.msg_id(key, req, decision_id),
                decision_auth.HEADER: decision_auth.sign(key, data),
            },
        )
    except (NatsError, OSError, TimeoutError) as exc:
        raise ApiError(
            503, f"JetStream did not take the decision ({type(exc).__name__}); nothing changed"
        ) from None
