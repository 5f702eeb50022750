"""kill -9 of agogd inside every step of a REQ's branch work (worktree made,
stage committed, rebase, merge, push, pull request), then a restart: one
branch, one worktree, one commit per attempt, one merge, one pull request,
no issue.

agogd runs as a real subprocess with ``AGOG_FAILPOINTS`` naming the step at
which it SIGKILLs itself (orchestrator/runtime/failpoints.py); its agents
are real processes (tests/branch_agent.py); the forge is the local server in
this test's event loop, so every wait here polls without blocking it."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from orchestrator.embedded.forge import ForgeServer
from tests.agents import submit
from tests.test_branches import AGENT, git, make_repo, registered

TOKEN = "agog-fault-token-51c0de"
REQ = "REQ-KILL-1"
POINTS = [
    "worktree.recorded",
    "worktree.branched",
    "worktree.added",
    "stage.committed",
    "berry.rebased",
    "berry.merge_made",
    "forge.pushed",
    "forge.pull_request",
]


PIPELINE = Path(__file__).resolve().parents[1] / "orchestrator" / "core" / "pipeline.toml"


def quick_pipeline(tmp_path: Path) -> Path:
    """The registry with the runner's ack wait at 5 s instead of 60: a killed
    agogd's assignment comes back sooner, and the test waits less for it."""
    text = PIPELINE.read_text()
    head, sep, tail = text.partition("[runner_consumer]")
    assert sep and 'ack_wait = "60s"' in tail
    path = tmp_path / "pipeline.toml"
    path.write_text(head + sep + tail.replace('ack_wait = "60s"', 'ack_wait = "5s"', 1))
    return path


def env_for(nats: NatsServer, dsn: str, repo: Path, data: Path, forge: ForgeServer) -> dict:
    return {
        "AGOG_PIPELINE_FILE": str(quick_pipeline(data.parent)),
        "AGOG_NATS_URL": nats.url,
        "AGOG_POSTGRES_DSN": dsn,
        "AGOG_API_TOKEN": "test-token",
        "AGOG_DISPATCH_INTERVAL": "0.2",
        "AGOG_TIMEOUT_SCAN_INTERVAL": "0.2",
        "AGOG_OUTBOX_POLL_INTERVAL": "0.5",
        "AGOG_DATA_DIR": str(data),
        "AGOG_REPO": str(repo),
        "AGOG_RUNNER_AGENTS": "all",
        "AGOG_RUNNER_COMMAND": f"{sys.executable} {AGENT} {{agent}} {{role}}",
        "AGOG_RUNNER_HEARTBEAT_INTERVAL": "0.5",
        "AGOG_RUNNER_KILL_GRACE": "1",
        "AGOG_BERRY_MODE": "native",
        "AGOG_DOCKER_URL": "none",
        "AGOG_WORKTREE_PRUNE_INTERVAL": "0.5",
        "AGOG_FORGE": "github",
        "AGOG_FORGE_URL": forge.api_url,
        "AGOG_FORGE_REPO": f"{forge.owner}/{forge.name}",
        "AGOG_FORGE_TOKEN": TOKEN,
        "AGOG_FORGE_CI_TIMEOUT": "0",
        "AGOG_MEMORY_ENABLED": "false",
        "AGOG_LOG_LEVEL": "info",
    }


async def until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("point", POINTS)
async def test_kill_9_in_any_branch_step_then_restart_makes_everything_once(
    point: str, tmp_path: Path, nats_server: NatsServer, pg_dsn: str, nc: NATS
) -> None:
    repo = make_repo(tmp_path / "repo")
    bare = tmp_path / "forge" / "app.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    forge = await ForgeServer("github", bare, token=TOKEN).start()
    env = env_for(nats_server, pg_dsn, repo, tmp_path / "data", forge)
    first = DaemonProcess({**env, "AGOG_FAILPOINTS": point}).start()
    second: DaemonProcess | None = None
    conn = await asyncpg.connect(pg_dsn)
    try:
        await until(
            lambda: first.named("readiness.ready") or first.proc.poll() is not None,  # type: ignore[union-attr]
            60,
            "agogd ready",
        )
        assert first.named("readiness.ready"), "\n".join(first.lines[-30:])
        await submit(nc, REQ)
        if point == "berry.rebased":
            # Someone lands on main after the REQ branched: Berry must rebase.
            await until(
                lambda: conn.fetchval("SELECT 1 FROM req_worktrees WHERE req_number = $1", REQ),
                60,
                "the REQ's worktree",
            )
            (repo / "NOTES.md").write_text("a colleague's change\n")
            git(repo, "add", "NOTES.md")
            git(repo, "-c", "user.name=C", "-c", "user.email=c@c", "commit", "-qm", "notes")
        await until(lambda: first.proc is not None and first.proc.poll() is not None, 120, point)
        assert first.proc is not None and first.proc.returncode == -signal.SIGKILL, (
            f"agogd did not die at {point}: {first.proc.returncode}"
        )
        second = DaemonProcess(env).start()

        async def finished() -> bool:
            status = await conn.fetchval(
                "SELECT status FROM workflow_state WHERE req_number = $1", REQ
            )
            assert status not in ("BLOCKED", "ESCALATED"), "\n".join(second.lines[-40:])
            return status == "COMPLETE"

        await until(finished, 180, f"{REQ} COMPLETE after the restart")
        await until(lambda: len(registered(repo)) == 1, 30, "the worktree removed")
        rows = await conn.fetchval("SELECT count(*) FROM req_worktrees WHERE req_number = $1", REQ)
    finally:
        for daemon in (first, second):
            if daemon is not None:
                daemon.stop()
        await conn.close()
        await forge.stop()
    branch = f"agog/{REQ}"
    assert git(repo, "branch", "--list", "agog/*").split() == [branch]
    assert rows == 1
    # One commit per stage attempt on the branch.
    trailers = git(
        repo, "log", "--no-merges", "--format=%(trailers:key=Agog-Stage,key=Agog-Attempt,"
        "valueonly,separator=%x2C)", branch,
    ).split()  # fmt: skip
    counts = Counter(trailers)
    assert counts and max(counts.values()) == 1, counts
    # One merge of the REQ on main, one pull request, no issue.
    merges = git(repo, "log", "--merges", "--first-parent", "--format=%H", "main").split()
    assert len(merges) == 1
    assert len(forge.pulls) == 1 and forge.issues == []
    assert forge.violations == []
    if point == "berry.rebased":
        assert (repo / "NOTES.md").exists() and (repo / "src" / "req-kill-1.py").exists()
