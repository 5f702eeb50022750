"""The workflow state machine: pure transitions, no I/O.

``apply(pipeline, workflow, event)`` returns the next workflow and the effects
the engine must carry out (dispatch a stage, emit an event, escalate, mark a
deployment) in the same Postgres transaction. Being pure, it is driven by
hypothesis with random event sequences to check the invariants: no stage is
skipped, Berry never runs before Billy approves, a finished REQ never changes,
and every retry stays within its budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

from orchestrator.registry import Pipeline, Stage

# COMPLETE: the last stage finished without a deployment (committed and
# tested, no container engine); never reported as DEPLOYED.
Status = Literal[
    "PENDING", "IN_PROGRESS", "BLOCKED", "ESCALATED", "COMPLETE", "DEPLOYED", "CANCELLED"
]
# Every status, in the order operators read them (API filters, metrics).
STATUSES: tuple[Status, ...] = get_args(Status)
FINISHED: frozenset[str] = frozenset({"COMPLETE", "DEPLOYED", "CANCELLED"})
LIVE: tuple[Status, ...] = tuple(s for s in STATUSES if s not in FINISHED)
NoticeStatus = Literal["COMPLETE", "BLOCKED", "FAILED", "IN_PROGRESS"]
DecisionKind = Literal["APPROVE", "REQUEST_CHANGES", "RETRY", "CANCEL", "ESCALATE_HUMAN"]


# --- state ---------------------------------------------------------------------
@dataclass(frozen=True)
class Workflow:
    """Where one REQ stands. Counters are per stage index (as strings, for JSON)."""

    req: str
    status: Status = "PENDING"
    stage: int | None = None
    attempt: int = 0
    attempts: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    rework: dict[str, int] = field(default_factory=dict)
    qa_approved: bool = False
    blocked_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def counters(self) -> dict[str, Any]:
        """The JSON-able counters kept in workflow_state.budgets."""
        return {
            "attempts": self.attempts,
            "retries": self.retries,
            "rework": self.rework,
            "qa_approved": self.qa_approved,
            "attempt": self.attempt,
            "blocked_reason": self.blocked_reason,
        }

    @classmethod
    def from_row(
        cls, req: str, status: str, stage: int | None, counters: dict[str, Any]
    ) -> Workflow:
        return cls(
            req=req,
            status=status if status != "NEW" else "PENDING",  # type: ignore[arg-type]
            stage=stage,
            attempt=int(counters.get("attempt", 0)),
            attempts=dict(counters.get("attempts", {})),
            retries=dict(counters.get("retries", {})),
            rework=dict(counters.get("rework", {})),
            qa_approved=bool(counters.get("qa_approved", False)),
            blocked_reason=counters.get("blocked_reason"),
        )


# --- events (inputs) -----------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """The dispatcher admits a PENDING REQ into the pipeline."""


@dataclass(frozen=True)
class Completed:
    """An agent's completion notice, already validated and normalised."""

    stage: int
    attempt: int | None
    status: NoticeStatus
    verdict: str | None = None
    qa_passed: bool = True
    rework_agents: tuple[str, ...] = ()
    instructions: dict[str, Any] = field(default_factory=dict)
    commit_sha: str | None = None
    deployed_by: str | None = None
    deployed_at: str | None = None
    # None: deployed iff deployed_at is given; False: says it did not deploy.
    deployed: bool | None = None
    summary: str = ""

    @property
    def did_deploy(self) -> bool:
        """A deployment is only ever taken from the notice's own word."""
        if self.deployed is not None:
            return self.deployed and self.deployed_at is not None
        return self.deployed_at is not None


@dataclass(frozen=True)
class TimedOut:
    stage: int
    attempt: int


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    restart_stage: int | None = None
    instructions: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


Event = Start | Completed | TimedOut | Decision


# --- effects (outputs) -----------------------------------------------------------
@dataclass(frozen=True)
class Dispatch:
    """Record a stage attempt and publish its assignment."""

    stage: int
    agent: str
    attempt: int
    instructions: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CloseAttempt:
    """Mark an attempt finished with an outcome (COMPLETE, REJECTED, TIMED_OUT...)."""

    stage: int
    attempt: int
    outcome: str
    reason: str = ""


