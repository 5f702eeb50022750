"""Scripted agents and an in-process agogd for end-to-end tests (test helper).

The agents are real NATS clients: they read stage assignments from
``agog.orchestration.events.stage.started.>`` and publish real completion
notices on ``agog.deliverables.<agent>.<role>.<REQ>`` through JetStream.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from orchestrator.core import registry
from orchestrator.embedded import seed_notices
from orchestrator.runtime.context import Runtime
from orchestrator.runtime.daemon import Daemon
from orchestrator.runtime.settings import Settings
from orchestrator.runtime.state_log import StateLog
from orchestrator.wiring import make_daemon

PIPELINE = registry.load()
Script = Callable[[dict[str, Any]], dict[str, Any] | None]


def notice(agent: str, req: str, status: str = "COMPLETE", **extra: Any) -> dict[str, Any]:
    """A completion notice in the seeds' shape, with sensible gate fields."""
    return seed_notices.notice(PIPELINE, agent, req, status, **extra)


def happy(assignment: dict[str, Any]) -> dict[str, Any] | None:
    return notice(assignment["agent"], assignment["req_number"])


def deliverable_subject(agent: str, req: str) -> str:
    stage = PIPELINE.stage_for_agent(agent)
    assert stage is not None
    return PIPELINE.deliverable_subject(stage, req)


class ScriptedAgents:
    """Answers every assignment with ``script(assignment)`` (None: stay silent).

    Like the seeds' agents, the answers name no ``attempt``. A real agent's
    answer to a rework differs from its first one (it worked on the fixes);
    a canned one would be the same text, which agogd rightly takes for a late
    copy of the first. So each answer says which assignment it worked on
    (``worked_on``), unless the script set that itself.
    """

    def __init__(self, nc: NATS, script: Script = happy, max_delay: float = 0.0) -> None:
        self.nc, self.script, self.max_delay = nc, script, max_delay
        self._rng = random.Random(7)
        self._pending: set[asyncio.Task[None]] = set()
        self.assignments: list[dict[str, Any]] = []
        self._sub: Any = None

    async def start(self) -> ScriptedAgents:
        self._sub = await self.nc.subscribe(
            "agog.orchestration.events.stage.started.>", cb=self._on_assignment
        )
        return self

    async def _on_assignment(self, msg: Msg) -> None:
        assignment = json.loads(msg.data)
        self.assignments.append(assignment)
        reply = self.script(assignment)
        if reply is None:
            return
        subject = deliverable_subject(assignment["agent"], assignment["req_number"])
        reply = {"worked_on": f"{assignment['stageIndex']}#{assignment['attempt']}", **reply}
        if self.max_delay:  # agents that take a while, answering out of order
            task = asyncio.create_task(self._later(subject, reply))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        else:
            await self.nc.jetstream().publish(subject, json.dumps(reply).encode())

    async def _later(self, subject: str, reply: dict[str, Any]) -> None:
        await asyncio.sleep(self._rng.uniform(0, self.max_delay))
        await self.nc.jetstream().publish(subject, json.dumps(reply).encode())

    def agents_for(self, req: str) -> list[tuple[str, int]]:
        return [(a["agent"], a["attempt"]) for a in self.assignments if a["req_number"] == req]

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()


def settings_for(nats_url: str, dsn: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "nats_url": [nats_url],
        "postgres_dsn": dsn,
        "http_port": 0,
        "health_interval": 0.2,
        "timeout_scan_interval": 0.2,
        "dispatch_interval": 0.2,
        "outbox_poll_interval": 0.5,
        "shutdown_grace": 5,
        "api_token": "test-token",
        "log_level": "warning",
    }
    return Settings(**{**values, **overrides})


def runtime_of(settings: Settings, pool: asyncpg.Pool, nc: NATS) -> Runtime:
    """A real runtime on the test's servers, for a service tested without agogd."""
    return Runtime(
        settings=settings,
        pipeline=PIPELINE,
        states=StateLog(),
        stopping=asyncio.Event(),
        pool=pool,
        nc=nc,
    )


@asynccontextmanager
async def running_agogd(settings: Settings) -> AsyncIterator[Daemon]:
    """An in-process agogd on real servers, ready when the block starts."""
    daemon = make_daemon(settings)
    task = asyncio.create_task(daemon.run(handle_signals=False))
    deadline = time.monotonic() + 30
    while not daemon.readiness.ready:
        if task.done():
            raise AssertionError(f"agogd exited with {task.result()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"agogd not ready: {daemon.readiness.failing()}")
        await asyncio.sleep(0.05)
    try:
        yield daemon
    finally:
        daemon.request_stop("test done")
        assert await asyncio.wait_for(task, 30) == 0


async def submit(nc: NATS, req: str, priority: str = "P2", title: str = "A feature") -> None:
    await nc.jetstream().publish(
        "agog.requirements.new",
        json.dumps({"req_number": req, "title": title, "priority": priority}).encode(),
    )


async def until(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    """Await ``check()`` every 0.1 s until it returns something truthy, and
    return that; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def wait_status(dsn: str, req: str, status: str, timeout: float = 30) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        row = None
        while time.monotonic() < deadline:
            row = await conn.fetchrow("SELECT * FROM workflow_state WHERE req_number = $1", req)
            if row is not None and row["status"] == status:
                return row
            await asyncio.sleep(0.05)
        raise AssertionError(f"{req} is {row['status'] if row else 'missing'}, not {status}")
    finally:
        await conn.close()


async def wait_stage(dsn: str, req: str, stage: int, timeout: float = 20) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                await conn.fetchval(
                    "SELECT current_stage FROM workflow_state WHERE req_number = $1", req
                )
                == stage
            ):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{req} never reached stage {stage}")
    finally:
        await conn.close()


async def collect(nc: NATS, subject: str) -> tuple[list[dict[str, Any]], Any]:
    """Subscribe and collect JSON messages published on a subject pattern."""
    seen: list[dict[str, Any]] = []

    async def cb(msg: Msg) -> None:
        seen.append({"subject": msg.subject, **json.loads(msg.data)})

    sub = await nc.subscribe(subject, cb=cb)
    return seen, sub


async def connect(url: str) -> NATS:
    return await nats.connect(url)


AGENT_CLIS = Path(__file__).resolve().parents[1] / ".agent-clis" / "node_modules" / ".bin"


def agent_cli(name: str) -> str:
    """The real agent CLI ``name`` (claude, codex, gemini) that scripts/agent-clis
    installed; a test that needs it fails, saying how to get it."""
    path = AGENT_CLIS / name
    if not path.exists():
        pytest.fail(f"the {name} CLI is not installed under {AGENT_CLIS}: run scripts/agent-clis")
    return str(path)
