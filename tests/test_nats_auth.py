"""Least privilege on a real nats-server with the authorization agogd generates
from the registry: each forbidden publish, subscribe and JetStream API call
is refused; the allowed flows still carry a REQ to DEPLOYED; a decision can
never pass for the API's."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import SecretStr

from orchestrator.embedded import NatsServer
from orchestrator.runtime import nats_auth
from tests.agents import (
    PIPELINE,
    deliverable_subject,
    happy,
    running_agogd,
    settings_for,
    wait_status,
)

FOUND = nats_auth.identities(PIPELINE)
PASSWORDS = {ident.name: f"pw-{ident.name}-4f2a9c" for ident in FOUND}
AGENTS = [s.agent for s in (*PIPELINE.stages, *PIPELINE.followups)]


@pytest.fixture
def auth_server(tmp_path: Path) -> Any:
    server = NatsServer(
        tmp_path / "nats", extra_config=nats_auth.authorization_block(FOUND, PASSWORDS)
    ).start()
    yield server
    server.stop()


class Client:
    """A NATS connection as one identity, recording what the server refused."""

    def __init__(self, name: str) -> None:
        self.name, self.errors = name, []
        self.nc: NATS | None = None

    async def connect(self, url: str) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(
            url,
            user=self.name,
            password=PASSWORDS[self.name],
            error_cb=on_error,
            allow_reconnect=False,
            **({"inbox_prefix": nats_auth.AGOGD_INBOX} if self.name == "agogd" else {}),
        )
        return self

    async def refused(self, what: str, timeout: float = 10) -> str:
        """Wait until the server has reported a permissions violation naming ``what``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for error in self.errors:
                # nats-py reports the server's -ERR in lower case.
                if "permissions violation" in error.lower() and what.lower() in error.lower():
                    return error
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name}: no refusal of {what!r}; errors: {self.errors}")


@pytest.fixture
async def clients(auth_server: NatsServer) -> AsyncIterator[dict[str, Client]]:
    made: dict[str, Client] = {}

    async def get(name: str) -> Client:
        if name not in made:
            made[name] = await Client(name).connect(auth_server.url)
        return made[name]

    yield get  # type: ignore[misc]
    for client in made.values():
        if client.nc is not None:
            await client.nc.close()


def agogd_settings(server: NatsServer, dsn: str, **extra: Any) -> Any:
    return settings_for(
        server.url,
        dsn,
        nats_user="agogd",
        nats_password=SecretStr(PASSWORDS["agogd"]),
        **extra,
    )


async def test_no_credentials_no_connection(auth_server: NatsServer) -> None:
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(auth_server.url, allow_reconnect=False, max_reconnect_attempts=0)


async def test_an_agent_may_only_speak_for_itself(
    auth_server: NatsServer, clients: Any, pg_dsn: str
) -> None:
    async with running_agogd(agogd_settings(auth_server, pg_dsn)):
        cynthia = await clients("cynthia")
        nc = cynthia.nc
        js = nc.jetstream()
        # Allowed: her own deliverable (with JetStream's ack), heartbeat, assignments.
        ack = await js.publish(
            deliverable_subject("cynthia", "REQ-NOPE-1"), b'{"status": "COMPLETE"}', timeout=10
        )
        assert ack.stream == "agog_features_research"
        await nc.publish("agog.orchestration.events.stage.heartbeat.cynthia.REQ-NOPE-1", b"{}")
        await nc.subscribe("agog.orchestration.events.stage.started.cynthia.>")
        # Forbidden: another agent's deliverable, a decision, intake, admin API.
        await nc.publish(deliverable_subject("roy", "REQ-NOPE-1"), b"{}")
        await cynthia.refused("agog.deliverables.roy")
        await nc.publish("agog.strategic.decisions.REQ-NOPE-1", b'{"decision": "CANCEL"}')
        await cynthia.refused("agog.strategic.decisions")
        await nc.publish("agog.requirements.new", b'{"req_number": "REQ-FLOOD-1"}')
        await cynthia.refused("agog.requirements.new")
        with pytest.raises(Exception):  # noqa: B017  (no responder: a timeout)
            await nc.request("$JS.API.STREAM.PURGE.agog_requirements", b"", timeout=2)
        await cynthia.refused("$JS.API.STREAM.PURGE")
        # Forbidden reads: another agent's assignments, everything, agogd's inboxes.
        await nc.subscribe("agog.orchestration.events.stage.started.roy.>")
        await cynthia.refused("agog.orchestration.events.stage.started.roy")
        await nc.subscribe(">")
        await cynthia.refused('">"')
        await nc.subscribe(f"{nats_auth.AGOGD_INBOX}.>")
        await cynthia.refused(nats_auth.AGOGD_INBOX)


