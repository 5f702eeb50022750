"""``verify_backup``: prove an archive restores, without touching agogd's state.

The archive is checked as a restore checks it (checksums, schema), then its
dump is restored into a scratch database and each stream under a scratch
name, and what came back is counted against the manifest: rows per table,
messages and sequences per stream, the consumers. Both are dropped after,
whatever happened.

The scratch database needs a role that may CREATE DATABASE: the one in
``AGOG_BACKUP_VERIFY_DSN``, else agogd's own when it may, else the embedded
server's superuser when the DSN's password file holds it (``agogd dev``, the
tests). A stream restored under another name must also listen elsewhere
(two streams may not share subjects): its config's name and subjects are
rewritten in the restore request (``agogverify.<id>.<subject>``), which
JetStream takes as the new stream's identity. Its consumers come back with
it; nothing delivers to them, and they go with the stream.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from orchestrator.backup import archive, jetstream
from orchestrator.backup import postgres as pg
from orchestrator.backup.errors import Refused
from orchestrator.backup.restore import unpack, unpack_dir
from orchestrator.backup.servers import Servers
from orchestrator.runtime import pg_tools
from orchestrator.runtime.logs import get_logger

log = get_logger("agogd.backup")


@dataclass
class Check:
    what: str
    expected: Any
    found: Any

    @property
    def ok(self) -> bool:
        return bool(self.expected == self.found)


@dataclass
class Verified:
    archive: Path
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def as_json(self) -> dict[str, Any]:
        return {
            "archive": str(self.archive),
            "ok": self.ok,
            "checks": [
                {"what": c.what, "expected": c.expected, "found": c.found, "ok": c.ok}
                for c in self.checks
            ],
        }


async def verify_backup(
    servers: Servers, source: Path, *, migrations_dir: Path | None = None
) -> Verified:
    """Restore ``source`` into scratch copies, compare, drop them."""
    done = Verified(source)
    with unpack_dir(source) as tmp:
        work = Path(tmp)
        manifest = await unpack(source, work, migrations_dir)
        done.checks.append(Check("checksums and schema", "ok", "ok"))
        async with servers.nats() as nc:
            await _streams(nc, manifest, work, done)
        await _database(servers, manifest, work, done)
    log.info(
        "backup.verified",
        archive=str(source),
        ok=done.ok,
        failed=[c.what for c in done.failed] or None,
    )
    return done


async def _streams(nc: NATS, manifest: dict[str, Any], work: Path, done: Verified) -> None:
    tag = secrets.token_hex(4)
    made: list[str] = []
    try:
        for name, spec in manifest["nats"]["streams"].items():
            config = {
                **spec["config"],
                "name": f"agogverify_{tag}_{name}",
                "subjects": [f"agogverify.{tag}.{s}" for s in spec["config"].get("subjects", [])],
            }
            made.append(config["name"])
            info = await jetstream.restore(nc, config, spec["state"], work / spec["file"])
            state = info.get("state", {})
            # An empty stream's first sequence is the next one; only its last is kept.
            keys = ("messages", "first_seq", "last_seq") if state.get("messages") else ("last_seq",)
            for key in keys:
                done.checks.append(
                    Check(
                        f"stream {name} {key}",
                        int(spec["state"].get(key, 0)),
                        int(state.get(key, 0)),
                    )
                )
            names = [c["name"] for c in await jetstream.consumers(nc, config["name"])]
            done.checks.append(
                Check(
                    f"stream {name} consumers", sorted(c["name"] for c in spec["consumers"]), names
                )
            )
    finally:
        for name in made:
            await jetstream.delete_stream(nc, name)


async def _database(servers: Servers, manifest: dict[str, Any], work: Path, done: Verified) -> None:
    recorded = manifest["postgres"]
    admin = await _admin_dsn(servers)
    async with pg.scratch_database(admin) as scratch:
        try:
            await pg_tools.restore_atomic(scratch, work / archive.DUMP, bin_dir=servers.pg_bin_dir)
        except pg_tools.PgToolError as exc:
            done.checks.append(Check("the dump restores", "ok", str(exc)))
            return
        done.checks.append(Check("the dump restores", "ok", "ok"))
        async with pg.connection(scratch) as conn:
            counts = await pg.row_counts(conn, str(recorded["schema"]))
    expected: dict[str, int] = recorded.get("row_counts") or {}
    for table in sorted(set(expected) | set(counts)):
        done.checks.append(Check(f"table {table} rows", expected.get(table), counts.get(table)))


async def _admin_dsn(servers: Servers) -> str:
    """Who creates the scratch database (see the module's docstring)."""
    if servers.admin_dsn is not None:
        return servers.admin_dsn.get_secret_value()
    own = servers.dsn.get_secret_value()
    if await pg.may_create_database(own):
        return pg.with_database(own, "postgres")
    superuser = pg.passfile_superuser(own)
    if superuser is not None:
        return superuser
    raise Refused(
        f"verify needs a scratch database, and the role of {servers.public_dsn} may not create"
        " one: set AGOG_BACKUP_VERIFY_DSN to a role that may (CREATEDB, or a superuser: the"
        " dump's extensions must be creatable in it), or grant CREATEDB to agogd's role"
    )
