"""Berry's native stage on real parts: a real git repository, a real compose
project of busybox services on podman's Docker-API service, real Postgres
and NATS, and the real Compose v2 binary."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import asyncpg
import pytest
from nats.aio.client import Client as NATS

from orchestrator.core import registry
from orchestrator.embedded import NatsServer
from orchestrator.embedded.engine import BUSYBOX_IMAGE, ContainerEngine
from orchestrator.embedded.procs import free_port
from orchestrator.runtime import migrate
from tests.agents import (
    ScriptedAgents,
    collect,
    deliverable_subject,
    notice,
    running_agogd,
    runtime_of,
    settings_for,
    submit,
    wait_status,
)
from workers.adapters.compose_cli import compose_env, run_compose
from workers.adapters.engine_api import PROJECT_LABEL
from workers.release.berry import NativeBerry

PIPELINE = registry.load()
GOOD_CMD = "echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"
HEALTH = ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]


def compose_file(port: int, command: str = GOOD_CMD, restart: str = "no") -> str:
    return json.dumps(
        {
            "services": {
                "web": {
                    "image": BUSYBOX_IMAGE,
                    "command": ["sh", "-c", command],
                    "restart": restart,
                    "ports": [f"127.0.0.1:{port}:8080"],
                    "healthcheck": {"test": HEALTH, "interval": "1h", "timeout": "5s"},
                }
            }
        },
        indent=2,
    )


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def git_init(path: Path, *flags: str) -> None:
    subprocess.run(["git", "init", "-q", *flags, str(path)], check=True)


def write_file(root: Path, path: str, text: str) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


@dataclass
class Workspace:
    """A git working tree holding a compose project that is up and healthy."""

    root: Path
    project: str
    port: int
    engine: ContainerEngine
    remote: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def write(self, path: str, text: str) -> None:
        write_file(self.root, path, text)

    async def compose(self, *args: str) -> tuple[int, str, str]:
        return await run_compose(
            ["-p", self.project, "-f", "docker-compose.app.yml", *args],
            cwd=self.root,
            env=compose_env(self.engine.url),
            timeout=180,
        )

    async def web(self) -> dict[str, Any]:
        async with aiodocker.Docker(url=self.engine.url) as docker:
            listed = await docker.containers.list(
                all=True, filters={"label": [f"{PROJECT_LABEL}={self.project}"]}
            )
            assert len(listed) == 1, f"expected one container, got {len(listed)}"
            return await listed[0].show()


@pytest.fixture
async def workspace(tmp_path: Path, container_engine: ContainerEngine) -> AsyncIterator[Workspace]:
    root, remote = tmp_path / "ws", tmp_path / "remote.git"
    git_init(remote, "--bare")
    git_init(root, "-b", "main")
    ws = Workspace(root, f"berry{uuid.uuid4().hex[:8]}", free_port(), container_engine, remote)
    ws.write("docker-compose.app.yml", compose_file(ws.port))
    ws.write("app/README", "the app\n")
    git(root, "add", ".")
    git(root, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-qm", "v1")
    git(root, "remote", "add", "origin", str(remote))
    code, _, err = await ws.compose("up", "-d")
    assert code == 0, err
    yield ws
    await ws.compose("down", "--remove-orphans", "-t", "1")


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(pg_dsn)
    await migrate.apply(conn, None)
    await conn.close()
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    yield pool
    await pool.close()


def berry_settings(ws: Workspace, nats_url: str, dsn: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "berry_mode": "native",
        "berry_workspace": ws.root,
        "berry_compose_project": ws.project,
        "berry_test_command": "sh -c 'test -f app/feature.txt'",
        "berry_health_urls": [ws.url],
        "berry_health_timeout": 20,
        "docker_url": ws.engine.url,
        "data_dir": ws.root.parent / "agogd-data",
    }
    return settings_for(nats_url, dsn, **{**values, **overrides})


def previous_stages(req: str, files: list[str], billy: dict[str, Any] | None = None) -> list:
    """The cached deliverables of stages 0-5, as the runner hands them over."""
    out = []
    for stage in PIPELINE.stages[:-1]:
        body = notice(stage.agent, req)
        if stage.agent == "roy":
            body["files_modified"] = files
        if stage.agent == "billy" and billy is not None:
            body = billy
        out.append({"stage": stage.index, "agent": stage.agent, "deliverable": body})
    return out


async def run_berry(
    ws: Workspace, pool: asyncpg.Pool, nc: NATS, nats_url: str, dsn: str, previous: list, **kw: Any
) -> dict[str, Any]:
    settings = berry_settings(ws, nats_url, dsn, **kw)
    rt = runtime_of(settings, pool, nc)
    berry = NativeBerry(rt)
    assignment = {
        "req_number": previous[0]["deliverable"]["req_number"],
        "agent": "berry",
        "attempt": 1,
        "contextData": {"featureTitle": "Inventory export"},
    }
    return await berry.run(assignment, previous)


# --- through agogd: the whole pipeline to DEPLOYED --------------------------------
async def deployed_through_agogd(
    nc: NATS, settings: Any, req: str, roy: Callable[[], dict[str, Any]]
) -> tuple[list[dict[str, Any]], asyncpg.Record]:
    """``req`` through a running agogd with scripted agents (Roy's work is
    ``roy()``, Berry's stage agogd's own) until DEPLOYED: Berry's notices and
    the REQ's row."""

    def script(assignment: dict[str, Any]) -> dict[str, Any] | None:
        agent = assignment["agent"]
        if agent == "berry":
            return None  # agogd does Berry's stage itself
        return roy() if agent == "roy" else notice(agent, assignment["req_number"])

    agents = await ScriptedAgents(nc, script).start()
    notices, sub = await collect(nc, deliverable_subject("berry", req))
    async with running_agogd(settings):
        await submit(nc, req, title="Inventory export")
        row = await wait_status(settings.dsn(), req, "DEPLOYED", timeout=180)
    await sub.unsubscribe()
    await agents.stop()
    return notices, row


