"""Memory rows written inside the caller's transaction (no network call).

Rows go in with a NULL embedding and ``embedding_status = 'pending'``; the
transaction also notifies ``agogd_memory``, so that the embedder (LISTENing)
embeds them as soon as the commit makes them visible. A duplicate content
hash is skipped (``ON CONFLICT DO NOTHING``): a redelivery or a repeat adds
nothing. In the engine the rows are queued writes of its BatchedConnection,
so they cost no extra round trip.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.memory import chunking
from orchestrator.memory.model import PENDING_CHANNEL, Draft, Row
from orchestrator.runtime.batch import BatchedConnection
from orchestrator.runtime.logs import get_logger

log = get_logger("agogd.memory")

HEAD = (
    "INSERT INTO memories (agent_id, memory_type, req_number, stage, content, content_hash,"
    " parent_hash, chunk_index, chunk_count, metadata)"
)
ROW = (
    "$1::varchar, $2::text, $3::varchar, $4::int, $5::text, $6::text, $7::text, $8::int,"
    " $9::int, $10::jsonb"
)
TAIL = "ON CONFLICT (content_hash) DO NOTHING"


def _args(row: Row) -> tuple[object, ...]:
    return (
        row.agent,
        row.kind,
        row.req_number,
        row.stage,
        row.content,
        row.content_hash,
        row.parent_hash,
        row.chunk_index,
        row.chunk_count,
        json.dumps(row.metadata, default=str),
    )


@dataclass(frozen=True)
class Writer:
    """Turns drafts into rows: chunks of at most ``chunk_chars`` (the provider's
    limit, or the configured size when that is smaller)."""

    chunk_chars: int
    max_chunks: int = 64

    def rows(self, drafts: Iterable[Draft | None]) -> list[Row]:
        rows: list[Row] = []
        for draft in drafts:
            if draft is None:
                continue
            made = chunking.rows_for(draft, self.chunk_chars, self.max_chunks)
            if made and "truncated" in made[0].metadata:
                log.warning(
                    "memory.chunks_capped",
                    req_number=draft.req_number,
                    kind=draft.kind,
                    agent=draft.agent,
                    **made[0].metadata["truncated"],
                )
            rows.extend(made)
        return rows

    async def remember(self, conn: object, drafts: Iterable[Draft | None]) -> int:
        """Queue (or write) the rows of ``drafts``; returns how many rows were sent."""
        rows = self.rows(drafts)
        if not rows:
            return 0
        if isinstance(conn, BatchedConnection):
            for row in rows:
                conn.insert_row(HEAD, ROW, TAIL, *_args(row))
            conn.notify_on_flush(PENDING_CHANNEL)
            return len(rows)
        await conn.executemany(f"{HEAD} VALUES ({ROW}) {TAIL}", [_args(r) for r in rows])  # type: ignore[attr-defined]
        await conn.execute("SELECT pg_notify($1, '')", PENDING_CHANNEL)  # type: ignore[attr-defined]
        return len(rows)