@dataclass(frozen=True)
class Emit:
    """An orchestration event: ``workflow.<name>`` or ``stage.<name>``."""

    kind: Literal["workflow", "stage"]
    name: str
    stage: int | None = None
    attempt: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class Escalate:
    """One escalation, deduplicated by key (never re-sent in a loop)."""

    key: str
    priority: Literal["NEEDS_HUMAN_DECISION", "NEEDS_MANUAL_INTERVENTION"]
    reason: str
    target: str = "req"  # "req" -> escalations.<REQ>, "human" -> escalations.human


@dataclass(frozen=True)
class MarkDeployed:
    """The last stage's outcome: the commit, and the deployment if there was one."""

    commit_sha: str | None
    deployed_by: str | None
    deployed_at: str | None
    deployed: bool = True


@dataclass(frozen=True)
class DispatchFollowup:
    agent: str


@dataclass(frozen=True)
class Ignored:
    """The event changes nothing; the reason is logged and recorded."""

    reason: str


Effect = Dispatch | CloseAttempt | Emit | Escalate | MarkDeployed | DispatchFollowup | Ignored


class DecisionRejected(ValueError):
    """A strategic decision that cannot apply (e.g. for a finished REQ)."""


# --- transitions ---------------------------------------------------------------
def apply(pipeline: Pipeline, wf: Workflow, event: Event) -> tuple[Workflow, list[Effect]]:
    """The next state and the effects of one event. Never raises for stale input."""
    if wf.finished:
        if isinstance(event, Decision):
            raise DecisionRejected(f"{wf.req} is {wf.status}; a decision cannot change it")
        return wf, [Ignored(f"{wf.req} is already {wf.status}")]
    if isinstance(event, Start):
        return _start(pipeline, wf)
    if isinstance(event, Completed):
        return _completed(pipeline, wf, event)
    if isinstance(event, TimedOut):
        return _timed_out(pipeline, wf, event)
    return _decision(pipeline, wf, event)


def _dispatch(
    pipeline: Pipeline,
    wf: Workflow,
    index: int,
    instructions: dict[str, Any] | None = None,
    status: Status = "IN_PROGRESS",
) -> tuple[Workflow, list[Effect]]:
    stage = pipeline.stage(index)
    attempt = wf.attempts.get(str(index), 0) + 1
    qa_index = _gate_index(pipeline, "qa")
    qa_approved = wf.qa_approved and (qa_index is None or index > qa_index)
    new = replace(
        wf,
        status=status,
        stage=index,
        attempt=attempt,
        attempts={**wf.attempts, str(index): attempt},
        qa_approved=qa_approved,
        blocked_reason=None,
    )
    return new, [
        Dispatch(index, stage.agent, attempt, instructions or {}),
        Emit("stage", "started", index, attempt),
    ]


def _gate_index(pipeline: Pipeline, gate: str) -> int | None:
    return next((s.index for s in pipeline.stages if s.gate == gate), None)


def _start(pipeline: Pipeline, wf: Workflow) -> tuple[Workflow, list[Effect]]:
    if wf.status != "PENDING":
        return wf, [Ignored(f"{wf.req} already started ({wf.status})")]
    new, effects = _dispatch(pipeline, wf, 0)
    return new, [Emit("workflow", "started"), *effects]


def _is_current(wf: Workflow, stage: int, attempt: int | None) -> str | None:
    """Why a notice does not apply to the current attempt, or None if it does."""
    if wf.status not in ("IN_PROGRESS",):
        return f"{wf.req} is {wf.status}, not waiting for a stage"
    if stage != wf.stage:
        return f"notice for stage {stage}, but {wf.req} is at stage {wf.stage}"
    if attempt is not None and attempt != wf.attempt:
        return f"notice for attempt {attempt}, but stage {stage} is at attempt {wf.attempt}"
    return None


def _block(
    wf: Workflow,
    stage: Stage,
    reason: str,
    priority: Literal["NEEDS_HUMAN_DECISION", "NEEDS_MANUAL_INTERVENTION"],
    cause: str,
    outcome: str,
) -> tuple[Workflow, list[Effect]]:
    new = replace(wf, status="BLOCKED", blocked_reason=reason)
    return new, [
        CloseAttempt(stage.index, wf.attempt, outcome, reason),
        Emit("stage", "blocked", stage.index, wf.attempt, reason),
        Escalate(f"{wf.req}:{stage.index}:{wf.attempt}:{cause}", priority, reason),
    ]


