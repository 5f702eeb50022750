"""Prunes the bookkeeping that can no longer matter, so that it does not grow
with every message for ever.

Two rules, each safe for a reason that holds whatever agogd does meanwhile:

- ``processed_messages`` records which stream message was handled, so that a
  redelivery is not applied twice. A stream with ``max_age`` (``limits``
  retention) deletes a message once it is that old, and a deleted message
  can never be delivered again; ``processed_at`` is never before the
  message was stored. So a row older than its stream's ``max_age`` (plus a
  day's margin for clocks) guards against nothing. Streams without a
  ``max_age`` keep their rows.
- ``outbox`` rows, once published, only keep their ``msg_id`` unique. The
  same ``msg_id`` is only ever made again by applying the same inbound
  message again, which the rule above prevents while that message exists.
  So a published row older than the longest ``max_age`` of any stream (plus
  the margin) is not needed; with a stream that keeps messages for ever,
  published rows are kept too.

Deletes go in batches (``LIMIT`` through ``ctid``), so one pass never holds
long locks or one huge transaction; the pass repeats while a batch was full.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from orchestrator.core.registry import Pipeline
from orchestrator.runtime.logs import get_logger

log = get_logger("agogd.pruning")

MARGIN = 86400.0  # seconds added to every age: clocks and slow consumers
BATCH = 5000
# created_at <= published_at (a row is published after it was made), so the
# created_at bound drops no row the rule would delete; it lets the BRIN index
# (V1.12.0) skip every recent block instead of reading the whole outbox.
OUTBOX_SQL = (
    "DELETE FROM outbox WHERE ctid = ANY(ARRAY(SELECT ctid FROM outbox"
    " WHERE published_at IS NOT NULL"
    " AND published_at < now() - make_interval(secs => $1)"
    " AND created_at < now() - make_interval(secs => $1) LIMIT $2))"
)


@dataclass(frozen=True)
class Pruned:
    """Rows one pass deleted, per rule."""

    processed: int
    outbox: int


class Pruner:
    def __init__(self, *, pool: asyncpg.Pool, pipeline: Pipeline, batch: int = BATCH) -> None:
        self.pool, self.pipeline, self.batch = pool, pipeline, batch

    def outbox_age(self) -> float | None:
        """Seconds after which a published outbox row can go; None: never."""
        ages = [s.max_age for s in self.pipeline.streams]
        if not ages or any(age <= 0 for age in ages):
            return None
        return max(ages) + MARGIN

    async def prune_once(self) -> Pruned:
        """One batch of each rule."""
        processed = 0
        for stream in self.pipeline.streams:
            if stream.max_age > 0:
                processed += _count(
                    await self.pool.execute(
                        "DELETE FROM processed_messages WHERE ctid = ANY(ARRAY(SELECT ctid"
                        " FROM processed_messages WHERE stream = $1 AND processed_at < now()"
                        " - make_interval(secs => $2) LIMIT $3))",
                        stream.name,
                        stream.max_age + MARGIN,
                        self.batch,
                    )
                )
        outbox = 0
        age = self.outbox_age()
        if age is not None:
            outbox = _count(
                await self.pool.execute(
                    OUTBOX_SQL,
                    age,
                    self.batch,
                )
            )
        if processed or outbox:
            log.info("pruning.pruned", processed_messages=processed, outbox=outbox)
        return Pruned(processed, outbox)

    async def pass_(self) -> bool:
        """A pass for ``periodic(drain=True)``: True while a batch was full."""
        found = await self.prune_once()
        return found.processed >= self.batch or found.outbox >= self.batch


def _count(status: str) -> int:
    """Rows of a ``DELETE n`` command status."""
    return int(status.split()[-1])
