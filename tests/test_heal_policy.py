"""The restart policy is pure: property tests over random failure timelines."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import example, given
from hypothesis import strategies as st

from workers.infra.heal_policy import ContainerRecord, HealPolicy, backoff, decide, on_probe

POLICIES = st.builds(
    HealPolicy,
    unhealthy_probes=st.integers(1, 5),
    budget=st.integers(1, 6),
    window=st.floats(1, 1000),
    backoff_base=st.floats(0.01, 10),
    backoff_max=st.floats(0.01, 100),
)
GAPS = st.lists(st.floats(0, 200), min_size=1, max_size=80)


def timeline(gaps: list[float]) -> list[float]:
    now, times = 0.0, []
    for gap in gaps:
        now += gap
        times.append(now)
    return times


@given(POLICIES, GAPS)
def test_restarts_never_exceed_the_budget_in_any_window(
    policy: HealPolicy, gaps: list[float]
) -> None:
    record = ContainerRecord()
    restarts = [t for t in timeline(gaps) if decide(policy, record, t) == "restart"]
    for i, start in enumerate(restarts):
        # The window is half-open, as in decide(): a restart exactly `window` ago is out of it.
        in_window = [t for t in restarts[i:] if start > t - policy.window]
        assert len(in_window) <= policy.budget


@given(POLICIES, GAPS)
@example(HealPolicy(unhealthy_probes=1, budget=1, window=1.0), [0.0, 0.0, 1.0, 0.0])
def test_escalation_is_sent_at_most_once_per_window(policy: HealPolicy, gaps: list[float]) -> None:
    record = ContainerRecord()
    escalations = [t for t in timeline(gaps) if decide(policy, record, t) == "escalate"]
    for earlier, later in pairwise(escalations):
        # Half-open window, compared as decide() compares: exactly `window` apart is allowed.
        assert earlier <= later - policy.window


@given(POLICIES, GAPS)
def test_restarts_are_spaced_by_the_backoff(policy: HealPolicy, gaps: list[float]) -> None:
    record = ContainerRecord()
    last: float | None = None
    for t in timeline(gaps):
        before = len(record.restarts)
        if decide(policy, record, t) == "restart":
            if last is not None and before:
                assert t - last >= backoff(policy, before) - 1e-9
            last = t


def test_a_crash_loop_escalates_once_then_gives_up() -> None:
    policy = HealPolicy(budget=2, window=100, backoff_base=1)
    record = ContainerRecord()
    decisions = [decide(policy, record, t) for t in (0, 0.5, 1, 3, 4, 5, 6)]
    assert decisions == ["restart", "wait", "restart", "escalate", "give_up", "give_up", "give_up"]
    assert decide(policy, record, 200) == "restart"  # a new window, a new budget


def test_unhealthy_needs_consecutive_failed_probes() -> None:
    policy = HealPolicy(unhealthy_probes=3)
    record = ContainerRecord()
    probes = [False, False, True, False, False, False]
    assert [on_probe(policy, record, ok) for ok in probes] == [
        False,
        False,
        False,
        False,
        False,
        True,
    ]
