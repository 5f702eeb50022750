"""Berry's staging -> smoke tests -> pre-flight -> production flow on real parts:
a real git repository, a compose project per environment built from a
Dockerfile on podman's Docker-API service (the real Compose v2 binary, the
legacy builder: podman serves no BuildKit), real Postgres (the records, and
an app database dumped with the real pg_dump and restored with pg_restore).
The pure parts (smoke-spec parsing, env files, ``${VAR}``, the pre-flight
checklist) are tested on their own at the end."""

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
from datetime import datetime
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from pydantic import SecretStr

from orchestrator.embedded import NatsServer, PostgresServer
from orchestrator.embedded.engine import BUSYBOX_IMAGE, ContainerEngine
from orchestrator.embedded.procs import free_port
from orchestrator.runtime import pg_tools
from tests.agents import notice, runtime_of, settings_for
from tests.test_berry import (
    HEALTH,
    deployed_through_agogd,
    git,
    git_init,
    previous_stages,
    write_file,
)
from workers.adapters.compose_cli import compose_env, run_compose
from workers.adapters.engine_api import PROJECT_LABEL
from workers.release import preflight, records
from workers.release.backups import Backups
from workers.release.berry import NativeBerry
from workers.release.environments import (
    EnvError,
    check_template,
    interpolate,
    parse_env_file,
    staging_project,
)
from workers.release.smoke import SmokeCheck, parse_checks

COMPOSE = {
    "services": {
        "web": {
            "build": {
                "context": ".",
                "dockerfile": "app/Dockerfile",
                "args": {"BUILT_FOR": "${DEPLOY_NAME:-unknown}"},
            },
            "restart": "no",
            "ports": ["127.0.0.1:${WEB_PORT}:8080"],
            "healthcheck": {"test": HEALTH, "interval": "1h", "timeout": "5s"},
        }
    }
}
# built-for.txt says which environment's build made the image: production
# serving "staging" proves it runs staging's image, never rebuilt.
DOCKERFILE = f"""FROM {BUSYBOX_IMAGE}
ARG BUILT_FOR=unknown
COPY app/index.html /www/index.html
RUN echo "$BUILT_FOR" > /www/built-for.txt
CMD {{cmd}}
"""
SERVE = '["httpd", "-f", "-p", "8080", "-h", "/www"]'
CRASH = '["sh", "-c", "echo broken at start; exit 3"]'
SMOKE = [
    {
        "name": "home",
        "url": "http://127.0.0.1:${WEB_PORT}/",
        "status": 200,
        "contains": "Inventory",
    },
    # Each environment's env file reaches the command: its port, its settings.
    {"name": "config", "command": 'sh -c \'echo "$DEPLOY_ENV on $WEB_PORT"; test -n "$PAY_URL"\''},
]


@dataclass
class Stacks:
    """A git working tree whose app is deployed per environment: staging and
    production, each a compose project with its env file and port."""

    root: Path
    project: str
    ports: dict[str, int]
    engine: ContainerEngine

    @property
    def staging(self) -> str:
        return f"{self.project}-staging"

    def write(self, path: str, text: str) -> None:
        write_file(self.root, path, text)

    def env_file(self, environment: str, **extra: str) -> None:
        values = {
            "WEB_PORT": str(self.ports[environment]),
            "DEPLOY_NAME": environment,
            "PAY_URL": "http://payments.internal",
            **extra,
        }
        name = ".env" if environment == "production" else ".env.staging"
        self.write(name, "".join(f"{k}={v}\n" for k, v in values.items() if v))

    async def compose(self, project: str, env_file: str, *args: str) -> tuple[int, str, str]:
        return await run_compose(
            ["-p", project, "--env-file", env_file, "-f", "docker-compose.app.yml", *args],
            cwd=self.root,
            env=compose_env(self.engine.url),
            timeout=240,
        )

    async def containers(self, project: str) -> list[dict[str, Any]]:
        async with aiodocker.Docker(url=self.engine.url) as docker:
            listed = await docker.containers.list(
                all=True, filters={"label": [f"{PROJECT_LABEL}={project}"]}
            )
            return [await c.show() for c in listed]

    async def page(self, environment: str, path: str = "") -> str:
        url = f"http://127.0.0.1:{self.ports[environment]}/{path}"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200, (url, response.status)
            return (await response.text()).strip()


