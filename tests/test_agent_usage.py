"""Tokens, cost and budgets, end to end on real NATS, Postgres and agogd.

Agents report what they used under their notice's ``usage`` (the runner
writes it from the CLI's structured output; here scripted agents send it).
agogd keeps it on each attempt, sums it per REQ and per agent, counts it in
/metrics, and never starts an attempt once the REQ's budget is spent: the
REQ blocks with an escalation stating the spend, and a decision with a new
budget resumes it.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from tests.agents import (
    ScriptedAgents,
    collect,
    notice,
    running_agogd,
    settings_for,
    submit,
    wait_status,
)
from tests.test_memory import agogctl
from tests.test_metrics import scrape_until

TOKEN = "test-token"


def paying(assignment: dict[str, Any]) -> dict[str, Any]:
    """Every agent answers at once, and says it spent $0.40 on 1,000/100 tokens."""
    agent = assignment["agent"]
    reply = notice(agent, assignment["req_number"])
    reply["usage"] = {
        "cli": "claude",
        "model": "scripted-model",
        "session_id": f"session-{agent}-{assignment['attempt']}",
        "input_tokens": 1000,
        "output_tokens": 100,
        "cache_read_tokens": 50,
        "cost_usd": 0.4,
        "turns": 3,
    }
    return reply


async def test_usage_is_kept_summed_counted_and_the_budget_blocks_until_a_decision(
    nats_server: NatsServer, pg_dsn: str, nc: NATS
) -> None:
    agents = await ScriptedAgents(nc, paying).start()
    escalations, _ = await collect(nc, "agog.strategic.escalations.>")
    settings = settings_for(nats_server.url, pg_dsn, budget_usd_per_req=1.0)
    async with running_agogd(settings) as daemon, aiohttp.ClientSession() as http:
        url = daemon.http.url
        await submit(nc, "REQ-COST-1")
        # cynthia 0.40, sylvia 0.80, roy 1.20: spent, so jen is not started.
        row = await wait_status(pg_dsn, "REQ-COST-1", "BLOCKED")
        assert [a for a, _ in agents.agents_for("REQ-COST-1")] == ["cynthia", "sylvia", "roy"]
        async with http.get(f"{url}/api/reqs/REQ-COST-1") as response:
            body = await response.json()
        assert body["cost_usd"] == 1.2 and body["budget_usd"] == 1.0
        assert body["current_agent"] == "jen"
        assert "$1.20 of $1.00" in body["blocked_reason"]
        roy = next(a for a in body["attempts"] if a["agent"] == "roy")
        assert (roy["cli"], roy["model"], roy["session_id"]) == (
            "claude",
            "scripted-model",
            "session-roy-1",
        )
        assert (roy["input_tokens"], roy["output_tokens"], roy["cache_read_tokens"]) == (
            1000,
            100,
            50,
        )
        assert (roy["cost_usd"], roy["turns"]) == (0.4, 3)
        total = body["usage"]["total"]
        assert (total["input_tokens"], total["cost_usd"]) == (3000, 1.2)
        assert [a["agent"] for a in body["usage"]["agents"]] == ["cynthia", "sylvia", "roy"]
        assert any("$1.20 of $1.00" in e["reason"] for e in escalations)
        # The operator's view: agogctl shows the spend against the budget.
        code, out, err = await agogctl(url, "req", "show", "REQ-COST-1", "--token", TOKEN)
        assert code == 0, err
        assert "spent $1.20 of a $1.00 budget" in out
        assert "1000/100" in out and "$0.40" in out

        # Resuming without a new budget does not start jen; with one, it does.
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(
            f"{url}/api/reqs/REQ-COST-1/resume?wait=10", json={}, headers=headers
        ) as response:
            assert response.status == 200, await response.text()
        assert (await wait_status(pg_dsn, "REQ-COST-1", "BLOCKED"))["status"] == "BLOCKED"
        async with http.post(
            f"{url}/api/reqs/REQ-COST-1/resume?wait=10",
            json={"budget_usd": 10},
            headers=headers,
        ) as response:
            assert response.status == 200, await response.text()
        row = await wait_status(pg_dsn, "REQ-COST-1", "DEPLOYED", timeout=60)
        assert row["status"] == "DEPLOYED"
        metrics = await scrape_until(
            url,
            lambda s: (
                s.value("agogd_agent_cost_usd_total", agent="tim", model="scripted-model") > 0
            ),
            "tim's cost counted",
        )
        assert (
            metrics.value("agogd_agent_cost_usd_total", agent="roy", model="scripted-model") == 0.4
        )
        assert (
            metrics.value(
                "agogd_agent_tokens_total", agent="roy", model="scripted-model", kind="input"
            )
            == 1000
        )
    await agents.stop()
    conn = await asyncpg.connect(pg_dsn)
    try:
        spent = await conn.fetchval(
            "SELECT (budgets->>'spent_usd')::float8 FROM workflow_state"
            " WHERE req_number = 'REQ-COST-1'"
        )
        summed = await conn.fetchval(
            "SELECT sum(cost_usd)::float8 FROM stage_attempts WHERE req_number = 'REQ-COST-1'"
        )
    finally:
        await conn.close()
    assert spent == summed == 3.2  # eight stages at $0.40, each counted once


async def test_a_notice_with_unreadable_usage_still_counts_its_work(
    nats_server: NatsServer, pg_dsn: str, nc: NATS
) -> None:
    def odd(assignment: dict[str, Any]) -> dict[str, Any]:
        reply = notice(assignment["agent"], assignment["req_number"])
        reply["usage"] = {"cost_usd": "lots", "input_tokens": -5, "model": "m", "turns": True}
        return reply

    agents = await ScriptedAgents(nc, odd).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)):
        await submit(nc, "REQ-COST-2")
        await wait_status(pg_dsn, "REQ-COST-2", "DEPLOYED")
    await agents.stop()
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT model, cost_usd, input_tokens, turns FROM stage_attempts"
            " WHERE req_number = 'REQ-COST-2'"
        )
    finally:
        await conn.close()
    assert rows and all(
        (r["model"], r["cost_usd"], r["input_tokens"], r["turns"]) == ("m", None, None, None)
        for r in rows
    )
