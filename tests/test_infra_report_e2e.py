"""Miki's infrastructure report on real parts: a compose project brought up by
the real Compose binary on podman's Docker API, a real nats-server with the
registry's topology, a real PostgreSQL; then through a running agogd (a
request on NATS, and `agogctl infra report`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiodocker
import asyncpg
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from orchestrator.embedded.engine import BUSYBOX_IMAGE, ContainerEngine
from orchestrator.runtime.topology import Reconciler
from tests.agents import PIPELINE, collect, running_agogd, settings_for
from workers.adapters.compose_cli import compose_env, run_compose
from workers.adapters.engine_api import PROJECT_LABEL
from workers.infra.report import build_report, publish_report

COMPOSE = """\
name: {project}
services:
  web:
    image: {image}
    command: ["sh", "-c", "touch /tmp/ok; exec sleep 600"]
    volumes:
      - data:/data
      - ./conf:/conf:ro
    networks: [front, back]
    healthcheck:
      test: ["CMD-SHELL", "test -f /tmp/ok"]
      interval: 1h
  job:
    image: {image}
    command: ["sh", "-c", "echo done"]
    networks: [back]
  flaky:
    image: {image}
    command: ["sh", "-c", "echo failing; exit 3"]
    restart: on-failure:2
    networks: [back]
  spare:
    image: {image}
    command: ["sleep", "600"]
volumes:
  data:
networks:
  front:
  back:
"""


@dataclass
class Stack:
    """A compose project up on the engine, plus one container started by hand."""

    project: str
    file: Path
    engine: ContainerEngine
    manual: str

    async def compose(self, *args: str) -> tuple[int, str, str]:
        return await run_compose(
            ["-f", str(self.file), *args],
            cwd=self.file.parent,
            env=compose_env(self.engine.url),
            timeout=180,
        )


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.1)


@pytest_asyncio.fixture(scope="module")
async def stack(
    container_engine: ContainerEngine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    project = f"agogir{uuid.uuid4().hex[:6]}"
    root = tmp_path_factory.mktemp("stack")
    (root / "conf").mkdir()
    file = root / "docker-compose.yml"
    file.write_text(COMPOSE.format(project=project, image=BUSYBOX_IMAGE))
    stack = Stack(project, file, container_engine, f"{project}-web-manual")
    docker = aiodocker.Docker(url=container_engine.url)
    try:
        code, _, err = await stack.compose("up", "-d", "web", "job", "flaky")
        assert code == 0, err
        # A container of the project started by hand: no volume, not on its networks.
        manual = await docker.containers.create_or_replace(
            name=stack.manual,
            config={
                "Image": BUSYBOX_IMAGE,
                "Cmd": ["sleep", "600"],
                "Labels": {PROJECT_LABEL: project, "com.docker.compose.service": "web"},
            },
        )
        await manual.start()

        async def flaky_gave_up() -> bool:
            info = await docker.containers.container(f"{project}-flaky-1").show()
            return info["RestartCount"] == 2 and info["State"]["Status"] == "exited"

        await eventually(flaky_gave_up)
        yield stack
    finally:
        await stack.compose("down", "-v", "--remove-orphans", "-t", "1")
        try:
            await docker.containers.container(stack.manual).delete(force=True)
        except aiodocker.DockerError:
            pass
        await docker.close()


async def topology(nc: NATS) -> None:
    """The registry's streams and consumers, 3 notices on Roy's stream, one of
    them fetched and not acked (so pending 2 + ack pending 1 = lag 3), and a
    stream that is not agogd's."""
    await Reconciler(nc, PIPELINE).reconcile()
    js = nc.jetstream()
    for n in range(3):
        await js.publish("agog.deliverables.roy.backend.REQ-IR-1", json.dumps({"n": n}).encode())
    sub = await js.pull_subscribe_bind("agogd_deliverables", "agog_features_backend")
    assert len(await sub.fetch(1, timeout=5)) == 1
    await js.add_stream(name="other_stream", subjects=["other.>"])