@pytest.fixture
async def stacks(
    tmp_path: Path, container_engine: ContainerEngine, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stacks]:
    monkeypatch.setenv("DOCKER_BUILDKIT", "0")  # podman's API has no BuildKit
    root = tmp_path / "ws"
    git_init(root, "-b", "main")
    ports = {"staging": free_port(), "production": free_port()}
    s = Stacks(root, f"shop{uuid.uuid4().hex[:8]}", ports, container_engine)
    s.write("docker-compose.app.yml", json.dumps(COMPOSE, indent=2))
    s.write("app/Dockerfile", DOCKERFILE.format(cmd=SERVE))
    s.write("app/index.html", "Inventory v1\n")
    s.write(".gitignore", ".env*\n")
    git(root, "add", ".")
    git(root, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-qm", "v1")
    s.env_file("production")
    s.env_file("staging")
    # Production runs v1 (deployed before Berry was in charge).
    code, _, err = await s.compose(s.project, ".env", "up", "-d", "--build")
    assert code == 0, err
    yield s
    for project, env_file in ((s.staging, ".env.staging"), (s.project, ".env")):
        await s.compose(project, env_file, "down", "--remove-orphans", "-t", "1", "--rmi", "local")


def staging_settings(s: Stacks, nats_url: str, dsn: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "berry_mode": "native",
        "berry_workspace": s.root,
        "berry_compose_project": s.project,
        "berry_staging": True,
        "berry_test_command": "sh -c 'test -f app/feature.txt'",
        "berry_health_urls": ["http://127.0.0.1:${WEB_PORT}/"],
        "berry_health_timeout": 30,
        "berry_smoke_tests": SMOKE,
        "docker_url": s.engine.url,
        "data_dir": s.root.parent / "agogd-data",
    }
    return settings_for(nats_url, dsn, **{**values, **overrides})


Berry = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def berry(
    stacks: Stacks, migrated_pool: asyncpg.Pool, nc: NATS, nats_server: NatsServer, pg_dsn: str
) -> Berry:
    """Berry's stage for a REQ (attempt 1) on the files the REQ changed,
    settings overridden by keyword."""

    async def run(req: str, **overrides: Any) -> dict[str, Any]:
        status = git(stacks.root, "status", "--porcelain", "-uall").split("\n")
        listed = [line[3:] for line in status if line and not line[3:].startswith(".env")]
        settings = staging_settings(stacks, nats_server.url, pg_dsn, **overrides)
        native = NativeBerry(runtime_of(settings, migrated_pool, nc))
        assignment = {"req_number": req, "agent": "berry", "attempt": 1, "contextData": {}}
        return await native.run(assignment, previous_stages(req, listed))

    return run


async def rows(pool: asyncpg.Pool, req: str) -> dict[str, dict[str, Any]]:
    found = await pool.fetch("SELECT * FROM berry_deployments WHERE req_number = $1", req)
    return {r["environment"]: records.decoded(r) for r in found}


def feature(s: Stacks, page: str = "Inventory v2 with export\n") -> None:
    s.write("app/feature.txt", "inventory export\n")
    s.write("app/index.html", page)


# --- the flow ---------------------------------------------------------------------
async def test_green_staging_promotes_the_same_images_to_production(
    stacks: Stacks, berry: Berry, migrated_pool: asyncpg.Pool
) -> None:
    s, req = stacks, "REQ-STAGE-1"
    feature(s)
    result = await berry(req)

    assert result["status"] == "COMPLETE" and result["deployed"] is True, result.get("reason")
    sha = git(s.root, "rev-parse", "HEAD").strip()
    assert result["commit_sha"] == sha
    found = await rows(migrated_pool, req)
    assert set(found) == {"staging", "production"}
    staging, production = found["staging"], found["production"]
    for row in (staging, production):
        assert row["status"] == "healthy" and row["commit_sha"] == sha
        assert row["health"]["healthy"] is True and row["finished_at"] >= row["started_at"]
        assert [r["name"] for r in row["smoke"]] == ["home", "config"]
        assert all(r["passed"] for r in row["smoke"])
    assert staging["project"] == s.staging and production["project"] == s.project
    # The same image ids, and production runs exactly them: never rebuilt.
    assert staging["images"] == production["images"] and set(staging["images"]) == {"web"}
    (container,) = await s.containers(s.project)
    assert container["Image"] == staging["images"]["web"]
    assert await s.page("production") == "Inventory v2 with export"
    assert await s.page("production", "built-for.txt") == "staging"
    assert await s.page("staging", "built-for.txt") == "staging"
    # Each environment's own port and env file reached its smoke tests.
    config = {row["environment"]: row["smoke"][1] for row in (staging, production)}
    for env in ("staging", "production"):
        assert config[env]["output_tail"] == f"{env} on {s.ports[env]}"
        home = next(r for r in found[env]["smoke"] if r["name"] == "home")
        assert home["resolved"] == f"http://127.0.0.1:{s.ports[env]}/" and home["status"] == 200
    # The pre-flight checklist: every item, in the notice and the production row.
    items = {i["item"]: i["ok"] for i in result["preflight"]}
    assert items == {
        preflight.TESTS: True,
        preflight.STAGING: True,
        preflight.SMOKE: True,
        preflight.ROLLBACK: True,
    }
    assert production["preflight"] == result["preflight"] and staging["preflight"] is None
    assert result["staging"]["outcome"] == "deployed"
    assert result["deploy"]["images"] == production["images"]


async def test_through_agogd_a_req_goes_staging_then_production_to_deployed(
    stacks: Stacks, nc: NATS, nats_server: NatsServer, pg_dsn: str
) -> None:
    s, req = stacks, "REQ-STAGE-E2E"

    def roy() -> dict[str, Any]:
        feature(s)
        return notice("roy", req, files_modified=["app/feature.txt", "app/index.html"])

    settings = staging_settings(s, nats_server.url, pg_dsn)
    (published,), _ = await deployed_through_agogd(nc, settings, req, roy)
    assert published["status"] == "COMPLETE" and published["staging"]["outcome"] == "deployed"
    assert all(item["ok"] for item in published["preflight"])
    conn = await asyncpg.connect(pg_dsn)
    statuses = await conn.fetch(
        "SELECT environment, status FROM berry_deployments WHERE req_number = $1"
        " ORDER BY environment",
        req,
    )
    await conn.close()
    assert [tuple(r) for r in statuses] == [("production", "healthy"), ("staging", "healthy")]
    assert await s.page("production") == "Inventory v2 with export"


@pytest.mark.parametrize("breakage", ["crashes at start", "serves the wrong page"])
async def test_a_staging_failure_never_touches_production(
    breakage: str, stacks: Stacks, berry: Berry, migrated_pool: asyncpg.Pool
) -> None:
    s, req = stacks, "REQ-STAGE-2"
    (before,) = await s.containers(s.project)
    if breakage == "crashes at start":
        feature(s)
        s.write("app/Dockerfile", DOCKERFILE.format(cmd=CRASH))
    else:  # healthy, but not the page the smoke test wants
        feature(s, page="Under construction\n")
    result = await berry(req)

    assert result["status"] == "FAILED" and result["deployed"] is False
    assert result["reason"].startswith("staging failed, production untouched: ")
    evidence = result["staging"]
    if breakage == "crashes at start":
        assert "not healthy" in result["reason"]
        assert evidence["health"]["healthy"] is False and evidence["smoke"] is None
        (crashed,) = evidence["health"]["containers"]
        assert crashed["exit_code"] == 3
        assert "broken at start" in "\n".join(crashed["last_log_lines"])
        failed_item, says = preflight.STAGING, "exit code 3"
    else:
        assert (
            "the smoke tests failed: home: the body does not contain 'Inventory'"
            in (result["reason"])
        )
        assert evidence["health"]["healthy"] is True
        home, config = evidence["smoke"]
        assert home["passed"] is False and home["status"] == 200
        assert home["output_tail"] == "Under construction\n" and home["seconds"] >= 0
        assert home["expected"] == {"status": 200, "contains": "Inventory"}
        assert config["passed"] is True
        failed_item, says = preflight.SMOKE, "1 of 2 failed: home"
    item = next(i for i in result["preflight"] if i["item"] == failed_item)
    assert item["ok"] is False and says in item["detail"]
    # Staging went back to its last good commit (the parent: v1), rebuilt.
    assert evidence["rollback"]["healthy"] is True and evidence["rollback"]["how"] == "rebuilt"
    assert await s.page("staging") == "Inventory v1"
    # Production: the same container, started once, and no row for this REQ.
    (after,) = await s.containers(s.project)
    assert after["Id"] == before["Id"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert await s.page("production") == "Inventory v1"
    found = await rows(migrated_pool, req)
    assert set(found) == {"staging"} and found["staging"]["status"] == "rolled_back"
    assert found["staging"]["rollback_seconds"] > 0
    assert found["staging"]["smoke"] == evidence["smoke"]


async def test_red_smoke_in_production_rolls_production_back_to_its_last_images(
    stacks: Stacks, berry: Berry, migrated_pool: asyncpg.Pool
) -> None:
    s = stacks
    feature(s)
    first = await berry("REQ-GOOD-1")
    assert first["status"] == "COMPLETE", first.get("reason")
    good_sha = first["commit_sha"]
    good_images = (await rows(migrated_pool, "REQ-GOOD-1"))["production"]["images"]
    # The next release; production's env file lacks a setting its smoke test needs.
    s.write("app/index.html", "Inventory v3\n")
    s.write("app/feature.txt", "inventory export, v3\n")
    s.env_file("production", PAY_URL="")
    result = await berry("REQ-BAD-2")

    assert result["status"] == "FAILED" and result["reason"].startswith("production failed: ")
    assert "the smoke tests failed: config: exit code 1" in result["reason"]
    assert f"rolled back to {good_sha[:12]}" in result["reason"]
    assert result["staging"]["outcome"] == "deployed"
    found = await rows(migrated_pool, "REQ-BAD-2")
    production = found["production"]
    assert found["staging"]["status"] == "healthy" and production["status"] == "rolled_back"
    assert production["health"]["healthy"] is True
    assert production["smoke"][1]["passed"] is False
    # Back to the last healthy production deployment: its very images, no rebuild.
    rollback = production["rollback"]
    assert rollback["to"] == good_sha and rollback["how"] == "images"
    assert rollback["healthy"] is True and rollback["images"] == good_images
    assert 0 < production["rollback_seconds"] < 30
    assert production["rollback_seconds"] == rollback["seconds"]
    (container,) = await s.containers(s.project)
    assert container["Image"] == good_images["web"]
    assert await s.page("production") == "Inventory v2 with export"


async def test_a_migration_gets_a_restorable_backup_before_production(
    stacks: Stacks, berry: Berry, migrated_pool: asyncpg.Pool, postgres_server: PostgresServer
) -> None:
    s, req = stacks, "REQ-MIGRATE-1"
    app_dsn, scratch_dsn = app_database(postgres_server), app_database(postgres_server)
    conn = await asyncpg.connect(app_dsn)
    await conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text)")
    await conn.execute("INSERT INTO customers VALUES (1, 'Acme'), (2, 'Globex')")
    await conn.close()
    feature(s)
    s.write("db/migrations/V2__orders.sql", "CREATE TABLE orders (id int);\n")

    # Crash in the middle of production's deploy (the row says 'deploying').
    task = asyncio.create_task(berry(req, berry_app_db_dsn=app_dsn))
    first = await wait_row(migrated_pool, req, "production", "deploying", task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    backup = first["backup"]
    assert backup is not None
    # The re-run reuses both the healthy staging and the backup.
    staged_at = (await rows(migrated_pool, req))["staging"]["finished_at"]
    result = await berry(req, berry_app_db_dsn=app_dsn)
    assert result["status"] == "COMPLETE", result.get("reason")
    assert result["staging"]["reused"] is True
    found = await rows(migrated_pool, req)
    assert found["staging"]["finished_at"] == staged_at
    production = found["production"]
    assert production["status"] == "healthy"
    assert production["backup"] == backup == result["deploy"]["backup"]
    assert result["deploy"]["migrations"] == ["db/migrations/V2__orders.sql"]
    assert {i["item"]: i["ok"] for i in production["preflight"]}[preflight.BACKUP] is True
    # What the record says: a custom-format dump, taken before production started.
    path = Path(backup["path"])
    assert path.parent == s.root.parent / "agogd-data" / "berry" / "backups"
    size, head = file_facts(path)
    assert size == backup["bytes"] > 0 and head == b"PGDMP"  # pg_dump's custom format
    assert pg_tools.sha256_of(path) == backup["sha256"]
    assert datetime.fromisoformat(backup["taken_at"]) <= production["started_at"]
    password = postgres_server.password(postgres_server.user)
    assert backup["database"] == app_dsn.replace(f":{password}@", "@")
    assert password not in json.dumps(result) + json.dumps(found, default=str)
    # Restorable: pg_restore into a scratch database finds the table and its rows.
    await pg_tools.restore(scratch_dsn, path)
    conn = await asyncpg.connect(scratch_dsn)
    assert await conn.fetch("SELECT name FROM customers ORDER BY id") == [
        ("Acme",),
        ("Globex",),
    ]
    await conn.close()


async def test_a_migration_without_an_app_database_is_blocked_by_the_preflight(
    stacks: Stacks, berry: Berry, migrated_pool: asyncpg.Pool
) -> None:
    s, req = stacks, "REQ-MIGRATE-2"
    (before,) = await s.containers(s.project)
    feature(s)
    s.write("migrations/V2__orders.sql", "CREATE TABLE orders (id int);\n")
    result = await berry(req)

    assert result["status"] == "BLOCKED" and result["deployed"] is False
    assert result["reason"].startswith("pre-flight blocks production: database backup taken:")
    assert "migrations/V2__orders.sql" in result["reason"]
    assert "set AGOG_BERRY_APP_DB_DSN" in result["reason"]
    found = await rows(migrated_pool, req)
    assert found["staging"]["status"] == "healthy"
    production = found["production"]
    assert production["status"] == "blocked" and production["backup"] is None
    assert production["preflight"] == result["preflight"]
    assert [i["item"] for i in production["preflight"] if not i["ok"]] == [preflight.BACKUP]
    (after,) = await s.containers(s.project)
    assert after["Id"] == before["Id"]


async def test_without_a_test_command_production_is_blocked(
    stacks: Stacks, berry: Berry, migrated_pool: asyncpg.Pool
) -> None:
    """Seed 002's "all tests passing": nothing ran, so nothing passed."""
    s, req = stacks, "REQ-UNTESTED-1"
    feature(s)
    result = await berry(req, berry_test_command="")
    assert result["status"] == "BLOCKED"
    assert "tests green: no test command configured (AGOG_BERRY_TEST_COMMAND)" in result["reason"]
    assert (await rows(migrated_pool, req))["production"]["status"] == "blocked"
    assert await s.page("production") == "Inventory v1"


async def test_backups_beyond_the_last_n_are_pruned_and_marked(
    tmp_path: Path, migrated_pool: asyncpg.Pool, postgres_server: PostgresServer
) -> None:
    backups = Backups(
        migrated_pool,
        dsn=SecretStr(app_database(postgres_server)),
        directory=tmp_path / "backups",
        keep=2,
        timeout=120,
    )
    taken = []
    for n in range(1, 5):
        key = records.Key(f"REQ-KEEP-{n}", 1, "production")
        backup, error = await backups.take(key, None)
        assert error is None and backup is not None
        await records.write(
            migrated_pool, key, project="shop", commit_sha=f"{n:040x}", status="healthy"
        )
        await records.set_backup(migrated_pool, key, backup)
        await backups.prune()
        taken.append((key, backup))
    kept = [Path(b["path"]) for _, b in taken[-2:]]
    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == sorted(p.name for p in kept)
    for key, backup in taken[:2]:
        row = await records.get(migrated_pool, key)
        assert row is not None and row["backup"]["pruned_at"]
        assert row["backup"]["sha256"] == backup["sha256"]  # what it was stays on record
        assert file_facts(Path(backup["path"])) == (None, b"")
    for key, _ in taken[-2:]:
        row = await records.get(migrated_pool, key)
        assert row is not None and "pruned_at" not in row["backup"]


# --- helpers ------------------------------------------------------------------------
def app_database(server: PostgresServer) -> str:
    """A fresh database of the app, its DSN holding the password (a secret)."""
    name = f"app_{uuid.uuid4().hex[:10]}"
    server.create_database(name)
    password = server.password(server.user)
    return f"postgresql://{server.user}:{password}@{server.host}:{server.port}/{name}"


def file_facts(path: Path) -> tuple[int | None, bytes]:
    """A file's size and first bytes; (None, b"") when it is gone."""
    try:
        with path.open("rb") as fh:
            return path.stat().st_size, fh.read(5)
    except FileNotFoundError:
        return None, b""


async def wait_row(
    pool: asyncpg.Pool, req: str, environment: str, status: str, task: asyncio.Task[Any]
) -> dict[str, Any]:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        row = await records.get(pool, records.Key(req, 1, environment))
        if row is not None and row["status"] == status:
            return row
        assert not task.done(), f"berry ended first: {task.result()}"
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {environment} row {status} for {req}")


# --- pure: smoke specs, env files, ${VAR}, the pre-flight checklist ---------------
def test_smoke_specs_parse_into_checks() -> None:
    checks = parse_checks(SMOKE, 60)
    assert checks[0] == SmokeCheck(
        "home", "http", 60.0, url="http://127.0.0.1:${WEB_PORT}/", contains="Inventory"
    )
    assert checks[1].kind == "command" and checks[1].argv[:2] == ("sh", "-c")
    assert parse_checks([{"name": "x", "command": ["true"], "timeout": 5}], 60)[0].timeout == 5


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"name": "x"}, "a JSON list"),
        (["curl"], "[0]: each smoke test is a JSON object"),
        ([{"name": "x", "url": "http://a", "command": "true"}], "exactly one of"),
        ([{"name": "x"}], "exactly one of"),
        ([{"name": "", "command": "true"}], "'name'"),
        ([{"name": "x", "command": "true", "status": 200}], "belong to URL checks"),
        ([{"name": "x", "command": "sh -c 'unclosed"}], "cannot be split"),
        ([{"name": "x", "command": []}], "'command'"),
        ([{"name": "x", "url": "ftp://a"}], "http:// or https://"),
        ([{"name": "x", "url": "http://a/$"}], "invalid interpolation"),
        ([{"name": "x", "url": "http://a", "status": 99}], "'status'"),
        ([{"name": "x", "url": "http://a", "status": True}], "'status'"),
        ([{"name": "x", "url": "http://a", "contains": ""}], "'contains'"),
        ([{"name": "x", "url": "http://a", "timeout": 0}], "'timeout'"),
        ([{"name": "x", "url": "http://a", "shell": True}], "unknown keys ['shell']"),
        ([{"name": "x", "command": "a"}, {"name": "x", "command": "b"}], "[1]: the name 'x'"),
    ],
)
def test_bad_smoke_specs_say_which_entry_and_why(raw: Any, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_checks(raw, 60)
    assert says in str(info.value) and "AGOG_BERRY_SMOKE_TESTS" in str(info.value)


def test_a_bad_smoke_list_stops_agogd_at_start_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
    env.update(
        AGOG_BERRY_MODE="native",
        AGOG_RUNNER_AGENTS="berry",
        AGOG_BERRY_WORKSPACE=str(tmp_path),
        AGOG_BERRY_SMOKE_TESTS='[{"name": "home", "url": "http://h:${PORT}/", "status": 2000}]',
    )
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "check-config"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert result.stderr.strip() == (
        "agogd: AGOG_BERRY_SMOKE_TESTS[0]: 'home': 'status' is an HTTP status code (100-599)"
    )


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(_json)
def test_any_json_is_checks_or_a_value_error_never_a_crash(raw: Any) -> None:
    try:
        checks = parse_checks(raw, 60)
    except ValueError as exc:
        assert str(exc).startswith("AGOG_BERRY_SMOKE_TESTS")
    else:
        assert all(c.kind in ("command", "http") for c in checks)


@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
        st.text(st.characters(blacklist_characters="\n\r\"'\\$#\x00"), max_size=12),
        max_size=6,
    )
)
def test_an_env_file_reads_back_what_was_written(values: dict[str, str]) -> None:
    text = "".join(f'{k}="{v}"\n' for k, v in values.items())
    assert parse_env_file(text) == values


