"""Scheduled backups on real servers: two replicas on one database take one
backup per slot, retention keeps the newest, every outcome is a row of
backup_runs, a failure (NATS down) is recorded and logged and the service
goes on, and a real agogd with AGOG_BACKUP_SCHEDULE backs up at start and
exposes the last good backup's time on /metrics."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from orchestrator.backup import schedule
from orchestrator.backup.archive import archives_in
from orchestrator.backup.schedule import BackupScheduler, prune
from orchestrator.embedded import NatsServer
from orchestrator.runtime.topology import Reconciler
from tests.agents import PIPELINE, running_agogd, runtime_of, settings_for
from tests.test_metrics import scrape_until


async def runs(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(await pool.fetch("SELECT * FROM backup_runs ORDER BY id"))


async def wait_runs(pool: asyncpg.Pool, check: Any, what: str, timeout: float = 90) -> list[Any]:
    deadline = time.monotonic() + timeout
    found: list[Any] = []
    while time.monotonic() < deadline:
        found = await runs(pool)
        if check(found):
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; backup_runs: {[dict(r) for r in found]}")


@dataclass
class Replicas:
    """Two replicas' connections to one database and one NATS, and where they write."""

    nats: NatsServer
    dsn: str
    pool: asyncpg.Pool  # the test's own
    pairs: list[tuple[asyncpg.Pool, NATS]]
    directory: Path

    def scheduler(self, i: int, **extra: Any) -> BackupScheduler:
        """Replica ``i``'s scheduler, built the way agogd's wiring builds it."""
        pool, nc = self.pairs[i]
        settings = settings_for(self.nats.url, self.dsn, backup_dir=self.directory, **extra)
        return schedule.build(runtime_of(settings, pool, nc))


@pytest.fixture
async def replicas(
    nats_server: NatsServer, nc: NATS, pg_dsn: str, migrated_pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[Replicas]:
    await Reconciler(nc, PIPELINE).reconcile()
    made = []
    for _ in range(2):
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=3)
        conn = await nats.connect(
            nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2
        )
        made.append((pool, conn))
    yield Replicas(nats_server, pg_dsn, migrated_pool, made, tmp_path)
    for pool, conn in made:
        await conn.close()
        await pool.close()


