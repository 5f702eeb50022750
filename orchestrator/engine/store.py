"""Postgres operations of the workflow engine: thin SQL, one job per function.

Every function takes a connection that is already inside the caller's
transaction, so a state change, its outbox rows and its idempotency record
commit together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from nats.nuid import NUID

from orchestrator.core import json_text
from orchestrator.core.workflow import AttemptMark, MarkDeployed, Workflow
from orchestrator.engine.tx import EngineTx
from orchestrator.runtime.batch import BatchedConnection

# Writes go through a BatchedConnection inside the engine (one round trip per
# transition) and through a plain connection elsewhere; both work here.
Conn = asyncpg.Connection | BatchedConnection

OUTBOX_CHANNEL = "agogd_outbox"
# Unique ids for event messages: NATS's own generator, far cheaper than uuid4
# (no system call per id) and unique across processes (random prefix).
_NUID = NUID()


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def dumps(value: Any) -> str:
    return json_text.dumps(value)


# --- requirements and workflows ---------------------------------------------------
async def insert_requirement(
    conn: Conn,
    req: str,
    *,
    title: str,
    priority: int,
    source: str,
    owner: str | None,
    requirement: dict[str, Any],
) -> bool:
    """Create a PENDING workflow; False when the REQ already exists (idempotent intake)."""
    row = await conn.fetchrow(
        "INSERT INTO workflow_state (req_number, title, priority, status, source, owner,"
        " requirement) VALUES ($1, $2, $3, 'PENDING', $4, $5, $6::jsonb)"
        " ON CONFLICT (req_number) DO NOTHING RETURNING req_number",
        req,
        title,
        priority,
        source,
        owner,
        dumps(requirement),
    )
    return row is not None


@dataclass
class Locked:
    """A workflow row held under lock, with what its transition needs to know."""

    wf: Workflow
    title: str
    # stage index -> {"agent", "deliverable"}: the cache rows, for assignments
    # (of each deliverable only its URL and summary, which assignments carry).
    delivered: dict[int, dict[str, Any]] = field(default_factory=dict)
    # stage index -> attempt, of the RUNNING stage attempts.
    running: dict[int, int] = field(default_factory=dict)
    # stage index -> seconds since that RUNNING attempt started (for its duration metric).
    ages: dict[int, float] = field(default_factory=dict)
    # stage index -> every attempt of it: when it was assigned and the digest of
    # the notice that closed it (to place a notice that names no attempt).
    marks: dict[int, tuple[AttemptMark, ...]] = field(default_factory=dict)
    # (next stage index, the memories recalled for it) from memory_context;
    # None when the REQ has no context yet (orchestrator.memory.context).
    recalled: tuple[int, Any] | None = None


_LOCK_SELECT = (
    "SELECT ws.req_number, ws.title, ws.status, ws.current_stage, ws.budgets,"
    " (SELECT coalesce(json_agg(json_build_object('stage', c.stage, 'agent', c.agent,"
    "  'deliverable', json_build_object("
    "  'deliverable', coalesce(c.normalized, c.deliverable)->'deliverable',"
    "  'summary', coalesce(c.normalized, c.deliverable)->'summary'))), '[]')"
    "  FROM nats_deliverable_cache c WHERE c.req_number = ws.req_number) AS delivered,"
    " (SELECT coalesce(json_agg(json_build_array(a.stage, a.attempt,"
    "  extract(epoch FROM a.started_at), a.notice_digest, a.status = 'RUNNING',"
    "  extract(epoch FROM now() - a.started_at)) ORDER BY a.attempt), '[]')"
    "  FROM stage_attempts a WHERE a.req_number = ws.req_number) AS attempts,"
    " (SELECT mc.picks -> (coalesce(ws.current_stage, -1) + 1)::text FROM memory_context mc"
    "  WHERE mc.req_number = ws.req_number) AS recalled"
    " FROM workflow_state ws WHERE ws.req_number = ANY({reqs}::varchar[])"
    " ORDER BY ws.req_number FOR UPDATE OF ws"
)
_LOCK_SQL = _LOCK_SELECT.format(reqs="$1")
_CLAIM_INSERT = (
    "INSERT INTO processed_messages (stream, stream_seq, consumer, subject, outcome)"
    " SELECT s, q, c, j, $5 FROM unnest($1::text[], $2::bigint[], $3::text[],"
    " $4::text[]) AS m(s, q, c, j) ON CONFLICT DO NOTHING RETURNING stream, stream_seq"
)
# A batch's claims and its REQs' row locks in one round trip. The locked rows
# come through a LEFT JOIN, so the claims come back even when no REQ exists
# yet; the lock itself is taken inside the CTE, in REQ order as above.
_CLAIM_LOCK_SQL = (
    f"WITH claimed AS ({_CLAIM_INSERT}),"
    f" locked AS MATERIALIZED ({_LOCK_SELECT.format(reqs='$6')})"
    " SELECT l.*, (SELECT coalesce(json_agg(json_build_array(c.stream, c.stream_seq)), '[]')"
    " FROM claimed c) AS fresh FROM (SELECT 1) AS one LEFT JOIN locked l ON true"
    " ORDER BY l.req_number"
)


async def lock_workflow(conn: Conn, req: str) -> Locked | None:
    """Load a workflow, its title and its cached deliverables in one round trip,
    holding the row lock until the transaction ends."""
    if isinstance(conn, EngineTx) and req in conn.prefetched:
        return conn.prefetched.pop(req)  # type: ignore[no-any-return]
    return (await lock_workflows(conn, [req])).get(req)


async def lock_workflows(conn: Conn, reqs: list[str]) -> dict[str, Locked]:
    """Lock several workflows in REQ order (so that lockers never deadlock)."""
    rows = await conn.fetch(_LOCK_SQL, reqs)
    return {row["req_number"]: _locked(row) for row in rows}


def _locked(row: asyncpg.Record) -> Locked:
    wf = Workflow.from_row(
        row["req_number"], row["status"], row["current_stage"], orjson.loads(row["budgets"])
    )
    delivered = {d["stage"]: d for d in orjson.loads(row["delivered"])}
    running: dict[int, int] = {}
    ages: dict[int, float] = {}
    marks: dict[int, list[AttemptMark]] = {}
    for stage, attempt, started, digest, is_running, age in orjson.loads(row["attempts"]):
        marks.setdefault(stage, []).append(AttemptMark(attempt, float(started), digest))
        if is_running:  # in attempt order: the newest RUNNING one wins
            running[stage], ages[stage] = attempt, float(age)
    recalled = None
    if row["recalled"] is not None:
        nxt = (row["current_stage"] if row["current_stage"] is not None else -1) + 1
        recalled = (nxt, orjson.loads(row["recalled"]))
    return Locked(
        wf,
        row["title"],
        delivered,
        running,
        ages,
        {stage: tuple(m) for stage, m in marks.items()},
        recalled=recalled,
    )


async def save_workflow(
    conn: Conn,
    wf: Workflow,
    deployed: MarkDeployed | None = None,
) -> None:
    """Write the new state; ``deployed`` records the last stage's commit and,
    if it deployed, the deployment, in the same statement (two queued writes
    must not touch one row)."""
    sql = (
        "UPDATE workflow_state SET status = $2, current_stage = $3, budgets = $4::jsonb,"
        " version = version + 1, updated_at = now()"
    )
    args: tuple[Any, ...] = (wf.req, wf.status, wf.stage, dumps(wf.counters()))
    if deployed is not None:
        if deployed.deployed:
            sql += ", commit_sha = $5, deployed_by = $6, deployed_at = coalesce($7, now())"
            args += (deployed.commit_sha, deployed.deployed_by, _parse_time(deployed.deployed_at))
        else:
            sql += ", commit_sha = $5"
            args += (deployed.commit_sha,)
    await conn.execute(sql + " WHERE req_number = $1", *args)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --- idempotency ---------------------------------------------------------------
async def claim_messages(
    conn: Conn, messages: list[tuple[str, int, str, str]], outcome: str = "processing"
) -> set[tuple[str, int]]:
    """Record stream messages (stream, seq, consumer, subject) as processed, with
    ``outcome`` until settled, in one statement; returns those that were new
    (the rest are redeliveries)."""
    if not messages:
        return set()
    rows = await conn.fetch(_CLAIM_INSERT, *_claim_columns(messages), outcome)
    return {(row["stream"], row["stream_seq"]) for row in rows}


async def claim_and_lock(
    conn: Conn, messages: list[tuple[str, int, str, str]], outcome: str, reqs: list[str]
) -> tuple[set[tuple[str, int]], dict[str, Locked]]:
    """``claim_messages`` and ``lock_workflows`` in one round trip."""
    rows = await conn.fetch(_CLAIM_LOCK_SQL, *_claim_columns(messages), outcome, reqs)
    fresh = {(stream, seq) for stream, seq in orjson.loads(rows[0]["fresh"])}
    return fresh, {row["req_number"]: _locked(row) for row in rows if row["req_number"]}


def _claim_columns(messages: list[tuple[str, int, str, str]]) -> list[list[Any]]:
    return [list(col) for col in zip(*messages, strict=True)]


async def settle_message(
    conn: Conn, stream: str, seq: int, outcome: str, detail: str | None = None
) -> None:
    await conn.execute(
        "UPDATE processed_messages SET outcome = $3, detail = $4"
        " WHERE stream = $1 AND stream_seq = $2",
        stream,
        seq,
        outcome,
        detail,
    )


# --- outbox and audit --------------------------------------------------------------
_OUTBOX_HEAD = "INSERT INTO outbox (msg_id, subject, payload)"
_OUTBOX_TAIL = "ON CONFLICT (msg_id) DO NOTHING"
_DIRECT_HEAD = "INSERT INTO outbox (msg_id, subject, payload, claimed_until)"
_DIRECT_ROW = "$1, $2, $3::jsonb, now() + interval '10 seconds'"


async def enqueue(
    conn: Conn, subject: str, payload: dict[str, Any], msg_id: str | None = None
) -> None:
    """Queue a publish; the relay sends it with Nats-Msg-Id = msg_id after commit,
    in outbox id order (the order of enqueue calls)."""
    args = (msg_id or f"evt:{_NUID.next().decode()}", subject, dumps(payload))
    if isinstance(conn, EngineTx) and conn.after.direct_publish:
        # The engine publishes these itself after commit; the relay only steps
        # in once the claim has run out (the engine died in between).
        conn.insert_row(_DIRECT_HEAD, _DIRECT_ROW, _OUTBOX_TAIL, *args)
        conn.after.outbox.append(args)
        return
    if isinstance(conn, BatchedConnection):
        conn.insert_row(_OUTBOX_HEAD, "$1, $2, $3::jsonb", _OUTBOX_TAIL, *args)
        conn.notify_on_flush(OUTBOX_CHANNEL)
        return
    await conn.execute(f"{_OUTBOX_HEAD} VALUES ($1, $2, $3::jsonb) {_OUTBOX_TAIL}", *args)
    await conn.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)


_EVENT_HEAD = (
    "INSERT INTO workflow_events (req_number, kind, stage, agent, attempt, reason, detail)"
)


async def record_event(
    conn: Conn,
    req: str | None,
    kind: str,
    *,
    stage: int | None = None,
    agent: str | None = None,
    attempt: int | None = None,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append to the audit trail (in call order, like the outbox)."""
    row = "$1::varchar, $2::text, $3::int, $4::varchar, $5::int, $6::text, $7::jsonb"
    args = (req, kind, stage, agent, attempt, reason, dumps(detail or {}))
    if isinstance(conn, BatchedConnection):
        conn.insert_row(_EVENT_HEAD, row, "", *args)
        return
    await conn.execute(f"{_EVENT_HEAD} VALUES ({row})", *args)


