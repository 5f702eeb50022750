"""Deployment records as operators use them, on a real agogd (real
nats-server and PostgreSQL): `agogctl deploys` and `agogctl deploy show`
over known rows, the deployment gauges of /metrics derived from them, and
`agogctl deploy restore-db` restoring a real app database from a real
pg_dump, every refusal changing nothing, and a restore PostgreSQL refuses
(an object another role owns, an extension) rolled back whole."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import shutil
import stat
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from orchestrator.api import deploy_records
from orchestrator.api.deploy_restore import RestoreRefused, database_name, drop_relations_sql
from orchestrator.embedded import NatsServer, PostgresServer
from orchestrator.runtime import pg_tools
from orchestrator.runtime.settings import redact_url
from tests.agents import collect, running_agogd, settings_for
from tests.test_api import api_for
from tests.test_ctl_e2e import AGOGCTL, _env, ctl
from tests.test_metrics import Scrape, scrape_until

_app_counter = itertools.count()


# --- records, as Berry writes them ---------------------------------------------------------
async def record(
    conn: asyncpg.Connection,
    req: str,
    *,
    attempt: int = 1,
    env: str = "production",
    status: str = "healthy",
    ago: float = 3600.0,
    took: float = 20.0,
    **columns: Any,
) -> int:
    """Insert one deployment record that started ``ago`` seconds ago and took
    ``took`` (no end while 'deploying'); returns its id."""
    names = ["images", "health", "smoke", "preflight", "rollback", "backup", "detail"]
    values = [json.dumps(columns[n]) if n in columns else None for n in names]
    return int(
        await conn.fetchval(
            "INSERT INTO berry_deployments (req_number, attempt, environment, project,"
            " commit_sha, status, images, health, smoke, preflight, rollback, backup, detail,"
            " rollback_seconds, started_at, finished_at) VALUES ($1, $2, $3, 'shop', $4, $5,"
            " coalesce($6::jsonb, '{}'), $7::jsonb, $8::jsonb, $9::jsonb, $10::jsonb,"
            " $11::jsonb, coalesce($12::jsonb, '{}'), $13, now() - make_interval(secs => $14),"
            " CASE WHEN $5 = 'deploying' THEN NULL"
            " ELSE now() - make_interval(secs => $14 - $15) END) RETURNING id",
            req,
            attempt,
            env,
            hashlib.sha1(f"{req}/{attempt}/{env}".encode()).hexdigest(),
            status,
            *values,
            columns.get("rollback_seconds"),
            ago,
            took,
        )
    )


def healthy() -> dict[str, Any]:
    return {"healthy": True, "containers": [], "urls": [], "problems": []}


def unhealthy(*problems: str) -> dict[str, Any]:
    return {"healthy": False, "containers": [], "urls": [], "problems": list(problems)}


def smoke(*passed: bool) -> list[dict[str, Any]]:
    return [
        {"name": f"check-{i}", "kind": "http", "passed": ok, "seconds": 0.2}
        for i, ok in enumerate(passed, 1)
    ]


async def _column(dsn: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


# --- listing, showing, metrics ---------------------------------------------------------------
async def _known_rows(conn: asyncpg.Connection) -> dict[str, int]:
    """Ten records in production and staging, twelve in canary; their ids by name."""
    ids: dict[str, int] = {}
    ids["p1"] = await record(
        conn, "REQ-D-1", ago=5000, health=healthy(), images={"web": "sha256:a1"}
    )
    ids["p2"] = await record(
        conn,
        "REQ-D-2",
        status="rolled_back",
        ago=4900,
        health=unhealthy("web: exited (1)", "http://127.0.0.1:8080/ answered 502"),
        rollback={"attempted": True, "to": "ab" * 20, "healthy": True},
        rollback_seconds=12.5,
    )
    ids["p3"] = await record(conn, "REQ-D-2", attempt=2, ago=4800, health=healthy())
    ids["p4"] = await record(
        conn,
        "REQ-D-3",
        status="rollback_failed",
        ago=4700,
        took=10,
        health=unhealthy("db: unhealthy"),
        rollback={"attempted": True, "to": "cd" * 20, "healthy": False, "reason": "exited"},
    )
    # Healthy again 300 s after REQ-D-3's failed rollback ended: its time to recovery.
    ids["p5"] = await record(conn, "REQ-D-4", ago=4400, took=10, health=healthy())
    ids["p6"] = await record(
        conn,
        "REQ-D-5",
        status="blocked",
        ago=4000,
        took=1,
        preflight=[
            {"item": "tests green", "ok": True, "detail": "passed"},
            {"item": "rollback target", "ok": False, "detail": "no earlier healthy deployment"},
        ],
    )
    ids["s1"] = await record(
        conn, "REQ-D-6", env="staging", ago=3000, health=healthy(), smoke=smoke(True, True)
    )
    ids["s2"] = await record(
        conn,
        "REQ-D-7",
        env="staging",
        status="rolled_back",
        ago=2900,
        health=healthy(),
        smoke=smoke(True, False),
        rollback={"attempted": True, "to": "ef" * 20, "healthy": True},
        rollback_seconds=4.0,
    )
    ids["s3"] = await record(conn, "REQ-D-8", env="staging", status="deploying", ago=60)
    # Its rollback failed 100 s ago and nothing healthy since: staging is down.
    ids["s4"] = await record(
        conn,
        "REQ-D-9",
        env="staging",
        status="rollback_failed",
        ago=120,
        took=20,
        rollback={"attempted": True, "to": "12" * 20, "healthy": False},
    )
    for i in range(12):  # two failures, then ten healthy deployments
        await record(
            conn, f"REQ-C-{i}", env="canary", status="failed" if i < 2 else "healthy", ago=9000 - i
        )
    return ids


def _rows(stdout: str) -> list[list[str]]:
    """The table's rows (after the header), split on runs of spaces."""
    lines = stdout.splitlines()
    body = lines[1 : lines.index("")]
    return [line.split() for line in body]