def _advance(
    pipeline: Pipeline, wf: Workflow, stage: Stage, ev: Completed
) -> tuple[Workflow, list[Effect]]:
    closing: list[Effect] = [
        CloseAttempt(stage.index, wf.attempt, "COMPLETE"),
        Emit("stage", "completed", stage.index, wf.attempt),
    ]
    nxt = pipeline.next_stage(stage.index)
    if nxt is None:
        deployed = ev.did_deploy
        done = replace(wf, status="DEPLOYED" if deployed else "COMPLETE", blocked_reason=None)
        effects: list[Effect] = [
            *closing,
            MarkDeployed(
                ev.commit_sha,
                ev.deployed_by or stage.agent,
                ev.deployed_at if deployed else None,
                deployed,
            ),
            Emit("workflow", "completed", reason=done.status),
        ]
        effects += [DispatchFollowup(f.agent) for f in pipeline.followups_after(stage.agent)]
        return done, effects
    if nxt.gate == "deploy" and not wf.qa_approved:
        return _block(
            wf,
            stage,
            f"{nxt.agent} cannot start: QA approval is not recorded",
            "NEEDS_MANUAL_INTERVENTION",
            "no-qa-approval",
            "COMPLETE",
        )
    new, effects = _dispatch(pipeline, wf, nxt.index)
    return new, [*closing, *effects]


def _rework(
    pipeline: Pipeline,
    wf: Workflow,
    stage: Stage,
    target: int,
    gate: str,
    ev: Completed,
    outcome: str,
    reason: str,
) -> tuple[Workflow, list[Effect]]:
    used = wf.rework.get(gate, 0)
    if used >= stage.rework_budget:
        return _block(
            wf,
            stage,
            f"{reason}; rework budget of {stage.rework_budget} spent",
            "NEEDS_HUMAN_DECISION",
            f"rework-{gate}",
            outcome,
        )
    wf = replace(wf, rework={**wf.rework, gate: used + 1})
    closing: list[Effect] = [
        CloseAttempt(stage.index, wf.attempt, outcome, reason),
        Emit("stage", "failed", stage.index, wf.attempt, reason),
    ]
    new, effects = _dispatch(
        pipeline, wf, target, {"rework": {"from": stage.agent, "reason": reason, **ev.instructions}}
    )
    return new, [*closing, *effects]


def _completed(pipeline: Pipeline, wf: Workflow, ev: Completed) -> tuple[Workflow, list[Effect]]:
    stale = _is_current(wf, ev.stage, ev.attempt)
    if stale:
        return wf, [Ignored(stale)]
    stage = pipeline.stage(ev.stage)
    if ev.status == "IN_PROGRESS":
        return wf, [Ignored("in-progress notice (treated as a heartbeat)")]
    if stage.gate == "qa" and (ev.status in ("BLOCKED", "FAILED") or not ev.qa_passed):
        targets = [pipeline.stage_for_agent(a) for a in ev.rework_agents]
        indices = [t.index for t in targets if t is not None and t.index < stage.index]
        backend = pipeline.stage_for_agent("roy")
        target = min(indices) if indices else (backend.index if backend else 0)
        return _rework(pipeline, wf, stage, target, "qa", ev, "FAILED", "QA failed")
    if ev.status == "BLOCKED":
        return _block(
            wf,
            stage,
            ev.summary or f"{stage.agent} reported BLOCKED",
            "NEEDS_HUMAN_DECISION",
            "blocked",
            "BLOCKED",
        )
    if ev.status == "FAILED":
        return _retry_or_block(pipeline, wf, stage, "FAILED", ev.summary or "agent failed")
    if stage.gate == "critique":
        if ev.verdict in ("APPROVED", "APPROVED_WITH_CONDITIONS"):
            return _advance(pipeline, wf, stage, ev)
        if ev.verdict == "REJECTED":
            return _rework(pipeline, wf, stage, 0, "critique", ev, "REJECTED", "critique rejected")
        return _block(
            wf,
            stage,
            "critique completed without a verdict",
            "NEEDS_HUMAN_DECISION",
            "no-verdict",
            "COMPLETE",
        )
    if stage.gate == "qa":
        wf = replace(wf, qa_approved=True)
    return _advance(pipeline, wf, stage, ev)