# --- stage attempts and deliverables ---------------------------------------------
async def insert_attempt(
    conn: Conn,
    req: str,
    stage: int,
    agent: str,
    attempt: int,
    timeout: float,
    instructions: dict[str, Any],
) -> datetime:
    """Record a RUNNING attempt with its deadline; returns the deadline."""
    deadline = datetime.now(UTC) + timedelta(seconds=timeout)
    await conn.execute(
        "INSERT INTO stage_attempts (req_number, stage, agent, attempt, instructions, deadline)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, $6)"
        " ON CONFLICT (req_number, stage, attempt) DO NOTHING",
        req,
        stage,
        agent,
        attempt,
        dumps(instructions),
        deadline,
    )
    return deadline


async def close_attempt(
    conn: Conn,
    req: str,
    stage: int,
    attempt: int,
    outcome: str,
    reason: str | None,
    deliverable: dict[str, Any] | None = None,
    digest: str | None = None,
    usage: Any = None,
) -> None:
    """Close a running attempt; with ``usage`` (the notice's), what its agent used.
    One statement: a second UPDATE of the row in the same batch would not be seen."""
    u = usage
    await conn.execute(
        "UPDATE stage_attempts SET status = $4, reason = $5, finished_at = now(),"
        " deliverable = coalesce($6::jsonb, deliverable),"
        " notice_digest = coalesce($7, notice_digest),"
        " cli = coalesce($8, cli), model = coalesce($9, model),"
        " session_id = coalesce($10, session_id), input_tokens = coalesce($11, input_tokens),"
        " output_tokens = coalesce($12, output_tokens),"
        " cache_read_tokens = coalesce($13, cache_read_tokens),"
        " cache_write_tokens = coalesce($14, cache_write_tokens),"
        " cost_usd = coalesce($15, cost_usd), turns = coalesce($16, turns),"
        " duration_s = coalesce($17, duration_s)"
        " WHERE req_number = $1 AND stage = $2 AND attempt = $3 AND status = 'RUNNING'",
        req,
        stage,
        attempt,
        outcome,
        reason,
        dumps(deliverable) if deliverable else None,
        digest,
        u.cli if u else None,
        u.model if u else None,
        u.session_id if u else None,
        u.input_tokens if u else None,
        u.output_tokens if u else None,
        u.cache_read_tokens if u else None,
        u.cache_write_tokens if u else None,
        u.cost_usd if u else None,
        u.turns if u else None,
        u.duration_s if u else None,
    )