async def test_native_berry_commits_tests_deploys_and_the_req_is_deployed(
    workspace: Workspace, nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    ws, req = workspace, "REQ-BERRY-1"

    def roy() -> dict[str, Any]:
        ws.write("app/feature.txt", "inventory export\n")
        ws.write("app/new/export.py", "print('export')\n")
        return notice(
            "roy", req, files_created=["app/new/export.py"], files_modified=["app/feature.txt"]
        )

    settings = berry_settings(
        ws, nats_server.url, pg_dsn, berry_release_tag="release-{req}", berry_push_remote="origin"
    )
    notices, row = await deployed_through_agogd(nc, settings, req, roy)

    (berry,) = notices
    head = git(ws.root, "rev-parse", "HEAD").strip()
    assert berry["status"] == "COMPLETE" and berry["deployed"] is True
    assert berry["commit_sha"] == head == row["commit_sha"]
    assert berry["files_changed"] == 2 and berry["tests_passed"] is True
    assert berry["next_agent"] == "tim" and berry["deployed_at"]
    assert row["deployed_by"] == "berry" and row["deployed_at"] is not None
    # The commit: seed 002 message, the configured author, exactly the listed files.
    message = git(ws.root, "log", "-1", "--format=%B")
    assert message.startswith(f"feat({req}): Inventory export\n")
    assert "QA Status: APPROVED by Billy" in message and f"Agog-Req: {req}" in message
    for agent, stage in (("Cynthia", "Research"), ("Roy", "Backend"), ("Berry", "DevOps")):
        assert f"Co-Authored-By: {agent} ({stage}) <{agent.lower()}@agogsaas.ai>" in message
    assert git(ws.root, "log", "-1", "--format=%an <%ae>").strip() == (
        "Berry (DevOps) <berry@agogsaas.ai>"
    )
    assert sorted(git(ws.root, "show", "--name-only", "--format=", "HEAD").split()) == [
        "app/feature.txt",
        "app/new/export.py",
    ]
    # Deployed and healthy; tagged and pushed.
    state = (await ws.web())["State"]
    assert state["Status"] == "running"
    assert berry["deploy"]["health"]["healthy"] is True
    assert berry["deploy"]["health"]["urls"][0]["status"] == 200
    assert berry["release"] == {
        "tag": f"release-{req}",
        "pushed": True,
        "remote": "origin",
        "branch": "main",
    }
    assert git(ws.remote, "rev-parse", f"release-{req}^{{commit}}").strip() == head
    assert git(ws.remote, "rev-parse", "main").strip() == head


# --- NativeBerry.run on its own ----------------------------------------------------
async def test_a_broken_new_service_is_rolled_back_and_reported_failed(
    workspace: Workspace, pool: asyncpg.Pool, nc: NATS, nats_server: NatsServer, pg_dsn: str
) -> None:
    ws = workspace
    before = git(ws.root, "rev-parse", "HEAD").strip()
    ws.write("app/feature.txt", "x\n")
    ws.write("docker-compose.app.yml", compose_file(ws.port, command="echo broken; exit 3"))
    previous = previous_stages("REQ-BROKEN-1", ["app/feature.txt", "docker-compose.app.yml"])
    result = await run_berry(ws, pool, nc, nats_server.url, pg_dsn, previous)

    assert result["status"] == "FAILED" and result["deployed"] is False
    assert "not healthy" in result["reason"] and f"rolled back to {before[:12]}" in result["reason"]
    assert result["commit_sha"] != before  # the REQ's commit stays; the deploy rolled back
    rollback = result["deploy"]["rollback"]
    assert rollback["to"] == before and rollback["healthy"] is True
    failed = result["deploy"]["health"]["containers"][0]
    assert failed["exit_code"] == 3 and "broken" in "\n".join(failed["last_log_lines"])
    info = await ws.web()
    assert info["State"]["Status"] == "running"
    assert "exit 3" not in " ".join(info["Config"]["Cmd"])
    row = await pool.fetchrow("SELECT * FROM berry_deployments WHERE req_number = 'REQ-BROKEN-1'")
    assert row["status"] == "rolled_back" and row["commit_sha"] == result["commit_sha"]


async def test_a_path_outside_the_workspace_is_refused_and_nothing_is_committed(
    workspace: Workspace, pool: asyncpg.Pool, nc: NATS, nats_server: NatsServer, pg_dsn: str
) -> None:
    ws = workspace
    outside = ws.root.parent / "secret.txt"
    outside.write_text("not yours\n")
    (ws.root / "app" / "link").symlink_to(outside)
    head = git(ws.root, "rev-parse", "HEAD").strip()
    for bad in ("../secret.txt", str(outside), "app/link", "app/../../secret.txt", ".git/config"):
        previous = previous_stages("REQ-TRAV-1", ["app/README", bad])
        result = await run_berry(ws, pool, nc, nats_server.url, pg_dsn, previous)
        assert result["status"] == "BLOCKED", bad
        assert [r["path"] for r in result["refused_paths"]] == [bad]
        assert "refused 1 listed file" in result["reason"]
    assert git(ws.root, "rev-parse", "HEAD").strip() == head
    assert git(ws.root, "status", "--porcelain", "--untracked-files=no") == ""


@pytest.mark.parametrize(
    "billy",
    [
        None,
        {
            "agent": "billy",
            "req_number": "REQ-QA-1",
            "status": "FAILED",
            "tests_passed": False,
            "qa_failures": ["export returns 500"],
        },
        {"agent": "billy", "req_number": "REQ-QA-1", "status": "COMPLETE", "tests_failed": 2},
    ],
)
async def test_without_billys_approval_berry_is_blocked(
    billy: dict[str, Any] | None,
    workspace: Workspace,
    pool: asyncpg.Pool,
    nc: NATS,
    nats_server: NatsServer,
    pg_dsn: str,
) -> None:
    ws = workspace
    ws.write("app/feature.txt", "x\n")
    previous = previous_stages("REQ-QA-1", ["app/feature.txt"], billy)
    if billy is None:
        previous = [p for p in previous if p["agent"] != "billy"]
    head = git(ws.root, "rev-parse", "HEAD").strip()
    result = await run_berry(ws, pool, nc, nats_server.url, pg_dsn, previous)
    assert result["status"] == "BLOCKED" and result["deployed"] is False
    assert "billy" in result["reason"]
    if billy is not None and billy.get("qa_failures"):
        assert "export returns 500" in result["reason"]
    assert git(ws.root, "rev-parse", "HEAD").strip() == head  # no commit


async def test_without_an_engine_the_req_is_committed_and_tested_but_not_deployed(
    workspace: Workspace, pool: asyncpg.Pool, nc: NATS, nats_server: NatsServer, pg_dsn: str
) -> None:
    ws = workspace
    ws.write("app/feature.txt", "x\n")
    previous = previous_stages("REQ-NOENG-1", ["app/feature.txt"])
    for docker_url, says in (
        ("none", "no container engine is configured"),
        ("unix:///nonexistent/engine.sock", "no container engine is reachable"),
    ):
        result = await run_berry(
            ws, pool, nc, nats_server.url, pg_dsn, previous, docker_url=docker_url
        )
        assert result["status"] == "COMPLETE" and result["deployed"] is False
        assert "deployed_at" not in result and result["tests_passed"] is True
        assert says in result["deploy"]["reason"] and says in result["summary"]
    # The second run found the first run's commit instead of committing again.
    assert git(ws.root, "log", "--format=%s").count("feat(REQ-NOENG-1)") == 1


async def test_failing_tests_stop_before_the_deploy(
    workspace: Workspace, pool: asyncpg.Pool, nc: NATS, nats_server: NatsServer, pg_dsn: str
) -> None:
    ws = workspace
    ws.write("app/other.txt", "x\n")  # the test command wants app/feature.txt
    previous = previous_stages("REQ-RED-1", ["app/other.txt"])
    started = (await ws.web())["State"]["StartedAt"]
    result = await run_berry(ws, pool, nc, nats_server.url, pg_dsn, previous)
    assert result["status"] == "FAILED" and result["tests_passed"] is False
    assert result["tests"]["exit_code"] == 1 and "deploy" not in result
    assert (await ws.web())["State"]["StartedAt"] == started  # not redeployed
