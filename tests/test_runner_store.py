"""The runner's claims on a real PostgreSQL: one live claim per attempt, a
takeover only after the lease ran out, and a stored notice outliving a crash."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from workers.runner import store as runner_store
from workers.runner.store import Run

RUN = Run("REQ-RS-1", 3, 1)


@pytest.fixture
def pool(migrated_pool: asyncpg.Pool) -> asyncpg.Pool:
    return migrated_pool


async def test_one_live_claim_then_a_takeover_once_the_lease_ran_out(pool: asyncpg.Pool) -> None:
    assert await runner_store.claim(pool, RUN, "roy", "a:1", lease=0.3) == "claimed"
    assert await runner_store.claim(pool, RUN, "roy", "b:2", lease=0.3) == "running"
    await runner_store.renew(pool, RUN, lease=2.0)
    await asyncio.sleep(0.5)  # past the first lease, well within the renewed one
    assert await runner_store.claim(pool, RUN, "roy", "b:2", lease=30) == "running"
    await asyncio.sleep(1.6)
    assert await runner_store.claim(pool, RUN, "roy", "b:2", lease=30) == "taken_over"
    row = await pool.fetchrow("SELECT runner, runs FROM runner_runs")
    assert (row["runner"], row["runs"]) == ("b:2", 2)


async def test_concurrent_claims_leave_exactly_one_winner(pool: asyncpg.Pool) -> None:
    got = await asyncio.gather(
        *(runner_store.claim(pool, RUN, "roy", f"r:{i}", lease=30) for i in range(8))
    )
    assert sorted(got) == ["claimed"] + ["running"] * 7


async def test_a_stored_notice_is_kept_for_the_next_runner_and_published_ends_it(
    pool: asyncpg.Pool,
) -> None:
    assert await runner_store.stored_notice(pool, RUN) is None
    await runner_store.claim(pool, RUN, "roy", "a:1", lease=0.1)
    notice = {"status": "FAILED", "reason": "the agent exited with code 3", "exit_code": 3}
    await runner_store.record_notice(pool, RUN, notice)
    await asyncio.sleep(0.15)  # the runner died before publishing
    assert await runner_store.claim(pool, RUN, "roy", "b:2", lease=30) == "taken_over"
    assert await runner_store.stored_notice(pool, RUN) == notice
    await runner_store.mark_published(pool, RUN)
    assert await runner_store.claim(pool, RUN, "roy", "c:3", lease=30) == "published"
    row = await pool.fetchrow("SELECT outcome, exit_code, finished_at FROM runner_runs")
    assert (row["outcome"], row["exit_code"]) == ("FAILED", 3) and row["finished_at"] is not None


async def test_previous_deliverables_are_the_earlier_stages_in_order(pool: asyncpg.Pool) -> None:
    assert await runner_store.attempt_state(pool, RUN) is None
    await pool.executemany(
        "INSERT INTO nats_deliverable_cache (req_number, agent, stage, deliverable)"
        " VALUES ($1, $2, $3, $4::jsonb)",
        [
            ("REQ-RS-1", "sylvia", 1, '{"verdict": "APPROVED"}'),
            ("REQ-RS-1", "cynthia", 0, '{"summary": "research"}'),
            ("REQ-RS-1", "jen", 3, '{"summary": "later"}'),
            ("REQ-RS-2", "cynthia", 0, '{"summary": "another REQ"}'),
        ],
    )
    previous = await runner_store.previous_deliverables(pool, RUN)
    assert previous == [
        {"stage": 0, "agent": "cynthia", "deliverable": {"summary": "research"}},
        {"stage": 1, "agent": "sylvia", "deliverable": {"verdict": "APPROVED"}},
    ]
