"""The app database's backup before a production deploy that adds migrations.

A commit that adds files matching ``AGOG_BERRY_MIGRATIONS_GLOB`` (added
between the last healthy production deployment's commit, or the commit's
parent, and the commit) gets a custom-format ``pg_dump`` of
``AGOG_BERRY_APP_DB_DSN`` before production is touched, under Berry's state
directory (``backups/``), recorded in the production row's ``backup``
column as ``{path, database, bytes, sha256, taken_at}`` (the shape
``agogctl deploy restore-db`` reads). The last ``AGOG_BERRY_BACKUP_KEEP``
are kept; older files are deleted and their rows marked ``pruned_at``.
Rolling code back never restores a database: that is an operator's call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr

from orchestrator.runtime import pg_tools
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.settings import redact_url
from workers.adapters.git_repo import GitRepo
from workers.release import records

log = get_logger("agogd.berry")

NO_APP_DB = "no app database is configured: set AGOG_BERRY_APP_DB_DSN"


async def added_migrations(repo: GitRepo, base: str | None, sha: str, glob: str) -> list[str]:
    """Migration files the commit adds since ``base`` (git's own glob
    matching: ``**/`` is any depth, also none)."""
    if not glob:
        return []
    spec = f":(glob){glob}"
    if base is not None:
        code, out, _ = await repo.call(
            "diff", "--name-only", "-z", "--diff-filter=A", base, sha, "--", spec
        )
        if code == 0:
            return sorted(p for p in out.split("\0") if p)
    # No base (a first commit) or one git no longer has: the commit's own files.
    out = await repo.run(
        "show", "--name-only", "-z", "--diff-filter=A", "--format=", sha, "--", spec
    )
    return sorted(p for p in out.split("\0") if p)


def recorded_database(dsn: str) -> str:
    """The DSN as a record shows it: no password, no query (a ``password=``
    parameter would be one)."""
    return urllib.parse.urlsplit(redact_url(dsn))._replace(query="").geturl()


class Backups:
    """Takes, reuses and prunes the app database's dumps."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        dsn: SecretStr | None,
        directory: Path,
        keep: int,
        timeout: float,
        bin_dir: Path | None = None,
    ) -> None:
        self.pool, self.dsn, self.directory = pool, dsn, directory
        self.keep, self.timeout, self.bin_dir = keep, timeout, bin_dir

    @property
    def configured(self) -> bool:
        return self.dsn is not None and bool(self.dsn.get_secret_value())

    async def take(
        self, key: records.Key, existing: dict[str, Any] | None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """(the backup, None) or (None, why not). A backup this attempt took
        already, still on disk with its checksum, is reused, not taken again."""
        if self.dsn is None or not self.configured:
            return None, NO_APP_DB
        if existing and await self._intact(existing):
            log.info("berry.backup_reused", path=existing["path"])
            return existing, None
        dsn = self.dsn.get_secret_value()
        path = self.directory / f"{key.req}-attempt{key.attempt}.dump"
        try:
            dumped = await pg_tools.dump(dsn, path, bin_dir=self.bin_dir, timeout=self.timeout)
        except pg_tools.PgToolError as exc:
            log.error("berry.backup_failed", error=str(exc))
            return None, f"the pg_dump failed: {exc}"
        backup = {
            **dumped,
            "database": recorded_database(dsn),
            "taken_at": datetime.now(UTC).isoformat(),
            "format": "custom",
        }
        log.info("berry.backup_taken", path=backup["path"], bytes=backup["bytes"])
        return backup, None

    async def _intact(self, backup: dict[str, Any]) -> bool:
        path = Path(str(backup.get("path", "")))
        if backup.get("pruned_at") or not await asyncio.to_thread(path.is_file):
            return False
        return await asyncio.to_thread(pg_tools.sha256_of, path) == backup.get("sha256")

    async def prune(self) -> list[str]:
        """Delete the dumps beyond the newest ``keep`` and mark their rows."""
        pruned = []
        for key, backup in (await records.kept_backups(self.pool))[self.keep :]:
            path = Path(str(backup.get("path", "")))
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, path)
            marked = {**backup, "pruned_at": datetime.now(UTC).isoformat()}
            await records.set_backup(self.pool, key, marked)
            pruned.append(str(path))
        if pruned:
            log.info("berry.backups_pruned", files=pruned, keep=self.keep)
        return pruned
