"""Bugs the chaos soak (bench/chaos_soak.py, docs/chaos.md) found, one test each
(the races between replicas are in tests/test_chaos_races.py).

Replicas starting together on a fresh three-node cluster exited with a
traceback when a JetStream API request timed out while R3 streams were being
placed: the topology reconcile now gives a busy JetStream a few tries.

A Postgres restart stopped whole replicas: a pooled connection that gets the
server's "terminating connection" while idle fails its next query with
asyncpg's InternalClientError ("cannot switch to state 12; another operation
(2) is in progress"), which the outbox relay and marker and the memory
services did not expect: the service crashed, and agogd with it.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS

from orchestrator.core import registry
from orchestrator.embedded import NatsServer
from orchestrator.engine import outbox
from orchestrator.memory import prune
from orchestrator.memory.embedder import Embedder
from orchestrator.runtime.services import periodic
from orchestrator.runtime.state_log import StateLog
from orchestrator.runtime.topology import Reconciler


def _shut_down() -> asyncpg.InternalClientError:
    return asyncpg.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )


def _relay(stopping: asyncio.Event, poll_interval: float = 0.01) -> outbox.OutboxRelay:
    publisher = outbox.Publisher(object(), object())  # type: ignore[arg-type]
    return outbox.OutboxRelay(
        publisher,
        dsn="postgresql://nowhere/none",
        poll_interval=poll_interval,
        stopping=stopping,
        states=StateLog(),
    )


async def test_outbox_relay_survives_a_connection_postgres_shut_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stopping = asyncio.Event()
    calls = 0

    async def publish_batch(_pool: Any, _js: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise _shut_down()
        stopping.set()
        return 0

    async def listen(_dsn: Any, _wake: Any) -> None:
        return None

    monkeypatch.setattr(outbox, "publish_batch", publish_batch)
    monkeypatch.setattr(outbox, "_listen", listen)
    await asyncio.wait_for(_relay(stopping).run(), 10)
    assert calls == 2


class _Pool:
    """A pool whose first connection was shut down under it."""

    def __init__(self) -> None:
        self.calls = 0
        self.marked: list[list[str]] = []

    async def execute(self, sql: str, *args: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            raise _shut_down()
        self.marked.append(list(args[0]))


async def test_outbox_marker_keeps_its_rows_when_postgres_shut_down_its_connection() -> None:
    pool = _Pool()
    stopping = asyncio.Event()
    publisher = outbox.Publisher(pool, object())  # type: ignore[arg-type]
    publisher._done = ["evt:1"]
    marker = asyncio.create_task(publisher.mark(stopping))
    for _ in range(100):
        if pool.marked:
            break
        await asyncio.sleep(0.05)
    stopping.set()
    await asyncio.wait_for(marker, 10)
    assert pool.marked == [["evt:1"]]  # retried, not lost with a crashed marker


async def test_memory_retention_and_embedder_survive_a_connection_postgres_shut_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stopping, states = asyncio.Event(), StateLog()
    calls = 0

    async def prune_rows(*_: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise _shut_down()
        stopping.set()
        return 0

    monkeypatch.setattr(prune, "prune", prune_rows)
    # The retention service is this periodic pass (Memory.services).
    retention = periodic(
        lambda: prune.prune(object(), {}),  # type: ignore[arg-type]
        name="memory.retention",
        interval=0.01,
        first_delay=0.01,
        stopping=stopping,
        states=states,
    )
    await asyncio.wait_for(retention, 10)
    assert calls == 2
    assert states.get("memory.retention") == "ok"

    embedder = Embedder(SimpleNamespace(name="test"), interval=0.5)  # type: ignore[arg-type]

    async def drain(_pool: Any) -> int:
        raise _shut_down()

    monkeypatch.setattr(embedder, "drain", drain)
    assert await embedder._pass(states, object()) == 0.5  # type: ignore[arg-type]
    assert states.get("memory.embedder") == "failing"


async def test_topology_reconcile_gives_a_busy_jetstream_another_try(
    nats_server: NatsServer, nc: NATS
) -> None:
    reconciler = Reconciler(nc, registry.load())
    real = reconciler.js.stream_info
    calls = 0

    async def stream_info(name: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # as a request did while R3 streams were being placed
            raise nats.errors.TimeoutError
        return await real(name, *args, **kwargs)

    reconciler.js.stream_info = stream_info  # type: ignore[method-assign]
    outcome = await asyncio.wait_for(reconciler.reconcile(), 30)
    assert set(outcome.values()) <= {"created", "unchanged"} and calls > 2
    for spec in registry.load().streams:
        assert (await real(spec.name)).config.name == spec.name
