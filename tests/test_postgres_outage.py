"""A Postgres outage longer than a message's deliveries last loses nothing.

The engine used to nak a batch it could not commit, with a 2 s delay: each
try spent one of the message's ``max_deliver`` deliveries, so an outage of a
minute (20 tries) made JetStream give up on an agent's finished work, and the
REQ sat until its stage timed out hours later. Now a batch waits for Postgres
with its messages kept in progress, and so do the messages fetched behind
it. Here ``max_deliver`` is 3 and the ack wait 4 s, so the old behaviour
would have lost the first notice after about 6 s and handed the second back
after 4; the outage lasts 10 s.
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
ACK_WAIT = 4  # seconds: a message fetched and left alone comes back after this
OUTAGE = 10.0  # seconds: past MAX_DELIVER naks 2 s apart, and past two ack waits


def few_deliveries(tmp_path: Path) -> Path:
    """The registry with the engine's consumers at 3 deliveries and a 4 s ack wait."""
    text = PIPELINE_FILE.read_text()
    head, sep, tail = text.partition("[consumer_defaults]")
    assert 'ack_wait = "60s"\nmax_deliver = 20' in tail
    tail = tail.replace(
        'ack_wait = "60s"\nmax_deliver = 20',
        f'ack_wait = "{ACK_WAIT}s"\nmax_deliver = {MAX_DELIVER}',
        1,
    )
    path = tmp_path / "pipeline.toml"
    path.write_text(head + sep + tail)
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
        req, other = "REQ-OUTAGE-1", "REQ-OUTAGE-2"
        for r in (req, other):
            await js.publish("agog.requirements.new", json.dumps({"req_number": r}).encode())
        await wait_for(lambda: assigned.count("cynthia") == 2, 60, "Cynthia's assignments")

        pg.stop()
        stage = pipeline.stage_for_agent("cynthia")
        assert stage is not None

        async def finish(req: str) -> None:
            notice = {"agent": "cynthia", "req_number": req, "status": "COMPLETE", "summary": "ok"}
            await js.publish(pipeline.deliverable_subject(stage, req), json.dumps(notice).encode())

        await finish(req)
        started = time.monotonic()
        # The first notice's batch is waiting for Postgres when the second
        # arrives: that one waits in the consumer's feed, and must not come
        # back after its ack wait either.
        await wait_for(lambda: daemon.named("batch.waiting_for_postgres"), 30, "the wait")
        await finish(other)
        await wait_for(lambda: time.monotonic() - started > OUTAGE, OUTAGE + 5, "the outage")
        held = await js.consumer_info(stage.stream, "agogd_deliverables")
        # Both held by agogd the whole time, never handed back: a nak or a
        # lapsed ack wait would show as a redelivery here.
        assert (held.num_ack_pending, held.num_redelivered) == (2, 0), held
        assert "sylvia" not in assigned

        pg.start()
        await wait_for(
            lambda: assigned.count("sylvia") == 2, 60, "Sylvia's assignments after the outage"
        )
        done = await js.consumer_info(stage.stream, "agogd_deliverables")
        assert (done.num_ack_pending, done.num_redelivered) == (0, 0), done
        conn = await asyncpg.connect(pg.dsn())
        try:
            closed = await conn.fetch(
                "SELECT req_number, attempt, status FROM stage_attempts WHERE stage = 0"
                " ORDER BY req_number"
            )
        finally:
            await conn.close()
        assert [tuple(r) for r in closed] == [(req, 1, "COMPLETE"), (other, 1, "COMPLETE")]
        assert daemon.readyz() == 200
        await nc.close()
    finally:
        pg.stop()
