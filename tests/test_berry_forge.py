"""Berry on a REQ's branch and the forge: the branch integrated (never a list
of files), pushed for real over smart HTTP into the local forge's bare
repository, one pull request however often Berry runs, CI red, green or
late, an issue when it fails (closed once Berry's stage succeeds), and a
missing or refused token a clear BLOCKED reason that never shows the token.

The forge is the project's local server (orchestrator/embedded/forge), which
checks every GitHub request and response against GitHub's OpenAPI
description; Postgres, NATS, git and Berry's code are the real ones."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from pydantic import SecretStr

from orchestrator.embedded import NatsServer
from orchestrator.embedded.forge import ForgeServer
from orchestrator.runtime import migrate
from orchestrator.wiring import forge_of
from tests.agents import runtime_of, settings_for
from tests.test_berry import previous_stages
from tests.test_branches import git, make_repo
from workers.branches.worktrees import AttemptKey, Worktrees, worktrees_of
from workers.release.berry import NativeBerry

TOKEN = "agog-forge-secret-9d2e77b1"
REQ = "REQ-FORGE-1"


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(pg_dsn)
    await migrate.apply(conn, None)
    await conn.close()
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=6)
    yield pool
    await pool.close()


@dataclass
class Setup:
    repo: Path
    bare: Path
    server: ForgeServer
    worktrees: Worktrees
    pool: asyncpg.Pool
    nc: NATS
    nats_url: str
    dsn: str
    data: Path

    def berry(self, **overrides: Any) -> NativeBerry:
        values: dict[str, Any] = {
            "repo": self.repo,
            "data_dir": self.data,
            "berry_mode": "native",
            "docker_url": "none",
            "forge": self.server.flavour,
            "forge_url": self.server.api_url,
            "forge_repo": f"{self.server.owner}/{self.server.name}",
            "forge_token": SecretStr(TOKEN),
            "forge_labels": ["agog"],
            "forge_reviewers": ["toddjhayden"],
            "forge_ci_timeout": 20,
            "forge_ci_poll": 0.1,
        }
        settings = settings_for(self.nats_url, self.dsn, **{**values, **overrides})
        rt = runtime_of(settings, self.pool, self.nc)
        return NativeBerry(rt, worktrees=self.worktrees, forge=forge_of(settings))

    def remote(self, ref: str) -> str | None:
        done = subprocess.run(
            ["git", "--git-dir", str(self.bare), "rev-parse", "--verify", "-q", ref],
            capture_output=True,
            text=True,
        )
        return done.stdout.strip() or None


async def make_setup(
    flavour: str, tmp_path: Path, pool: asyncpg.Pool, nc: NATS, nats_url: str, dsn: str
) -> AsyncIterator[Setup]:
    repo = make_repo(tmp_path / "repo")
    bare = tmp_path / "forge" / "app.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    server = await ForgeServer(flavour, bare, token=TOKEN).start()  # type: ignore[arg-type]
    settings = settings_for(nats_url, dsn, repo=repo, data_dir=tmp_path / "data")
    wts = worktrees_of(settings, pool)
    assert wts is not None
    await wts.check()
    try:
        yield Setup(repo, bare, server, wts, pool, nc, nats_url, dsn, tmp_path / "data")
    finally:
        await server.stop()
    assert server.violations == [], server.violations


@pytest.fixture
async def github(
    tmp_path: Path, pool: asyncpg.Pool, nc: NATS, nats_server: NatsServer, pg_dsn: str
) -> AsyncIterator[Setup]:
    async for setup in make_setup("github", tmp_path, pool, nc, nats_server.url, pg_dsn):
        yield setup


@pytest.fixture
async def gitea(
    tmp_path: Path, pool: asyncpg.Pool, nc: NATS, nats_server: NatsServer, pg_dsn: str
) -> AsyncIterator[Setup]:
    async for setup in make_setup("gitea", tmp_path, pool, nc, nats_server.url, pg_dsn):
        yield setup


async def roy_works(s: Setup, attempt: int, text: str) -> str:
    """Roy's attempt on the REQ's branch, committed by the runner's code."""
    wt = await s.worktrees.ensure(REQ)
    key = AttemptKey(REQ, 2, attempt)
    await s.worktrees.begin(wt, key, "roy")
    (wt.path / "src").mkdir(exist_ok=True)
    (wt.path / "src" / "feature.py").write_text(text)
    notice = {"summary": f"the feature, take {attempt}", "files_modified": ["src/feature.py"]}
    found = await s.worktrees.finish(wt, key, agent="roy", stage_name="Backend", notice=notice)
    assert found["commit"]
    return found["commit"]