async def extend_deadline(
    conn: Conn, req: str, stage: int, attempt: int | None, timeout: float
) -> bool:
    """A heartbeat: push the running attempt's deadline to now + timeout."""
    row = await conn.fetchrow(
        "UPDATE stage_attempts SET last_heartbeat_at = now(),"
        " deadline = greatest(deadline, now() + make_interval(secs => $4))"
        " WHERE req_number = $1 AND stage = $2 AND status = 'RUNNING'"
        " AND ($3::int IS NULL OR attempt = $3) RETURNING attempt",
        req,
        stage,
        attempt,
        timeout,
    )
    return row is not None


async def upsert_cache(
    conn: Conn,
    req: str,
    agent: str,
    stage: int,
    published: dict[str, Any],
    normalized: dict[str, Any],
) -> None:
    """The old daemon's cache, a contract with agents that read it with psql
    (seed 002: Berry reads Billy's approval from it): ``deliverable`` is the
    notice as the agent published it; agogd reads ``normalized``."""
    await conn.execute(
        "INSERT INTO nats_deliverable_cache (req_number, agent, stage, deliverable, normalized)"
        " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb) ON CONFLICT (req_number, agent, stage)"
        " DO UPDATE SET deliverable = EXCLUDED.deliverable, normalized = EXCLUDED.normalized,"
        " updated_at = now()",
        req,
        agent,
        stage,
        dumps(published),
        dumps(normalized),
    )