async def test_deploys_list_show_and_metrics(nats_server: NatsServer, pg_dsn: str) -> None:
    async with running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon:
        url = daemon.http.url
        conn = await asyncpg.connect(pg_dsn)
        try:
            ids = await _known_rows(conn)
        finally:
            await conn.close()

        # The staging table, newest first.
        listed = await ctl(url, "deploys", "--env", "staging")
        assert listed.returncode == 0, listed.stderr
        header = listed.stdout.splitlines()[0].split()
        assert header == [
            "ID", "ENV", "REQ", "TRY", "COMMIT", "STATUS", "STARTED", "TOOK", "HEALTH",
            "SMOKE", "PREFLIGHT", "ROLLBACK", "BACKUP",
        ]  # fmt: skip
        rows = _rows(listed.stdout)
        assert [int(r[0]) for r in rows] == [ids["s4"], ids["s3"], ids["s2"], ids["s1"]]
        assert [r[5] for r in rows] == ["rollback_failed", "deploying", "rolled_back", "healthy"]
        by_id = {int(r[0]): r for r in rows}
        # ID ENV REQ TRY COMMIT STATUS DATE TIME TOOK HEALTH SMOKE PREFLIGHT ROLLBACK...
        assert by_id[ids["s2"]][1:4] == ["staging", "REQ-D-7", "1"]
        assert by_id[ids["s2"]][9:14] == ["ok", "1/2", "-", "4.0s", "to"]
        assert by_id[ids["s1"]][9:12] == ["ok", "2/2", "-"]
        assert by_id[ids["s4"]][12] == "failed"
        assert "4 of 4 deployment(s)." in listed.stdout
        assert "\x1b[" not in listed.stdout

        # --json: the API's own data.
        raw = await ctl(url, "deploys", "--env", "staging", "--json")
        assert raw.returncode == 0, raw.stderr
        body = json.loads(raw.stdout)
        assert (body["count"], body["total"], body["next_before"]) == (4, 4, None)
        assert body["filters"]["environment"] == "staging"
        s2 = next(d for d in body["deployments"] if d["id"] == ids["s2"])
        assert s2["smoke"] == {"passed": 1, "total": 2, "failed": ["check-2"]}
        assert s2["rollback"]["seconds"] == 4.0 and s2["rollback"]["healthy"] is True
        assert s2["rollback_seconds"] == 4.0 and s2["health"]["healthy"] is True
        assert 19 < s2["seconds"] < 21 and s2["finished_at"] > s2["started_at"]
        s3 = next(d for d in body["deployments"] if d["id"] == ids["s3"])
        assert s3["finished_at"] is None and s3["seconds"] >= 60

        # By REQ, and paging.
        raw = await ctl(url, "deploys", "--req", "REQ-D-2", "--json")
        assert [d["id"] for d in json.loads(raw.stdout)["deployments"]] == [ids["p3"], ids["p2"]]
        first = json.loads((await ctl(url, "deploys", "--limit", "3", "--json")).stdout)
        assert (first["count"], first["total"]) == (3, 22) and first["next_before"]
        page = await ctl(url, "deploys", "--limit", "3", "--before", str(first["next_before"]))
        assert page.returncode == 0 and "3 of 22 deployment(s).  More: --before" in page.stdout
        seen = {d["id"] for d in first["deployments"]}
        assert not seen & {int(r[0]) for r in _rows(page.stdout)}

        # One record in full.
        shown = await ctl(url, "deploy", "show", str(ids["p2"]))
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].split() == [
            "deployment", str(ids["p2"]), "production", "rolled_back", "REQ-D-2", "try", "1",
        ]  # fmt: skip
        for needle in ("web: exited (1)", "answered 502", f"to {'ab' * 20}: healthy  in 12s"):
            assert needle in shown.stdout, needle
        blocked = await ctl(url, "deploy", "show", str(ids["p6"]))
        assert "rollback target  FAILED  no earlier healthy deployment" in blocked.stdout

        # Bad input: a clear error, exit 1 (400), 4 (404) or 2 (usage).
        for args, code, needle in (
            (["deploys", "--env", "Prod Env"], 1, "is not an environment name"),
            (["deploys", "--status", "great"], 1, "status 'great' is not one of"),
            (["deploys", "--req", "REQ..*"], 1, "req:"),
            (["deploy", "show", "987654"], 4, "no deployment 987654"),
            (["deploy", "show", "twelve"], 2, "'twelve' is not a valid integer"),
        ):
            done = await ctl(url, *args)
            assert done.returncode == code and needle in done.stderr, (args, done.stderr)
        async with api_for(daemon) as api:
            for path in (
                "/api/deploys/abc",
                "/api/deploys/0",
                "/api/deploys/99999999999999999999",
                "/api/deploys/" + "9" * 5000,
                "/api/deploys?limit=" + "1" * 5000,
                "/api/deploys?limit=0",
                "/api/deploys?limit=ten",
                "/api/deploys?before=x",
            ):
                status, answer = await api.get(path)
                assert status == 400 and answer["code"] == "bad_request", (path, answer)

        # No app database configured: restore-db refuses, and nothing changes.
        before = await _column(
            pg_dsn, "SELECT detail FROM berry_deployments WHERE id = $1", ids["p1"]
        )
        refused = await ctl(url, "deploy", "restore-db", str(ids["p1"]), "--yes")
        assert refused.returncode == 1 and "set AGOG_BERRY_APP_DB_DSN" in refused.stderr
        after = await _column(
            pg_dsn, "SELECT detail FROM berry_deployments WHERE id = $1", ids["p1"]
        )
        assert after == before

        # The gauges, derived from the rows.
        scraped = await scrape_until(
            url,
            lambda s: s.value("agogd_deployments", environment="canary", status="healthy") == 10,
            "the canary records",
        )
    _check_metrics(scraped)


