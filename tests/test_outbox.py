"""The outbox on real Postgres and NATS: relay, direct publication, claims."""

from __future__ import annotations

import asyncio
import json

import asyncpg
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from orchestrator.engine.outbox import Publisher, publish_batch
from orchestrator.runtime import migrate


async def _setup(pg_conn: asyncpg.Connection, nc: NATS) -> None:
    await migrate.apply(pg_conn)
    await nc.jetstream().add_stream(StreamConfig(name="ob", subjects=["ob.>"]))


async def _stored(nc: NATS) -> list[dict[str, object]]:
    info = await nc.jetstream().stream_info("ob")
    sub = await nc.jetstream().pull_subscribe("ob.>", durable=None, stream="ob")
    if not info.state.messages:
        return []
    msgs = await sub.fetch(info.state.messages, timeout=5)
    return [json.loads(m.data) for m in msgs]


async def test_relay_publishes_in_order_and_skips_live_claims(
    pg_conn: asyncpg.Connection, pg_dsn: str, nc: NATS
) -> None:
    await _setup(pg_conn, nc)
    await pg_conn.execute(
        "INSERT INTO outbox (msg_id, subject, payload, claimed_until) VALUES"
        " ('a', 'ob.1', '{\"n\": 1}', NULL),"
        " ('b', 'ob.2', '{\"n\": 2}', now() + interval '1 hour'),"  # the engine's, alive
        " ('c', 'ob.3', '{\"n\": 3}', now() - interval '1 second')"  # the engine died
    )
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        assert await publish_batch(pool, nc.jetstream()) == 2
        assert await publish_batch(pool, nc.jetstream()) == 0
    finally:
        await pool.close()
    assert [m["n"] for m in await _stored(nc)] == [1, 3]
    pending = await pg_conn.fetch("SELECT msg_id FROM outbox WHERE published_at IS NULL")
    assert [r["msg_id"] for r in pending] == ["b"]


async def test_direct_publication_is_marked_and_deduplicated(
    pg_conn: asyncpg.Connection, pg_dsn: str, nc: NATS
) -> None:
    await _setup(pg_conn, nc)
    rows = [(f"m{i}", f"ob.{i}", json.dumps({"n": i})) for i in range(5)]
    await pg_conn.executemany(
        "INSERT INTO outbox (msg_id, subject, payload, claimed_until)"
        " VALUES ($1, $2, $3::jsonb, now() + interval '1 hour')",
        rows,
    )
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)

    stopping = asyncio.Event()
    publisher = Publisher(pool, nc.jetstream())
    marker = asyncio.ensure_future(publisher.mark(stopping))
    try:
        await publisher.publish(rows)
        await publisher.publish(rows[:2])  # a retry: same Nats-Msg-Id, dropped
        for _ in range(100):
            left = await pg_conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            if left == 0:
                break
            await asyncio.sleep(0.05)
        assert left == 0
    finally:
        stopping.set()
        await asyncio.wait_for(marker, 10)
        await pool.close()
    assert [m["n"] for m in await _stored(nc)] == [0, 1, 2, 3, 4]


async def test_a_failed_direct_publish_goes_to_the_relay_at_once(
    pg_conn: asyncpg.Connection, pg_dsn: str, nc: NATS
) -> None:
    """A publish that fails (no stream answers: a NATS node died under it) lifts
    the row's claim and wakes the relay, instead of waiting out the claim."""
    await _setup(pg_conn, nc)
    rows = [("lost", "nostream.1", json.dumps({"n": 1}))]
    await pg_conn.execute(
        "INSERT INTO outbox (msg_id, subject, payload, claimed_until)"
        " VALUES ($1, $2, $3::jsonb, now() + interval '1 hour')",
        *rows[0],
    )
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)

    stopping = asyncio.Event()
    publisher = Publisher(pool, nc.jetstream())
    marker = asyncio.ensure_future(publisher.mark(stopping))
    try:
        await publisher.publish(rows)  # no stream takes nostream.>: a failure
        await asyncio.wait_for(publisher.relay_wake.wait(), 10)
        claim = await pg_conn.fetchval("SELECT claimed_until FROM outbox WHERE msg_id = 'lost'")
        assert claim is None  # the relay may take it now
        await nc.jetstream().add_stream(StreamConfig(name="late", subjects=["nostream.>"]))
        assert await publish_batch(pool, nc.jetstream()) == 1
    finally:
        stopping.set()
        await asyncio.wait_for(marker, 10)
        await pool.close()
    assert await pg_conn.fetchval("SELECT published_at FROM outbox WHERE msg_id = 'lost'")
