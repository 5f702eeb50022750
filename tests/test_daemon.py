"""agogd as a real process on real nats-server and PostgreSQL."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path

import asyncpg
import nats
from nats.js.api import StorageType, StreamConfig

from orchestrator.core import registry
from orchestrator.embedded import NatsServer, PostgresServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from orchestrator.embedded.procs import free_port
from orchestrator.runtime import migrate

STREAMS = {s.name for s in registry.load().streams}
MIGRATIONS = len(migrate.discover())


def _env(nats_server: NatsServer, dsn: str, **extra: str) -> dict[str, str]:
    return {"AGOG_NATS_URL": nats_server.url, "AGOG_POSTGRES_DSN": dsn, **extra}


def _start(daemons: list[DaemonProcess], env: dict[str, str]) -> DaemonProcess:
    d = DaemonProcess(env).start()
    daemons.append(d)
    return d


async def _stream_names(url: str) -> set[str]:
    nc = await nats.connect(url)
    try:
        return {s.config.name for s in await nc.jetstream().streams_info()}
    finally:
        await nc.close()


async def test_starts_migrates_reconciles_and_is_ready(
    nats_server: NatsServer, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    d = _start(daemons, _env(nats_server, pg_dsn))
    d.wait_ready()
    status, body = d.get("/readyz")
    assert status == 200
    assert body["checks"] == {"nats": "ok", "postgres": "ok", "migrations": "ok", "topology": "ok"}
    assert d.get("/healthz") == (200, {"status": "alive"})
    assert await _stream_names(nats_server.url) == STREAMS
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == MIGRATIONS
    finally:
        await conn.close()
    # The start order is connect, migrate, reconcile, then serve.
    order = [e["event"] for e in d.events]
    assert (
        order.index("postgres.connected")
        < order.index("migration.applied")
        < order.index("nats.connected")
        < order.index("topology.reconciled")
        < order.index("readiness.ready")
    )


async def test_two_daemons_starting_together(
    nats_server: NatsServer, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    pair = [_start(daemons, _env(nats_server, pg_dsn)) for _ in range(2)]
    for d in pair:
        d.wait_ready()
    assert sum(len(d.named("migration.applied")) for d in pair) == MIGRATIONS
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == MIGRATIONS
    finally:
        await conn.close()
    assert await _stream_names(nats_server.url) == STREAMS


async def test_waits_for_unreachable_servers_then_becomes_ready(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    nats_server = NatsServer(tmp_path / "nats")
    pg = PostgresServer(tmp_path / "pg", durable=False)
    d = _start(daemons, _env(nats_server, pg.dsn()))
    d.wait_not_ready()
    d.wait_event("postgres.unreachable")
    await asyncio.sleep(2.5)  # several backoff retries
    assert d.readyz() == 503
    assert len(d.named("postgres.unreachable")) == 1, "state changes are logged once"
    try:
        pg.start()
        d.wait_event("migration.applied")
        d.wait_event("nats.unreachable")
        assert d.readyz() == 503
        nats_server.start()
        d.wait_ready()
        assert len(d.named("nats.unreachable")) == 1
    finally:
        d.stop()
        nats_server.stop()
        pg.stop()


async def test_nats_restart_under_a_running_daemon(
    nats_server: NatsServer, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    d = _start(daemons, _env(nats_server, pg_dsn))
    d.wait_ready()
    nats_server.stop()
    d.wait_not_ready()
    assert d.get("/readyz")[1]["checks"]["nats"] == "failing"
    await asyncio.sleep(1.5)
    assert len(d.named("nats.disconnected")) == 1, "a disconnect is logged once, not in a loop"
    nats_server.start()
    d.wait_ready()
    # A server that comes back without its streams gets them again.
    nats_server.kill()
    shutil.rmtree(nats_server.data_dir / "jetstream")
    d.wait_not_ready()
    nats_server.start()
    d.wait_ready()
    assert await _stream_names(nats_server.url) == STREAMS


async def test_postgres_restart_under_a_running_daemon(
    nats_server: NatsServer, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    pg = PostgresServer(tmp_path / "pg", durable=False).start()
    try:
        d = _start(daemons, _env(nats_server, pg.dsn()))
        d.wait_ready()
        pg.stop()
        d.wait_not_ready()
        d.wait_for(
            lambda: d.get("/readyz")[1]["checks"]["postgres"] == "failing", 30, "postgres failing"
        )
        pg.start()
        d.wait_ready()
    finally:
        pg.stop()


async def test_sigterm_drains_and_exits_zero(
    nats_server: NatsServer, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    d = _start(daemons, _env(nats_server, pg_dsn))
    d.wait_ready()
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(timeout=15) == 0
    assert time.monotonic() - started < 10
    events = [e["event"] for e in d.events]
    assert (
        events.index("agogd.stopping")
        < events.index("readiness.draining")
        < events.index("agogd.stopped")
    )


async def test_sigint_while_still_connecting_exits_zero(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    d = _start(
        daemons,
        {
            "AGOG_NATS_URL": f"nats://127.0.0.1:{free_port()}",
            "AGOG_POSTGRES_DSN": f"postgresql://x@127.0.0.1:{free_port()}/db",
        },
    )
    d.wait_event("postgres.unreachable")
    d.signal(signal.SIGINT)
    assert d.wait_exit(timeout=15) == 0


async def test_failing_migration_stops_the_start(
    nats_server: NatsServer, pg_dsn: str, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "V1.0.0__broken.sql").write_text("CREATE TABLE t1 (id int);\nSELEC 1;\n")
    d = _start(daemons, _env(nats_server, pg_dsn, AGOG_MIGRATIONS_DIR=str(folder)))
    assert d.wait_exit(timeout=30) == 1
    failure = d.named("agogd.startup_failed")[0]["error"]
    assert "V1.0.0__broken.sql failed and was rolled back" in failure
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('t1')") is None
    finally:
        await conn.close()


async def test_refused_topology_stops_the_start(
    nats_server: NatsServer, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(
            StreamConfig(
                name="agog_features_qa",
                subjects=["agog.deliverables.billy.>"],
                storage=StorageType.MEMORY,
            )
        )
    finally:
        await nc.close()
    d = _start(daemons, _env(nats_server, pg_dsn))
    assert d.wait_exit(timeout=30) == 1
    failure = d.named("agogd.startup_failed")[0]["error"]
    assert "agog_features_qa" in failure and "storage" in failure


async def test_a_consumer_nobody_reads_stops_the_start(
    nats_server: NatsServer, pg_dsn: str, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """A consumer in the pipeline file without a handler would fill up unread:
    agogd refuses to start, in one line naming it, instead of skipping it."""
    source = Path(registry.__file__).with_name("pipeline.toml").read_text()
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(
        source + '\n[[consumers]]\nname = "agogd_nobody"\nstreams = ["agog_requirements"]\n'
    )
    d = _start(daemons, _env(nats_server, pg_dsn, AGOG_PIPELINE_FILE=str(pipeline)))
    assert d.wait_exit(timeout=30) == 1
    failure = d.named("agogd.startup_failed")[0]["error"]
    assert "agogd_nobody" in failure and "no handler" in failure