def test_env_files_read_as_compose_reads_them() -> None:
    text = (
        "# a comment\n\nexport A=1\nB = two words  # comment\nC='lit ${A} #'\n"
        'D="x\\ny ${A}"\nE=${A}-${MISSING:-dflt}\nF\n'
    )
    assert parse_env_file(text) == {
        "A": "1",
        "B": "two words",
        "C": "lit ${A} #",
        "D": "x\ny 1",
        "E": "1-dflt",
    }
    with pytest.raises(EnvError, match="line 1"):
        parse_env_file("not a name=1\n")
    with pytest.raises(EnvError, match="quote is not closed"):
        parse_env_file('A="open\n')


def test_interpolation_resolves_masks_and_refuses_the_unknown() -> None:
    values = {"PORT": "8080", "DB_PASSWORD": "hunter2", "EMPTY": ""}
    assert interpolate("http://h:${PORT}/$PORT/$$", values) == "http://h:8080/8080/$"
    assert interpolate("${EMPTY:-d}|${EMPTY-d}|${NOPE-d}", values) == "d||d"
    shown = interpolate("http://u:${DB_PASSWORD}@h:${PORT}/", values, masked=True)
    assert shown == "http://u:***@h:8080/"
    with pytest.raises(EnvError, match=r"unknown variable \$\{NOPE\}"):
        interpolate("http://h:${NOPE}/", values)
    with pytest.raises(EnvError, match="invalid interpolation"):
        check_template("http://h:${1}/")
    check_template("http://h:${ANY}/${X:-y}")


