"""Deployment records: Berry's rows of ``berry_deployments``, and their SQL.

One row per (REQ, attempt, environment). A row is written before anything
is deployed ('deploying') and rewritten as each step ends, so a crash at
any moment leaves a row that says where it stopped, and the re-run of the
same attempt finds it (a staging deployment already healthy, a backup
already taken) instead of starting over. The last healthy row of a compose
project is what a failed deploy rolls back to. ``agogctl deploys`` and the
metrics read these rows; this module is the only one that writes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

# The columns a step may set besides the status (jsonb ones are encoded).
JSON_COLUMNS = ("images", "health", "smoke", "preflight", "rollback", "backup")
COLUMNS = (*JSON_COLUMNS, "rollback_seconds")


@dataclass(frozen=True)
class Key:
    """A deployment record's primary key."""

    req: str
    attempt: int
    environment: str


async def write(
    pool: asyncpg.Pool,
    key: Key,
    *,
    project: str,
    commit_sha: str,
    status: str,
    detail: dict[str, Any] | None = None,
    **columns: Any,
) -> None:
    """Insert or update the row. 'deploying' (re)starts it: a new start time,
    no end, and the previous try's verdict, smoke, rollback and images
    cleared (its pre-flight and backup kept: a backup is reused). Any other
    status ends it now, with the columns given."""
    unknown = set(columns) - set(COLUMNS)
    if unknown:
        raise ValueError(f"not deployment record columns: {sorted(unknown)}")
    starting = status == "deploying"
    values = dict(columns)
    if starting:
        for name in ("images", "health", "smoke", "rollback", "rollback_seconds"):
            values.setdefault(name, {} if name == "images" else None)
    names = list(values)
    params: list[Any] = [key.req, key.attempt, key.environment, project, commit_sha, status]
    params.append(json.dumps(detail or {}, default=str))
    for name in names:
        value = values[name]
        params.append(json.dumps(value, default=str) if name in JSON_COLUMNS else value)
    placeholders = [
        f"${i}::jsonb" if name in JSON_COLUMNS else f"${i}" for i, name in enumerate(names, 8)
    ]
    sets = [f"{name} = EXCLUDED.{name}" for name in names]
    if starting:
        sets.append("started_at = now()")
    await pool.execute(
        "INSERT INTO berry_deployments (req_number, attempt, environment, project, commit_sha,"
        f" status, detail{''.join(', ' + n for n in names)}) VALUES ($1, $2, $3, $4, $5, $6,"
        f" $7::jsonb{''.join(', ' + p for p in placeholders)})"
        " ON CONFLICT (req_number, attempt, environment) DO UPDATE SET"
        " project = EXCLUDED.project, commit_sha = EXCLUDED.commit_sha,"
        " status = EXCLUDED.status, detail = berry_deployments.detail || EXCLUDED.detail,"
        f" finished_at = {'NULL' if starting else 'now()'}" + "".join(", " + s for s in sets),
        *params,
    )


async def get(pool: asyncpg.Pool, key: Key) -> dict[str, Any] | None:
    """The row, its jsonb columns decoded, or None."""
    row = await pool.fetchrow(
        "SELECT * FROM berry_deployments WHERE req_number = $1 AND attempt = $2"
        " AND environment = $3",
        key.req,
        key.attempt,
        key.environment,
    )
    return decoded(row) if row is not None else None


def decoded(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    for name in (*JSON_COLUMNS, "detail"):
        if isinstance(out.get(name), str):
            out[name] = json.loads(out[name])
    return out


async def last_healthy(
    pool: asyncpg.Pool, project: str, *, other_than: str | None = None
) -> dict[str, Any] | None:
    """The project's newest healthy deployment (of another commit than
    ``other_than``): the rollback target, with the images it ran."""
    row = await pool.fetchrow(
        "SELECT * FROM berry_deployments WHERE project = $1 AND status = 'healthy'"
        " AND commit_sha IS DISTINCT FROM $2 ORDER BY finished_at DESC LIMIT 1",
        project,
        other_than,
    )
    return decoded(row) if row is not None else None


async def set_backup(pool: asyncpg.Pool, key: Key, backup: dict[str, Any]) -> None:
    """Record a backup on an existing row (taken, or marked pruned)."""
    await pool.execute(
        "UPDATE berry_deployments SET backup = $4::jsonb WHERE req_number = $1"
        " AND attempt = $2 AND environment = $3",
        key.req,
        key.attempt,
        key.environment,
        json.dumps(backup, default=str),
    )


async def kept_backups(pool: asyncpg.Pool) -> list[tuple[Key, dict[str, Any]]]:
    """Every recorded backup not yet pruned, newest first."""
    rows = await pool.fetch(
        "SELECT req_number, attempt, environment, backup FROM berry_deployments"
        " WHERE backup IS NOT NULL AND NOT backup ? 'pruned_at'"
        " ORDER BY backup->>'taken_at' DESC, id DESC"
    )
    return [
        (Key(r["req_number"], r["attempt"], r["environment"]), json.loads(r["backup"]))
        for r in rows
    ]
