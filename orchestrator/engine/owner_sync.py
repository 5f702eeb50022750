"""OWNER_REQUESTS.md as an intake and as a view of Postgres.

The watcher turns new or human-changed entries into workflows (through the
same idempotent intake as NATS and the API). The mirror writes each REQ's
status back, touching only that entry's status lines, atomically and under a
lock. What was last read and last written is kept in Postgres, not memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import asyncpg

from orchestrator.core.safe_text import one_line
from orchestrator.engine import requirements
from orchestrator.inbound import intake
from orchestrator.inbound.owner_requests import (
    OwnerRequest,
    OwnerRequestsFile,
    changed_entries,
    check_update,
)
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.services import periodic
from orchestrator.runtime.state_log import StateLog

if TYPE_CHECKING:
    from orchestrator.memory.service import Memory

log = get_logger("agogd.owner_requests")

FILE_STATUS = {
    "PENDING": "PENDING",
    "IN_PROGRESS": "IN_PROGRESS",
    "BLOCKED": "BLOCKED",
    "ESCALATED": "BLOCKED",
    "COMPLETE": "COMPLETE",
    "DEPLOYED": "DEPLOYED",
    "CANCELLED": "CANCELLED",
}
STARTABLE = frozenset({"NEW", "PENDING"})
# Serializes OWNER_REQUESTS.md mirror passes across replicas (pg_try_advisory_lock).
MIRROR_LOCK = 0x61676F77  # "agow"


class OwnerRequestsSync:
    """The file's intake and mirror, on one pool; ``run`` polls until agogd stops."""

    def __init__(
        self,
        file: OwnerRequestsFile,
        *,
        pool: asyncpg.Pool,
        states: StateLog,
        memory: Memory | None = None,
        wake_dispatcher: Callable[[], None] = lambda: None,
    ) -> None:
        self.file, self.pool, self.states = file, pool, states
        self.memory, self.wake_dispatcher = memory, wake_dispatcher

    async def run(self, *, interval: float, stopping: asyncio.Event) -> None:
        await periodic(
            self.sync_once,
            name="owner_requests",
            interval=interval,
            stopping=stopping,
            states=self.states,
        )

    async def sync_once(self) -> None:
        """One pass: ingest what changed, then mirror every changed status.
        Any error (asyncpg's InternalClientError in a Postgres restart, a file
        that kept changing...) fails only this pass: ``run`` goes on."""
        await self.ingest()
        while await self.mirror() >= MIRROR_BATCH:
            pass

    async def ingest(self) -> int:
        """Submit new or changed startable entries; returns how many were new workflows."""
        file = self.file
        entries, problems = await asyncio.to_thread(file.read_report)
        if file.digest is not None and file.digest == file.handled.get("ingested"):
            return 0  # this content is in already: no need to read every seen hash again
        for problem in problems:
            self.states.set(f"owner_requests.{problem}", "problem", "warning", problem=problem)
        async with self.pool.acquire() as conn:
            seen = {
                r["req_number"]: r["content_hash"]
                for r in await conn.fetch(
                    "SELECT req_number, content_hash FROM owner_requests_seen"
                )
            }
        created = 0
        for entry in changed_entries(seen, entries):
            async with self.pool.acquire() as conn, conn.transaction():
                created += await _ingest_one(conn, entry, self.memory)
        file.handled["ingested"] = file.digest
        if created:
            self.wake_dispatcher()
        return created

    async def mirror(self) -> int:
        """Write changed statuses into the file; returns how many rows were mirrored.

        One replica mirrors at a time (a session advisory lock; the others skip
        the pass), and the statuses are read under that lock right before the
        file is written, so a replica that read a status before it changed can
        never write it over the newer one another replica wrote (the file would
        stay stale for good).
        """
        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIRROR_LOCK):
                return 0
            try:
                return await _mirror_locked(conn, self.file)
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1)", MIRROR_LOCK)
                except BaseException:
                    conn.terminate()  # never hand a session that may hold the lock back
                    raise


async def _ingest_one(
    conn: asyncpg.Connection, entry: OwnerRequest, memory: Memory | None = None
) -> int:
    created = 0
    if entry.status in STARTABLE:
        req = intake.Requirement(
            req_number=entry.req_number,
            title=entry.title,
            priority=entry.priority,
            owner=entry.owner,
            requirements=list(entry.requirements),
        )
        created = int(await requirements.submit(conn, req, "owner_requests", memory))
        if not created:  # an edit of a REQ that has not started yet
            await conn.execute(
                "UPDATE workflow_state SET title = $2, priority = $3, updated_at = now()"
                " WHERE req_number = $1 AND status = 'PENDING'",
                entry.req_number,
                entry.title,
                entry.priority,
            )
        log.info("owner_requests.entry", req_number=entry.req_number, created=bool(created))
    elif not await conn.fetchval(
        "SELECT 1 FROM workflow_state WHERE req_number = $1", entry.req_number
    ):
        # A status only agogd writes, for a REQ agogd does not know: the file is
        # newer than the database (restored from a backup taken before the REQ
        # was submitted). Nothing would ever start it; the operator decides.
        log.warning(
            "owner_requests.unknown_req",
            req_number=entry.req_number,
            file_status=entry.status,
            reason=f"OWNER_REQUESTS.md shows {entry.req_number} as {entry.status}, but agogd"
            " has no such REQ (the database restored from an older backup?): set it to NEW"
            " to run it",
        )
        return 0  # not marked seen: once the operator sets it to NEW, it is taken in
    await conn.execute(
        "INSERT INTO owner_requests_seen (req_number, content_hash) VALUES ($1, $2)"
        " ON CONFLICT (req_number) DO UPDATE SET content_hash = EXCLUDED.content_hash,"
        " seen_at = now()",
        entry.req_number,
        entry.content_hash,
    )
    return created


