"""``create_backup``: one archive of agogd's whole state, taken while it runs.

The two halves are taken in a fixed order: every ``agog_*`` stream is
snapshotted FIRST (the time it starts is read from Postgres's clock and
recorded), THEN agent_memory is dumped. So the dump is never older than the
streams: whatever Postgres says was published, the streams either hold or
can be given again from Postgres's outbox, which is how a restore reconciles
them (``orchestrator.backup.restore``). The dump, its row counts and the
applied migrations are read in one exported snapshot, so they agree.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

import orchestrator
from orchestrator.backup import archive, jetstream
from orchestrator.backup import postgres as pg
from orchestrator.backup.errors import BackupError
from orchestrator.backup.servers import Servers
from orchestrator.runtime import failpoints, pg_tools
from orchestrator.runtime.logs import get_logger

log = get_logger("agogd.backup")


@dataclass(frozen=True)
class Created:
    archive: Path
    manifest: dict[str, Any]
    seconds: float

    @property
    def bytes(self) -> int:
        return self.archive.stat().st_size


async def create_backup(
    servers: Servers,
    to_dir: Path,
    *,
    owner_requests_file: Path | None = None,
    nc: NATS | None = None,
) -> Created:
    """Write one archive into ``to_dir`` (made if needed) and return it. ``nc``:
    an open NATS connection to use (agogd's own), else one is opened."""
    started = time.monotonic()
    name = archive.archive_name(datetime.now(UTC))
    work = await asyncio.to_thread(_work_dir, to_dir, name)
    try:
        if nc is None:
            async with servers.nats() as own:
                manifest = await _collect(servers, own, work, owner_requests_file)
        else:
            manifest = await _collect(servers, nc, work, owner_requests_file)
        manifest["created_at"] = datetime.now(UTC).isoformat()
        path = await asyncio.to_thread(archive.write, work, manifest, to_dir, name)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    done = Created(path, manifest, round(time.monotonic() - started, 3))
    log.info(
        "backup.created",
        archive=str(path),
        bytes=done.bytes,
        seconds=done.seconds,
        streams=len(manifest["nats"]["streams"]),
    )
    return done


def _work_dir(to_dir: Path, name: str) -> Path:
    """Where the parts are made: a hidden directory beside the archive-to-be."""
    to_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".work", dir=to_dir))


async def _collect(
    servers: Servers, nc: NATS, work: Path, owner_requests_file: Path | None
) -> dict[str, Any]:
    dsn = servers.dsn.get_secret_value()
    manifest: dict[str, Any] = {
        "format": archive.FORMAT,
        "agogd_version": orchestrator.__version__,
        "host": socket.gethostname(),
        "started_at": datetime.now(UTC).isoformat(),
    }
    async with pg.connection(dsn) as conn:
        # Postgres's clock, just before the first stream is snapshotted: the
        # outbox's published_at is written by the same clock.
        snapshot_started = await pg.clock(conn)
        manifest["nats"] = await _snapshot_streams(nc, work)
        manifest["nats"]["snapshot_started_at"] = snapshot_started.isoformat()
        if pause := failpoints.pause_seconds("backup.streams_snapshotted"):
            log.warning("failpoint.pause", failpoint="backup.streams_snapshotted", seconds=pause)
            await asyncio.sleep(pause)
        subjects = {
            name: list(spec["config"].get("subjects") or [])
            for name, spec in manifest["nats"]["streams"].items()
        }
        reset_from = snapshot_started - pg.RESET_MARGIN
        manifest["postgres"] = await _dump(
            conn, dsn, work, servers.pg_bin_dir, reset_from, subjects
        )
    manifest["pg_dump_version"] = await pg_tools.version(servers.pg_bin_dir)
    manifest["owner_requests"] = await _owner_requests(owner_requests_file, work)
    return manifest


async def _snapshot_streams(nc: NATS, work: Path) -> dict[str, Any]:
    """Every agog_* stream's snapshot, all at once (the snapshots start within
    moments of each other, and the whole takes as long as the largest)."""
    version = nc.connected_server_version
    names = await jetstream.stream_names(nc)
    (work / archive.stream_part("x")).parent.mkdir(parents=True, exist_ok=True)
    taken = await asyncio.gather(*(_snapshot_one(nc, name, work) for name in names))
    return {
        "server_version": f"{version.major}.{version.minor}.{version.patch}",
        "snapshot_finished_at": datetime.now(UTC).isoformat(),
        "streams": dict(zip(names, taken, strict=True)),
    }


async def _snapshot_one(nc: NATS, name: str, work: Path) -> dict[str, Any]:
    part = archive.stream_part(name)
    taken = await jetstream.snapshot(nc, name, work / part)
    state = taken["state"]
    return {
        "file": part,
        "config": taken["config"],
        "state": state,
        # Read right after the snapshot, for the operator: the consumers' own
        # state is the snapshot's (a restore brings that back).
        "consumers": await jetstream.consumers(nc, name),
        "messages": int(state.get("messages", 0)),
        "first_seq": int(state.get("first_seq", 0)),
        "last_seq": int(state.get("last_seq", 0)),
    }


async def _dump(
    conn: Any,
    dsn: str,
    work: Path,
    bin_dir: Path | None,
    reset_from: datetime,
    subjects: dict[str, list[str]],
) -> dict[str, Any]:
    """pg_dump in an exported snapshot, read with the counts, the migrations
    and the outbox rows a restore may send again."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        snap = await conn.fetchval("SELECT pg_export_snapshot()")
        schema = await pg.schema_of(conn)
        found = {
            "database": await conn.fetchval("SELECT current_database()"),
            "server_version": await conn.fetchval("SHOW server_version"),
            "schema": schema,
            "dumped_at": (await conn.fetchval("SELECT now()")).isoformat(),
            "extensions": await pg.extensions(conn),
            "migrations": await pg.migrations(conn, schema),
            "row_counts": await pg.row_counts(conn, schema),
            "outbox": await pg.outbox_candidates(conn, schema, reset_from, subjects),
            "file": archive.DUMP,
        }
        try:
            await pg_tools.dump(dsn, work / archive.DUMP, bin_dir=bin_dir, snapshot=snap)
        except pg_tools.PgToolError as exc:
            raise BackupError(str(exc)) from None
    migrations = found["migrations"]
    found["schema_version"] = migrations[-1]["version"] if migrations else None
    return found


async def _owner_requests(path: Path | None, work: Path) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        return {"path": str(path), "file": None}
    (work / archive.OWNER_REQUESTS).parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread((work / archive.OWNER_REQUESTS).write_bytes, data)
    return {"path": str(path), "file": archive.OWNER_REQUESTS}
