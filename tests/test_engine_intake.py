"""The three intake paths lead to one record: NATS, OWNER_REQUESTS.md, agogctl.
The file mirrors the state, and human edits elsewhere in it survive."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from orchestrator.embedded import NatsServer
from orchestrator.inbound.owner_requests import parse
from tests.agents import ScriptedAgents, running_agogd, settings_for, submit, wait_status

OWNER_FILE = """# Owner requests

Some notes a human keeps at the top.

### REQ-1767924916115-9l233: Corrugated box costing

**Status**: NEW
**Owner**: marcus
**Priority**: P1
**Requirements**:
- Cost a box from board grade and flute
---

### REQ-ITEM-001: Item master

**Status**: DEFERRED
**Owner**: marcus
**Priority**: P2
**Requirements**:
- Not now
---
"""


async def _until_file_says(path: Path, req: str, status: str) -> None:
    for _ in range(100):
        entries = {e.req_number: e for e in parse(await asyncio.to_thread(path.read_text))}
        if entries[req].status == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"OWNER_REQUESTS.md never showed {req} as {status}")


def _agogctl(url: str, *args: str, token: str | None = "test-token") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
    if token:
        env["AGOG_API_TOKEN"] = token
    return subprocess.run(
        [str(Path(sys.executable).parent / "agogctl"), "--url", url, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


async def test_owner_requests_file_is_intake_and_view(
    nats_server: NatsServer, nc: NATS, pg_dsn: str, tmp_path: Path
) -> None:
    path = tmp_path / "OWNER_REQUESTS.md"
    path.write_text(OWNER_FILE)
    await ScriptedAgents(nc).start()
    settings = settings_for(
        nats_server.url, pg_dsn, owner_requests_file=path, owner_requests_interval=0.2
    )
    async with running_agogd(settings):
        req = "REQ-1767924916115-9l233"
        row = await wait_status(pg_dsn, req, "DEPLOYED")
        # The same REQ from NATS as well: still one workflow.
        await submit(nc, req)
        # A human adds an entry while agogd runs.
        with path.open("a") as fh:
            fh.write(
                "\n### REQ-LATE-7: Pallet labels\n\n**Status**: NEW\n**Priority**: P0\n"
                "**Requirements**:\n- Print GS1 labels\n---\n"
            )
        await wait_status(pg_dsn, "REQ-LATE-7", "DEPLOYED")
        await _until_file_says(path, "REQ-LATE-7", "DEPLOYED")
        # An editor saves an old buffer over agogd's line (or a human edits the
        # status): the file is a view of Postgres, so the status comes back.
        with capture_logs() as logs:
            text = path.read_text()
            at = text.index("### REQ-LATE-7")
            path.write_text(
                text[:at] + text[at:].replace("**Status**: DEPLOYED", "**Status**: IN_PROGRESS", 1)
            )
            assert parse(path.read_text())[-1].status == "IN_PROGRESS"
            await _until_file_says(path, "REQ-LATE-7", "DEPLOYED")
        restored = [e for e in logs if e["event"] == "owner_requests.status_restored"]
        assert [(e["req_number"], e["file_status"], e["status"]) for e in restored] == [
            ("REQ-LATE-7", "IN_PROGRESS", "DEPLOYED")
        ]
        assert "agogctl" in restored[0]["reason"]
    entries = {e.req_number: e for e in parse(path.read_text())}
    assert entries[req].status == "DEPLOYED"
    assert entries[req].fields["Commit"] == "abc1234"
    assert entries[req].fields["Deployed By"] == "berry"
    assert entries["REQ-ITEM-001"].status == "DEFERRED"  # never started, never touched
    assert entries["REQ-LATE-7"].status == "DEPLOYED"
    text = path.read_text()
    assert "Some notes a human keeps at the top." in text
    assert "- Cost a box from board grade and flute" in text
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM workflow_state") == 2
        assert row["source"] == "owner_requests"
    finally:
        await conn.close()


async def test_agogctl_req_submit_and_show(nats_server: NatsServer, nc: NATS, pg_dsn: str) -> None:
    await ScriptedAgents(nc).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon:
        url = daemon.http.url
        result = await asyncio.to_thread(
            _agogctl,
            url,
            "req",
            "submit",
            "REQ-CLI-1",
            "--title",
            "From the CLI",
            "--priority",
            "P0",
        )
        assert result.returncode == 0, result.stderr
        assert "REQ-CLI-1: submitted" in result.stdout
        again = await asyncio.to_thread(_agogctl, url, "req", "submit", "REQ-CLI-1")
        assert again.returncode == 0 and "already known" in again.stdout
        await wait_status(pg_dsn, "REQ-CLI-1", "DEPLOYED")
        shown = await asyncio.to_thread(_agogctl, url, "req", "show", "REQ-CLI-1")
        assert shown.returncode == 0 and "DEPLOYED" in shown.stdout and "berry" in shown.stdout
        denied = await asyncio.to_thread(_agogctl, url, "req", "submit", "REQ-CLI-2", token="wrong")
        assert denied.returncode == 5 and "bearer token" in denied.stderr  # unauthorized
        bad = await asyncio.to_thread(_agogctl, url, "req", "submit", "REQ-../etc")
        assert bad.returncode == 1 and "invalid_req_id" in bad.stderr
        missing = await asyncio.to_thread(_agogctl, url, "req", "show", "REQ-NOPE-1")
        assert missing.returncode == 4
