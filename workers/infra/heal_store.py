"""Miki's restart history in Postgres, one row per container.

Kept only in memory, a crash-looping container's budget would start afresh
with every agogd restart, and two replicas watching one engine would each
restart the same death. Here the record is read and written under the row's
lock, around the whole decision and its action.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator

import asyncpg

from workers.infra.heal_policy import ContainerRecord

_INSERT = (
    "INSERT INTO heal_records (container_id, container) VALUES ($1, $2)"
    " ON CONFLICT (container_id) DO NOTHING"
)
_LOCK = (
    "SELECT restarts, escalated_at, next_allowed FROM heal_records"
    " WHERE container_id = $1 FOR UPDATE"
)
_SAVE = (
    "UPDATE heal_records SET container = $2, restarts = $3, escalated_at = $4,"
    " next_allowed = $5, updated_at = now() WHERE container_id = $1"
)
_FORGET = "DELETE FROM heal_records WHERE container_id = $1"
_PRUNE = "DELETE FROM heal_records WHERE updated_at < now() - make_interval(secs => $1)"


class HealStore:
    """Locked access to a container's record, in the daemon's pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @contextlib.asynccontextmanager
    async def locked(self, container_id: str, name: str) -> AsyncIterator[ContainerRecord]:
        """The record, locked; saved when the block ends without an error."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_INSERT, container_id, name)
            row = await conn.fetchrow(_LOCK, container_id)
            record = ContainerRecord(
                restarts=deque(row["restarts"]),
                escalated_at=row["escalated_at"],
                next_allowed=row["next_allowed"],
            )
            yield record
            await conn.execute(
                _SAVE,
                container_id,
                name,
                list(record.restarts),
                record.escalated_at,
                record.next_allowed,
            )

    async def forget(self, container_id: str) -> None:
        """Drop a removed container's record."""
        await self.pool.execute(_FORGET, container_id)

    async def prune(self, quiet_seconds: float) -> int:
        """Drop records not touched for ``quiet_seconds``; how many went."""
        status = await self.pool.execute(_PRUNE, quiet_seconds)
        return int(status.split()[-1])
