"""Send a transaction's writes in few round trips.

A transition writes a dozen rows (attempt, outbox, audit events, cache...),
and a batch of transitions many more. Sent one by one, the round trips
dominate. A ``BatchedConnection`` queues every ``execute`` and sends the
queue when the transaction reads something or is about to commit:

- a few writes (one transition) go as one statement of data-modifying CTEs:
  one round trip, and its text repeats from transition to transition, so
  asyncpg and Postgres prepare it once;
- many writes (a busy batch) go as each distinct statement once with all its
  rows (asyncpg's pipelined ``executemany``): a CTE text that changed with
  every batch made Postgres parse and plan hundreds of parts each time.

Queued writes must not depend on one another (CTEs share one snapshot; the
store is written so that they never do). Rows of one statement keep queue
order, so outbox ids follow the order of ``enqueue`` calls.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import asyncpg

_PARAM = re.compile(r"\$(\d+)")
# Up to this many queued writes, one CTE statement; above it, executemany.
CTE_MAX = 24


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


def _renumber(sql: str, offset: int) -> str:
    texts, numbers = _split_params(sql)
    out = [texts[0]]
    for number, text in zip(numbers, texts[1:], strict=True):
        out.append(f"${number + offset}")
        out.append(text)
    return "".join(out)


class BatchedConnection:
    """Wraps a connection inside a transaction; writes are queued, reads flush."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        # (statement, args, multi-row insert as (head, row, tail) or None), in order
        self._queue: list[tuple[str, tuple[Any, ...], tuple[str, str, str] | None]] = []
        self._count = 0
        self._notify: set[str] = set()

    @property
    def queued_args(self) -> int:
        return self._count

    async def execute(self, sql: str, *args: Any) -> None:
        self._queue.append((sql, args, None))
        self._count += len(args)

    def insert_row(self, head: str, row: str, tail: str, *args: Any) -> None:
        """Queue one row of ``head VALUES (row) tail`` (rows keep queue order)."""
        self._queue.append((f"{head} VALUES ({row}) {tail}", args, (head, row, tail)))
        self._count += len(args)

    def notify_on_flush(self, channel: str) -> None:
        """NOTIFY ``channel`` with the next flush (so at commit)."""
        self._notify.add(channel)

    async def flush(self) -> None:
        queue, notify = self._queue, self._notify
        self._queue, self._notify, self._count = [], set(), 0
        if len(queue) > CTE_MAX:
            await self._send_grouped(queue, notify)
        elif queue or notify:
            await self._send_as_ctes(queue, notify)

    async def _send_grouped(
        self,
        queue: list[tuple[str, tuple[Any, ...], tuple[str, str, str] | None]],
        notify: set[str],
    ) -> None:
        grouped: dict[str, list[tuple[Any, ...]]] = {}
        for sql, args, _ in queue:
            grouped.setdefault(sql, []).append(args)
        for sql, rows in grouped.items():
            await self.conn.executemany(sql, rows)
        for channel in sorted(notify):
            await self.conn.execute(f"NOTIFY {channel}")

    async def _send_as_ctes(
        self,
        queue: list[tuple[str, tuple[Any, ...], tuple[str, str, str] | None]],
        notify: set[str],
    ) -> None:
        parts: list[str] = []
        args: list[Any] = []
        # Rows sharing an insert head become one multi-row INSERT, in order.
        inserts: dict[str, tuple[int, list[str], str]] = {}
        for sql, row_args, insert in queue:
            if insert is None:
                parts.append(_renumber(sql, len(args)))
            else:
                head, row, tail = insert
                if head not in inserts:
                    inserts[head] = (len(parts), [], tail)
                    parts.append("")  # filled below
                inserts[head][1].append(f"({_renumber(row, len(args))})")
            args.extend(row_args)
        for head, (position, rows, tail) in inserts.items():
            parts[position] = f"{head} VALUES {', '.join(rows)} {tail}"
        calls = ", ".join(f"pg_notify('{c}', '')" for c in sorted(notify)) or "1"
        ctes = ", ".join(f"w{i} AS ({part})" for i, part in enumerate(parts))
        await self.conn.execute(
            f"WITH {ctes} SELECT {calls}" if parts else f"SELECT {calls}", *args
        )

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        await self.flush()
        return await self.conn.fetch(sql, *args)  # type: ignore[no-any-return]

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        await self.flush()
        return await self.conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        await self.flush()
        return await self.conn.fetchval(sql, *args)