def check_containers(report: dict[str, Any], stack: Stack) -> None:
    """Every container field, checked against what the stack really is."""
    p = stack.project
    by_name = {c["name"]: c for c in report["containers"]}
    assert set(by_name) == {f"{p}-web-1", f"{p}-job-1", f"{p}-flaky-1", stack.manual}
    assert report["projects"] == [p]
    assert report["engine"]["reachable"] is True and report["engine"]["version"]

    web = by_name[f"{p}-web-1"]
    assert (web["project"], web["service"], web["status"]) == (p, "web", "running")
    # podman runs no health timer: the check ran through exec.
    assert (web["health"], web["health_source"]) == ("healthy", "exec")
    assert (web["exit_code"], web["restart_count"]) == (0, 0)
    assert web["compose_checked"] is True
    assert web["mount_problems"] == [] and web["network_problems"] == []
    assert web["state_problems"] == [] and web["verdict"] == "ok"
    mounts = {m["target"]: m for m in web["mounts"]}
    assert (mounts["/data"]["type"], mounts["/data"]["source"]) == ("volume", f"{p}_data")
    assert (mounts["/conf"]["type"], mounts["/conf"]["read_only"]) == ("bind", True)
    assert mounts["/conf"]["source"] == str(stack.file.parent / "conf")
    assert all(m["expected"] for m in web["mounts"])
    assert [(n["name"], n["expected"]) for n in web["networks"]] == [
        (f"{p}_back", True),
        (f"{p}_front", True),
    ]
    assert all(n["ip"] for n in web["networks"])

    job = by_name[f"{p}-job-1"]
    assert (job["status"], job["exit_code"], job["health"]) == ("exited", 0, None)
    assert job["verdict"] == "ok" and job["mount_problems"] == []

    flaky = by_name[f"{p}-flaky-1"]
    assert (flaky["status"], flaky["exit_code"], flaky["restart_count"]) == ("exited", 3, 2)
    assert flaky["restart_policy"] == "on-failure"
    assert flaky["state_problems"] == ["exited with code 3"] and flaky["verdict"] == "failed"

    manual = by_name[stack.manual]
    assert manual["status"] == "running" and manual["compose_checked"] is True
    assert manual["mount_problems"] == [
        f"missing volume {p}_data mount at /data",
        f"missing bind {stack.file.parent / 'conf'} mount at /conf",
    ]
    assert f"not on network {p}_back (the compose file says so)" in manual["network_problems"]
    assert f"not on network {p}_front (the compose file says so)" in manual["network_problems"]
    # ...and on the engine's default network instead (podman's "podman", Docker's "bridge").
    assert any("which the compose file does not give it" in x for x in manual["network_problems"])
    assert manual["verdict"] == "degraded"

    [compose] = report["compose"]
    assert (compose["project"], compose["file"], compose["error"]) == (p, str(stack.file), None)
    assert compose["services"] == ["flaky", "job", "spare", "web"]
    assert compose["missing_services"] == ["spare"]


def check_streams(report: dict[str, Any]) -> None:
    assert report["nats"]["reachable"] is True and report["nats"]["problems"] == []
    by_name = {s["stream"]: s for s in report["streams"]}
    assert set(by_name) == {s.name for s in PIPELINE.streams}  # every agog_*, no other
    backend = by_name["agog_features_backend"]
    assert (backend["messages"], backend["last_seq"]) == (3, 3) and backend["bytes"] > 0
    [consumer] = backend["consumers"]
    assert consumer["name"] == "agogd_deliverables"
    assert (consumer["pending"], consumer["ack_pending"], consumer["lag"]) == (2, 1, 3)
    events = {c["name"]: c for c in by_name["agog_orchestration_events"]["consumers"]}
    assert events["agogd_infra_reports"]["filter_subject"] == (
        "agog.orchestration.events.infra_report.requested.>"
    )
    for stream in report["streams"]:
        assert {"messages", "bytes", "lag", "consumers"} <= set(stream)


async def test_the_report_on_real_parts(
    stack: Stack, nats_server: NatsServer, nc: NATS, pg_dsn: str, tmp_path: Path
) -> None:
    await topology(nc)
    (tmp_path / "blob").write_bytes(b"x" * 10_000)
    settings = settings_for(
        nats_server.url,
        pg_dsn,
        docker_url=stack.engine.url,
        infra_compose_files=[str(stack.file)],
        infra_data_dirs=[str(tmp_path), str(tmp_path / "missing")],
    )
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        report = await build_report(
            settings, PIPELINE, nc=nc, pool=pool, docker_url=stack.engine.url, feature="ir"
        )
    finally:
        await pool.close()
    check_containers(report, stack)
    check_streams(report)

    pg = report["postgres"]
    assert pg["reachable"] is True and pg["version"].startswith("16")
    database = urlsplit(pg_dsn).path.lstrip("/")  # the DSN names its passfile after it
    assert pg["database"] == database and pg["database_bytes"] > 0
    assert pg["latency_ms"] >= 0 and pg["problems"] == []

    here, missing = report["disks"]
    assert here["path"] == str(tmp_path) and here["exists"] is True
    assert here["total"] > 0 and here["used"] + here["free"] <= here["total"]
    assert 0 <= here["percent"] <= 100 and here["size_bytes"] >= 10_000
    assert (missing["exists"], missing["error"]) == (False, "no such directory")

    assert report["verdict"] == "failed"  # the flaky service
    problems = report["problems"]
    assert f"container {stack.project}-flaky-1: exited with code 3" in problems
    assert f"project {stack.project}: service spare has no container" in problems
    assert any(p.startswith(f"container {stack.manual}: missing volume") for p in problems)
    assert f"{tmp_path / 'missing'}: no such directory" in problems
    assert (report["feature"], report["reason"]) == ("ir", "request")


