"""Faults: SIGKILL at random points, and several replicas at once.

Both run agogd as real processes against real nats-server and PostgreSQL,
with scripted agents answering every assignment.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter

import asyncpg
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from tests.agents import ScriptedAgents, submit

FINAL = 8  # seven stages and Tim


def _env(nats_server: NatsServer, dsn: str) -> dict[str, str]:
    return {
        "AGOG_NATS_URL": nats_server.url,
        "AGOG_POSTGRES_DSN": dsn,
        "AGOG_MAX_IN_FLIGHT": "50",
        "AGOG_TIMEOUT_SCAN_INTERVAL": "0.2",
        "AGOG_DISPATCH_INTERVAL": "0.2",
        "AGOG_OUTBOX_POLL_INTERVAL": "0.2",
    }


async def _statuses(dsn: str) -> Counter[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return Counter(r["status"] for r in await conn.fetch("SELECT status FROM workflow_state"))
    finally:
        await conn.close()


async def _stored_assignments(nc: NATS) -> list[tuple[str, str | None]]:
    """(subject + attempt, Nats-Msg-Id) of every stored stage assignment."""
    js = nc.jetstream()
    sub = await js.subscribe("agog.orchestration.events.stage.started.>", ordered_consumer=True)
    out: list[tuple[str, str | None]] = []
    while True:
        try:
            msg = await sub.next_msg(timeout=1)
        except TimeoutError:
            break
        body = json.loads(msg.data)
        key = f"{body['req_number']}:{body['stageIndex']}:{body['attempt']}"
        out.append((key, (msg.headers or {}).get("Nats-Msg-Id")))
    await sub.unsubscribe()
    return out


def _check_assignments(stored: list[tuple[str, str | None]], reqs: list[str]) -> None:
    by_key = Counter(key for key, _ in stored)
    assert by_key and max(by_key.values()) == 1, "an assignment was stored twice"
    for key, msg_id in stored:
        assert msg_id == f"assign:{key}", (key, msg_id)
    for req in reqs:
        assert sum(1 for key in by_key if key.startswith(f"{req}:")) >= FINAL


async def _wait_all_deployed(dsn: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await _statuses(dsn))["DEPLOYED"] == count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not all deployed: {await _statuses(dsn)}")


async def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    rng = random.Random(20261123)
    await ScriptedAgents(nc, max_delay=0.3).start()
    reqs: list[str] = []
    daemon = DaemonProcess(_env(nats_server, pg_dsn)).start()
    kills = 0
    try:
        daemon.wait_ready(60)
        for wave in range(6):
            batch = [f"REQ-CRASH-{wave}-{i}" for i in range(6)]
            reqs += batch
            for req in batch:
                await submit(nc, req)
            await asyncio.sleep(rng.uniform(0.05, 0.8))  # REQs are mid-pipeline now
            assert (await _statuses(pg_dsn))["DEPLOYED"] < len(reqs), "nothing in flight"
            daemon.signal(signal.SIGKILL)
            daemon.wait_exit(10)
            kills += 1
            daemon = DaemonProcess(_env(nats_server, pg_dsn)).start()
            daemon.wait_ready(60)
        await _wait_all_deployed(pg_dsn, len(reqs), 120)
    finally:
        daemon.stop()
    assert kills == 6
    assert await _statuses(pg_dsn) == Counter({"DEPLOYED": len(reqs)})
    _check_assignments(await _stored_assignments(nc), reqs)


async def test_two_replicas_share_the_work_without_double_transitions(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    await ScriptedAgents(nc).start()
    reqs = [f"REQ-REPL-{i:02d}" for i in range(20)]
    # AGOG_MAX_IN_FLIGHT is for the whole cluster, not per replica.
    env = {**_env(nats_server, pg_dsn), "AGOG_MAX_IN_FLIGHT": "3"}
    replicas = [DaemonProcess(env).start() for _ in range(2)]
    in_flight: list[int] = []
    watcher = await asyncpg.connect(pg_dsn)
    try:
        for d in replicas:
            d.wait_ready(60)
        for req in reqs:
            await submit(nc, req)
        deadline = time.monotonic() + 120
        while (await _statuses(pg_dsn))["DEPLOYED"] < len(reqs):
            assert time.monotonic() < deadline, await _statuses(pg_dsn)
            in_flight.append(
                await watcher.fetchval(
                    "SELECT count(*) FROM workflow_state WHERE status = 'IN_PROGRESS'"
                )
            )
            await asyncio.sleep(0.01)
    finally:
        await watcher.close()
        for d in replicas:
            d.stop()
    assert max(in_flight) == 3, Counter(in_flight)
    conn = await asyncpg.connect(pg_dsn)
    try:
        attempts = await conn.fetch("SELECT req_number, stage, attempt FROM stage_attempts")
        started = await conn.fetch(
            "SELECT req_number, count(*) AS n FROM workflow_events"
            " WHERE kind = 'stage.started' GROUP BY req_number"
        )
    finally:
        await conn.close()
    assert len(attempts) == len(reqs) * FINAL and {r["attempt"] for r in attempts} == {1}
    assert {r["n"] for r in started} == {FINAL}
    _check_assignments(await _stored_assignments(nc), reqs)
