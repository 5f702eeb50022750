"""Migrations on a real PostgreSQL with pgvector."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from orchestrator.runtime import migrate

ALL_VERSIONS = [m.version for m in migrate.discover()]
TABLES = {
    "nats_deliverable_cache",
    "runner_runs",
    "workflow_state",
    "stage_attempts",
    "deliverable_history",
    "outbox",
    "processed_messages",
    "idempotency_keys",
    "workflow_events",
    "strategic_decisions",
    "escalations",
    "embedding_config",
    "memories",
    "schema_migrations",
}


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_first_migration_creates_the_schema(pg_conn: asyncpg.Connection) -> None:
    assert await migrate.apply(pg_conn) == ALL_VERSIONS
    assert TABLES <= await _tables(pg_conn)
    assert await pg_conn.fetchval("SELECT extversion FROM pg_extension WHERE extname='vector'")
    assert await pg_conn.fetchval("SELECT dimension FROM embedding_config") == 768
    # The old daemon's cache contract: unique (req_number, agent, stage).
    await pg_conn.execute(
        "INSERT INTO nats_deliverable_cache (req_number, agent, stage, deliverable)"
        " VALUES ('REQ-1', 'billy', 4, '{\"status\": \"COMPLETE\"}')"
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        await pg_conn.execute(
            "INSERT INTO nats_deliverable_cache (req_number, agent, stage, deliverable)"
            " VALUES ('REQ-1', 'billy', 4, '{}')"
        )
    # A real vector round-trip through the HNSW-indexed column.
    await pg_conn.execute(
        "INSERT INTO memories (agent_id, memory_type, content, content_hash, embedding)"
        " VALUES ('roy', 'deliverable', 'inventory api', 'h1', $1::vector)",
        "[" + ",".join(["0.5"] * 768) + "]",
    )
    assert (
        await pg_conn.fetchval(
            "SELECT content FROM memories ORDER BY embedding <=> $1::vector LIMIT 1",
            "[" + ",".join(["0.4"] * 768) + "]",
        )
        == "inventory api"
    )


async def test_second_apply_is_a_no_op(pg_conn: asyncpg.Connection) -> None:
    await migrate.apply(pg_conn)
    assert await migrate.apply(pg_conn) == []
    assert await pg_conn.fetchval("SELECT count(*) FROM schema_migrations") == len(ALL_VERSIONS)


def _copy_migrations(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for sql in migrate.default_directory().glob("*.sql"):
        shutil.copy(sql, folder)
    return folder


async def test_edited_migration_is_refused(pg_conn: asyncpg.Connection, tmp_path: Path) -> None:
    folder = _copy_migrations(tmp_path)
    await migrate.apply(pg_conn, folder)
    first = next(folder.glob("V1.0.0__*.sql"))
    first.write_text(first.read_text() + "\n-- a harmless-looking edit\n")
    with pytest.raises(migrate.MigrationError, match="edited after it was applied"):
        await migrate.apply(pg_conn, folder)


async def test_failing_migration_is_rolled_back(
    pg_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    folder = _copy_migrations(tmp_path)
    (folder / "V9.9.0__broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    with pytest.raises(
        migrate.MigrationError, match=r"V9\.9\.0__broken\.sql failed and was rolled back"
    ):
        await migrate.apply(pg_conn, folder)
    assert "half_done" not in await _tables(pg_conn)
    versions = [r["version"] for r in await pg_conn.fetch("SELECT version FROM schema_migrations")]
    assert versions == ALL_VERSIONS


async def test_versions_sort_numerically(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("V1.10.0__c.sql", "V1.2.0__b.sql", "V1.0.0__a.sql"):
        (folder / name).write_text("SELECT 1;")
    assert [m.version for m in migrate.discover(folder)] == ["1.0.0", "1.2.0", "1.10.0"]
    (folder / "oops.sql").write_text("SELECT 1;")
    with pytest.raises(migrate.MigrationError, match="named V"):
        migrate.discover(folder)


async def test_unknown_applied_version_is_refused(
    pg_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await migrate.apply(pg_conn)
    await pg_conn.execute(
        "INSERT INTO schema_migrations (version, description, filename, checksum, execution_ms)"
        " VALUES ('9.0.0', 'future', 'V9.0.0__future.sql', 'x', 0)"
    )
    with pytest.raises(migrate.MigrationError, match="does not know"):
        await migrate.apply(pg_conn)


async def test_concurrent_migrators_apply_each_file_once(pg_dsn: str) -> None:
    conns = [await asyncpg.connect(pg_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate.apply(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sorted(map(len, results)) == [0, 0, 0, len(ALL_VERSIONS)]
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(ALL_VERSIONS)
    finally:
        await conn.close()