async def test_operators_decide_and_look_but_do_not_administer(
    auth_server: NatsServer, clients: Any, pg_dsn: str
) -> None:
    async with running_agogd(agogd_settings(auth_server, pg_dsn)):
        for name in ("operator", "strategic"):
            who = await clients(name)
            js = who.nc.jetstream()
            ack = await js.publish(
                "agog.strategic.decisions.REQ-NOPE-2", b'{"decision": "CANCEL"}', timeout=10
            )
            assert ack.stream == "agog_strategic_decisions"
            info = await js.stream_info("agog_requirements")
            assert info.config.name == "agog_requirements"
            with pytest.raises(Exception):  # noqa: B017
                await who.nc.request("$JS.API.STREAM.DELETE.agog_requirements", b"", timeout=2)
            await who.refused("$JS.API.STREAM.DELETE")
            await who.nc.publish(deliverable_subject("berry", "REQ-NOPE-2"), b"{}")
            await who.refused("agog.deliverables.berry")
        agogd = await clients("agogd")
        info = await agogd.nc.jetstream().stream_info("agog_requirements")
        assert info.state.messages == 0  # nothing was purged or deleted


async def _agent(client: Client, agent: str) -> None:
    """One agent on its own identity: answers its own assignments."""
    assert client.nc is not None
    nc = client.nc

    async def on_assignment(msg: Msg) -> None:
        assignment = json.loads(msg.data)
        reply = happy(assignment)
        if reply is not None:
            reply["worked_on"] = f"{assignment['stageIndex']}#{assignment['attempt']}"
            subject = deliverable_subject(agent, assignment["req_number"])
            await nc.jetstream().publish(subject, json.dumps(reply).encode(), timeout=10)

    await nc.subscribe(f"agog.orchestration.events.stage.started.{agent}.>", cb=on_assignment)


