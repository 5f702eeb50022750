"""``agogctl deploy restore-db``: put the app database back as a deployment's
backup holds it, on an operator's decision.

Rolling code back never restores a database (it would lose the writes made
since); this does, when an operator says so. Berry records a ``pg_dump``
(custom format) with a production deployment that added migrations
(``backup``: path, sha256, bytes, database, taken_at). A restore:

1. runs one at a time, across replicas (a Postgres advisory lock, tried, not
   waited for: a second operator is told at once);
2. refuses, changing nothing, when ``AGOG_BERRY_APP_DB_DSN`` is unset, the
   record has no backup, the file is gone (or was pruned), its sha256 is not
   the recorded one, or the backup is of another database;
3. dumps the app database as it is now, beside the backup (``pre-restore/``),
   so that the restore can itself be undone (``undo``: restore that dump),
   in a folder only agogd's user may enter;
4. records the restore in the row (``detail.restores``: ``restoring``, then
   ``restored`` or ``failed``) before and after restoring, in ONE
   transaction (``pg_tools.restore_atomic``): the tables, views and
   sequences of the archive's schemas are dropped (those a later migration
   added too: ``--clean`` alone would leave them, and a new table's foreign
   key would make the drop of an old one fail), then the archive is restored
   with ``--clean``. So those schemas hold exactly what was backed up (a
   view elsewhere that depended on a dropped table goes with it); a failure
   (an object another role owns, an extension only a superuser may drop)
   rolls it all back and leaves the database as it was; a kill -9 in
   between leaves ``restoring``, marked ``interrupted`` by the next restore,
   and the pre-restore dump on disk;
5. logs it, adds it to the REQ's audit trail and publishes
   ``agog.orchestration.events.infra.db_restored.<environment>`` through
   the outbox, in the transaction that records the outcome.

A restore is named by its ``restore_id`` (the client's idempotency key): the
same id again after it succeeded answers the recorded restore, never a second.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from orchestrator.api.deploy_records import jsonb, restores_of
from orchestrator.engine import store
from orchestrator.runtime import db, pg_tools
from orchestrator.runtime.context import Runtime
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.settings import redact_url

log = get_logger("agogd.deploys")

LOCK_KEY = "agogd:deploy:restore-db"
PRE_RESTORE_DIR = "pre-restore"
NO_APP_DB = (
    "no app database is configured: set AGOG_BERRY_APP_DB_DSN where agogd runs"
    " (the database Berry backs up before a production deploy that adds migrations)"
)
OWNERSHIP_HINT = (
    "the role of AGOG_BERRY_APP_DB_DSN must own every object the backup holds"
    " ('must be owner' names one another role owns, or an extension a superuser made)"
)


class RestoreRefused(Exception):
    """Nothing was restored: the status for the API and why, in a sentence."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


@dataclass(frozen=True)
class RestoreAsk:
    """What the operator asked for."""

    deployment_id: int
    restore_id: str
    by: str
    undo: bool = False  # restore the dump the last restore took first


@dataclass(frozen=True)
class Source:
    """The archive a restore reads, as recorded."""

    path: Path
    sha256: str
    what: str  # "backup" or "pre-restore dump of restore N"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def database_name(dsn: str) -> str:
    """The database a DSN (or a redacted one) names, '' if none."""
    return urllib.parse.unquote(urllib.parse.urlsplit(dsn).path.lstrip("/"))


def source_of(record: Mapping[str, Any], restores: list[dict[str, Any]], undo: bool) -> Source:
    """The archive to restore: the deployment's backup, or with ``undo`` the
    dump taken before its last completed restore; RestoreRefused if none."""
    name = f"deployment {record['id']} ({record['req_number']}, {record['environment']})"
    if undo:
        done = [r for r in restores if r.get("outcome") == "restored"]
        pre = done[-1].get("pre_restore") if done else None
        if not isinstance(pre, Mapping) or not pre.get("path") or not pre.get("sha256"):
            raise RestoreRefused(409, f"{name} has no completed restore to undo")
        return Source(
            Path(str(pre["path"])),
            str(pre["sha256"]),
            f"the dump taken before restore {done[-1].get('n')}",
        )
    backup = jsonb(record["backup"])
    if not isinstance(backup, Mapping) or not backup.get("path"):
        raise RestoreRefused(
            409,
            f"{name} has no database backup: Berry takes one only before a production"
            " deploy that adds migrations",
        )
    if backup.get("pruned") or backup.get("pruned_at"):
        raise RestoreRefused(
            409, f"the backup of {name} was pruned (AGOG_BERRY_BACKUP_KEEP keeps the last ones)"
        )
    if not backup.get("sha256"):
        raise RestoreRefused(409, f"the backup of {name} records no sha256 to check it against")
    return Source(Path(str(backup["path"])), str(backup["sha256"]), "backup")


