"""The pipeline board in a real browser: headless Chromium (tests/cdp.py) on a
real agogd, real NATS and Postgres. A REQ is submitted through the API, and
its cells change live, with no reload, as scripted agents complete stages.

The agents here hold each assignment until the test lets it go, so that the
test can look at the board between stages.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from tests.agents import (
    ScriptedAgents,
    deliverable_subject,
    happy,
    notice,
    running_agogd,
    settings_for,
    wait_status,
)
from tests.cdp import Page, chromium

REQ = "REQ-BOARD-1"
OTHER = "REQ-BOARD-2"
SEVEN = ["cynthia", "sylvia", "roy", "jen", "billy", "priya", "berry"]


class HeldAgents(ScriptedAgents):
    """Scripted agents that answer only when told to (``release``)."""

    def __init__(self, nc: NATS) -> None:
        super().__init__(nc, lambda _assignment: None)

    def assignment(self, req: str, agent: str) -> dict[str, Any]:
        found = [a for a in self.assignments if a["req_number"] == req and a["agent"] == agent]
        assert found, f"{agent} has no assignment for {req}: {self.agents_for(req)}"
        return found[-1]

    async def release(self, req: str, agent: str, **fields: Any) -> None:
        assignment = self.assignment(req, agent)
        reply = {**happy(assignment), **fields} if fields else happy(assignment)
        reply = {
            **reply,
            "summary": fields.get(
                "summary", f"{agent}: {req} attempt {assignment['attempt']} done"
            ),
        }
        await self.nc.jetstream().publish(
            deliverable_subject(agent, req), json.dumps(reply).encode()
        )


def cell(req: str, agent: str) -> str:
    return f'document.querySelector(\'tr[data-req="{req}"] td[data-stage="{agent}"]\')'


async def state_of(page: Page, req: str, agent: str) -> str | None:
    return await page.evaluate(f"{cell(req, agent)}?.dataset.state ?? null")  # type: ignore[no-any-return]


async def wait_cell(
    page: Page, req: str, agent: str, state: str, attempt: int | None = None
) -> None:
    check = f"{cell(req, agent)}?.dataset.state === {json.dumps(state)}"
    if attempt is not None:
        check += f" && {cell(req, agent)}.dataset.attempt === '{attempt}'"
    await page.wait_for(check, what=f"{req}'s {agent} cell to be {state}")


async def submit(url: str, req: str, title: str, priority: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/api/reqs",
            json={"req_number": req, "title": title, "priority": priority},
            headers={"Authorization": "Bearer test-token"},
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()


async def test_board_follows_a_req_live(
    nats_server: NatsServer, nc: NATS, pg_dsn: str, tmp_path: Path
) -> None:
    agents = await HeldAgents(nc).start()
    async with (
        running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon,
        chromium(tmp_path / "chromium-profile") as page,
    ):
        url = daemon.http.url
        await page.navigate(f"{url}/")
        await page.wait_for(
            "window.board && window.board.loaded && window.board.live", what="board live"
        )
        # The seven stages (and Tim, after them) are the columns, from the registry.
        heads = await page.evaluate(
            "[...document.querySelectorAll('#head th[data-stage]')].map(t => t.dataset.stage)"
        )
        assert heads == [*SEVEN, "tim"]
        await page.evaluate("window.__sameDocument = 'yes'")  # gone if the page reloads
        token_form = "getComputedStyle(document.querySelector('#token-form')).display"
        assert await page.evaluate(token_form) == "none"  # reads are open here

        # Submitted through the API: its row appears and Cynthia starts, live.
        await submit(url, REQ, "Inventory API", "P1")
        await wait_cell(page, REQ, "cynthia", "running", attempt=1)
        # The API's priority form, "P1", as agogctl shows it.
        prio = f"document.querySelector('tr[data-req=\"{REQ}\"] .prio')"
        assert await page.evaluate(f"{prio}.textContent") == "P1"
        assert await page.evaluate(f"{prio}.classList.contains('p1')") is True
        assert await state_of(page, REQ, "sylvia") == "waiting"
        elapsed = f"{cell(REQ, 'cynthia')}.querySelector('.elapsed').textContent"
        first = await page.evaluate(elapsed)
        await page.wait_for(f"{elapsed} !== {json.dumps(first)}", what="the elapsed time to tick")

        await agents.release(REQ, "cynthia")
        await wait_cell(page, REQ, "cynthia", "done")
        await wait_cell(page, REQ, "sylvia", "running")
        # Sylvia rejects: her cell says so and Cynthia works again (attempt 2).
        await agents.release(
            REQ,
            "sylvia",
            critique_verdict="REJECTED",
            required_fixes=["cite the standard"],
            summary="sylvia: the research misses the packaging standard",
        )
        await wait_cell(page, REQ, "sylvia", "rejected")
        await wait_cell(page, REQ, "cynthia", "running", attempt=2)
        await agents.release(REQ, "cynthia")
        await wait_cell(page, REQ, "sylvia", "running", attempt=2)
        await agents.release(REQ, "sylvia")
        await wait_cell(page, REQ, "roy", "running")

        # A second REQ, blocked at Roy's stage, beside it.
        await submit(url, OTHER, "Supplier portal", "P0")
        for agent in ("cynthia", "sylvia"):
            await wait_cell(page, OTHER, agent, "running")
            await agents.release(OTHER, agent)
        await wait_cell(page, OTHER, "roy", "running")
        blocked = notice("roy", OTHER, status="BLOCKED", summary="roy: no database credentials")
        await nc.jetstream().publish(
            deliverable_subject("roy", OTHER), json.dumps(blocked).encode()
        )
        await wait_cell(page, OTHER, "roy", "blocked")
        await page.wait_for(
            f"document.querySelector('tr[data-req=\"{OTHER}\"] .badge').textContent === 'BLOCKED'",
            what="the BLOCKED badge",
        )

        for agent in ("roy", "jen", "billy"):
            await agents.release(REQ, agent)
            await wait_cell(page, REQ, agent, "done")
        await wait_cell(page, REQ, "priya", "running")
        await page.screenshot(tmp_path / "board-in-flight.png")

        for agent in ("priya", "berry"):
            await agents.release(REQ, agent)
            await wait_cell(page, REQ, agent, "done")
        await wait_cell(page, REQ, "tim", "running")
        await agents.release(REQ, "tim")
        await wait_cell(page, REQ, "tim", "done")
        await wait_status(pg_dsn, REQ, "DEPLOYED")
        await page.wait_for(
            f"document.querySelector('tr[data-req=\"{REQ}\"] .badge').textContent === 'DEPLOYED'",
            what="the DEPLOYED badge",
        )
        states = [await state_of(page, REQ, a) for a in [*SEVEN, "tim"]]
        assert states == ["done"] * 8
        # All of it without a reload.
        assert await page.evaluate("window.__sameDocument") == "yes"
        assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1
        assert await page.evaluate("window.board.events") >= 20

        # A click on the row opens its history, with the deliverables' summaries.
        await page.click(f'tr[data-req="{REQ}"] td.req-col')
        await page.wait_for(
            f"document.querySelector('#history:not([hidden])')?.dataset.req === '{REQ}'",
            what="the history panel",
        )
        attempts = await page.evaluate(
            "[...document.querySelectorAll('#h-attempts .attempt')].map(a =>"
            " [a.dataset.stage, a.dataset.state, a.querySelector('.summary')?.textContent ?? null])"
        )
        assert [a[0] for a in attempts] == [
            "cynthia",
            "sylvia",
            "cynthia",
            "sylvia",
            "roy",
            "jen",
            "billy",
            "priya",
            "berry",
            "tim",
        ]
        assert attempts[1] == [
            "sylvia",
            "rejected",
            "sylvia: the research misses the packaging standard",
        ]
        assert attempts[4] == ["roy", "done", f"roy: {REQ} attempt 1 done"]
        assert all(a[1] in ("done", "rejected") for a in attempts)
        facts = await page.evaluate("document.querySelector('#h-facts').textContent")
        assert "DEPLOYED" in facts and "abc1234" in facts
        shot = await page.screenshot(tmp_path / "board.png")
        assert shot.stat().st_size > 10_000

        # The other REQ's history shows its escalation.
        await page.click(f'tr[data-req="{OTHER}"] td.req-col')
        await page.wait_for(
            f"document.querySelector('#history').dataset.req === '{OTHER}'"
            " && document.querySelector('#h-escalations-box').hidden === false",
            what="the blocked REQ's escalation",
        )
        await page.evaluate("document.querySelector('#h-close').click()")
        await page.screenshot(tmp_path / "board-closed.png")
        assert page.problems() == [], page.problems()
    await agents.stop()


async def test_board_asks_for_the_token_when_reads_need_it(
    nats_server: NatsServer, pg_dsn: str, tmp_path: Path
) -> None:
    settings = settings_for(nats_server.url, pg_dsn, api_read_auth=True)
    async with running_agogd(settings) as daemon, chromium(tmp_path / "profile") as page:
        url = daemon.http.url
        await submit(url, REQ, "Inventory API", "P2")
        await page.navigate(f"{url}/")
        await page.wait_for(
            "getComputedStyle(document.querySelector('#token-form')).display !== 'none'",
            what="the token form",
        )
        assert await page.evaluate("document.querySelectorAll('#rows tr').length") == 0
        await page.evaluate("document.querySelector('#token').value = 'test-token'")
        await page.click("#token-form button")
        await page.wait_for("window.board.loaded && window.board.live", what="the board, live")
        await wait_cell(page, REQ, "cynthia", "running")
        # The token is kept for the tab only (sessionStorage), never in the page's URL.
        assert await page.evaluate("sessionStorage.getItem('agogd-token')") == "test-token"
        assert "token" not in await page.evaluate("location.href")


async def test_board_assets_are_served_from_the_package() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from orchestrator.api.observe import add_board
    from orchestrator.runtime import http_server
    from orchestrator.runtime.readiness import Readiness

    app = http_server.build_app(Readiness())
    add_board(app)
    async with TestClient(TestServer(app)) as client:
        page = await client.get("/")
        assert page.status == 200 and page.content_type == "text/html"
        html = await page.text()
        assert "/board/board.js" in html and "/board/board.css" in html
        for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
            assert ref.startswith(("/", "data:")), f"{ref} is not served by agogd"
        for name, kind in (("board.js", "text/javascript"), ("board.css", "text/css")):
            asset = await client.get(f"/board/{name}")
            assert asset.status == 200 and asset.content_type == kind
            assert asset.headers["Cache-Control"] == "no-cache"
            text = await asset.text()
            assert "https://" not in text  # no CDN, no web font
        for bad in (
            "/board/nope.js",
            "/board/board.js.map",
            "/board/%2e%2e%2fhttp_server.py",
            "/board/x.py",
        ):
            assert (await client.get(bad)).status == 404, bad


# Roy, run by the runner: he talks for a few seconds, then answers with what he spent.
TALKING_ROY = """
import json, re, sys, time
prompt = sys.stdin.read()
assignment = json.loads(re.search(r"```json\\n(.*?)\\n```", prompt, re.S).group(1))
for i in range(10):
    print("roy is working: step %d" % i, flush=True)
    time.sleep(0.5)