async def test_a_req_flows_with_every_agent_on_its_own_identity_and_no_decision_passes_for_the_api(
    auth_server: NatsServer, clients: Any, pg_dsn: str
) -> None:
    for agent in AGENTS:
        await _agent(await clients(agent), agent)
    operator = await clients("operator")
    js = operator.nc.jetstream()
    async with running_agogd(agogd_settings(auth_server, pg_dsn)) as daemon:
        await js.publish(
            "agog.requirements.new",
            json.dumps({"req_number": "REQ-AUTH-1", "title": "t", "priority": "P1"}).encode(),
            timeout=10,
        )
        await wait_status(pg_dsn, "REQ-AUTH-1", "DEPLOYED")
        # A REQ held at Cynthia's stage (her answer withheld) for the decisions.
        await operator.nc.close()
        operator = await Client("operator").connect(auth_server.url)
        js = operator.nc.jetstream()
        cynthia = await clients("cynthia")
        await cynthia.nc.close()
        await js.publish(
            "agog.requirements.new",
            json.dumps({"req_number": "REQ-AUTH-2", "title": "t"}).encode(),
            timeout=10,
        )
        await _wait_running(pg_dsn, "REQ-AUTH-2", 0, 1)
        # The spoof: "source": "api" and the operator's key, and the header the
        # API used to send, to take that key in JetStream's duplicate window.
        spoof = {"decision": "RETRY", "source": "api", "decision_id": "op-1"}
        await js.publish(
            "agog.strategic.decisions.REQ-AUTH-2",
            json.dumps(spoof).encode(),
            headers={"Nats-Msg-Id": "api-decision:REQ-AUTH-2:op-1"},
            timeout=10,
        )
        await _wait_running(pg_dsn, "REQ-AUTH-2", 0, 2)
        # The operator's own call with that key is applied, not "duplicate".
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"{daemon.http.url}/api/reqs/REQ-AUTH-2/cancel?wait=20",
                json={"reason": "withdrawn"},
                headers={"Authorization": "Bearer test-token", "Idempotency-Key": "op-1"},
            )
            body = await resp.json()
        assert resp.status == 200, body
        assert body["outcome"] == "applied" and not body["duplicate"]
        await wait_status(pg_dsn, "REQ-AUTH-2", "CANCELLED")
        await operator.nc.close()
    import asyncpg

    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT decision, payload FROM strategic_decisions WHERE req_number = 'REQ-AUTH-2'"
            " ORDER BY id"
        )
    finally:
        await conn.close()
    payloads = [(r["decision"], json.loads(r["payload"])) for r in rows]
    assert payloads[0][0] == "RETRY"
    assert payloads[0][1]["source"] == "nats" and payloads[0][1]["claimed_source"] == "api"
    assert "decision_id" not in payloads[0][1]
    assert payloads[1][0] == "CANCEL"
    assert payloads[1][1]["source"] == "api" and payloads[1][1]["decision_id"] == "op-1"


