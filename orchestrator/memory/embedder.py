"""The embedder: pending memories get their vectors after commit; the backfill.

Rows arrive pending (``writes``); their transaction NOTIFYs
``agogd_memory``, which wakes this service at once (``service`` LISTENs; a poll every
``memory_embed_interval`` seconds is the safety net). Each pass claims a
batch (``FOR UPDATE SKIP LOCKED`` and a short lease, so replicas share the
work), calls the provider outside any transaction, and stores the vectors.

When the provider is down, slow or answers garbage, the rows stay pending,
one warning is logged for the whole outage (not one per row), retries back
off up to ``memory_embed_retry_max`` seconds, and the first success logs
the end of the outage. ``agogd_memory_pending_embeddings`` shows the backlog.
There is no fallback vector, ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import asyncpg

from orchestrator.embeddings.base import EmbeddingProvider, EmbeddingUnavailable
from orchestrator.memory import chunking, dimension, vectors
from orchestrator.memory.outage import Outage
from orchestrator.runtime import db, metrics
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.services import sleep_unless_stopped
from orchestrator.runtime.state_log import StateLog

log = get_logger("agogd.memory")

CLAIM_SQL = (
    "UPDATE memories m SET embedding_claimed_until = now() + make_interval(secs => $2),"
    " embedding_attempts = m.embedding_attempts + 1"
    " WHERE m.id IN (SELECT id FROM memories WHERE embedding_status = 'pending'"
    "  AND (embedding_claimed_until IS NULL OR embedding_claimed_until < now())"
    "  ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)"
    " RETURNING m.id, m.content, m.req_number, m.memory_type"
)
STORE_SQL = (
    "UPDATE memories SET embedding = $2::vector, embedding_status = 'done', embedded_at = now(),"
    " embedding_error = NULL, embedding_claimed_until = NULL"
    " WHERE id = $1 AND embedding_status = 'pending'"
)
RELEASE_SQL = (
    "UPDATE memories SET embedding_claimed_until = NULL, embedding_error = $2"
    " WHERE id = ANY($1::uuid[]) AND embedding_status = 'pending'"
)
PENDING_SQL = "SELECT count(*) FROM memories WHERE embedding_status = 'pending'"
LEASE = 120.0  # seconds a claim lasts; a replica that dies mid-batch loses it


class Embedder:
    """Embeds pending memories with one provider, until the daemon stops."""

    def __init__(
        self,
        provider: EmbeddingProvider,
        *,
        batch: int = 32,
        interval: float = 5.0,
        retry_max: float = 300.0,
        call_timeout: float = 120.0,
        on_embedded: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.provider = provider
        self.batch, self.interval, self.retry_max = batch, interval, retry_max
        self.call_timeout = call_timeout
        self.on_embedded = on_embedded
        self.wake = asyncio.Event()
        self.outage = Outage()
        self.dimension: int | None = None  # once checked against the table
        self.refused: str | None = None  # a dimension mismatch found at run time

    # --- one pass -------------------------------------------------------------------
    async def check_dimension(self, conn: asyncpg.Connection) -> None:
        """Check the provider against the table (at start, or once its dimension
        is known); raises DimensionMismatch or EmbeddingUnavailable."""
        try:
            size = self.provider.dimension
        except EmbeddingUnavailable:  # e.g. an Ollama model first seen: ask it
            probe = getattr(self.provider, "probe", None)
            if probe is None:
                raise
            size = await probe()
        await dimension.ensure(conn, self.provider.name, size)
        self.dimension = size

    async def embed_batch(self, pool: asyncpg.Pool) -> int:
        """Embed one claimed batch; returns how many rows got vectors (0: none left).

        Raises EmbeddingUnavailable (the rows are released, still pending)."""
        if self.dimension is None:
            async with pool.acquire() as conn:
                await self.check_dimension(conn)
        rows = await pool.fetch(CLAIM_SQL, self.batch, LEASE)
        if not rows:
            return 0
        try:
            found = await self._vectors([r["content"] for r in rows])
        except EmbeddingUnavailable as exc:
            metrics.MEMORY_EMBED_FAILURES.inc()
            await pool.execute(RELEASE_SQL, [r["id"] for r in rows], exc.reason[:500])
            raise
        async with pool.acquire() as conn:
            await conn.executemany(
                STORE_SQL, [(r["id"], v) for r, v in zip(rows, found, strict=True)]
            )
        metrics.MEMORY_EMBEDDED.inc(len(rows))
        reqs = {r["req_number"] for r in rows if r["memory_type"] == "requirement"}
        if reqs and self.on_embedded is not None:
            self.on_embedded(reqs)
        return len(rows)

    async def _vectors(self, contents: list[str]) -> list[list[float]]:
        """One vector per content; a row longer than the provider takes (stored
        under another provider) is embedded in pieces, averaged by length."""
        limit = self.provider.max_input_chars
        pieces = [chunking.pieces_for_provider(c, limit) for c in contents]
        flat = [p for ps in pieces for p in ps]
        try:
            async with asyncio.timeout(self.call_timeout):
                got = await self.provider.embed(flat)
        except TimeoutError:
            raise EmbeddingUnavailable(
                f"{self.provider.name} did not answer within {self.call_timeout:g}s"
            ) from None
        except (ValueError, TypeError) as exc:  # a provider refusing its input
            raise EmbeddingUnavailable(f"{self.provider.name} refused the input: {exc}") from None
        assert self.dimension is not None
        vectors.check(got, len(flat), self.dimension)
        out, at = [], 0
        for ps in pieces:
            group = got[at : at + len(ps)]
            at += len(ps)
            out.append(
                list(group[0]) if len(ps) == 1 else vectors.mean_unit(group, [len(p) for p in ps])
            )
        return out

    async def drain(self, pool: asyncpg.Pool) -> int:
        """Embed until no pending row is left (or the provider fails)."""
        total = 0
        while n := await self.embed_batch(pool):
            total += n
        return total

    # --- the service ------------------------------------------------------------------
    async def run(self, pool: asyncpg.Pool, stopping: asyncio.Event, states: StateLog) -> None:
        try:
            while not stopping.is_set():
                self.wake.clear()
                delay = await self._pass(states, pool)
                await _update_gauge(pool)
                # During an outage new rows do not cut the back-off short:
                # that would be one failing call per memory.
                calm = not self.outage.down and self.refused is None
                await sleep_unless_stopped(stopping, delay, self.wake if calm else None)
        finally:
            with contextlib.suppress(Exception):
                await self.provider.close()

    async def _pass(self, states: StateLog, pool: asyncpg.Pool) -> float:
        """One backfill pass; returns the seconds to wait before the next."""
        if self.refused is not None:
            return self.retry_max
        try:
            embedded = await self.drain(pool)
        except EmbeddingUnavailable as exc:
            if self.outage.failed(exc.reason, time.monotonic()):
                pending = await pool.fetchval(PENDING_SQL)
                log.warning(
                    "memory.embeddings_unavailable",
                    provider=self.provider.name,
                    reason=exc.reason,
                    pending=pending,
                    note="memories are stored without an embedding and embedded when the"
                    " provider is back; recall falls back to full text meanwhile",
                )
            return self.outage.retry_delay(self.interval, self.retry_max)
        except dimension.DimensionMismatch as exc:
            self.refused = str(exc)
            log.error("memory.embeddings_refused", provider=self.provider.name, error=str(exc))
            return self.retry_max
        except db.DB_ERRORS as exc:
            states.set(
                "memory.embedder", "failing", "warning", cause=type(exc).__name__, error=str(exc)
            )
            return self.interval
        states.set("memory.embedder", "ok", "debug")
        if not embedded:  # no call made: an outage is over only when one succeeds
            return self.outage.retry_delay(self.interval, self.retry_max)
        closed = self.outage.succeeded(time.monotonic())
        if closed is not None:
            log.info(
                "memory.embeddings_restored",
                provider=self.provider.name,
                outage_seconds=round(closed.seconds, 1),
                failed_calls=closed.failures,
                embedded=embedded,
            )
        return self.interval


async def _update_gauge(pool: asyncpg.Pool) -> None:
    with contextlib.suppress(*db.DB_ERRORS):
        metrics.MEMORY_PENDING.set(await pool.fetchval(PENDING_SQL))
