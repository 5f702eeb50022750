"""Miki's restart history in a real Postgres: forgetting and pruning."""

from __future__ import annotations

import asyncpg

from workers.infra.heal_store import HealStore


async def test_quiet_histories_are_pruned_and_busy_ones_kept(migrated_pool: asyncpg.Pool) -> None:
    pool = migrated_pool
    store = HealStore(pool)
    for cid in ("old", "fresh", "gone"):
        async with store.locked(cid, f"c-{cid}") as record:
            record.restarts.append(1.0)
    await pool.execute(
        "UPDATE heal_records SET updated_at = now() - interval '2 hours' WHERE container_id = 'old'"
    )
    await store.forget("gone")
    assert await store.prune(3600) == 1
    left = await pool.fetch("SELECT container_id, restarts FROM heal_records")
    assert [(r["container_id"], r["restarts"]) for r in left] == [("fresh", [1.0])]
    assert await store.prune(3600) == 0


async def test_a_record_is_saved_only_when_its_block_succeeds(
    migrated_pool: asyncpg.Pool,
) -> None:
    store = HealStore(migrated_pool)
    try:
        async with store.locked("x", "c-x") as record:
            record.restarts.append(5.0)
            raise LookupError("the action failed")
    except LookupError:
        pass
    assert await migrated_pool.fetchval("SELECT count(*) FROM heal_records") == 0
