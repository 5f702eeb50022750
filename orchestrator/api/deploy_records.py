"""Deployment records as an operator reads them: ``berry_deployments`` rows
(one per REQ, attempt and environment; Berry writes them, see
migrations/V1.10.0) listed newest first, or one in full.

A list row carries what answers "what went out, where, and did it hold":
environment, REQ, attempt, commit, images, status, start, end and duration,
and a summary of each verdict (health, smoke tests, pre-flight, rollback,
backup, database restores); ``show`` adds the columns in full. The JSON
columns are read defensively: a summary of a shape it does not know is
None, and the raw value is still there in ``show``. Pure reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from orchestrator.inbound.notices import validate_req_id

# The column's CHECK (migrations/V1.10.0): a filter outside it can match nothing.
ENVIRONMENT = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
STATUSES = ("deploying", "healthy", "rolled_back", "rollback_failed", "failed", "blocked")
# Finished with a verdict: what the success rate counts (a 'blocked' production
# step never deployed anything; 'deploying' has no verdict yet).
VERDICTS = ("healthy", "rolled_back", "rollback_failed", "failed")
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_ID = 2**63 - 1


class BadQuery(ValueError):
    """A query parameter or id that cannot name deployment records."""


@dataclass(frozen=True)
class Filters:
    environment: str | None = None
    req_number: str | None = None
    status: str | None = None
    limit: int = DEFAULT_LIMIT
    before: int | None = None  # ids below this one: the next page


def parse_id(raw: str, what: str = "a deployment id") -> int:
    """A deployment's id (the records' ``id``), else BadQuery."""
    # isdecimal, not isdigit: int() refuses "²".
    # Length first: int() refuses more than 4,300 digits with a ValueError.
    if not raw.isdecimal() or len(raw) > 19 or not 1 <= int(raw) <= MAX_ID:
        raise BadQuery(f"{raw[:40]!r} is not {what} (a whole number, as `agogctl deploys` shows)")
    return int(raw)


def parse_filters(query: Mapping[str, str]) -> Filters:
    """``env``, ``req``, ``status``, ``limit`` and ``before`` of a query string."""
    env = query.get("env") or None
    if env is not None and not ENVIRONMENT.match(env):
        raise BadQuery(
            f"env {env[:40]!r} is not an environment name (lower-case letters, digits, _ or -,"
            " starting with a letter, such as production or staging)"
        )
    req = query.get("req") or None
    if req is not None:
        try:
            req = validate_req_id(req)
        except ValueError as exc:
            raise BadQuery(f"req: {exc}") from None
    status = query.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadQuery(f"status {status[:40]!r} is not one of {', '.join(STATUSES)}")
    raw = query.get("limit") or str(DEFAULT_LIMIT)
    if not raw.isdecimal() or len(raw) > 4 or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadQuery(f"limit must be a whole number between 1 and {MAX_LIMIT}")
    before = query.get("before") or None
    return Filters(
        env, req, status, int(raw), parse_id(before, "a deployment id") if before else None
    )


_COLUMNS = (
    "id, environment, req_number, attempt, project, commit_sha, status, images, health,"
    " smoke, preflight, rollback, rollback_seconds, backup, detail, started_at, finished_at,"
    " extract(epoch FROM coalesce(finished_at, now()) - started_at)::float8 AS seconds"
)
_WHERE = (
    " WHERE ($1::text IS NULL OR environment = $1) AND ($2::text IS NULL OR req_number = $2)"
    " AND ($3::text IS NULL OR status = $3)"
)


async def list_records(conn: asyncpg.Connection, filters: Filters) -> dict[str, Any]:
    """Records matching the filters, newest first; ``total`` counts them all
    (``before`` aside), and ``next_before``, when more are left, is the
    ``before`` of the next page."""
    args = (filters.environment, filters.req_number, filters.status)
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM berry_deployments{_WHERE}"
        " AND ($4::bigint IS NULL OR id < $4) ORDER BY id DESC LIMIT $5",
        *args,
        filters.before,
        filters.limit + 1,
    )
    total = await conn.fetchval(f"SELECT count(*) FROM berry_deployments{_WHERE}", *args)
    shown = rows[: filters.limit]
    return {
        "deployments": [summary(r) for r in shown],
        "count": len(shown),
        "total": total,
        "next_before": shown[-1]["id"] if len(rows) > filters.limit else None,
        "filters": asdict(filters),
    }


async def get_record(conn: asyncpg.Connection, deployment_id: int) -> dict[str, Any] | None:
    """One record in full, or None."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM berry_deployments WHERE id = $1", deployment_id
    )
    return full(row) if row is not None else None


