"""Carry out the pure state machine's effects inside the caller's transaction.

Each effect becomes rows: a stage attempt, an outbox message, an escalation.
Assignments get a ``Nats-Msg-Id`` derived from (REQ, stage, attempt), so a
retried publish can never start a stage twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.core.registry import Pipeline, Stage
from orchestrator.core.workflow import (
    CloseAttempt,
    Dispatch,
    Effect,
    Emit,
    Escalate,
    Ignored,
    MarkDeployed,
    Workflow,
)
from orchestrator.engine import store
from orchestrator.runtime import metrics
from orchestrator.runtime.logs import get_logger

if TYPE_CHECKING:
    from orchestrator.memory.hooks import Bound

log = get_logger(__name__)


def assignment_msg_id(req: str, stage: int, attempt: int) -> str:
    return f"assign:{req}:{stage}:{attempt}"


def event_payload(
    pipeline: Pipeline,
    req: str,
    event_type: str,
    stage: Stage | None = None,
    attempt: int | None = None,
    reason: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An orchestration event in the old daemon's shape (camelCase kept)."""
    payload: dict[str, Any] = {
        "eventType": event_type,
        "reqNumber": req,
        "req_number": req,
        "timestamp": store.now_iso(),
    }
    if stage is not None:
        payload.update(
            stage=stage.name, stageIndex=stage.index, agentId=stage.agent, agent=stage.agent
        )
    if attempt is not None:
        payload["attempt"] = attempt
    if reason:
        payload["reason"] = reason
    return {**payload, **(extra or {})}


def deployment(effects: list[Effect]) -> MarkDeployed | None:
    """The MarkDeployed effect, if any, for store.save_workflow."""
    return next((e for e in effects if isinstance(e, MarkDeployed)), None)


def stage_by_index(pipeline: Pipeline, index: int) -> Stage:
    if index < len(pipeline.stages):
        return pipeline.stage(index)
    return next(f for f in pipeline.followups if f.index == index)


