"""The workflow state machine: pure transitions, no I/O.

``apply(pipeline, workflow, event)`` returns the next workflow and the effects
the engine must carry out (dispatch a stage, emit an event, escalate, mark a
deployment) in the same Postgres transaction. Being pure, it is driven by
hypothesis with random event sequences to check the invariants: no stage is
skipped, Berry never runs before Billy approves, a finished REQ never changes
(but for its follow-ups, Tim's documentation, which run after it), every
retry stays within its budget, and a late copy of a notice never closes a
newer attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

from orchestrator.core.registry import Pipeline, Stage

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
    # Follow-up stage index -> RUNNING, COMPLETE, FAILED or BLOCKED. Their
    # attempts and retries are counted in ``attempts`` and ``retries`` too.
    followups: dict[str, str] = field(default_factory=dict)
    # What the REQ's agents have spent (USD, as their notices reported it), and
    # what it may spend (None: no limit). No attempt starts once it is spent.
    spent_usd: float = 0.0
    budget_usd: float | None = None
    # BLOCKED because the budget was spent before ``stage`` could start: that
    # stage never ran, so an APPROVE runs it rather than skipping it.
    budget_blocked: bool = False

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
            "followups": self.followups,
            "spent_usd": self.spent_usd,
            "budget_usd": self.budget_usd,
            "budget_blocked": self.budget_blocked,
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
            followups=dict(counters.get("followups", {})),
            spent_usd=float(counters.get("spent_usd") or 0.0),
            budget_usd=_money(counters.get("budget_usd")),
            budget_blocked=bool(counters.get("budget_blocked", False)),
        )

    def over_budget(self) -> str | None:
        """Why no further attempt may start, or None while the budget allows."""
        if self.budget_usd is None or self.spent_usd < self.budget_usd:
            return None
        return (
            f"budget spent: ${self.spent_usd:.2f} of ${self.budget_usd:.2f} for {self.req};"
            " a decision with a higher budget_usd resumes it"
        )

    @property
    def budget_left_usd(self) -> float | None:
        if self.budget_usd is None:
            return None
        return max(0.0, round(self.budget_usd - self.spent_usd, 6))


def _money(value: Any) -> float | None:
    return None if value is None else float(value)


# --- events (inputs) -----------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """The dispatcher admits a PENDING REQ into the pipeline, with the REQ's
    budget (AGOG_BUDGET_USD_PER_REQ) unless it has one already."""

    budget_usd: float | None = None


@dataclass(frozen=True)
class AttemptMark:
    """One attempt of a notice's stage as Postgres holds it, to tell which
    attempt a notice without an ``attempt`` field belongs to."""

    attempt: int
    # When agogd assigned it: epoch seconds on Postgres's clock (every replica
    # writes now() of the one database, so replicas' own clocks never enter).
    started_at: float
    # The digest of the applied notice that closed it, if one did.
    digest: str | None = None


@dataclass(frozen=True)
class Completed:
    """An agent's completion notice, already validated and normalised.

    The seeds' notices carry no ``attempt``. Such a notice is placed by when
    JetStream stored it (``published_at``) and by its content (``digest``),
    against the attempts of its stage (``history``): see ``provenance``.
    """

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
    # The deploy gate could not integrate the REQ's branch: a merge conflict.
    conflict: bool = False
    summary: str = ""
    # JetStream's timestamp of the message: epoch seconds on the NATS server's clock.
    published_at: float | None = None
    digest: str | None = None
    history: tuple[AttemptMark, ...] = ()
    # How far the NATS server's clock may be behind Postgres's (seconds).
    clock_margin: float = 2.0
    # What the attempt cost (USD), as the notice's usage reported it.
    cost_usd: float | None = None

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
    # A new budget for the REQ (USD): how a REQ blocked on its budget resumes.
    budget_usd: float | None = None


Event = Start | Completed | TimedOut | Decision


# --- effects (outputs) -----------------------------------------------------------
@dataclass(frozen=True)
class Dispatch:
    """Record a stage attempt and publish its assignment."""

    stage: int
    agent: str
    attempt: int
    instructions: dict[str, Any] = field(default_factory=dict)
    # What the REQ may still spend (None: no limit); the runner gives it to the CLI.
    budget_left_usd: float | None = None


@dataclass(frozen=True)
class CloseAttempt:
    """Mark an attempt finished with an outcome (COMPLETE, REJECTED, TIMED_OUT...).

    ``verdict`` says what the outcome was, for the metrics: a gate sending the
    work back (``rejection``: Sylvia's REJECTED, Billy's QA failure) is not an
    agent that failed or missed its deadline (``failure``).
    """

    stage: int
    attempt: int
    outcome: str
    reason: str = ""
    verdict: Literal["rejection", "failure"] | None = None


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
    # The stage and attempt it is about, when not the REQ's current one (a follow-up).
    stage: int | None = None
    attempt: int | None = None


@dataclass(frozen=True)
class MarkDeployed:
    """The last stage's outcome: the commit, and the deployment if there was one."""

    commit_sha: str | None
    deployed_by: str | None
    deployed_at: str | None
    deployed: bool = True


