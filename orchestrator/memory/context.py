"""The memories each stage assignment carries, computed off the hot path.

For a REQ, the query is its own requirement: the stored embedding of its
requirement memory (so no provider call is ever needed here) and the words
of its title and requirement lines. Candidates come from the vector and
full-text searches, fused by RRF, excluding the REQ's own memories; each
stage then picks its top-k by its policy (``policy``). The result is kept in
``memory_context``, one row per REQ:

* the memory service computes it for every live REQ soon after intake,
  again once the requirement's embedding exists (full text -> hybrid), and
  again when it is older than ``memory_context_ttl``;
* the engine reads only the next stage's picks, in the query that locks the
  workflow row (no extra round trip); a dispatch that finds none (a race
  with intake, a rework to an earlier stage) computes the context itself,
  in a savepoint, with the database alone.

A failure here never fails a transition: the assignment then goes out with
no memories, and the warning says why.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from orchestrator.core.workflow import LIVE
from orchestrator.memory import capture, policy
from orchestrator.memory.fusion import rrf
from orchestrator.memory.model import Filters
from orchestrator.memory.recall import Tuning, candidates
from orchestrator.runtime.batch import BatchedConnection
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.services import periodic
from orchestrator.runtime.state_log import StateLog

log = get_logger("agogd.memory")

SOURCE_SQL = (
    "SELECT ws.title, ws.requirement::text AS requirement,"
    " (SELECT m.embedding FROM memories m WHERE m.req_number = ws.req_number"
    "  AND m.memory_type = 'requirement' AND m.embedding IS NOT NULL"
    "  ORDER BY m.chunk_index LIMIT 1) AS vector"
    " FROM workflow_state ws WHERE ws.req_number = $1"
)
# A provisional context (computed by a dispatch, with a small budget) is dated
# -infinity, so that the memory service redoes it at once with its own.
STORE_SQL = (
    "INSERT INTO memory_context (req_number, picks, mode, candidates, computed_at)"
    " VALUES ($1, $2::jsonb, $3, $4, CASE WHEN $5::bool THEN '-infinity' ELSE now() END)"
    " ON CONFLICT (req_number) DO UPDATE SET picks = EXCLUDED.picks, mode = EXCLUDED.mode,"
    " candidates = EXCLUDED.candidates, computed_at = EXCLUDED.computed_at"
)
_STALE_FROM = (
    " FROM workflow_state ws LEFT JOIN memory_context mc ON mc.req_number = ws.req_number"
    " WHERE ws.status = ANY($1::text[]) AND (mc.req_number IS NULL"
    "  OR mc.computed_at < now() - make_interval(secs => $2)"
    "  OR (mc.mode IN ('fulltext', 'none') AND EXISTS (SELECT 1 FROM memories m"
    "   WHERE m.req_number = ws.req_number AND m.memory_type = 'requirement'"
    "   AND m.embedding_status = 'done')))"
)
STALE_SQL = (
    "SELECT ws.req_number"
    + _STALE_FROM
    + " ORDER BY mc.computed_at NULLS FIRST, ws.created_at LIMIT $3"
)
STILL_STALE_SQL = "SELECT EXISTS (SELECT 1" + _STALE_FROM + " AND ws.req_number = $3)"
# A dispatch's own recall (see Recaller.dispatch_tuning).
DISPATCH_TUNING = Tuning(candidates=20, ef_search=40, fulltext_cap=100)
# With hashtext(REQ), a transaction-scoped advisory lock per REQ's refresh.
CONTEXT_LOCK = 0x616D6378  # "amcx"


@dataclass(frozen=True)
class Context:
    picks: dict[str, list[dict[str, Any]]]
    mode: str  # hybrid, vector, fulltext, or none (nothing to recall on)
    candidates: int


@dataclass(frozen=True)
class Recaller:
    """Computes and serves per-REQ contexts for one pipeline."""

    # (index, agent, recall policy) of every stage and follow-up (the registry's).
    stages: tuple[tuple[int, str, tuple[policy.Pair, ...]], ...]
    top_k: int = 5
    tuning: Tuning = field(default_factory=Tuning)
    # When a dispatch computes the context itself (it holds the REQ's lock, and
    # at admission the dispatcher's): a small budget, candidates within HNSW's
    # default ef_search (no SET round trip) and few full-text rows ranked. The
    # result is provisional: the memory service redoes it with its own.
    dispatch_tuning: Tuning = field(default_factory=lambda: DISPATCH_TUNING)

    async def source(self, conn: asyncpg.Connection, req: str) -> tuple[Any, str | None] | None:
        """(stored requirement vector or None, query text or None); None if no REQ."""
        row = await conn.fetchrow(SOURCE_SQL, req)
        if row is None:
            return None
        requirement = json.loads(row["requirement"]) if row["requirement"] else {}
        return row["vector"], capture.query_text(row["title"] or "", requirement) or None

    def empty(self) -> Context:
        return Context({str(stage[0]): [] for stage in self.stages}, "none", 0)

    async def compute(self, conn: asyncpg.Connection, req: str, tuning: Tuning) -> Context | None:
        """The REQ's context from the database alone; None if the REQ is unknown."""
        found = await self.source(conn, req)
        if found is None:
            return None
        return await self.recall(conn, req, *found, tuning)

    async def recall(
        self, conn: asyncpg.Connection, req: str, vector: Any, text: str | None, tuning: Tuning
    ) -> Context:
        if vector is None and text is None:
            return self.empty()
        by_vector, by_text = await candidates(
            conn,
            Filters(exclude_req=req),
            tuning.candidates,
            vector=vector,
            text=text,
            tuning=tuning,
        )
        hits = rrf(by_vector, by_text)
        mode = "fulltext" if vector is None else "hybrid" if text else "vector"
        items = [h.as_item() for h in hits]
        return Context(policy.picks_by_stage(items, self.stages, self.top_k), mode, len(items))

    async def store(self, conn: Any, req: str, context: Context, provisional: bool = False) -> None:
        """Upsert (queued, in the engine's transaction)."""
        await conn.execute(
            STORE_SQL,
            req,
            json.dumps(context.picks, default=str),
            context.mode,
            context.candidates,
            provisional,
        )

    async def refresh(self, conn: asyncpg.Connection, req: str) -> Context | None:
        context = await self.compute(conn, req, self.tuning)
        if context is not None:
            await self.store(conn, req, context)
        return context

    async def for_dispatch(
        self,
        conn: Any,
        req: str,
        stage: int,
        recalled: tuple[int, Any] | None,
    ) -> list[dict[str, Any]]:
        """The memories for a stage assignment, inside the engine's transaction.

        ``recalled`` is (stage, picks) as read with the workflow lock; when it is
        for another stage or there was no context, it is computed here."""
        if self.top_k <= 0:
            return []
        if recalled is not None and recalled[0] == stage and isinstance(recalled[1], list):
            return recalled[1]
        raw = conn.conn if isinstance(conn, BatchedConnection) else conn
        found = await self.source(raw, req)
        if found is None:
            return []
        vector, text = found
        if vector is None and text is None:  # nothing to recall on: say so for good
            await self.store(conn, req, self.empty())
            return []
        try:
            async with raw.transaction():  # a savepoint: a failure here leaves the rest intact
                context = await self.recall(raw, req, vector, text, self.dispatch_tuning)
        except (asyncpg.PostgresError, ValueError, KeyError) as exc:
            log.warning("memory.recall_failed", req_number=req, stage=stage, error=repr(exc))
            return []
        await self.store(conn, req, context, provisional=True)
        return context.picks.get(str(stage), [])


