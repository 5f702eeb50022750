"""The workers' consumer services on a real Runtime (nats-server, Postgres),
without a whole agogd: each message is settled by the outcome its handler
returns, and a malformed one is rejected once, with the shared event."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy, PubAck

from orchestrator.embedded import NatsServer
from orchestrator.runtime.context import Runtime
from orchestrator.runtime.topology import Reconciler
from tests.agents import PIPELINE, runtime_of, settings_for
from workers.infra import report
from workers.runner import service as runner_service


@pytest.fixture
async def rt(
    nats_server: NatsServer, nc: NATS, migrated_pool: asyncpg.Pool, pg_dsn: str
) -> AsyncIterator[Runtime]:
    await Reconciler(nc, PIPELINE).reconcile()
    settings = settings_for(nats_server.url, pg_dsn, demo=True)
    runtime = runtime_of(settings, migrated_pool, nc)
    yield runtime
    runtime.stopping.set()


async def settled(nc: NATS, stream: str, consumer: str, last: PubAck) -> None:
    """Wait until every message up to ``last`` is acked or term'd, none redelivered."""
    deadline = time.monotonic() + 10
    while True:
        info = await nc.jetstream().consumer_info(stream, consumer)
        if info.ack_floor.stream_seq >= last.seq and info.num_ack_pending == 0:
            assert info.num_redelivered == 0
            return
        assert time.monotonic() < deadline, f"not settled: {info}"
        await asyncio.sleep(0.05)


async def rejected(sub: Subscription, by: str, bad: PubAck) -> dict:
    msg = await sub.next_msg(timeout=10)
    assert (
        msg.headers is not None and msg.headers["Nats-Msg-Id"] == f"reject:{bad.stream}:{bad.seq}"
    )
    event = json.loads(msg.data)
    assert (event["eventType"], event["by"], event["stream_seq"]) == (
        "message.rejected",
        by,
        bad.seq,
    )
    return event


async def stop(rt: Runtime, tasks: list[asyncio.Task[None]]) -> None:
    rt.stopping.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)


async def test_no_runner_without_agents(rt: Runtime) -> None:
    assert (
        runner_service.build(replace(rt, settings=rt.settings.model_copy(update={"demo": False})))
        is None
    )


async def test_the_runner_terms_a_bad_assignment_and_acks_a_stale_one(rt: Runtime) -> None:
    runner = runner_service.build(rt)
    assert runner is not None
    every = [*PIPELINE.stages, *PIPELINE.followups]
    assert set(runner.services()) == {f"runner:{s.agent}" for s in every} | {"runner-cancels"}
    stage = every[0]
    spec = PIPELINE.runner_consumer(stage.agent)
    rejections = await rt.nc.subscribe(PIPELINE.subjects["rejection"])
    tasks = [asyncio.create_task(runner.services()[f"runner:{stage.agent}"]())]
    js = rt.nc.jetstream()
    bad = await js.publish(PIPELINE.subject("assignment", agent=stage.agent, req="REQ-BAD-1"), b"{")
    # No workflow in Postgres has this attempt running: nothing to do, acked.
    stale = await js.publish(
        PIPELINE.subject("assignment", agent=stage.agent, req="REQ-STALE-1"),
        json.dumps({"req_number": "REQ-STALE-1", "agent": stage.agent, "attempt": 1}).encode(),
    )
    event = await rejected(rejections, "runner", bad)
    assert event["reason_code"] == "bad_assignment" and event["payload_excerpt"] == "{"
    await settled(rt.nc, bad.stream, spec.name, stale)
    cfg = (await js.consumer_info(bad.stream, spec.name)).config
    assert cfg.deliver_policy == DeliverPolicy.ALL
    assert cfg.max_ack_pending == max(rt.settings.runner_per_agent * 4, 16)
    await stop(rt, tasks)


async def test_report_requests_answer_a_request_and_reject_a_bad_one(rt: Runtime) -> None:
    requests = report.build(rt)
    assert requests is not None
    reporter = report.reporter_of(PIPELINE)
    rejections = await rt.nc.subscribe(PIPELINE.subjects["rejection"])
    reports = await rt.nc.subscribe(PIPELINE.deliverable_subject(reporter, "shop"))
    tasks = [asyncio.create_task(requests.run())]
    js = rt.nc.jetstream()
    template = PIPELINE.subjects[report.REQUEST_SUBJECT]
    bad = await js.publish(template.format(feature="shop"), b"[1]")
    good = await js.publish(template.format(feature="shop"), b'{"requested_by": "test"}')
    event = await rejected(rejections, "infra-report", bad)
    assert event["reason_code"] == "wrong_schema"
    published = json.loads((await reports.next_msg(timeout=30)).data)
    assert published["report"]["requested_by"] == "test"
    await settled(rt.nc, good.stream, requests.consumer.name, good)
    assert requests.answered == 1
    await stop(rt, tasks)
