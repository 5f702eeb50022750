"""``restore_backup``: put an archive back onto empty servers, with agogd stopped.

Everything is checked BEFORE anything is touched: every part's sha256 and
size, the archive's schema (each applied migration must be one this agogd
has, with the same checksum: an archive from a newer agogd is refused), that
no agogd is connected, that each extension the dump needs is there or can be
made, and that the target is empty: Postgres without rows in agogd's tables,
no archived stream holding messages, no OWNER_REQUESTS.md of other content.
``force`` replaces a non-empty target (its streams deleted, agogd's objects
in its schema dropped) instead of refusing.

Then the streams are restored (JetStream's own restore: messages, their
sequences, the durable consumers and their ack floors), then Postgres, in
ONE transaction: the dump, and the reconciliation below.

Why the two halves agree afterwards. ``create_backup`` snapshots the streams
first (recording when it started, by Postgres's clock) and dumps Postgres
after, so Postgres may know more than the streams:

- Outbox rows Postgres marked published after the snapshot began: their
  messages (stage assignments, events) are not in the restored streams. Every
  row published at or after the snapshot's start, minus ``RESET_MARGIN`` (a
  publishing transaction's own span), is set pending again, so agogd's
  outbox publisher sends it again on start under the same ``Nats-Msg-Id``.
  JetStream's duplicate window does not survive a restore, so the ids are
  not left to it: the backup records (in the dump's own snapshot) when the
  oldest such row, or pending one, was made and which streams their subjects
  go to; those streams' messages since then (minus ``CLOCK_SKEW``) are read,
  headers only, and a row whose message is among them is not reset (a
  pending one is marked published): nothing is stored twice, nothing is
  missing.
- Messages that reached a stream after the snapshot and that Postgres then
  applied: gone with the data, but Postgres's ``processed_messages`` still
  claims their sequences. The restored stream continues from its snapshot's
  last sequence, so the next message stored there would take a claimed
  sequence and be skipped as already processed. Those claims, on sequences
  the restored streams never reached, are deleted.
- Messages the restored consumers deliver again because their ack floor is
  the snapshot's, while Postgres applied them before the dump: each is
  recognised by ``processed_messages`` (stream and sequence, both restored
  as they were) and acknowledged without being applied twice.

The work done after the backup is so redone once, through the same attempts
and idempotency keys, and nothing committed before the backup runs again.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from orchestrator.backup import archive, jetstream
from orchestrator.backup import postgres as pg
from orchestrator.backup.errors import BackupError, Refused
from orchestrator.backup.servers import Servers
from orchestrator.runtime import migrate, pg_tools
from orchestrator.runtime.logs import get_logger

log = get_logger("agogd.backup")

# How far the NATS server's clock may be behind Postgres's (message times are
# NATS's, the outbox's Postgres's).
CLOCK_SKEW = timedelta(seconds=60)


@dataclass
class Restored:
    archive: Path
    replaced: list[str] = field(default_factory=list)  # what --force replaced
    streams: dict[str, dict[str, int]] = field(default_factory=dict)
    row_counts: dict[str, int] = field(default_factory=dict)
    outbox: dict[str, int] = field(default_factory=dict)
    owner_requests: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per step

    def took(self, step: str, since: float) -> float:
        now = time.monotonic()
        self.seconds[step] = round(now - since, 3)
        return now

    def as_json(self) -> dict[str, Any]:
        return {
            "archive": str(self.archive),
            "replaced": self.replaced,
            "streams": self.streams,
            "row_counts": self.row_counts,
            "outbox": self.outbox,
            "owner_requests": self.owner_requests,
            "notes": self.notes,
            "seconds": self.seconds,
        }


def unpack_dir(source: Path) -> tempfile.TemporaryDirectory[str]:
    """Where an archive is unpacked: beside it when that is writable (the same
    disk, usually the room), else the system's temporary directory."""
    where = source.parent if os.access(source.parent, os.W_OK) else None
    return tempfile.TemporaryDirectory(prefix=archive.UNPACKED, dir=where)


async def unpack(source: Path, into: Path, migrations_dir: Path | None) -> dict[str, Any]:
    """Extract and check every part, and the archive's schema against this
    agogd's migrations; returns the manifest."""
    manifest = await asyncio.to_thread(archive.extract, source, into)
    known = await asyncio.to_thread(migrate.discover, migrations_dir)
    pg.check_schema(manifest["postgres"].get("migrations") or [], known)
    return manifest


async def restore_backup(
    servers: Servers,
    source: Path,
    *,
    force: bool = False,
    owner_requests_file: Path | None = None,
    migrations_dir: Path | None = None,
) -> Restored:
    """Restore ``source`` onto the servers; ``force`` replaces what is there."""
    done = Restored(source)
    began = time.monotonic()
    with unpack_dir(source) as tmp:
        work = Path(tmp)
        manifest = await unpack(source, work, migrations_dir)
        done.took("unpack", began)
        async with servers.nats() as nc:
            await _restore(servers, nc, manifest, work, done, force, owner_requests_file)
    done.seconds["total"] = round(time.monotonic() - began, 3)
    return done


