"""One bad Berry notice never stops OWNER_REQUESTS.md: a real agogd mirrors the
file while a notice carries a multi-line commit_sha and deployed_by (which
would forge entries or make every mirror pass raise), and later REQs'
statuses still reach the file."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from orchestrator.embedded import NatsServer
from orchestrator.inbound.notices import DEPLOYED_BY_MAX, CompletionNotice, parse_notice
from orchestrator.inbound.owner_requests import parse
from tests.agents import ScriptedAgents, happy, notice, running_agogd, settings_for, wait_status

EVIL_SHA = "abc1234\n\n### REQ-FORGED-1: forged entry\n\n**Status**: NEW"
EVIL_BY = "berry\n**Status**: CANCELLED\x1b]0;pwned\x07"


def entry(req: str, title: str) -> str:
    return f"\n### {req}: {title}\n\n**Status**: NEW\n**Priority**: P1\n---\n"


async def until_file_says(path: Path, req: str, status: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        entries = {e.req_number: e for e in parse(await asyncio.to_thread(path.read_text))}
        if req in entries and entries[req].status == status:
            return entries
        assert time.monotonic() < deadline, f"OWNER_REQUESTS.md never showed {req} as {status}"
        await asyncio.sleep(0.1)


def _bad_berry(a: dict[str, Any]) -> dict[str, Any] | None:
    if (a["agent"], a["req_number"]) == ("berry", "REQ-BAD-1"):
        return notice("berry", "REQ-BAD-1", commit_sha=EVIL_SHA, deployed_by=EVIL_BY)
    return happy(a)


async def test_a_bad_berry_notice_is_normalised_and_later_statuses_reach_the_file(
    nats_server: NatsServer, nc: NATS, pg_dsn: str, tmp_path: Path
) -> None:
    path = tmp_path / "OWNER_REQUESTS.md"
    path.write_text("# Owner requests\n" + entry("REQ-BAD-1", "Hostile deploy"))
    await ScriptedAgents(nc, _bad_berry).start()
    settings = settings_for(
        nats_server.url, pg_dsn, owner_requests_file=path, owner_requests_interval=0.2
    )
    with capture_logs() as logs:
        async with running_agogd(settings):
            bad = await wait_status(pg_dsn, "REQ-BAD-1", "DEPLOYED")  # the REQ completes
            await until_file_says(path, "REQ-BAD-1", "DEPLOYED")
            with path.open("a") as fh:  # later REQs, after the bad notice
                fh.write(entry("REQ-GOOD-2", "Pallet labels") + entry("REQ-GOOD-3", "Ledger"))
            for req in ("REQ-GOOD-2", "REQ-GOOD-3"):
                await wait_status(pg_dsn, req, "DEPLOYED")
                entries = await until_file_says(path, req, "DEPLOYED")
    # The hostile values never became lines of their own.
    assert sorted(entries) == ["REQ-BAD-1", "REQ-GOOD-2", "REQ-GOOD-3"]
    assert "REQ-FORGED-1" not in path.read_text() and "\x1b" not in path.read_text()
    assert bad["commit_sha"] is None  # not a hex sha: dropped
    assert "\n" not in bad["deployed_by"] and bad["deployed_by"].startswith("berry **Status**")
    fields = entries["REQ-BAD-1"].fields
    assert "Commit" not in fields and fields["Deployed By"] == bad["deployed_by"]
    assert entries["REQ-GOOD-2"].fields["Commit"] == "abc1234"
    fixed = [e for e in logs if e["event"] == "notice.fields_fixed"]
    assert fixed and set(fixed[0]["fields"]) == {"commit_sha", "deployed_by"}
    assert fixed[0]["req_number"] == "REQ-BAD-1"
    # ...and the normalised notice in the history says what was fixed.
    conn = await asyncpg.connect(pg_dsn)
    try:
        normalized = await conn.fetchval(
            "SELECT normalized FROM nats_deliverable_cache"
            " WHERE req_number = 'REQ-BAD-1' AND agent = 'berry'"
        )
    finally:
        await conn.close()
    assert '"field_notes"' in normalized and "not a hex commit sha" in normalized


async def test_a_row_stored_before_the_fix_never_blocks_the_other_entries(
    nats_server: NatsServer, nc: NATS, pg_dsn: str, tmp_path: Path
) -> None:
    """A workflow row that already holds multi-line values (written by an
    older agogd) is mirrored as one line, and the others go on."""
    path = tmp_path / "OWNER_REQUESTS.md"
    path.write_text("# Owner requests\n" + entry("REQ-OLD-1", "Stored long ago"))
    await ScriptedAgents(nc).start()
    settings = settings_for(
        nats_server.url, pg_dsn, owner_requests_file=path, owner_requests_interval=0.2
    )
    async with running_agogd(settings):
        await wait_status(pg_dsn, "REQ-OLD-1", "DEPLOYED")
        await until_file_says(path, "REQ-OLD-1", "DEPLOYED")
        conn = await asyncpg.connect(pg_dsn)
        try:  # what an older agogd stored from a hostile notice
            await conn.execute(
                "UPDATE workflow_state SET commit_sha = $1, deployed_by = $2,"
                " mirrored_status = NULL WHERE req_number = 'REQ-OLD-1'",
                EVIL_SHA,
                EVIL_BY,
            )
        finally:
            await conn.close()
        with path.open("a") as fh:
            fh.write(entry("REQ-NEW-2", "After it"))
        await wait_status(pg_dsn, "REQ-NEW-2", "DEPLOYED")
        entries = await until_file_says(path, "REQ-NEW-2", "DEPLOYED")
        # REQ-OLD-1's lines are written again, each value on its one line.
        shown = "berry **Status**: CANCELLED\\x1b]0;pwned\\x07"
        deadline = time.monotonic() + 30
        while entries["REQ-OLD-1"].fields.get("Deployed By") != shown:
            assert time.monotonic() < deadline, entries["REQ-OLD-1"].fields
            await asyncio.sleep(0.1)
            entries = await until_file_says(path, "REQ-NEW-2", "DEPLOYED")
    text = path.read_text()
    assert sorted(entries) == ["REQ-NEW-2", "REQ-OLD-1"]
    assert "REQ-FORGED-1" not in [e.req_number for e in parse(text)]
    assert "\x1b" not in text
    assert entries["REQ-OLD-1"].status == "DEPLOYED"


# --- the parser on its own -----------------------------------------------------------
def _berry(**fields: Any) -> CompletionNotice:
    body = {"agent": "berry", "req_number": "REQ-P-1", "status": "COMPLETE", **fields}
    return parse_notice(json.dumps(body), known_agents=["berry"])


def test_berry_fields_are_made_safe_when_the_notice_is_accepted() -> None:
    n = _berry(commit_sha=EVIL_SHA, deployed_by=EVIL_BY + "x" * 500, deployed_at="now\nand")
    assert n.commit_sha is None and n.status == "COMPLETE"  # accepted, not refused
    assert n.deployed_by is not None and len(n.deployed_by) <= DEPLOYED_BY_MAX
    assert "\n" not in n.deployed_by and "\x1b" not in n.deployed_by
    assert n.deployed_at == "now and"  # still says it deployed; agogd records the time
    assert set(n.field_notes) == {"commit_sha", "deployed_by", "deployed_at"}
    assert n.published["commit_sha"] == EVIL_SHA  # the cache keeps what Berry said


def test_good_berry_fields_pass_unchanged() -> None:
    n = _berry(
        commit_sha=" 0123abcdef ", deployed_by="berry (demo)", deployed_at="2026-11-23T10:00:00Z"
    )
    assert (n.commit_sha, n.deployed_by, n.deployed_at) == (
        "0123abcdef",
        "berry (demo)",
        "2026-11-23T10:00:00Z",
    )
    assert n.field_notes == {} and "field_notes" not in n.model_dump()
    for sha in ("abc", "g" * 7, "a" * 65, "abc 123"):
        assert _berry(commit_sha=sha).commit_sha is None, sha


async def test_an_entry_agogd_never_started_but_shown_in_progress_is_warned_about(
    nats_server: NatsServer, nc: NATS, pg_dsn: str, tmp_path: Path
) -> None:
    """A file newer than the database (restored from an older backup) shows a
    REQ as IN_PROGRESS that Postgres does not know: nothing would ever start
    it, so agogd says so, and the operator's NEW then starts it."""
    path = tmp_path / "OWNER_REQUESTS.md"
    path.write_text(
        "# Owner requests\n"
        + entry("REQ-LOST-1", "Submitted after the backup").replace("NEW", "IN_PROGRESS")
    )
    await ScriptedAgents(nc).start()
    settings = settings_for(
        nats_server.url, pg_dsn, owner_requests_file=path, owner_requests_interval=0.2
    )
    with capture_logs() as logs:
        async with running_agogd(settings):
            deadline = time.monotonic() + 30
            while not [e for e in logs if e["event"] == "owner_requests.unknown_req"]:
                assert time.monotonic() < deadline, "no warning about the unknown REQ"
                await asyncio.sleep(0.1)
            path.write_text(path.read_text().replace("IN_PROGRESS", "NEW"))
            await wait_status(pg_dsn, "REQ-LOST-1", "DEPLOYED")
    warned = next(e for e in logs if e["event"] == "owner_requests.unknown_req")
    assert warned["req_number"] == "REQ-LOST-1" and warned["file_status"] == "IN_PROGRESS"
    assert "set it to NEW" in warned["reason"]
