"""The HTTP API on a real agogd (real nats-server and PostgreSQL, scripted
agents that publish real notices): every route, every error code, and the
live event stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, DeliverPolicy
from pydantic import SecretStr
from structlog.testing import capture_logs

from orchestrator.api.events import EVENT_STREAMS_KEY
from orchestrator.core import decision_auth
from orchestrator.embedded import NatsServer
from orchestrator.runtime.daemon import Daemon
from tests.agents import (
    PIPELINE,
    ScriptedAgents,
    deliverable_subject,
    happy,
    notice,
    running_agogd,
    settings_for,
    submit,
    wait_stage,
    wait_status,
)

TOKEN = "test-token"
SEVEN = ["cynthia", "sylvia", "roy", "jen", "billy", "priya", "berry"]


class Api:
    """A thin JSON client of one agogd."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        sent = dict(headers or {})
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token}")
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        async with self.session.request(method, self.url + path, data=data, headers=sent) as resp:
            raw = await resp.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode("utf-8", "replace")
            return resp.status, parsed, resp.headers

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        status, body, _ = await self.call("GET", path, **kw)
        return status, body

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, answer, _ = await self.call("POST", path, body, **kw)
        return status, answer


@asynccontextmanager
async def api_for(daemon: Daemon) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, daemon.http.url)


async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def _is_error(body: Any, code: str) -> bool:
    return isinstance(body, dict) and body.get("code") == code and bool(body.get("error"))


