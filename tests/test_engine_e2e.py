"""End-to-end: REQs through all seven stages on real NATS and Postgres,
driven by scripted agents that publish real notices."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from tests.agents import (
    ScriptedAgents,
    collect,
    deliverable_subject,
    happy,
    notice,
    running_agogd,
    settings_for,
    submit,
    wait_stage,
    wait_status,
)

SEVEN = ["cynthia", "sylvia", "roy", "jen", "billy", "priya", "berry"]


async def _rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_happy_path(nats_server: NatsServer, nc: NATS, pg_dsn: str) -> None:
    events, _ = await collect(nc, "agog.orchestration.events.>")
    agents = await ScriptedAgents(nc).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)):
        await submit(nc, "REQ-HAPPY-1")
        row = await wait_status(pg_dsn, "REQ-HAPPY-1", "DEPLOYED")
        await asyncio.sleep(0.5)  # Tim's follow-up
    assert row["commit_sha"] == "abc1234" and row["deployed_by"] == "berry"
    assert [a for a, _ in agents.agents_for("REQ-HAPPY-1")] == [*SEVEN, "tim"]
    cache = await _rows(
        pg_dsn,
        "SELECT agent, stage FROM nats_deliverable_cache"
        " WHERE req_number = 'REQ-HAPPY-1' ORDER BY stage",
    )
    assert [(r["agent"], r["stage"]) for r in cache] == [
        (a, i) for i, a in enumerate([*SEVEN, "tim"])
    ]
    kinds = [e["eventType"] for e in events if e.get("req_number") == "REQ-HAPPY-1"]
    assert kinds[0] == "workflow.started" and "workflow.completed" in kinds
    assert kinds.count("stage.completed") == 8  # seven stages and Tim
    # The assignment carries the previous stages' deliverables.
    berry = next(a for a in agents.assignments if a["agent"] == "berry")
    assert [p["agent"] for p in berry["contextData"]["previousStages"]] == SEVEN[:-1]
    assert berry["deliverableSubject"] == "agog.deliverables.berry.devops.REQ-HAPPY-1"


async def test_sylvia_rejects_then_approves(nats_server: NatsServer, nc: NATS, pg_dsn: str) -> None:
    def script(a: dict[str, Any]) -> dict[str, Any]:
        if a["agent"] == "sylvia" and a["attempt"] == 1:
            return notice(
                "sylvia",
                a["req_number"],
                critique_verdict="REJECTED",
                required_fixes=["cite the packaging standard"],
            )
        return happy(a)

    agents = await ScriptedAgents(nc, script).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)):
        await submit(nc, "REQ-CRIT-1")
        await wait_status(pg_dsn, "REQ-CRIT-1", "DEPLOYED")
    order = agents.agents_for("REQ-CRIT-1")
    assert order[:5] == [("cynthia", 1), ("sylvia", 1), ("cynthia", 2), ("sylvia", 2), ("roy", 1)]
    rework = next(a for a in agents.assignments if a["agent"] == "cynthia" and a["attempt"] == 2)
    assert rework["instructions"]["rework"]["required_fixes"] == ["cite the packaging standard"]


async def test_billy_fails_rework_then_passes(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    def script(a: dict[str, Any]) -> dict[str, Any]:
        if a["agent"] == "billy" and a["attempt"] == 1:
            return notice(
                "billy",
                a["req_number"],
                "FAILED",
                tests_passed=False,
                tests_failed=3,
                failures=["login form loses input"],
                send_back_to=["jen"],
            )
        return happy(a)

    agents = await ScriptedAgents(nc, script).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)):
        await submit(nc, "REQ-QA-1")
        await wait_status(pg_dsn, "REQ-QA-1", "DEPLOYED")
    order = agents.agents_for("REQ-QA-1")
    assert order.index(("jen", 2)) > order.index(("billy", 1))
    assert order.index(("berry", 1)) > order.index(("billy", 2))
    jen = next(a for a in agents.assignments if a["agent"] == "jen" and a["attempt"] == 2)
    assert jen["instructions"]["rework"]["qa_failures"] == ["login form loses input"]


async def test_blocked_escalates_once_and_decision_resumes(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    def script(a: dict[str, Any]) -> dict[str, Any]:
        if a["agent"] == "roy" and a["attempt"] == 1:
            return notice("roy", a["req_number"], "BLOCKED", summary="schema owner missing")
        return happy(a)

    escalations, _ = await collect(nc, "agog.strategic.escalations.>")
    await ScriptedAgents(nc, script).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)):
        await submit(nc, "REQ-BLK-1")
        await wait_status(pg_dsn, "REQ-BLK-1", "BLOCKED")
        await asyncio.sleep(1)
        assert [e["subject"] for e in escalations] == ["agog.strategic.escalations.REQ-BLK-1"]
        assert escalations[0]["reason"] == "schema owner missing"
        await nc.jetstream().publish(
            "agog.strategic.decisions.REQ-BLK-1",
            json.dumps(
                {
                    "req_number": "REQ-BLK-1",
                    "decision": "RETRY",
                    "reasoning": "owner found",
                    "instructions_for_roy": "use the inventory schema",
                }
            ).encode(),
        )
        await wait_status(pg_dsn, "REQ-BLK-1", "DEPLOYED")
    assert len(escalations) == 1
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT resolved_at, resolution FROM escalations WHERE req_number = 'REQ-BLK-1'"
        )
    finally:
        await conn.close()
    # The decision answered the escalation.
    assert len(rows) == 1 and rows[0]["resolved_at"] is not None
    assert rows[0]["resolution"] == "RETRY: owner found"


async def test_timeout_retries_then_escalates(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    escalations, _ = await collect(nc, "agog.strategic.escalations.>")
    agents = await ScriptedAgents(nc, lambda a: None).start()  # nobody answers
    settings = settings_for(nats_server.url, pg_dsn, stage_timeouts={"cynthia": 0.5})
    async with running_agogd(settings):
        await submit(nc, "REQ-SLOW-1")
        row = await wait_status(pg_dsn, "REQ-SLOW-1", "BLOCKED")
        await asyncio.sleep(1)
    assert agents.agents_for("REQ-SLOW-1") == [("cynthia", 1), ("cynthia", 2), ("cynthia", 3)]
    assert row["current_stage"] == 0
    assert len(escalations) == 1 and escalations[0]["priority"] == "NEEDS_MANUAL_INTERVENTION"
    statuses = await _rows(
        pg_dsn, "SELECT status FROM stage_attempts WHERE req_number = 'REQ-SLOW-1' ORDER BY attempt"
    )
    assert [r["status"] for r in statuses] == ["TIMED_OUT"] * 3


async def test_heartbeats_keep_a_slow_stage_alive(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    async def slow_cynthia(req: str) -> None:
        for _ in range(8):  # 2.4 s of work against a 0.6 s timeout
            await nc.jetstream().publish(
                f"agog.orchestration.events.stage.heartbeat.cynthia.{req}", b'{"attempt": 1}'
            )
            await asyncio.sleep(0.3)
        await nc.jetstream().publish(
            deliverable_subject("cynthia", req), json.dumps(notice("cynthia", req)).encode()
        )

    tasks = []

    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        if a["agent"] == "cynthia":
            tasks.append(asyncio.ensure_future(slow_cynthia(a["req_number"])))
            return None
        return happy(a)

    agents = await ScriptedAgents(nc, script).start()
    settings = settings_for(nats_server.url, pg_dsn, stage_timeouts={"cynthia": 0.6})
    async with running_agogd(settings):
        await submit(nc, "REQ-HB-1")
        await wait_status(pg_dsn, "REQ-HB-1", "DEPLOYED")
    assert agents.agents_for("REQ-HB-1")[0:2] == [("cynthia", 1), ("sylvia", 1)]


async def test_cancel(nats_server: NatsServer, nc: NATS, pg_dsn: str) -> None:
    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        return None if a["agent"] == "roy" else happy(a)

    await ScriptedAgents(nc, script).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)):
        await submit(nc, "REQ-CAN-1")
        conn = await asyncpg.connect(pg_dsn)
        try:
            for _ in range(200):
                if (
                    await conn.fetchval(
                        "SELECT current_stage FROM workflow_state WHERE req_number = 'REQ-CAN-1'"
                    )
                    == 2
                ):
                    break
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
        await nc.jetstream().publish(
            "agog.strategic.decisions.REQ-CAN-1",
            json.dumps({"decision": "CANCEL", "reasoning": "owner withdrew"}).encode(),
        )
        await wait_status(pg_dsn, "REQ-CAN-1", "CANCELLED")
        await nc.jetstream().publish(
            deliverable_subject("roy", "REQ-CAN-1"), json.dumps(notice("roy", "REQ-CAN-1")).encode()
        )
        await asyncio.sleep(1)
        await wait_status(pg_dsn, "REQ-CAN-1", "CANCELLED")


async def test_p0_jumps_the_queue(nats_server: NatsServer, nc: NATS, pg_dsn: str) -> None:
    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        # REQ-Q-FIRST holds the only slot until the others are queued.
        return None if (a["req_number"], a["agent"]) == ("REQ-Q-FIRST", "roy") else happy(a)

    agents = await ScriptedAgents(nc, script).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn, max_in_flight=1)):
        await submit(nc, "REQ-Q-FIRST", "P3")
        await wait_stage(pg_dsn, "REQ-Q-FIRST", 2)
        await submit(nc, "REQ-Q-LOW", "P3")
        await submit(nc, "REQ-Q-MID", "P2")
        await submit(nc, "REQ-Q-URGENT", "P0")
        await asyncio.sleep(1)
        await nc.jetstream().publish(
            deliverable_subject("roy", "REQ-Q-FIRST"),
            json.dumps(notice("roy", "REQ-Q-FIRST")).encode(),
        )
        for req in ("REQ-Q-FIRST", "REQ-Q-LOW", "REQ-Q-MID", "REQ-Q-URGENT"):
            await wait_status(pg_dsn, req, "DEPLOYED", timeout=60)
    starts = [a["req_number"] for a in agents.assignments if a["agent"] == "cynthia"]
    assert starts == ["REQ-Q-FIRST", "REQ-Q-URGENT", "REQ-Q-MID", "REQ-Q-LOW"]


async def test_duplicate_and_out_of_order_notices(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    sent: list[str] = []

    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        sent.append(a["agent"])
        return None if a["agent"] == "roy" else happy(a)

    agents = await ScriptedAgents(nc, script).start()
    js = nc.jetstream()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)):
        await submit(nc, "REQ-DUP-1")
        await submit(nc, "REQ-DUP-1")  # the same REQ twice: one workflow
        for _ in range(200):
            if "roy" in sent:
                break
            await asyncio.sleep(0.05)
        # Out of order: Billy answers before Roy and Jen have.
        await js.publish(
            deliverable_subject("billy", "REQ-DUP-1"),
            json.dumps(notice("billy", "REQ-DUP-1")).encode(),
        )
        # An old attempt's notice.
        await js.publish(
            deliverable_subject("cynthia", "REQ-DUP-1"),
            json.dumps(notice("cynthia", "REQ-DUP-1", attempt=1)).encode(),
        )
        roy = json.dumps(notice("roy", "REQ-DUP-1")).encode()
        await js.publish(deliverable_subject("roy", "REQ-DUP-1"), roy)
        await js.publish(deliverable_subject("roy", "REQ-DUP-1"), roy)  # a duplicate
        await wait_status(pg_dsn, "REQ-DUP-1", "DEPLOYED")
    assert agents.agents_for("REQ-DUP-1").count(("jen", 1)) == 1
    assert [a for a, _ in agents.agents_for("REQ-DUP-1")] == [*SEVEN, "tim"]
    ignored = await _rows(
        pg_dsn,
        "SELECT reason FROM workflow_events WHERE req_number = 'REQ-DUP-1' AND kind = 'ignored'",
    )
    reasons = " | ".join(r["reason"] for r in ignored)
    assert "stage 4" in reasons and "stage 0" in reasons
    assert len(await _rows(pg_dsn, "SELECT 1 FROM workflow_state")) == 1


async def test_a_berry_notice_without_a_deployment_leaves_the_req_complete(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    def script(assignment: dict[str, Any]) -> dict[str, Any]:
        agent, req = assignment["agent"], assignment["req_number"]
        if agent == "berry":  # committed and tested; no engine to deploy on
            return notice(agent, req, deployed=False, deployed_at=None, commit_sha="c0ffee1")
        return notice(agent, req)

    agents = await ScriptedAgents(nc, script).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)):
        await submit(nc, "REQ-NODEPLOY-1")
        row = await wait_status(pg_dsn, "REQ-NODEPLOY-1", "COMPLETE")
        await asyncio.sleep(0.5)  # Tim still documents it
    assert row["commit_sha"] == "c0ffee1" and row["deployed_at"] is None
    assert [a for a, _ in agents.agents_for("REQ-NODEPLOY-1")][-1] == "tim"
