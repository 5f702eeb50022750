"""Races between agogd replicas, and a crash, that the chaos soak found
(bench/chaos_soak.py, docs/chaos.md); each interleaving is forced
deterministically on real servers:

* a duplicate of Tim's notice, applied by one replica while another holds the
  REQ's row lock, was applied a second time: the lock query's snapshot
  predates the lock, so it still showed Tim's attempt RUNNING;
* two replicas mirroring OWNER_REQUESTS.md at once: one that read a status
  before it changed wrote it over the newer status the other had written,
  and the file stayed stale for good;
* asyncpg's InternalClientError, which a Postgres restart raises on a pooled
  connection, crashed the OWNER_REQUESTS.md service and the memory context
  service, and agogd with them.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from orchestrator.engine import owner_sync
from orchestrator.inbound.owner_requests import OwnerRequestsFile
from orchestrator.memory import context
from orchestrator.runtime import migrate
from orchestrator.runtime.state_log import StateLog
from tests.agents import (
    ScriptedAgents,
    deliverable_subject,
    happy,
    notice,
    running_agogd,
    settings_for,
    submit,
    wait_status,
)
from tests.test_chaos_regressions import _shut_down

TIM = 7  # Tim's follow-up comes after the seven stages


async def _wait_blocked_on_lock(conn: asyncpg.Connection, timeout: float = 10) -> None:
    """Until another backend waits for a lock (our row lock)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND pid <> pg_backend_pid() AND datname = current_database()"
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("nobody waited for the row lock")


async def test_duplicate_tim_notice_is_not_applied_after_waiting_for_the_row_lock(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    req = "REQ-RACE-TIM-1"

    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        return None if a["agent"] == "tim" else happy(a)  # Tim answers by hand below

    await ScriptedAgents(nc, script).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)):
        await submit(nc, req)
        await wait_status(pg_dsn, req, "DEPLOYED")
        other = await asyncpg.connect(pg_dsn)  # the replica that got the first copy
        try:
            for _ in range(100):
                if await other.fetchval(
                    "SELECT 1 FROM stage_attempts WHERE req_number = $1 AND stage = $2"
                    " AND status = 'RUNNING'",
                    req,
                    TIM,
                ):
                    break
                await asyncio.sleep(0.05)
            tx = other.transaction()
            await tx.start()
            await other.execute(
                "SELECT 1 FROM workflow_state WHERE req_number = $1 FOR UPDATE", req
            )
            await other.execute(
                "UPDATE stage_attempts SET status = 'COMPLETE', finished_at = now()"
                " WHERE req_number = $1 AND stage = $2 AND attempt = 1",
                req,
                TIM,
            )
            await other.execute(
                "UPDATE workflow_state SET budgets = jsonb_set(budgets, '{followups}',"
                " jsonb_build_object($2::text, 'COMPLETE')) WHERE req_number = $1",
                req,
                str(TIM),
            )
            # The second copy reaches this agogd, whose lock query now waits for us.
            body = json.dumps(notice("tim", req, attempt=1)).encode()
            await nc.jetstream().publish(deliverable_subject("tim", req), body)
            await _wait_blocked_on_lock(other)
            await tx.commit()
            for _ in range(100):
                outcome = await other.fetchval(
                    "SELECT outcome FROM processed_messages WHERE subject = $1",
                    deliverable_subject("tim", req),
                )
                if outcome is not None:
                    break
                await asyncio.sleep(0.05)
            completed = await other.fetchval(
                "SELECT count(*) FROM workflow_events WHERE req_number = $1"
                " AND kind = 'stage.completed' AND stage = $2",
                req,
                TIM,
            )
        finally:
            await other.close()
    assert outcome == "ignored"
    assert completed == 0  # the stand-in replica wrote none: any is a second apply


class _HeldFile(OwnerRequestsFile):
    """An OWNER_REQUESTS.md whose first write waits until the test lets it go."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered, self.release = threading.Event(), threading.Event()

    def update_statuses(self, updates: Any) -> set[str]:
        self.entered.set()
        assert self.release.wait(10)
        return super().update_statuses(updates)


async def _migrated(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.apply(conn)
    finally:
        await conn.close()


async def test_two_replicas_mirroring_never_leave_an_older_status_in_the_file(
    pg_dsn: str, tmp_path: Path
) -> None:
    await _migrated(pg_dsn)
    path = tmp_path / "OWNER_REQUESTS.md"
    path.write_text("### REQ-RACE-MD-1: A feature\n\n**Status**: NEW\n")
    pools = [await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2) for _ in range(2)]

    def sync(pool: asyncpg.Pool, file: OwnerRequestsFile) -> owner_sync.OwnerRequestsSync:
        return owner_sync.OwnerRequestsSync(file, pool=pool, states=StateLog())

    try:
        await pools[0].execute(
            "INSERT INTO workflow_state (req_number, title, status) VALUES"
            " ('REQ-RACE-MD-1', 'A feature', 'IN_PROGRESS')"
        )
        held = _HeldFile(path)
        slow = asyncio.create_task(sync(pools[0], held).mirror())  # read IN_PROGRESS...
        assert await asyncio.to_thread(held.entered.wait, 10)
        await pools[1].execute(
            "UPDATE workflow_state SET status = 'DEPLOYED', commit_sha = 'c0ffee',"
            " deployed_at = now(), deployed_by = 'berry' WHERE req_number = 'REQ-RACE-MD-1'"
        )
        await sync(pools[1], OwnerRequestsFile(path)).mirror()  # ...while this one runs
        held.release.set()
        await slow
        await sync(pools[1], OwnerRequestsFile(path)).mirror()  # and any later pass
        row = await pools[1].fetchrow(
            "SELECT status, mirrored_status FROM workflow_state WHERE req_number = 'REQ-RACE-MD-1'"
        )
    finally:
        for pool in pools:
            await pool.close()
    (entry,) = OwnerRequestsFile(path).read()
    assert row["mirrored_status"] == row["status"] == "DEPLOYED"
    assert entry.status == "DEPLOYED" and entry.fields["Commit"] == "c0ffee"


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress"),
        RuntimeError("OWNER_REQUESTS.md kept changing while agogd tried to update it"),
    ],
)
async def test_owner_requests_service_survives_any_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    calls = 0
    stopping = asyncio.Event()
    file = OwnerRequestsFile(tmp_path / "OWNER_REQUESTS.md")
    sync = owner_sync.OwnerRequestsSync(file, pool=object(), states=StateLog())  # type: ignore[arg-type]

    async def ingest() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        stopping.set()
        return 0

    async def mirror() -> int:
        return 0

    monkeypatch.setattr(sync, "ingest", ingest)
    monkeypatch.setattr(sync, "mirror", mirror)
    await asyncio.wait_for(sync.run(interval=0.01, stopping=stopping), 10)
    assert calls == 2  # it kept going after the error


async def test_memory_context_survives_a_connection_postgres_shut_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stopping, states = asyncio.Event(), StateLog()
    calls = 0

    async def refresh_some(*_: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise _shut_down()
        stopping.set()
        return 0

    monkeypatch.setattr(context, "_refresh_some", refresh_some)
    loop = context.refresh_loop(
        object(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        asyncio.Event(),
        stopping=stopping,
        states=states,
        ttl=1,
        interval=0.01,
        min_gap=0.01,
    )
    await asyncio.wait_for(loop, 10)
    assert calls == 2
    assert states.get("memory.context") == "ok"
