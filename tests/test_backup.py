"""Backup and restore of agogd's own state, on real servers: a real agogd makes
the state (REQs through scripted agents), ``create_backup`` archives it,
``restore_backup`` puts it on fresh servers and ``verify_backup`` proves it;
``agogctl backup`` drives the same, as an operator would, including on a
stopped ``agogd dev``. Tampered archives, newer schemas, targets that are not
empty, and a kill -9 in the middle are refused or survived."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from orchestrator.backup import (
    Refused,
    Servers,
    create_backup,
    restore_backup,
    verify_backup,
)
from orchestrator.backup.archive import DUMP, MANIFEST, archives_in, read_manifest
from orchestrator.embedded import NatsServer, PostgresServer, free_port
from orchestrator.embedded.daemon_proc import DaemonProcess
from orchestrator.runtime import migrate
from orchestrator.runtime.pg_tools import sha256_of
from orchestrator.runtime.settings import Settings
from orchestrator.runtime.topology import Reconciler
from tests.agents import (
    PIPELINE,
    ScriptedAgents,
    happy,
    running_agogd,
    settings_for,
    submit,
    wait_stage,
    wait_status,
)
from tests.test_ctl_e2e import AGOGCTL
from tests.test_ctl_e2e import _env as ctl_env

OWNER_TEXT = "# Owner requests\n\nNothing asked yet.\n"
ROY = PIPELINE.stage_for_agent("roy")
assert ROY is not None


def servers(nats_url: str, dsn: str) -> Servers:
    return Servers.of(Settings(nats_url=[nats_url], postgres_dsn=dsn))


async def fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def column(dsn: str, sql: str) -> list[Any]:
    return [r[0] for r in await fetch(dsn, sql)]


async def wait_zero(dsn: str, sql: str, what: str, timeout: float = 30) -> None:
    """Poll a count until it is 0."""
    deadline = time.monotonic() + timeout
    while (await column(dsn, sql))[0]:
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


TABLES_SQL = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"


# --- what a server holds, to compare before and after ------------------------------
async def rows_of(dsn: str) -> dict[str, list[str]]:
    """Every row of every table of agogd's schema, as JSON, sorted."""
    return {
        t: sorted(await column(dsn, f'SELECT row_to_json(x)::text FROM "{t}" x'))
        for t in await column(dsn, TABLES_SQL)
    }


async def messages_of(nc: NATS) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored message of every stream: sequence, subject, data, id."""
    js = nc.jetstream()
    out: dict[str, list[tuple[Any, ...]]] = {}
    for info in await js.streams_info():
        name, state = info.config.name, info.state
        assert name is not None
        found = []
        for seq in range(max(state.first_seq, 1), state.last_seq + 1):
            try:
                msg = await js.get_msg(name, seq)
            except NotFoundError:
                continue
            found.append((seq, msg.subject, msg.data, (msg.headers or {}).get("Nats-Msg-Id")))
        out[name] = found
    return out


async def consumers_of(nc: NATS) -> dict[tuple[str, str], tuple[int, ...]]:
    """Each durable consumer's delivered and ack floor sequences and its pending."""
    js = nc.jetstream()
    out = {}
    for info in await js.streams_info():
        assert info.config.name is not None
        for c in await js.consumers_info(info.config.name):
            out[(info.config.name, c.name)] = (
                c.delivered.stream_seq,
                c.ack_floor.stream_seq,
                c.num_pending,
                c.num_ack_pending,
            )
    return out


async def tables_in(dsn: str) -> list[str]:
    return await column(dsn, TABLES_SQL)