# --- the shapes ---------------------------------------------------------------------------
def jsonb(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _items(value: Any, *keys: str) -> list[Mapping[str, Any]] | None:
    """A list of result objects, bare or under one of ``keys``; None otherwise."""
    if isinstance(value, Mapping):
        value = next((value[k] for k in keys if isinstance(value.get(k), list)), None)
    if not isinstance(value, list):
        return None
    return [item for item in value if isinstance(item, Mapping)]


def health_summary(health: Any) -> dict[str, Any] | None:
    if not isinstance(health, Mapping):
        return None
    problems = [str(p) for p in health.get("problems") or [] if p]
    return {
        "healthy": bool(health.get("healthy")),
        "problems": problems[:3],
        "problem_count": len(problems),
    }


def smoke_summary(smoke: Any) -> dict[str, Any] | None:
    results = _items(smoke, "results", "checks")
    if results is None:
        return None
    failed = [str(r.get("name") or "?") for r in results if not r.get("passed")]
    return {"passed": len(results) - len(failed), "total": len(results), "failed": failed}


def preflight_summary(preflight: Any) -> dict[str, Any] | None:
    items = _items(preflight, "items", "checklist")
    if items is None:
        return None
    missing = [str(i.get("item") or "?") for i in items if not i.get("ok")]
    return {"ok": len(items) - len(missing), "total": len(items), "missing": missing}


def rollback_summary(rollback: Any, seconds: float | None) -> dict[str, Any] | None:
    if not isinstance(rollback, Mapping):
        return None
    return {
        "attempted": rollback.get("attempted", True),
        "to": rollback.get("to"),
        "healthy": bool(rollback.get("healthy")),
        "reason": rollback.get("reason"),
        "seconds": seconds,
    }


BACKUP_KEYS = ("path", "database", "bytes", "sha256", "taken_at", "pruned", "pruned_at")


def backup_summary(backup: Any) -> dict[str, Any] | None:
    if not isinstance(backup, Mapping) or not backup.get("path"):
        return None
    return {k: backup[k] for k in BACKUP_KEYS if k in backup}


def restores_of(detail: Any) -> list[dict[str, Any]]:
    """The database restores recorded on a deployment (orchestrator.api.deploy_restore)."""
    found = detail.get("restores") if isinstance(detail, Mapping) else None
    return [dict(r) for r in found if isinstance(r, Mapping)] if isinstance(found, list) else []


def summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """A list row: the record's facts and each verdict's summary."""
    restores = restores_of(jsonb(row["detail"]))
    return {
        "id": row["id"],
        "environment": row["environment"],
        "req_number": row["req_number"],
        "attempt": row["attempt"],
        "project": row["project"],
        "commit_sha": row["commit_sha"],
        "status": row["status"],
        "images": jsonb(row["images"]) or {},
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "seconds": row["seconds"],
        "health": health_summary(jsonb(row["health"])),
        "smoke": smoke_summary(jsonb(row["smoke"])),
        "preflight": preflight_summary(jsonb(row["preflight"])),
        "rollback": rollback_summary(jsonb(row["rollback"]), row["rollback_seconds"]),
        "rollback_seconds": row["rollback_seconds"],
        "backup": backup_summary(jsonb(row["backup"])),
        "restore_count": len(restores),
        "last_restore": restores[-1] if restores else None,
    }


def full(row: Mapping[str, Any]) -> dict[str, Any]:
    """One record for ``show``: the summary, then every column in full."""
    body = summary(row)
    detail = jsonb(row["detail"])
    body["restores"] = restores_of(detail)
    body["detail"] = detail
    body["full"] = {
        key: jsonb(row[key]) for key in ("health", "smoke", "preflight", "rollback", "backup")
    }
    return body
