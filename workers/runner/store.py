"""The runner's rows in Postgres: claims on attempts, their leases and notices.

One ``runner_runs`` row per (REQ, stage, attempt). A runner claims the row
with a lease it renews while the agent runs; another runner may take it over
only once the lease has run out. The notice is stored before it is published,
so a crash between the two re-publishes it rather than running the agent
again; ``published`` ends the row's life.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

Claim = Literal["claimed", "taken_over", "running", "published"]

_KEY = " WHERE req_number = $1 AND stage = $2 AND attempt = $3"
_ATTEMPT = "SELECT status, deadline FROM stage_attempts" + _KEY
_CLAIM = (
    "INSERT INTO runner_runs (req_number, stage, attempt, agent, status, runner,"
    " lease_until) VALUES ($1, $2, $3, $4, 'running', $5,"
    " now() + make_interval(secs => $6))"
    " ON CONFLICT (req_number, stage, attempt) DO UPDATE SET runner = EXCLUDED.runner,"
    " lease_until = EXCLUDED.lease_until, runs = runner_runs.runs + 1"
    " WHERE runner_runs.status = 'running' AND runner_runs.lease_until < now()"
    " RETURNING runs"
)
_STATUS = "SELECT status FROM runner_runs" + _KEY
_NOTICE = "SELECT notice::text FROM runner_runs" + _KEY
_RECORD = (
    "UPDATE runner_runs SET outcome = $4, reason = $5, exit_code = $6,"
    " notice = $7::jsonb, finished_at = now()" + _KEY
)
_PUBLISHED = "UPDATE runner_runs SET status = 'published', lease_until = now()" + _KEY
_RENEW = "UPDATE runner_runs SET lease_until = now() + make_interval(secs => $4)" + _KEY
_PREVIOUS = (
    "SELECT stage, agent, coalesce(normalized, deliverable) AS deliverable"
    " FROM nats_deliverable_cache"
    " WHERE req_number = $1 AND stage < $2 ORDER BY stage"
)


@dataclass(frozen=True)
class Run:
    """One attempt's key, as every statement here takes it."""

    req: str
    stage: int
    attempt: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.req, self.stage, self.attempt)


async def attempt_state(pool: asyncpg.Pool, run: Run) -> tuple[str, datetime] | None:
    """(status, deadline) of the engine's attempt, or None if it has none."""
    row = await pool.fetchrow(_ATTEMPT, *run.key)
    return (row["status"], row["deadline"]) if row is not None else None


async def claim(pool: asyncpg.Pool, run: Run, agent: str, runner: str, lease: float) -> Claim:
    """Claim the attempt for ``lease`` seconds: 'claimed' or 'taken_over' (a
    dead runner's lease ran out), else why not: 'running' or 'published'."""
    row = await pool.fetchrow(_CLAIM, *run.key, agent, runner, lease)
    if row is not None:
        return "taken_over" if row["runs"] > 1 else "claimed"
    status = await pool.fetchval(_STATUS, *run.key)
    return "published" if status == "published" else "running"


async def renew(pool: asyncpg.Pool, run: Run, lease: float) -> None:
    await pool.execute(_RENEW, *run.key, lease)


async def stored_notice(pool: asyncpg.Pool, run: Run) -> dict[str, Any] | None:
    """A notice made before a crash but not yet published."""
    raw = await pool.fetchval(_NOTICE, *run.key)
    return json.loads(raw) if raw else None


async def record_notice(pool: asyncpg.Pool, run: Run, notice: dict[str, Any]) -> None:
    await pool.execute(
        _RECORD,
        *run.key,
        notice["status"],
        notice.get("reason"),
        notice.get("exit_code"),
        json.dumps(notice),
    )


async def mark_published(pool: asyncpg.Pool, run: Run) -> None:
    await pool.execute(_PUBLISHED, *run.key)


async def previous_deliverables(pool: asyncpg.Pool, run: Run) -> list[dict[str, Any]]:
    """The REQ's deliverables of earlier stages, for the agent's prompt."""
    rows = await pool.fetch(_PREVIOUS, run.req, run.stage)
    return [
        {"stage": r["stage"], "agent": r["agent"], "deliverable": json.loads(r["deliverable"])}
        for r in rows
    ]


# --- sessions and transcripts --------------------------------------------------------
_SESSION = (
    "SELECT a.session_id, r.notice -> 'usage' -> 'session_totals' AS totals"
    " FROM stage_attempts a LEFT JOIN runner_runs r USING (req_number, stage, attempt)"
    " WHERE a.req_number = $1 AND a.stage = $2 AND a.attempt < $3"
    " AND a.session_id IS NOT NULL AND a.cli = $4 ORDER BY a.attempt DESC LIMIT 1"
)
# A retry after a failed attempt starts afresh: that session may be what failed.
_RESUMABLE = (
    "SELECT status NOT IN ('FAILED', 'TIMED_OUT', 'CANCELLED') FROM stage_attempts"
    " WHERE req_number = $1 AND stage = $2 AND attempt = $3 - 1"
)
_TRANSCRIPT = (
    "INSERT INTO agent_transcripts (req_number, stage, attempt, agent, text, total_bytes,"
    " running, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now())"
    " ON CONFLICT (req_number, stage, attempt) DO UPDATE SET text = EXCLUDED.text,"
    " total_bytes = EXCLUDED.total_bytes, running = EXCLUDED.running, updated_at = now()"
)


async def previous_session(
    pool: asyncpg.Pool, run: Run, cli: str
) -> tuple[str, dict[str, Any]] | None:
    """The CLI session of this stage's latest earlier attempt on the REQ (for a
    rework to resume), if that attempt ran the same CLI and did not fail, with the
    session's usage totals as the CLI reported them after that attempt."""
    if not await pool.fetchval(_RESUMABLE, *run.key):
        return None
    row = await pool.fetchrow(_SESSION, *run.key, cli)
    if row is None:
        return None
    totals = json.loads(row["totals"]) if row["totals"] else {}
    return str(row["session_id"]), totals if isinstance(totals, dict) else {}


async def save_transcript(
    pool: asyncpg.Pool, run: Run, agent: str, text: str, total: int, running: bool
) -> None:
    await pool.execute(_TRANSCRIPT, *run.key, agent, text, total, running)