def _check_metrics(s: Scrape) -> None:
    def count(env: str, status: str) -> float:
        return s.value("agogd_deployments", environment=env, status=status)

    assert [count("production", st) for st in ("healthy", "rolled_back", "rollback_failed")] == [
        3,
        1,
        1,
    ]
    assert (count("production", "blocked"), count("production", "failed")) == (1, 0)
    assert [count("staging", st) for st in ("healthy", "rolled_back", "deploying")] == [1, 1, 1]
    ratio = "agogd_deployment_success_ratio"
    assert s.value(ratio, environment="production", window="all") == pytest.approx(3 / 5)
    assert s.value(ratio, environment="production", window="last_10") == pytest.approx(3 / 5)
    assert s.value(ratio, environment="staging", window="all") == pytest.approx(1 / 3)
    assert s.value(ratio, environment="canary", window="all") == pytest.approx(10 / 12)
    assert s.value(ratio, environment="canary", window="last_10") == 1.0
    # Rollback time: the last, and the histogram of those that restored health.
    assert s.value("agogd_rollback_last_seconds", environment="production") == 12.5
    assert s.value("agogd_rollback_last_seconds", environment="staging") == 4.0
    hist = "agogd_rollback_duration_seconds"
    assert s.value(f"{hist}_count", environment="production") == 1
    assert s.value(f"{hist}_sum", environment="production") == 12.5
    assert s.value(f"{hist}_bucket", environment="production", le="10.0") == 0
    assert s.value(f"{hist}_bucket", environment="production", le="15.0") == 1
    assert s.value(f"{hist}_bucket", environment="staging", le="5.0") == 1
    # Time to recovery: 12.5 s (rollback), 300 s (the next healthy deployment).
    ttr = "agogd_deployment_recovery_seconds"
    assert s.value(f"{ttr}_count", environment="production") == 2
    assert s.value(f"{ttr}_sum", environment="production") == pytest.approx(312.5, abs=0.5)
    assert s.value(f"{ttr}_count", environment="staging") == 1
    # Staging's failed rollback has not been recovered from: for ~100 s.
    down = s.value("agogd_deployment_unrecovered_seconds", environment="staging")
    assert 100 <= down < 400, down
    assert s.value("agogd_deployment_unrecovered_seconds", environment="production") == 0
    # Canary's first two failed with nothing to roll back to; the third was healthy.
    assert s.value(f"{ttr}_count", environment="canary") == 2
    assert s.value(f"{ttr}_sum", environment="canary") == pytest.approx(3, abs=0.5)
    assert s.value("agogd_deployment_unrecovered_seconds", environment="canary") == 0
    assert s.families["agogd_rollback_duration_seconds"].type == "histogram"


