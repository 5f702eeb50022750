"""Send a transaction's writes in one round trip.

A transition writes a dozen rows (attempt, outbox, audit events, cache...).
Sent one by one, the round trips dominate the cost of a transition. A
``BatchedConnection`` queues every ``execute`` and sends the queue as one
statement of data-modifying CTEs when the transaction reads something or is
about to commit, so the order of reads and writes is kept. Two queued
statements must not modify the same row (CTEs share one snapshot); the store
is written so that they never do.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

_PARAM = re.compile(r"\$(\d+)")


class BatchedConnection:
    """Wraps a connection inside a transaction; writes are queued, reads flush."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self._parts: list[str] = []
        self._args: list[Any] = []
        self._notify: set[str] = set()

    async def execute(self, sql: str, *args: Any) -> None:
        offset = len(self._args)
        self._parts.append(_PARAM.sub(lambda m: f"${int(m.group(1)) + offset}", sql))
        self._args.extend(args)

    def notify_on_flush(self, channel: str) -> None:
        self._notify.add(channel)

    async def flush(self) -> None:
        if not self._parts and not self._notify:
            return
        notify = ", ".join(f"pg_notify('{c}', '')" for c in sorted(self._notify)) or "1"
        if self._parts:
            ctes = ", ".join(f"w{i} AS ({part})" for i, part in enumerate(self._parts))
            sql = f"WITH {ctes} SELECT {notify}"
        else:
            sql = f"SELECT {notify}"
        args = self._args
        self._parts, self._args, self._notify = [], [], set()
        await self.conn.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        await self.flush()
        return await self.conn.fetch(sql, *args)  # type: ignore[no-any-return]

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        await self.flush()
        return await self.conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        await self.flush()
        return await self.conn.fetchval(sql, *args)
