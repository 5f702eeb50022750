"""Versioned SQL migrations, applied at start under an advisory lock.

Files are Flyway-style ``V<maj>.<min>.<patch>__description.sql`` (any number
of dotted integers). Each runs in its own transaction together with its row in
``schema_migrations``, so a failing file leaves nothing half-applied. The
checksum of every applied file is kept; editing an applied file is refused.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from orchestrator.runtime.logs import get_logger

log = get_logger(__name__)

# Any constant works; it only has to be the same for every replica.
ADVISORY_LOCK_KEY = 0x61676F67  # "agog"
_NAME = re.compile(r"^V(?P<version>\d+(?:\.\d+)*)__(?P<description>[A-Za-z0-9_]+)\.sql$")

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version      text PRIMARY KEY,
    description  text NOT NULL,
    filename     text NOT NULL,
    checksum     text NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    execution_ms integer NOT NULL
)
"""


class MigrationError(RuntimeError):
    """A migration could not be applied, or the applied history is not ours."""


@dataclass(frozen=True)
class Migration:
    version: str
    description: str
    filename: str
    sql: str

    @property
    def key(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.version.split("."))

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def default_directory() -> Path:
    """The ``migrations/`` directory shipped with the package."""
    return Path(str(resources.files("migrations")))


def discover(directory: Path | None = None) -> list[Migration]:
    """All migration files in version order; a badly named .sql file is an error."""
    folder = directory or default_directory()
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(
                f"{path.name}: migration files are named V<major>.<minor>.<patch>__<what>.sql"
            )
        found.append(Migration(match["version"], match["description"], path.name, path.read_text()))
    found.sort(key=lambda m: m.key)
    keys = [m.key for m in found]
    if len(set(keys)) != len(keys):
        raise MigrationError("two migration files share a version")
    return found


async def apply(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    """Apply every pending migration; returns the versions applied now."""
    migrations = discover(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
    try:
        await conn.execute(_BOOKKEEPING)
        rows = await conn.fetch("SELECT version, filename, checksum FROM schema_migrations")
        applied = {r["version"]: r for r in rows}
        known = {m.version for m in migrations}
        for version in applied:
            if version not in known:
                raise MigrationError(
                    f"the database has migration {version} ({applied[version]['filename']}) "
                    "that this agogd does not know; is it older than the schema?"
                )
        done: list[str] = []
        for migration in migrations:
            row = applied.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"{migration.filename} was edited after it was applied "
                        f"(checksum {row['checksum'][:12]} in the database, "
                        f"{migration.checksum[:12]} on disk); add a new migration instead"
                    )
                continue
            started = time.perf_counter()
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations"
                        " (version, description, filename, checksum, execution_ms)"
                        " VALUES ($1, $2, $3, $4, $5)",
                        migration.version,
                        migration.description,
                        migration.filename,
                        migration.checksum,
                        int((time.perf_counter() - started) * 1000),
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"{migration.filename} failed and was rolled back: {exc}"
                ) from exc
            log.info("migration.applied", version=migration.version, file=migration.filename)
            done.append(migration.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
