"""What outside clients rely on, on real NATS and Postgres: a late copy of a
notice never closes a newer attempt; Tim obeys his retries and an operator
can re-run him; the deliverable cache holds what agents wrote, read back with
the seeds' own SQL."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from orchestrator.runtime import migrate
from tests.agents import (
    PIPELINE,
    ScriptedAgents,
    deliverable_subject,
    happy,
    notice,
    running_agogd,
    settings_for,
    submit,
    wait_status,
)
from tests.test_ctl_e2e import ctl

TIM = PIPELINE.followups[0]


class Recording(ScriptedAgents):
    """Scripted agents that keep the exact bytes of every notice they publish."""

    def __init__(self, nc: NATS, script: Any) -> None:
        super().__init__(nc, script)
        self.sent: dict[tuple[str, str, int], bytes] = {}

    async def _on_assignment(self, msg: Any) -> None:
        assignment = json.loads(msg.data)
        reply = self.script(assignment)
        self.assignments.append(assignment)
        if reply is None:
            return
        body = {"worked_on": f"{assignment['stageIndex']}#{assignment['attempt']}", **reply}
        data = json.dumps(body).encode()
        self.sent[(assignment["req_number"], assignment["agent"], assignment["attempt"])] = data
        subject = deliverable_subject(assignment["agent"], assignment["req_number"])
        await self.nc.jetstream().publish(subject, data)


async def until(dsn: str, sql: str, *args: Any, what: str, timeout: float = 30) -> Any:
    """Poll a query until it returns a truthy value (a loaded 2-core machine is slow)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            value = await conn.fetchval(sql, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {what}")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


RUNNING = (
    "SELECT 1 FROM stage_attempts WHERE req_number = $1 AND stage = $2 AND attempt = $3"
    " AND status = 'RUNNING'"
)
IGNORED = (
    "SELECT reason FROM workflow_events WHERE req_number = $1 AND kind = 'ignored'"
    " AND stage = $2 AND attempt = $3 AND detail->>'belongs_to_attempt' = $3::text"
    " ORDER BY id DESC LIMIT 1"
)


async def test_late_copies_of_applied_notices_close_no_newer_attempt(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    req = "REQ-LATE-1"

    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        if a["req_number"] != req:
            return happy(a)
        if a["agent"] == "sylvia" and a["attempt"] == 1:
            return notice("sylvia", req, critique_verdict="REJECTED", required_fixes=["cite it"])
        if a["agent"] in ("cynthia", "sylvia") and a["attempt"] == 2:
            return None  # the test answers these itself
        return happy(a)

    agents = await Recording(nc, script).start()
    js = nc.jetstream()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)):
        await submit(nc, req)
        await until(pg_dsn, RUNNING, req, 0, 2, what="Cynthia's rework (attempt 2)")
        # 1. Cynthia's first notice, published again: it belongs to attempt 1.
        await js.publish(deliverable_subject("cynthia", req), agents.sent[(req, "cynthia", 1)])
        reason = await until(pg_dsn, IGNORED, req, 0, 1, what="the copy ignored for attempt 1")
        assert "already applied to attempt 1" in reason
        assert await until(pg_dsn, RUNNING, req, 0, 2, what="attempt 2 still running")
        # Her real second answer counts.
        answer = notice("cynthia", req, summary="research with the sources cited")
        await js.publish(deliverable_subject("cynthia", req), json.dumps(answer).encode())
        await until(pg_dsn, RUNNING, req, 1, 2, what="Sylvia's second critique")
        # 2. Sylvia's REJECTED, re-sent: no rework for nothing.
        await js.publish(deliverable_subject("sylvia", req), agents.sent[(req, "sylvia", 1)])
        await until(pg_dsn, IGNORED, req, 1, 1, what="Sylvia's copy ignored for attempt 1")
        row = (await fetch(pg_dsn, "SELECT * FROM workflow_state WHERE req_number = $1", req))[0]
        assert row["current_stage"] == 1 and json.loads(row["budgets"])["rework"] == {"critique": 1}
        assert await until(pg_dsn, RUNNING, req, 1, 2, what="Sylvia's attempt 2 still running")
        approve = notice("sylvia", req, summary="cited now; approved")
        await js.publish(deliverable_subject("sylvia", req), json.dumps(approve).encode())
        await wait_status(pg_dsn, req, "DEPLOYED")
    await agents.stop()
    attempts = await fetch(
        pg_dsn,
        "SELECT stage, attempt, status FROM stage_attempts WHERE req_number = $1"
        " AND stage IN (0, 1) ORDER BY stage, attempt",
        req,
    )
    assert [tuple(r) for r in attempts] == [
        (0, 1, "COMPLETE"),
        (0, 2, "COMPLETE"),
        (1, 1, "REJECTED"),
        (1, 2, "COMPLETE"),
    ]


