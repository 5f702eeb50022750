"""The pure workflow state machine: scenarios and hypothesis-driven invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import registry
from orchestrator.workflow import (
    Completed,
    Decision,
    DecisionRejected,
    Dispatch,
    DispatchFollowup,
    Escalate,
    Ignored,
    MarkDeployed,
    Start,
    TimedOut,
    Workflow,
    apply,
)

P = registry.load()
N = len(P.stages)


def ok(stage: int, **kw: object) -> Completed:
    verdict = "APPROVED" if P.stage(stage).gate == "critique" else None
    if P.stage(stage).gate == "deploy":
        kw.setdefault("deployed_at", "2026-11-23T10:00:00Z")
    return Completed(
        stage=stage, attempt=None, status="COMPLETE", verdict=kw.pop("verdict", verdict), **kw
    )  # type: ignore[arg-type]


def run(events: list) -> tuple[Workflow, list]:
    wf, log = Workflow("REQ-T-1"), []
    for ev in events:
        wf, effects = apply(P, wf, ev)
        log.extend(effects)
    return wf, log


def dispatched(effects: list) -> list[tuple[str, int]]:
    return [(e.agent, e.attempt) for e in effects if isinstance(e, Dispatch)]


def test_happy_path_through_seven_stages_then_tim() -> None:
    wf, effects = run([Start(), *[ok(i) for i in range(N)]])
    assert wf.status == "DEPLOYED"
    assert [a for a, _ in dispatched(effects)] == [s.agent for s in P.stages]
    assert any(isinstance(e, MarkDeployed) for e in effects)
    assert [e.agent for e in effects if isinstance(e, DispatchFollowup)] == ["tim"]


def test_berry_without_a_deployment_leaves_the_req_complete_not_deployed() -> None:
    for last in (
        Completed(N - 1, None, "COMPLETE", commit_sha="abc1234"),
        Completed(N - 1, None, "COMPLETE", deployed=False, deployed_at="2026-11-23T10:00:00Z"),
    ):
        wf, effects = run([Start(), *[ok(i) for i in range(N - 1)], last])
        assert wf.status == "COMPLETE" and wf.finished
        (mark,) = [e for e in effects if isinstance(e, MarkDeployed)]
        assert not mark.deployed and mark.deployed_at is None
        assert [e.agent for e in effects if isinstance(e, DispatchFollowup)] == ["tim"]


def test_sylvia_reject_then_approve() -> None:
    wf, effects = run(
        [
            Start(),
            ok(0),
            ok(1, verdict="REJECTED", instructions={"required_fixes": ["cite sources"]}),
            ok(0),
            ok(1),
        ]
    )
    assert [d for d in dispatched(effects)] == [
        ("cynthia", 1),
        ("sylvia", 1),
        ("cynthia", 2),
        ("sylvia", 2),
        ("roy", 1),
    ]
    rework = next(e for e in effects if isinstance(e, Dispatch) and e.attempt == 2)
    assert rework.instructions["rework"]["required_fixes"] == ["cite sources"]
    assert wf.stage == 2


def test_rejects_beyond_budget_escalate_once() -> None:
    budget = P.stage(1).rework_budget
    events = [Start(), ok(0)]
    for _ in range(budget):
        events += [ok(1, verdict="REJECTED"), ok(0)]
    events.append(ok(1, verdict="REJECTED"))
    wf, effects = run(events)
    assert wf.status == "BLOCKED"
    assert len([e for e in effects if isinstance(e, Escalate)]) == 1


def test_billy_failure_goes_back_to_the_agent_named() -> None:
    events = [
        Start(),
        *[ok(i) for i in range(4)],
        Completed(4, None, "FAILED", qa_passed=False, rework_agents=("jen",)),
        ok(3),
        ok(4),
        ok(5),
        ok(6),
    ]
    wf, effects = run(events)
    assert ("jen", 2) in dispatched(effects)
    assert wf.status == "DEPLOYED"


def test_berry_never_dispatched_without_qa_approval() -> None:
    _, effects = run(
        [Start(), *[ok(i) for i in range(4)], Completed(4, None, "COMPLETE", qa_passed=False)]
    )
    assert "berry" not in [a for a, _ in dispatched(effects)]


def test_blocked_escalates_and_decision_resumes() -> None:
    wf, effects = run([Start(), ok(0), ok(1), Completed(2, None, "BLOCKED", summary="no schema")])
    assert wf.status == "BLOCKED" and wf.blocked_reason == "no schema"
    assert [e.reason for e in effects if isinstance(e, Escalate)] == ["no schema"]
    wf, effects = apply(P, wf, Decision("RETRY"))
    assert wf.status == "IN_PROGRESS" and dispatched(effects) == [("roy", 2)]


def test_timeout_retries_then_escalates() -> None:
    wf, _ = run([Start()])
    for attempt in range(1, P.stage(0).retries + 1):
        wf, effects = apply(P, wf, TimedOut(0, attempt))
        assert dispatched(effects) == [("cynthia", attempt + 1)]
    wf, effects = apply(P, wf, TimedOut(0, wf.attempt))
    assert wf.status == "BLOCKED" and any(isinstance(e, Escalate) for e in effects)


def test_stale_and_duplicate_notices_are_ignored() -> None:
    wf, _ = run([Start(), ok(0)])
    for ev in (ok(0), Completed(1, 7, "COMPLETE", verdict="APPROVED"), TimedOut(0, 1)):
        new, effects = apply(P, wf, ev)
        assert new == wf and isinstance(effects[0], Ignored)


def test_cancel_and_finished_reqs() -> None:
    wf, _ = run([Start(), ok(0), Decision("CANCEL", reason="owner withdrew")])
    assert wf.status == "CANCELLED"
    with pytest.raises(DecisionRejected):
        apply(P, wf, Decision("RETRY"))
    assert apply(P, wf, ok(1))[0] == wf


# --- invariants under random event sequences -----------------------------------
def _event() -> st.SearchStrategy:
    stage = st.integers(0, N - 1)
    attempt = st.one_of(st.none(), st.integers(1, 4))
    return st.one_of(
        st.just(Start()),
        st.builds(
            Completed,
            stage=stage,
            attempt=attempt,
            status=st.sampled_from(["COMPLETE", "BLOCKED", "FAILED", "IN_PROGRESS"]),
            verdict=st.sampled_from([None, "APPROVED", "APPROVED_WITH_CONDITIONS", "REJECTED"]),
            qa_passed=st.booleans(),
            rework_agents=st.lists(st.sampled_from(["roy", "jen", "bob"]), max_size=2).map(tuple),
            deployed_at=st.sampled_from([None, "2026-11-23T10:00:00Z"]),
            deployed=st.sampled_from([None, True, False]),
        ),
        st.builds(TimedOut, stage=stage, attempt=st.integers(1, 4)),
        st.builds(
            Decision,
            kind=st.sampled_from(
                ["APPROVE", "REQUEST_CHANGES", "RETRY", "CANCEL", "ESCALATE_HUMAN"]
            ),
            restart_stage=st.one_of(st.none(), stage),
        ),
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(_event(), max_size=60))
def test_invariants_hold_for_any_event_sequence(events: list) -> None:
    wf = Workflow("REQ-PROP-1")
    for ev in events:
        before = wf
        try:
            wf, effects = apply(P, wf, ev)
        except DecisionRejected:
            assert isinstance(ev, Decision)
            continue
        if before.finished:
            assert wf == before, "a finished REQ never changes"
        if wf.status == "DEPLOYED" and before.status != "DEPLOYED":
            assert isinstance(ev, Completed) and ev.deployed is not False, "falsely DEPLOYED"
            assert ev.deployed_at is not None, "DEPLOYED without a deployment"
        for eff in effects:
            if isinstance(eff, Dispatch):
                prev = before.stage
                # Forward moves are exactly one stage; backward moves are rework/restarts.
                assert (prev is None and eff.stage == 0) or (
                    prev is not None and eff.stage <= prev + 1
                )
                if P.stage(eff.stage).gate == "deploy":
                    assert before.qa_approved or wf.qa_approved, "Berry before Billy's approval"
        for index, used in wf.retries.items():
            assert used <= P.stage(int(index)).retries, "retry over budget"
        for gate, used in wf.rework.items():
            budget = next(s.rework_budget for s in P.stages if s.gate == gate)
            assert used <= budget, "rework over budget"