async def _wait_running(dsn: str, req: str, stage: int, attempt: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await conn.fetchval(
                "SELECT 1 FROM stage_attempts WHERE req_number = $1 AND stage = $2"
                " AND attempt = $3 AND status = 'RUNNING'",
                req,
                stage,
                attempt,
            ):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{req} stage {stage} attempt {attempt} never ran")
    finally:
        await conn.close()


def test_every_registry_agent_has_an_identity_and_only_agogd_has_the_api() -> None:
    names = [ident.name for ident in FOUND]
    assert names[0] == "agogd"
    assert set(AGENTS) | {r.agent for r in PIPELINE.reporters} | {"strategic", "operator"} == set(
        names[1:]
    )
    for ident in FOUND[1:]:
        assert ">" not in ident.publish and ">" not in ident.subscribe
        assert not any(p.startswith("$JS.API.STREAM.PURGE") for p in ident.publish)
        assert not any(
            p.startswith("$JS.API") and "INFO" not in p and "NAMES" not in p and "LIST" not in p
            for p in ident.publish
        ), ident


AGOGD_CLI = str(Path(sys.executable).parent / "agogd")


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
    return subprocess.run(
        [AGOGD_CLI, *args], capture_output=True, text=True, env={**clean, **env}, timeout=60
    )


async def test_the_compose_authorization_and_an_agents_creds_file_work_on_a_real_server(
    tmp_path: Path,
) -> None:
    """`agogd nats-auth-config` (agogd's password from nats-server's environment)
    and `agogd nats-creds AGENT`, as the README says to use them."""
    data_dir = tmp_path / "data"
    made = _cli("nats-auth-config", "--credentials", str(data_dir / "nats-credentials.json"))
    assert made.returncode == 0, made.stderr
    assert "$NATS_AGOGD_PASSWORD" in made.stdout and "pw-" not in made.stdout
    server = NatsServer(tmp_path / "nats", extra_config='include "auth.conf"')
    server.data_dir.mkdir(parents=True)
    (server.data_dir / "auth.conf").write_text(made.stdout)
    os.environ["NATS_AGOGD_PASSWORD"] = "from-the-environment-8d1f"
    try:
        server.start()
    finally:
        del os.environ["NATS_AGOGD_PASSWORD"]
    try:
        agogd = await nats.connect(
            server.url, user="agogd", password="from-the-environment-8d1f", allow_reconnect=False
        )
        await agogd.close()
        creds = _cli("nats-creds", "cynthia", "--data-dir", str(data_dir), "--url", server.url)
        assert creds.returncode == 0, creds.stderr
        fields = dict(
            line.split("=", 1) for line in creds.stdout.splitlines() if not line.startswith("#")
        )
        assert fields["NATS_USER"] == "cynthia" and fields["NATS_URL"] == server.url
        nc = await nats.connect(
            server.url, user="cynthia", password=fields["NATS_PASSWORD"], allow_reconnect=False
        )
        await nc.subscribe("agog.orchestration.events.stage.started.cynthia.>")
        await nc.flush()
        await nc.close()
        unknown = _cli("nats-creds", "mallory", "--data-dir", str(data_dir))
        assert unknown.returncode == 2 and "no NATS identity 'mallory'" in unknown.stderr
    finally:
        server.stop()


async def test_an_intake_flood_is_capped_and_never_starves_p0(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    """Twenty P3 intakes, then a P0, with room for three to wait: the rest are
    refused with their reason, the P0 is taken and admitted first."""
    import asyncpg

    js = nc.jetstream()
    settings = settings_for(nats_server.url, pg_dsn, intake_max_pending=3, max_in_flight=1)
    async with running_agogd(settings):
        for n in range(20):
            body = {"req_number": f"REQ-FLOOD-{n}", "title": "flood", "priority": "P3"}
            await js.publish("agog.requirements.new", json.dumps(body).encode())
        p0 = {"req_number": "REQ-URGENT-1", "title": "urgent", "priority": "P0"}
        await js.publish("agog.requirements.new", json.dumps(p0).encode())
        conn = await asyncpg.connect(pg_dsn)
        try:
            deadline = time.monotonic() + 30
            while True:
                settled = await conn.fetchval(
                    "SELECT count(*) FROM processed_messages WHERE stream = 'agog_requirements'"
                    " AND outcome <> 'processing'"
                )
                if settled == 21:
                    break
                assert time.monotonic() < deadline, f"only {settled} intakes settled"
                await asyncio.sleep(0.05)
            rows = await conn.fetch("SELECT req_number, status FROM workflow_state")
            refused = await conn.fetch(
                "SELECT detail FROM processed_messages WHERE outcome = 'rejected'"
            )
            # Three P3s were let in to wait (a fourth if the one slot took the
            # first before the others came); every other one was refused. The
            # slot may have taken one of the three since, after the quota's count.
            statuses = {r["req_number"]: r["status"] for r in rows}
            urgent = statuses.pop("REQ-URGENT-1")
            assert len(statuses) in (3, 4), statuses
            assert list(statuses.values()).count("PENDING") >= len(statuses) - 1, statuses
            assert len(refused) == 20 - len(statuses), statuses
            assert all(r["detail"].startswith("intake_quota:") for r in refused)
            # The P0 was taken, and goes first as soon as the slot is free.
            running = [r for r, s in statuses.items() if s == "IN_PROGRESS"]
            if urgent != "IN_PROGRESS":
                (busy,) = running
                await js.publish(
                    f"agog.strategic.decisions.{busy}", json.dumps({"decision": "CANCEL"}).encode()
                )
            await wait_status(pg_dsn, "REQ-URGENT-1", "IN_PROGRESS")
            # No waiting P3 was admitted ahead of it.
            waiting = await conn.fetchval(
                "SELECT count(*) FROM workflow_state WHERE status = 'PENDING'"
            )
            assert waiting == list(statuses.values()).count("PENDING")
        finally:
            await conn.close()