async def test_a_notice_stored_before_its_attempt_was_assigned_belongs_to_the_earlier_one(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    """JetStream's own timestamp places it: a second notice from Cynthia, held
    back (a paused consumer) until her rework was assigned, is not its answer."""
    req = "REQ-LATE-2"

    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        if a["req_number"] == req and a["agent"] == "sylvia":
            return None
        if a["req_number"] == req and a["agent"] == "cynthia" and a["attempt"] > 1:
            return None
        return happy(a)

    agents = await ScriptedAgents(nc, script).start()
    js = nc.jetstream()
    # No clock margin: nats-server and Postgres share this machine's clock.
    settings = settings_for(nats_server.url, pg_dsn, notice_clock_margin=0)
    async with running_agogd(settings):
        await submit(nc, req)
        await until(pg_dsn, RUNNING, req, 1, 1, what="Sylvia's critique")
        until_later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        await js.pause_consumer("agog_features_research", "agogd_deliverables", until_later)
        try:
            second = notice("cynthia", req, summary="an afterthought on the research")
            await js.publish(deliverable_subject("cynthia", req), json.dumps(second).encode())
            rejected = notice("sylvia", req, critique_verdict="REJECTED")
            await js.publish(deliverable_subject("sylvia", req), json.dumps(rejected).encode())
            await until(pg_dsn, RUNNING, req, 0, 2, what="Cynthia's rework")
        finally:
            await js.resume_consumer("agog_features_research", "agogd_deliverables")
        reason = await until(pg_dsn, IGNORED, req, 0, 1, what="the held notice ignored")
        assert "published before attempt 2 was assigned: it belongs to attempt 1" in reason
        assert await until(pg_dsn, RUNNING, req, 0, 2, what="attempt 2 still running")
    await agents.stop()


async def test_a_failed_tim_is_retried_escalated_once_and_rerun_by_the_operator(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    req = "REQ-TIM-1"

    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        if a["agent"] == "tim" and a["attempt"] <= TIM.retries + 1:
            # What the runner publishes when the agent's process fails.
            return notice(
                "tim", a["req_number"], status="FAILED", summary="the agent exited with code 1"
            )
        return happy(a)

    agents = await ScriptedAgents(nc, script).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon:
        await submit(nc, req)
        await wait_status(pg_dsn, req, "DEPLOYED")
        last = TIM.retries + 1
        await until(
            pg_dsn,
            "SELECT 1 FROM stage_attempts WHERE req_number = $1 AND stage = $2 AND attempt = $3"
            " AND status = 'FAILED'",
            req,
            TIM.index,
            last,
            what="Tim's last attempt within his budget failed",
        )
        escalations = await until(
            pg_dsn,
            "SELECT count(*) FROM escalations WHERE req_number = $1 AND payload->>'stage' = $2",
            req,
            str(TIM.index),
            what="Tim's escalation",
        )
        assert escalations == 1
        # The operator re-runs him; the REQ stays DEPLOYED all along.
        result = await ctl(daemon.http.url, "req", "retry", req, "--stage", "tim", "--wait", "20")
        assert result.returncode == 0, result.stderr
        await until(
            pg_dsn,
            "SELECT 1 FROM stage_attempts WHERE req_number = $1 AND stage = $2 AND attempt = $3"
            " AND status = 'COMPLETE'",
            req,
            TIM.index,
            last + 1,
            what="Tim's re-run complete",
        )
        row = await wait_status(pg_dsn, req, "DEPLOYED")
        assert json.loads(row["budgets"])["followups"] == {str(TIM.index): "COMPLETE"}
        # His escalation was answered by the operator's decision.
        open_ = await fetch(
            pg_dsn,
            "SELECT id FROM escalations WHERE req_number = $1 AND resolved_at IS NULL",
            req,
        )
        assert open_ == []
        # A follow-up of a REQ still in its pipeline cannot be re-run (409).
        early = "REQ-TIM-2"
        agents.script = lambda a: None if a["req_number"] == early else happy(a)
        await submit(nc, early)
        await until(pg_dsn, RUNNING, early, 0, 1, what="REQ-TIM-2 started")
        refused = await ctl(daemon.http.url, "req", "retry", early, "--stage", "tim")
        assert refused.returncode != 0 and "runs only after berry" in refused.stderr
    await agents.stop()
    statuses = await fetch(
        pg_dsn,
        "SELECT attempt, status FROM stage_attempts WHERE req_number = $1 AND stage = $2"
        " ORDER BY attempt",
        req,
        TIM.index,
    )
    assert [tuple(r) for r in statuses] == [
        *((n, "FAILED") for n in range(1, last + 1)),
        (last + 1, "COMPLETE"),
    ]


# Seed 002's Berry completion notice, verbatim (the REQ number filled in).
SEED_002_BERRY = """{
  "agent": "berry",
  "req_number": "REQ-SEED-1",
  "status": "COMPLETE",
  "commit_sha": "abc1234567890",
  "files_changed": 42,
  "tests_passed": true,
  "deployed_at": "2025-12-23T22:45:00Z",
  "next_agent": "tim"
}"""
# Seed 000's completion notice (Miki's), verbatim but for the REQ number.
SEED_000_MIKI = """{
  "agent": "miki",
  "req_number": "REQ-SEED-1",
  "status": "COMPLETE",
  "deliverable": "nats://agog.features.devops.REQ-SEED-1",
  "summary": "Fixed NATS healthcheck, updated volume mounts for frontend tsconfig files. All containers healthy. Docker Compose verified working.",
  "files_modified": ["docker-compose.yml"],
  "containers_affected": ["agogsaas-nats", "agogsaas-frontend"],
  "next_agent": "billy"
}"""  # noqa: E501


async def test_the_cache_holds_the_seed_notices_as_the_agents_wrote_them(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    req = "REQ-SEED-1"
    # Billy as seed 002 expects him; Berry's answer in a fence, as models write.
    billy = notice("billy", req, tests_passed=True, summary="all 57 tests pass")
    fenced = f"Deployed.\n\n```json\n{SEED_002_BERRY}\n```\n"

    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        return None if a["agent"] in ("billy", "berry") and a["req_number"] == req else happy(a)

    agents = await ScriptedAgents(nc, script).start()
    js = nc.jetstream()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)):
        await submit(nc, req)
        await until(pg_dsn, RUNNING, req, 4, 1, what="Billy's stage")
        await js.publish(deliverable_subject("billy", req), json.dumps(billy).encode())
        await until(pg_dsn, RUNNING, req, 6, 1, what="Berry's stage")
        await js.publish(deliverable_subject("berry", req), fenced.encode())
        await js.publish(f"agog.deliverables.miki.devops.{req}", SEED_000_MIKI.encode())
        row = await wait_status(pg_dsn, req, "DEPLOYED")
        await until(
            pg_dsn,
            "SELECT 1 FROM workflow_events WHERE req_number = $1 AND kind = 'report'",
            req,
            what="Miki's report",
        )
    await agents.stop()
    assert row["commit_sha"] == "abc1234567890"
    # Seed 002, step 1: Billy's approval, with the seed's own query.
    (got,) = await fetch(
        pg_dsn,
        f"SELECT deliverable FROM nats_deliverable_cache WHERE req_number='{req}'"
        " AND agent='billy'",
    )
    assert json.loads(got["deliverable"]) == billy
    # What Berry published, every field under its own name.
    (berry,) = await fetch(
        pg_dsn,
        "SELECT deliverable, deliverable->>'files_changed' AS files_changed, normalized"
        " FROM nats_deliverable_cache WHERE req_number = $1 AND agent = 'berry'",
        req,
    )
    assert berry["files_changed"] == "42"
    assert json.loads(berry["deliverable"]) == json.loads(SEED_002_BERRY)
    assert json.loads(berry["normalized"])["files_changed_count"] == 42
    # Seed 002, step 2: every deliverable of the REQ, in stage order.
    listed = await fetch(
        pg_dsn,
        f"SELECT agent, stage, created_at FROM nats_deliverable_cache WHERE req_number='{req}'"
        " ORDER BY stage",
    )
    assert [r["agent"] for r in listed] == [*(s.agent for s in PIPELINE.stages), "tim"]
    # Miki reports outside the pipeline: kept as he wrote it, in the REQ's history.
    (report,) = await fetch(
        pg_dsn,
        "SELECT detail FROM workflow_events WHERE req_number = $1 AND kind = 'report'",
        req,
    )
    assert json.loads(report["detail"]) == json.loads(SEED_000_MIKI)


async def test_existing_cache_rows_are_migrated_to_what_agents_wrote(
    pg_dsn: str, tmp_path: Path
) -> None:
    """A row written before V1.7.0 (the normalised notice) gets Berry's name back."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    later = []
    for sql in migrate.default_directory().glob("V*.sql"):
        if sql.name.startswith("V1.7.0"):
            later.append(sql)
        else:
            shutil.copy(sql, folder)
    assert later, "the migration under test is missing"
    conn = await asyncpg.connect(pg_dsn)
    try:
        await migrate.apply(conn, folder)
        await conn.execute(
            "INSERT INTO workflow_state (req_number, status, current_stage, budgets)"
            " VALUES ('REQ-OLD-1', 'DEPLOYED', 6, '{\"attempts\": {\"6\": 1}}')"
        )
        await conn.execute(
            "INSERT INTO stage_attempts (req_number, stage, agent, attempt, status, deadline)"
            " VALUES ('REQ-OLD-1', 7, 'tim', 1, 'RUNNING', now() + interval '1 hour')"
        )
        old = {"agent": "berry", "status": "COMPLETE", "files_changed_count": 42}
        older = {"agent": "roy", "status": "COMPLETE", "files_changed_count": None}
        for agent, stage, body in (("berry", 6, old), ("roy", 2, older)):
            await conn.execute(
                "INSERT INTO nats_deliverable_cache (req_number, agent, stage, deliverable)"
                " VALUES ('REQ-OLD-1', $1, $2, $3::jsonb)",
                agent,
                stage,
                json.dumps(body),
            )
        for sql in later:
            shutil.copy(sql, folder)
        await migrate.apply(conn, folder)
        rows = {
            r["agent"]: (json.loads(r["deliverable"]), json.loads(r["normalized"]))
            for r in await conn.fetch("SELECT * FROM nats_deliverable_cache")
        }
        assert rows["berry"] == ({"agent": "berry", "status": "COMPLETE", "files_changed": 42}, old)
        assert rows["roy"] == ({"agent": "roy", "status": "COMPLETE"}, older)
        budgets = json.loads(
            await conn.fetchval("SELECT budgets FROM workflow_state WHERE req_number = 'REQ-OLD-1'")
        )
        # Tim's running attempt, from before follow-ups lived in the workflow.
        assert budgets["followups"] == {"7": "RUNNING"}
        assert budgets["attempts"] == {"6": 1, "7": 1}
    finally:
        await conn.close()
