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
from functools import lru_cache
from typing import Any

import asyncpg

_PARAM = re.compile(r"\$(\d+)")


@lru_cache(maxsize=512)
def _split_params(sql: str) -> tuple[list[str], list[int]]:
    """A statement cut at its $n parameters (the store's statements are few and
    fixed, so each is parsed once)."""
    texts, numbers, last = [], [], 0
    for match in _PARAM.finditer(sql):
        texts.append(sql[last : match.start()])
        numbers.append(int(match.group(1)))
        last = match.end()
    texts.append(sql[last:])
    return texts, numbers


class BatchedConnection:
    """Wraps a connection inside a transaction; writes are queued, reads flush."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self._parts: list[str] = []
        self._args: list[Any] = []
        self._notify: set[str] = set()
        # Multi-row inserts by key: position in _parts, head, rows, tail.
        self._rows: dict[str, tuple[int, str, list[str], str]] = {}
        # Workflow rows a batch locked up front (store.lock_workflows), by REQ;
        # each is handed out once, later lookups read the row afresh.
        self.prefetched: dict[str, Any] = {}
        # Set when the commit may let the dispatcher admit more work.
        self.wake_dispatcher = False

    @property
    def queued_args(self) -> int:
        return len(self._args)

    def _renumber(self, sql: str, args: tuple[Any, ...]) -> str:
        offset = len(self._args)
        self._args.extend(args)
        texts, numbers = _split_params(sql)
        out = [texts[0]]
        for number, text in zip(numbers, texts[1:], strict=True):
            out.append(f"${number + offset}")
            out.append(text)
        return "".join(out)

    async def execute(self, sql: str, *args: Any) -> None:
        self._parts.append(self._renumber(sql, args))

    def insert_row(self, head: str, row: str, tail: str, *args: Any) -> None:
        """Queue one row of ``head VALUES (row) tail``; rows sharing a head become
        one multi-row INSERT, so ids (e.g. the outbox order) follow queue order."""
        entry = self._rows.get(head)
        if entry is None:
            entry = (len(self._parts), head, [], tail)
            self._rows[head] = entry
            self._parts.append("")  # filled at flush
        entry[2].append(f"({self._renumber(row, args)})")

    def notify_on_flush(self, channel: str) -> None:
        self._notify.add(channel)

    async def flush(self) -> None:
        if not self._parts and not self._notify:
            return
        for position, head, rows, tail in self._rows.values():
            self._parts[position] = f"{head} VALUES {', '.join(rows)} {tail}"
        self._rows = {}
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
