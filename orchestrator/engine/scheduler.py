"""The scheduler: admit PENDING REQs by priority, and time out attempts past
their deadline. Each pass is a periodic service (``runtime.services``)."""

from __future__ import annotations

import asyncio

import asyncpg

from orchestrator.core.registry import Pipeline
from orchestrator.core.workflow import Ignored, Start, TimedOut, apply
from orchestrator.engine import store
from orchestrator.engine.transactions import AfterCommitted
from orchestrator.engine.transition import Transitions
from orchestrator.engine.tx import EngineTx
from orchestrator.runtime.settings import Settings

DISPATCH_LOCK = 0x61676F68  # serializes admission of PENDING REQs across replicas
DISPATCH_RETRY = 0.05  # seconds before a replica that found the admission busy looks again


class Scheduler:
    """Dispatch and deadlines, on the pool, for every replica alike."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        settings: Settings,
        pipeline: Pipeline,
        transitions: Transitions,
        after: AfterCommitted,
    ) -> None:
        self.pool, self.settings, self.pipeline = pool, settings, pipeline
        self.transitions, self.after = transitions, after
        self.wake_dispatcher = after.wake_dispatcher

    async def dispatch_pending(self) -> int:
        """Admit PENDING REQs by priority while fewer than max_in_flight run.

        One replica admits at a time. The others do not queue up behind it
        (each waiting would hold a connection and a transaction): they look
        again shortly, since the pass under way may have counted the REQs in
        flight before the one that woke them finished.
        """
        async with self.pool.acquire() as raw, raw.transaction():
            conn = EngineTx(raw, self.after.fresh(direct_publish=False))
            if not await raw.fetchval("SELECT pg_try_advisory_xact_lock($1)", DISPATCH_LOCK):
                asyncio.get_running_loop().call_later(DISPATCH_RETRY, self.wake_dispatcher.set)
                return 0
            running = await conn.fetchval(
                "SELECT count(*) FROM workflow_state WHERE status = 'IN_PROGRESS'"
            )
            free = self.settings.max_in_flight - running
            if free <= 0:
                return 0
            rows = await conn.fetch(
                "SELECT req_number FROM workflow_state WHERE status = 'PENDING'"
                " ORDER BY priority, created_at, req_number LIMIT $1",
                free,
            )
            for row in rows:
                locked = await store.lock_workflow(conn, row["req_number"])
                assert locked is not None
                new, effects = apply(self.pipeline, locked.wf, Start())
                await self.transitions.commit(conn, new, effects, locked)
            await conn.flush()
        await self.after.run(conn.after)
        return len(rows)

    async def expire_deadlines(self) -> int:
        """Apply TimedOut to every RUNNING attempt past its deadline."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT req_number, stage, attempt FROM stage_attempts WHERE status = 'RUNNING'"
                " AND deadline < now() ORDER BY deadline LIMIT 100"
            )
        expired = 0
        for row in rows:
            async with self.pool.acquire() as raw, raw.transaction():
                conn = EngineTx(raw, self.after.fresh(direct_publish=False))
                locked = await store.lock_workflow(conn, row["req_number"])
                still = await conn.fetchval(
                    "SELECT 1 FROM stage_attempts WHERE req_number = $1 AND stage = $2"
                    " AND attempt = $3 AND status = 'RUNNING' AND deadline < now()",
                    row["req_number"],
                    row["stage"],
                    row["attempt"],
                )
                if locked is None or not still:
                    continue  # a heartbeat or a notice got there first
                wf = locked.wf
                expired += 1
                new, effects = apply(self.pipeline, wf, TimedOut(row["stage"], row["attempt"]))
                if any(isinstance(e, Ignored) for e in effects):
                    await store.close_attempt(
                        conn,
                        wf.req,
                        row["stage"],
                        row["attempt"],
                        "TIMED_OUT",
                        "deadline passed (stale attempt)",
                    )
                await self.transitions.commit(conn, new, effects, locked)
                await conn.flush()
            await self.after.run(conn.after)
        return expired