def test_staging_gets_a_project_of_its_own() -> None:
    assert staging_project(None, "shop") == "shop-staging"
    assert staging_project("shop-stage", "shop") == "shop-stage"
    with pytest.raises(EnvError, match="a project of its own"):
        staging_project("shop", "shop")


GREEN = {
    "tests": {"passed": True, "command": ["make", "test"]},
    "ci": None,
    "staging_health": {"healthy": True, "problems": []},
    "staging_smoke": [{"name": "home", "passed": True}],
    "rollback_target": "a" * 40,
    "migrations": [],
    "backup": None,
    "backup_error": None,
}


def test_a_green_checklist_passes_and_lists_the_seeds_items() -> None:
    items = preflight.checklist(**GREEN)
    assert [i["item"] for i in items] == [
        preflight.TESTS,
        preflight.STAGING,
        preflight.SMOKE,
        preflight.ROLLBACK,
    ]
    assert preflight.blocking(items) == []
    with_backup = preflight.checklist(
        **{**GREEN, "migrations": ["m/V2.sql"], "backup": {"path": "/b", "bytes": 9}}
    )
    assert with_backup[-1] == {
        "item": preflight.BACKUP,
        "ok": True,
        "detail": "/b (9 bytes) before m/V2.sql",
    }


BREAKS = {
    preflight.TESTS: [
        {"tests": {"passed": None}},
        {"tests": {"passed": False, "reason": "exit code 1"}},
        {"tests": None, "ci": {"state": "failure"}},
    ],
    preflight.STAGING: [
        {"staging_health": None},
        {"staging_health": {"healthy": False, "problems": ["web is exited"]}},
    ],
    preflight.SMOKE: [
        {"staging_smoke": None},
        {"staging_smoke": []},
        {"staging_smoke": [{"name": "home", "passed": False, "reason": "answered 500"}]},
    ],
    preflight.ROLLBACK: [{"rollback_target": None}],
    preflight.BACKUP: [
        {"migrations": ["m/V2.sql"], "backup_error": "no app database is configured"},
    ],
}


@given(
    st.dictionaries(
        st.sampled_from(sorted(BREAKS)), st.integers(min_value=0, max_value=2), min_size=0
    )
)
def test_each_missing_item_blocks_and_is_named_in_the_reason(broken: dict[str, int]) -> None:
    inputs = dict(GREEN)
    for item, which in broken.items():
        inputs.update(BREAKS[item][which % len(BREAKS[item])])
    items = preflight.checklist(**inputs)
    failed = {i["item"] for i in preflight.blocking(items)}
    assert failed == set(broken)
    if failed:
        text = preflight.reason(items)
        assert all(f"{name}: " in text for name in failed)
    assert len({i["item"] for i in items}) == len(items)  # each item once


def test_green_ci_counts_as_tests_green_without_a_test_command() -> None:
    items = preflight.checklist(**{**GREEN, "tests": {"passed": None}, "ci": {"state": "success"}})
    assert items[0] == {
        "item": preflight.TESTS,
        "ok": True,
        "detail": "no test command; CI is green",
    }