print(json.dumps({"agent": "roy", "req_number": assignment["req_number"],
                  "status": "COMPLETE", "summary": "built it",
                  "usage": {"model": "scripted", "cost_usd": 0.25,
                            "input_tokens": 10, "output_tokens": 5}}))
"""


async def test_board_shows_spend_and_an_agents_output_live(
    nats_server: NatsServer, nc: NATS, pg_dsn: str, tmp_path: Path
) -> None:
    script = tmp_path / "roy.py"
    script.write_text(TALKING_ROY)

    def others(assignment: dict[str, Any]) -> dict[str, Any] | None:
        if assignment["agent"] == "roy":
            return None
        reply = happy(assignment)
        assert reply is not None
        return {**reply, "usage": {"model": "scripted", "cost_usd": 0.5}}

    agents = await ScriptedAgents(nc, others).start()
    settings = settings_for(
        nats_server.url,
        pg_dsn,
        runner_agents=["roy"],
        runner_command=f"{sys.executable} {script}",
    )
    async with (
        running_agogd(settings) as daemon,
        chromium(tmp_path / "chromium-profile") as page,
    ):
        url = daemon.http.url
        await page.navigate(f"{url}/")
        await page.wait_for("window.board && window.board.live", what="board live")
        await submit(url, REQ, "Inventory API", "P1")
        await wait_cell(page, REQ, "roy", "running")
        # Opened while Roy runs, the history panel shows his output as it comes.
        await page.click(f'tr[data-req="{REQ}"] td.req-col')
        output = "document.querySelector('#h-output').textContent"
        await page.wait_for(
            f"document.querySelector('#h-output-box').hidden === false"
            f" && {output}.includes('roy is working: step 1')",
            what="roy's output in the history panel",
        )
        assert "step 9" not in await page.evaluate(output), "shown only once it had all come"
        assert "running" in await page.evaluate(
            "document.querySelector('#h-output-who').textContent"
        )
        await page.wait_for(f"{output}.includes('roy is working: step 9')", what="the rest")
        # Each stage's spend in its cell, the REQ's beside its status.
        await wait_cell(page, REQ, "roy", "done")
        await page.wait_for(
            f"{cell(REQ, 'roy')}.querySelector('.meta').textContent.includes('$0.25')"
            f" && {cell(REQ, 'cynthia')}.querySelector('.meta').textContent.includes('$0.50')",
            what="the stages' spend in their cells",
        )
        await wait_status(pg_dsn, REQ, "DEPLOYED")
        cost = f"document.querySelector('tr[data-req=\"{REQ}\"] .cost')"
        await page.wait_for(f"{cost}?.textContent === '$3.75'", what="the REQ's spend")
        assert page.problems() == [], page.problems()
    await agents.stop()


async def test_board_shows_the_files_each_attempt_changed(
    nats_server: NatsServer,
    nc: NATS,
    pg_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With AGOG_REPO, each attempt in the history lists its commit's files,
    marking those its notice did not list and those it listed but left alone."""
    from tests.test_branches_api import misreporting_settings

    settings = misreporting_settings(tmp_path, nats_server.url, pg_dsn, monkeypatch)
    async with running_agogd(settings) as daemon, chromium(tmp_path / "profile") as page:
        url = daemon.http.url
        await page.navigate(f"{url}/")
        await page.wait_for("window.board && window.board.live", what="board live")
        await submit(url, REQ, "Inventory API", "P2")
        await wait_status(pg_dsn, REQ, "DEPLOYED", timeout=120)
        await wait_cell(page, REQ, "tim", "done")
        await page.click(f'tr[data-req="{REQ}"] td.req-col')
        roy = "document.querySelector('#h-attempts .attempt[data-stage=\"roy\"]')"
        await page.wait_for(f"!!{roy}?.querySelector('.files')", what="roy's files")
        files = await page.evaluate(
            f"[...{roy}.querySelectorAll('.files li')].map(li => [li.dataset.path,"
            " li.dataset.status, li.className, li.querySelector('.mark')?.textContent ?? null])"
        )
        assert files == [
            ["api.py", "added", "file", None],
            ["notes.txt", "added", "file unlisted", "not listed"],
            ["docs/never.md", "missing", "file missing", "listed, unchanged"],
        ]
        sha = await page.evaluate(f"{roy}.querySelector('.commit').dataset.sha")
        assert await page.evaluate(f"{roy}.querySelector('.commit .sha').textContent") == (
            f"commit {sha[:7]} · 2 files"
        )
        cynthia = "document.querySelector('#h-attempts .attempt[data-stage=\"cynthia\"]')"
        assert await page.evaluate(f"{cynthia}.querySelector('.commit').textContent") == (
            "no changes"
        )
        facts = await page.evaluate("document.querySelector('#h-facts').textContent")
        assert f"agog/{REQ}" in facts
        await page.screenshot(tmp_path / "board-files.png")
        assert page.problems() == [], page.problems()
