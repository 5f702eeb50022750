"""The durable workflow engine: JetStream consumers, dispatcher and deadlines.

Each message is handled in one Postgres transaction: claim its stream
sequence (a redelivery is a no-op), validate it, lock the REQ's row, apply
the pure transition, write the effects and the outbox. The message is acked
only after that commit. Bad input is rejected once: recorded, published as a
rejection event, logged, and term'd, so it is never redelivered in a loop.
Reading the messages is pure, in ``orchestrator.inbound.messages``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import asyncpg
from nats.aio.msg import Msg

from orchestrator.core import decision_auth, strict_json
from orchestrator.core.registry import Pipeline
from orchestrator.core.workflow import (
    DecisionRejected,
    Ignored,
    Start,
    TimedOut,
    Workflow,
    apply,
)
from orchestrator.engine import store
from orchestrator.engine.effects import EffectRunner, deployment
from orchestrator.engine.outbox import relay
from orchestrator.inbound import intake
from orchestrator.inbound.messages import (
    Rejected,
    attempt_of,
    completed_event,
    deliverable_req,
    last_token_req,
    parse_decision,
    safe_req,
)
from orchestrator.inbound.notices import (
    CompletionNotice,
    NoticeError,
    notice_digest,
    parse_deliverable_subject,
    parse_notice,
    validate_req_id,
)
from orchestrator.memory import capture
from orchestrator.runtime import metrics
from orchestrator.runtime.batch import BatchedConnection
from orchestrator.runtime.logs import bound_context, get_logger
from orchestrator.runtime.pull import PullFeed

if TYPE_CHECKING:
    from orchestrator.runtime.daemon import Daemon

log = get_logger("agogd.engine")

Outcome = Literal["ack", "term", "nak"]
# A batch's queued writes are sent early past this many parameters (the
# protocol allows 32,767 per statement).
FLUSH_ARGS = 8000
DISPATCH_LOCK = 0x61676F68  # serializes admission of PENDING REQs across replicas
DISPATCH_RETRY = 0.05  # seconds before a replica that found the admission busy looks again


@dataclass(frozen=True)
class Handler:
    """How one durable consumer's messages are applied."""

    consumer: str
    # The message's work, inside the batch's transaction; returns its outcome.
    body: Callable[[BatchedConnection, Msg], Awaitable[str]]
    # The REQ whose workflow row the body will lock, if it can be told cheaply.
    req_of: Callable[[Msg], str | None] = lambda _msg: None
    # Record the stream sequence, so a redelivery is a no-op.
    claim: bool = True


