"""Apply a consumer's fetched batch in one Postgres transaction, exactly once.

Each message's stream sequence is claimed (a redelivery is a no-op), the
REQs the batch names are locked up front in REQ order (two replicas cannot
deadlock), each message's body runs, and the batch commits; only then are
its outbox rows published, its metrics counted, the dispatcher woken. Bad
input is rejected once: recorded, published as a rejection event, logged,
and term'd, so it is never redelivered in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from nats.aio.msg import Msg

from orchestrator.core.backoff import delays
from orchestrator.core.registry import Pipeline
from orchestrator.engine import store
from orchestrator.engine.outbox import Publisher
from orchestrator.engine.tx import AfterCommit, EngineTx
from orchestrator.inbound.messages import Rejected
from orchestrator.inbound.rejection import Rejection
from orchestrator.runtime import db, failpoints, metrics
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.services import Outcome

log = get_logger("agogd.engine")

# A batch's queued writes are sent early past this many parameters (the
# protocol allows 32,767 per statement).
FLUSH_ARGS = 8000


@dataclass(frozen=True)
class Handler:
    """How one durable consumer's messages are applied."""

    consumer: str
    # The message's work, inside the batch's transaction; returns its outcome.
    body: Callable[[EngineTx, Msg], Awaitable[str]]
    # The REQ whose workflow row the body will lock, if it can be told cheaply.
    req_of: Callable[[Msg], str | None] = lambda _msg: None
    # Record the stream sequence, so a redelivery is a no-op.
    claim: bool = True
    # The outcome most messages end with: claims are written with it, so only
    # a message that ends otherwise costs a second write of its claim row (the
    # claim and its outcome commit together, so no reader sees the guess).
    usual: str = "applied"


class AfterCommitted:
    """Carries out a committed transaction's ``AfterCommit``."""

    def __init__(
        self,
        *,
        publisher: Publisher,
        wake_dispatcher: asyncio.Event,
        local_channels: frozenset[str] = frozenset(),
        wake_local: Callable[[], None] | None = None,
    ) -> None:
        self.publisher = publisher
        self.wake_dispatcher = wake_dispatcher
        self.local_channels = local_channels
        self.wake_local = wake_local

    def fresh(self, direct_publish: bool = True) -> AfterCommit:
        return AfterCommit(direct_publish=direct_publish, local_channels=self.local_channels)

    async def run(self, after: AfterCommit) -> None:
        after.tally.apply()  # committed: count it
        if after.wake_dispatcher:
            self.wake_dispatcher.set()
        if after.woken and self.wake_local is not None:
            self.wake_local()
        if after.outbox:
            await self.publisher.publish(after.outbox)


