"""The engine's message handlers: deliverables, intake, decisions, heartbeats.

Each body runs inside the batch's transaction (``transactions``): it reads
the message with the pure parsers (``orchestrator.inbound``), locks the
REQ's row, applies the pure transition (``core.workflow``) and commits it
with its effects (``transition``). It raises ``Rejected`` before it writes
anything when the message is bad.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from orchestrator.core import decision_auth, strict_json
from orchestrator.core.registry import Pipeline
from orchestrator.core.workflow import DecisionRejected, Ignored, apply
from orchestrator.engine import requirements, store
from orchestrator.engine.effects import EffectRunner
from orchestrator.engine.transactions import Handler
from orchestrator.engine.transition import Transitions
from orchestrator.engine.tx import EngineTx
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
from orchestrator.runtime.logs import bound_context, get_logger
from orchestrator.runtime.settings import Settings

if TYPE_CHECKING:
    from orchestrator.memory.service import Memory

log = get_logger("agogd.engine")


class Handlers:
    """The bodies of the engine's consumers, by consumer name (``table``)."""

    def __init__(
        self,
        *,
        settings: Settings,
        pipeline: Pipeline,
        transitions: Transitions,
        memory: Memory | None,
    ) -> None:
        self.settings, self.pipeline = settings, pipeline
        self.transitions, self.memory = transitions, memory
        # What the API signs its decisions with (core.decision_auth).
        self.signing_key = decision_auth.signing_key(settings.api_token)

    def table(self) -> dict[str, Handler]:
        """Each consumer the engine reads (``[[consumers]]`` in pipeline.toml)."""
        handlers = (
            Handler("agogd_deliverables", self.deliverable, deliverable_req),
            Handler("agogd_intake", self.intake, usual="created"),
            Handler("agogd_decisions", self.decision, last_token_req),
            Handler("agogd_heartbeats", self.heartbeat, claim=False),
        )
        return {h.consumer: h for h in handlers}

    # --- deliverables ----------------------------------------------------------
    async def deliverable(self, conn: EngineTx, msg: Msg) -> str:
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
                conn.after.tally.observe(
                    metrics.STAGE_DURATION, locked.ages[stage.index], stage.agent
                )
            await self.transitions.commit(
                conn, new, effects, locked, normalized, digest, notice.usage
            )
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

    # --- intake -----------------------------------------------------------------
    async def intake(self, conn: EngineTx, msg: Msg) -> str:
        try:
            req = intake.parse_requirement(msg.data, self.settings.max_message_bytes)
        except intake.IntakeError as exc:
            raise Rejected(exc.reason, exc.message) from None
        await self._check_quota(conn, req)
        created = await requirements.submit(conn, req, "nats", self.memory)
        log.info(
            "intake.received",
            req_number=req.req_number,
            created=created,
            msg_subject=msg.subject,
        )
        conn.after.wake_dispatcher = True
        return "created" if created else "duplicate"

    async def _check_quota(self, conn: EngineTx, req: intake.Requirement) -> None:
        """A flood of P2/P3 intake stops at AGOG_INTAKE_MAX_PENDING waiting REQs:
        further ones are refused, each with its reason. P0 and P1 are always
        taken, and dispatch goes by priority, so a flood never starves them."""
        limit = self.settings.intake_max_pending
        if limit <= 0 or req.priority < 2:
            return
        if await store.waiting_low_priority(conn, limit) < limit:
            return
        if await store.workflow_exists(conn, req.req_number):
            return  # a duplicate: answered as one, not refused
        raise Rejected(
            "intake_quota",
            f"{limit} P2/P3 REQs already wait (AGOG_INTAKE_MAX_PENDING); this"
            f" {intake.priority_label(req.priority)} intake is refused, P0 and P1 are still taken",
            req.req_number,
        )

    # --- strategic decisions ---------------------------------------------------
    async def decision(self, conn: EngineTx, msg: Msg) -> str:
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
        await store.insert_decision(
            conn, req, decision_msg.decision, decision_msg.reasoning, payload
        )
        await self.transitions.commit(conn, new, effects, locked)
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
    async def heartbeat(self, conn: EngineTx, msg: Msg) -> str:
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


def _dump(notice: CompletionNotice) -> dict[str, Any]:
    return notice.model_dump(mode="json")