async def verify(source: Source) -> None:
    """The archive is there and is the one recorded, else RestoreRefused."""
    if not await asyncio.to_thread(os.path.isfile, source.path):
        raise RestoreRefused(409, f"the {source.what} file {source.path} is gone")
    actual = await asyncio.to_thread(pg_tools.sha256_of, source.path)
    if actual != source.sha256:
        raise RestoreRefused(
            409,
            f"the {source.what} file {source.path} has sha256 {actual[:16]}…, not the recorded"
            f" {source.sha256[:16]}…: it changed since it was taken; refusing to restore it",
        )


def check_database(backup: Any, dsn: str) -> None:
    """A backup of one database is never restored into another."""
    recorded = (
        database_name(str(backup.get("database") or "")) if isinstance(backup, Mapping) else ""
    )
    wanted = database_name(dsn)
    if recorded and wanted and recorded != wanted:
        raise RestoreRefused(
            409,
            f"the backup is of database {recorded!r}, but AGOG_BERRY_APP_DB_DSN names"
            f" {wanted!r}; refusing to restore it there",
        )


def drop_relations_sql(schemas: list[str]) -> str:
    """SQL that drops every table, view, materialized view, sequence and
    foreign table of ``schemas`` that no extension owns (the restore then
    creates the archive's own again, in the same transaction)."""
    names = ", ".join("'" + name.replace("'", "''") + "'" for name in schemas)
    if "$agogd$" in names:
        raise RestoreRefused(
            409, "the archive names a schema agogd will not quote; restore it by hand"
        )
    return (
        "DO $agogd$ DECLARE r record; BEGIN"
        " FOR r IN SELECT n.nspname AS s, c.relname AS t, CASE c.relkind WHEN 'v' THEN 'VIEW'"
        " WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'"
        " ELSE 'TABLE' END AS kind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE n.nspname = ANY (ARRAY[{names}]::text[])"
        " AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND NOT EXISTS (SELECT 1 FROM pg_depend d"
        " WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')"
        " LOOP EXECUTE format('DROP %s IF EXISTS %I.%I CASCADE', r.kind, r.s, r.t); END LOOP;"
        " END $agogd$;"
    )