# --- restore-db ---------------------------------------------------------------------------------
@pytest.fixture
def app_db(postgres_server: PostgresServer) -> Iterator[tuple[str, str]]:
    """A second database on the embedded server, owned by the application role
    and made from template0 (no extension): (its name, its DSN, with the
    role's password in it: a secret that must show nowhere)."""
    name = f"app_{os.getpid()}_{next(_app_counter)}"
    postgres_server.create_database(name, template="template0")
    user = postgres_server.user
    secret = urllib.parse.quote(postgres_server.password(user), safe="")
    yield name, f"postgresql://{user}:{secret}@{postgres_server.host}:{postgres_server.port}/{name}"
    if postgres_server.running:
        postgres_server.drop_database(name)


async def _app(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fingerprint(dsn: str) -> str:
    """The app database's tables, the items' columns and the items."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetchval(
            "SELECT string_agg(table_schema || '.' || table_name, ','"
            " ORDER BY table_schema, table_name)"
            " FROM information_schema.tables WHERE table_schema IN ('public', 'billing')"
        )
        columns = await conn.fetchval(
            "SELECT string_agg(column_name, ',' ORDER BY ordinal_position)"
            " FROM information_schema.columns WHERE table_name = 'items'"
        )
        items = await conn.fetchval(
            "SELECT string_agg(id || '=' || name, ',' ORDER BY id) FROM items"
        )
        return f"{tables}|{columns}|{items}"
    finally:
        await conn.close()


async def backed_up(dsn: str, to: Path) -> dict[str, Any]:
    """A real pg_dump of the app database, as Berry records it."""
    taken = await pg_tools.dump(dsn, to)
    return {**taken, "database": redact_url(dsn), "taken_at": "2026-01-02T03:04:05+00:00"}


async def restores(dsn: str, deployment_id: int) -> list[dict[str, Any]]:
    detail = await _column(dsn, "SELECT detail FROM berry_deployments WHERE id = $1", deployment_id)
    return list(json.loads(detail).get("restores", []))


def on_disk(path: str | Path) -> bool:
    return Path(path).is_file()


def answer_prompt(url: str, *args: str, reply: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGOGCTL, "--url", url, *args],
        input=reply,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )


@pytest.fixture
async def agogd_with_app_db(
    nats_server: NatsServer, pg_dsn: str, app_db: tuple[str, str]
) -> AsyncIterator[Any]:
    settings = settings_for(nats_server.url, pg_dsn, berry_app_db_dsn=app_db[1])
    async with running_agogd(settings) as daemon:
        yield daemon


async def _wait_for(check: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what}")
        await asyncio.sleep(0.05)


async def test_restore_db_end_to_end(
    agogd_with_app_db: Any, nc: NATS, pg_dsn: str, app_db: tuple[str, str], tmp_path: Path
) -> None:
    daemon, (name, app_dsn) = agogd_with_app_db, app_db
    url = daemon.http.url
    await _app(
        app_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);"
        " INSERT INTO items VALUES (1, 'pallet'), (2, 'crate'), (3, 'box');"
        " CREATE SCHEMA billing; CREATE TABLE billing.invoices (id serial PRIMARY KEY)",
    )
    original = await fingerprint(app_dsn)
    backups = tmp_path / "berry" / "backups"
    backup = await backed_up(app_dsn, backups / "REQ-R-1-1.dump")
    conn = await asyncpg.connect(pg_dsn)
    try:
        good = await record(conn, "REQ-R-1", backup=backup)
        bare = await record(conn, "REQ-R-2")
        missing = await record(
            conn, "REQ-R-3", backup={**backup, "path": str(backups / "gone.dump")}
        )
        copy = backups / "copy.dump"
        shutil.copy(backup["path"], copy)
        changed = await record(
            conn, "REQ-R-4", backup={**backup, "path": str(copy), "sha256": "0" * 64}
        )
        pruned = await record(
            conn, "REQ-R-5", backup={**backup, "pruned_at": "2026-01-03T00:00:00+00:00"}
        )
    finally:
        await conn.close()
    # After the backup: a migration adds a column and a table whose foreign key
    # holds on to items (pg_restore --clean alone cannot drop items then), and
    # the data changes (a row gone, one renamed).
    await _app(
        app_dsn,
        "ALTER TABLE items ADD COLUMN price int; CREATE TABLE later (x int REFERENCES items (id));"
        " INSERT INTO later VALUES (1); CREATE TABLE billing.refunds (id int);"
        " DELETE FROM items WHERE id = 2;"
        " UPDATE items SET name = 'BOX' WHERE id = 3",
    )
    current = await fingerprint(app_dsn)
    assert current != original

    # Every refusal: a clear error, a non-zero exit, nothing changed.
    async def refused(args: list[str], code: int, needle: str, reply: str | None = None) -> None:
        details = await _column(
            pg_dsn, "SELECT string_agg(detail::text, '|' ORDER BY id) FROM berry_deployments"
        )
        if reply is None:
            done = await ctl(url, "deploy", "restore-db", *args)
        else:
            done = await asyncio.to_thread(
                answer_prompt, url, "deploy", "restore-db", *args, reply=reply
            )
        assert done.returncode == code and needle in done.stderr, (args, done.stderr)
        assert await fingerprint(app_dsn) == current, args
        assert not (backups / "pre-restore").exists(), args
        assert (
            await _column(
                pg_dsn, "SELECT string_agg(detail::text, '|' ORDER BY id) FROM berry_deployments"
            )
            == details
        )

    await refused([str(bare), "--yes"], 1, "has no database backup")
    await refused([str(missing), "--yes"], 1, "gone.dump is gone")
    await refused([str(changed), "--yes"], 1, "has sha256")
    await refused([str(pruned), "--yes"], 1, "was pruned")
    await refused(["424242", "--yes"], 4, "no deployment 424242")
    await refused([str(good)], 1, "nothing restored", reply="n\n")
    await refused([str(good), "--undo", "--yes"], 1, "no completed restore to undo")
    holder = await asyncpg.connect(pg_dsn)  # another restore holds the lock
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtext('agogd:deploy:restore-db'))")
        await refused([str(good), "--yes"], 1, "another restore-db is running")
    finally:
        await holder.close()

    # The restore, asked for and confirmed at the prompt.
    events, sub = await collect(nc, "agog.orchestration.events.infra.db_restored.>")
    with capture_logs() as logs:
        done = await asyncio.to_thread(
            answer_prompt, url, "deploy", "restore-db", str(good), "--json", reply="y\n"
        )
    assert done.returncode == 0, done.stderr
    assert "Restore the app database" in done.stderr and "REQ-R-1" in done.stderr
    body = json.loads(done.stdout)
    assert await fingerprint(app_dsn) == original  # the data is back
    entry = body["restore"]
    assert (body["deployment_id"], body["duplicate"], entry["outcome"]) == (good, False, "restored")
    assert entry["from"] == {"path": backup["path"], "sha256": backup["sha256"], "what": "backup"}
    pre = Path(entry["pre_restore"]["path"])
    assert pre.parent == backups / "pre-restore" and on_disk(pre)
    assert stat.S_IMODE(pre.parent.stat().st_mode) == 0o700  # the app's data: agogd's alone
    assert pg_tools.sha256_of(pre) == entry["pre_restore"]["sha256"]
    [kept] = await restores(pg_dsn, good)
    assert kept == entry and kept["by"] and "@" in kept["by"] and kept["at"]
    assert kept["database"] == redact_url(app_dsn) and name in kept["database"]
    trail = await _column(
        pg_dsn,
        "SELECT count(*) FROM workflow_events WHERE req_number = 'REQ-R-1'"
        " AND kind = 'deploy.db_restored' AND detail->>'deployment_id' = $1",
        str(good),
    )
    assert trail == 1
    await _wait_for(lambda: events, "the db_restored event on NATS")
    assert events[0]["req_number"] == "REQ-R-1" and events[0]["status"] == "restored"
    assert events[0]["subject"] == "agog.orchestration.events.infra.db_restored.production"
    await sub.unsubscribe()
    secret = urllib.parse.unquote(urllib.parse.urlsplit(app_dsn).password or "")
    assert len(secret) > 20 and [e["event"] for e in logs].count("deploy.db_restored") == 1
    said = [done.stdout, done.stderr, json.dumps(events), repr(logs)]
    said += [json.dumps(await restores(pg_dsn, good)), json.dumps(backup)]
    assert not [text for text in said if secret in text or urllib.parse.quote(secret) in text]

    # Undone: the pre-restore dump brings back what the restore replaced.
    undone = await ctl(url, "deploy", "restore-db", str(good), "--undo", "--yes")
    assert undone.returncode == 0, undone.stderr
    assert f"deployment {good} (REQ-R-1, production)" in undone.stdout
    assert "restored from the dump taken before restore 1" in undone.stdout
    assert f"undo: agogctl deploy restore-db {good} --undo" in undone.stdout
    assert await fingerprint(app_dsn) == current
    assert [r["outcome"] for r in await restores(pg_dsn, good)] == ["restored", "restored"]

    # The same restore id twice: restored once, then answered from the record.
    async with api_for(daemon) as api:
        path = f"/api/deploys/{good}/restore-db"
        status, first = await api.post(path, {"restore_id": "ops-7", "by": "ops"})
        assert status == 200 and first["duplicate"] is False, first
        status, again = await api.post(path, {"restore_id": "ops-7", "by": "ops"})
        assert status == 200 and again["duplicate"] is True
        assert again["restore"] == first["restore"]
        assert len(await restores(pg_dsn, good)) == 3
        for bad in ({"restore_id": "no spaces"}, {"undo": "yes"}, {"by": ""}, {"force": True}):
            status, answer = await api.post(path, bad)
            assert status == 400 and answer["code"] == "bad_request", (bad, answer)
        status, answer = await api.post(path, {}, token="wrong")
        assert status == 401
    assert await fingerprint(app_dsn) == original
    shown = await ctl(url, "deploy", "show", str(good))
    assert "database restores" in shown.stdout and shown.stdout.count("restored") >= 3


async def test_a_restore_postgres_refuses_leaves_the_database_as_it_was(
    agogd_with_app_db: Any,
    pg_dsn: str,
    app_db: tuple[str, str],
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    """pg_restore --clean --single-transaction as the app's role: dropping a
    table another role owns, or an extension a superuser made, fails, and
    everything it had done before is rolled back with it."""
    daemon, (name, app_dsn) = agogd_with_app_db, app_db
    url = daemon.http.url
    other = f"other_owner_{os.getpid()}"
    await _app(
        app_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);"
        " INSERT INTO items VALUES (1, 'pallet'), (2, 'crate');"
        " CREATE TABLE ledger (id int PRIMARY KEY)",
    )
    backups = tmp_path / "backups"
    conn = await asyncpg.connect(pg_dsn)
    try:
        owned = await record(conn, "REQ-F-1", backup=await backed_up(app_dsn, backups / "a.dump"))
        # A backup holding an extension (a superuser made it in the app database).
        postgres_server.psql("CREATE EXTENSION IF NOT EXISTS vector", name)
        with_ext = await record(
            conn, "REQ-F-2", backup=await backed_up(app_dsn, backups / "b.dump")
        )
    finally:
        await conn.close()
    await _app(
        app_dsn, "UPDATE items SET name = 'changed' WHERE id = 1; DELETE FROM items WHERE id = 2"
    )
    # Another role owns ledger and the schema (an owner of the schema may drop
    # anything in it); the app's role may read ledger (for the pre-restore
    # dump) and create in the schema, not drop ledger.
    app_role = postgres_server.user
    postgres_server.psql(
        f'CREATE ROLE "{other}"; ALTER TABLE ledger OWNER TO "{other}";'
        f' ALTER SCHEMA public OWNER TO "{other}"; GRANT USAGE, CREATE ON SCHEMA public'
        f' TO "{app_role}"; GRANT SELECT ON ledger TO "{app_role}"',
        name,
    )
    try:
        current = await fingerprint(app_dsn)
        done = await ctl(url, "deploy", "restore-db", str(owned), "--yes")
        assert done.returncode == 1, done.stderr
        assert "must be owner of table ledger" in done.stderr and "as it was" in done.stderr
        assert await fingerprint(app_dsn) == current  # items were dropped, then rolled back
        [failed] = await restores(pg_dsn, owned)
        assert failed["outcome"] == "failed" and "must be owner" in failed["error"]
        assert on_disk(failed["pre_restore"]["path"])
        kinds = await _column(
            pg_dsn,
            "SELECT string_agg(kind, ',') FROM workflow_events WHERE req_number = 'REQ-F-1'",
        )
        assert kinds == "deploy.db_restore_failed"
    finally:
        postgres_server.psql(
            f'ALTER SCHEMA public OWNER TO pg_database_owner; REASSIGN OWNED BY "{other}"'
            f' TO "{app_role}"; DROP OWNED BY "{other}"',
            name,
        )
        postgres_server.psql(f'DROP ROLE "{other}"')

    done = await ctl(url, "deploy", "restore-db", str(with_ext), "--yes", "--json")
    assert done.returncode == 1, done.stderr
    assert "must be owner of extension vector" in done.stderr
    assert json.loads(done.stdout)["restore"]["outcome"] == "failed"
    assert await fingerprint(app_dsn) == current
    assert await _column(app_dsn, "SELECT count(*) FROM pg_extension WHERE extname = 'vector'") == 1

    # The database itself is fine: the backup without the extension restores.
    postgres_server.psql("DROP EXTENSION vector", name)
    done = await ctl(url, "deploy", "restore-db", str(owned), "--yes")
    assert done.returncode == 0, done.stderr
    assert (
        await _column(app_dsn, "SELECT string_agg(name, ',' ORDER BY id) FROM items")
        == "pallet,crate"
    )


# --- pure parts: bad input is a BadQuery, odd JSON a None summary, never a crash ---------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from(["env", "req", "status", "limit", "before"]), st.text()))
def test_any_query_is_filters_or_a_bad_query(query: dict[str, str]) -> None:
    try:
        filters = deploy_records.parse_filters(query)
    except deploy_records.BadQuery as exc:
        assert str(exc)
    else:
        assert 1 <= filters.limit <= deploy_records.MAX_LIMIT
        assert filters.environment is None or deploy_records.ENVIRONMENT.match(filters.environment)


@given(JSON, JSON, JSON, JSON, JSON)
def test_summaries_of_any_json(
    health: Any, smoke: Any, preflight: Any, rollback: Any, backup: Any
) -> None:
    for summary in (
        deploy_records.health_summary(health),
        deploy_records.smoke_summary(smoke),
        deploy_records.preflight_summary(preflight),
        deploy_records.rollback_summary(rollback, None),
        deploy_records.backup_summary(backup),
    ):
        assert summary is None or isinstance(summary, dict)
    json.dumps(deploy_records.restores_of(backup), default=str)


def test_the_drop_prelude_quotes_schema_names() -> None:
    sql = drop_relations_sql(["public", "o'brien"])
    assert "ARRAY['public', 'o''brien']::text[]" in sql and sql.count("$agogd$") == 2
    with pytest.raises(RestoreRefused):
        drop_relations_sql(["x$agogd$; DROP DATABASE y; --"])
    assert database_name("postgresql://u:p%40ss@h:5432/sh%20op?sslmode=require") == "sh op"
