"""`agogd dev`: the embedded default, run the way the README tells a new user."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import asyncpg
import nats
import pytest

from orchestrator.core import registry
from orchestrator.embedded.daemon_proc import DaemonProcess
from orchestrator.embedded.postgres import _bin_dir
from orchestrator.embedded.procs import port_is_free

TABLES = (
    "nats_deliverable_cache",
    "workflow_state",
    "stage_attempts",
    "outbox",
    "processed_messages",
    "memories",
)


def _dev(data_dir: Path) -> DaemonProcess:
    return DaemonProcess({"AGOG_HTTP_PORT": "0"}, ("dev", "--data-dir", str(data_dir))).start()


def _ready_line(d: DaemonProcess) -> str:
    return d.wait_for(
        lambda: next((x for x in d.lines if x.startswith("agogd dev ready:")), None),
        60,
        "the ready line",
    )


async def test_dev_runs_on_embedded_servers_and_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "agogd-data"
    d = _dev(data_dir)
    try:
        line = _ready_line(d)
        endpoints = json.loads((data_dir / "endpoints.json").read_text())
        assert {"nats_url", "postgres_dsn", "http_url"} <= endpoints.keys()
        for value in (endpoints["nats_url"], endpoints["postgres_dsn"], endpoints["http_url"]):
            assert value in line
        assert ":" not in endpoints["postgres_dsn"].split("//", 1)[1].split("@", 1)[0]
        d.wait_ready()
        assert d.http_url == endpoints["http_url"]

        # NATS authentication is on: no credentials, no connection.
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(endpoints["nats_url"], allow_reconnect=False)
        # An operator's credentials, printed by the documented command, look on.
        creds = await asyncio.to_thread(
            subprocess.run,
            [str(Path(sys.executable).parent / "agogd"), "nats-creds", "operator",
             "--data-dir", str(data_dir)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert creds.returncode == 0, creds.stderr
        fields = dict(
            line.split("=", 1) for line in creds.stdout.splitlines() if not line.startswith("#")
        )
        assert fields["NATS_URL"] == endpoints["nats_url"]
        assert (data_dir / "nats-credentials.json").stat().st_mode & 0o077 == 0
        nc = await nats.connect(
            endpoints["nats_url"], user=fields["NATS_USER"], password=fields["NATS_PASSWORD"]
        )
        try:
            live = {s.config.name: s.config.subjects for s in await nc.jetstream().streams_info()}
        finally:
            await nc.close()
        assert live == {s.name: list(s.subjects) for s in registry.load().streams}
        # No Ollama here: dev embeds memories with the installed offline model.
        config = d.wait_event("memory.embedding_config")
        assert config["provider"] == "local:all-MiniLM-L6-v2", config

        proc = await asyncio.create_subprocess_exec(
            str(_bin_dir() / "psql"),
            endpoints["postgres_dsn"],
            "-c",
            r"\dt",
            stdout=asyncio.subprocess.PIPE,
        )
        listing = (await proc.communicate())[0].decode()
        assert proc.returncode == 0
        for table in TABLES:
            assert table in listing
        conn = await asyncpg.connect(endpoints["postgres_dsn"])
        try:
            await conn.execute(
                "INSERT INTO workflow_state (req_number, title) "
                "VALUES ('REQ-KEEP-1', 'kept between runs')"
            )
        finally:
            await conn.close()
    finally:
        d.signal(signal.SIGTERM)
        assert d.wait_exit(30) == 0
    ports = json.loads((data_dir / "endpoints.json").read_text())["ports"]
    assert port_is_free(ports["nats"]) and port_is_free(ports["postgres"]), "servers stopped"

    again = _dev(data_dir)
    try:
        _ready_line(again)
        again.wait_ready()
        assert again.wait_event("migrations.current")["applied_now"] == []
        dsn = json.loads((data_dir / "endpoints.json").read_text())["postgres_dsn"]
        conn = await asyncpg.connect(dsn)
        try:
            assert (
                await conn.fetchval(
                    "SELECT title FROM workflow_state WHERE req_number = 'REQ-KEEP-1'"
                )
                == "kept between runs"
            )
        finally:
            await conn.close()
    finally:
        again.stop()


async def test_second_dev_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    first = _dev(tmp_path / "shared")
    try:
        _ready_line(first)
        second = _dev(tmp_path / "shared")
        assert second.wait_exit(30) != 0
        assert any("another `agogd dev` is using" in line for line in second.lines)
    finally:
        first.stop()


async def test_dev_survives_a_sigkilled_predecessor(tmp_path: Path) -> None:
    data_dir = tmp_path / "crashy"
    first = _dev(data_dir)
    _ready_line(first)
    first.signal(signal.SIGKILL)
    first.wait_exit(10)
    second = _dev(data_dir)
    try:
        _ready_line(second)
        second.wait_ready()
    finally:
        second.stop()


async def test_a_runner_beside_agogd_dev_needs_no_set_up(tmp_path: Path) -> None:
    """`agogd runner` on the same machine finds agogd dev's servers and uses
    agogd's NATS credentials and Postgres password file from its data dir."""
    data_dir = tmp_path / "agogd-data"
    d = _dev(data_dir)
    runner = None
    try:
        _ready_line(d)
        d.wait_ready()
        runner = DaemonProcess(
            {"AGOG_DATA_DIR": str(data_dir)}, ("runner", "--demo", "--agents", "cynthia")
        )
        del runner.env["AGOG_HTTP_PORT"]
        runner.start()
        runner.wait_ready(60)
        token = (data_dir / "api_token").read_text().strip()
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"{d.http_url}/api/reqs",
                json={"req_number": "REQ-RUNNER-1", "title": "t"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert resp.status == 201, await resp.text()
        dsn = json.loads((data_dir / "endpoints.json").read_text())["postgres_dsn"]
        conn = await asyncpg.connect(dsn)
        try:
            for _ in range(600):
                status = await conn.fetchval(
                    "SELECT status FROM stage_attempts WHERE req_number = 'REQ-RUNNER-1'"
                    " AND stage = 0 AND attempt = 1"
                )
                if status == "COMPLETE":
                    break
                await asyncio.sleep(0.1)
            assert status == "COMPLETE", f"the runner never answered Cynthia's stage ({status})"
        finally:
            await conn.close()
    finally:
        if runner is not None:
            runner.stop()
        d.stop()
