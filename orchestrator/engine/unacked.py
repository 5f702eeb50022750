"""At start, apply what JetStream handed a killed agogd and never saw acked.

A message delivered to a process that then died stays pending at its
consumer until the ack wait (60 s) runs out: after a ``kill -9`` under load,
the REQs of the batches it held would stall for a minute. JetStream has no
call that gives them back at once, but its consumer info says where they can
be (above the ack floor, up to the last delivered stream sequence) and the
stream still holds them. So each claimed consumer, as it starts, reads that
range from the stream and applies it in batches, before its first pull.

This is safe because the engine's claims apply a message at most once: one
applied already (acked above the floor, or being applied by a live replica
right now) is found a duplicate, and when JetStream later redelivers what
was applied here, its claim is found and it is acked. Nothing here acks (the
messages read from the stream have no reply subject), so if this fails or is
cut short, the redelivery still comes and nothing is lost.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from orchestrator.core.registry import subject_matches
from orchestrator.engine.transactions import BatchApplier, Handler
from orchestrator.runtime.logs import get_logger

log = get_logger("agogd.engine")

# Stream sequences read per consumer at most; messages past them wait for
# their ack wait as before (a live replica's full window is 1,000 at most).
MAX_SEQUENCES = 2000
# Stream reads in flight at once (each is one request to the stream's leader).
READS_AT_ONCE = 32


@dataclass(frozen=True)
class UnackedSweep:
    """Reads and applies one consumer's possibly-pending messages, once."""

    nc: NATS
    js: JetStreamContext
    applier: BatchApplier
    batch: int
    max_sequences: int = MAX_SEQUENCES

    async def run(self, stream: str, handler: Handler, filter_subject: str | None = None) -> int:
        """Apply what may be pending on ``handler.consumer`` of ``stream``;
        returns how many messages were applied (duplicates included). Never
        raises: the sweep is a head start, not a condition of consuming, and
        what it could not apply comes back with its redelivery."""
        try:
            return await self._sweep(stream, handler, filter_subject)
        except Exception as exc:
            log.warning("unacked.sweep_failed", stream=stream, error=repr(exc))
            return 0

    async def _sweep(self, stream: str, handler: Handler, filter_subject: str | None) -> int:
        if not handler.claim:
            return 0  # only claimed messages are known to apply once
        try:
            info = await self.js.consumer_info(stream, handler.consumer)
        except (NatsError, TimeoutError, OSError) as exc:
            log.debug("unacked.no_info", stream=stream, consumer=handler.consumer, error=repr(exc))
            return 0
        pending = info.num_ack_pending or 0
        floor = (info.ack_floor.stream_seq if info.ack_floor else None) or 0
        delivered = (info.delivered.stream_seq if info.delivered else None) or 0
        if not pending or delivered <= floor:
            return 0
        first = floor + 1
        last = min(delivered, first + self.max_sequences - 1)
        msgs = await self._read(stream, handler.consumer, first, last, filter_subject)
        for start in range(0, len(msgs), self.batch):
            await self.applier.handle_batch(msgs[start : start + self.batch], handler)
        log.info(
            "unacked.applied",
            stream=stream,
            consumer=handler.consumer,
            pending=pending,
            first_seq=first,
            last_seq=last,
            messages=len(msgs),
            left_to_ack_wait=max(0, delivered - last),
        )
        return len(msgs)

    async def _read(
        self, stream: str, consumer: str, first: int, last: int, filter_subject: str | None
    ) -> list[Msg]:
        gate = asyncio.Semaphore(READS_AT_ONCE)

        async def one(seq: int) -> Msg | None:
            async with gate:
                try:
                    raw = await self.js.get_msg(stream, seq)
                except NotFoundError:
                    return None  # deleted, or past the stream's limits: nothing to apply
                except (NatsError, TimeoutError, OSError) as exc:
                    log.debug("unacked.read_failed", stream=stream, seq=seq, error=repr(exc))
                    return None  # its redelivery still comes
            subject = raw.subject or ""
            if filter_subject and not subject_matches(filter_subject, subject):
                return None
            return Msg(
                _client=self.nc,
                subject=subject,
                data=raw.data or b"",
                headers=raw.headers,
                _metadata=Msg.Metadata(
                    sequence=Msg.Metadata.SequencePair(consumer=0, stream=seq),
                    num_pending=0,
                    num_delivered=1,
                    timestamp=raw.time or datetime.now(UTC),
                    stream=stream,
                    consumer=consumer,
                ),
            )

        found = await asyncio.gather(*(one(seq) for seq in range(first, last + 1)))
        return [m for m in found if m is not None]