def _retry_or_block(
    pipeline: Pipeline, wf: Workflow, stage: Stage, outcome: str, reason: str
) -> tuple[Workflow, list[Effect]]:
    used = wf.retries.get(str(stage.index), 0)
    if used >= stage.retries:
        return _block(
            wf,
            stage,
            f"{reason}; retry budget of {stage.retries} spent",
            "NEEDS_MANUAL_INTERVENTION",
            outcome.lower(),
            outcome,
        )
    wf = replace(wf, retries={**wf.retries, str(stage.index): used + 1})
    closing: list[Effect] = [
        CloseAttempt(stage.index, wf.attempt, outcome, reason),
        Emit("stage", "failed", stage.index, wf.attempt, reason),
    ]
    new, effects = _dispatch(pipeline, wf, stage.index, {"retry": {"reason": reason}})
    return new, [*closing, *effects]


def _timed_out(pipeline: Pipeline, wf: Workflow, ev: TimedOut) -> tuple[Workflow, list[Effect]]:
    stale = _is_current(wf, ev.stage, ev.attempt)
    if stale:
        return wf, [Ignored(stale)]
    stage = pipeline.stage(ev.stage)
    return _retry_or_block(pipeline, wf, stage, "TIMED_OUT", f"{stage.agent} missed its deadline")


def _decision(pipeline: Pipeline, wf: Workflow, ev: Decision) -> tuple[Workflow, list[Effect]]:
    if ev.kind == "CANCEL":
        effects: list[Effect] = []
        if wf.status == "IN_PROGRESS" and wf.stage is not None:
            effects.append(CloseAttempt(wf.stage, wf.attempt, "CANCELLED", ev.reason))
        new = replace(wf, status="CANCELLED")
        return new, [*effects, Emit("workflow", "cancelled", reason=ev.reason or "cancelled")]
    if wf.status == "PENDING" or wf.stage is None:
        raise DecisionRejected(f"{wf.req} has not started; nothing to {ev.kind.lower()}")
    current = pipeline.stage(wf.stage)
    closing: list[Effect] = []
    if wf.status == "IN_PROGRESS":
        closing.append(CloseAttempt(wf.stage, wf.attempt, "SUPERSEDED", f"decision {ev.kind}"))
    if ev.kind == "ESCALATE_HUMAN":
        new = replace(wf, status="ESCALATED", blocked_reason=ev.reason or "escalated to a human")
        return new, [
            *closing,
            Escalate(
                f"{wf.req}:human:{wf.stage}:{wf.attempt}",
                "NEEDS_HUMAN_DECISION",
                ev.reason or "strategic decision: escalate to a human",
                "human",
            ),
        ]
    resumed: list[Effect] = [Emit("workflow", "resumed", reason=f"decision {ev.kind}")]
    instructions = {"decision": {"kind": ev.kind, **ev.instructions}} if ev.instructions else {}
    if ev.kind == "RETRY" or (ev.kind == "APPROVE" and current.gate == "qa"):
        wf = replace(wf, retries={**wf.retries, str(wf.stage): 0})
        new, effects = _dispatch(pipeline, wf, wf.stage, instructions)
        return new, [*closing, *resumed, *effects]
    if ev.kind == "REQUEST_CHANGES":
        backend = pipeline.stage_for_agent("roy")
        target = (
            ev.restart_stage if ev.restart_stage is not None else (backend.index if backend else 0)
        )
        target = max(0, min(target, wf.stage))  # a restart goes back, never skips ahead
        new, effects = _dispatch(pipeline, wf, target, instructions)
        return new, [*closing, *resumed, *effects]
    # APPROVE: accept the current stage and continue with the next.
    nxt = pipeline.next_stage(wf.stage)
    if nxt is None:
        raise DecisionRejected("APPROVE at the last stage: the deployment itself must complete")
    if nxt.gate == "deploy" and not wf.qa_approved:
        raise DecisionRejected(f"{nxt.agent} cannot start before QA approval is recorded")
    new, effects = _dispatch(pipeline, wf, nxt.index, instructions)
    return new, [*closing, *resumed, *effects]