_ROW = "SELECT req_number, status, commit_sha, deployed_at, deployed_by FROM workflow_state"
MIRROR_BATCH = 100


async def _mirror_locked(conn: asyncpg.Connection, file: OwnerRequestsFile) -> int:
    # Read right before the file is written (under the mirror lock), so a
    # status read earlier can never overwrite a newer one.
    rows = list(
        await conn.fetch(
            _ROW + " WHERE mirrored_status IS DISTINCT FROM status ORDER BY updated_at LIMIT $1",
            MIRROR_BATCH,
        )
    )
    if len(rows) < MIRROR_BATCH:
        rows += await _drifted(conn, file, MIRROR_BATCH - len(rows))
    if not rows:
        return 0
    updates = [u for row in rows if (u := _checked_update(row)) is not None]
    written = await asyncio.to_thread(file.update_statuses, updates) if updates else set()
    await conn.executemany(
        "UPDATE workflow_state SET mirrored_status = $2 WHERE req_number = $1 AND status = $2",
        [(row["req_number"], row["status"]) for row in rows],
    )
    for req, status, _ in updates:
        if req in written:
            log.info("owner_requests.mirrored", req_number=req, status=status)
    return len(rows)


async def _drifted(
    conn: asyncpg.Connection, file: OwnerRequestsFile, limit: int
) -> list[asyncpg.Record]:
    """Rows whose status the file no longer shows, though it was written: a
    hand edit, or an editor saving an old buffer over agogd's line. The file
    is a view of Postgres, so the mirror writes the status back, and says so
    (to act on a REQ, use agogctl or a decision)."""
    found = await asyncio.to_thread(file.read)
    if not found or file.digest == file.handled.get("checked"):
        return []  # statuses drift only when the file changes: this content matched
    entries = {e.req_number: e for e in found}
    rows = await conn.fetch(
        _ROW + " WHERE req_number = ANY($1::text[]) AND mirrored_status = status",
        list(entries),
    )
    drifted = []
    for row in rows:
        shown, wanted = entries[row["req_number"]].status, file_status(row)[0]
        if shown != wanted:
            log.warning(
                "owner_requests.status_restored",
                req_number=row["req_number"],
                file_status=shown,
                status=wanted,
                reason="OWNER_REQUESTS.md shows Postgres's status; a hand edit does not change"
                " the workflow (use agogctl req cancel|retry|resume|decide)",
            )
            drifted.append(row)
            if len(drifted) >= limit:
                break
    if not drifted:
        file.handled["checked"] = file.digest
    return drifted


def _checked_update(
    row: Mapping[str, Any],
) -> tuple[str, str, Mapping[str, str] | None] | None:
    """The file update for one row, or None: an update the file would refuse
    is left out (its extra lines first, then the entry), logged once (the row
    is marked mirrored all the same), so one bad entry never stops the others."""
    status, extra = file_status(row)
    try:
        check_update(status, extra)
        return row["req_number"], status, extra
    except (TypeError, ValueError) as exc:
        problem = str(exc)
    try:
        check_update(status)
    except (TypeError, ValueError) as exc:
        log.warning(
            "owner_requests.entry_skipped",
            req_number=row["req_number"],
            status=status,
            error=str(exc),
        )
        return None
    log.warning(
        "owner_requests.extra_lines_skipped",
        req_number=row["req_number"],
        status=status,
        error=problem,
    )
    return row["req_number"], status, None


def file_status(row: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The file's status for a workflow row, and the lines that go with it.

    Values are made one line without control characters: rows written before
    notices were normalised (``CompletionNotice``) may hold anything."""
    status = FILE_STATUS.get(row["status"], row["status"])
    extra: dict[str, str] = {}
    if row["status"] == "COMPLETE" and row["commit_sha"]:
        extra = {"Commit": _line(row["commit_sha"])}
    if row["status"] == "DEPLOYED":
        extra = {
            "Deployed At": row["deployed_at"].isoformat() if row["deployed_at"] else "",
            "Commit": _line(row["commit_sha"]),
            "Deployed By": _line(row["deployed_by"]),
        }
    return status, {k: v for k, v in extra.items() if v}


def _line(value: str | None, limit: int = 120) -> str:
    return one_line(value, limit) if value else ""
