"""Scheduled backups in the daemon (``AGOG_BACKUP_SCHEDULE``), and the record
of every backup in ``backup_runs``.

Time is cut into slots of the schedule's interval, aligned to UTC midnight
(``6h``: 00:00, 06:00, 12:00, 18:00). Every replica runs this service; a
slot's backup is taken by whichever takes the advisory lock first (a
try-lock: the others skip at once) and finds no good backup recorded for
the slot yet. The row is written before the lock is released, so a slot is
backed up once however many replicas there are; a replica started (or
restarted) inside a slot that has none takes it at once. A failed slot is
tried again, ``RETRY`` seconds apart at most ``TRIES`` times; a replica
killed mid-backup leaves no row (and its lock goes with its session), so
the slot is simply still open. After a good backup the oldest archives
beyond ``AGOG_BACKUP_KEEP`` are deleted.

A failure is recorded, logged (``backup.failed``, an error) and published as
an infra event (``agog.orchestration.events.infra.backup_failed.agogd``,
when NATS is there to take it); the daemon goes on. Every replica, scheduled
or not, reads the last good backup's time from the table into
``agogd_backup_last_success_timestamp_seconds``, which the alert
``AgogdBackupTooOld`` compares with the schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from orchestrator.backup import archive
from orchestrator.backup import postgres as pg
from orchestrator.backup.create import Created, create_backup
from orchestrator.backup.errors import Unreachable
from orchestrator.backup.servers import Servers
from orchestrator.core.redact import redact_text
from orchestrator.core.registry import Pipeline
from orchestrator.runtime import db, metrics, services
from orchestrator.runtime.context import Runtime
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.state_log import StateLog

log = get_logger("agogd.backup")

LOCK = "agogd:backup"
REFRESH = 30.0  # seconds between reads of the last good backup
TRIES = 3  # attempts per slot
RETRY = 60.0  # seconds between them (at most a tenth of the interval)
STALE = 86400.0  # a leftover .partial or .work this old is a crashed backup's


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def slot_of(now: float, interval: float) -> float:
    """The start of the slot ``now`` falls in (Unix seconds)."""
    return now - now % interval


_INSERT = (
    "INSERT INTO backup_runs (trigger, slot, started_at, outcome, archive, bytes, seconds,"
    " error, replica) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)


async def record(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    trigger: str,
    started_at: datetime,
    created: Created | None,
    error: str | None = None,
    slot: datetime | None = None,
    replica: str | None = None,
) -> None:
    """One row of backup_runs: the outcome of a backup."""
    await conn.execute(
        _INSERT,
        trigger,
        slot,
        started_at,
        "ok" if created is not None else "failed",
        str(created.archive) if created else None,
        created.bytes if created else None,
        created.seconds if created else None,
        redact_text(error)[:2000] if error else None,
        replica or replica_name(),
    )


async def record_manual(
    dsn: str, started_at: datetime, created: Created | None, error: str | None = None
) -> bool:
    """Record an ``agogctl backup create`` where the schema has the table;
    returns whether it was recorded (a backup never fails for its record)."""
    try:
        async with pg.connection(dsn) as conn:
            if not await conn.fetchval("SELECT to_regclass('backup_runs') IS NOT NULL"):
                return False
            await record(
                conn, trigger="manual", started_at=started_at, created=created, error=error
            )
            return True
    except Unreachable:
        return False  # Postgres away: the backup's own error says so
    except (OSError, asyncpg.PostgresError) as exc:
        log.warning("backup.not_recorded", error=str(exc))
        return False


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete the oldest archives beyond ``keep``, and a crashed backup's
    leftovers older than a day; returns what was deleted."""
    gone = archive.archives_in(directory)[:-keep] if keep > 0 else []
    for path in gone:
        path.unlink(missing_ok=True)
    if not directory.is_dir():
        return gone
    cutoff = time.time() - STALE
    leftovers = [
        *directory.glob(f".{archive.PREFIX}*"),  # a backup's work directory
        *directory.glob(f"{archive.UNPACKED}*"),  # a restore's or a verify's
        *directory.glob("*.tar.partial"),
    ]
    for path in leftovers:
        if path.stat().st_mtime >= cutoff:
            continue  # maybe a backup in progress
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        gone.append(path)
    return gone