@dataclass(frozen=True)
class Ignored:
    """The event changes nothing; the reason is logged and recorded."""

    reason: str
    # The attempt a late or duplicate notice belonged to, when it is known.
    attempt: int | None = None


Effect = Dispatch | CloseAttempt | Emit | Escalate | MarkDeployed | Ignored


class DecisionRejected(ValueError):
    """A strategic decision that cannot apply (e.g. for a finished REQ)."""


# --- transitions ---------------------------------------------------------------
def apply(pipeline: Pipeline, wf: Workflow, event: Event) -> tuple[Workflow, list[Effect]]:
    """The next state and the effects of one event. Never raises for stale input."""
    if _for_followup(pipeline, event):
        return _followup(pipeline, wf, event)
    if wf.finished:
        if isinstance(event, Decision):
            raise DecisionRejected(f"{wf.req} is {wf.status}; a decision cannot change it")
        return wf, [Ignored(f"{wf.req} is already {wf.status}")]
    if isinstance(event, Start):
        return _start(pipeline, wf, event)
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
    qa_index = _gate_index(pipeline, "qa")
    qa_approved = wf.qa_approved and (qa_index is None or index > qa_index)
    over = wf.over_budget()
    if over is not None:  # the attempt would start over the REQ's budget: not started
        last = wf.attempts.get(str(index), 0)
        new = replace(
            wf, status="BLOCKED", stage=index, attempt=last, qa_approved=qa_approved,
            blocked_reason=over, budget_blocked=True,
        )  # fmt: skip
        return new, [
            Emit("stage", "blocked", index, None, over),
            Escalate(f"{wf.req}:{index}:{last}:budget", "NEEDS_HUMAN_DECISION", over),
        ]
    attempt = wf.attempts.get(str(index), 0) + 1
    new = replace(
        wf,
        status=status,
        stage=index,
        attempt=attempt,
        attempts={**wf.attempts, str(index): attempt},
        qa_approved=qa_approved,
        blocked_reason=None,
        budget_blocked=False,
    )
    return new, [
        Dispatch(index, stage.agent, attempt, instructions or {}, wf.budget_left_usd),
        Emit("stage", "started", index, attempt),
    ]


def _charge(wf: Workflow, cost: float | None) -> Workflow:
    """Add an applied notice's cost to what the REQ has spent."""
    if not cost or cost < 0:
        return wf
    return replace(wf, spent_usd=round(wf.spent_usd + cost, 6))


def _gate_index(pipeline: Pipeline, gate: str) -> int | None:
    return next((s.index for s in pipeline.stages if s.gate == gate), None)


def _start(pipeline: Pipeline, wf: Workflow, ev: Start) -> tuple[Workflow, list[Effect]]:
    if wf.status != "PENDING":
        return wf, [Ignored(f"{wf.req} already started ({wf.status})")]
    if wf.budget_usd is None and ev.budget_usd is not None:
        wf = replace(wf, budget_usd=ev.budget_usd)
    new, effects = _dispatch(pipeline, wf, 0)
    return new, [Emit("workflow", "started"), *effects]