async def refresh_loop(
    pool: asyncpg.Pool,
    recaller: Recaller,
    wake: asyncio.Event,
    *,
    stopping: asyncio.Event,
    states: StateLog,
    ttl: float,
    interval: float,
    min_gap: float = 0.5,
    batch: int = 50,
) -> None:
    """Keep live REQs' contexts fresh until the daemon stops."""

    async def refresh() -> bool:
        done = await _refresh_some(pool, recaller, ttl, batch)
        if done < batch:  # wake-ups come with every transition: coalesce them
            await asyncio.sleep(min_gap)
        return done >= batch  # more are waiting

    await periodic(
        refresh,
        name="memory.context",
        interval=interval,
        stopping=stopping,
        states=states,
        wake=wake,
        drain=True,
    )


async def _refresh_some(pool: asyncpg.Pool, recaller: Recaller, ttl: float, batch: int) -> int:
    reqs: Sequence[asyncpg.Record] = await pool.fetch(STALE_SQL, list(LIVE), ttl, batch)
    for row in reqs:
        req = row["req_number"]
        async with pool.acquire() as conn, conn.transaction():
            # Replicas see the same stale REQs: one refreshes each, the others
            # skip it, and none redoes one that another has just refreshed.
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock($1, hashtext($2))", CONTEXT_LOCK, req
            ):
                continue
            if await conn.fetchval(STILL_STALE_SQL, list(LIVE), ttl, req):
                await recaller.refresh(conn, req)
    return len(reqs)