async def test_a_base_file_and_its_override_are_one_project(
    stack: Stack, nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    override = stack.file.parent / "docker-compose.override.yml"
    override.write_text("services:\n  web:\n    volumes:\n      - ./extra:/extra\n")
    settings = settings_for(
        nats_server.url,
        "postgresql://nobody@127.0.0.1:1/none",
        docker_url=stack.engine.url,
        infra_compose_files=[f"{stack.file}+{override}", f"{stack.file}+{tmp_path / 'gone.yml'}"],
    )
    report = await build_report(
        settings, PIPELINE, nc=nc, pool=None, docker_url=stack.engine.url, feature="ir"
    )
    merged, missing = report["compose"]
    assert (merged["project"], merged["error"]) == (stack.project, None)
    assert merged["file"] == f"{stack.file}+{override}"
    assert (missing["project"], missing["error"]) == (None, f"{tmp_path / 'gone.yml'} not found")
    # The override's mount is expected of web, which was started without it.
    web = {c["name"]: c for c in report["containers"]}[f"{stack.project}-web-1"]
    extra = stack.file.parent / "extra"
    assert web["mount_problems"] == [f"missing bind {extra} mount at /extra"]


async def test_every_part_that_is_away_says_why(tmp_path: Path) -> None:
    """No engine, no compose file, a broken one, no NATS, no Postgres: still a report."""
    (tmp_path / "bad.yml").write_text("services: [not, a, mapping\n")
    settings = settings_for(
        "nats://127.0.0.1:1",
        "postgresql://nobody@127.0.0.1:1/none",
        docker_url=f"unix://{tmp_path}/no-engine.sock",
        heal_projects=["someproject"],
        infra_compose_files=[str(tmp_path / "absent.yml"), str(tmp_path / "bad.yml")],
        infra_data_dirs=[str(tmp_path / "gone")],
    )
    report = await build_report(
        settings, PIPELINE, nc=None, pool=None, docker_url=settings.docker_url
    )
    assert report["verdict"] == "failed"
    assert report["engine"]["reachable"] is False and report["engine"]["error"]
    assert report["containers"] == [] and report["projects"] == ["someproject"]
    absent, bad = report["compose"]
    assert absent["error"] == "not found"
    assert bad["error"].startswith("invalid: ") and bad["project"] is None
    assert report["nats"] == {
        "reachable": False,
        "error": "not connected to NATS",
        "verdict": "failed",
        "problems": ["NATS: not connected to NATS"],
    }
    assert report["streams"] == []
    assert report["postgres"]["reachable"] is False and report["postgres"]["error"]
    assert report["disks"][0]["exists"] is False
    assert len(report["problems"]) == 6


def _agogctl(url: str, *args: str, token: str = "test-token") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
    env["AGOG_API_TOKEN"] = token
    return subprocess.run(
        [str(Path(sys.executable).parent / "agogctl"), "--url", url, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


async def _report_events(dsn: str, req: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT kind, agent FROM workflow_events WHERE req_number = $1", req
        )
    finally:
        await conn.close()


async def test_agogd_answers_a_request_on_nats(
    stack: Stack, nats_server: NatsServer, nc: NATS, pg_dsn: str, tmp_path: Path
) -> None:
    reports, _ = await collect(nc, "agog.deliverables.miki.devops.>")
    rejections, _ = await collect(nc, "agog.orchestration.events.message.rejected")
    settings = settings_for(
        nats_server.url,
        pg_dsn,
        docker_url=stack.engine.url,
        infra_compose_files=[str(stack.file)],
        infra_data_dirs=[str(tmp_path)],
    )
    async with running_agogd(settings) as daemon:
        assert daemon.wiring.parts.infra_reports is not None
        js = nc.jetstream()
        await js.publish(
            "agog.orchestration.events.infra_report.requested.nats-fix",
            json.dumps({"reason": "check", "requested_by": "test"}).encode(),
        )
        await eventually(lambda: _true(reports))
        [got] = reports
        assert got["subject"] == "agog.deliverables.miki.devops.nats-fix"
        assert (got["agent"], got["status"], got["req_number"], got["feature"]) == (
            "miki",
            "COMPLETE",
            "REQ-INFRA-nats-fix",
            "nats-fix",
        )
        report = got["report"]
        assert (report["reason"], report["requested_by"]) == ("check", "test")
        assert got["summary"] == report["summary"] and got["verdict"] == "failed"
        assert sorted(got["containers_affected"]) == sorted(
            [f"{stack.project}-flaky-1", stack.manual]
        )
        check_containers(report, stack)
        assert report["postgres"]["reachable"] is True
        assert report["disks"][0]["path"] == str(tmp_path)
        streams = {s["stream"]: s for s in report["streams"]}
        assert set(streams) == {s.name for s in PIPELINE.streams}

        # The engine keeps Miki's deliverable as history; it does not reject it.
        async def kept() -> bool:
            events = await _report_events(pg_dsn, "REQ-INFRA-nats-fix")
            return [(e["kind"], e["agent"]) for e in events] == [("report", "miki")]

        await eventually(kept)

        # A malformed request: one rejection event, term'd, never redelivered.
        await js.publish("agog.orchestration.events.infra_report.requested.bad", b"{not json")
        await eventually(lambda: _true(rejections))
        [rejected] = rejections
        assert rejected["reason_code"] == "invalid_json" and rejected["by"] == "infra-report"
        assert rejected["subject"] == "agog.orchestration.events.infra_report.requested.bad"

        async def settled() -> bool:
            info = await js.consumer_info("agog_orchestration_events", "agogd_infra_reports")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(settled)
        await asyncio.sleep(1.0)
        info = await js.consumer_info("agog_orchestration_events", "agogd_infra_reports")
        assert info.num_redelivered == 0 and info.num_ack_pending == 0
        assert len(reports) == 1 and len(rejections) == 1
        assert daemon.wiring.parts.infra_reports.answered == 1

        # Berry's call after a deploy: the REQ is the feature; a retried call
        # with the same msg_id publishes once.
        rt = daemon.runtime
        first = await publish_report(rt, "REQ-SHOP-7", reason="deploy", msg_id="deploy:7:1")
        again = await publish_report(rt, "REQ-SHOP-7", reason="deploy", msg_id="deploy:7:1")
        assert first["published"] and not first["duplicate"]
        assert again["published"] and again["duplicate"]
        assert first["subject"] == "agog.deliverables.miki.devops.REQ-SHOP-7"
        assert first["req_number"] == "REQ-SHOP-7" and first["report"]["reason"] == "deploy"
        stored = await js.stream_info(
            "agog_features_devops", subjects_filter="agog.deliverables.miki.devops.REQ-SHOP-7"
        )
        assert stored.state.subjects == {"agog.deliverables.miki.devops.REQ-SHOP-7": 1}


async def test_agogctl_infra_report(
    stack: Stack, nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    reports, _ = await collect(nc, "agog.deliverables.miki.devops.cli-check")
    settings = settings_for(
        nats_server.url, pg_dsn, docker_url=stack.engine.url, infra_compose_files=[str(stack.file)]
    )
    async with running_agogd(settings) as daemon:
        url = daemon.http.url
        raw = await asyncio.to_thread(
            _agogctl, url, "infra", "report", "--feature", "cli-check", "--json"
        )
        assert raw.returncode == 1, raw.stderr  # problems found (the flaky service)
        body = json.loads(raw.stdout)
        assert body["published"] is True and body["publish_error"] is None
        assert body["subject"] == "agog.deliverables.miki.devops.cli-check"
        assert body["report"]["reason"] == "api"
        check_containers(body["report"], stack)
        check_streams_present = {s["stream"] for s in body["report"]["streams"]}
        assert check_streams_present == {s.name for s in PIPELINE.streams}
        await eventually(lambda: _true(reports))
        assert reports[0]["report"]["generated_at"] == body["report"]["generated_at"]

        text = await asyncio.to_thread(_agogctl, url, "infra", "report", "--feature", "cli-check")
        assert text.returncode == 1
        for needle in (
            "verdict=FAILED",
            f"{stack.project}-flaky-1",
            "exited with code 3",
            "agog_features_devops",
            "postgres  reachable",
            f"missing volume {stack.project}_data mount at /data",
        ):
            assert needle in text.stdout, needle

        denied = await asyncio.to_thread(_agogctl, url, "infra", "report", token="wrong")
        assert denied.returncode == 5 and "bearer token" in denied.stderr  # unauthorized


async def _true(value: Any) -> bool:
    return bool(value)


def test_agogctl_infra_report_without_agogd_exits_3() -> None:
    started = time.monotonic()
    result = _agogctl("http://127.0.0.1:1", "infra", "report")
    assert result.returncode == 3 and "cannot reach agogd" in result.stderr
    assert time.monotonic() - started < 30