async def add_history(
    conn: Conn,
    req: str,
    agent: str,
    stage: int,
    attempt: int | None,
    subject: str,
    stream: str | None,
    seq: int | None,
    deliverable: dict[str, Any],
) -> None:
    await conn.execute(
        "INSERT INTO deliverable_history (req_number, agent, stage, attempt, subject, stream,"
        " stream_seq, deliverable) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
        req,
        agent,
        stage,
        attempt,
        subject,
        stream,
        seq,
        dumps(deliverable),
    )


async def insert_escalation(
    conn: Conn,
    key: str,
    req: str,
    priority: str,
    reason: str,
    payload: dict[str, Any],
) -> bool:
    """Record an escalation once per key; False if it was already sent."""
    row = await conn.fetchrow(
        "INSERT INTO escalations (dedup_key, req_number, priority, reason, payload)"
        " VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
        key,
        req,
        priority,
        reason,
        dumps(payload),
    )
    return row is not None


async def resolve_escalations(conn: Conn, req: str, resolution: str) -> None:
    """A decision on a REQ answers its open escalations: mark them resolved."""
    await conn.execute(
        "UPDATE escalations SET resolved_at = now(), resolution = $2"
        " WHERE req_number = $1 AND resolved_at IS NULL",
        req,
        resolution[:500],
    )


