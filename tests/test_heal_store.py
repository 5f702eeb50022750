"""Miki's restart history in a real Postgres: forgetting and pruning."""

from __future__ import annotations

import asyncpg

from orchestrator import migrate
from workers.heal_store import HealStore


async def test_quiet_histories_are_pruned_and_busy_ones_kept(pg_dsn: str) -> None:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await migrate.apply(conn)
        store = HealStore(lambda: pool)
        for cid in ("old", "fresh", "gone"):
            async with store.locked(cid, f"c-{cid}") as record:
                record.restarts.append(1.0)
        await pool.execute(
            "UPDATE heal_records SET updated_at = now() - interval '2 hours'"
            " WHERE container_id = 'old'"
        )
        await store.forget("gone")
        assert await store.prune(3600) == 1
        left = await pool.fetch("SELECT container_id, restarts FROM heal_records")
        assert [(r["container_id"], r["restarts"]) for r in left] == [("fresh", [1.0])]
        assert await store.prune(3600) == 0
    finally:
        await pool.close()


async def test_a_record_is_saved_only_when_its_block_succeeds(pg_dsn: str) -> None:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await migrate.apply(conn)
        store = HealStore(lambda: pool)
        try:
            async with store.locked("x", "c-x") as record:
                record.restarts.append(5.0)
                raise LookupError("the action failed")
        except LookupError:
            pass
        assert await pool.fetchval("SELECT count(*) FROM heal_records") == 0
    finally:
        await pool.close()
