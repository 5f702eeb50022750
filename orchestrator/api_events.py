"""``GET /api/events``: the live event stream, as server-sent events.

agogd subscribes (core NATS, no durable: a live view needs no replay) to
``agog.orchestration.events.>``, ``agog.strategic.escalations.>`` and
``agog.strategic.decisions.>`` for each client, and writes every message as
one SSE event. The subscription is dropped as soon as the client goes away
(or agogd stops).

Query parameters:

- ``req=REQ-1[,REQ-2]``: only these REQs' events (400 for an unsafe id);
- ``heartbeats=1``: include agents' ``stage.heartbeat`` events (left out by
  default: they are noise on a board);
- ``ping=<seconds>``: the keep-alive period (1 to 60, default 15);
- ``token=<token>``: the API token, when reads need it (``AGOG_API_READ_AUTH``)
  and the client cannot send an ``Authorization`` header (``EventSource``).

The stream::

    retry: 3000

    event: ready
    data: {"subjects": [...], "req": ["REQ-1"] | null, "heartbeats": false}

    event: stage.completed
    data: {"eventType": "stage.completed", "subject": "agog.orchestration.events.stage.com
    pleted.cynthia.REQ-1", "req_number": "REQ-1", "stage": "Research", "stage_index": 0,
    "agent": "cynthia", "attempt": 1, "status": "done", "reason": null, "timestamp": "2026-0
    5-01T10:00:00.123+00:00"}       <- one line on the wire

    : keep-alive 2026-05-01T10:00:15+00:00

``event`` is the event type and ``data`` one line of JSON that always has
``eventType``, ``subject``, ``req_number`` (null for events about no REQ),
``stage`` (the stage name), ``stage_index``, ``agent``, ``attempt``,
``status``, ``reason`` and ``timestamp``; any other scalar field of the
message follows (lists and objects such as an assignment's instructions and
previous stages are left out). ``status`` says where the event leaves things:

===========================================  ====================================
eventType                                    status
===========================================  ====================================
``stage.started`` (an assignment)            ``running``
``stage.heartbeat``                          ``running``
``stage.completed``                          ``done``
``stage.failed``                             ``rejected`` when a gate sent the
                                             work back (reason "critique
                                             rejected" or "QA failed"), else
                                             ``failed``
``stage.blocked``                            ``blocked``
``workflow.started``, ``workflow.resumed``   ``IN_PROGRESS``
``workflow.completed``                       ``DEPLOYED`` or ``COMPLETE`` (its
                                             ``reason``), else ``finished``
``workflow.cancelled``                       ``CANCELLED``
``escalation`` (``priority``, ``reason``)    ``ESCALATED``
``decision`` (``decision``, ``reasoning``)   ``decided``
``message.rejected``                         ``rejected``
``infra.*``, ``infra_report.*``              the message's own ``status``, if any
===========================================  ====================================

Two control events may appear: ``lagged`` (``{"dropped": n}``: a slow client
missed n events; refetch ``/api/reqs``) and ``bye`` (agogd is stopping; an
``EventSource`` reconnects by itself after ``retry``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from orchestrator import store, strict_json
from orchestrator.api_common import ApiError, daemon_of
from orchestrator.api_views import REWORK_REASONS
from orchestrator.notices import validate_req_id

EVENTS = "agog.orchestration.events"
ESCALATIONS = "agog.strategic.escalations"
DECISIONS = "agog.strategic.decisions"
SUBJECTS = (f"{EVENTS}.>", f"{ESCALATIONS}.>", f"{DECISIONS}.>")
QUEUE_MAX = 10_000
DEFAULT_PING = 15.0
RETRY_MS = 3000

STATUS_OF = {
    "stage.started": "running",
    "stage.heartbeat": "running",
    "stage.completed": "done",
    "stage.failed": "failed",
    "stage.blocked": "blocked",
    "workflow.started": "IN_PROGRESS",
    "workflow.resumed": "IN_PROGRESS",
    "workflow.completed": "finished",
    "workflow.cancelled": "CANCELLED",
    "escalation": "ESCALATED",
    "decision": "decided",
    "message.rejected": "rejected",
}
_SKIP = {"reqNumber", "stageIndex", "agentId", "payload_excerpt"}
_NAME = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(eq=False)
class Stream:
    """One connected client, for bookkeeping (``EVENT_STREAMS_KEY``)."""

    reqs: frozenset[str] | None
    subscriptions: list[Any] = field(default_factory=list)
    sent: int = 0


EVENT_STREAMS_KEY = web.AppKey("event_streams", set)


def _safe_req(value: object) -> str | None:
    try:
        return validate_req_id(value)
    except ValueError:
        return None


def event_type(subject: str, payload: dict[str, Any]) -> str:
    if subject.startswith(ESCALATIONS + "."):
        return "escalation"
    if subject.startswith(DECISIONS + "."):
        return "decision"
    declared = payload.get("eventType")
    if isinstance(declared, str) and declared:
        return _NAME.sub("_", declared)
    tokens = subject.removeprefix(EVENTS + ".").split(".")
    return _NAME.sub("_", ".".join(tokens[:2]))


def to_event(subject: str, data: bytes) -> dict[str, Any]:
    """One NATS message as the SSE event's data (see the module docstring)."""
    try:
        # strict_json: deep nesting is a ValueError, not a RecursionError that
        # escaped this NATS callback and lost the event (and any NaN is refused).
        payload = strict_json.loads(data) if data else {}
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    kind = event_type(subject, payload)
    tokens = subject.split(".")
    req = _safe_req(payload.get("req_number")) or _safe_req(payload.get("reqNumber"))
    if req is None and (kind.startswith(("stage.", "workflow.")) or kind in STATUS_OF):
        req = _safe_req(tokens[-1])
    agent = payload.get("agent") or payload.get("agentId")
    if agent is None and kind == "stage.heartbeat" and len(tokens) >= 2:
        agent = tokens[-2]
    event: dict[str, Any] = {
        "eventType": kind,
        "subject": subject,
        "req_number": req,
        "stage": payload.get("stage"),
        "stage_index": payload.get("stageIndex", payload.get("stage_index")),
        "agent": agent,
        "attempt": payload.get("attempt"),
        "status": STATUS_OF.get(kind, payload.get("status")),
        "reason": payload.get("reason"),
        "timestamp": payload.get("timestamp") or store.now_iso(),
    }
    if kind == "stage.failed" and event["reason"] in REWORK_REASONS:
        event["status"] = "rejected"
    if kind == "workflow.completed" and event["reason"] in ("COMPLETE", "DEPLOYED"):
        event["status"] = event["reason"]
    if kind == "escalation" and event["stage_index"] is None and isinstance(event["stage"], int):
        event["stage_index"], event["stage"] = event["stage"], None
    for key, value in payload.items():
        if key in event or key in _SKIP:
            continue
        if value is None or isinstance(value, str | int | float | bool):
            event[key] = value
    return event


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One SSE event: ``event: <name>`` and one ``data:`` line of JSON."""
    body = json.dumps(data, default=str, separators=(",", ":"))
    return f"event: {_NAME.sub('_', event)}\ndata: {body}\n\n".encode()


def _options(request: web.Request) -> tuple[frozenset[str] | None, bool, float]:
    reqs: frozenset[str] | None = None
    raw = ",".join(request.query.getall("req", []))
    if raw.strip():
        try:
            reqs = frozenset(validate_req_id(r.strip()) for r in raw.split(",") if r.strip())
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    heartbeats = request.query.get("heartbeats", "").lower() in ("1", "true", "yes")
    raw_ping = request.query.get("ping", str(DEFAULT_PING))
    try:
        ping = float(raw_ping)
    except ValueError:
        raise ApiError(400, f"ping={raw_ping!r} is not a number of seconds") from None
    if not 1 <= ping <= 60:
        raise ApiError(400, "ping must be between 1 and 60 seconds")
    return reqs, heartbeats, ping


def _closing(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def events(request: web.Request) -> web.StreamResponse:
    """Stream live events until the client leaves or agogd stops."""
    daemon = daemon_of(request)
    reqs, heartbeats, ping = _options(request)
    nc = daemon.nc
    if nc is None or not nc.is_connected:
        raise ApiError(503, "agogd is not connected to NATS")
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
    stream = Stream(reqs)
    dropped = 0

    async def on_message(msg: Any) -> None:
        nonlocal dropped
        event = to_event(msg.subject, msg.data)
        if event["eventType"] == "stage.heartbeat" and not heartbeats:
            return
        if reqs is not None and event["req_number"] not in reqs:
            return
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            dropped += 1

    live: set[Stream] = request.app[EVENT_STREAMS_KEY]
    live.add(stream)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    try:
        for subject in SUBJECTS:
            stream.subscriptions.append(await nc.subscribe(subject, cb=on_message))
        await nc.flush(timeout=5)
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        hello = {"subjects": list(SUBJECTS), "req": sorted(reqs) if reqs else None}
        await response.write(sse("ready", {**hello, "heartbeats": heartbeats}))
        last_write = time.monotonic()
        while not daemon.stopping.is_set() and not _closing(request):
            try:
                event: dict[str, Any] | None = await asyncio.wait_for(queue.get(), 0.5)
            except TimeoutError:
                event = None
            if dropped:
                await response.write(sse("lagged", {"dropped": dropped}))
                dropped = 0
            if event is not None:
                await response.write(sse(event["eventType"], event))
                stream.sent += 1
                last_write = time.monotonic()
            elif time.monotonic() - last_write >= ping:
                await response.write(f": keep-alive {store.now_iso()}\n\n".encode())
                last_write = time.monotonic()
        if daemon.stopping.is_set() and not _closing(request):
            await response.write(sse("bye", {"reason": "agogd is stopping"}))
    except ConnectionResetError:
        pass  # the client went away mid-write
    finally:
        for sub in stream.subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        live.discard(stream)
    return response


def install(app: web.Application) -> None:
    app[EVENT_STREAMS_KEY] = set()
    app.router.add_get("/api/events", events)
