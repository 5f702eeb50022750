"""Read models of the API: REQ rows with a per-stage cell state, and a REQ's
full history. Pure SQL reads on the engine's tables; nothing here writes.

Each stage of a REQ row is one *cell*, whose ``state`` is one of:

=========  ==================================================================
waiting    no attempt yet
running    an attempt is RUNNING (``seconds`` is its elapsed time)
done       the latest attempt COMPLETEd
rejected   a gate (Sylvia's critique, Billy's QA) sent the work back
failed     the latest attempt FAILED or TIMED_OUT
blocked    the REQ is BLOCKED or ESCALATED at this stage
cancelled  the attempt was SUPERSEDED (by a decision) or CANCELLED
=========  ==================================================================
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from orchestrator.core.registry import Pipeline, Stage
from orchestrator.core.workflow import FINISHED, LIVE, STATUSES
from orchestrator.inbound.intake import parse_priority, priority_label

STATUS_GROUPS = {
    "active": LIVE,
    "finished": tuple(sorted(FINISHED)),
    "stuck": ("BLOCKED", "ESCALATED"),
}
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_EVENTS = 1000

_CELL = {
    "RUNNING": "running",
    "COMPLETE": "done",
    "REJECTED": "rejected",
    "FAILED": "failed",
    "TIMED_OUT": "failed",
    "BLOCKED": "blocked",
    "SUPERSEDED": "cancelled",
    "CANCELLED": "cancelled",
}


# The reasons workflow._rework gives when a gate sends the work back.
REWORK_REASONS = frozenset({"critique rejected", "QA failed"})


class BadFilter(ValueError):
    """A query parameter that does not name a status, stage or priority."""


def all_stages(pipeline: Pipeline) -> tuple[Stage, ...]:
    """The pipeline's stages, then its follow-ups (Tim)."""
    return (*pipeline.stages, *pipeline.followups)


def find_stage(pipeline: Pipeline, value: object) -> Stage:
    """A stage by index, agent or name (``2``, ``roy``, ``Backend``)."""
    text = str(value).strip()
    for stage in all_stages(pipeline):
        # isdecimal, not isdigit: int() refuses "²", and the ValueError was a 500.
        if text.isdecimal() and int(text) == stage.index:
            return stage
        if text.lower() in (stage.agent.lower(), stage.name.lower()):
            return stage
    raise BadFilter(f"{text!r} is not a stage (an index, an agent or a stage name)")