def private_dir(folder: Path) -> None:
    """The pre-restore dumps' folder, for agogd's user alone: they hold the
    app's data (the files in it are then out of others' reach, whatever
    pg_dump's umask made of them)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def restore_db(rt: Runtime, ask: RestoreAsk) -> dict[str, Any]:
    """Restore as asked (see the module docstring); RestoreRefused when not."""
    async with db.try_advisory_lock(rt.pool, LOCK_KEY) as held:
        if not held:
            raise RestoreRefused(
                409, "another restore-db is running (one at a time); try again once it is done"
            )
        return await _restore_locked(rt, ask)


async def _restore_locked(rt: Runtime, ask: RestoreAsk) -> dict[str, Any]:
    record = await rt.pool.fetchrow(
        "SELECT id, environment, req_number, attempt, commit_sha, backup, detail"
        " FROM berry_deployments WHERE id = $1",
        ask.deployment_id,
    )
    if record is None:
        raise RestoreRefused(404, f"no deployment {ask.deployment_id}")
    restores = restores_of(jsonb(record["detail"]))
    done = next(
        (
            r
            for r in restores
            if r.get("restore_id") == ask.restore_id and r.get("outcome") == "restored"
        ),
        None,
    )
    if done is not None:
        return _answer(record, done, duplicate=True)
    secret = rt.settings.berry_app_db_dsn
    if secret is None:
        raise RestoreRefused(409, NO_APP_DB)
    dsn = secret.get_secret_value()
    source = source_of(record, restores, ask.undo)
    await verify(source)
    backup = jsonb(record["backup"])
    check_database(backup, dsn)
    bin_dir = rt.settings.pg_bin_dir
    try:
        prelude = drop_relations_sql(await pg_tools.schemas_of(source.path, bin_dir=bin_dir))
    except pg_tools.PgToolError as exc:
        raise RestoreRefused(
            409, f"cannot read the {source.what} {source.path}: {_one_line(str(exc))}"
        ) from None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    base = source.path.parent
    if isinstance(backup, Mapping) and backup.get("path"):
        base = Path(str(backup["path"])).parent
    folder = base if base.name == PRE_RESTORE_DIR else base / PRE_RESTORE_DIR
    target = folder / f"deployment-{record['id']}-{stamp}.dump"
    try:
        await asyncio.to_thread(private_dir, folder)
        pre = await pg_tools.dump(dsn, target, bin_dir=bin_dir)
    except (pg_tools.PgToolError, OSError) as exc:
        log.error("deploy.pre_restore_dump_failed", deployment_id=record["id"], error=str(exc))
        raise RestoreRefused(
            409,
            f"could not dump {redact_url(dsn)} before restoring (so that the restore could be"
            f" undone): {_one_line(str(exc))}; nothing was restored",
        ) from None
    entry: dict[str, Any] = {
        "n": len(restores) + 1,
        "restore_id": ask.restore_id,
        "at": _now(),
        "by": ask.by,
        "undo": ask.undo,
        "from": {"path": str(source.path), "sha256": source.sha256, "what": source.what},
        "database": redact_url(dsn),
        "pre_restore": pre,
        "outcome": "restoring",
    }
    await _write(rt, record, entry, interrupted=True)
    _log("deploy.db_restoring", record, entry)
    started = time.monotonic()
    try:
        await pg_tools.restore_atomic(dsn, source.path, before=prelude, clean=True, bin_dir=bin_dir)
    except pg_tools.PgToolError as exc:
        error = _one_line(str(exc))[-800:]
        entry.update(outcome="failed", error=error, finished_at=_now())
        entry["seconds"] = round(time.monotonic() - started, 3)
        await _write(rt, record, entry, event=True)
        log.error("deploy.db_restore_failed", deployment_id=record["id"], error=error)
        raise RestoreRefused(
            409,
            f"the restore failed and rolled back, the app database is as it was: {error}"
            + (f" ({OWNERSHIP_HINT})" if "must be owner" in error else ""),
            restore=entry,
        ) from None
    entry.update(outcome="restored", finished_at=_now())
    entry["seconds"] = round(time.monotonic() - started, 3)
    await _write(rt, record, entry, event=True)
    _log("deploy.db_restored", record, entry, seconds=entry["seconds"])
    return _answer(record, entry, duplicate=False)


def _log(event: str, record: Mapping[str, Any], entry: Mapping[str, Any], **extra: Any) -> None:
    """A restore's step, as a warning: it replaces an environment's data."""
    log.warning(
        event,
        deployment_id=record["id"],
        req_number=record["req_number"],
        environment=record["environment"],
        source=entry["from"]["path"],
        pre_restore=entry["pre_restore"]["path"],
        by=entry["by"],
        **extra,
    )


def _answer(record: Mapping[str, Any], entry: Mapping[str, Any], duplicate: bool) -> dict[str, Any]:
    return {
        "deployment_id": record["id"],
        "req_number": record["req_number"],
        "environment": record["environment"],
        "commit_sha": record["commit_sha"],
        "duplicate": duplicate,
        "restore": dict(entry),
    }


async def _write(
    rt: Runtime,
    record: Mapping[str, Any],
    entry: dict[str, Any],
    *,
    interrupted: bool = False,
    event: bool = False,
) -> None:
    """Put ``entry`` in the row's ``detail.restores`` (by its ``n``); with
    ``interrupted``, a ``restoring`` left by a killed agogd is marked so; with
    ``event``, the outcome goes to the audit trail and out on NATS too."""
    async with rt.pool.acquire() as conn, conn.transaction():
        detail = jsonb(
            await conn.fetchval(
                "SELECT detail FROM berry_deployments WHERE id = $1 FOR UPDATE", record["id"]
            )
        )
        restores = [r for r in restores_of(detail) if r.get("n") != entry["n"]]
        if interrupted:
            for other in restores:
                if other.get("outcome") == "restoring":
                    other["outcome"] = "interrupted"
        restores.append(entry)
        await conn.execute(
            "UPDATE berry_deployments SET detail = jsonb_set(detail, '{restores}', $2::jsonb)"
            " WHERE id = $1",
            record["id"],
            store.dumps(restores),
        )
        if event:
            await _event(conn, rt, record, entry)


async def _event(
    conn: asyncpg.Connection, rt: Runtime, record: Mapping[str, Any], entry: Mapping[str, Any]
) -> None:
    restored = entry["outcome"] == "restored"
    kind = "deploy.db_restored" if restored else "deploy.db_restore_failed"
    reason = (
        f"app database restored from the {entry['from']['what']} of deployment {record['id']}"
        f" by {entry['by']}"
        if restored
        else f"app database restore from deployment {record['id']} failed: {entry.get('error')}"
    )
    stage = rt.pipeline.gate_stage("deploy")
    detail = {
        "deployment_id": record["id"],
        "environment": record["environment"],
        "restore": dict(entry),
    }
    await store.record_event(
        conn,
        record["req_number"],
        kind,
        stage=stage.index if stage else None,
        agent=stage.agent if stage else None,
        attempt=record["attempt"],
        reason=reason,
        detail=detail,
    )
    payload = {
        "eventType": kind,
        "req_number": record["req_number"],
        "agent": stage.agent if stage else None,
        "attempt": record["attempt"],
        "status": entry["outcome"],
        "reason": reason,
        **detail,
        "timestamp": store.now_iso(),
    }
    subject = rt.pipeline.subject(
        "infra_event", event=kind.split(".", 1)[1], target=record["environment"]
    )
    msg_id = f"restore-db:{record['id']}:{entry['n']}:{entry['outcome']}"
    await store.enqueue(conn, subject, payload, msg_id)
