"""BatchedConnection on a real Postgres: both ways of sending a queue."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from orchestrator.runtime.batch import CTE_MAX, BatchedConnection

HEAD = "INSERT INTO log (tag, n)"


async def _tables(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "CREATE TABLE log (id bigserial PRIMARY KEY, tag text, n int);"
        "CREATE TABLE counter (k int PRIMARY KEY, v int);"
        "INSERT INTO counter SELECT g, 0 FROM generate_series(0, 199) g"
    )


@pytest.mark.parametrize("rows", [3, CTE_MAX * 3], ids=["one statement", "grouped"])
async def test_queued_writes_land_in_order_and_reads_see_them(
    pg_conn: asyncpg.Connection, pg_dsn: str, rows: int
) -> None:
    await _tables(pg_conn)
    listener = await asyncpg.connect(pg_dsn)
    heard: list[str] = []
    await listener.add_listener("test_batch", lambda *a: heard.append(a[2]))
    try:
        async with pg_conn.transaction():
            conn = BatchedConnection(pg_conn)
            for i in range(rows):
                conn.insert_row(HEAD, "$1, $2", "", "row", i)
                # Another statement interleaved (each write its own row, as the
                # store's are): order across statements does not matter.
                await conn.execute("UPDATE counter SET v = v + $2 WHERE k = $1", i, i + 1)
            conn.notify_on_flush("test_batch")
            assert conn.queued_args == rows * 4
            # A read flushes first, so it sees every queued write.
            assert await conn.fetchval("SELECT count(*) FROM log") == rows
            assert conn.queued_args == 0
        ordered = await pg_conn.fetch("SELECT n FROM log ORDER BY id")
        assert [r["n"] for r in ordered] == list(range(rows))
        counts = await pg_conn.fetch("SELECT v FROM counter WHERE k < $1 ORDER BY k", rows)
        assert [r["v"] for r in counts] == [i + 1 for i in range(rows)]
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.02)
        assert heard == ["test_batch"]
    finally:
        await listener.close()


async def test_a_rolled_back_transaction_leaves_nothing(pg_conn: asyncpg.Connection) -> None:
    await _tables(pg_conn)
    with pytest.raises(RuntimeError):
        async with pg_conn.transaction():
            conn = BatchedConnection(pg_conn)
            conn.insert_row(HEAD, "$1, $2", "", "gone", 1)
            await conn.flush()
            raise RuntimeError("the batch failed")
    assert await pg_conn.fetchval("SELECT count(*) FROM log") == 0
