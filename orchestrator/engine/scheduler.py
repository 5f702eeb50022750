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
            if not await store.try_lock(raw, DISPATCH_LOCK):
                asyncio.get_running_loop().call_later(DISPATCH_RETRY, self.wake_dispatcher.set)
                return 0
            free = self.settings.max_in_flight - await store.running_count(conn)
            if free <= 0:
                return 0
            rows = await store.next_pending(conn, free)
            for req in rows:
                locked = await store.lock_workflow(conn, req)
                assert locked is not None
                start = Start(self.settings.budget_usd_per_req)
                new, effects = apply(self.pipeline, locked.wf, start)
                await self.transitions.commit(conn, new, effects, locked)
            await conn.flush()
        await self.after.run(conn.after)
        return len(rows)

    async def expire_deadlines(self) -> int:
        """Apply TimedOut to every RUNNING attempt past its deadline."""
        async with self.pool.acquire() as conn:
            rows = await store.overdue_attempts(conn)
        expired = 0
        for req, stage, attempt in rows:
            async with self.pool.acquire() as raw, raw.transaction():
                conn = EngineTx(raw, self.after.fresh(direct_publish=False))
                locked = await store.lock_workflow(conn, req)
                if locked is None or not await store.still_overdue(conn, req, stage, attempt):
                    continue  # a heartbeat or a notice got there first
                wf = locked.wf
                expired += 1
                new, effects = apply(self.pipeline, wf, TimedOut(stage, attempt))
                if any(isinstance(e, Ignored) for e in effects):
                    await store.close_attempt(
                        conn,
                        wf.req,
                        stage,
                        attempt,
                        "TIMED_OUT",
                        "deadline passed (stale attempt)",
                    )
                await self.transitions.commit(conn, new, effects, locked)
                await conn.flush()
            await self.after.run(conn.after)
        return expired