def previous(summary: str = "all green") -> list[dict[str, Any]]:
    stages = previous_stages(REQ, [])
    for stage in stages:
        if stage["agent"] == "billy":
            stage["deliverable"]["summary"] = summary
    return stages


async def run(berry: NativeBerry, attempt: int, prev: list[dict[str, Any]]) -> dict[str, Any]:
    assignment = {
        "req_number": REQ,
        "agent": "berry",
        "attempt": attempt,
        "contextData": {"featureTitle": "Inventory search"},
    }
    return await berry.run(assignment, prev)


async def ci_when_pushed(s: Setup, state: str, name: str = "unit") -> str:
    """Wait for the REQ's branch on the forge, then report CI on its commit."""
    deadline = time.monotonic() + 30
    while (sha := s.remote(f"refs/heads/agog/{REQ}")) is None:
        assert time.monotonic() < deadline, "the branch was never pushed"
        await asyncio.sleep(0.05)
    if s.server.flavour == "github":
        s.server.set_check(sha, name, state, url=f"https://ci.example/{name}/1")
    else:
        s.server.set_status(sha, name, state, url=f"https://ci.example/{name}/1")
    return sha


async def test_green_ci_pushes_the_branch_opens_one_pull_request_and_merges(
    github: Setup,
) -> None:
    s = github
    head = await roy_works(s, 1, "print('v1')\n")
    main_before = git(s.repo, "rev-parse", "main").strip()
    berry = s.berry()
    result, sha = await asyncio.gather(run(berry, 1, previous()), ci_when_pushed(s, "success"))
    assert result["status"] == "COMPLETE", result
    assert sha == head == result["branch_head"], "the branch itself was pushed, already on main"
    # Integrated: one merge commit on main whose second parent is the branch.
    merge = result["commit_sha"]
    assert git(s.repo, "rev-parse", "main").strip() == merge
    assert git(s.repo, "rev-parse", f"{merge}^1", f"{merge}^2").split() == [main_before, head]
    assert result["files_committed"] == ["src/feature.py"]
    # One pull request, seed 002's title and body, labels and reviewers.
    (pr,) = s.server.pulls
    assert result["pull_request"]["created"] and result["pull_request"]["number"] == pr.number
    assert pr.title == f"{REQ}: Inventory search"
    assert pr.pull is not None and pr.pull.head == f"agog/{REQ}" and pr.pull.base == "main"
    for part in ("## Summary\nall green", "## Changes", "## Testing", "## Deliverables"):
        assert part in (pr.body or "")
    assert "agog" in pr.labels and "toddjhayden" in pr.pull.reviewers
    assert result["ci"]["state"] == "success"
    # Berry again (a retry, a redelivery): the same pull request, not a second.
    again = await run(s.berry(), 2, previous())
    assert again["status"] == "COMPLETE" and again["commit_sha"] == merge
    assert len(s.server.pulls) == 1 and again["pull_request"]["created"] is False
    assert s.server.issues == []


