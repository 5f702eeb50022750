"""The test harness: real nats-server and PostgreSQL processes, no mocks.

PostgreSQL runs once per session; each test gets a fresh database. Each test
that needs NATS gets a fresh nats-server (it starts in well under a second),
so streams never leak between tests. The server objects expose stop, kill
and restart for fault tests. A missing binary fails the test, never skips it.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
import structlog
from hypothesis import HealthCheck, settings
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer, PostgresServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from orchestrator.embedded.engine import ContainerEngine
from orchestrator.runtime import migrate

_db_counter = itertools.count()

# `pytest --hypothesis-profile=soak` runs every property test with many more
# examples: the way to hunt rare edge cases before CI meets them by chance.
settings.register_profile(
    "soak", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(autouse=True)
def _isolated_log_config() -> Iterator[None]:
    """Each test starts with the log configuration the previous one found: a
    test that configures level ``warning`` must not hide the info lines that a
    later test's ``capture_logs`` waits for."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """agogd subprocesses a test starts (append them): stopped after it, whatever happens."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.stop()


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="agogd-tests-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session")
def postgres_server(work_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(work_dir / "postgres", durable=False).start()
    yield server
    server.stop()


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """DSN of a fresh, empty database for this test."""
    name = f"t_{os.getpid()}_{next(_db_counter)}"
    dsn = postgres_server.create_database(name)
    yield dsn
    if postgres_server.running:
        postgres_server.drop_database(name)


@pytest.fixture
async def pg_conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def migrated_pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on a fresh database with every migration applied."""
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    assert pool is not None
    async with pool.acquire() as conn:
        await migrate.apply(conn)
    yield pool
    await pool.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream for this test."""
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield client
    await client.close()


@pytest.fixture(scope="session")
def container_engine(work_dir: Path) -> Iterator[ContainerEngine]:
    """podman's Docker-API service (scripts/test installs podman when missing).
    Without it the test fails and says how to get it; it is never skipped."""
    engine = ContainerEngine(work_dir / "engine").start()
    engine.ensure_busybox_image()
    yield engine
    engine.stop()
