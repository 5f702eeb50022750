"""What the engine reads, parsed and checked without I/O: strategic decisions,
completion notices turned into workflow events, the REQ a subject names, and
the attempt a heartbeat carries. A message that is wrong and will stay wrong
raises ``Rejected``: the engine records it and terms it, once."""

from __future__ import annotations

from typing import Any, Literal

from nats.aio.msg import Msg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.core import strict_json
from orchestrator.core.registry import Pipeline, Stage
from orchestrator.core.workflow import AttemptMark, Completed, Decision
from orchestrator.inbound import intake
from orchestrator.inbound.notices import (
    CompletionNotice,
    parse_deliverable_subject,
    validate_req_id,
)


class Rejected(Exception):
    """A message that is wrong and will stay wrong: record it and term it."""

    def __init__(self, reason: str, message: str, req: str | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message, self.req = reason, message, req


class DecisionMessage(BaseModel):
    """A strategic decision on agog.strategic.decisions.<REQ>."""

    model_config = ConfigDict(extra="allow")

    req_number: str
    decision: Literal["APPROVE", "REQUEST_CHANGES", "RETRY", "CANCEL", "ESCALATE_HUMAN"]
    reasoning: str = ""
    restart_stage: int | None = None
    instructions: dict[str, Any] = {}
    # A new budget for the REQ (USD), e.g. to resume one blocked on its budget.
    budget_usd: float | None = Field(default=None, gt=0, lt=1e6, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("a decision is a JSON object")
        data = dict(data)
        for alias in ("reqNumber", "reqId", "req_id"):
            data.setdefault("req_number", data.get(alias))
        kind = str(data.get("decision", "")).strip().upper().replace(" ", "_")
        data["decision"] = {
            "APPROVED": "APPROVE",
            "CANCELLED": "CANCEL",
            "ESCALATE": "ESCALATE_HUMAN",
            "CHANGES_REQUESTED": "REQUEST_CHANGES",
        }.get(kind, kind)
        data["instructions"] = {
            k: data[k]
            for k in (
                "instructions_for_roy",
                "instructions_for_jen",
                "instructions",
                "priority_fixes",
                "deferred_items",
                "reasoning",
            )
            if data.get(k)
        }
        return data

    @field_validator("req_number", mode="before")
    @classmethod
    def _req(cls, value: Any) -> str:
        return validate_req_id(value)

    def to_event(self) -> Decision:
        return Decision(
            self.decision, self.restart_stage, self.instructions, self.reasoning, self.budget_usd
        )


def parse_decision(
    data: bytes, subject_req: str, pipeline: Pipeline, max_bytes: int
) -> DecisionMessage:
    try:
        raw = intake.json_object(data, max_bytes, "a decision")
    except intake.IntakeError as exc:
        raise Rejected(exc.reason, exc.message) from None
    raw.setdefault("req_number", raw.get("reqNumber") or raw.get("reqId") or subject_req)
    restart = raw.get("restart_stage", raw.get("restartStage"))
    if isinstance(restart, str) and not restart.isdigit():
        stage = pipeline.stage_for_agent(restart.lower()) or next(
            (s for s in pipeline.stages if s.name.lower() == restart.lower()), None
        )
        if stage is None:
            raise Rejected("wrong_schema", f"restart_stage {restart!r} is not a stage")
        restart = stage.index
    raw["restart_stage"] = restart
    try:
        decision = DecisionMessage.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "body"
        raise Rejected(
            "invalid_req_id" if where == "req_number" else "wrong_schema",
            f"{where}: {first.get('msg')}",
            safe_req(subject_req),
        ) from None
    if decision.req_number != subject_req and safe_req(subject_req):
        raise Rejected(
            "wrong_schema",
            f"subject says {subject_req}, payload says {decision.req_number}",
            decision.req_number,
        )
    return decision


def completed_event(
    stage: Stage,
    notice: CompletionNotice,
    *,
    published_at: float | None = None,
    digest: str | None = None,
    history: tuple[AttemptMark, ...] = (),
    clock_margin: float = 2.0,
) -> Completed:
    """The pure event for a validated notice, with what places it among its
    stage's attempts when it names none (``workflow.provenance``)."""
    instructions: dict[str, Any] = {}
    if stage.gate == "critique":
        instructions = {
            "required_fixes": notice.required_fixes,
            "issues_found": notice.issues_found,
            "blockers": notice.blockers,
        }
    elif stage.gate == "qa":
        instructions = {"qa_failures": notice.qa_failures, "summary": notice.summary}
    elif stage.gate == "deploy" and notice.conflict is not None:
        instructions = {"conflict": notice.conflict, "summary": notice.summary}
    return Completed(
        stage=stage.index,
        attempt=notice.attempt,
        status=notice.status,
        verdict=notice.critique_verdict,
        qa_passed=notice.qa_passed,
        # Only those the registry lets this gate send work back to.
        rework_agents=tuple(a for a in notice.rework_agents if a in stage.rework_to),
        instructions=instructions,
        commit_sha=notice.commit_sha,
        deployed_by=notice.deployed_by,
        deployed_at=notice.deployed_at,
        deployed=notice.deployed,
        conflict=stage.gate == "deploy" and notice.conflict is not None,
        summary=notice.summary,
        published_at=published_at,
        digest=digest,
        history=history,
        clock_margin=clock_margin,
        cost_usd=notice.usage.cost_usd if notice.usage is not None else None,
    )


def safe_req(value: str | None) -> str | None:
    try:
        return validate_req_id(value) if value else None
    except ValueError:
        return None


def deliverable_req(msg: Msg) -> str | None:
    parts = parse_deliverable_subject(msg.subject)
    return safe_req(parts[2]) if parts else None


def last_token_req(msg: Msg) -> str | None:
    return safe_req(msg.subject.rsplit(".", 1)[-1])


def attempt_of(data: bytes) -> int | None:
    # strict_json: deep nesting is a ValueError, not a RecursionError escaping
    # the handler; an attempt beyond Postgres's int would fail the batch too.
    # Either way the heartbeat was nak'd and redelivered in a loop.
    try:
        value = strict_json.loads(data or b"{}").get("attempt")
    except (ValueError, AttributeError):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31:
        return value
    return None
