"""``GET /api/events``: the live event stream, as server-sent events.

agogd subscribes (core NATS, no durable: a live view needs no replay) to
``agog.orchestration.events.>``, ``agog.strategic.escalations.>`` and
``agog.strategic.decisions.>`` while any client is connected (one set of
subscriptions for all of them, ``EventHub``), and writes every message as one
SSE event to each client that wants it. The subscriptions are dropped when
the last client goes away (or agogd stops).

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

Every event is bounded: a string longer than ``FIELD_MAX`` bytes of JSON
(``reason``, a summary, the subject...) keeps its head and ends with
``…[cut: N bytes]`` (N: the UTF-8 bytes left out); past ``EXTRA_FIELDS_MAX``
extra fields, or ``EVENT_MAX`` bytes in all, further fields are left out and
``fields_cut`` says how many. A message is parsed and encoded once, however
many clients see it.

Control events: ``lagged`` (``{"dropped": n}``: a slow client missed n events;
refetch ``/api/reqs``); ``dropped`` (``{"reason": ..., "budget": bytes}``: the
client fell more than ``AGOG_EVENTS_CLIENT_BUDGET`` bytes behind, so agogd let
go of its queue and closes the stream; reconnect and refetch); and ``bye``
(agogd is stopping; an ``EventSource`` reconnects by itself after ``retry``).
A client that does not take its final event within ``DROP_GRACE`` seconds is
disconnected outright.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from orchestrator.api.common import ApiError, context_of, settings_of
from orchestrator.api.views import REWORK_REASONS
from orchestrator.core import strict_json
from orchestrator.core.registry import Pipeline
from orchestrator.engine import store
from orchestrator.inbound.notices import validate_req_id
from orchestrator.runtime.logs import get_logger

log = get_logger("agogd.api.events")


@dataclass(frozen=True)
class Prefixes:
    """The subject prefixes live events come from, from the registry's streams
    (``agog.orchestration.events``, ``.strategic.escalations``, ``.decisions``)."""

    events: str
    escalations: str
    decisions: str

    @classmethod
    def of(cls, pipeline: Pipeline) -> Prefixes:
        req = "REQ-X-1"
        return cls(
            pipeline.stream_prefix("workflow_event", event="x", req=req),
            pipeline.stream_prefix("escalation", target="human"),
            pipeline.stream_prefix("decision", req=req),
        )

    @property
    def subjects(self) -> tuple[str, ...]:
        return (f"{self.events}.>", f"{self.escalations}.>", f"{self.decisions}.>")


QUEUE_MAX = 10_000
DEFAULT_PING = 15.0
RETRY_MS = 3000
# Bounds of one event (see the module docstring): a 9 MiB summary must not
# become a 9 MiB event queued once per client.
FIELD_MAX = 1024
KIND_MAX = 64
KEY_MAX = 64
EXTRA_FIELDS_MAX = 32
EVENT_MAX = 16 * 1024
_MARKER_ROOM = 48  # JSON of "…[cut: 10485760 bytes]", with room to spare
DROP_GRACE = 15.0
# nats-py buffers a subscription's messages until its callback takes them;
# its default (128 MiB each) is too much for a view.
SUB_PENDING_BYTES = 32 * 1024 * 1024

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
CORE = (
    "eventType",
    "subject",
    "req_number",
    "stage",
    "stage_index",
    "agent",
    "attempt",
    "status",
    "reason",
    "timestamp",
)
_NAME = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(eq=False)
class Stream:
    """One connected client: its filter, its queue of SSE-encoded events and
    the bytes they hold (``EVENT_STREAMS_KEY`` lists the live ones)."""

    reqs: frozenset[str] | None
    heartbeats: bool = False
    budget: int = 4 * 1024 * 1024
    transport: Any = None
    queue: collections.deque[bytes] = field(default_factory=collections.deque)
    queued_bytes: int = 0
    lagged: int = 0
    sent: int = 0
    overflow: str | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, kind: str, req: str | None) -> bool:
        if kind == "stage.heartbeat" and not self.heartbeats:
            return False
        return self.reqs is None or req in self.reqs

    def behind(self) -> int:
        """Bytes waiting for this client: its queue and what the socket has not sent."""
        buffered = 0
        if self.transport is not None:
            with contextlib.suppress(Exception):
                buffered = self.transport.get_write_buffer_size()
        return self.queued_bytes + buffered

    def offer(self, data: bytes) -> None:
        """Queue one event; past the byte budget, give up on this client."""
        if self.overflow is not None:
            return
        if self.behind() + len(data) > self.budget:
            self.overflow = (
                f"this client fell more than {self.budget} bytes behind the live events"
                " (AGOG_EVENTS_CLIENT_BUDGET); reconnect and refetch /api/reqs"
            )
            self.queue.clear()  # the memory goes now, not when the client reads
            self.queued_bytes = 0
            self.wake.set()
            self.overflowed.set()
            return
        if len(self.queue) >= QUEUE_MAX:
            self.lagged += 1
        else:
            self.queue.append(data)
            self.queued_bytes += len(data)
        self.wake.set()

    def take(self) -> bytes | None:
        if not self.queue:
            return None
        data = self.queue.popleft()
        self.queued_bytes -= len(data)
        return data


EVENT_STREAMS_KEY = web.AppKey("event_streams", set)


class EventHub:
    """One set of NATS subscriptions shared by every SSE client, made with the
    first client and dropped with the last: each message is parsed, bounded
    and encoded once, then offered to each client that wants it."""

    def __init__(self, clients: set[Stream], prefixes: Prefixes) -> None:
        self.clients, self.prefixes = clients, prefixes
        self._subs: list[Any] = []
        self._lock = asyncio.Lock()

    async def join(self, nc: Any, client: Stream) -> None:
        """Subscribe if nobody is yet (flushed: the server has the interest
        before the client is told it is ready), then add the client."""
        async with self._lock:
            if not self._subs:
                try:
                    for subject in self.prefixes.subjects:
                        self._subs.append(
                            await nc.subscribe(
                                subject,
                                cb=self._on_message,
                                pending_bytes_limit=SUB_PENDING_BYTES,
                            )
                        )
                    await nc.flush(timeout=5)
                except BaseException:
                    await self._unsubscribe()
                    raise
            self.clients.add(client)

    async def leave(self, client: Stream) -> None:
        self.clients.discard(client)
        async with self._lock:
            if not self.clients:
                await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_message(self, msg: Any) -> None:
        if not self.clients:
            return
        event = to_event(msg.subject, msg.data, self.prefixes)
        kind, req = event["eventType"], event["req_number"]
        data: bytes | None = None
        for client in list(self.clients):
            if client.wants(kind, req):
                data = data or sse(kind, event)
                client.offer(data)


HUB_KEY = web.AppKey("event_hub", EventHub)


def _safe_req(value: object) -> str | None:
    try:
        return validate_req_id(value)
    except ValueError:
        return None


def event_type(subject: str, payload: dict[str, Any], prefixes: Prefixes) -> str:
    if subject.startswith(prefixes.escalations + "."):
        return "escalation"
    if subject.startswith(prefixes.decisions + "."):
        return "decision"
    declared = payload.get("eventType")
    if isinstance(declared, str) and declared:
        return _NAME.sub("_", declared[:KIND_MAX])
    tokens = subject.removeprefix(prefixes.events + ".").split(".")
    return _NAME.sub("_", ".".join(tokens[:2]))[:KIND_MAX]


def _json_width(ch: str) -> int:
    """Bytes one character takes in ``json.dumps`` (ASCII-only) output."""
    code = ord(ch)
    if ch in '"\\\b\f\n\r\t':
        return 2
    if 0x20 <= code < 0x7F:
        return 1
    return 6 if code <= 0xFFFF else 12


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def cut(text: str, limit: int = FIELD_MAX) -> str:
    """``text``, or its head and ``…[cut: N bytes]`` when its JSON would take
    more than ``limit`` bytes (N: the UTF-8 bytes left out)."""
    if len(text) * 12 <= limit:
        return text  # fits however it is escaped
    room, size, kept = limit - _MARKER_ROOM, 0, 0
    for ch in text[:limit]:  # no character takes less than one byte
        size += _json_width(ch)
        if size > limit:
            break
        if size <= room:
            kept += 1
    else:
        if len(text) <= limit:
            return text  # the whole text fits after all
    head = text[:kept]
    return f"{head}…[cut: {_utf8_len(text) - _utf8_len(head)} bytes]"


def _bounded(value: Any) -> Any:
    if isinstance(value, str):
        return cut(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1 << 63:
        return cut(str(value))  # a 4,000-digit integer is text, and long
    return value


def _width(value: Any) -> int:
    return len(json.dumps(value, default=str))


def to_event(subject: str, data: bytes, prefixes: Prefixes) -> dict[str, Any]:
    """One NATS message as the SSE event's data (see the module docstring),
    every field bounded so that the event fits in ``EVENT_MAX`` bytes."""
    try:
        # strict_json: deep nesting is a ValueError, not a RecursionError that
        # escaped this NATS callback and lost the event (and any NaN is refused).
        payload = strict_json.loads(data) if data else {}
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    kind = event_type(subject, payload, prefixes)
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
    for key, value in event.items():
        if value is None or isinstance(value, str | int | float | bool):
            event[key] = _bounded(value)
        elif _width(value) > FIELD_MAX:  # a big object where a scalar belongs
            event[key] = cut(json.dumps(value, default=str))
    size, left_out = _width(event), 0
    for key, value in payload.items():
        if key in event or key in _SKIP:
            continue
        if not (value is None or isinstance(value, str | int | float | bool)):
            continue  # lists and objects are left out, as documented
        if len(key) > KEY_MAX or len(event) >= len(CORE) + EXTRA_FIELDS_MAX:
            left_out += 1
            continue
        value = _bounded(value)
        extra = _width(key) + _width(value) + 2
        if size + extra > EVENT_MAX:
            left_out += 1
            continue
        event[key] = value
        size += extra
    if left_out:
        event["fields_cut"] = left_out
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
    if not 1 <= ping <= 60:  # NaN fails this too
        raise ApiError(400, "ping must be between 1 and 60 seconds")
    return reqs, heartbeats, ping


def _closing(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _pump(
    request: web.Request, response: web.StreamResponse, stream: Stream, ping: float
) -> None:
    """Write the client's queue out, with keep-alives, until agogd stops, the
    client leaves or falls past its budget (``_drop`` then has the last word:
    the overflow is checked right before every write)."""
    stopping = context_of(request).rt.stopping
    last_write = time.monotonic()
    while not stopping.is_set() and not _closing(request):
        data = stream.take()
        if data is None and not stream.lagged and stream.overflow is None:
            stream.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stream.wake.wait()
            data = stream.take()
        if stream.overflow is not None:
            return
        if stream.lagged:
            lagged, stream.lagged = stream.lagged, 0
            await response.write(sse("lagged", {"dropped": lagged}))
            if stream.overflow is not None:
                return
        if data is not None:
            await response.write(data)
            stream.sent += 1
            last_write = time.monotonic()
        elif time.monotonic() - last_write >= ping:
            await response.write(f": keep-alive {store.now_iso()}\n\n".encode())
            last_write = time.monotonic()
    if stopping.is_set() and not _closing(request) and stream.overflow is None:
        await response.write(sse("bye", {"reason": "agogd is stopping"}))


def _peer(request: web.Request) -> str:
    peer = None
    if request.transport is not None:
        peer = request.transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(request.remote)


async def _drop(request: web.Request, response: web.StreamResponse, stream: Stream) -> None:
    """Tell an over-budget client why (its last event), then end the stream.
    A client that does not take even that within DROP_GRACE is cut off: the
    abort also ends the pump's write, which may be waiting on the same socket."""
    log.warning(
        "events.client_dropped", peer=_peer(request), budget=stream.budget, sent=stream.sent
    )
    transport = request.transport
    if transport is None:
        return
    cutoff = asyncio.get_running_loop().call_later(DROP_GRACE, transport.abort)
    try:
        await response.write(sse("dropped", {"reason": stream.overflow, "budget": stream.budget}))
        await response.write_eof()
    except ConnectionError:
        cutoff.cancel()
    # Else the cutoff stays armed: closing waits for the last bytes to leave,
    # and a client that stops reading now must not keep them for ever.