class BackupScheduler:
    """The service: the gauge on every replica, and the scheduled backups."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        nc: NATS,
        servers: Servers,
        pipeline: Pipeline,
        interval: float | None,
        directory: Path,
        keep: int,
        owner_requests_file: Path | None,
        stopping: asyncio.Event,
        states: StateLog,
        replica: str | None = None,
    ) -> None:
        self.pool, self.nc, self.servers, self.pipeline = pool, nc, servers, pipeline
        self.interval, self.directory, self.keep = interval, directory, keep
        self.owner_requests_file = owner_requests_file
        self.stopping, self.states = stopping, states
        self.replica = replica or replica_name()
        self._next = 0.0

    async def run(self) -> None:
        metrics.BACKUP_SCHEDULE.set(self.interval or 0)
        await services.periodic(
            self.tick,
            name="backup-schedule",
            interval=lambda: self._next,
            stopping=self.stopping,
            states=self.states,
        )

    async def tick(self) -> Created | None:
        """Refresh the gauge; take the slot's backup if it is this replica's to take."""
        self._next = REFRESH
        await self.refresh()
        if self.interval is None:
            return None
        now = time.time()
        slot = slot_of(now, self.interval)
        self._next = min(REFRESH, slot + self.interval - now + 0.05)
        async with db.try_advisory_lock(self.pool, LOCK) as held:
            if not held:
                return None  # another replica is backing up
            slot_at = datetime.fromtimestamp(slot, UTC)
            if not await self._due(slot_at, now):
                return None
            created = await self.backup(slot_at)
        await self.refresh()
        return created

    async def _due(self, slot: datetime, now: float) -> bool:
        rows = await self.pool.fetch(
            "SELECT outcome, extract(epoch FROM finished_at) AS at FROM backup_runs"
            " WHERE slot = $1",
            slot,
        )
        if any(r["outcome"] == "ok" for r in rows) or len(rows) >= TRIES:
            return False
        retry = min(RETRY, (self.interval or RETRY) / 10)
        wait = max((float(r["at"]) for r in rows), default=0.0) + retry - now
        if wait > 0:
            self._next = min(self._next, wait)
            return False
        return True

    async def backup(self, slot: datetime) -> Created | None:
        """Take one backup for ``slot``, record it, prune; never raises."""
        started = datetime.now(UTC)
        try:
            created = await create_backup(
                self.servers,
                self.directory,
                owner_requests_file=self.owner_requests_file,
                nc=self.nc,
            )
        except Exception as exc:  # any failure is recorded, and the daemon goes on
            await self._failed(slot, started, f"{type(exc).__name__}: {exc}")
            return None
        await record(
            self.pool,
            trigger="schedule",
            slot=slot,
            started_at=started,
            created=created,
            replica=self.replica,
        )
        metrics.BACKUP_RUNS.labels("ok").inc()
        gone = await asyncio.to_thread(prune, self.directory, self.keep)
        if gone:
            log.info("backup.pruned", deleted=[str(p) for p in gone], keep=self.keep)
        return created

    async def _failed(self, slot: datetime, started: datetime, error: str) -> None:
        error = redact_text(error)
        metrics.BACKUP_RUNS.labels("failed").inc()
        log.error("backup.failed", slot=slot.isoformat(), error=error, replica=self.replica)
        with contextlib.suppress(*db.DB_ERRORS):
            await record(
                self.pool,
                trigger="schedule",
                slot=slot,
                started_at=started,
                created=None,
                error=error,
                replica=self.replica,
            )
        event: dict[str, Any] = {
            "eventType": "backup.failed",
            "slot": slot.isoformat(),
            "error": error,
            "replica": self.replica,
            "directory": str(self.directory),
            "timestamp": datetime.now(UTC).isoformat(),
        }
        subject = self.pipeline.subject("infra_event", event="backup_failed", target="agogd")
        with contextlib.suppress(Exception):  # NATS may be what failed
            await self.nc.jetstream().publish(subject, json.dumps(event).encode(), timeout=5)

    async def refresh(self) -> None:
        """The last good backup's time, from the table (the same on every replica)."""
        with contextlib.suppress(*db.DB_ERRORS):
            last = await self.pool.fetchval(
                "SELECT extract(epoch FROM max(finished_at)) FROM backup_runs WHERE outcome = 'ok'"
            )
            metrics.BACKUP_LAST_SUCCESS.set(float(last or 0))


def build(rt: Runtime) -> BackupScheduler:
    """The service for a daemon's runtime (``orchestrator.wiring``)."""
    settings = rt.settings
    return BackupScheduler(
        pool=rt.pool,
        nc=rt.nc,
        servers=Servers.of(settings),
        pipeline=rt.pipeline,
        interval=settings.backup_interval(),
        directory=settings.backup_directory(),
        keep=settings.backup_keep,
        owner_requests_file=settings.owner_requests_file,
        stopping=rt.stopping,
        states=rt.states,
    )
