"""The chaos soak's end-of-run checks, on Postgres, the streams and the file.

Each check returns a ``Check``: a name, a one-line summary of what it looked
at, and its violations (none means it passed). They run once the replicas
have stopped, so nothing moves underneath them.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client as NATS

from bench.chaos_agents import ASSIGNMENTS, Key, Record, commit_for
from orchestrator.core.registry import Pipeline
from orchestrator.engine.owner_sync import FILE_STATUS
from orchestrator.inbound.owner_requests import OwnerRequestsFile

EXPECTED_STATUS = "DEPLOYED"
SHOWN = 8  # violations printed per check


@dataclass
class Check:
    name: str
    summary: str = ""
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def lines(self) -> list[str]:
        mark = "ok  " if self.ok else "FAIL"
        out = [f"  [{mark}] {self.name}: {self.summary}"]
        for violation in self.violations[:SHOWN]:
            out.append(f"         - {violation}")
        if len(self.violations) > SHOWN:
            out.append(f"         - ... and {len(self.violations) - SHOWN} more")
        return out


@dataclass
class Snapshot:
    """Everything the checks read from Postgres, in one go."""

    workflows: dict[str, asyncpg.Record]
    attempts: dict[Key, list[asyncpg.Record]]
    events: Counter[tuple[str | None, str, int | None, int | None]]
    cache: dict[tuple[str, int], list[asyncpg.Record]]
    history: list[asyncpg.Record]
    outcomes: Counter[str]
    unpublished: int
    rejected: list[asyncpg.Record]
    escalations: list[asyncpg.Record]


async def snapshot(dsn: str) -> Snapshot:
    conn = await asyncpg.connect(dsn)
    try:
        workflows = {
            r["req_number"]: r
            for r in await conn.fetch(
                "SELECT req_number, status, current_stage, budgets::text AS budgets, commit_sha,"
                " deployed_at, deployed_by, mirrored_status FROM workflow_state"
            )
        }
        attempts: dict[Key, list[asyncpg.Record]] = defaultdict(list)
        for r in await conn.fetch(
            "SELECT req_number, stage, agent, attempt, status, reason,"
            " deliverable::text AS deliverable FROM stage_attempts"
        ):
            attempts[(r["req_number"], r["stage"], r["attempt"])].append(r)
        events: Counter[tuple[str | None, str, int | None, int | None]] = Counter()
        for r in await conn.fetch(
            "SELECT req_number, kind, stage, attempt, count(*) AS n FROM workflow_events"
            " GROUP BY req_number, kind, stage, attempt"
        ):
            events[(r["req_number"], r["kind"], r["stage"], r["attempt"])] = r["n"]
        cache: dict[tuple[str, int], list[asyncpg.Record]] = defaultdict(list)
        for r in await conn.fetch(
            "SELECT req_number, agent, stage,"
            " coalesce(normalized, deliverable)::text AS deliverable FROM nats_deliverable_cache"
        ):
            cache[(r["req_number"], r["stage"])].append(r)
        history = await conn.fetch(
            "SELECT h.req_number, h.stage, h.attempt, h.stream, h.stream_seq, p.outcome"
            " FROM deliverable_history h LEFT JOIN processed_messages p"
            " ON p.stream = h.stream AND p.stream_seq = h.stream_seq"
        )
        outcomes = Counter(
            {
                f"{r['consumer']}:{r['outcome']}": r["n"]
                for r in await conn.fetch(
                    "SELECT consumer, outcome, count(*) AS n FROM processed_messages"
                    " GROUP BY consumer, outcome"
                )
            }
        )
        unpublished = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        rejected = await conn.fetch(
            "SELECT req_number, reason FROM workflow_events WHERE kind = 'message.rejected'"
        )
        escalations = await conn.fetch("SELECT dedup_key, reason FROM escalations")
    finally:
        await conn.close()
    return Snapshot(
        workflows,
        attempts,
        events,
        cache,
        history,
        outcomes,
        unpublished,
        rejected,
        escalations,
    )


async def stored_assignments(urls: list[str]) -> list[tuple[Key, str | None, int]]:
    """(key, Nats-Msg-Id, stream sequence) of every stored stage assignment."""
    nc: NATS = await nats.connect(servers=urls)
    out: list[tuple[Key, str | None, int]] = []
    try:
        js = nc.jetstream()
        sub = await js.subscribe(ASSIGNMENTS, ordered_consumer=True)
        while True:
            try:
                msg = await sub.next_msg(timeout=2)
            except TimeoutError:
                break
            body = json.loads(msg.data)
            key = (body["req_number"], int(body["stageIndex"]), int(body["attempt"]))
            out.append((key, (msg.headers or {}).get("Nats-Msg-Id"), msg.metadata.sequence.stream))
        await sub.unsubscribe()
    finally:
        await nc.close()
    return out


def _loads(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


# --- the checks --------------------------------------------------------------
def check_final(snap: Snapshot, reqs: list[str]) -> Check:
    check = Check("every REQ final")
    statuses: Counter[str] = Counter()
    running = {key[0] for key, rows in snap.attempts.items() if rows[0]["status"] == "RUNNING"}
    for req in reqs:
        row = snap.workflows.get(req)
        status = row["status"] if row else "MISSING"
        statuses[status] += 1
        if status != EXPECTED_STATUS:
            check.violations.append(f"{req} is {status}, not {EXPECTED_STATUS}")
        elif req in running:
            check.violations.append(f"{req} still has a RUNNING attempt (Tim's follow-up)")
    shown = ", ".join(f"{n} {s}" for s, n in statuses.most_common())
    check.summary = f"{shown}; RUNNING attempts left: {len(running)}"
    return check


def check_lost(snap: Snapshot, reqs: list[str], pipeline: Pipeline) -> Check:
    check = Check("zero lost")
    stages = range(len(pipeline.stages))
    tim = [f.index for f in pipeline.followups]
    missing = [r for r in reqs if r not in snap.workflows]
    check.violations += [f"{r} was submitted but has no workflow row" for r in missing]
    complete = Counter(
        (req, stage)
        for (req, stage, _), rows in snap.attempts.items()
        if rows[0]["status"] == "COMPLETE"
    )
    ended = 0
    for req in reqs:
        if req in missing:
            continue
        gaps = [s for s in stages if complete[(req, s)] == 0]
        if gaps:
            check.violations.append(f"{req} never completed stage(s) {gaps}")
            continue
        if snap.events[(req, "workflow.completed", None, None)] != 1:
            check.violations.append(f"{req} has no workflow.completed event")
            continue
        dispatched = any(
            (req, index, attempt) in snap.attempts for index in tim for attempt in (1, 2, 3)
        )
        if tim and not dispatched:
            check.violations.append(f"{req}: Tim's documentation stage was never dispatched")
            continue
        ended += 1
    extra = set(snap.workflows) - set(reqs)
    check.summary = (
        f"{len(reqs)} submitted, {len(reqs) - len(missing)} with a workflow row, "
        f"{ended} went through all {len(stages)} stages and Tim"
        + (f"; {len(extra)} unexpected workflow rows" if extra else "")
    )
    check.violations += [f"unexpected workflow {r}" for r in sorted(extra)]
    return check


def check_double_applied(snap: Snapshot, reqs: list[str], pipeline: Pipeline) -> Check:
    check = Check("zero double-applied transitions")
    v = check.violations
    for key, rows in snap.attempts.items():
        if len(rows) > 1:
            v.append(f"stage_attempts has {len(rows)} rows for {key}")
    once = ("stage.started", "stage.completed", "stage.failed", "stage.blocked")
    for (req, kind, stage, attempt), n in snap.events.items():
        if kind in once and n > 1:
            v.append(f"{kind} recorded {n} times for ({req}, {stage}, {attempt})")
        if kind in ("workflow.started", "workflow.completed") and n > 1:
            v.append(f"{kind} recorded {n} times for {req}")
    # Per (REQ, stage): one COMPLETE attempt; the ones before it timed out or failed.
    by_stage: dict[tuple[str, int], list[asyncpg.Record]] = defaultdict(list)
    for rows in snap.attempts.values():
        by_stage[(rows[0]["req_number"], rows[0]["stage"])].append(rows[0])
    last_stage = len(pipeline.stages) - 1
    for (req, stage), rows in by_stage.items():
        rows.sort(key=lambda r: r["attempt"])
        numbers = [r["attempt"] for r in rows]
        if numbers != list(range(1, len(rows) + 1)):
            v.append(f"({req}, {stage}) has attempts {numbers}, not 1..{len(rows)}")
        done = [r["attempt"] for r in rows if r["status"] == "COMPLETE"]
        if len(done) > 1:
            v.append(f"({req}, {stage}) completed {len(done)} times (attempts {done})")
        for r in rows[:-1]:
            if r["status"] not in ("TIMED_OUT", "FAILED"):
                v.append(f"({req}, {stage}, {r['attempt']}) is {r['status']} but was retried")
        if stage <= last_stage and req in snap.workflows:
            budgets = _loads(snap.workflows[req]["budgets"])
            recorded = int(budgets.get("attempts", {}).get(str(stage), 0))
            if recorded != len(rows):
                v.append(f"({req}, {stage}): workflow counts {recorded} attempts, {len(rows)} rows")
    # processed_messages: each stream message applied once, each attempt closed by one.
    per_message = Counter((h["stream"], h["stream_seq"]) for h in snap.history)
    v += [f"message {k} recorded {n} times in history" for k, n in per_message.items() if n > 1]
    applied = Counter(
        (h["req_number"], h["stage"], h["attempt"])
        for h in snap.history
        if h["outcome"] == "applied"
    )
    v += [f"{k} was applied by {n} messages" for k, n in applied.items() if n > 1]
    for key, rows in snap.attempts.items():
        if rows[0]["status"] == "COMPLETE" and applied[key] != 1:
            v.append(f"{key} is COMPLETE but {applied[key]} messages applied it")
    unsettled = sum(n for k, n in snap.outcomes.items() if k.endswith(":processing"))
    if unsettled:
        v.append(f"{unsettled} processed_messages rows were never settled")
    shown = ", ".join(f"{k} {n}" for k, n in sorted(snap.outcomes.items()))
    check.summary = (
        f"{len(snap.attempts)} stage attempts, {len(snap.history)} notices in history,"
        f" processed messages: {shown}"
    )
    return check


def check_started_twice(
    record: Record, stored: list[tuple[Key, str | None, int]], snap: Snapshot
) -> Check:
    check = Check("zero assignments started twice")
    v = check.violations
    for key, seqs in record.seqs.items():
        if len(seqs) > 1:
            v.append(f"{key} reached the agents as {len(seqs)} stream messages {sorted(seqs)}")
    for key, n in record.first_deliveries.items():
        if n > 1:
            v.append(f"{key} was a first delivery {n} times")
    per_key = Counter(key for key, _, _ in stored)
    v += [f"{key} is stored {n} times in the stream" for key, n in per_key.items() if n > 1]
    for key, msg_id, _ in stored:
        expected = f"assign:{key[0]}:{key[1]}:{key[2]}"
        if msg_id != expected:
            v.append(f"{key} stored with Nats-Msg-Id {msg_id!r}, not {expected!r}")
    attempts, in_stream, seen = set(snap.attempts), set(per_key), set(record.seqs)
    v += [f"{k} has an attempt row but no stored assignment" for k in sorted(attempts - in_stream)]
    v += [f"{k} is stored but was never delivered to an agent" for k in sorted(in_stream - seen)]
    v += [f"{k} was delivered but has no attempt row" for k in sorted(seen - attempts)]
    lost_first = sum(1 for key in record.seqs if record.first_deliveries[key] == 0)
    check.summary = (
        f"{len(record.seqs)} (REQ, stage, attempt) keys at the agents, one stream message"
        f" and one first delivery each expected; {len(stored)} stored assignments;"
        f" {record.stats['redeliveries']} redeliveries"
        + (f" ({lost_first} keys seen only as a redelivery)" if lost_first else "")
    )
    return check


def check_agree(
    snap: Snapshot, reqs: list[str], owner_file: Path, in_file: set[str], pipeline: Pipeline
) -> Check:
    check = Check("Postgres, deliverable cache and OWNER_REQUESTS.md agree")
    v = check.violations
    entries = {e.req_number: e for e in OwnerRequestsFile(owner_file).read()}
    stages = {s.index: s for s in pipeline.stages}
    berry = max(stages)
    completed: dict[tuple[str, int], list[asyncpg.Record]] = defaultdict(list)
    for (rq, st, _), rows in snap.attempts.items():
        completed[(rq, st)] += [r for r in rows if r["status"] == "COMPLETE"]
    commits = 0
    for req in reqs:
        row = snap.workflows.get(req)
        entry = entries.get(req)
        if row is None:
            continue  # reported as lost
        if (entry is None) == (req in in_file):
            v.append(f"{req} is {'not ' if entry is None else ''}in OWNER_REQUESTS.md")
            continue
        if row["mirrored_status"] != row["status"]:
            v.append(f"{req}: mirrored_status {row['mirrored_status']} != {row['status']}")
        if row["status"] == "DEPLOYED" and row["commit_sha"] != commit_for(req):
            v.append(f"{req}: Postgres commit {row['commit_sha']} != Berry's {commit_for(req)}")
        if entry is not None:
            want = FILE_STATUS.get(row["status"], row["status"])
            if entry.status != want:
                v.append(f"{req}: file says {entry.status}, Postgres {row['status']}")
        fields = {k.casefold(): val.strip() for k, val in entry.fields.items()} if entry else {}
        if entry is not None and row["status"] == "DEPLOYED":
            if fields.get("commit") != row["commit_sha"]:
                v.append(f"{req}: file commit {fields.get('commit')} != {row['commit_sha']}")
            deployed_at = row["deployed_at"].isoformat() if row["deployed_at"] else None
            if fields.get("deployed at") != deployed_at:
                v.append(f"{req}: file Deployed At {fields.get('deployed at')} != {deployed_at}")
            if fields.get("deployed by") != row["deployed_by"]:
                v.append(f"{req}: file Deployed By {fields.get('deployed by')}")
            commits += 1
        for index in stages:
            cached = snap.cache.get((req, index), [])
            done = completed.get((req, index), [])
            if len(cached) != 1 or len(done) != 1:
                v.append(f"{req} stage {index}: {len(cached)} cache rows, {len(done)} COMPLETE")
                continue
            body = _loads(cached[0]["deliverable"])
            if body != _loads(done[0]["deliverable"]):
                v.append(f"{req} stage {index}: cache differs from the completed attempt")
            if index == berry and body.get("commit_sha") != row["commit_sha"]:
                v.append(f"{req}: cached commit {body.get('commit_sha')} != {row['commit_sha']}")
            gate = stages[index].gate
            if gate == "qa" and body.get("tests_passed") is not True:
                v.append(f"{req}: Berry ran without Billy's approval in the cache")
            if gate == "critique" and body.get("critique_verdict") != "APPROVED":
                v.append(f"{req}: critique verdict {body.get('critique_verdict')} in the cache")
    check.summary = (
        f"{len(reqs)} statuses and commits compared across workflow_state and"
        f" nats_deliverable_cache ({sum(len(r) for r in snap.cache.values())} rows),"
        f" and with OWNER_REQUESTS.md for the {len(entries)} REQs in it"
        f" ({commits} deployed with commit, date and deployer)"
    )
    return check


def check_quiet(snap: Snapshot) -> Check:
    check = Check("nothing stuck or refused")
    if snap.unpublished:
        check.violations.append(f"{snap.unpublished} outbox rows were never published")
    check.violations += [f"rejected: {r['req_number']} {r['reason']}" for r in snap.rejected]
    check.violations += [f"escalation {r['dedup_key']}: {r['reason']}" for r in snap.escalations]
    check.summary = (
        f"{snap.unpublished} unpublished outbox rows, {len(snap.rejected)} rejections,"
        f" {len(snap.escalations)} escalations"
    )
    return check


def timeouts(snap: Snapshot, record: Record) -> dict[str, int]:
    """TIMED_OUT attempts: those the agents caused, and those faults caused."""
    timed_out = [k for k, rows in snap.attempts.items() if rows[0]["status"] == "TIMED_OUT"]
    scripted = [k for k in timed_out if record.behaviour.get(k) in ("hang", "crash_term")]
    return {
        "timed_out": len(timed_out),
        "scripted": len(scripted),
        "fault_induced": len(timed_out) - len(scripted),
    }


def run_all(
    snap: Snapshot,
    reqs: list[str],
    record: Record,
    stored: list[tuple[Key, str | None, int]],
    owner_file: Path,
    in_file: set[str],
    pipeline: Pipeline,
) -> list[Check]:
    return [
        check_final(snap, reqs),
        check_lost(snap, reqs, pipeline),
        check_double_applied(snap, reqs, pipeline),
        check_started_twice(record, stored, snap),
        check_agree(snap, reqs, owner_file, in_file, pipeline),
        check_quiet(snap),
    ]


def flatten(checks: Iterable[Check]) -> list[str]:
    return [line for check in checks for line in check.lines()]