# --- intake, decisions and the scheduler ------------------------------------------------
async def waiting_low_priority(conn: Conn, limit: int) -> int:
    """How many P2/P3 REQs wait to be admitted, counted up to ``limit``."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM workflow_state WHERE status = 'PENDING'"
            " AND priority >= 2 LIMIT $1) AS w",
            limit,
        )
    )


async def workflow_exists(conn: Conn, req: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM workflow_state WHERE req_number = $1", req))


async def insert_decision(
    conn: Conn, req: str, decision: str, reasoning: str | None, payload: dict[str, Any]
) -> None:
    await conn.execute(
        "INSERT INTO strategic_decisions (req_number, decision, reasoning, payload,"
        " applied_at) VALUES ($1, $2, $3, $4::jsonb, now())",
        req,
        decision,
        reasoning,
        dumps(payload),
    )


async def try_lock(conn: Conn, key: int) -> bool:
    """A transaction-scoped advisory lock, if nobody holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", key))


async def running_count(conn: Conn) -> int:
    return int(
        await conn.fetchval("SELECT count(*) FROM workflow_state WHERE status = 'IN_PROGRESS'")
    )


async def next_pending(conn: Conn, limit: int) -> list[str]:
    """The PENDING REQs to admit next: by priority, then age."""
    rows = await conn.fetch(
        "SELECT req_number FROM workflow_state WHERE status = 'PENDING'"
        " ORDER BY priority, created_at, req_number LIMIT $1",
        limit,
    )
    return [r["req_number"] for r in rows]


async def overdue_attempts(conn: Conn, limit: int = 100) -> list[tuple[str, int, int]]:
    """RUNNING attempts past their deadline, oldest first: (REQ, stage, attempt)."""
    rows = await conn.fetch(
        "SELECT req_number, stage, attempt FROM stage_attempts WHERE status = 'RUNNING'"
        " AND deadline < now() ORDER BY deadline LIMIT $1",
        limit,
    )
    return [(r["req_number"], r["stage"], r["attempt"]) for r in rows]


async def still_overdue(conn: Conn, req: str, stage: int, attempt: int) -> bool:
    """Re-checked under the REQ's lock: a heartbeat or a notice may have come first."""
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM stage_attempts WHERE req_number = $1 AND stage = $2"
            " AND attempt = $3 AND status = 'RUNNING' AND deadline < now()",
            req,
            stage,
            attempt,
        )
    )
