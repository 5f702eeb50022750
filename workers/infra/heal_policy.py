"""When to restart a container and when to give up: pure, no I/O, property-testable.

A container that dies, or stays unhealthy for ``unhealthy_probes`` probes in
a row, is restarted after an exponential backoff, up to ``budget`` restarts
per ``window`` seconds. Past the budget it is escalated, once per window,
and left alone: a crash loop must reach a human, not spin forever.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

Decision = Literal["restart", "wait", "escalate", "give_up", "ok"]


@dataclass(frozen=True)
class HealPolicy:
    unhealthy_probes: int = 3
    budget: int = 5
    window: float = 600.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0


@dataclass
class ContainerRecord:
    """What the watcher remembers of one container."""

    restarts: deque[float] = field(default_factory=deque)  # restart times in the window
    failed_probes: int = 0
    escalated_at: float | None = None
    next_allowed: float = 0.0


def backoff(policy: HealPolicy, restarts_in_window: int) -> float:
    """Seconds to wait before the next restart."""
    return min(policy.backoff_max, policy.backoff_base * 2 ** max(0, restarts_in_window - 1))


def on_probe(policy: HealPolicy, record: ContainerRecord, healthy: bool) -> bool:
    """Count a health probe; True when the container should be treated as failed."""
    record.failed_probes = 0 if healthy else record.failed_probes + 1
    return record.failed_probes >= policy.unhealthy_probes


def decide(policy: HealPolicy, record: ContainerRecord, now: float) -> Decision:
    """What to do about a failed container now; updates the record when acting."""
    while record.restarts and record.restarts[0] <= now - policy.window:
        record.restarts.popleft()
    if len(record.restarts) >= policy.budget:
        if record.escalated_at is None or record.escalated_at <= now - policy.window:
            record.escalated_at = now
            return "escalate"
        return "give_up"
    if now < record.next_allowed:
        return "wait"
    record.restarts.append(now)
    record.failed_probes = 0
    record.next_allowed = now + backoff(policy, len(record.restarts))
    return "restart"
