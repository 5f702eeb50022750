"""Bookkeeping pruned only where no redelivery can need it, on real Postgres."""

from __future__ import annotations

import dataclasses

import asyncpg

from orchestrator.core import registry
from orchestrator.engine.pruning import MARGIN, Pruner

P = registry.load()
DAY = 86400.0


async def seed(pool: asyncpg.Pool) -> None:
    rows = [
        # stream, seq, age in seconds
        ("agog_features_backend", 1, 7 * DAY + MARGIN + 3600),  # past 7d + margin: goes
        ("agog_features_backend", 2, 7 * DAY + MARGIN - 3600),  # just inside: stays
        ("agog_strategic_escalations", 3, 30 * DAY),  # its stream keeps 90d: stays
        ("agog_strategic_escalations", 4, 90 * DAY + MARGIN + 60),  # goes
    ]
    for stream, seq, age in rows:
        await pool.execute(
            "INSERT INTO processed_messages (stream, stream_seq, consumer, subject, outcome,"
            " processed_at) VALUES ($1, $2, 'c', 's', 'applied',"
            " now() - make_interval(secs => $3))",
            stream,
            seq,
            age,
        )
    outbox = [
        ("old-published", 90 * DAY + MARGIN + 60, True),  # goes
        ("old-unpublished", 200 * DAY, False),  # never published: stays (the relay's)
        ("recent-published", 60 * DAY, True),  # inside the longest max_age: stays
    ]
    for msg_id, age, published in outbox:
        await pool.execute(
            "INSERT INTO outbox (msg_id, subject, payload, created_at, published_at)"
            " VALUES ($1, 's', '{}', now() - make_interval(secs => $2),"
            " CASE WHEN $3 THEN now() - make_interval(secs => $2) END)",
            msg_id,
            age,
            published,
        )


async def left(pool: asyncpg.Pool) -> tuple[list[int], list[str]]:
    seqs = [r[0] for r in await pool.fetch("SELECT stream_seq FROM processed_messages ORDER BY 1")]
    ids = [r[0] for r in await pool.fetch("SELECT msg_id FROM outbox ORDER BY 1")]
    return seqs, ids


async def test_rows_past_their_streams_age_go_and_nothing_a_redelivery_needs(
    migrated_pool: asyncpg.Pool,
) -> None:
    await seed(migrated_pool)
    pruner = Pruner(pool=migrated_pool, pipeline=P)
    found = await pruner.prune_once()
    assert (found.processed, found.outbox) == (2, 1)
    assert await left(migrated_pool) == ([2, 3], ["old-unpublished", "recent-published"])
    assert await pruner.pass_() is False  # nothing more to do
    assert (await pruner.prune_once()).processed == 0


async def test_batches_repeat_while_full(migrated_pool: asyncpg.Pool) -> None:
    await seed(migrated_pool)
    pruner = Pruner(pool=migrated_pool, pipeline=P, batch=1)
    passes = 1
    while await pruner.pass_():
        passes += 1
    assert passes >= 2
    assert await left(migrated_pool) == ([2, 3], ["old-unpublished", "recent-published"])


async def test_a_stream_that_keeps_messages_for_ever_keeps_its_rows_and_the_outbox(
    migrated_pool: asyncpg.Pool,
) -> None:
    await seed(migrated_pool)
    forever = tuple(
        dataclasses.replace(s, max_age=0) if s.name == "agog_features_backend" else s
        for s in P.streams
    )
    pruner = Pruner(pool=migrated_pool, pipeline=dataclasses.replace(P, streams=forever))
    assert pruner.outbox_age() is None
    found = await pruner.prune_once()
    assert (found.processed, found.outbox) == (1, 0)
    assert await left(migrated_pool) == (
        [1, 2, 3],
        ["old-published", "old-unpublished", "recent-published"],
    )


async def test_the_outbox_rule_and_the_dimension_check_go_by_an_index_not_a_scan(
    migrated_pool: asyncpg.Pool,
) -> None:
    """Both ran at every start and read a whole table, so their cost grew with
    history (0.7 s and 0.24 s at 100,000 REQs): with sequential scans priced
    out, each must still find an index to use."""
    from orchestrator.engine.pruning import OUTBOX_SQL
    from orchestrator.memory.dimension import EMBEDDED_SQL

    async with migrated_pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        outbox = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + OUTBOX_SQL, 1.0, 10))
        embedded = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + EMBEDDED_SQL))
    assert "outbox_created_brin" in outbox and "Seq Scan on outbox" not in outbox, outbox
    assert "memories_embedded_idx" in embedded and "Seq Scan" not in embedded, embedded
