"""Bad input on real NATS and Postgres: each is rejected once, with a reason,
an event and a log line; nothing is lost and the pipeline keeps flowing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from tests.agents import (
    ScriptedAgents,
    collect,
    deliverable_subject,
    notice,
    running_agogd,
    settings_for,
    submit,
    wait_stage,
    wait_status,
)

LIMIT = 64 * 1024

CASES: list[tuple[str, str, bytes, str]] = [
    (
        "invalid JSON",
        "agog.deliverables.roy.backend.REQ-BAD-1",
        b'{"agent": "roy", ',
        "invalid_json",
    ),
    (
        "wrong schema",
        "agog.deliverables.roy.backend.REQ-BAD-1",
        json.dumps({"agent": "roy", "req_number": "REQ-BAD-1", "status": "MAYBE"}).encode(),
        "wrong_schema",
    ),
    (
        "unknown agent",
        "agog.deliverables.roy.backend.REQ-BAD-1",
        json.dumps(notice("bob", "REQ-BAD-1")).encode(),
        "unknown_agent",
    ),
    (
        "invalid REQ id",
        "agog.deliverables.roy.backend.REQ-BAD-1",
        json.dumps(notice("roy", "REQ-BAD.1>")).encode(),
        "invalid_req_id",
    ),
    (
        "oversize payload",
        "agog.deliverables.roy.backend.REQ-BAD-1",
        json.dumps(notice("roy", "REQ-BAD-1", summary="x" * (LIMIT + 10))).encode(),
        "too_large",
    ),
    (
        "unknown REQ",
        "agog.deliverables.roy.backend.REQ-NOBODY-9",
        json.dumps(notice("roy", "REQ-NOBODY-9")).encode(),
        "unknown_req",
    ),
    (
        "intake with a bad REQ id",
        "agog.requirements.new",
        json.dumps({"req_number": "REQ 1/../x", "title": "t"}).encode(),
        "invalid_req_id",
    ),
    ("intake that is not JSON", "agog.requirements.new", b"REQ-1 please", "invalid_json"),
    (
        "decision with an unknown kind",
        "agog.strategic.decisions.REQ-BAD-1",
        json.dumps({"decision": "PANIC"}).encode(),
        "wrong_schema",
    ),
    (
        "decision for an unknown REQ",
        "agog.strategic.decisions.REQ-NOBODY-9",
        json.dumps({"decision": "RETRY"}).encode(),
        "unknown_req",
    ),
]


@pytest.mark.parametrize(("what", "subject", "payload", "reason"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_is_rejected_once(
    nats_server: NatsServer,
    nc: NATS,
    pg_dsn: str,
    what: str,
    subject: str,
    payload: bytes,
    reason: str,
) -> None:
    rejections, _ = await collect(nc, "agog.orchestration.events.message.rejected")

    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        return None if a["agent"] == "roy" else notice(a["agent"], a["req_number"])

    await ScriptedAgents(nc, script).start()
    settings = settings_for(nats_server.url, pg_dsn, max_message_bytes=LIMIT)
    async with running_agogd(settings):
        await submit(nc, "REQ-BAD-1")
        await wait_stage(pg_dsn, "REQ-BAD-1", 2)
        await nc.jetstream().publish(subject, payload)
        for _ in range(100):
            if rejections:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a redelivery loop would show up as more rejections
        assert [r["reason_code"] for r in rejections] == [reason], rejections
        assert rejections[0]["subject"] == subject
        # Nothing else was disturbed: the REQ goes on when Roy answers.
        await nc.jetstream().publish(
            deliverable_subject("roy", "REQ-BAD-1"), json.dumps(notice("roy", "REQ-BAD-1")).encode()
        )
        await wait_status(pg_dsn, "REQ-BAD-1", "DEPLOYED")
    conn = await asyncpg.connect(pg_dsn)
    try:
        recorded = await conn.fetch(
            "SELECT reason FROM workflow_events WHERE kind = 'message.rejected'"
        )
        assert len(recorded) == 1 and recorded[0]["reason"].startswith(reason)
    finally:
        await conn.close()


async def test_decision_for_a_finished_req_is_rejected(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    rejections, _ = await collect(nc, "agog.orchestration.events.message.rejected")
    await ScriptedAgents(nc).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)):
        await submit(nc, "REQ-DONE-1")
        await wait_status(pg_dsn, "REQ-DONE-1", "DEPLOYED")
        await nc.jetstream().publish(
            "agog.strategic.decisions.REQ-DONE-1",
            json.dumps({"decision": "REQUEST_CHANGES"}).encode(),
        )
        for _ in range(100):
            if rejections:
                break
            await asyncio.sleep(0.05)
    assert [r["reason_code"] for r in rejections] == ["decision_not_applicable"]
    assert "DEPLOYED" in rejections[0]["reason"]
    await wait_status(pg_dsn, "REQ-DONE-1", "DEPLOYED")


async def test_one_batch_mixing_good_bad_and_duplicate_notices(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    """Messages stored while agogd is down arrive as one batch, committed in
    one transaction: the bad ones are rejected, the duplicate is ignored, and
    the good ones advance their REQs as if each had come alone."""
    rejections, _ = await collect(nc, "agog.orchestration.events.message.rejected")

    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        return None if a["agent"] == "roy" else notice(a["agent"], a["req_number"])

    await ScriptedAgents(nc, script).start()
    settings = settings_for(nats_server.url, pg_dsn)
    async with running_agogd(settings):
        for req in ("REQ-MIX-1", "REQ-MIX-2"):
            await submit(nc, req)
        for req in ("REQ-MIX-1", "REQ-MIX-2"):
            await wait_stage(pg_dsn, req, 2)
    js = nc.jetstream()
    burst = [
        (deliverable_subject("roy", "REQ-MIX-1"), b"{not json"),
        (deliverable_subject("roy", "REQ-MIX-1"), json.dumps(notice("roy", "REQ-MIX-1"))),
        (deliverable_subject("roy", "REQ-MIX-1"), json.dumps(notice("roy", "REQ-MIX-1"))),
        (deliverable_subject("roy", "REQ-NOBODY-7"), json.dumps(notice("roy", "REQ-NOBODY-7"))),
        (deliverable_subject("roy", "REQ-MIX-2"), json.dumps(notice("roy", "REQ-MIX-2"))),
    ]
    for subject, payload in burst:
        await js.publish(subject, payload if isinstance(payload, bytes) else payload.encode())
    async with running_agogd(settings):
        for req in ("REQ-MIX-1", "REQ-MIX-2"):
            await wait_status(pg_dsn, req, "DEPLOYED")
        await asyncio.sleep(0.5)  # a redelivery loop would show up as more rejections
    assert sorted(r["reason_code"] for r in rejections) == ["invalid_json", "unknown_req"]
    conn = await asyncpg.connect(pg_dsn)
    try:
        roy = await conn.fetch(
            "SELECT req_number, attempt, status FROM stage_attempts WHERE stage = 2"
            " ORDER BY req_number"
        )
        assert [(r["req_number"], r["attempt"], r["status"]) for r in roy] == [
            ("REQ-MIX-1", 1, "COMPLETE"),
            ("REQ-MIX-2", 1, "COMPLETE"),
        ]
        ignored = await conn.fetchval(
            "SELECT count(*) FROM workflow_events WHERE req_number = 'REQ-MIX-1'"
            " AND kind = 'ignored'"
        )
        assert ignored == 1  # the duplicate notice, recorded and ignored
        outcomes = await conn.fetch(
            "SELECT outcome FROM processed_messages WHERE stream = 'agog_features_backend'"
            " ORDER BY stream_seq"
        )
        assert [r["outcome"] for r in outcomes] == [
            "rejected",
            "applied",
            "ignored",
            "rejected",
            "applied",
        ]
    finally:
        await conn.close()