# --- reads -----------------------------------------------------------------------------
async def test_list_filters_and_full_history(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        return None if (a["req_number"], a["agent"]) == ("REQ-API-2", "roy") else happy(a)

    await ScriptedAgents(nc, script).start()
    async with (
        running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon,
        api_for(daemon) as api,
    ):
        created = await api.post(
            "/api/reqs", {"req_number": "REQ-API-1", "title": "Inventory", "priority": "P1"}
        )
        assert created == (201, {"req_number": "REQ-API-1", "created": True})
        assert await api.post("/api/reqs", {"req_number": "REQ-API-1"}) == (
            200,
            {"req_number": "REQ-API-1", "created": False},
        )
        await submit(nc, "REQ-API-2", "P0", "Labels")
        await wait_status(pg_dsn, "REQ-API-1", "DEPLOYED")
        await wait_stage(pg_dsn, "REQ-API-2", 2)
        await asyncio.sleep(0.5)  # Tim's follow-up of REQ-API-1

        status, everything = await api.get("/api/reqs", token=None)  # reads are open
        assert status == 200
        assert {r["req_number"] for r in everything["reqs"]} == {"REQ-API-1", "REQ-API-2"}
        assert everything["total"] == 2
        assert [s["agent"] for s in everything["stages"]] == [*SEVEN, "tim"]
        rows = {r["req_number"]: r for r in everything["reqs"]}
        done, waiting = rows["REQ-API-1"], rows["REQ-API-2"]
        assert (done["status"], done["priority"], done["finished"]) == ("DEPLOYED", "P1", True)
        assert waiting["priority"] == "P0"
        assert [c["state"] for c in done["stages"]] == ["done"] * 8
        assert (waiting["current_stage"], waiting["current_agent"]) == (2, "roy")
        assert [c["state"] for c in waiting["stages"]] == ["done", "done", "running"] + [
            "waiting"
        ] * 5
        running = waiting["stages"][2]
        assert running["attempt"] == 1 and running["seconds"] >= 0 and running["started_at"]

        async def only(query: str) -> list[str]:
            status, body = await api.get(f"/api/reqs?{query}")
            assert status == 200, body
            return sorted(r["req_number"] for r in body["reqs"])

        assert await only("status=DEPLOYED") == ["REQ-API-1"]
        assert await only("status=active") == ["REQ-API-2"]
        assert await only("status=in_progress,blocked") == ["REQ-API-2"]
        assert await only("stage=roy") == ["REQ-API-2"]
        assert await only("stage=2") == ["REQ-API-2"]
        assert await only("stage=Backend&status=DEPLOYED") == []
        assert await only("priority=P0") == ["REQ-API-2"]
        assert await only("priority=1&priority=P0") == ["REQ-API-1", "REQ-API-2"]
        status, one = await api.get("/api/reqs?limit=1")
        assert status == 200 and one["count"] == 1 and one["total"] == 2
        for bad in ("status=DONE", "stage=nobody", "priority=P9", "limit=0", "limit=x"):
            status, body = await api.get(f"/api/reqs?{bad}")
            assert status == 400 and _is_error(body, "bad_request"), (bad, body)

        status, history = await api.get("/api/reqs/REQ-API-1")
        assert status == 200
        assert history["title"] == "Inventory" and history["commit_sha"] == "abc1234"
        assert history["requirement"]["req_number"] == "REQ-API-1"
        attempts = history["attempts"]
        assert [a["agent"] for a in attempts] == [*SEVEN, "tim"]
        for attempt in attempts:
            assert attempt["status"] == "COMPLETE"
            assert attempt["started_at"] <= attempt["finished_at"]
            assert attempt["seconds"] >= 0 and attempt["deadline"]
        assert attempts[0]["stage_name"] == "Research"
        deliverables = history["deliverables"]
        assert [d["agent"] for d in deliverables] == [*SEVEN, "tim"]
        assert deliverables[1]["verdict"] == "APPROVED"
        assert deliverables[0]["summary"] == "cynthia did the work"
        assert deliverables[0]["subject"] == "agog.deliverables.cynthia.research.REQ-API-1"
        assert deliverables[0]["notice"]["agent"] == "cynthia"
        kinds = [e["kind"] for e in history["events"]]
        assert kinds[:2] == ["workflow.queued", "workflow.started"]
        assert "workflow.completed" in kinds and kinds.count("stage.completed") == 8
        assert history["decisions"] == [] and history["escalations"] == []
        status, short = await api.get("/api/reqs/REQ-API-1?events=3")
        assert status == 200 and [e["kind"] for e in short["events"]] == kinds[-3:]

        status, body = await api.get("/api/reqs/REQ-NOPE-1")
        assert status == 404 and _is_error(body, "not_found") and "REQ-NOPE-1" in body["error"]
        status, body = await api.get("/api/reqs/REQ-a.b")
        assert status == 400 and _is_error(body, "bad_request")


async def test_priority_is_one_form_out_and_any_form_in(
    nats_server: NatsServer, pg_dsn: str
) -> None:
    """agogctl shows and takes "P2": the API answers the same form everywhere
    (rows, filters, the stored requirement, the audit trail) and takes 2, "2",
    "p2" or "P2" wherever a priority goes in. Postgres keeps the number."""
    forms: dict[str, Any] = {
        "REQ-PRI-INT": 2,
        "REQ-PRI-TEXT": "2",
        "REQ-PRI-LOWER": "p2",
        "REQ-PRI-UPPER": "P2",
        "REQ-PRI-URGENT": 0,
    }
    async with (
        running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon,
        api_for(daemon) as api,
    ):
        for req, priority in forms.items():
            status, body = await api.post("/api/reqs", {"req_number": req, "priority": priority})
            assert status == 201, body

        status, listing = await api.get("/api/reqs")
        assert status == 200
        shown = {r["req_number"]: r["priority"] for r in listing["reqs"]}
        assert shown == {req: "P0" if req == "REQ-PRI-URGENT" else "P2" for req in forms}

        for query in ("priority=2", "priority=p2", "priority=P2", "priority=P2,2"):
            status, body = await api.get(f"/api/reqs?{query}")
            assert status == 200, (query, body)
            assert sorted(r["req_number"] for r in body["reqs"]) == sorted(
                req for req in forms if req != "REQ-PRI-URGENT"
            ), query
            assert body["filters"]["priority"] == ["P2"], query
        status, body = await api.get("/api/reqs?priority=0&priority=p2")
        assert status == 200 and body["filters"]["priority"] == ["P0", "P2"]
        assert body["total"] == len(forms)

        status, history = await api.get("/api/reqs/REQ-PRI-INT")
        assert status == 200
        assert history["priority"] == "P2"
        assert history["requirement"]["priority"] == "P2"
        queued = next(e for e in history["events"] if e["kind"] == "workflow.queued")
        assert queued["detail"]["priority"] == "P2"

    rows = await _fetch(pg_dsn, "SELECT req_number, priority FROM workflow_state")
    assert {r["req_number"]: r["priority"] for r in rows} == {
        req: 0 if req == "REQ-PRI-URGENT" else 2 for req in forms
    }


async def test_submit_refuses_bad_input_and_bad_tokens(
    nats_server: NatsServer, pg_dsn: str
) -> None:
    async with (
        running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon,
        api_for(daemon) as api,
    ):
        cases = [
            (dict(data=b"{not json", headers={"Content-Type": "application/json"}), 400),
            (dict(body=["REQ-X-1"]), 400),
            (dict(body={"req_number": "REQ-../etc"}), 400),
            (dict(body={"req_number": "REQ-X-1", "priority": "P7"}), 400),
            (dict(body={"req_number": "REQ-X-1"}, token=None), 401),
            (dict(body={"req_number": "REQ-X-1"}, token="wrong"), 401),
        ]
        for kwargs, expected in cases:
            status, body, _ = await api.call("POST", "/api/reqs", **kwargs)  # type: ignore[arg-type]
            assert status == expected, (kwargs, body)
            assert isinstance(body, dict) and body["error"], body
        status, body, _ = await api.call(
            "POST", "/api/reqs", {"req_number": "REQ-X-1"}, headers={"Authorization": "Basic x"}
        )
        assert status == 401 and _is_error(body, "unauthorized")
    assert await _fetch(pg_dsn, "SELECT 1 FROM workflow_state") == []

    # Without a configured token, actions are refused rather than left open.
    async with (
        running_agogd(settings_for(nats_server.url, pg_dsn, api_token=None)) as daemon,
        api_for(daemon) as api,
    ):
        status, body = await api.post("/api/reqs", {"req_number": "REQ-X-1"})
        assert status == 403 and _is_error(body, "forbidden")
        status, body = await api.post("/api/reqs/REQ-X-1/cancel", {})
        assert status == 403


# --- actions ---------------------------------------------------------------------------
async def _decisions_in_stream(nc: NATS) -> int:
    info = await nc.jetstream().stream_info("agog_strategic_decisions")
    return int(info.state.messages)


async def test_actions_are_checked_then_applied_by_the_engine(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        req, agent = a["req_number"], a["agent"]
        if (req, agent, a["attempt"]) == ("REQ-ACT-1", "cynthia", 1):
            return notice(agent, req, "BLOCKED", summary="the owner must choose a schema")
        if (req, agent, a["attempt"]) == ("REQ-ACT-1", "cynthia", 2):
            return None  # answered by the test, once it has seen the resumed state
        if (req, agent) == ("REQ-ACT-2", "roy"):
            return None  # Roy never answers REQ-ACT-2
        return happy(a)

    agents = await ScriptedAgents(nc, script).start()
    async with (
        running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon,
        api_for(daemon) as api,
    ):
        for req in ("REQ-ACT-1", "REQ-ACT-2", "REQ-ACT-3"):
            await submit(nc, req)
        await wait_status(pg_dsn, "REQ-ACT-1", "BLOCKED")
        await wait_stage(pg_dsn, "REQ-ACT-2", 2)
        await wait_status(pg_dsn, "REQ-ACT-3", "DEPLOYED")

        # Refused before anything is published.
        status, body = await api.post("/api/reqs/REQ-ACT-3/retry")
        assert status == 409 and _is_error(body, "conflict")
        assert "DEPLOYED" in body["error"] and body["req_status"] == "DEPLOYED"
        for action, payload in (
            ("cancel", {}),
            ("resume", {}),
            ("decide", {"decision": "APPROVE"}),
        ):
            status, body = await api.post(f"/api/reqs/REQ-ACT-3/{action}", payload)
            assert status == 409, (action, body)
        status, body = await api.post("/api/reqs/REQ-ACT-2/resume")
        assert status == 409 and "only a BLOCKED or ESCALATED" in body["error"]
        status, body = await api.post("/api/reqs/REQ-ACT-2/retry", {"stage": "billy"})
        assert status == 409 and "never ahead" in body["error"]
        status, body = await api.post("/api/reqs/REQ-NOPE-9/retry")
        assert status == 404 and _is_error(body, "not_found")
        bad_requests = [
            ("/api/reqs/REQ-ACT-2/decide", {"decision": "MAYBE"}),
            ("/api/reqs/REQ-ACT-2/decide", {}),
            ("/api/reqs/REQ-ACT-2/cancel", {"reasn": "typo"}),
            ("/api/reqs/REQ-ACT-2/cancel", {"reason": 7}),
            ("/api/reqs/REQ-ACT-2/cancel", [1, 2]),
            ("/api/reqs/REQ-ACT-2/decide", {"decision": "REQUEST_CHANGES", "restart_stage": 42}),
            ("/api/reqs/REQ-ACT-2/retry?wait=never", {}),
            ("/api/reqs/REQ-ACT-2/retry?wait=999", {}),
            ("/api/reqs/REQ-a.b/retry", {}),
        ]
        for path, payload in bad_requests:
            status, body = await api.post(path, payload)
            assert status == 400 and _is_error(body, "bad_request"), (path, body)
        status, body, _ = await api.call(
            "POST", "/api/reqs/REQ-ACT-2/cancel", data=b'{"reason": ', headers={}
        )
        assert status == 400 and "invalid_json" in body["error"]
        status, body, _ = await api.call(
            "POST", "/api/reqs/REQ-ACT-2/cancel", {}, headers={"Idempotency-Key": "no spaces!"}
        )
        assert status == 400
        for token in (None, "wrong"):
            status, body = await api.post("/api/reqs/REQ-ACT-2/cancel", {}, token=token)
            assert status == 401 and _is_error(body, "unauthorized")
        status, body = await api.post("/api/reqs/REQ-ACT-2/explode", {})
        assert status == 404 and _is_error(body, "not_found")
        assert await _decisions_in_stream(nc) == 0
        assert await wait_status(pg_dsn, "REQ-ACT-2", "IN_PROGRESS")

        # resume: the blocked stage runs again, with the operator's instructions.
        status, body = await api.post(
            "/api/reqs/REQ-ACT-1/resume?wait=10",
            {"reason": "owner chose", "instructions": "use the inventory schema"},
        )
        assert status == 200, body
        assert (body["outcome"], body["decision"], body["action"]) == ("applied", "RETRY", "resume")
        assert body["req"]["status"] == "IN_PROGRESS" and body["req"]["current_stage"] == 0
        assert body["stream"] == "agog_strategic_decisions" and body["duplicate"] is False
        await nc.jetstream().publish(
            deliverable_subject("cynthia", "REQ-ACT-1"),
            json.dumps(notice("cynthia", "REQ-ACT-1", attempt=2)).encode(),
        )
        await wait_status(pg_dsn, "REQ-ACT-1", "DEPLOYED")
        second = next(
            a
            for a in agents.assignments
            if (a["req_number"], a["agent"], a["attempt"]) == ("REQ-ACT-1", "cynthia", 2)
        )
        assert second["instructions"]["decision"]["kind"] == "RETRY"
        assert second["instructions"]["decision"]["instructions"] == "use the inventory schema"
        status, history = await api.get("/api/reqs/REQ-ACT-1")
        [decision] = history["decisions"]
        assert (decision["decision"], decision["source"], decision["action"]) == (
            "RETRY",
            "api",
            "resume",
        )
        assert decision["decision_id"] == body["decision_id"] and decision["applied_at"]
        assert decision["reasoning"] == "owner chose"
        [escalation] = history["escalations"]
        assert escalation["reason"] == "the owner must choose a schema"
        # The decision went through JetStream, with its idempotency key.
        msg = await nc.jetstream().get_last_msg(
            "agog_strategic_decisions", "agog.strategic.decisions.REQ-ACT-1"
        )
        assert msg.headers is not None
        # Signed, and its key tagged with the same secret (orchestrator.core.decision_auth).
        key = decision_auth.signing_key(SecretStr("test-token"))
        assert key is not None
        assert msg.headers["Nats-Msg-Id"] == decision_auth.msg_id(
            key, "REQ-ACT-1", body["decision_id"]
        )
        assert decision_auth.is_signed(key, msg.headers, msg.data)

        # retry from an earlier stage: REQUEST_CHANGES back to Cynthia.
        status, body = await api.post("/api/reqs/REQ-ACT-2/retry?wait=10", {"stage": "cynthia"})
        assert status == 200 and body["decision"] == "REQUEST_CHANGES", body
        assert body["restart_stage"] == 0
        await wait_stage(pg_dsn, "REQ-ACT-2", 2)  # through Cynthia and Sylvia again
        assert agents.agents_for("REQ-ACT-2")[-3:] == [("cynthia", 2), ("sylvia", 2), ("roy", 2)]

        # decide ESCALATE_HUMAN, then resume the ESCALATED REQ.
        status, body = await api.post(
            "/api/reqs/REQ-ACT-2/decide?wait=10",
            {"decision": "escalate_human", "reason": "Roy is stuck"},
        )
        assert status == 200 and body["req"]["status"] == "ESCALATED", body
        status, body = await api.post("/api/reqs/REQ-ACT-2/resume?wait=10", {})
        assert status == 200 and body["req"]["status"] == "IN_PROGRESS", body
        assert agents.agents_for("REQ-ACT-2")[-1] == ("roy", 3)

        # An idempotency key: sent twice, published and applied once.
        before = await _decisions_in_stream(nc)
        key = {"Idempotency-Key": "ops-cancel-1"}
        status, first, _ = await api.call(
            "POST", "/api/reqs/REQ-ACT-2/cancel?wait=10", {"reason": "withdrawn"}, headers=key
        )
        assert status == 200 and first["outcome"] == "applied", first
        assert first["req"]["status"] == "CANCELLED" and first["decision_id"] == "ops-cancel-1"
        status, again, _ = await api.call(
            "POST", "/api/reqs/REQ-ACT-2/cancel?wait=10", {"reason": "withdrawn"}, headers=key
        )
        assert status == 200 and again["duplicate"] is True and again["outcome"] == "applied"
        assert await _decisions_in_stream(nc) == before + 1
        status, body = await api.post("/api/reqs/REQ-ACT-2/cancel")
        assert status == 409 and "CANCELLED" in body["error"]
        rows = await _fetch(
            pg_dsn,
            "SELECT decision FROM strategic_decisions WHERE req_number = 'REQ-ACT-2' ORDER BY id",
        )
        assert [r["decision"] for r in rows] == [
            "REQUEST_CHANGES",
            "ESCALATE_HUMAN",
            "RETRY",
            "CANCEL",
        ]


async def test_engine_refusal_after_the_check_is_a_409(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    """A cancel and a retry both pass the check against the same state; the
    engine applies the cancel first and refuses the retry: the retry's
    ``?wait`` answers 409 with the engine's reason, and 202 without a wait."""
    await ScriptedAgents(nc, lambda a: None if a["agent"] == "roy" else happy(a)).start()
    async with (
        running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon,
        api_for(daemon) as api,
    ):
        await submit(nc, "REQ-RACE-1")
        await wait_stage(pg_dsn, "REQ-RACE-1", 2)
        holder = await asyncpg.connect(pg_dsn)
        try:
            lock = holder.transaction()
            await lock.start()
            # The engine waits on this row lock; the API's check reads past it.
            await holder.execute(
                "SELECT 1 FROM workflow_state WHERE req_number = 'REQ-RACE-1' FOR UPDATE"
            )
            status, cancel = await api.post("/api/reqs/REQ-RACE-1/cancel", {"reason": "stop"})
            assert status == 202 and cancel["outcome"] == "pending", cancel
            assert isinstance(cancel["seq"], int) and cancel["decision_id"]
            retry = asyncio.create_task(api.post("/api/reqs/REQ-RACE-1/retry?wait=15", {}))
            await asyncio.sleep(1.0)
            assert not retry.done()
            await lock.rollback()
        finally:
            await holder.close()
        status, body = await retry
        assert status == 409 and _is_error(body, "conflict"), body
        assert body["outcome"] == "rejected" and "CANCELLED" in body["error"]
        await wait_status(pg_dsn, "REQ-RACE-1", "CANCELLED")


# --- auth, errors ----------------------------------------------------------------------
async def test_reads_behind_the_token(nats_server: NatsServer, pg_dsn: str) -> None:
    settings = settings_for(nats_server.url, pg_dsn, api_read_auth=True)
    async with running_agogd(settings) as daemon, api_for(daemon) as api:
        for path in ("/api/reqs", "/api/reqs/REQ-R-1", "/api/streams", "/api/events"):
            for token in (None, "wrong"):
                status, body = await api.get(path, token=token)
                assert status == 401 and _is_error(body, "unauthorized"), (path, body)
        assert (await api.get("/api/reqs"))[0] == 200
        assert (await api.get("/api/reqs/REQ-R-1"))[0] == 404
        assert (await api.get(f"/api/reqs?token={TOKEN}", token=None))[0] == 200
        for path in ("/healthz", "/readyz"):
            assert (await api.get(path, token=None))[0] == 200
        async with api.session.get(f"{api.url}/api/events?token={TOKEN}&ping=1") as resp:
            assert resp.status == 200
            assert await resp.content.readline() == b"retry: 3000\n"
    async with (
        running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon,
        api_for(daemon) as api,
    ):
        assert (await api.get("/api/reqs", token=None))[0] == 200  # open by default


async def test_errors_are_json_never_a_traceback(nats_server: NatsServer, pg_dsn: str) -> None:
    async with (
        running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon,
        api_for(daemon) as api,
    ):
        status, body = await api.get("/api/no-such-route")
        assert status == 404 and _is_error(body, "not_found")
        status, body, headers = await api.call("DELETE", "/api/reqs")
        assert status == 405 and _is_error(body, "method_not_allowed")
        assert "POST" in headers["Allow"]
        status, body, _ = await api.call("POST", "/api/reqs", data=b"{" + b" " * (2 << 20) + b"}")
        assert status == 413 and _is_error(body, "too_large")

        status, _ = await api.post("/api/reqs", {"req_number": "REQ-ERR-1"})
        assert status == 201
        # A real fault: a table the history needs is gone.
        await _fetch(pg_dsn, "ALTER TABLE escalations RENAME TO escalations_gone")
        with capture_logs() as logs:
            status, body, headers = await api.call(
                "GET", "/api/reqs/REQ-ERR-1", headers={"X-Request-Id": "trace-me-1"}
            )
        assert status == 500 and _is_error(body, "internal"), body
        assert body["request_id"] == "trace-me-1" == headers["X-Request-Id"]
        text = json.dumps(body)
        for leak in ("Traceback", "escalations", "asyncpg", "File "):
            assert leak not in text
        [logged] = [e for e in logs if e["event"] == "api.internal_error"]
        assert logged["request_id"] == "trace-me-1" and logged["path"] == "/api/reqs/REQ-ERR-1"
        assert "UndefinedTableError" in logged["error"] and logged["exc_info"]
        # Without a request id from the client, one is made up and returned.
        status, body, headers = await api.call("GET", "/api/reqs/REQ-ERR-1")
        assert status == 500 and len(body["request_id"]) == 16
        assert headers["X-Request-Id"] == body["request_id"]
        # The rest of the API carries on.
        assert (await api.get("/api/reqs"))[0] == 200
        await _fetch(pg_dsn, "ALTER TABLE escalations_gone RENAME TO escalations")
        assert (await api.get("/api/reqs/REQ-ERR-1"))[0] == 200


# --- streams -----------------------------------------------------------------------------
async def test_streams_with_messages_bytes_and_lag(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    await ScriptedAgents(nc).start()
    async with (
        running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon,
        api_for(daemon) as api,
    ):
        await submit(nc, "REQ-STR-1")
        await wait_status(pg_dsn, "REQ-STR-1", "DEPLOYED")
        js = nc.jetstream()
        # A consumer of our own that reads nothing: its lag is every message.
        await js.add_consumer(
            "agog_requirements",
            durable_name="ops_audit",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
        )
        await submit(nc, "REQ-STR-2")

        async def requirements() -> dict[str, Any]:
            status, body = await api.get("/api/streams")
            assert status == 200, body
            return {s["stream"]: s for s in body["streams"]}["agog_requirements"]

        deadline = time.monotonic() + 10
        while True:
            stream = await requirements()
            consumers = {c["name"]: c for c in stream["consumers"]}
            if consumers["agogd_intake"]["lag"] == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        status, body = await api.get("/api/streams")
        assert status == 200 and body["nats"]["reachable"] is True
        assert body["nats"]["verdict"] == "ok"
        names = [s["stream"] for s in body["streams"]]
        assert sorted(names) == sorted(s.name for s in PIPELINE.streams)
        assert stream["messages"] == 2 and stream["bytes"] > 0
        assert consumers["ops_audit"]["lag"] == 2 and consumers["ops_audit"]["pending"] == 2
        assert consumers["agogd_intake"]["lag"] == 0
        assert stream["lag"] == 2
        research = {s["stream"]: s for s in body["streams"]}["agog_features_research"]
        assert research["messages"] >= 1
        assert [c["name"] for c in research["consumers"]] == ["agogd_deliverables"]


# --- live events ---------------------------------------------------------------------------
class SseReader:
    """Reads an SSE response into (event, data) pairs and comments."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.comments: list[str] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        event, data = "message", []
        async for raw in self.resp.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if data:
                    self.events.append((event, json.loads("\n".join(data))))
                event, data = "message", []
            elif line.startswith(":"):
                self.comments.append(line)
            elif line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])

    def named(self, name: str) -> list[dict[str, Any]]:
        return [d for e, d in self.events if e == name]

    async def until(self, check: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert not self.task.done(), "the stream ended"
            assert time.monotonic() < deadline, f"timed out; got {self.events[-5:]}"
            await asyncio.sleep(0.05)


async def test_live_events_over_sse(nats_server: NatsServer, nc: NATS, pg_dsn: str) -> None:
    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        req, agent, attempt = a["req_number"], a["agent"], a["attempt"]
        if (req, agent, attempt) == ("REQ-SSE-4", "sylvia", 1):
            return notice(agent, req, critique_verdict="REJECTED")
        if req == "REQ-SSE-3" or (req, agent, attempt) == ("REQ-SSE-4", "cynthia", 2):
            return None
        return happy(a)

    await ScriptedAgents(nc, script).start()
    async with aiohttp.ClientSession() as session:  # outlives agogd, to see the end
        async with running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon:
            api = Api(session, daemon.http.url)
            status, body = await api.get("/api/events?req=REQ-a.b")
            assert status == 400 and _is_error(body, "bad_request")
            status, body = await api.get("/api/events?ping=0")
            assert status == 400
            live = daemon.http.app[EVENT_STREAMS_KEY]
            mine = await api.session.get(f"{api.url}/api/events?req=REQ-SSE-1&ping=1")
            every = await api.session.get(f"{api.url}/api/events?heartbeats=1")
            assert mine.status == every.status == 200
            assert mine.headers["Content-Type"].startswith("text/event-stream")
            filtered, unfiltered = SseReader(mine), SseReader(every)
            await filtered.until(lambda: filtered.named("ready"))
            await unfiltered.until(lambda: unfiltered.named("ready"))
            assert filtered.named("ready") == [
                {
                    "subjects": [
                        "agog.orchestration.events.>",
                        "agog.strategic.escalations.>",
                        "agog.strategic.decisions.>",
                    ],
                    "req": ["REQ-SSE-1"],
                    "heartbeats": False,
                }
            ]
            assert len(live) == 2

            await api.post("/api/reqs", {"req_number": "REQ-SSE-1", "title": "Live"})
            await api.post("/api/reqs", {"req_number": "REQ-SSE-2"})
            await nc.jetstream().publish(
                "agog.orchestration.events.stage.heartbeat.cynthia.REQ-SSE-1", b'{"attempt": 1}'
            )

            def finished(reader: SseReader, req: str) -> bool:
                return any(
                    d["req_number"] == req and d["agent"] == "tim"
                    for d in reader.named("stage.completed")
                )

            await filtered.until(lambda: finished(filtered, "REQ-SSE-1"))
            await unfiltered.until(lambda: finished(unfiltered, "REQ-SSE-2"))
            await unfiltered.until(lambda: finished(unfiltered, "REQ-SSE-1"))

            # Only REQ-SSE-1's events, in order, with the documented fields.
            assert {d["req_number"] for _, d in filtered.events[1:]} == {"REQ-SSE-1"}
            kinds = [e for e, _ in filtered.events[1:]]
            assert kinds[0] == "workflow.started" and "workflow.completed" in kinds
            assert "stage.heartbeat" not in kinds  # left out unless asked for
            stage_events = [
                (e, d["agent"], d["status"])
                for e, d in filtered.events
                if e in ("stage.started", "stage.completed")
            ]
            expected = []
            for agent in [*SEVEN, "tim"]:
                expected += [
                    ("stage.started", agent, "running"),
                    ("stage.completed", agent, "done"),
                ]
            assert stage_events == expected
            completed = filtered.named("stage.completed")[0]
            assert completed == {
                "eventType": "stage.completed",
                "subject": "agog.orchestration.events.stage.completed.cynthia.REQ-SSE-1",
                "req_number": "REQ-SSE-1",
                "stage": "Research",
                "stage_index": 0,
                "agent": "cynthia",
                "attempt": 1,
                "status": "done",
                "reason": None,
                "timestamp": completed["timestamp"],
            }
            started = filtered.named("stage.started")[0]
            assert "instructions" not in started and "contextData" not in started
            assert started["deliverableSubject"] == "agog.deliverables.cynthia.research.REQ-SSE-1"
            assert filtered.named("workflow.completed")[0]["status"] == "DEPLOYED"
            # The other client saw both REQs, and the heartbeat it asked for.
            assert {d["req_number"] for _, d in unfiltered.events[1:]} >= {"REQ-SSE-1", "REQ-SSE-2"}
            [beat] = unfiltered.named("stage.heartbeat")
            assert (beat["agent"], beat["req_number"], beat["attempt"]) == (
                "cynthia",
                "REQ-SSE-1",
                1,
            )

            # A decision and its escalation show up live too.
            await submit(nc, "REQ-SSE-3")
            await wait_stage(pg_dsn, "REQ-SSE-3", 0)
            await api.post("/api/reqs/REQ-SSE-3/decide", {"decision": "ESCALATE_HUMAN"})
            await unfiltered.until(lambda: unfiltered.named("escalation"))
            [decided] = unfiltered.named("decision")
            assert (decided["req_number"], decided["decision"], decided["status"]) == (
                "REQ-SSE-3",
                "ESCALATE_HUMAN",
                "decided",
            )
            [escalation] = unfiltered.named("escalation")
            assert escalation["req_number"] == "REQ-SSE-3" and escalation["status"] == "ESCALATED"
            assert escalation["priority"] == "NEEDS_HUMAN_DECISION"

            # A gate that sends the work back: "rejected", live and in the list.
            await submit(nc, "REQ-SSE-4")
            await unfiltered.until(
                lambda: any(
                    d["req_number"] == "REQ-SSE-4" for d in unfiltered.named("stage.failed")
                )
            )
            [failed] = [
                d for d in unfiltered.named("stage.failed") if d["req_number"] == "REQ-SSE-4"
            ]
            assert (failed["agent"], failed["status"], failed["reason"]) == (
                "sylvia",
                "rejected",
                "critique rejected",
            )
            await unfiltered.until(
                lambda: (
                    ("REQ-SSE-4", "cynthia", 2)
                    in [
                        (d["req_number"], d["agent"], d["attempt"])
                        for d in unfiltered.named("stage.started")
                    ]
                )
            )
            status, listed = await api.get("/api/reqs?stage=cynthia")
            assert status == 200
            [row] = [r for r in listed["reqs"] if r["req_number"] == "REQ-SSE-4"]
            assert [(c["state"], c["attempt"]) for c in row["stages"][:3]] == [
                ("running", 2),
                ("rejected", 1),
                ("waiting", None),
            ]

            # Keep-alive comments while nothing happens (ping=1).
            quiet = len(filtered.comments)
            await asyncio.sleep(2.5)
            assert len(filtered.comments) >= quiet + 1
            assert filtered.comments[-1].startswith(": keep-alive ")

            # A client that goes away leaves no subscription behind.
            mine.close()
            await asyncio.gather(filtered.task, return_exceptions=True)
            deadline = time.monotonic() + 5
            while len(live) != 1:
                assert time.monotonic() < deadline, "the stream of a closed client is still live"
                await asyncio.sleep(0.05)
            [left] = live
            assert left.reqs is None and left.sent >= len(unfiltered.events) - 1
        # agogd stopped with a client still connected: it said bye, and exited 0.
        await asyncio.wait_for(asyncio.gather(unfiltered.task, return_exceptions=True), 10)
        assert unfiltered.events[-1] == ("bye", {"reason": "agogd is stopping"})
        every.close()