def provenance(current: int, ev: Completed) -> Ignored | None:
    """Why a notice without an ``attempt`` belongs to an earlier attempt than
    ``current``, the one running for its stage; None if nothing says so.

    A notice naming its attempt is taken at its word (``_is_current``). One
    that does not is a duplicate when its content is that of a notice already
    applied to an attempt of this stage (an agent that retried its publish, a
    replayed script). It is late when JetStream stored it before the current
    attempt was assigned: it answered an earlier assignment.

    The publish time is on the NATS server's clock, the assignment time on
    Postgres's; they are different machines in production. A notice counts
    as published before the assignment only when it is more than
    ``clock_margin`` seconds before it, so skew up to the margin can never
    throw away a genuine answer to the current attempt (whose agent can only
    publish after it was assigned). A late copy inside the margin is still
    caught by its content.
    """
    if ev.attempt is not None:
        return None
    if ev.digest is not None:
        applied = [m for m in ev.history if m.digest == ev.digest]
        if applied:
            first = min(applied, key=lambda m: m.attempt)
            return Ignored(
                f"duplicate of the notice already applied to attempt {first.attempt}",
                first.attempt,
            )
    running = next((m for m in ev.history if m.attempt == current), None)
    if ev.published_at is None or running is None:
        return None
    if ev.published_at >= running.started_at - ev.clock_margin:
        return None
    earlier = [
        m
        for m in ev.history
        if m.attempt < current and m.started_at - ev.clock_margin <= ev.published_at
    ]
    if not earlier:
        return Ignored(f"published before any attempt of stage {ev.stage} was assigned")
    owner = max(earlier, key=lambda m: m.attempt).attempt
    return Ignored(
        f"published before attempt {current} was assigned: it belongs to attempt {owner}", owner
    )


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
    verdict: Literal["rejection", "failure"] | None = None,
) -> tuple[Workflow, list[Effect]]:
    new = replace(wf, status="BLOCKED", blocked_reason=reason)
    return new, [
        CloseAttempt(stage.index, wf.attempt, outcome, reason, verdict),
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
        for followup in pipeline.followups_after(stage.agent):
            done, started = _dispatch_followup(done, followup, {})
            effects += started
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
            "rejection",
        )
    wf = replace(wf, rework={**wf.rework, gate: used + 1})
    closing: list[Effect] = [
        CloseAttempt(stage.index, wf.attempt, outcome, reason, "rejection"),
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
    late = provenance(wf.attempt, ev)
    if late is not None:
        return wf, [late]
    stage = pipeline.stage(ev.stage)
    if ev.status == "IN_PROGRESS":
        return wf, [Ignored("in-progress notice (treated as a heartbeat)")]
    wf = _charge(wf, ev.cost_usd)
    if stage.gate == "qa" and (ev.status in ("BLOCKED", "FAILED") or not ev.qa_passed):
        target = pipeline.rework_target(stage, ev.rework_agents)
        return _rework(pipeline, wf, stage, target, "qa", ev, "FAILED", "QA failed")
    if stage.gate == "deploy" and ev.conflict and ev.status == "FAILED":
        target = pipeline.rework_target(stage, ev.rework_agents)
        why = f"merge conflict: {ev.summary}" if ev.summary else "merge conflict"
        return _rework(pipeline, wf, stage, target, "deploy", ev, "FAILED", why)
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
            "failure",
        )
    wf = replace(wf, retries={**wf.retries, str(stage.index): used + 1})
    closing: list[Effect] = [
        CloseAttempt(stage.index, wf.attempt, outcome, reason, "failure"),
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
    if ev.budget_usd is not None:
        wf = replace(wf, budget_usd=ev.budget_usd)
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
    never_ran = wf.budget_blocked  # blocked before the stage started: run it
    if ev.kind == "RETRY" or (ev.kind == "APPROVE" and (current.gate == "qa" or never_ran)):
        wf = replace(wf, retries={**wf.retries, str(wf.stage): 0})
        new, effects = _dispatch(pipeline, wf, wf.stage, instructions)
        return new, [*closing, *resumed, *effects]
    if ev.kind == "REQUEST_CHANGES":
        target = ev.restart_stage if ev.restart_stage is not None else pipeline.default_restart()
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


# --- follow-ups (Tim) --------------------------------------------------------
# A follow-up runs after the REQ has finished its pipeline: the REQ stays
# DEPLOYED (or COMPLETE) whatever happens to it. Otherwise it obeys the rules
# of a pipeline stage: an attempt at a time, a FAILED notice or a missed
# deadline retried within its budget and then escalated once, a BLOCKED one
# escalated, and an operator's RETRY runs it again with a fresh budget.
def _for_followup(pipeline: Pipeline, event: Event) -> bool:
    if isinstance(event, Completed | TimedOut):
        return pipeline.is_followup(event.stage)
    return isinstance(event, Decision) and pipeline.is_followup(event.restart_stage)


def _dispatch_followup(
    wf: Workflow, followup: Stage, instructions: dict[str, Any]
) -> tuple[Workflow, list[Effect]]:
    key = str(followup.index)
    over = wf.over_budget()
    if over is not None:  # as a pipeline stage: not started over the budget
        last = wf.attempts.get(key, 0)
        new = replace(wf, followups={**wf.followups, key: "BLOCKED"})
        return new, [
            Emit("stage", "blocked", followup.index, None, over),
            Escalate(
                f"{wf.req}:{followup.index}:{last}:budget",
                "NEEDS_HUMAN_DECISION",
                over,
                stage=followup.index,
            ),
        ]
    attempt = wf.attempts.get(key, 0) + 1
    new = replace(
        wf,
        attempts={**wf.attempts, key: attempt},
        followups={**wf.followups, key: "RUNNING"},
    )
    return new, [
        Dispatch(followup.index, followup.agent, attempt, instructions, wf.budget_left_usd),
        Emit("stage", "started", followup.index, attempt),
    ]


def _followup(pipeline: Pipeline, wf: Workflow, ev: Event) -> tuple[Workflow, list[Effect]]:
    index = ev.restart_stage if isinstance(ev, Decision) else ev.stage  # type: ignore[union-attr]
    assert index is not None
    followup = pipeline.followup(index)
    if isinstance(ev, Decision):
        return _followup_decision(pipeline, wf, ev, index, followup)
    if followup is None:
        return wf, [Ignored(f"the pipeline has no stage {index}")]
    key = str(index)
    state = wf.followups.get(key)
    if wf.status not in ("DEPLOYED", "COMPLETE"):
        return wf, [Ignored(f"{wf.req} is {wf.status}; {followup.agent} is not running")]
    if state != "RUNNING":
        return wf, [Ignored(f"{followup.agent} is not running ({state or 'never dispatched'})")]
    current = wf.attempts.get(key, 1)
    if ev.attempt is not None and ev.attempt != current:
        return wf, [
            Ignored(f"notice for attempt {ev.attempt}, but stage {index} is at attempt {current}")
        ]
    if isinstance(ev, TimedOut):
        return _followup_failed(
            wf, followup, current, "TIMED_OUT", f"{followup.agent} missed its deadline"
        )
    late = provenance(current, ev)
    if late is not None:
        return wf, [late]
    if ev.status == "IN_PROGRESS":
        return wf, [Ignored("in-progress notice (treated as a heartbeat)")]
    wf = _charge(wf, ev.cost_usd)
    if ev.status == "COMPLETE":
        new = replace(wf, followups={**wf.followups, key: "COMPLETE"})
        return new, [
            CloseAttempt(index, current, "COMPLETE"),
            Emit("stage", "completed", index, current),
        ]
    reason = ev.summary or f"{followup.agent} reported {ev.status}"
    if ev.status == "BLOCKED":
        new = replace(wf, followups={**wf.followups, key: "BLOCKED"})
        return new, [
            CloseAttempt(index, current, "BLOCKED", reason),
            Emit("stage", "blocked", index, current, reason),
            Escalate(
                f"{wf.req}:{index}:{current}:blocked",
                "NEEDS_HUMAN_DECISION",
                reason,
                stage=index,
                attempt=current,
            ),
        ]
    return _followup_failed(wf, followup, current, "FAILED", reason)


def _followup_failed(
    wf: Workflow, followup: Stage, attempt: int, outcome: str, reason: str
) -> tuple[Workflow, list[Effect]]:
    key = str(followup.index)
    closing: list[Effect] = [
        CloseAttempt(followup.index, attempt, outcome, reason, "failure"),
        Emit("stage", "failed", followup.index, attempt, reason),
    ]
    used = wf.retries.get(key, 0)
    if used >= followup.retries:
        spent = f"{reason}; retry budget of {followup.retries} spent"
        new = replace(wf, followups={**wf.followups, key: "FAILED"})
        return new, [
            *closing,
            Escalate(
                f"{wf.req}:{followup.index}:{attempt}:{outcome.lower()}",
                "NEEDS_MANUAL_INTERVENTION",
                spent,
                stage=followup.index,
                attempt=attempt,
            ),
        ]
    wf = replace(wf, retries={**wf.retries, key: used + 1})
    new, started = _dispatch_followup(wf, followup, {"retry": {"reason": reason}})
    return new, [*closing, *started]


def _followup_decision(
    pipeline: Pipeline, wf: Workflow, ev: Decision, index: int, followup: Stage | None
) -> tuple[Workflow, list[Effect]]:
    """An operator's RETRY of a follow-up: it runs again, with a fresh budget."""
    if followup is None:
        raise DecisionRejected(f"the pipeline has no stage {index}")
    if ev.budget_usd is not None:
        wf = replace(wf, budget_usd=ev.budget_usd)
    if ev.kind != "RETRY":
        raise DecisionRejected(f"{followup.name} is a follow-up: it can only be retried")
    if wf.status not in ("DEPLOYED", "COMPLETE"):
        after = followup.after or "the pipeline"
        raise DecisionRejected(
            f"{wf.req} is {wf.status}; {followup.agent} runs only after {after} has finished"
        )
    key = str(index)
    closing: list[Effect] = []
    if wf.followups.get(key) == "RUNNING":
        closing.append(
            CloseAttempt(index, wf.attempts.get(key, 1), "SUPERSEDED", f"decision {ev.kind}")
        )
    instructions = {"decision": {"kind": ev.kind, **ev.instructions}} if ev.instructions else {}
    wf = replace(wf, retries={**wf.retries, key: 0})
    new, started = _dispatch_followup(wf, followup, instructions)
    return new, [*closing, *started]