async def stream_names(url: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        return sorted(i.config.name or "" for i in await nc.jetstream().streams_info())
    finally:
        await nc.close()


@dataclass
class Source:
    """A real agogd's state, archived once for the module's tests."""

    nats: NatsServer
    dsn: str
    archive: Path
    rows: dict[str, list[str]]
    messages: dict[str, list[tuple[Any, ...]]]
    consumers: dict[tuple[str, str], tuple[int, ...]]


def roy_silent_for_b2(assignment: dict[str, Any]) -> dict[str, Any] | None:
    if assignment["req_number"] == "REQ-BK-2" and assignment["agent"] == "roy":
        return None  # roy is at work: an attempt RUNNING, its assignment unacked
    return happy(assignment)


@pytest.fixture(scope="module")
async def source(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Source]:
    tmp = tmp_path_factory.mktemp("backup-source")
    server = NatsServer(tmp / "nats").start()
    name = f"backup_source_{os.getpid()}"
    dsn = postgres_server.create_database(name)
    nc = await nats.connect(server.url)
    try:
        agents = await ScriptedAgents(nc, roy_silent_for_b2).start()
        async with running_agogd(settings_for(server.url, dsn)):
            await submit(nc, "REQ-BK-1")
            await submit(nc, "REQ-BK-2", priority="P1")
            await wait_status(dsn, "REQ-BK-1", "DEPLOYED", 90)
            await wait_stage(dsn, "REQ-BK-2", ROY.index, 60)
        await agents.stop()
        owner = tmp / "OWNER_REQUESTS.md"
        owner.write_text(OWNER_TEXT)
        created = await create_backup(
            servers(server.url, dsn), tmp / "backups", owner_requests_file=owner
        )
        yield Source(
            server, dsn, created.archive, await rows_of(dsn), await messages_of(nc),
            await consumers_of(nc),
        )  # fmt: skip
    finally:
        await nc.close()
        server.stop()
        postgres_server.drop_database(name)


# --- the archive --------------------------------------------------------------------
async def test_create_writes_one_archive_with_its_manifest_and_checksums(
    source: Source, tmp_path: Path
) -> None:
    assert archives_in(source.archive.parent) == [source.archive]
    leftovers = [p.name for p in source.archive.parent.iterdir() if p != source.archive]
    assert not leftovers, f"the backup left files behind: {leftovers}"
    manifest = read_manifest(source.archive)
    with tarfile.open(source.archive) as tar:
        tar.extractall(tmp_path, filter="data")
    on_disk = files_under(tmp_path)
    listed = {k: (v["sha256"], v["bytes"]) for k, v in manifest["files"].items()}
    assert on_disk == listed
    assert (tmp_path / "owner" / "OWNER_REQUESTS.md").read_text() == OWNER_TEXT

    assert manifest["agogd_version"] and manifest["created_at"]
    assert manifest["pg_dump_version"].startswith("pg_dump (PostgreSQL) 16")
    assert manifest["nats"]["server_version"].count(".") == 2
    pg = manifest["postgres"]
    assert pg["schema_version"] == migrate.discover()[-1].version
    assert pg["extensions"].get("vector")
    assert pg["row_counts"] == {t: len(rows) for t, rows in source.rows.items()}
    assert pg["row_counts"]["workflow_state"] == 2
    streams = manifest["nats"]["streams"]
    assert set(streams) == {s.name for s in PIPELINE.streams}
    for name, spec in streams.items():
        assert spec["messages"] == len(source.messages[name]), name
        if source.messages[name]:
            assert spec["last_seq"] == source.messages[name][-1][0]
        names = {c for (s, c) in source.consumers if s == name}
        assert {c["name"] for c in spec["consumers"]} == names
    started = datetime.fromisoformat(manifest["nats"]["snapshot_started_at"])
    assert started <= datetime.fromisoformat(pg["dumped_at"]), "Postgres dumped before NATS"


def files_under(root: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(root).as_posix(): (sha256_of(p), p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST
    }


def partials_in(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tar.partial")]


def is_file(path: Path) -> bool:
    return path.is_file()


# --- restore ------------------------------------------------------------------------
async def test_restore_onto_fresh_servers_brings_back_rows_messages_and_consumers(
    source: Source, tmp_path: Path
) -> None:
    fresh_pg = PostgresServer(tmp_path / "pg", durable=False).start()
    fresh_nats = NatsServer(tmp_path / "nats").start()
    owner = tmp_path / "owner" / "OWNER_REQUESTS.md"
    try:
        done = await restore_backup(
            servers(fresh_nats.url, fresh_pg.dsn()), source.archive, owner_requests_file=owner
        )
        assert done.replaced == []
        assert await rows_of(fresh_pg.dsn()) == source.rows
        nc = await nats.connect(fresh_nats.url)
        try:
            assert await messages_of(nc) == source.messages
            assert await consumers_of(nc) == source.consumers
        finally:
            await nc.close()
        assert owner.read_text() == OWNER_TEXT
        assert done.outbox == {"pending": 0, "reset": 0}, "a quiet agogd's outbox was all sent"
    finally:
        fresh_nats.stop()
        fresh_pg.stop()


async def test_restore_refuses_a_target_that_is_not_empty_unless_forced(
    source: Source, nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    target = servers(nats_server.url, pg_dsn)
    await restore_backup(target, source.archive)
    # Work on the restored servers: a new event row and a new intake message.
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("INSERT INTO workflow_events (kind) VALUES ('after.restore')")
    await conn.close()
    await nc.jetstream().publish("agog.requirements.new", b'{"req_number": "REQ-BK-9"}')
    before_rows, before_messages = await rows_of(pg_dsn), await messages_of(nc)

    with pytest.raises(Refused, match="not empty") as refused:
        await restore_backup(target, source.archive)
    assert re.search(r"Postgres has rows in \d+ table\(s\): .*workflow_state", str(refused.value))
    assert re.search(r"stream\(s\) hold messages: .*agog_requirements \(\d+\)", str(refused.value))
    assert "--force" in str(refused.value)
    assert await rows_of(pg_dsn) == before_rows, "a refused restore changed Postgres"
    assert await messages_of(nc) == before_messages, "a refused restore changed the streams"

    done = await restore_backup(target, source.archive, force=True)
    assert any("workflow_events" in what for what in done.replaced), done.replaced
    assert await rows_of(pg_dsn) == source.rows, "--force did not replace what was there"
    assert await messages_of(nc) == source.messages


def rewrite(archive: Path, dest: Path, change: Callable[[str, bytes], bytes]) -> Path:
    """A copy of an archive with each member's bytes passed through ``change``."""
    with tarfile.open(archive) as tar, tarfile.open(dest, "w") as out:
        for member in tar:
            handle = tar.extractfile(member)
            assert handle is not None
            data = change(member.name, handle.read())
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return dest


def flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def tamper_dump_keep_checksums(name: str, data: bytes, dump: bytes) -> bytes:
    """The dump corrupted, the manifest updated to match it (checksums pass)."""
    if name == DUMP:
        return dump
    if name == MANIFEST:
        manifest = json.loads(data)
        manifest["files"][DUMP] = {
            "sha256": hashlib.sha256(dump).hexdigest(),
            "bytes": len(dump),
        }
        return json.dumps(manifest).encode()
    return data


async def test_a_tampered_archive_and_a_newer_schema_are_refused_before_anything_is_touched(
    source: Source, nats_server: NatsServer, pg_dsn: str, tmp_path: Path
) -> None:
    target = servers(nats_server.url, pg_dsn)
    tampered = rewrite(
        source.archive,
        tmp_path / "tampered.tar",
        lambda name, data: flip_middle(data) if name == DUMP else data,
    )
    with pytest.raises(Refused, match=r"fails its checksums: postgres/agent_memory\.dump"):
        await restore_backup(target, tampered)

    def newer(name: str, data: bytes) -> bytes:
        if name != MANIFEST:
            return data
        manifest = json.loads(data)
        manifest["postgres"]["migrations"].append(
            {"version": "99.0.0", "checksum": "0" * 64, "filename": "V99.0.0__future.sql"}
        )
        return json.dumps(manifest).encode()

    future = rewrite(source.archive, tmp_path / "future.tar", newer)
    with pytest.raises(Refused, match=r"99\.0\.0 .*does not know .*newer agogd"):
        await restore_backup(target, future)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(source.archive.read_bytes()[:4096])
    with pytest.raises(Refused):
        await restore_backup(target, truncated)
    assert await tables_in(pg_dsn) == [], "a refused archive touched Postgres"
    assert await stream_names(nats_server.url) == [], "a refused archive touched NATS"


# --- verify -------------------------------------------------------------------------
async def scratch_left(dsn: str, url: str) -> list[str]:
    dbs = await column(dsn, "SELECT datname FROM pg_database WHERE datname LIKE 'agogverify%'")
    return dbs + [n for n in await stream_names(url) if n.startswith("agogverify")]


async def test_verify_passes_on_a_good_archive_and_fails_on_a_corrupt_dump(
    source: Source, tmp_path: Path
) -> None:
    live = servers(source.nats.url, source.dsn)
    good = await verify_backup(live, source.archive)
    assert good.ok, [(c.what, c.expected, c.found) for c in good.failed]
    whats = {c.what for c in good.checks}
    assert {"table workflow_state rows", "stream agog_requirements messages"} <= whats
    assert "the dump restores" in whats
    assert await scratch_left(source.dsn, source.nats.url) == []

    dump = read_member(source.archive, DUMP)
    corrupt = dump[: len(dump) // 2] + b"\0" * 64 + dump[len(dump) // 2 + 64 :]
    broken = rewrite(
        source.archive,
        tmp_path / "corrupt.tar",
        lambda name, data: tamper_dump_keep_checksums(name, data, corrupt),
    )
    bad = await verify_backup(live, broken)
    assert not bad.ok
    assert [c.what for c in bad.failed] == ["the dump restores"], bad.failed
    assert await scratch_left(source.dsn, source.nats.url) == [], "verify left scratch copies"

    def miscounted(name: str, data: bytes) -> bytes:
        if name != MANIFEST:
            return data
        manifest = json.loads(data)
        manifest["postgres"]["row_counts"]["workflow_state"] += 1
        return json.dumps(manifest).encode()

    wrong = await verify_backup(live, rewrite(source.archive, tmp_path / "n.tar", miscounted))
    assert [(c.what, c.expected, c.found) for c in wrong.failed] == [
        ("table workflow_state rows", 3, 2)
    ]
    # Verifying never touched the live state.
    assert await rows_of(source.dsn) == source.rows


def read_member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read()


# --- the consistency of the two halves ------------------------------------------------
EVENT = "agog.orchestration.events.workflow.tested.REQ-BK-7"


async def test_restore_republishes_the_outbox_rows_the_streams_lack_and_nothing_twice(
    nats_server: NatsServer,
    nc: NATS,
    migrated_pool: asyncpg.Pool,
    pg_dsn: str,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    """Outbox rows marked published after the snapshot began (their
    published_at is after it: here, ahead of the clock) are set pending again
    unless their message is in the restored stream; pending rows whose message
    is stored are marked published; claims on sequences past the restored
    streams are dropped. Then a real agogd publishes exactly what is missing."""
    await Reconciler(nc, PIPELINE).reconcile()
    js = nc.jetstream()
    for msg_id in ("evt-A", "evt-C", "evt-D"):
        await js.publish(EVENT, b"{}", headers={"Nats-Msg-Id": msg_id})
    await js.publish("agog.requirements.new", b'{"req_number": "REQ-BK-7"}')
    soon, old = "now() + interval '30 seconds'", "now() - interval '1 hour'"
    for msg_id, published in (
        ("evt-A", old),  # long sent, stored
        ("evt-B", soon),  # marked after the snapshot, never stored
        ("evt-C", soon),  # marked after the snapshot, stored before it
        ("evt-D", "NULL"),  # stored, but its mark was lost
        ("evt-E", "NULL"),  # never sent
    ):
        await migrated_pool.execute(
            f"INSERT INTO outbox (msg_id, subject, payload, published_at)"
            f" VALUES ($1, $2, '{{}}', {published})",
            msg_id,
            EVENT,
        )
    # agog_requirements holds 1 message; Postgres claims 3 (two arrived after the snapshot).
    await migrated_pool.execute(
        "INSERT INTO processed_messages (stream, stream_seq, consumer, subject, outcome)"
        " SELECT 'agog_requirements', s, 'agogd_intake', 'agog.requirements.new', 'applied'"
        " FROM generate_series(1, 3) s"
    )
    marked = "SELECT msg_id, published_at, last_error FROM outbox ORDER BY msg_id"
    before = {
        r["msg_id"]: (r["published_at"], r["last_error"]) for r in await fetch(pg_dsn, marked)
    }
    created = await create_backup(servers(nats_server.url, pg_dsn), tmp_path)

    fresh_nats = NatsServer(tmp_path / "fresh-nats").start()
    target_db = f"restored_{os.getpid()}_{time.monotonic_ns()}"
    target = postgres_server.create_database(target_db)
    try:
        done = await restore_backup(servers(fresh_nats.url, target), created.archive)
        assert done.outbox == {"pending": 2, "reset": 1}
        after = {
            r["msg_id"]: (r["published_at"], r["last_error"]) for r in await fetch(target, marked)
        }
        outbox = {msg_id: published is not None for msg_id, (published, _) in after.items()}
        claims = await column(
            target, "SELECT stream_seq FROM processed_messages WHERE stream = 'agog_requirements'"
        )
        assert outbox == {
            "evt-A": True, "evt-B": False, "evt-C": True, "evt-D": True, "evt-E": False,
        }  # fmt: skip
        assert claims == [1], "claims past the restored stream's last sequence were kept"
        for msg_id in ("evt-A", "evt-C"):
            assert after[msg_id] == before[msg_id], f"{msg_id}, sent and stored, was touched"

        # agogd on the restored servers sends B and E, once, and takes new intake.
        restored = await nats.connect(fresh_nats.url)
        try:
            async with running_agogd(settings_for(fresh_nats.url, target)):
                await submit(restored, "REQ-BK-8")  # seq 2: claimed before the restore
                await wait_status(target, "REQ-BK-8", "IN_PROGRESS", 30)
                await wait_outbox_sent(target)
            ids = [m[3] for m in (await messages_of(restored))["agog_orchestration_events"]]
        finally:
            await restored.close()
        for msg_id in ("evt-A", "evt-B", "evt-C", "evt-D", "evt-E"):
            assert ids.count(msg_id) == 1, f"{msg_id} is stored {ids.count(msg_id)} times"
    finally:
        fresh_nats.stop()
        postgres_server.drop_database(target_db)


async def wait_outbox_sent(dsn: str) -> None:
    await wait_zero(
        dsn,
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        "agogd never published the restored outbox",
    )


# --- agogctl backup ---------------------------------------------------------------------
def agogctl(
    env: dict[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGOGCTL, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


async def test_agogctl_creates_verifies_and_restores_with_its_exit_codes(
    source: Source, nats_server: NatsServer, pg_dsn: str, tmp_path: Path
) -> None:
    live = ctl_env(None, AGOG_NATS_URL=source.nats.url, AGOG_POSTGRES_DSN=source.dsn)
    out = await asyncio.to_thread(
        agogctl, live, "backup", "create", "--to", str(tmp_path), "--json"
    )
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    archive = Path(made["archive"])
    assert archive.parent == tmp_path and is_file(archive)
    assert made["manifest"]["postgres"]["row_counts"]["workflow_state"] == 2
    human = await asyncio.to_thread(agogctl, live, "backup", "create", "--to", str(tmp_path))
    assert human.returncode == 0 and is_file(Path(human.stdout.strip())), human.stderr
    assert "rows" in human.stderr and "streams" in human.stderr

    checked = await asyncio.to_thread(agogctl, live, "backup", "verify", str(archive), "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["ok"] is True

    target = ctl_env(None, AGOG_NATS_URL=nats_server.url, AGOG_POSTGRES_DSN=pg_dsn)
    first = await asyncio.to_thread(agogctl, target, "backup", "restore", str(archive))
    assert first.returncode == 0, first.stderr
    assert "restored" in first.stdout and "outbox:" in first.stdout
    again = await asyncio.to_thread(agogctl, target, "backup", "restore", str(archive), "--json")
    assert again.returncode == 1
    assert json.loads(again.stdout)["code"] == "refused"
    assert "not empty" in again.stderr and "--force" in again.stderr
    forced = await asyncio.to_thread(
        agogctl, target, "backup", "restore", str(archive), "--force", "--json"
    )
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["replaced"]

    # Each manual backup is recorded (backup_runs), on the live database.
    runs = await fetch(source.dsn, "SELECT trigger, outcome, archive FROM backup_runs")
    assert {(r["trigger"], r["outcome"]) for r in runs} == {("manual", "ok")}
    assert str(archive) in {r["archive"] for r in runs}

    away = ctl_env(None, AGOG_NATS_URL="nats://127.0.0.1:1", AGOG_POSTGRES_DSN=source.dsn)
    down = await asyncio.to_thread(agogctl, away, "backup", "create", "--to", str(tmp_path))
    assert down.returncode == 3 and "cannot reach NATS" in down.stderr, down.stderr
    bad = ctl_env(None, AGOG_BACKUP_SCHEDULE="soon", AGOG_POSTGRES_DSN=source.dsn)
    usage = await asyncio.to_thread(agogctl, bad, "backup", "create")
    assert usage.returncode == 2 and "AGOG_BACKUP_SCHEDULE" in usage.stderr, usage.stderr
    missing = await asyncio.to_thread(agogctl, target, "backup", "verify", str(tmp_path / "x.tar"))
    assert missing.returncode == 1 and "no such archive" in missing.stderr
    assert "Traceback" not in down.stderr + usage.stderr + missing.stderr + again.stderr


async def test_a_kill_mid_way_leaves_no_half_archive_and_no_half_restore(
    source: Source, nats_server: NatsServer, pg_dsn: str, tmp_path: Path
) -> None:
    live = ctl_env(None, AGOG_NATS_URL=source.nats.url, AGOG_POSTGRES_DSN=source.dsn)
    killed = await asyncio.to_thread(
        agogctl,
        {**live, "AGOG_FAILPOINTS": "backup.archive_written"},
        "backup", "create", "--to", str(tmp_path),
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    assert archives_in(tmp_path) == [], "a killed backup left an archive under its real name"
    assert partials_in(tmp_path), "no partial archive: the failpoint was not reached"

    target = ctl_env(None, AGOG_NATS_URL=nats_server.url, AGOG_POSTGRES_DSN=pg_dsn)
    cut = await asyncio.to_thread(
        agogctl,
        {**target, "AGOG_FAILPOINTS": "pg_restore.before_commit"},
        "backup", "restore", str(source.archive),
    )  # fmt: skip
    assert cut.returncode == -signal.SIGKILL
    await wait_no_psql(pg_dsn)
    assert await tables_in(pg_dsn) == [], "a restore killed before its commit left tables"
    # The streams were restored before Postgres: the operator runs it again, --force.
    again = await asyncio.to_thread(
        agogctl, target, "backup", "restore", str(source.archive), "--force"
    )
    assert again.returncode == 0, again.stderr
    assert await rows_of(pg_dsn) == source.rows


async def wait_no_psql(dsn: str) -> None:
    """The orphaned psql sees its input end without a COMMIT and leaves."""
    await wait_zero(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'psql'",
        "psql is still connected",
    )


async def test_agogctl_backs_up_and_restores_a_stopped_agogd_dev(tmp_path: Path) -> None:
    """The embedded default, as the runbook tells it: agogd dev stopped, its
    data destroyed, `agogctl backup restore --data-dir DIR`, agogd dev again."""
    data_dir = tmp_path / "agogd-data"
    data_dir.mkdir()
    # Ports of its own (agogd dev takes its previous ones): the compose stack's
    # defaults it would take otherwise may be another agogd dev's on this machine.
    ports = {"nats": free_port(), "postgres": free_port(), "http": free_port()}
    (data_dir / "endpoints.json").write_text(json.dumps({"ports": ports}))
    env = ctl_env(None)
    dev = DaemonProcess({}, ("dev", "--data-dir", str(data_dir))).start()
    try:
        dev.wait_ready(120)
        made = await asyncio.to_thread(
            agogctl, env, "--data-dir", str(data_dir), "req", "submit", "REQ-DEV-1"
        )
        assert made.returncode == 0, made.stderr
        running = await asyncio.to_thread(
            agogctl, env, "backup", "create", "--data-dir", str(data_dir), "--json"
        )  # agogd dev may keep running
        assert running.returncode == 0, running.stderr
    finally:
        dev.signal(signal.SIGTERM)
        assert dev.wait_exit(60) == 0
    stopped = await asyncio.to_thread(
        agogctl, env, "--data-dir", str(data_dir), "backup", "create", "--json"
    )
    assert stopped.returncode == 0, stopped.stderr
    assert "is stopped: its servers run for this command only" in stopped.stderr
    archive = Path(json.loads(stopped.stdout)["archive"])
    assert archive.parent == data_dir / "backups"

    shutil.rmtree(data_dir / "nats")
    shutil.rmtree(data_dir / "postgres")
    restored = await asyncio.to_thread(
        agogctl, env, "--data-dir", str(data_dir), "backup", "restore", str(archive)
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    dev = DaemonProcess({}, ("dev", "--data-dir", str(data_dir))).start()
    try:
        dev.wait_ready(120)
        shown = await asyncio.to_thread(
            agogctl, env, "--data-dir", str(data_dir), "req", "show", "REQ-DEV-1", "--json"
        )
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["req_number"] == "REQ-DEV-1"
    finally:
        dev.stop()