def stage_info(pipeline: Pipeline) -> list[dict[str, Any]]:
    return [
        {
            "index": s.index,
            "name": s.name,
            "agent": s.agent,
            "role": s.role,
            "gate": s.gate,
            "followup": s.after is not None,
        }
        for s in all_stages(pipeline)
    ]


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def parse_filters(pipeline: Pipeline, query: Any) -> dict[str, Any]:
    """``status``, ``stage``, ``priority`` (each repeatable or comma-separated)
    and ``limit`` from a query string; raises BadFilter."""
    statuses: list[str] = []
    for value in _split(query.getall("status", [])):
        upper = value.upper()
        if value.lower() in STATUS_GROUPS:
            statuses += STATUS_GROUPS[value.lower()]
        elif upper in STATUSES:
            statuses.append(upper)
        else:
            raise BadFilter(
                f"status {value!r} is not one of {', '.join(STATUSES)}"
                f" (or {', '.join(STATUS_GROUPS)})"
            )
    stages = [find_stage(pipeline, v).index for v in _split(query.getall("stage", []))]
    priorities = []
    for value in _split(query.getall("priority", [])):
        try:
            priorities.append(parse_priority(value))
        except ValueError as exc:
            raise BadFilter(str(exc)) from None
    raw_limit = query.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw_limit)
    except ValueError:
        raise BadFilter(f"limit {raw_limit!r} is not a number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadFilter(f"limit must be between 1 and {MAX_LIMIT}")
    return {
        "status": sorted(set(statuses)) or None,
        "stage": sorted(set(stages)) or None,
        "priority": sorted(set(priorities)) or None,
        "limit": limit,
    }


def shown_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """The filters as answered: priorities as "P0".."P3", like the rows."""
    priorities = filters["priority"]
    return {**filters, "priority": [priority_label(p) for p in priorities] if priorities else None}


def cell_state(
    stage: Stage,
    attempt_status: str | None,
    wf_status: str,
    current: int | None,
    reason: str | None = None,
) -> str:
    if attempt_status is None:
        return "waiting"
    if stage.index == current and wf_status in ("BLOCKED", "ESCALATED"):
        return "blocked"
    if attempt_status == "REJECTED" or (attempt_status == "FAILED" and reason in REWORK_REASONS):
        return "rejected"
    return _CELL.get(attempt_status, attempt_status.lower())


def _cells(pipeline: Pipeline, row: Any, latest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_stage = {a["stage"]: a for a in latest}
    cells = []
    for stage in all_stages(pipeline):
        attempt = by_stage.get(stage.index)
        cells.append(
            {
                "index": stage.index,
                "name": stage.name,
                "agent": stage.agent,
                "state": cell_state(
                    stage,
                    attempt["status"] if attempt else None,
                    row["status"],
                    row["current_stage"],
                    attempt["reason"] if attempt else None,
                ),
                "attempt": attempt["attempt"] if attempt else None,
                "status": attempt["status"] if attempt else None,
                "reason": attempt["reason"] if attempt else None,
                "started_at": attempt["started_at"] if attempt else None,
                "finished_at": attempt["finished_at"] if attempt else None,
                "seconds": attempt["seconds"] if attempt else None,
                # Every attempt of the stage together (a rework's too).
                "cost_usd": attempt.get("cost_usd") if attempt else None,
                "tokens": attempt.get("tokens") if attempt else None,
            }
        )
    return cells


def _stage_name(pipeline: Pipeline, index: int | None) -> dict[str, Any]:
    stage = next((s for s in all_stages(pipeline) if s.index == index), None)
    return {
        "current_stage": index,
        "current_stage_name": stage.name if stage else None,
        "current_agent": stage.agent if stage else None,
    }


_ROW_COLUMNS = (
    "ws.req_number, ws.title, ws.priority, ws.status, ws.current_stage, ws.source, ws.owner,"
    " ws.budgets->>'blocked_reason' AS blocked_reason, ws.commit_sha, ws.deployed_at,"
    " ws.deployed_by, ws.created_at, ws.updated_at,"
    " extract(epoch FROM now() - ws.created_at)::float8 AS age_seconds,"
    " coalesce((ws.budgets->>'spent_usd')::float8, 0) AS cost_usd,"
    " (ws.budgets->>'budget_usd')::float8 AS budget_usd,"
    " (SELECT coalesce(json_agg(json_build_object('stage', a.stage, 'attempt', a.attempt,"
    "   'status', a.status, 'reason', a.reason, 'started_at', a.started_at,"
    "   'finished_at', a.finished_at, 'seconds',"
    "   extract(epoch FROM coalesce(a.finished_at, now()) - a.started_at),"
    "   'cost_usd', a.stage_cost, 'tokens', a.stage_tokens)), '[]')"
    # Each stage's latest attempt, with the cost and tokens of all its attempts
    # (the window sums are taken before DISTINCT ON keeps one row per stage).
    "  FROM (SELECT DISTINCT ON (stage) *,"
    "   sum(cost_usd) OVER (PARTITION BY stage)::float8 AS stage_cost,"
    "   sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0))"
    "    OVER (PARTITION BY stage) AS stage_tokens"
    "   FROM stage_attempts s WHERE s.req_number = ws.req_number"
    "   ORDER BY stage, attempt DESC) a) AS latest"
)


def _row(pipeline: Pipeline, row: Any) -> dict[str, Any]:
    latest = json.loads(row["latest"])
    body = {k: row[k] for k in row.keys() if k not in ("latest", "total")}
    body["priority"] = priority_label(body["priority"])
    body["finished"] = row["status"] in FINISHED
    body.update(_stage_name(pipeline, row["current_stage"]))
    body["stages"] = _cells(pipeline, row, latest)
    return body


async def list_reqs(
    conn: asyncpg.Connection, pipeline: Pipeline, filters: dict[str, Any]
) -> dict[str, Any]:
    """REQ rows (newest activity first), each with its stage cells."""
    rows = await conn.fetch(
        f"SELECT {_ROW_COLUMNS}, count(*) OVER () AS total FROM workflow_state ws"
        " WHERE ($1::text[] IS NULL OR ws.status = ANY($1::text[]))"
        " AND ($2::int[] IS NULL OR ws.current_stage = ANY($2::int[]))"
        " AND ($3::int[] IS NULL OR ws.priority = ANY($3::int[]))"
        " ORDER BY ws.updated_at DESC, ws.req_number LIMIT $4",
        filters["status"],
        filters["stage"],
        filters["priority"],
        filters["limit"],
    )
    return {
        "reqs": [_row(pipeline, r) for r in rows],
        "count": len(rows),
        "total": rows[0]["total"] if rows else 0,
        "filters": shown_filters(filters),
        "stages": stage_info(pipeline),
    }


async def req_summary(conn: asyncpg.Connection, pipeline: Pipeline, req: str) -> dict[str, Any]:
    """One REQ's row (as in the list), or {} if unknown."""
    row = await conn.fetchrow(
        f"SELECT {_ROW_COLUMNS} FROM workflow_state ws WHERE ws.req_number = $1", req
    )
    return _row(pipeline, row) if row is not None else {}


def _jsonb(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def req_detail(
    conn: asyncpg.Connection, pipeline: Pipeline, req: str, max_events: int = MAX_EVENTS
) -> dict[str, Any] | None:
    """Everything known about a REQ: its row, requirement and counters, its
    branch (AGOG_REPO), every stage attempt with timings and its commit,
    deliverables, decisions, escalations and the audit trail (the last
    ``max_events`` events). None if unknown."""
    row = await conn.fetchrow(
        f"SELECT {_ROW_COLUMNS}, ws.requirement, ws.budgets FROM workflow_state ws"
        " WHERE ws.req_number = $1",
        req,
    )
    if row is None:
        return None
    body = _row(pipeline, row)
    body["requirement"] = _labelled(_jsonb(body.pop("requirement")))
    body["counters"] = _jsonb(body.pop("budgets"))
    names = {s.index: s.name for s in all_stages(pipeline)}
    attempts = await conn.fetch(
        "SELECT id, stage, agent, attempt, status, reason, instructions, started_at, deadline,"
        " last_heartbeat_at, finished_at,"
        " extract(epoch FROM coalesce(finished_at, now()) - started_at)::float8 AS seconds,"
        f" {USAGE_COLUMNS}"
        " FROM stage_attempts WHERE req_number = $1 ORDER BY id",
        req,
    )
    commits = await stage_commits(conn, req)
    body["branch"] = await req_branch(conn, req)
    body["attempts"] = [
        {
            **dict(a),
            "stage_name": names.get(a["stage"]),
            "instructions": _jsonb(a["instructions"]),
            "commit": commits.get((a["stage"], a["attempt"])),
        }
        for a in attempts
    ]
    deliverables = await conn.fetch(
        "SELECT id, agent, stage, attempt, subject, stream, stream_seq, received_at,"
        " deliverable FROM deliverable_history WHERE req_number = $1 ORDER BY id",
        req,
    )
    body["deliverables"] = distinct_deliverables(deliverables, names)
    body["usage"] = await usage_by_agent(conn, req)
    decisions = await conn.fetch(
        "SELECT id, decision, reasoning, payload, received_at, applied_at"
        " FROM strategic_decisions WHERE req_number = $1 ORDER BY id",
        req,
    )
    body["decisions"] = []
    for d in decisions:
        payload = _jsonb(d["payload"])
        payload = payload if isinstance(payload, dict) else {}
        body["decisions"].append(
            {
                **{k: d[k] for k in d.keys() if k != "payload"},
                "decision_id": payload.get("decision_id"),
                "source": payload.get("source", "nats"),
                "action": payload.get("action"),
                "payload": payload,
            }
        )
    escalations = await conn.fetch(
        "SELECT id, dedup_key, priority, reason, created_at, resolved_at, resolution"
        " FROM escalations WHERE req_number = $1 ORDER BY id",
        req,
    )
    body["escalations"] = [dict(e) for e in escalations]
    events = await conn.fetch(
        "SELECT * FROM (SELECT id, kind, stage, agent, attempt, reason, detail, created_at"
        " FROM workflow_events WHERE req_number = $1 ORDER BY id DESC LIMIT $2) e ORDER BY id",
        req,
        max_events,
    )
    body["events"] = [{**dict(e), "detail": _labelled(_jsonb(e["detail"]))} for e in events]
    return body


async def req_branch(conn: asyncpg.Connection, req: str) -> dict[str, Any] | None:
    """The REQ's branch and worktree (AGOG_REPO), or None if it has none."""
    row = await conn.fetchrow(
        "SELECT branch, base_sha, path, created_at, removed_at, removed_reason"
        " FROM req_worktrees WHERE req_number = $1",
        req,
    )
    if row is None:
        return None
    return {
        "name": row["branch"],
        "base": row["base_sha"],
        "worktree": row["path"],
        "created_at": row["created_at"],
        "removed_at": row["removed_at"],
        "removed_reason": row["removed_reason"],
    }


async def stage_commits(
    conn: asyncpg.Connection, req: str
) -> dict[tuple[int, int], dict[str, Any]]:
    """Each attempt's commit on the REQ's branch, by (stage, attempt): ``sha``
    None when the attempt changed nothing (or has not finished); ``unlisted``
    the files it changed that its notice did not list, ``missing`` those it
    listed that it did not change."""
    rows = await conn.fetch(
        "SELECT stage, attempt, start_sha, end_sha, files, unlisted, missing, committed_at"
        " FROM stage_commits WHERE req_number = $1",
        req,
    )
    return {
        (r["stage"], r["attempt"]): {
            "sha": r["end_sha"],
            "start": r["start_sha"],
            "files": _jsonb(r["files"]),
            "unlisted": _jsonb(r["unlisted"]),
            "missing": _jsonb(r["missing"]),
            "committed_at": r["committed_at"],
        }
        for r in rows
    }


USAGE_COLUMNS = (
    "cli, model, session_id, input_tokens, output_tokens, cache_read_tokens,"
    " cache_write_tokens, cost_usd::float8 AS cost_usd, turns, duration_s"
)
_USAGE_SUMS = (
    "sum(input_tokens)::bigint AS input_tokens, sum(output_tokens)::bigint AS output_tokens,"
    " sum(cache_read_tokens)::bigint AS cache_read_tokens,"
    " sum(cache_write_tokens)::bigint AS cache_write_tokens, sum(cost_usd)::float8 AS cost_usd,"
    " sum(turns)::bigint AS turns, count(*) FILTER (WHERE cost_usd IS NOT NULL"
    " OR input_tokens IS NOT NULL) AS attempts_reported"
)


async def usage_by_agent(conn: asyncpg.Connection, req: str) -> dict[str, Any]:
    """Tokens and cost of a REQ's attempts, per agent and in total."""
    rows = await conn.fetch(
        f"SELECT agent, {_USAGE_SUMS} FROM stage_attempts WHERE req_number = $1"
        " GROUP BY agent ORDER BY min(stage)",
        req,
    )
    total = await conn.fetchrow(
        f"SELECT {_USAGE_SUMS} FROM stage_attempts WHERE req_number = $1", req
    )
    return {"agents": [dict(r) for r in rows], "total": dict(total) if total else {}}


async def transcript(
    conn: asyncpg.Connection,
    req: str,
    stage: int | None,
    attempt: int | None,
    since: int | None,
) -> dict[str, Any] | None:
    """An attempt's kept agent output (the latest attempt of ``stage``, or the
    REQ's latest if no stage is named), from byte ``since`` on."""
    row = await conn.fetchrow(
        "SELECT stage, attempt, agent, text, total_bytes, running, updated_at"
        " FROM agent_transcripts WHERE req_number = $1"
        " AND ($2::int IS NULL OR stage = $2) AND ($3::int IS NULL OR attempt = $3)"
        " ORDER BY updated_at DESC, stage DESC, attempt DESC LIMIT 1",
        req,
        stage,
        attempt,
    )
    if row is None:
        return None
    data = row["text"].encode()
    start = row["total_bytes"] - len(data)
    offset = start if since is None else min(max(since, start), row["total_bytes"])
    return {
        "req_number": req,
        "kept": True,
        "stage": row["stage"],
        "attempt": row["attempt"],
        "agent": row["agent"],
        "running": row["running"],
        "total_bytes": row["total_bytes"],
        "offset": offset,
        "skipped": max(0, offset - since) if since is not None else start,
        "text": data[offset - start :].decode("utf-8", "ignore"),
        "updated_at": row["updated_at"],
    }


def _labelled(value: Any) -> Any:
    """A stored requirement or event detail with its REQ priority as "P2"
    (rows written before agogd showed one form hold the number)."""
    if isinstance(value, dict) and isinstance(value.get("priority"), int):
        return {**value, "priority": priority_label(value["priority"])}
    return value


def distinct_deliverables(rows: list[Any], names: dict[int, str]) -> list[dict[str, Any]]:
    """deliverable_history keeps every accepted message, so a notice that an
    agent published twice (or a heartbeat repeated word for word) is there
    twice. History shows each distinct notice once, at its first arrival, with
    ``copies`` and ``last_received_at``; notices that differ in anything (the
    attempt, the status, a field) all stay."""
    shown: dict[tuple[Any, ...], dict[str, Any]] = {}
    for d in rows:
        notice = _jsonb(d["deliverable"])
        notice = notice if isinstance(notice, dict) else {}
        key = (d["agent"], d["stage"], d["attempt"], json.dumps(notice, sort_keys=True))
        if key in shown:
            first = shown[key]
            first["copies"] += 1
            first["last_received_at"] = d["received_at"]
            continue
        shown[key] = {
            **{k: d[k] for k in d.keys() if k != "deliverable"},
            "stage_name": names.get(d["stage"]),
            "status": notice.get("status"),
            "verdict": notice.get("critique_verdict"),
            "summary": notice.get("summary"),
            "url": notice.get("deliverable"),
            "notice": notice,
            "copies": 1,
            "last_received_at": d["received_at"],
        }
    return list(shown.values())
