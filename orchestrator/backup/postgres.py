"""The Postgres half of a backup: what the manifest records of agent_memory,
what a restore checks on the target, and the SQL it runs around the dump.

agogd's role is not a superuser (the embedded server's, and the compose
stack's): it may not create the ``vector`` extension, nor drop it. So the
dump's own ``CREATE EXTENSION IF NOT EXISTS`` is relied on (a no-op where the
extension is already there, as on every fresh embedded server: it is in
template1), a missing one is tried in a rolled-back transaction before
anything is touched, and a replaced database drops only agogd's own objects,
never an extension's (``drop_sql``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import asyncpg

from orchestrator.backup.errors import Refused, Unreachable
from orchestrator.core.registry import subject_matches
from orchestrator.runtime.migrate import Migration
from orchestrator.runtime.settings import redact_url

APPLICATION = "agogd-backup"  # in pg_stat_activity; agogd's own sessions say "agogd"
BOOKKEEPING = "schema_migrations"
RESTORED_MARK = "restored from a backup: published after its stream snapshot"
# An outbox row marked published this long before the streams' snapshot began
# is surely in it: the relay marks rows in the transaction that publishes them
# (a few seconds at most), the engine's publisher after JetStream stored them.
RESET_MARGIN = timedelta(seconds=60)


@contextlib.asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection, or ``Unreachable`` naming the (redacted) server."""
    try:
        conn = await asyncpg.connect(
            dsn, timeout=15, server_settings={"application_name": APPLICATION}
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Unreachable(
            f"cannot reach Postgres at {redact_url(dsn)}: {str(exc) or type(exc).__name__}"
        ) from None
    try:
        yield conn
    finally:
        await conn.close()


async def clock(conn: asyncpg.Connection) -> datetime:
    """Postgres's clock: the one outbox rows' ``published_at`` is written by."""
    value: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return value


async def schema_of(conn: asyncpg.Connection) -> str:
    """The schema agogd's tables live in: schema_migrations', else the current one."""
    found = await conn.fetchval(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = $1"
        " ORDER BY table_schema = current_schema() DESC LIMIT 1",
        BOOKKEEPING,
    )
    return str(found or await conn.fetchval("SELECT current_schema()"))


async def tables(conn: asyncpg.Connection, schema: str) -> list[str]:
    """The schema's own tables (not an extension's), sorted."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass"
        "  AND d.objid = c.oid AND d.deptype = 'e') ORDER BY 1",
        schema,
    )
    return [r["relname"] for r in rows]


def _table(schema: str, table: str) -> str:
    return f"{_ident(schema)}.{_ident(table)}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def row_counts(conn: asyncpg.Connection, schema: str) -> dict[str, int]:
    """Exact rows per table, read in the connection's transaction."""
    return {
        t: int(await conn.fetchval(f"SELECT count(*) FROM {_table(schema, t)}"))
        for t in await tables(conn, schema)
    }


async def tables_with_rows(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Tables holding data (the migrations' own bookkeeping aside)."""
    found = []
    for table in await tables(conn, schema):
        if table != BOOKKEEPING and await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {_table(schema, table)})"
        ):
            found.append(table)
    return found


async def migrations(conn: asyncpg.Connection, schema: str) -> list[dict[str, str]]:
    """The applied migrations (version, checksum), oldest first; none before any."""
    if BOOKKEEPING not in await tables(conn, schema):
        return []
    rows = await conn.fetch(
        f"SELECT version, checksum, filename FROM {_table(schema, BOOKKEEPING)}"
    )
    found = [dict(r) for r in rows]
    return sorted(found, key=lambda m: tuple(int(x) for x in m["version"].split(".")))


async def extensions(conn: asyncpg.Connection) -> dict[str, str]:
    """Installed extensions and their versions (plpgsql, always there, aside)."""
    rows = await conn.fetch(
        "SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql'"
    )
    return {r["extname"]: r["extversion"] for r in rows}


async def agogd_sessions(conn: asyncpg.Connection) -> int:
    """agogd's own sessions on this database (its pool names itself "agogd")."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'agogd' AND pid <> pg_backend_pid()"
        )
    )


def check_schema(recorded: list[dict[str, str]], known: list[Migration]) -> str | None:
    """Refuse an archive whose schema this agogd does not know: a migration it
    has no file for (a newer agogd made it) or whose file differs. Returns the
    archive's schema version."""
    ours = {m.version: m for m in known}
    newest = known[-1].version if known else "none"
    for row in recorded:
        mine = ours.get(row["version"])
        if mine is None:
            raise Refused(
                f"the archive's schema has migration {row['version']} ({row.get('filename')}),"
                f" which this agogd does not know (its newest is {newest}): the archive comes"
                " from a newer agogd; restore it with that version"
            )
        if mine.checksum != row["checksum"]:
            raise Refused(
                f"the archive's migration {row['version']} differs from this agogd's"
                f" {mine.filename} (checksum {row['checksum'][:12]}, here"
                f" {mine.checksum[:12]}): a different schema; restore it with the agogd that"
                " made it"
            )
    return recorded[-1]["version"] if recorded else None


async def check_extensions(conn: asyncpg.Connection, wanted: dict[str, str]) -> None:
    """Each extension the archive needs is there, or this role may create it
    (tried in a transaction that is rolled back)."""
    present = await extensions(conn)
    for name in sorted(set(wanted) - set(present)):
        try:
            async with conn.transaction():
                await conn.execute(f"CREATE EXTENSION IF NOT EXISTS {_ident(name)}")
                raise _RolledBack
        except _RolledBack:
            continue
        except asyncpg.PostgresError as exc:
            user = await conn.fetchval("SELECT current_user")
            raise Refused(
                f"the target database has no {name} extension and {user} may not create it"
                f" ({exc}): as a superuser, run CREATE EXTENSION {name} in it (the embedded"
                " server and the compose stack do), then restore again"
            ) from None


class _RolledBack(Exception):
    pass


def drop_sql(schema: str) -> str:
    """Drop every object of the schema that is not an extension's: tables
    (their sequences, indexes and triggers go with them), views, free
    sequences, functions and types. Run in the restore's transaction."""
    nsp = _literal(schema)
    not_extension = (
        "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{cat}'::regclass"
        " AND d.objid = {oid} AND d.deptype = 'e')"
    )
    rel = not_extension.format(cat="pg_class", oid="c.oid")
    proc = not_extension.format(cat="pg_proc", oid="p.oid")
    typ = not_extension.format(cat="pg_type", oid="t.oid")
    return f"""DO $agogd_drop$
DECLARE r record;
BEGIN
  FOR r IN SELECT format('DROP %s IF EXISTS %I.%I CASCADE', CASE c.relkind
      WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
      WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, n.nspname, c.relname) AS stmt
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = {nsp} AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      AND NOT c.relispartition AND {rel}
      AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d
        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
    ORDER BY c.relkind = 'S', c.relkind IN ('v', 'm') DESC
  LOOP EXECUTE r.stmt; END LOOP;
  FOR r IN SELECT format('DROP ROUTINE IF EXISTS %s CASCADE', p.oid::regprocedure) AS stmt
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = {nsp} AND p.prokind IN ('f', 'p') AND {proc}
  LOOP EXECUTE r.stmt; END LOOP;
  FOR r IN SELECT format('DROP TYPE IF EXISTS %I.%I CASCADE', n.nspname, t.typname) AS stmt
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE n.nspname = {nsp} AND {typ} AND (t.typtype IN ('e', 'd', 'r')
      OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
  LOOP EXECUTE r.stmt; END LOOP;
END $agogd_drop$;"""


def fixup_sql(
    schema: str,
    *,
    reset_from: datetime,
    last_seqs: dict[str, int],
    stored_ids: set[str],
    has: set[str],
) -> str:
    """What a restore changes in the restored dump, in its transaction (the
    reasoning is ``orchestrator.backup.restore``'s): stale claims on stream
    sequences the restored streams never reached, and the outbox rows to
    publish again. ``has``: the archive's tables (an old schema may lack one)."""
    tag = f"agogd_{secrets.token_hex(6)}"
    out = []
    if "processed_messages" in has:
        seqs = json.dumps({k: int(v) for k, v in last_seqs.items()})
        out += [
            "CREATE TEMPORARY TABLE agogd_restore_seqs (stream text PRIMARY KEY,"
            " last_seq bigint NOT NULL) ON COMMIT DROP;",
            "INSERT INTO agogd_restore_seqs SELECT key, value::bigint"
            f" FROM jsonb_each_text(${tag}${seqs}${tag}$::jsonb);",
            f"DELETE FROM {_table(schema, 'processed_messages')} p WHERE NOT EXISTS"
            " (SELECT 1 FROM agogd_restore_seqs s WHERE s.stream = p.stream"
            " AND p.stream_seq <= s.last_seq);",
        ]
    if "outbox" in has:
        outbox = _table(schema, "outbox")
        ids = json.dumps(sorted(stored_ids))
        out += [
            "CREATE TEMPORARY TABLE agogd_restore_stored (msg_id text PRIMARY KEY) ON COMMIT DROP;",
            "INSERT INTO agogd_restore_stored SELECT DISTINCT"
            f" jsonb_array_elements_text(${tag}${ids}${tag}$::jsonb);",
            f"UPDATE {outbox} SET published_at = NULL, claimed_until = NULL,"
            f" last_error = {_literal(RESTORED_MARK)}"
            f" WHERE published_at >= {_literal(reset_from.isoformat())}::timestamptz"
            " AND msg_id NOT IN (SELECT msg_id FROM agogd_restore_stored);",
            f"UPDATE {outbox} SET published_at = now(), claimed_until = NULL"
            " WHERE published_at IS NULL"
            " AND msg_id IN (SELECT msg_id FROM agogd_restore_stored);",
            f"UPDATE {outbox} SET claimed_until = NULL WHERE published_at IS NULL;",
        ]
    return "\n".join(out)


async def outbox_candidates(
    conn: asyncpg.Connection, schema: str, reset_from: datetime, streams: dict[str, list[str]]
) -> dict[str, Any] | None:
    """The outbox rows a restore of this dump may have to publish again (marked
    published since ``reset_from``, or pending), read in the dump's snapshot:
    how many, the oldest one's creation (no message of theirs can be stored
    before it) and the streams their subjects go to. A restore reads only
    those streams' messages since then, to tell which ones they already hold."""
    if "outbox" not in await tables(conn, schema):
        return None
    row = await conn.fetchrow(
        "SELECT count(*) AS n, min(created_at) AS since,"
        " coalesce(array_agg(DISTINCT subject), '{}') AS subjects"
        f" FROM {_table(schema, 'outbox')} WHERE published_at IS NULL OR published_at >= $1",
        reset_from,
    )
    bound = sorted(
        name
        for name, patterns in streams.items()
        if any(subject_matches(p, s) for s in row["subjects"] for p in patterns)
    )
    return {
        "reset_from": reset_from.isoformat(),
        "candidates": int(row["n"]),
        "since": row["since"].isoformat() if row["since"] else None,
        "streams": bound,
    }


async def outbox_after_restore(conn: asyncpg.Connection, schema: str) -> dict[str, int]:
    """The outbox a restored agogd starts with: rows it will publish, and of
    them the ones the restore set pending again."""
    if "outbox" not in await tables(conn, schema):
        return {"pending": 0, "reset": 0}
    row = await conn.fetchrow(
        f"SELECT count(*) AS pending, count(*) FILTER (WHERE last_error = $1) AS reset"
        f" FROM {_table(schema, 'outbox')} WHERE published_at IS NULL",
        RESTORED_MARK,
    )
    return {"pending": int(row["pending"]), "reset": int(row["reset"])}


# --- a scratch database (verify) ----------------------------------------------------
def with_database(dsn: str, database: str, user: str | None = None) -> str:
    """The same server's DSN for another database (and user); the rest kept."""
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if user is not None:
        host = netloc.rsplit("@", 1)[-1]
        netloc = f"{quote(user, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc, path="/" + quote(database, safe="")))


def passfile_superuser(dsn: str, user: str = "postgres") -> str | None:
    """A DSN for ``user`` on the same server when the DSN's password file
    (``?passfile=``, as the embedded server's DSNs name it) holds its password."""
    files = parse_qs(urlsplit(dsn).query).get("passfile")
    if not files:
        return None
    try:
        lines = Path(files[0]).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    if any(line.split(":")[3:4] == [user] for line in lines if not line.startswith("#")):
        return with_database(dsn, "postgres", user)
    return None


async def may_create_database(dsn: str) -> bool:
    async with connection(dsn) as conn:
        return bool(
            await conn.fetchval(
                "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
            )
        )


@contextlib.asynccontextmanager
async def scratch_database(admin_dsn: str) -> AsyncIterator[str]:
    """A new, empty database on the admin DSN's server, dropped afterwards;
    yields its DSN (the admin's role)."""
    name = f"agogverify_{secrets.token_hex(6)}"
    async with connection(admin_dsn) as conn:
        try:
            await conn.execute(f"CREATE DATABASE {_ident(name)}")
        except asyncpg.PostgresError as exc:
            raise Refused(f"cannot create a scratch database to verify into: {exc}") from None
    try:
        yield with_database(admin_dsn, name)
    finally:
        async with connection(admin_dsn) as conn:
            await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
