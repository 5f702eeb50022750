"""A Postgres outage longer than a message's deliveries last loses nothing.

The engine used to nak a batch it could not commit, with a 2 s delay: each
try spent one of the message's ``max_deliver`` deliveries, so an outage of a
minute (20 tries) made JetStream give up on an agent's finished work, and the
REQ sat until its stage timed out hours later. Now a batch waits for Postgres
with its messages kept in progress. Here ``max_deliver`` is 3, so the old
behaviour would have lost the notice after about 6 s; the outage lasts 10 s.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import nats

from orchestrator.core import registry
from orchestrator.embedded import NatsServer, PostgresServer
from orchestrator.embedded.daemon_proc import DaemonProcess

PIPELINE_FILE = Path(__file__).resolve().parents[1] / "orchestrator" / "core" / "pipeline.toml"
MAX_DELIVER = 3
OUTAGE = 10.0  # seconds: past MAX_DELIVER naks 2 s apart


def few_deliveries(tmp_path: Path) -> Path:
    text = PIPELINE_FILE.read_text()
    assert "max_deliver = 20" in text
    path = tmp_path / "pipeline.toml"
    path.write_text(text.replace("max_deliver = 20", f"max_deliver = {MAX_DELIVER}", 1))
    return path


async def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_a_notice_outlives_a_postgres_outage_longer_than_its_deliveries(
    tmp_path: Path, nats_server: NatsServer, daemons: list[DaemonProcess]
) -> None:
    pg = PostgresServer(tmp_path / "pg", durable=True).start()
    try:
        pipeline = registry.load(few_deliveries(tmp_path))
        daemon = DaemonProcess(
            {
                "AGOG_PIPELINE_FILE": str(tmp_path / "pipeline.toml"),
                "AGOG_NATS_URL": nats_server.url,
                "AGOG_POSTGRES_DSN": pg.dsn(),
                "AGOG_DISPATCH_INTERVAL": "0.2",
                "AGOG_EMBEDDING_PROVIDER": "none",
            }
        ).start()
        daemons.append(daemon)
        daemon.wait_ready(60)
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        assigned: list[str] = []

        async def on_assignment(msg: Any) -> None:
            assigned.append(json.loads(msg.data)["agent"])

        await nc.subscribe("agog.orchestration.events.stage.started.>", cb=on_assignment)
        req = "REQ-OUTAGE-1"
        await js.publish("agog.requirements.new", json.dumps({"req_number": req}).encode())
        await wait_for(lambda: "cynthia" in assigned, 60, "Cynthia's assignment")

        pg.stop()
        stage = pipeline.stage_for_agent("cynthia")
        assert stage is not None
        notice = {"agent": "cynthia", "req_number": req, "status": "COMPLETE", "summary": "done"}
        await js.publish(pipeline.deliverable_subject(stage, req), json.dumps(notice).encode())
        started = time.monotonic()
        await wait_for(lambda: time.monotonic() - started > OUTAGE, OUTAGE + 5, "the outage")
        held = await js.consumer_info(stage.stream, "agogd_deliverables")
        # Held by agogd the whole time, never handed back (naks would show here).
        assert (held.num_ack_pending, held.num_redelivered) == (1, 0), held
        assert "sylvia" not in assigned
        assert daemon.named("batch.waiting_for_postgres"), "the wait was not logged"

        pg.start()
        await wait_for(lambda: "sylvia" in assigned, 60, "Sylvia's assignment after the outage")
        done = await js.consumer_info(stage.stream, "agogd_deliverables")
        assert (done.num_ack_pending, done.delivered.stream_seq) == (0, 1), done
        conn = await asyncpg.connect(pg.dsn())
        try:
            closed = await conn.fetch(
                "SELECT attempt, status FROM stage_attempts WHERE req_number = $1 AND stage = 0",
                req,
            )
        finally:
            await conn.close()
        assert [(r["attempt"], r["status"]) for r in closed] == [(1, "COMPLETE")]
        assert daemon.readyz() == 200
        await nc.close()
    finally:
        pg.stop()