async def test_red_ci_blocks_opens_one_issue_and_the_fix_updates_the_pull_request(
    github: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    s = github
    await roy_works(s, 1, "print('broken')\n")
    main_before = git(s.repo, "rev-parse", "main").strip()
    result, _ = await asyncio.gather(run(s.berry(), 1, previous()), ci_when_pushed(s, "failure"))
    assert result["status"] == "BLOCKED", result
    assert "CI failed" in result["reason"] and "unit (failure, http" in result["reason"]
    assert git(s.repo, "rev-parse", "main").strip() == main_before, "red CI: nothing merged"
    (issue,) = s.server.issues
    assert issue.title.startswith(f"[{REQ}] CI failed") and issue.state == "open"
    assert result["issue"]["number"] == issue.number and result["issue"]["created"]
    # The same red CI again: the issue gets a comment, not a twin.
    again, _ = await asyncio.gather(run(s.berry(), 2, previous()), ci_when_pushed(s, "failure"))
    assert again["status"] == "BLOCKED" and len(s.server.issues) == 1
    assert len(issue.comments) == 1 and again["issue"]["created"] is False
    # The rework fixes it: the same pull request, updated; green CI; the issue closed.
    fixed = await roy_works(s, 2, "print('fixed')\n")
    (pr,) = s.server.pulls
    done, _ = await asyncio.gather(
        run(s.berry(), 3, previous("fixed and green")), ci_when_pushed_at(s, fixed)
    )
    assert done["status"] == "COMPLETE", done
    assert len(s.server.pulls) == 1 and done["pull_request"]["updated"] is True
    assert "fixed and green" in (pr.body or "") and s.remote(f"refs/heads/agog/{REQ}") == fixed
    assert issue.state == "closed" and done["issue"]["closed"]
    assert TOKEN not in capsys.readouterr().out + json.dumps([result, again, done])


async def ci_when_pushed_at(s: Setup, sha: str) -> None:
    deadline = time.monotonic() + 30
    while s.remote(f"refs/heads/agog/{REQ}") != sha:
        assert time.monotonic() < deadline, "the fix was never pushed"
        await asyncio.sleep(0.05)
    s.server.set_check(sha, "unit", "success")


async def test_ci_that_never_finishes_blocks_when_its_time_is_up(github: Setup) -> None:
    s = github
    await roy_works(s, 1, "print('slow')\n")
    result, _ = await asyncio.gather(
        run(s.berry(forge_ci_timeout=1.0), 1, previous()), ci_when_pushed(s, "pending")
    )
    assert result["status"] == "BLOCKED" and "CI did not finish within 1s" in result["reason"]
    assert len(s.server.issues) == 1


async def test_a_failed_push_blocks_with_an_issue_holding_gits_error(github: Setup) -> None:
    s = github
    await roy_works(s, 1, "print('x')\n")
    hook = s.bare / "hooks" / "pre-receive"  # the forge refuses it, as a protected branch would
    hook.write_text("#!/bin/sh\necho 'GH006: Protected branch update failed' >&2\nexit 1\n")
    hook.chmod(0o755)
    result = await run(s.berry(), 1, previous())
    assert result["status"] == "BLOCKED" and result["reason"].startswith("the push of agog/")
    (issue,) = s.server.issues
    assert "push" in issue.title and "GH006: Protected branch update failed" in (issue.body or "")
    assert s.server.pulls == []


async def test_red_tests_block_with_an_issue_holding_their_output(github: Setup) -> None:
    s = github
    await roy_works(s, 1, "print('x')\n")
    berry = s.berry(berry_test_command="sh -c 'echo assertion failed: 2 != 3; exit 1'")
    result = await run(berry, 1, previous())
    assert result["status"] == "BLOCKED" and result["tests_passed"] is False
    (issue,) = s.server.issues
    assert "assertion failed: 2 != 3" in (issue.body or "")
    assert s.remote(f"refs/heads/agog/{REQ}") is None, "red tests: nothing pushed"


@pytest.mark.parametrize("token", ["missing", "refused"])
async def test_a_missing_or_refused_token_is_a_clear_blocked_reason(
    github: Setup, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    s = github
    await roy_works(s, 1, "print('x')\n")
    if token == "refused":
        s.server.revoke_token()
        berry = s.berry()
    else:
        berry = s.berry(forge_token=None)
    result = await run(berry, 1, previous())
    assert result["status"] == "BLOCKED", result
    if token == "missing":
        assert "AGOG_FORGE_TOKEN" in result["reason"]
    else:
        assert "401" in result["reason"] or "refused" in result["reason"]
    assert "Traceback" not in result["reason"]
    assert TOKEN not in capsys.readouterr().out + json.dumps(result)
    assert s.server.pulls == []


async def test_gitea_green_and_red_through_its_commit_statuses(gitea: Setup) -> None:
    s = gitea
    await roy_works(s, 1, "print('gitea')\n")
    red, _ = await asyncio.gather(run(s.berry(), 1, previous()), ci_when_pushed(s, "failure"))
    assert red["status"] == "BLOCKED" and "unit" in red["reason"]
    assert len(s.server.issues) == 1
    green, _ = await asyncio.gather(run(s.berry(), 2, previous()), ci_when_pushed(s, "success"))
    assert green["status"] == "COMPLETE", green
    assert len(s.server.pulls) == 1 and s.server.issues[0].state == "closed"