class Engine:
    """Owns the engine's handlers; the daemon runs its services."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.pipeline: Pipeline = daemon.pipeline
        self.settings = daemon.settings
        # Deliverable memory (orchestrator.memory): rows and recall, no network call.
        self.memory = getattr(daemon, "memory", None)
        self.wake_dispatcher = asyncio.Event()
        # The registry's consumers this engine reads (the rest are other services').
        self.consumers: list[str] = []
        # What the API signs its decisions with (orchestrator.core.decision_auth).
        self.signing_key = decision_auth.signing_key(daemon.settings.api_token)

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.daemon.pool is not None
        return self.daemon.pool

    # --- message plumbing ----------------------------------------------------
    async def _reject(self, conn: store.Conn, msg: Msg, err: Rejected) -> None:
        meta = msg.metadata
        stream, seq = meta.stream, meta.sequence.stream
        await store.settle_message(conn, stream, seq, "rejected", f"{err.reason}: {err.message}")
        metrics.tally_of(conn).inc(metrics.MESSAGES_REJECTED, err.reason)
        await store.record_event(
            conn,
            err.req,
            "message.rejected",
            reason=f"{err.reason}: {err.message}",
            detail={"subject": msg.subject, "stream": stream, "seq": seq},
        )
        # jsonb cannot hold NUL: one in a bad payload failed the rejection's own
        # write, and the message was redelivered in a loop instead.
        excerpt = msg.data[:2048].decode("utf-8", "replace").replace("\x00", "\ufffd")
        await store.enqueue(
            conn,
            self.pipeline.subjects["rejection"],
            {
                "eventType": "message.rejected",
                "reason_code": err.reason,
                "reason": err.message,
                "subject": msg.subject,
                "stream": stream,
                "stream_seq": seq,
                "req_number": err.req,
                "timestamp": store.now_iso(),
                "payload_excerpt": excerpt,
            },
            f"reject:{stream}:{seq}",
        )
        log.warning(
            "message.rejected",
            msg_subject=msg.subject,
            stream=stream,
            seq=seq,
            reason_code=err.reason,
            reason=err.message,
            req_number=err.req,
        )

    async def handle_batch(self, msgs: list[Msg], handler: Handler) -> list[Outcome]:
        """Apply a fetched batch in one transaction, so a busy pipeline pays one
        commit and a handful of round trips per batch rather than per message.

        If the batch fails for any reason but a rejection (a deadlock with a
        replica, a bug, Postgres away), it is rolled back and each message is
        retried in a transaction of its own, so only the bad one is held back.
        """
        for msg in msgs:
            # nats-server takes a NUL in a subject, Postgres text does not: its
            # claim failed every try (a redelivery loop). Read as U+FFFD instead.
            msg.subject = msg.subject.replace("\x00", "\ufffd")
        try:
            return await self._batch_tx(msgs, handler)
        except Exception as exc:
            if len(msgs) == 1:
                _log_failure(msgs[0], exc)
                return ["nak"]
            log.warning("batch.split", consumer=handler.consumer, size=len(msgs), error=repr(exc))
        outcomes: list[Outcome] = []
        for msg in msgs:
            try:
                outcomes.extend(await self._batch_tx([msg], handler))
            except Exception as exc:
                _log_failure(msg, exc)
                outcomes.append("nak")
        return outcomes

    async def _batch_tx(self, msgs: list[Msg], handler: Handler) -> list[Outcome]:
        keys = [(m.metadata.stream, m.metadata.sequence.stream) for m in msgs]
        async with self.pool.acquire() as raw, raw.transaction():
            conn = BatchedConnection(raw)
            conn.outbox = []  # published right after commit: no relay hop
            if self.memory is not None:  # new memories wake this replica's embedder
                conn.local_channels = self.memory.local_channels
            fresh = set(keys)
            if handler.claim:
                claims = [
                    (*key, handler.consumer, m.subject) for key, m in zip(keys, msgs, strict=True)
                ]
                fresh = await store.claim_messages(conn, claims)
            # Lock every REQ the batch names at once, in REQ order, so two
            # replicas' batches cannot deadlock on each other.
            reqs = {r for m in msgs if (r := handler.req_of(m)) is not None}
            if reqs:
                conn.prefetched = await store.lock_workflows(conn, sorted(reqs))
            outcomes: list[Outcome] = []
            for key, msg in zip(keys, msgs, strict=True):
                if key not in fresh:
                    log.info(
                        "message.duplicate", msg_subject=msg.subject, stream=key[0], seq=key[1]
                    )
                    outcomes.append("ack")
                    continue
                fresh.discard(key)  # the same message twice in one fetch
                try:
                    # Bodies raise Rejected before they write anything, so the
                    # rejection record is the message's only effect.
                    outcome = await handler.body(conn, msg)
                except Rejected as err:
                    await self._reject(conn, msg, err)
                    outcomes.append("term")
                    continue
                if handler.claim:
                    await store.settle_message(conn, *key, outcome)
                outcomes.append("ack")
                if conn.queued_args > FLUSH_ARGS:
                    await conn.flush()
            await conn.flush()
        conn.tally.apply()  # committed: count it
        if conn.wake_dispatcher:
            self.wake_dispatcher.set()
        if conn.woken and self.memory is not None:
            self.memory.wake()
        if conn.outbox and self.daemon.publisher is not None:
            await self.daemon.publisher.publish(conn.outbox)
        return outcomes

    # --- deliverables ----------------------------------------------------------
    async def deliverable(self, conn: BatchedConnection, msg: Msg) -> str:
        parts = parse_deliverable_subject(msg.subject)
        subject_agent, subject_req = (parts[0], parts[2]) if parts else (None, None)
        try:
            notice = parse_notice(
                msg.data,
                known_agents=self.pipeline.agents,
                max_bytes=self.settings.max_message_bytes,
                subject_agent=subject_agent,
                subject_req=subject_req,
            )
        except NoticeError as exc:
            raise Rejected(exc.reason, exc.message, safe_req(subject_req)) from None
        with bound_context(
            req_number=notice.req_number, agent=notice.agent, msg_subject=msg.subject
        ):
            stage = self.pipeline.stage_for_agent(notice.agent)
            if stage is None:  # a reporter (Miki): kept as history, no workflow
                await store.record_event(
                    conn, notice.req_number, "report", agent=notice.agent, detail=notice.published
                )
                return "report"
            locked = await store.lock_workflow(conn, notice.req_number)
            if locked is None:
                raise Rejected(
                    "unknown_req", f"no workflow for {notice.req_number}", notice.req_number
                )
            wf = locked.wf
            meta = msg.metadata
            normalized = _dump(notice)
            await store.add_history(
                conn,
                wf.req,
                stage.agent,
                stage.index,
                notice.attempt,
                msg.subject,
                meta.stream,
                meta.sequence.stream,
                normalized,
            )
            if notice.status == "IN_PROGRESS":
                await store.extend_deadline(
                    conn, wf.req, stage.index, notice.attempt, stage.timeout
                )
                return "heartbeat"
            digest = notice_digest(normalized)
            stored = getattr(meta, "timestamp", None)  # when JetStream stored it (its clock)
            event = completed_event(
                stage,
                notice,
                published_at=stored.timestamp() if stored is not None else None,
                digest=digest,
                history=locked.marks.get(stage.index, ()),
                clock_margin=self.settings.notice_clock_margin,
            )
            new, effects = apply(self.pipeline, wf, event)
            if any(isinstance(e, Ignored) for e in effects):
                await EffectRunner(self.pipeline, conn, wf, about=stage).run(effects)
                return "ignored"
            await store.upsert_cache(
                conn, wf.req, stage.agent, stage.index, notice.published, normalized
            )
            locked.delivered[stage.index] = {
                "stage": stage.index,
                "agent": stage.agent,
                "deliverable": normalized,
            }
            if stage.index in locked.ages:
                conn.tally.observe(metrics.STAGE_DURATION, locked.ages[stage.index], stage.agent)
            await self._commit(conn, new, effects, locked, normalized, digest)
            if self.memory is not None:
                await self.memory.bind(locked.title).notice(
                    conn,
                    wf.req,
                    stage.agent,
                    stage.name,
                    stage.index,
                    stage.gate,
                    normalized,
                    capture.closed_outcome(effects, stage.index),
                )
            return "applied"

    async def _commit(
        self,
        conn: BatchedConnection,
        new: Workflow,
        effects: list[Any],
        locked: store.Locked,
        deliverable: dict[str, Any] | None = None,
        digest: str | None = None,
    ) -> None:
        await store.save_workflow(conn, new, deployment(effects))
        memory = self.memory.bind(locked.title, locked.recalled) if self.memory else None
        runner = EffectRunner(
            self.pipeline,
            conn,
            new,
            locked.title,
            deliverable,
            locked.delivered,
            memory,
            digest=digest,
        )
        await runner.run(effects)
        if new.status != "IN_PROGRESS":
            conn.wake_dispatcher = True  # a slot may have opened, once this commits

    # --- intake -----------------------------------------------------------------
    async def intake(self, conn: BatchedConnection, msg: Msg) -> str:
        try:
            req = intake.parse_requirement(msg.data, self.settings.max_message_bytes)
        except intake.IntakeError as exc:
            raise Rejected(exc.reason, exc.message) from None
        await self._check_quota(conn, req)
        created = await intake.submit(conn, req, "nats", self.memory)
        log.info(
            "intake.received",
            req_number=req.req_number,
            created=created,
            msg_subject=msg.subject,
        )
        conn.wake_dispatcher = True
        return "created" if created else "duplicate"

    async def _check_quota(self, conn: BatchedConnection, req: intake.Requirement) -> None:
        """A flood of P2/P3 intake stops at AGOG_INTAKE_MAX_PENDING waiting REQs:
        further ones are refused, each with its reason. P0 and P1 are always
        taken, and dispatch goes by priority, so a flood never starves them."""
        limit = self.settings.intake_max_pending
        if limit <= 0 or req.priority < 2:
            return
        waiting = await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM workflow_state WHERE status = 'PENDING'"
            " AND priority >= 2 LIMIT $1) AS w",
            limit,
        )
        if waiting < limit:
            return
        if await conn.fetchval(
            "SELECT 1 FROM workflow_state WHERE req_number = $1", req.req_number
        ):
            return  # a duplicate: answered as one, not refused
        raise Rejected(
            "intake_quota",
            f"{limit} P2/P3 REQs already wait (AGOG_INTAKE_MAX_PENDING); this"
            f" {intake.priority_label(req.priority)} intake is refused, P0 and P1 are still taken",
            req.req_number,
        )

    # --- strategic decisions ---------------------------------------------------
    async def decision(self, conn: BatchedConnection, msg: Msg) -> str:
        subject_req = msg.subject.rsplit(".", 1)[-1]
        decision_msg = parse_decision(
            msg.data, subject_req, self.pipeline, self.settings.max_message_bytes
        )
        req = decision_msg.req_number
        locked = await store.lock_workflow(conn, req)
        if locked is None:
            raise Rejected("unknown_req", f"no workflow for {req}", req)
        try:
            new, effects = apply(self.pipeline, locked.wf, decision_msg.to_event())
        except DecisionRejected as exc:
            raise Rejected("decision_not_applicable", str(exc), req) from None
        # The document as parsed, not the raw bytes: a BOM, UTF-16 or a
        # duplicate key hiding a NUL passed the parser but not jsonb, and the
        # decision was redelivered in a loop.
        payload = strict_json.loads(msg.data)
        if not decision_auth.is_signed(self.signing_key, msg.headers, msg.data):
            payload, claimed = decision_auth.unclaimed(payload)
            if payload.get("claimed_source") == "api" or "decision_id" in claimed:
                log.warning(
                    "decision.unsigned_claim",
                    req_number=req,
                    claimed=claimed,
                    note="only agogd's API may set source and decision_id: kept as claimed_*",
                )
        await conn.execute(
            "INSERT INTO strategic_decisions (req_number, decision, reasoning, payload,"
            " applied_at) VALUES ($1, $2, $3, $4::jsonb, now())",
            req,
            decision_msg.decision,
            decision_msg.reasoning,
            store.dumps(payload),
        )
        await self._commit(conn, new, effects, locked)
        resolution = decision_msg.decision
        if decision_msg.reasoning:
            resolution += f": {decision_msg.reasoning}"
        await store.resolve_escalations(conn, req, resolution)
        if self.memory is not None:
            await self.memory.bind(locked.title).decision(
                conn,
                req,
                decision_msg.decision,
                decision_msg.reasoning,
                decision_msg.instructions,
                locked.wf.status,
                locked.wf.stage,
            )
        log.info("decision.applied", req_number=req, decision=decision_msg.decision)
        return "applied"

    # --- heartbeats ---------------------------------------------------------------
    async def heartbeat(self, conn: BatchedConnection, msg: Msg) -> str:
        tokens = msg.subject.split(".")
        agent, req = (tokens[-2], tokens[-1]) if len(tokens) >= 2 else ("", "")
        stage = self.pipeline.stage_for_agent(agent)
        if stage is None:
            raise Rejected("unknown_agent", f"heartbeat from unknown agent {agent!r}")
        try:
            validate_req_id(req)
        except ValueError as exc:
            raise Rejected("invalid_req_id", str(exc)) from None
        attempt = attempt_of(msg.data)
        extended = await store.extend_deadline(conn, req, stage.index, attempt, stage.timeout)
        log.debug("heartbeat", req_number=req, agent=agent, extended=extended)
        return "extended" if extended else "no-running-attempt"

    # --- dispatcher and deadlines --------------------------------------------------
    async def dispatch_pending(self) -> int:
        """Admit PENDING REQs by priority while fewer than max_in_flight run.

        One replica admits at a time. The others do not queue up behind it
        (each waiting would hold a connection and a transaction): they look
        again shortly, since the pass under way may have counted the REQs in
        flight before the one that woke them finished.
        """
        async with self.pool.acquire() as raw, raw.transaction():
            conn = BatchedConnection(raw)
            if not await raw.fetchval("SELECT pg_try_advisory_xact_lock($1)", DISPATCH_LOCK):
                asyncio.get_running_loop().call_later(DISPATCH_RETRY, self.wake_dispatcher.set)
                return 0
            running = await conn.fetchval(
                "SELECT count(*) FROM workflow_state WHERE status = 'IN_PROGRESS'"
            )
            free = self.settings.max_in_flight - running
            if free <= 0:
                return 0
            rows = await conn.fetch(
                "SELECT req_number FROM workflow_state WHERE status = 'PENDING'"
                " ORDER BY priority, created_at, req_number LIMIT $1",
                free,
            )
            for row in rows:
                locked = await store.lock_workflow(conn, row["req_number"])
                assert locked is not None
                new, effects = apply(self.pipeline, locked.wf, Start())
                await self._commit(conn, new, effects, locked)
            await conn.flush()
        conn.tally.apply()
        return len(rows)

    async def expire_deadlines(self) -> int:
        """Apply TimedOut to every RUNNING attempt past its deadline."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT req_number, stage, attempt FROM stage_attempts WHERE status = 'RUNNING'"
                " AND deadline < now() ORDER BY deadline LIMIT 100"
            )
        expired = 0
        for row in rows:
            async with self.pool.acquire() as raw, raw.transaction():
                conn = BatchedConnection(raw)
                locked = await store.lock_workflow(conn, row["req_number"])
                still = await conn.fetchval(
                    "SELECT 1 FROM stage_attempts WHERE req_number = $1 AND stage = $2"
                    " AND attempt = $3 AND status = 'RUNNING' AND deadline < now()",
                    row["req_number"],
                    row["stage"],
                    row["attempt"],
                )
                if locked is None or not still:
                    continue  # a heartbeat or a notice got there first
                wf = locked.wf
                expired += 1
                new, effects = apply(self.pipeline, wf, TimedOut(row["stage"], row["attempt"]))
                if any(isinstance(e, Ignored) for e in effects):
                    await store.close_attempt(
                        conn,
                        wf.req,
                        row["stage"],
                        row["attempt"],
                        "TIMED_OUT",
                        "deadline passed (stale attempt)",
                    )
                await self._commit(conn, new, effects, locked)
                await conn.flush()
            conn.tally.apply()
            if conn.wake_dispatcher:
                self.wake_dispatcher.set()
        return expired


