"""Health watch and self-healing on a real Docker-API engine (podman's service)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import asyncpg
import pytest
from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from orchestrator.embedded import NatsServer
from orchestrator.embedded.engine import BUSYBOX_IMAGE, ContainerEngine
from tests.agents import collect, running_agogd, settings_for
from workers.adapters.engine_api import CALL_TIMEOUT, PROJECT_LABEL
from workers.infra.heal_policy import HealPolicy
from workers.infra.heal_store import HealStore
from workers.infra.health import HealthWatcher

PROJECT = "agogtest"


class Watch:
    """A running HealthWatcher and what it emitted."""

    def __init__(
        self,
        engine: ContainerEngine,
        policy: HealPolicy,
        store: HealStore | None = None,
        call_timeout: float = CALL_TIMEOUT,
    ) -> None:
        self.emitted: list[tuple[str, dict[str, Any]]] = []
        self.stopping = asyncio.Event()

        async def emit(name: str, details: dict[str, Any]) -> None:
            self.emitted.append((name, details))

        self.watcher = HealthWatcher(
            engine.url,
            [PROJECT],
            policy,
            emit,
            reconcile_interval=0.3,
            probe_timeout=5,
            store=store,
            call_timeout=call_timeout,
        )
        self.task = asyncio.ensure_future(self.watcher.run(self.stopping))

    def named(self, event: str, container: str) -> list[dict[str, Any]]:
        return [d for n, d in self.emitted if n == event and d["container"] == container]

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(self.task, 20)  # re-raises what killed the watcher


@pytest.fixture
async def docker(container_engine: ContainerEngine) -> AsyncIterator[aiodocker.Docker]:
    client = aiodocker.Docker(url=container_engine.url)
    made: list[str] = []
    client.made = made  # type: ignore[attr-defined]
    yield client
    for name in made:
        with contextlib.suppress(aiodocker.DockerError):
            await client.containers.container(name).delete(force=True)
    await client.close()


async def run_container(
    docker: aiodocker.Docker,
    cmd: list[str],
    *,
    labelled: bool = True,
    healthcheck: list[str] | None = None,
    binds: list[str] | None = None,
) -> str:
    name = f"agogtest-{uuid.uuid4().hex[:8]}"
    config: dict[str, Any] = {
        "Image": BUSYBOX_IMAGE,
        "Cmd": cmd,
        "Labels": {PROJECT_LABEL: PROJECT} if labelled else {"other": "yes"},
    }
    if binds:
        config["HostConfig"] = {"Binds": binds}
    if healthcheck:
        config["Healthcheck"] = {"Test": healthcheck, "Interval": 3_600_000_000_000}
    container = await docker.containers.create_or_replace(name=name, config=config)
    docker.made.append(name)  # type: ignore[attr-defined]
    await container.start()
    return name


async def crash(docker: aiodocker.Docker, name: str) -> None:
    """SIGKILL the container's process from the host, as a crash would. Not
    the engine's kill: podman may answer that only after the container has
    stopped for good, and the watcher restarts it first, so the call can
    wait for minutes (a CI run hung until pytest's 5-minute timeout)."""
    pid = (await state(docker, name))["Pid"]
    assert pid > 0, f"{name} is not running"
    os.kill(pid, signal.SIGKILL)


async def state(docker: aiodocker.Docker, name: str) -> dict[str, Any]:
    info = await docker.containers.container(name).show()
    return info["State"]  # type: ignore[no-any-return]


async def eventually(check: Any, timeout: float = 20) -> None:
    """Poll an async check (the engine offers nothing to wait on for these)."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_a_killed_container_is_restarted(
    container_engine: ContainerEngine, docker: aiodocker.Docker
) -> None:
    name = await run_container(docker, ["sleep", "600"])
    watch = Watch(container_engine, HealPolicy(backoff_base=0.1))
    try:
        await eventually(lambda: _true(watch.watcher.connected))
        await asyncio.sleep(0.5)  # the event stream is subscribed
        await crash(docker, name)

        async def restarted() -> bool:
            return (
                bool(watch.named("container.restarted", name))
                and (await state(docker, name))["Running"]
            )

        await eventually(restarted)
        details = watch.named("container.restarted", name)[0]
        # The event or the reconcile, whichever saw it first; restarted once.
        assert details["reason"] in ("died", "not running")
        assert details["attempt"] == 1 and details["exit_code"] == 137
    finally:
        await watch.stop()


async def test_an_unhealthy_container_is_restarted(
    container_engine: ContainerEngine, docker: aiodocker.Docker
) -> None:
    # Healthy while /tmp/ok exists; the command recreates it on each start.
    name = await run_container(
        docker,
        ["sh", "-c", "touch /tmp/ok; exec sleep 600"],
        healthcheck=["CMD-SHELL", "test -f /tmp/ok"],
    )
    watch = Watch(container_engine, HealPolicy(unhealthy_probes=2, backoff_base=0.1))
    try:
        await asyncio.sleep(1.0)
        assert not watch.named("container.restarted", name)  # healthy: left alone
        container = docker.containers.container(name)
        execute = await container.exec(["sh", "-c", "rm /tmp/ok"])
        async with execute.start(detach=False) as stream:
            while await stream.read_out() is not None:
                pass
        await eventually(lambda: _true(watch.named("container.restarted", name)))
        assert watch.named("container.restarted", name)[0]["reason"] == "unhealthy"
    finally:
        await watch.stop()


async def test_a_crash_loop_backs_off_then_escalates_once(
    container_engine: ContainerEngine, docker: aiodocker.Docker
) -> None:
    name = await run_container(docker, ["sh", "-c", "echo about to fail; exit 3"])
    policy = HealPolicy(budget=2, window=600, backoff_base=0.2)
    watch = Watch(container_engine, policy)
    try:
        await eventually(lambda: _true(watch.named("container.escalated", name)), 30)
        await asyncio.sleep(1.5)  # more deaths and reconciles: no second escalation
        escalations = watch.named("container.escalated", name)
        assert len(escalations) == 1
        assert escalations[0]["exit_code"] == 3
        assert any("about to fail" in line for line in escalations[0]["last_log_lines"])
        assert len(watch.named("container.restarted", name)) == 2  # the budget
    finally:
        await watch.stop()


async def test_replicas_share_one_restart_history_that_outlives_them(
    container_engine: ContainerEngine, docker: aiodocker.Docker, migrated_pool: asyncpg.Pool
) -> None:
    """Two watchers on one engine (two replicas) heal a crash loop as one:
    the budget's restarts and one escalation in all. A watcher started
    afterwards (agogd restarted) finds the budget spent and does nothing."""
    pool = migrated_pool
    name = await run_container(docker, ["sh", "-c", "exit 3"])
    policy = HealPolicy(budget=2, window=600, backoff_base=0.2)
    store = HealStore(pool)
    pair = [Watch(container_engine, policy, store) for _ in range(2)]
    later: Watch | None = None
    try:

        async def escalated() -> bool:
            return any(w.named("container.escalated", name) for w in pair)

        await eventually(escalated, 30)
        await asyncio.sleep(1.5)  # more deaths and reconciles by both
        for w in pair:
            await w.stop()
        restarts = sum(len(w.named("container.restarted", name)) for w in pair)
        escalations = sum(len(w.named("container.escalated", name)) for w in pair)
        assert (restarts, escalations) == (2, 1)

        later = Watch(container_engine, policy, store)
        await asyncio.sleep(1.5)  # several reconciles of the dead container
        assert later.emitted == []
        assert (await state(docker, name))["Status"] == "exited"
        row = await pool.fetchrow(
            "SELECT cardinality(restarts) AS n, escalated_at FROM heal_records"
            " WHERE container = $1",
            name,
        )
        assert row is not None and row["n"] == 2 and row["escalated_at"] is not None
    finally:
        for w in [*pair, *([later] if later else [])]:
            if not w.stopping.is_set():
                await w.stop()


async def test_a_container_removed_while_healed_is_not_a_lost_engine(
    container_engine: ContainerEngine, docker: aiodocker.Docker, migrated_pool: asyncpg.Pool
) -> None:
    """Compose or an operator may remove a container between the watcher's
    look and its act. The engine answers 404: the watcher logs it, keeps its
    connection and keeps no history for it (a CI run once saw a 404 taken
    for the engine going away)."""
    pool = migrated_pool
    watch = Watch(container_engine, HealPolicy(backoff_base=0.1), HealStore(pool))
    try:
        await eventually(lambda: _true(watch.watcher.connected))
        gone = uuid.uuid4().hex * 2
        await watch.watcher._failed(docker, gone, "agogtest-gone", "died", 1)
        assert watch.watcher.connected and watch.emitted == []
        assert (
            await pool.fetchval("SELECT count(*) FROM heal_records WHERE container_id = $1", gone)
            == 0
        )
        assert gone not in watch.watcher.records and gone not in watch.watcher.locks
    finally:
        await watch.stop()


async def test_a_removed_container_takes_its_history_with_it(
    container_engine: ContainerEngine, docker: aiodocker.Docker, migrated_pool: asyncpg.Pool
) -> None:
    """The removal event (podman: remove, Docker: destroy) drops the row:
    heal_records does not grow with every container compose ever replaced."""
    pool = migrated_pool
    name = await run_container(docker, ["sleep", "600"])
    watch = Watch(container_engine, HealPolicy(backoff_base=0.1), HealStore(pool))

    async def rows() -> int:
        return int(
            await pool.fetchval("SELECT count(*) FROM heal_records WHERE container = $1", name)
        )

    try:
        await eventually(lambda: _true(watch.watcher.connected))
        await asyncio.sleep(0.5)
        await crash(docker, name)
        await eventually(lambda: _true(watch.named("container.restarted", name)), 30)
        assert await rows() == 1
        cid = watch.named("container.restarted", name)[0]["container_id"]
        await docker.containers.container(name).delete(force=True)

        async def forgotten() -> bool:
            return await rows() == 0

        await eventually(forgotten, 30)
        assert watch.watcher.connected
        assert not any(k.startswith(cid) for k in watch.watcher.records)
    finally:
        await watch.stop()


async def test_a_container_that_cannot_start_is_escalated_without_a_reconnect(
    container_engine: ContainerEngine, docker: aiodocker.Docker, tmp_path: Path
) -> None:
    """The engine refuses the start (its bind mount's source is gone). That is
    the container's fault, not a lost engine: each attempt counts against the
    budget, then one escalation, and the watcher keeps its connection."""
    source = tmp_path / "data"
    source.mkdir()
    name = await run_container(docker, ["sh", "-c", "sleep 1; exit 3"], binds=[f"{source}:/data"])
    watch = Watch(container_engine, HealPolicy(budget=2, backoff_base=0.2))
    with capture_logs() as logs:
        try:
            await eventually(lambda: _true(watch.watcher.connected))
            source.rmdir()
            await eventually(lambda: _true(watch.named("container.escalated", name)), 30)
        finally:
            await watch.stop()
    events = [e["event"] for e in logs]
    assert "health.heal_failed" in events
    assert "health.engine_lost" not in events
    assert len(watch.named("container.escalated", name)) == 1
    failed = [e for e in logs if e["event"] == "health.heal_failed"]
    assert all(e["container"] == name and "/data" in e["error"] for e in failed)


async def test_a_container_outside_the_projects_is_untouched(
    container_engine: ContainerEngine, docker: aiodocker.Docker
) -> None:
    name = await run_container(docker, ["sleep", "600"], labelled=False)
    watch = Watch(container_engine, HealPolicy(backoff_base=0.1))
    try:
        await eventually(lambda: _true(watch.watcher.connected))
        await asyncio.sleep(0.5)
        await crash(docker, name)
        await asyncio.sleep(2.0)
        assert not (await state(docker, name))["Running"]
        assert not [d for _, d in watch.emitted if d["container"] == name]
    finally:
        await watch.stop()


async def test_the_watcher_reconnects_when_the_engine_comes_back(
    container_engine: ContainerEngine, docker: aiodocker.Docker
) -> None:
    name = await run_container(docker, ["sleep", "600"])
    watch = Watch(container_engine, HealPolicy(backoff_base=0.1))
    try:
        await eventually(lambda: _true(watch.watcher.connected))
        container_engine.stop()
        await eventually(lambda: _true(not watch.watcher.connected), 20)
        await asyncio.to_thread(container_engine.start)
        await eventually(lambda: _true(watch.watcher.connected), 40)
        await asyncio.sleep(0.5)
        fresh = aiodocker.Docker(url=container_engine.url)
        try:
            if (await state(fresh, name))["Running"]:
                await crash(fresh, name)
        finally:
            await fresh.close()
        await eventually(lambda: _true(watch.named("container.restarted", name)), 30)
    finally:
        await watch.stop()


async def _true(value: Any) -> bool:
    return bool(value)


async def test_a_hung_engine_is_given_up_on_and_the_watcher_heals_after_it(
    container_engine: ContainerEngine, docker: aiodocker.Docker
) -> None:
    """The engine stops answering (SIGSTOP) but keeps its socket open: every
    call would wait for ever. The watcher's calls time out, it lets go of the
    engine, and once the engine answers again it reconnects and heals."""
    name = await run_container(docker, ["sleep", "600"])
    watch = Watch(container_engine, HealPolicy(backoff_base=0.1), call_timeout=1.0)
    try:
        await eventually(lambda: _true(watch.watcher.connected))
        with container_engine.frozen():
            await eventually(lambda: _true(not watch.watcher.connected), 15)
        await eventually(lambda: _true(watch.watcher.connected), 40)
        await crash(docker, name)
        await eventually(lambda: _true(watch.named("container.restarted", name)), 30)
    finally:
        await watch.stop()


async def test_agogd_publishes_restarts_and_one_escalation(
    container_engine: ContainerEngine,
    docker: aiodocker.Docker,
    nats_server: NatsServer,
    pg_dsn: str,
    nc: NATS,
) -> None:
    """The watch inside agogd: each action an orchestration event on NATS, and
    the spent budget one escalation on agog.strategic.escalations.infra."""
    events, _ = await collect(nc, "agog.orchestration.events.infra.>")
    escalations, _ = await collect(nc, "agog.strategic.escalations.infra")
    settings = settings_for(
        nats_server.url,
        pg_dsn,
        docker_url=container_engine.url,
        heal_projects=[PROJECT],
        heal_budget=1,
        heal_reconcile_interval=0.3,
    )
    async with running_agogd(settings) as daemon:
        assert daemon.wiring.parts.health is not None
        name = await run_container(docker, ["sh", "-c", "echo bye; exit 4"])
        await eventually(lambda: _true(escalations), 30)
        await asyncio.sleep(1.0)
    assert [e["subject"] for e in events if e["container"] == name][:2] == [
        f"agog.orchestration.events.infra.restarted.{name}",
        f"agog.orchestration.events.infra.escalated.{name}",
    ]
    assert len(escalations) == 1
    assert escalations[0]["exit_code"] == 4 and escalations[0]["container"] == name
