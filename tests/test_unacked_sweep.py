"""A notice handed to an agogd that was then killed is applied by the next
one at once, not after the consumer's 60 s ack wait, and only once.

Real nats-server, PostgreSQL and agogd processes: the first agogd is killed
(SIGKILL, by a failpoint) with a fetched deliverable batch in hand, before it
applied anything; JetStream keeps that notice pending until its ack wait.
"""

from __future__ import annotations

import json
import time

import asyncpg
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from tests.agents import PIPELINE, collect, deliverable_subject, notice, submit, until

REQ = "REQ-UNACKED-1"
ACK_WAIT = PIPELINE.consumers[0].ack_wait


def _env(nats_server: NatsServer, dsn: str, **extra: str) -> dict[str, str]:
    return {"AGOG_NATS_URL": nats_server.url, "AGOG_POSTGRES_DSN": dsn, **extra}


async def test_a_killed_agogds_unacked_notice_is_applied_at_restart_and_once(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    assignments, sub = await collect(nc, "agog.orchestration.events.stage.started.>")
    first = DaemonProcess(
        _env(nats_server, pg_dsn, AGOG_FAILPOINTS="engine.fetched.agogd_deliverables")
    ).start()
    second: DaemonProcess | None = None
    conn = await asyncpg.connect(pg_dsn)
    try:
        first.wait_ready(60)
        await submit(nc, REQ)

        async def started(agent: str) -> list[dict]:  # type: ignore[type-arg]
            return [a for a in assignments if a["req_number"] == REQ and a["agent"] == agent]

        await until(lambda: started("cynthia"), 30, "cynthia's assignment")
        await nc.jetstream().publish(
            deliverable_subject("cynthia", REQ), json.dumps(notice("cynthia", REQ)).encode()
        )
        first.wait_exit(30)  # killed itself with the notice fetched, nothing applied
        assert any("failpoint.hit" in line for line in first.lines)
        info = await nc.jetstream().consumer_info("agog_features_research", "agogd_deliverables")
        assert info.num_ack_pending == 1, "the notice is no longer pending at the consumer"

        restarted = time.monotonic()
        second = DaemonProcess(_env(nats_server, pg_dsn)).start()
        second.wait_ready(60)
        await until(lambda: started("sylvia"), ACK_WAIT / 2, "sylvia's assignment")
        took = time.monotonic() - restarted
        assert took < ACK_WAIT / 2, f"the stage advanced after {took:.1f} s: the ack wait"
        assert second.named("unacked.applied"), "not the sweep's doing"

        # JetStream redelivers the notice once its ack wait is out: it is found
        # applied, acked, and the consumer has nothing pending; no stage twice.
        async def settled() -> bool:
            i = await nc.jetstream().consumer_info("agog_features_research", "agogd_deliverables")
            return i.num_ack_pending == 0

        await until(settled, ACK_WAIT + 60, "the redelivered notice acked")
        assert len(await started("sylvia")) == 1
        claims = await conn.fetchval(
            "SELECT count(*) FROM processed_messages WHERE stream = 'agog_features_research'"
        )
        attempts = await conn.fetchval(
            "SELECT count(*) FROM stage_attempts WHERE req_number = $1 AND agent = 'sylvia'", REQ
        )
        assert (claims, attempts) == (1, 1)
        assert second.named("message.duplicate"), "the redelivery was not seen as applied"
    finally:
        await conn.close()
        await sub.unsubscribe()
        first.stop()
        if second is not None:
            second.stop()