def _dump(notice: CompletionNotice) -> dict[str, Any]:
    return notice.model_dump(mode="json")


# --- services -------------------------------------------------------------------
async def consume(daemon: Daemon, stream: str, engine: Engine, handler: Handler) -> None:
    """Apply one durable consumer's messages until the daemon stops; each batch
    is acked (or term'd) only after its transaction has committed."""
    assert daemon.nc is not None
    feed = await PullFeed(
        daemon.nc, stream, handler.consumer, daemon.settings.consumer_batch
    ).start()
    name = f"consumer.{stream}"
    try:
        while not daemon.stopping.is_set():
            msgs = await feed.next_batch(timeout=1)
            feed.report(daemon.states, name)
            if not msgs:
                continue
            daemon.states.set(name, "consuming", "debug")
            outcomes = await engine.handle_batch(msgs, handler)
            for msg, outcome in zip(msgs, outcomes, strict=True):
                with contextlib.suppress(Exception):
                    if outcome == "term":
                        await msg.term()
                    elif outcome == "nak":  # Postgres away, a bug: keep it, retry later
                        await msg.nak(delay=2)
                    else:
                        await msg.ack()
    finally:
        await feed.stop()


def _log_failure(msg: Msg, exc: Exception) -> None:
    log.error(
        "message.failed",
        msg_subject=msg.subject,
        error=repr(exc),
        delivered=msg.metadata.num_delivered,
    )


