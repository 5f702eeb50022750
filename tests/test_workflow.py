"""The pure workflow state machine: scenarios and hypothesis-driven invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core import registry
from orchestrator.core.workflow import (
    AttemptMark,
    CloseAttempt,
    Completed,
    Decision,
    DecisionRejected,
    Dispatch,
    Escalate,
    Ignored,
    MarkDeployed,
    Start,
    TimedOut,
    Workflow,
    apply,
    provenance,
)
from orchestrator.engine.effects import stage_by_index

P = registry.load()
N = len(P.stages)
TIM = P.followups[0]


def ok(stage: int, **kw: object) -> Completed:
    verdict = "APPROVED" if P.stage(stage).gate == "critique" else None
    if P.stage(stage).gate == "deploy":
        kw.setdefault("deployed_at", "2026-11-23T10:00:00Z")
    attempt = kw.pop("attempt", None)
    return Completed(
        stage=stage, attempt=attempt, status="COMPLETE", verdict=kw.pop("verdict", verdict), **kw
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
    assert [a for a, _ in dispatched(effects)] == [*(s.agent for s in P.stages), "tim"]
    assert any(isinstance(e, MarkDeployed) for e in effects)
    assert wf.followups == {str(N): "RUNNING"}


def test_berry_without_a_deployment_leaves_the_req_complete_not_deployed() -> None:
    for last in (
        Completed(N - 1, None, "COMPLETE", commit_sha="abc1234"),
        Completed(N - 1, None, "COMPLETE", deployed=False, deployed_at="2026-11-23T10:00:00Z"),
    ):
        wf, effects = run([Start(), *[ok(i) for i in range(N - 1)], last])
        assert wf.status == "COMPLETE" and wf.finished
        (mark,) = [e for e in effects if isinstance(e, MarkDeployed)]
        assert not mark.deployed and mark.deployed_at is None
        assert dispatched(effects)[-1] == ("tim", 1)


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
    stage = st.integers(0, N)  # N: Tim, the follow-up
    attempt = st.one_of(st.none(), st.integers(1, 4))
    money = st.one_of(st.none(), st.sampled_from([0.0, 0.4, 1.0, 2.5]))
    return st.one_of(
        st.builds(Start, budget_usd=st.one_of(st.none(), st.sampled_from([0.5, 2.0, 5.0]))),
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
            conflict=st.booleans(),
            cost_usd=money,
        ),
        st.builds(TimedOut, stage=stage, attempt=st.integers(1, 4)),
        st.builds(
            Decision,
            kind=st.sampled_from(
                ["APPROVE", "REQUEST_CHANGES", "RETRY", "CANCEL", "ESCALATE_HUMAN"]
            ),
            restart_stage=st.one_of(st.none(), stage),
            budget_usd=st.one_of(st.none(), st.sampled_from([1.0, 3.0, 10.0])),
        ),
    )


def _stage_of(ev: object) -> int | None:
    if isinstance(ev, Decision):
        return ev.restart_stage
    return getattr(ev, "stage", None)


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
            assert wf.status == before.status, "a finished REQ stays finished"
            assert (wf.stage, wf.attempt) == (before.stage, before.attempt)
            if wf != before:  # only its follow-ups move
                assert P.is_followup(_stage_of(ev))
        if P.is_followup(_stage_of(ev)) and not before.finished:
            assert wf == before, "a follow-up runs only after the pipeline"
        if wf.status == "DEPLOYED" and before.status != "DEPLOYED":
            assert isinstance(ev, Completed) and ev.deployed is not False, "falsely DEPLOYED"
            assert ev.deployed_at is not None, "DEPLOYED without a deployment"
        for eff in effects:
            if isinstance(eff, Dispatch):
                prev = before.stage
                # Forward moves are exactly one stage; backward moves are rework/restarts.
                if P.is_followup(eff.stage):
                    assert wf.status in ("DEPLOYED", "COMPLETE"), "Tim before the deployment"
                    continue
                assert (prev is None and eff.stage == 0) or (
                    prev is not None and eff.stage <= prev + 1
                )
                if P.stage(eff.stage).gate == "deploy":
                    assert before.qa_approved or wf.qa_approved, "Berry before Billy's approval"
        # Money: spent only grows, by exactly the cost of an applied notice,
        # and no attempt ever starts once the REQ's budget is spent.
        assert wf.spent_usd >= before.spent_usd
        charged = isinstance(ev, Completed) and not any(isinstance(e, Ignored) for e in effects)
        if wf.spent_usd != before.spent_usd:
            assert charged and ev.cost_usd, "spent without an applied notice's cost"
            assert abs(wf.spent_usd - before.spent_usd - ev.cost_usd) < 1e-9
        for eff in effects:
            if isinstance(eff, Dispatch):
                assert (
                    wf.budget_usd is None
                    or before.spent_usd < wf.budget_usd
                    or (wf.spent_usd < wf.budget_usd)
                ), "an attempt started over the REQ's budget"
                assert wf.budget_usd is None or wf.spent_usd < wf.budget_usd
                assert eff.budget_left_usd == wf.budget_left_usd or P.is_followup(eff.stage)
        for index, used in wf.retries.items():
            assert used <= stage_by_index(P, int(index)).retries, "retry over budget"
        for gate, used in wf.rework.items():
            budget = next(s.rework_budget for s in P.stages if s.gate == gate)
            assert used <= budget, "rework over budget"


# --- budgets ---------------------------------------------------------------------
def test_an_attempt_that_would_start_over_the_budget_blocks_and_a_decision_resumes_it() -> None:
    wf, effects = run([Start(budget_usd=1.0), ok(0, cost_usd=0.6), ok(1, cost_usd=0.5)])
    assert wf.status == "BLOCKED" and wf.stage == 2 and wf.budget_blocked
    assert wf.spent_usd == 1.1
    assert not any(isinstance(e, Dispatch) for e in effects[-3:]), "roy was not started"
    (esc,) = [e for e in effects if isinstance(e, Escalate)]
    assert esc.priority == "NEEDS_HUMAN_DECISION" and "$1.10 of $1.00" in esc.reason
    # An APPROVE of a stage that never ran runs it (never skips it), with the new budget.
    wf, effects = apply(P, wf, Decision("APPROVE", budget_usd=5.0))
    (dispatch,) = [e for e in effects if isinstance(e, Dispatch)]
    assert (dispatch.stage, dispatch.attempt) == (2, 1)
    assert dispatch.budget_left_usd == 3.9 and wf.status == "IN_PROGRESS"
    # Without a new budget, a RETRY stays blocked (nothing overspends silently).
    wf, _ = apply(P, wf, ok(2, attempt=1, cost_usd=4.0))
    assert wf.status == "BLOCKED" and wf.stage == 3
    wf, effects = apply(P, wf, Decision("RETRY"))
    assert wf.status == "BLOCKED" and not any(isinstance(e, Dispatch) for e in effects)


def test_costs_of_ignored_notices_are_not_charged() -> None:
    wf, _ = run([Start(budget_usd=10.0), ok(0, cost_usd=1.0)])
    late, effects = apply(P, wf, ok(0, attempt=1, cost_usd=1.0))  # a duplicate of stage 0
    assert any(isinstance(e, Ignored) for e in effects) and late.spent_usd == 1.0


# --- follow-ups: Tim obeys his retries, the REQ stays DEPLOYED ------------------
def deployed() -> Workflow:
    wf, _ = run([Start(), *[ok(i) for i in range(N)]])
    assert wf.status == "DEPLOYED" and wf.followups == {str(TIM.index): "RUNNING"}
    return wf


def test_a_failed_tim_is_retried_within_budget_then_escalated_once() -> None:
    wf, effects = deployed(), []
    for _ in range(TIM.retries):
        wf, effects = apply(P, wf, Completed(TIM.index, None, "FAILED", summary="no CHANGELOG"))
        assert dispatched(effects)[-1] == ("tim", wf.attempts[str(TIM.index)])
        assert wf.status == "DEPLOYED"
    wf, effects = apply(P, wf, Completed(TIM.index, None, "FAILED", summary="no CHANGELOG"))
    assert wf.status == "DEPLOYED" and wf.followups[str(TIM.index)] == "FAILED"
    assert not dispatched(effects)
    (escalation,) = [e for e in effects if isinstance(e, Escalate)]
    assert escalation.stage == TIM.index and "retry budget" in escalation.reason
    again, effects = apply(P, wf, Completed(TIM.index, None, "FAILED"))
    assert again == wf and isinstance(effects[0], Ignored)


def test_a_tim_past_his_deadline_is_retried_and_then_escalated() -> None:
    wf = deployed()
    wf, effects = apply(P, wf, TimedOut(TIM.index, 1))
    assert dispatched(effects) == [("tim", 2)]
    closed = [e for e in effects if isinstance(e, CloseAttempt)]
    assert [(c.outcome, c.verdict) for c in closed] == [("TIMED_OUT", "failure")]
    for _ in range(TIM.retries):  # the budget was one; spend what is left
        wf, effects = apply(P, wf, TimedOut(TIM.index, wf.attempts[str(TIM.index)]))
    assert wf.followups[str(TIM.index)] == "FAILED" and wf.status == "DEPLOYED"
    assert any(isinstance(e, Escalate) for e in effects)


def test_an_operator_retry_reruns_tim_with_a_fresh_budget() -> None:
    wf = deployed()
    for _ in range(TIM.retries + 1):
        wf, _ = apply(P, wf, Completed(TIM.index, None, "FAILED"))
    assert wf.followups[str(TIM.index)] == "FAILED"
    wf, effects = apply(P, wf, Decision("RETRY", restart_stage=TIM.index))
    assert dispatched(effects) == [("tim", TIM.retries + 2)]
    assert wf.retries[str(TIM.index)] == 0 and wf.status == "DEPLOYED"
    wf, effects = apply(P, wf, Completed(TIM.index, None, "COMPLETE"))
    assert wf.followups[str(TIM.index)] == "COMPLETE" and wf.status == "DEPLOYED"
    # Re-running a running Tim supersedes his attempt.
    wf, effects = apply(P, wf, Decision("RETRY", restart_stage=TIM.index))
    wf, effects = apply(P, wf, Decision("RETRY", restart_stage=TIM.index))
    assert [(c.outcome) for c in effects if isinstance(c, CloseAttempt)] == ["SUPERSEDED"]


def test_tim_cannot_be_retried_before_the_deployment_or_after_a_cancel() -> None:
    wf, _ = run([Start(), ok(0)])
    with pytest.raises(DecisionRejected, match="runs only after berry"):
        apply(P, wf, Decision("RETRY", restart_stage=TIM.index))
    cancelled, _ = apply(P, wf, Decision("CANCEL"))
    with pytest.raises(DecisionRejected):
        apply(P, cancelled, Decision("RETRY", restart_stage=TIM.index))
    with pytest.raises(DecisionRejected, match="can only be retried"):
        apply(P, deployed(), Decision("REQUEST_CHANGES", restart_stage=TIM.index))
    new, effects = apply(P, wf, Completed(TIM.index, None, "COMPLETE"))
    assert new == wf and isinstance(effects[0], Ignored)


def test_a_blocked_tim_escalates_for_a_human() -> None:
    wf, effects = apply(P, deployed(), Completed(TIM.index, None, "BLOCKED", summary="no docs"))
    assert wf.followups[str(TIM.index)] == "BLOCKED" and wf.status == "DEPLOYED"
    assert [e.priority for e in effects if isinstance(e, Escalate)] == ["NEEDS_HUMAN_DECISION"]


# --- gate rejections are not failures (the metrics read this) -------------------
def test_a_critique_rejection_and_a_failed_critic_are_told_apart() -> None:
    _, effects = run([Start(), ok(0), ok(1, verdict="REJECTED")])
    closed = [e for e in effects if isinstance(e, CloseAttempt) and e.stage == 1]
    assert [(c.outcome, c.verdict) for c in closed] == [("REJECTED", "rejection")]
    _, effects = run([Start(), ok(0), Completed(1, None, "FAILED", summary="exit 1")])
    closed = [e for e in effects if isinstance(e, CloseAttempt) and e.stage == 1]
    assert [(c.outcome, c.verdict) for c in closed] == [("FAILED", "failure")]
    _, effects = run([Start(), *[ok(i) for i in range(4)], Completed(4, None, "FAILED")])
    closed = [e for e in effects if isinstance(e, CloseAttempt) and e.stage == 4]
    assert [(c.outcome, c.verdict) for c in closed] == [("FAILED", "rejection")]


# --- a notice without an attempt belongs to the attempt it answered ------------
def test_a_late_copy_of_cynthias_first_notice_does_not_close_her_second_attempt() -> None:
    first = ok(0, digest="d-cynthia-1", published_at=110.0)
    wf, _ = run([Start(), first, ok(1, verdict="REJECTED", digest="d-sylvia-1")])
    assert (wf.stage, wf.attempt) == (0, 2)
    history = (AttemptMark(1, 100.0, "d-cynthia-1"), AttemptMark(2, 200.0))
    copy = ok(0, digest="d-cynthia-1", published_at=300.0, history=history)
    new, effects = apply(P, wf, copy)
    assert new == wf
    assert effects == [Ignored("duplicate of the notice already applied to attempt 1", 1)]
    # Another notice, stored before attempt 2 was assigned, answered attempt 1.
    older = ok(0, digest="d-other", published_at=150.0, history=history)
    new, effects = apply(P, wf, older)
    assert new == wf and effects[0].attempt == 1 and "belongs to attempt 1" in effects[0].reason
    # Inside the clock margin it is taken as the current attempt's answer.
    fresh = ok(0, digest="d-cynthia-2", published_at=199.0, history=history)
    new, _ = apply(P, wf, fresh)
    assert (new.stage, new.attempt) == (1, 2)


def test_a_late_copy_of_sylvias_rejection_spends_no_rework_budget() -> None:
    wf, _ = run([Start(), ok(0), ok(1, verdict="REJECTED"), ok(0)])
    assert (wf.stage, wf.attempt) == (1, 2) and wf.rework == {"critique": 1}
    history = (AttemptMark(1, 100.0, "d-rejected"), AttemptMark(2, 200.0))
    copy = ok(1, verdict="REJECTED", digest="d-rejected", published_at=300.0, history=history)
    new, effects = apply(P, wf, copy)
    assert new == wf and effects[0].attempt == 1


marks = st.lists(
    st.tuples(st.floats(0, 1000), st.sampled_from([None, "a", "b", "c"])), min_size=1, max_size=6
).map(
    lambda rows: tuple(
        AttemptMark(i + 1, start, digest)
        for i, (start, digest) in enumerate(sorted(rows, key=lambda r: r[0]))
    )
)


@settings(max_examples=500, deadline=None)
@given(
    history=marks,
    published_at=st.one_of(st.none(), st.floats(0, 1200)),
    digest=st.sampled_from([None, "a", "b", "fresh"]),
    attempt=st.one_of(st.none(), st.integers(1, 6)),
    margin=st.floats(0, 5),
)
def test_provenance_places_a_notice_by_its_content_then_its_publish_time(
    history: tuple[AttemptMark, ...],
    published_at: float | None,
    digest: str | None,
    attempt: int | None,
    margin: float,
) -> None:
    current = history[-1]
    ev = Completed(
        0, attempt, "COMPLETE", published_at=published_at, digest=digest,
        history=history, clock_margin=margin,
    )  # fmt: skip
    verdict = provenance(current.attempt, ev)
    if attempt is not None:
        assert verdict is None, "a notice naming its attempt is taken at its word"
        return
    same = [m.attempt for m in history if digest is not None and m.digest == digest]
    if same:
        assert verdict is not None and verdict.attempt == min(same)
        return
    if published_at is None or published_at >= current.started_at - margin:
        assert verdict is None, "an answer published after its assignment is never thrown away"
        return
    assert verdict is not None
    if verdict.attempt is not None:
        owner = next(m for m in history if m.attempt == verdict.attempt)
        assert owner.attempt < current.attempt
        assert owner.started_at - margin <= published_at
        later = [m for m in history if owner.attempt < m.attempt < current.attempt]
        assert all(m.started_at - margin > published_at for m in later)


class Sim:
    """The engine's bookkeeping around the pure workflow, on a logical clock:
    attempts' start times and the digests of the notices that closed them."""

    def __init__(self) -> None:
        self.wf, self.now = Workflow("REQ-SIM-1"), 0.0
        self.marks: dict[int, list[AttemptMark]] = {}
        self.applied: list[Completed] = []

    def current(self) -> tuple[int, int] | None:
        if self.wf.status == "IN_PROGRESS" and self.wf.stage is not None:
            return self.wf.stage, self.wf.attempt
        key = str(TIM.index)
        if self.wf.followups.get(key) == "RUNNING":
            return TIM.index, self.wf.attempts[key]
        return None

    def notice(self, stage: int, digest: str, published_at: float, **kw: object) -> Completed:
        gate = stage_by_index(P, stage).gate
        kw.setdefault("verdict", "APPROVED" if gate == "critique" else None)
        if gate == "deploy":
            kw.setdefault("deployed_at", "2026-11-23T10:00:00Z")
        return Completed(
            stage, None, kw.pop("status", "COMPLETE"), digest=digest,  # type: ignore[arg-type]
            published_at=published_at, history=tuple(self.marks.get(stage, [])),
            clock_margin=0.5, **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    def step(self, ev: object) -> list:
        self.now += 1.0
        if isinstance(ev, Completed):  # the history as Postgres holds it now
            ev = Completed(**{**ev.__dict__, "history": tuple(self.marks.get(ev.stage, []))})
        self.wf, effects = apply(P, self.wf, ev)  # type: ignore[arg-type]
        for e in effects:
            if isinstance(e, Dispatch):
                self.marks.setdefault(e.stage, []).append(AttemptMark(e.attempt, self.now))
            if isinstance(e, CloseAttempt) and isinstance(ev, Completed) and e.stage == ev.stage:
                rows = self.marks[e.stage]
                rows[:] = [
                    AttemptMark(m.attempt, m.started_at, ev.digest) if m.attempt == e.attempt else m
                    for m in rows
                ]
                self.applied.append(ev)
        return effects


actions = st.lists(
    st.one_of(
        st.tuples(st.just("answer"), st.sampled_from(["ok", "reject", "fail", "qa_fail"])),
        st.tuples(st.just("replay"), st.integers(0, 50)),
        st.tuples(st.just("late_copy"), st.integers(0, 50)),
        st.tuples(st.just("timeout"), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(actions)
def test_replayed_notices_never_move_a_req_and_fresh_answers_always_count(plan: list) -> None:
    sim = Sim()
    sim.step(Start())
    fresh = 0
    for kind, arg in plan:
        where = sim.current()
        if kind in ("replay", "late_copy"):
            if not sim.applied:
                continue
            old = sim.applied[arg % len(sim.applied)]
            # A replay keeps its old publish time (a redelivered second copy);
            # a late copy is the same content published again now.
            published = old.published_at if kind == "replay" else sim.now + 0.5
            before = sim.wf
            effects = sim.step(Completed(**{**old.__dict__, "published_at": published}))
            assert sim.wf == before, f"a {kind} of an applied notice moved the REQ"
            assert all(isinstance(e, Ignored) for e in effects)
            continue
        if where is None:
            continue
        stage, attempt = where
        if kind == "timeout":
            sim.step(TimedOut(stage, attempt))
            continue
        fresh += 1
        gate = stage_by_index(P, stage).gate
        extra: dict[str, object] = {}
        if arg == "reject" and gate == "critique":
            extra["verdict"] = "REJECTED"
        elif arg == "fail":
            extra["status"] = "FAILED"
        elif arg == "qa_fail" and gate == "qa":
            extra.update(qa_passed=False, status="FAILED")
        before = sim.wf
        effects = sim.step(sim.notice(stage, f"fresh-{fresh}", sim.now + 0.5, **extra))
        assert not any(isinstance(e, Ignored) for e in effects), "a fresh answer was ignored"
        assert sim.wf != before


# --- Berry's merge conflicts ---------------------------------------------------------
DEPLOY = P.gate_stage("deploy")
assert DEPLOY is not None


def conflict(agents: tuple[str, ...] = ("jen",), attempt: int | None = None) -> Completed:
    return Completed(
        DEPLOY.index,
        attempt,
        "FAILED",
        conflict=True,
        rework_agents=agents,
        instructions={"conflict": {"files": ["web/app.ts"], "hunks": "<<<<<<<"}},
    )


def to_berry() -> list:
    return [Start(), *[ok(i) for i in range(DEPLOY.index)]]


def test_a_merge_conflict_goes_back_to_the_stage_that_touched_the_files() -> None:
    wf, effects = run([*to_berry(), conflict(("jen",))])
    jen = P.stage_for_agent("jen")
    assert jen is not None and (wf.status, wf.stage) == ("IN_PROGRESS", jen.index)
    rework = [e for e in effects if isinstance(e, Dispatch)][-1]
    assert rework.instructions["rework"]["conflict"]["files"] == ["web/app.ts"]
    assert rework.instructions["rework"]["from"] == DEPLOY.agent
    assert wf.rework == {"deploy": 1}
    assert not wf.qa_approved, "QA approves the reworked branch again"


def test_a_conflict_naming_no_allowed_agent_goes_to_the_default() -> None:
    wf, _ = run([*to_berry(), conflict(("cynthia",))])
    assert wf.stage == P.stage_for_agent(DEPLOY.rework_default or "").index


def test_conflicts_past_the_rework_budget_escalate() -> None:
    events = to_berry()
    jen = P.stage_for_agent("jen")
    assert jen is not None
    for _ in range(DEPLOY.rework_budget):
        events += [conflict(), *[ok(i) for i in range(jen.index, DEPLOY.index)]]
    wf, effects = run([*events, conflict()])
    assert wf.status == "BLOCKED"
    assert any(isinstance(e, Escalate) and "rework budget" in e.reason for e in effects)


def test_a_plain_berry_failure_is_still_a_retry() -> None:
    wf, _ = run([*to_berry(), Completed(DEPLOY.index, None, "FAILED")])
    assert (wf.stage, wf.attempt) == (DEPLOY.index, 2)
    assert wf.rework == {}
