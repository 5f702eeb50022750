"""The agent_memory Postgres: a pool reached with backoff, and a liveness probe."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from pgvector.asyncpg import register_vector

from orchestrator.core.backoff import delays
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.settings import Settings
from orchestrator.runtime.state_log import StateLog

log = get_logger(__name__)

# Transient failures worth waiting out at start (server down, starting, restarting).
TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)
# Postgres itself away, as a batch in flight sees it: the server down, shut
# down or restarting, its connection gone, no slot free, or a pooled
# connection it closed while idle. Never the message's fault, so a consumer
# waits these out instead of spending the message's deliveries on them.
OUTAGE = (
    *TRANSIENT,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InternalClientError,
)
# At start anything that stops a connection is retried with a clear line: a
# database still being created or a password not yet provisioned (compose
# start-up races) must not crash-loop the container.
CONNECT_FAILURES = (*TRANSIENT, asyncpg.PostgresError, asyncpg.InterfaceError)


async def _init_connection(conn: asyncpg.Connection) -> None:
    """Register pgvector's type once the extension exists (after migrations)."""
    has_vector = await conn.fetchval("SELECT 1 FROM pg_type WHERE typname = 'vector'")
    if has_vector:
        await register_vector(conn)


async def wait_for_connection(settings: Settings, states: StateLog) -> asyncpg.Connection:
    """One connection, retried with backoff until Postgres answers."""
    for attempt, delay in enumerate(delays(maximum=settings.backoff_max), start=1):
        try:
            conn = await asyncpg.connect(settings.dsn(), timeout=10)
        except CONNECT_FAILURES as exc:
            states.set(
                "postgres",
                "unreachable",
                "warning",
                cause=type(exc).__name__,
                dsn=settings.public_dsn(),
                error=str(exc) or type(exc).__name__,
                retry="with backoff",
            )
            log.debug("postgres.retry", attempt=attempt, delay=round(delay, 2))
            await asyncio.sleep(delay)
            continue
        states.set("postgres", "connected", dsn=settings.public_dsn())
        return conn
    raise AssertionError("unreachable")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release: it is a round trip per
    transaction, and pool connections carry no session state to reset (locks
    are transaction-scoped, LISTEN has its own connection)."""


# What a passing database outage raises: the server away or restarting
# (OSError, PostgresError, InterfaceError), and asyncpg's InternalClientError
# on a pooled connection that Postgres shut down while it was idle. A
# background service catches these, reports its state and tries again.
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def create_pool(settings: Settings) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        settings.dsn(),
        min_size=settings.postgres_pool_min,
        max_size=settings.postgres_pool_max,
        init=_init_connection,
        reset=_keep_session,
        timeout=10,
        command_timeout=60,
        # Operators see agogd's sessions by name in pg_stat_activity.
        server_settings={"application_name": "agogd"},
    )
    if pool is None:  # asyncpg's typing: create_pool returns the pool it awaited
        raise RuntimeError("asyncpg.create_pool returned no pool")
    return pool


PING_TIMEOUT = 3.0


async def ping(pool: asyncpg.Pool) -> bool:
    """Whether Postgres answers a trivial query now."""
    try:
        async with asyncio.timeout(PING_TIMEOUT):
            return bool(await pool.fetchval("SELECT 1"))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, *TRANSIENT):
        return False


@contextlib.asynccontextmanager
async def advisory_lock(pool: asyncpg.Pool, key: str) -> AsyncIterator[None]:
    """Hold a session advisory lock named by ``key`` (hashed), across every
    agogd replica and every coroutine, each holder on its own connection."""
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", key)
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


@contextlib.asynccontextmanager
async def try_advisory_lock(pool: asyncpg.Pool, key: str) -> AsyncIterator[bool]:
    """Take the session advisory lock named by ``key`` if it is free: yields
    whether it was taken (another holder, on any replica: False, at once),
    and releases it after. A session whose unlock failed is closed, never
    handed back to the pool still holding the lock."""
    async with pool.acquire() as conn:
        held = bool(await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key))
        try:
            yield held
        finally:
            if held:
                try:
                    await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)
                except BaseException:
                    conn.terminate()
                    raise