class EffectRunner:
    """Turns effects into rows for one REQ within one transaction."""

    def __init__(
        self,
        pipeline: Pipeline,
        conn: store.Conn,
        wf: Workflow,
        title: str = "",
        deliverable: dict[str, Any] | None = None,
        delivered: dict[int, dict[str, Any]] | None = None,
        memory: Bound | None = None,
        digest: str | None = None,
        about: Stage | None = None,
        usage: Any = None,
    ) -> None:
        self.pipeline, self.conn, self.wf, self.title = pipeline, conn, wf, title
        # What the closing notice's agent used (its usage), kept on the attempt.
        self.usage = usage
        # The digest of that notice, kept on the attempt to recognise a late copy.
        self.digest = digest
        # The stage a notice was for: an ignored one is recorded against it.
        self.ignored_stage = about.index if about is not None else None
        self.ignored_agent = about.agent if about is not None else None
        # Deliverable memory: assignments' recalled memories, escalations remembered.
        self.memory = memory
        # The notice that closes an attempt is stored on that attempt's row.
        self.deliverable = deliverable
        # Cached deliverables by stage (from the lock query), for assignments.
        self.delivered = delivered or {}

    async def run(self, effects: list[Effect]) -> None:
        for effect in effects:
            await self._one(effect)

    async def _one(self, effect: Effect) -> None:
        req = self.wf.req
        if isinstance(effect, Dispatch):
            await self.dispatch(
                stage_by_index(self.pipeline, effect.stage),
                effect.attempt,
                effect.instructions,
                effect.budget_left_usd,
            )
        elif isinstance(effect, CloseAttempt):
            await store.close_attempt(
                self.conn,
                req,
                effect.stage,
                effect.attempt,
                effect.outcome,
                effect.reason or None,
                self.deliverable,
                self.digest,
                self.usage,
            )
            stage = stage_by_index(self.pipeline, effect.stage)
            metrics.count_close(self.conn, stage.agent, effect.outcome, effect.verdict)
            if self.usage is not None:
                metrics.count_usage(self.conn, stage.agent, self.usage)
        elif isinstance(effect, Emit):
            await self.emit(effect)
        elif isinstance(effect, Escalate):
            await self.escalate(effect)
        elif isinstance(effect, MarkDeployed):
            pass  # written with the new state by store.save_workflow (see deployment())
        elif isinstance(effect, Ignored):
            log.info(
                "workflow.ignored", req_number=req, reason=effect.reason, attempt=effect.attempt
            )
            detail = {} if effect.attempt is None else {"belongs_to_attempt": effect.attempt}
            await store.record_event(
                self.conn,
                req,
                "ignored",
                stage=self.ignored_stage,
                agent=self.ignored_agent,
                attempt=effect.attempt,
                reason=effect.reason,
                detail=detail,
            )

    async def dispatch(
        self,
        stage: Stage,
        attempt: int,
        instructions: dict[str, Any],
        budget_left_usd: float | None = None,
    ) -> None:
        """Record the attempt and queue its assignment (the stage.started event)."""
        req = self.wf.req
        metrics.count_dispatch(self.conn, stage.agent, attempt, instructions)
        deadline = await store.insert_attempt(
            self.conn, req, stage.index, stage.agent, attempt, stage.timeout, instructions
        )
        previous = [self.delivered[i] for i in sorted(self.delivered) if i < stage.index]
        memories = []
        if self.memory is not None:
            memories = await self.memory.assignment(self.conn, req, stage.index)
        payload = event_payload(
            self.pipeline,
            req,
            "stage.started",
            stage,
            attempt,
            extra={
                "deadline": deadline.isoformat(),
                "timeout": stage.timeout,
                # What the stage is for (none, critique, qa, deploy), from the
                # registry: agents and templates go by it, not by a name.
                "gate": stage.gate,
                "deliverableSubject": self.pipeline.deliverable_subject(stage, req),
                "instructions": instructions,
                # What the REQ may still spend (USD; null: no limit).
                "budget_left_usd": budget_left_usd,
                "memories": memories,
                "contextData": {
                    "featureTitle": self.title,
                    "previousStages": [_previous(self.pipeline, r, req) for r in previous],
                },
            },
        )
        subject = self.pipeline.subject("assignment", agent=stage.agent, req=req)
        await store.enqueue(
            self.conn, subject, payload, assignment_msg_id(req, stage.index, attempt)
        )
        await store.record_event(
            self.conn,
            req,
            "stage.started",
            stage=stage.index,
            agent=stage.agent,
            attempt=attempt,
            detail={"instructions": instructions},
        )
        # Debug: a dispatch always follows an info line that says why (the
        # intake, the stage before it completing, a retry or a decision), and
        # one info line per transition is what the log's cost allows.
        log.debug(
            "stage.dispatched",
            req_number=req,
            stage=stage.index,
            agent=stage.agent,
            attempt=attempt,
        )

    async def emit(self, effect: Emit) -> None:
        req = self.wf.req
        stage = stage_by_index(self.pipeline, effect.stage) if effect.stage is not None else None
        name = f"{effect.kind}.{effect.name}"
        if effect.kind == "stage" and effect.name == "started":
            return  # the assignment itself is the stage.started event (counted there)
        metrics.tally_of(self.conn).inc(metrics.TRANSITIONS, name, stage.agent if stage else "")
        if effect.kind == "stage":
            assert stage is not None
            subject = self.pipeline.subject(
                "stage_event", event=effect.name, agent=stage.agent, req=req
            )
        else:
            subject = self.pipeline.subject("workflow_event", event=effect.name, req=req)
        await store.enqueue(
            self.conn,
            subject,
            event_payload(self.pipeline, req, name, stage, effect.attempt, effect.reason),
        )
        await store.record_event(
            self.conn,
            req,
            name,
            stage=effect.stage,
            agent=stage.agent if stage else None,
            attempt=effect.attempt,
            reason=effect.reason or None,
        )
        log.info(
            name,
            req_number=req,
            stage=effect.stage,
            attempt=effect.attempt,
            reason=effect.reason or None,
        )

    async def emit_stage(self, stage: Stage, name: str, attempt: int, reason: str = "") -> None:
        await self.emit(Emit("stage", name, stage.index, attempt, reason))

    async def escalate(self, effect: Escalate) -> None:
        req = self.wf.req
        payload = {
            "req_number": req,
            "priority": effect.priority,
            "reason": effect.reason,
            "timestamp": store.now_iso(),
            "stage": self.wf.stage if effect.stage is None else effect.stage,
            "attempt": self.wf.attempt if effect.attempt is None else effect.attempt,
        }
        if not await store.insert_escalation(
            self.conn, effect.key, req, effect.priority, effect.reason, payload
        ):
            log.info("escalation.already_sent", req_number=req, key=effect.key)
            return
        metrics.tally_of(self.conn).inc(metrics.ESCALATIONS, effect.priority)
        if self.memory is not None:
            index = self.wf.stage if effect.stage is None else effect.stage
            agent = stage_by_index(self.pipeline, index).agent if index is not None else None
            await self.memory.escalation(
                self.conn, req, agent, index, effect.priority, effect.reason
            )
        target = "human" if effect.target == "human" else req
        await store.enqueue(
            self.conn,
            self.pipeline.subject("escalation", target=target),
            payload,
            f"escalation:{effect.key}",
        )
        await store.record_event(
            self.conn, req, "escalated", reason=effect.reason, detail={"priority": effect.priority}
        )
        log.warning(
            "workflow.escalated", req_number=req, priority=effect.priority, reason=effect.reason
        )


def _previous(pipeline: Pipeline, row: dict[str, Any], req: str) -> dict[str, Any]:
    deliverable = row["deliverable"]
    stage = stage_by_index(pipeline, row["stage"])
    return {
        "stage": stage.name,
        "agent": row["agent"],
        "subject": pipeline.deliverable_subject(stage, req),
        "deliverableUrl": deliverable.get("deliverable"),
        "summary": deliverable.get("summary", ""),
    }