class BatchApplier:
    """Runs handlers over fetched batches, one transaction per batch."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        pipeline: Pipeline,
        after: AfterCommitted,
        stopping: asyncio.Event | None = None,
        backoff_max: float = 5.0,
    ) -> None:
        self.pool, self.pipeline, self.after = pool, pipeline, after
        self.stopping = stopping or asyncio.Event()
        self.backoff_max = backoff_max

    async def handle_batch(
        self,
        msgs: list[Msg],
        handler: Handler,
        waiting: Callable[[], Awaitable[None]] | None = None,
    ) -> list[Outcome]:
        """Apply a fetched batch in one transaction, so a busy pipeline pays one
        commit and a handful of round trips per batch rather than per message.

        While Postgres is away the batch waits for it, its messages kept alive
        (in progress), and is tried again: nak'ing them instead spent one of
        each message's ``max_deliver`` deliveries every try, so an outage of a
        minute made JetStream drop them (an agent's finished work, lost).
        ``waiting`` is called with each try, to keep alive what else was
        fetched. Once the daemon stops they are left to their ack wait.
        """
        # A crash point for tests: the batch is ours, nothing of it applied.
        failpoints.hit(f"engine.fetched.{handler.consumer}")
        for msg in msgs:
            # nats-server takes a NUL in a subject, Postgres text does not: its
            # claim failed every try (a redelivery loop). Read as U+FFFD instead.
            msg.subject = msg.subject.replace("\x00", "\ufffd")
        for tries, delay in enumerate(delays(maximum=self.backoff_max), start=1):
            try:
                return await self._apply(msgs, handler)
            except db.OUTAGE as exc:
                if self.stopping.is_set():
                    return ["nak"] * len(msgs)
                log.log(
                    logging.WARNING if tries == 1 else logging.DEBUG,
                    "batch.waiting_for_postgres",
                    consumer=handler.consumer,
                    size=len(msgs),
                    tries=tries,
                    error=repr(exc),
                )
                for msg in msgs:  # keep them ours: not redelivered meanwhile
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
                if waiting is not None:
                    await waiting()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.stopping.wait()
        raise AssertionError("unreachable")

    async def _apply(self, msgs: list[Msg], handler: Handler) -> list[Outcome]:
        """The batch in one transaction; if it fails for any reason but a
        rejection or an outage (a deadlock with a replica, a bug), it is rolled
        back and each message is retried in a transaction of its own, so only
        the bad one is held back."""
        try:
            return await self._batch_tx(msgs, handler)
        except db.OUTAGE:
            raise
        except Exception as exc:
            if len(msgs) == 1:
                _log_failure(msgs[0], exc)
                return ["nak"]
            log.warning("batch.split", consumer=handler.consumer, size=len(msgs), error=repr(exc))
        outcomes: list[Outcome] = []
        for msg in msgs:
            try:
                outcomes.extend(await self._batch_tx([msg], handler))
            except db.OUTAGE:
                raise
            except Exception as exc:
                _log_failure(msg, exc)
                outcomes.append("nak")
        return outcomes

    async def _batch_tx(self, msgs: list[Msg], handler: Handler) -> list[Outcome]:
        keys = [(m.metadata.stream, m.metadata.sequence.stream) for m in msgs]
        async with self.pool.acquire() as raw, raw.transaction():
            conn = EngineTx(raw, self.after.fresh())
            fresh = set(keys)
            claims = [
                (*key, handler.consumer, m.subject) for key, m in zip(keys, msgs, strict=True)
            ]
            # Lock every REQ the batch names at once, in REQ order, so two
            # replicas' batches cannot deadlock on each other.
            reqs = sorted({r for m in msgs if (r := handler.req_of(m)) is not None})
            if handler.claim and reqs:
                fresh, conn.prefetched = await store.claim_and_lock(
                    conn, claims, handler.usual, reqs
                )
            elif handler.claim:
                fresh = await store.claim_messages(conn, claims, handler.usual)
            elif reqs:
                conn.prefetched = await store.lock_workflows(conn, reqs)
            outcomes: list[Outcome] = []
            for key, msg in zip(keys, msgs, strict=True):
                if key not in fresh:
                    log.info(
                        "message.duplicate", msg_subject=msg.subject, stream=key[0], seq=key[1]
                    )
                    outcomes.append("ack")
                    continue
                fresh.discard(key)  # the same message twice in one fetch
                try:
                    # Bodies raise Rejected before they write anything, so the
                    # rejection record is the message's only effect.
                    outcome = await handler.body(conn, msg)
                except Rejected as err:
                    await self._reject(conn, msg, err)
                    outcomes.append("term")
                    continue
                if handler.claim and outcome != handler.usual:
                    await store.settle_message(conn, *key, outcome)
                outcomes.append("ack")
                if conn.queued_args > FLUSH_ARGS:
                    await conn.flush()
            await conn.flush()
        await self.after.run(conn.after)
        return outcomes

    async def _reject(self, conn: EngineTx, msg: Msg, err: Rejected) -> None:
        rejection = Rejection.of(msg, err.reason, err.message, by="engine", req=err.req)
        stream, seq = rejection.stream, rejection.seq
        await store.settle_message(conn, stream, seq, "rejected", rejection.detail)
        metrics.tally_of(conn).inc(metrics.MESSAGES_REJECTED, err.reason)
        await store.record_event(
            conn,
            err.req,
            "message.rejected",
            reason=rejection.detail,
            detail={"subject": msg.subject, "stream": stream, "seq": seq},
        )
        await store.enqueue(
            conn,
            self.pipeline.subjects["rejection"],
            rejection.event(store.now_iso()),
            rejection.msg_id,
        )
        log.warning(
            "message.rejected",
            msg_subject=msg.subject,
            stream=stream,
            seq=seq,
            reason_code=err.reason,
            reason=err.message,
            req_number=err.req,
        )


def _log_failure(msg: Msg, exc: Exception) -> None:
    log.error(
        "message.failed",
        msg_subject=msg.subject,
        error=repr(exc),
        delivered=msg.metadata.num_delivered,
    )