async def _periodic(
    daemon: Daemon,
    interval: float,
    work: Callable[[], Awaitable[int]],
    name: str,
    wake: asyncio.Event | None = None,
) -> None:
    while not daemon.stopping.is_set():
        if wake is not None:
            wake.clear()  # before the work, so a wake-up during it is not lost
        try:
            while await work():
                pass
            daemon.states.set(name, "ok", "debug")
        except Exception as exc:  # keep going: one bad row must not stop dispatch
            daemon.states.set(name, "failing", "warning", cause=type(exc).__name__, error=repr(exc))
        waiters = [asyncio.ensure_future(daemon.stopping.wait())]
        if wake is not None:
            waiters.append(asyncio.ensure_future(wake.wait()))
        _, pending = await asyncio.wait(
            waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()


def install(daemon: Daemon) -> Engine:
    """Register the engine's services on a daemon."""
    engine = Engine(daemon)
    pipeline = daemon.pipeline
    handlers = {
        h.consumer: h
        for h in (
            Handler("agogd_deliverables", engine.deliverable, deliverable_req),
            Handler("agogd_intake", engine.intake),
            Handler("agogd_decisions", engine.decision, last_token_req),
            Handler("agogd_heartbeats", engine.heartbeat, claim=False),
        )
    }
    for consumer in pipeline.consumers:
        handler = handlers.get(consumer.name)
        if handler is None:
            continue  # another service's (checked at start: Daemon, every consumer read)
        engine.consumers.append(consumer.name)
        for stream in consumer.streams:
            daemon.add_service(
                f"consume:{stream}:{consumer.name}",
                lambda d, s=stream, h=handler: consume(d, s, engine, h),
            )
    daemon.add_service("outbox-relay", relay)
    if daemon.settings.owner_requests_file is not None:
        from orchestrator.engine import owner_sync

        daemon.add_service("owner-requests", owner_sync.watch)
    daemon.add_service(
        "dispatcher",
        lambda d: _periodic(
            d,
            d.settings.dispatch_interval,
            engine.dispatch_pending,
            "dispatcher",
            engine.wake_dispatcher,
        ),
    )
    daemon.add_service(
        "deadlines",
        lambda d: _periodic(
            d, d.settings.timeout_scan_interval, engine.expire_deadlines, "deadlines"
        ),
    )
    return engine