async def events(request: web.Request) -> web.StreamResponse:
    """Stream live events until the client leaves, falls behind its byte
    budget, or agogd stops."""
    nc = context_of(request).rt.nc
    reqs, heartbeats, ping = _options(request)
    if not nc.is_connected:
        raise ApiError(503, "agogd is not connected to NATS")
    hub = request.app[HUB_KEY]
    stream = Stream(
        reqs,
        heartbeats=heartbeats,
        budget=settings_of(request).events_client_budget,
        transport=request.transport,
    )
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    response.force_close()  # the connection of an ended stream is not reused
    pump: asyncio.Task[None] | None = None
    try:
        await hub.join(nc, stream)
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        hello = {"subjects": list(hub.prefixes.subjects), "req": sorted(reqs) if reqs else None}
        await response.write(sse("ready", {**hello, "heartbeats": heartbeats}))
        pump = asyncio.create_task(_pump(request, response, stream, ping))
        # The pump may sit in a write the client never reads: the overflow
        # must not wait for it.
        over = asyncio.create_task(stream.overflowed.wait())
        try:
            await asyncio.wait({pump, over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            over.cancel()
        if stream.overflow is not None:
            await _drop(request, response, stream)
        await asyncio.wait({pump})  # returns at its next step, or the cutoff ends it
        pump.result()
    except ConnectionError:
        pass  # the client went away mid-write
    finally:
        if pump is not None and not pump.done():
            pump.cancel()
            await asyncio.wait({pump})
        if pump is not None and pump.done() and not pump.cancelled():
            pump.exception()  # retrieved: a reset client is no news
        stream.queue.clear()
        await hub.leave(stream)
    return response


def install(app: web.Application, pipeline: Pipeline) -> None:
    streams: set[Stream] = set()
    app[EVENT_STREAMS_KEY] = streams
    app[HUB_KEY] = EventHub(streams, Prefixes.of(pipeline))
    app.router.add_get("/api/events", events)
