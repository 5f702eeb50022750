"""The outbox relay: publish committed outbox rows to JetStream, exactly once.

Rows are claimed with ``FOR UPDATE SKIP LOCKED`` (replicas share the work),
published with ``Nats-Msg-Id`` = the row's msg_id (JetStream drops a repeat
within the duplicate window), and marked published in the same transaction.
A crash between publish and mark only causes a re-publish with the same id.
Postgres NOTIFY wakes the relay at once; a poll is the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
from nats.js import JetStreamContext

from orchestrator.engine.store import OUTBOX_CHANNEL
from orchestrator.runtime import db
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.state_log import StateLog

log = get_logger(__name__)

BATCH = 200


async def publish_batch(pool: asyncpg.Pool, js: JetStreamContext, batch: int = BATCH) -> int:
    """Publish up to ``batch`` pending rows; returns how many were published."""
    async with pool.acquire() as conn, conn.transaction():
        # Marking rows published need not wait for the disk: if that commit is
        # lost in a crash, the rows go out again with the same Nats-Msg-Id and
        # JetStream drops the repeats.
        await conn.execute("SET LOCAL synchronous_commit = off")
        rows = await conn.fetch(
            "SELECT id, msg_id, subject, payload::text AS payload FROM outbox"
            " WHERE published_at IS NULL AND (claimed_until IS NULL OR claimed_until < now())"
            " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            batch,
        )
        if not rows:
            return 0
        results = await asyncio.gather(
            *(
                js.publish(
                    r["subject"],
                    r["payload"].encode(),
                    timeout=5,
                    headers={"Nats-Msg-Id": r["msg_id"]},
                )
                for r in rows
            ),
            return_exceptions=True,
        )
        done = [
            r["id"]
            for r, res in zip(rows, results, strict=True)
            if not isinstance(res, BaseException)
        ]
        failed = [
            (r["id"], repr(res))
            for r, res in zip(rows, results, strict=True)
            if isinstance(res, BaseException)
        ]
        if done:
            await conn.execute(
                "UPDATE outbox SET published_at = now(), attempts = attempts + 1"
                " WHERE id = ANY($1::bigint[])",
                done,
            )
        for row_id, error in failed:
            await conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1",
                row_id,
                error[:500],
            )
        if failed:
            raise OutboxPublishError(
                f"{len(failed)} of {len(rows)} publishes failed: {failed[0][1]}"
            )
        return len(done)


# What the Publisher sent, and what it could not, in one statement and one
# round trip: its own implicit transaction, whose commit need not wait for the
# disk (set_config(..., true) holds for that transaction only): if that commit
# is lost in a crash, the rows go out again under the same Nats-Msg-Id, which
# JetStream drops. Failed rows lose their claim, so the relay retries at once.
_MARK_SQL = (
    "WITH async AS (SELECT set_config('synchronous_commit', 'off', true) AS v),"
    " done AS (UPDATE outbox SET published_at = now(), attempts = attempts + 1"
    "  WHERE msg_id = ANY($1::text[]) AND published_at IS NULL"
    "  AND (SELECT v FROM async) IS NOT NULL),"
    " failed AS (UPDATE outbox SET claimed_until = NULL"
    "  WHERE msg_id = ANY($2::text[]) AND published_at IS NULL"
    "  AND (SELECT v FROM async) IS NOT NULL)"
    " SELECT 1"
)


class Publisher:
    """Publishes the outbox rows of a transaction the engine just committed, so
    an assignment goes out without waiting for the relay; marks them published
    a moment later, in one asynchronous commit per burst."""

    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext) -> None:
        self.pool, self.js = pool, js
        self._done: list[str] = []
        # Rows whose publish failed (the NATS node went away): their claim is
        # lifted so that the relay retries them at once, not after 10 s.
        self._failed: list[str] = []
        self._wake = asyncio.Event()
        # Set to have the relay look at once (after a failed direct publish).
        self.relay_wake = asyncio.Event()

    async def publish(self, rows: list[tuple[str, str, str]]) -> None:
        """Publish in order; a row that fails is handed to the relay."""
        results = await asyncio.gather(
            *(
                self.js.publish(
                    subject, payload.encode(), timeout=5, headers={"Nats-Msg-Id": msg_id}
                )
                for msg_id, subject, payload in rows
            ),
            return_exceptions=True,
        )
        for (msg_id, _, _), result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("outbox.direct_publish_failed", msg_id=msg_id, error=repr(result))
                self._failed.append(msg_id)
            else:
                self._done.append(msg_id)
        self._wake.set()

    async def mark(self, stopping: asyncio.Event) -> None:
        """Record published rows until the daemon stops (a lost mark only means
        a re-publish under the same Nats-Msg-Id, which JetStream drops)."""
        while not stopping.is_set() or self._done or self._failed:
            if not self._done and not self._failed:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1):
                        await self._wake.wait()
                continue
            done, self._done = self._done, []
            failed, self._failed = self._failed, []
            try:
                await self.pool.execute(_MARK_SQL, done, failed)
                if failed:
                    self.relay_wake.set()
            except db.DB_ERRORS as exc:
                log.warning("outbox.mark_failed", rows=len(done), error=repr(exc))
                self._done[:0] = done
                self._failed[:0] = failed
                await asyncio.sleep(1)


class OutboxPublishError(RuntimeError):
    """Some outbox rows could not be published now; they stay pending."""


class OutboxRelay:
    """Publishes committed outbox rows the engine did not (or could not) send
    itself, and marks what its ``Publisher`` sent; runs until agogd stops and
    publishes everything committed before it does."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        dsn: str,
        poll_interval: float,
        stopping: asyncio.Event,
        states: StateLog,
    ) -> None:
        self.publisher, self.dsn, self.interval = publisher, dsn, poll_interval
        self.stopping, self.states = stopping, states

    async def run(self) -> None:
        publisher, wake = self.publisher, self.publisher.relay_wake
        marker = asyncio.ensure_future(publisher.mark(self.stopping))
        listener: asyncpg.Connection | None = None
        while True:
            if listener is None or listener.is_closed():
                listener = await _listen(self.dsn, wake)
            try:
                published = await publish_batch(publisher.pool, publisher.js)
                self.states.set("outbox", "flowing")
            except (OutboxPublishError, TimeoutError, *db.DB_ERRORS) as exc:
                self.states.set(
                    "outbox", "stalled", "warning", cause=type(exc).__name__, error=str(exc)
                )
                published = 0
                await asyncio.sleep(min(self.interval, 1.0))
            if published:
                continue
            if self.stopping.is_set():
                break  # everything committed so far is out
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await wake.wait()
        await marker
        if listener is not None and not listener.is_closed():
            await listener.close()


async def _listen(dsn: str, wake: asyncio.Event) -> asyncpg.Connection | None:
    """A dedicated LISTEN connection; None (poll only) while Postgres is away."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.add_listener(OUTBOX_CHANNEL, lambda *_: wake.set())
        return conn
    except (TimeoutError, *db.DB_ERRORS) as exc:  # InternalClientError: a server going down
        log.debug("outbox.listen_failed", error=str(exc))
        return None