async def _restore(
    servers: Servers,
    nc: NATS,
    manifest: dict[str, Any],
    work: Path,
    done: Restored,
    force: bool,
    owner_file: Path | None,
) -> None:
    step = time.monotonic()
    source = done.archive
    dsn = servers.dsn.get_secret_value()
    recorded = manifest["postgres"]
    schema = str(recorded["schema"])
    streams: dict[str, Any] = manifest["nats"]["streams"]
    async with pg.connection(dsn) as conn:
        sessions = await pg.agogd_sessions(conn)
        if sessions:
            raise Refused(
                f"agogd is running on {servers.public_dsn} ({sessions} session(s)): stop every"
                " agogd replica (and agogd runner) first, then restore"
            )
        await pg.check_extensions(conn, recorded.get("extensions") or {})
        tables = await pg.tables_with_rows(conn, schema)
        has_objects = bool(await pg.tables(conn, schema))
    held: dict[str, int] = {}
    for name in streams:
        info = await jetstream.stream_info(nc, name)
        if info is not None and int(info["state"].get("messages", 0)):
            held[name] = int(info["state"]["messages"])
    occupied = []
    if tables:
        occupied.append(f"Postgres has rows in {len(tables)} table(s): {', '.join(tables)}")
    if held:
        listed = ", ".join(f"{n} ({m})" for n, m in held.items())
        occupied.append(f"{len(held)} stream(s) hold messages: {listed}")
    owner = _owner_text(work, manifest)
    if owner is not None and owner_file is not None:
        there = await asyncio.to_thread(_read_or_none, owner_file)
        if there is not None and there != owner:
            occupied.append(f"{owner_file} has other content")
    if occupied and not force:
        raise Refused(
            "the target is not empty: " + "; ".join(occupied) + ". Restore onto empty servers,"
            " or pass --force to replace what is there (it is deleted)"
        )
    done.replaced = occupied
    step = done.took("checks", step)

    # The streams: each replaced by its snapshot (consumers and ack floors too).
    last_seqs: dict[str, int] = {}
    for name, spec in streams.items():
        await jetstream.delete_stream(nc, name)
        info = await jetstream.restore(nc, spec["config"], spec["state"], work / spec["file"])
        state = info.get("state", {})
        last_seqs[name] = int(state.get("last_seq", 0))
        done.streams[name] = {
            "messages": int(state.get("messages", 0)),
            "last_seq": last_seqs[name],
            "consumers": len(await jetstream.consumers(nc, name)),
        }
    step = done.took("streams", step)
    started = datetime.fromisoformat(manifest["nats"]["snapshot_started_at"])
    outbox = recorded.get("outbox") or {}
    reset_from = (
        datetime.fromisoformat(outbox["reset_from"]) if outbox else started - pg.RESET_MARGIN
    )
    stored: set[str] = set()
    if outbox.get("candidates") and outbox.get("since"):
        since = datetime.fromisoformat(outbox["since"]) - CLOCK_SKEW
        for name in outbox["streams"]:
            if name in streams:
                stored |= await jetstream.msg_ids_since(nc, name, since)
    step = done.took("stored_ids", step)

    # Postgres: agogd's objects dropped, the dump, the reconciliation: one transaction.
    fixups = pg.fixup_sql(
        schema,
        reset_from=reset_from,
        last_seqs=last_seqs,
        stored_ids=stored,
        has=set(recorded.get("row_counts") or {}),
    )
    try:
        await pg_tools.restore_atomic(
            dsn,
            work / archive.DUMP,
            before=pg.drop_sql(schema) if has_objects else "",
            after=fixups,
            bin_dir=servers.pg_bin_dir,
        )
    except pg_tools.PgToolError as exc:
        raise BackupError(
            f"{exc}. The streams were restored already: run the restore again with --force"
        ) from None
    step = done.took("postgres", step)
    async with pg.connection(dsn) as conn:
        done.row_counts = await pg.row_counts(conn, schema)
        done.outbox = await pg.outbox_after_restore(conn, schema)
    done.owner_requests = await _write_owner(owner, owner_file, manifest, done)
    log.info(
        "backup.restored",
        archive=str(source),
        streams=len(done.streams),
        rows=sum(done.row_counts.values()),
        outbox_pending=done.outbox.get("pending"),
        outbox_reset=done.outbox.get("reset"),
        replaced=done.replaced or None,
        seconds=done.seconds,
    )


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _owner_text(work: Path, manifest: dict[str, Any]) -> bytes | None:
    part = (manifest.get("owner_requests") or {}).get("file")
    return (work / part).read_bytes() if part else None


async def _write_owner(
    owner: bytes | None, path: Path | None, manifest: dict[str, Any], done: Restored
) -> str | None:
    if owner is None:
        return None
    if path is None:
        was = manifest["owner_requests"]["path"]
        done.notes.append(
            f"the archive holds OWNER_REQUESTS.md (from {was}); AGOG_OWNER_REQUESTS_FILE is"
            " not set here, so it was not written"
        )
        return None
    tmp = path.with_name(f".{path.name}.restoring")

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(owner)
        os.replace(tmp, path)

    await asyncio.to_thread(write)
    return str(path)
