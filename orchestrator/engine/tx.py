"""The engine's unit of work: one transaction, and what it leaves for after commit.

``BatchedConnection`` (runtime) only batches SQL. What the engine must do
once a transaction has committed (publish its outbox rows, wake the
dispatcher or this process's memory services, count its metrics) is kept
apart in ``AfterCommit``, and done by whoever committed, only after the
commit: a rolled-back batch leaves no trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from orchestrator.runtime.batch import BatchedConnection
from orchestrator.runtime.metrics import Tally

OutboxRow = tuple[str, str, str]  # (msg_id, subject, payload)


@dataclass
class AfterCommit:
    """The effects of a transaction that happen outside Postgres, after commit."""

    # When True, outbox rows are collected in ``outbox`` for the committer to
    # publish at once (no relay hop); otherwise the relay is woken by NOTIFY.
    direct_publish: bool = False
    outbox: list[OutboxRow] = field(default_factory=list)
    # The commit may let the dispatcher admit more work.
    wake_dispatcher: bool = False
    # Metric updates; applied after commit, dropped with a rollback.
    tally: Tally = field(default_factory=Tally)
    # Channels woken in this process instead of by a NOTIFY: a NOTIFY takes a
    # database-wide lock at commit, which would serialize every replica's commits.
    local_channels: frozenset[str] = frozenset()
    woken: set[str] = field(default_factory=set)


class EngineTx(BatchedConnection):
    """A batched connection inside the engine's transaction, with the rows the
    batch locked up front and its ``AfterCommit``."""

    def __init__(self, conn: asyncpg.Connection, after: AfterCommit | None = None) -> None:
        super().__init__(conn)
        self.after = after or AfterCommit()
        # Workflow rows a batch locked up front (store.lock_workflows), by REQ;
        # each is handed out once, later lookups read the row afresh.
        self.prefetched: dict[str, Any] = {}

    @property
    def tally(self) -> Tally:
        """What ``metrics.tally_of`` counts into: applied only after commit."""
        return self.after.tally

    def notify_on_flush(self, channel: str) -> None:
        if channel in self.after.local_channels:
            self.after.woken.add(channel)
        else:
            super().notify_on_flush(channel)