def hidden_in(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


async def test_two_replicas_take_one_backup_per_slot_and_keep_the_newest(
    replicas: Replicas,
) -> None:
    both = [replicas.scheduler(i, backup_schedule="4s", backup_keep=2) for i in (0, 1)]
    assert both[0].replica == both[1].replica  # one process here: tell them apart
    both[1].replica += "-b"
    tasks = [asyncio.create_task(s.run()) for s in both]
    try:
        found = await wait_runs(
            replicas.pool,
            lambda rows: len({r["slot"] for r in rows if r["outcome"] == "ok"}) >= 3,
            "three slots backed up",
            timeout=120,
        )
    finally:
        for s in both:
            s.stopping.set()
        await asyncio.gather(*tasks)
    found = await runs(replicas.pool)
    ok = [r for r in found if r["outcome"] == "ok"]
    per_slot = Counter(r["slot"] for r in ok)
    assert set(per_slot.values()) == {1}, f"a slot backed up twice: {per_slot}"
    assert all(r["trigger"] == "schedule" for r in found)
    assert {r["replica"] for r in found} <= {both[0].replica, both[1].replica}
    for row in ok:
        assert row["bytes"] > 0 and row["seconds"] > 0 and row["error"] is None
        assert row["slot"].timestamp() % 4 == 0, "slots are aligned to the interval"
        assert row["started_at"] >= row["slot"]
    kept = archives_in(replicas.directory)
    assert [str(p) for p in kept] == [r["archive"] for r in ok[-2:]], "retention kept others"


async def test_a_slot_is_backed_up_once_by_whichever_replica_gets_there_first(
    replicas: Replicas,
) -> None:
    a, b = (replicas.scheduler(i, backup_schedule="1h") for i in (0, 1))
    # At the same moment: one takes the lock and backs up, the other skips at once.
    results = await asyncio.gather(a.tick(), b.tick())
    assert sum(r is not None for r in results) == 1, results
    # Later in the same slot (a replica restarted, say): the slot is done.
    assert await b.tick() is None
    assert await a.tick() is None
    found = await runs(replicas.pool)
    assert [r["outcome"] for r in found] == ["ok"], [dict(r) for r in found]
    assert len(archives_in(replicas.directory)) == 1


async def test_a_failed_backup_is_recorded_and_logged_and_the_next_slot_succeeds(
    replicas: Replicas,
) -> None:
    one = replicas.scheduler(0, backup_schedule="3s")
    nats_server, migrated_pool, tmp_path = replicas.nats, replicas.pool, replicas.directory
    task = asyncio.create_task(one.run())
    try:
        await wait_runs(migrated_pool, lambda rows: any(r["outcome"] == "ok" for r in rows), "ok")
        nats_server.stop()
        with capture_logs() as logs:
            failed = await wait_runs(
                migrated_pool,
                lambda rows: any(r["outcome"] == "failed" for r in rows),
                "a failed backup while NATS is down",
            )
        assert not task.done(), "the scheduler died with NATS"
        row = next(r for r in failed if r["outcome"] == "failed")
        assert row["error"] and row["archive"] is None and row["bytes"] is None
        assert any(e["event"] == "backup.failed" and e["log_level"] == "error" for e in logs), logs
        nats_server.start()
        last_failure = max(r["id"] for r in failed if r["outcome"] == "failed")
        await wait_runs(
            migrated_pool,
            lambda rows: any(r["outcome"] == "ok" and r["id"] > last_failure for r in rows),
            "a good backup once NATS is back",
        )
    finally:
        one.stopping.set()
        await task
    assert archives_in(tmp_path), "no archive after NATS came back"
    assert not hidden_in(tmp_path), "a failed backup left its work files"


def test_prune_keeps_the_newest_archives_and_clears_a_crashed_backups_leftovers(
    tmp_path: Path,
) -> None:
    names = [f"agogd-backup-2026010{i}T000000Z.tar" for i in range(1, 6)]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    fresh = tmp_path / "agogd-backup-20260106T000000Z.tar.partial"
    stale = tmp_path / "agogd-backup-20251231T000000Z.tar.partial"
    stale_work = tmp_path / ".agogd-backup-20251231T000000Z.tar.abc.work"
    other = tmp_path / "notes.txt"
    for path in (fresh, stale, other):
        path.write_bytes(b"x")
    stale_work.mkdir()
    old = time.time() - 2 * schedule.STALE
    for path in (stale, stale_work):
        os.utime(path, (old, old))
    gone = prune(tmp_path, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*names[-3:], fresh.name, other.name]
    )
    assert {p.name for p in gone} == {*names[:2], stale.name, stale_work.name}


async def test_agogd_with_a_schedule_backs_up_at_start_and_exposes_it_on_metrics(
    nats_server: NatsServer, pg_dsn: str, tmp_path: Path
) -> None:
    settings = settings_for(
        nats_server.url, pg_dsn, backup_schedule="1h", backup_dir=tmp_path, backup_keep=3
    )
    started = time.time()
    async with running_agogd(settings) as daemon:
        got = await scrape_until(
            daemon.http.url,
            lambda s: s.value("agogd_backup_last_success_timestamp_seconds") >= started,
            "the first scheduled backup",
            timeout=90,
        )
        assert got.value("agogd_backup_schedule_seconds") == 3600
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT outcome, archive FROM backup_runs")
    finally:
        await conn.close()
    assert [r["outcome"] for r in rows] == ["ok"]
    assert [str(p) for p in archives_in(tmp_path)] == [rows[0]["archive"]]
