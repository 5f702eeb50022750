"""Another local user (``nobody``) against agogd's embedded servers: it can
neither connect to Postgres nor run a program through it, cannot read the
passwords, and cannot speak on NATS. Run as that user for real (``runuser``;
CI runs as root): a test that could not switch users fails and says why."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import asyncpg
import pytest

from orchestrator.embedded import NatsServer, PostgresServer
from orchestrator.runtime import nats_auth
from tests.agents import PIPELINE

NEIGHBOUR = "nobody"


def as_neighbour(*argv: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.fail(f"running a command as {NEIGHBOUR} needs root (CI runs as root)")
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    if runuser is None:
        pytest.fail("runuser (util-linux) is missing: cannot run a command as another user")
    return subprocess.run(
        [runuser, "-u", NEIGHBOUR, "--", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"},
        cwd="/",
    )


def test_a_neighbour_can_neither_connect_to_postgres_nor_run_a_program(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    marker = Path("/tmp") / f"agogd-neighbour-{secrets.token_hex(6)}"
    copy = f"COPY (SELECT 1) TO PROGRAM 'id > {marker}'"
    psql = str(postgres_server.bin / "psql")
    assert as_neighbour(psql, "--version").returncode == 0, "the neighbour cannot run psql"
    for user in ("postgres", postgres_server.user):
        for host in (postgres_server.host, str(postgres_server.socket_dir)):
            result = as_neighbour(
                psql, "-w", "-X", "-h", host, "-p", str(postgres_server.port),
                "-U", user, "-d", "postgres", "-c", copy,
            )  # fmt: skip
            assert result.returncode != 0, f"{user}@{host} let a neighbour in: {result.stdout}"
            said = result.stderr.lower()
            assert "password" in said or "permission denied" in said, result.stderr
    assert not marker.exists(), "a program ran as the database server"
    # The passwords are the owner's alone.
    readable = as_neighbour("cat", str(postgres_server.passfile))
    assert readable.returncode != 0 and "ermission denied" in readable.stderr
    assert postgres_server.passfile.stat().st_mode & 0o077 == 0


async def test_agogds_role_is_no_superuser_and_the_server_has_its_own_group(
    postgres_server: PostgresServer, pg_dsn: str
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("COPY (SELECT 1) TO PROGRAM 'true'")
        # It owns its database: migrations need nothing more.
        owner = await conn.fetchval(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        )
        assert owner == postgres_server.user
    finally:
        await conn.close()
    assert postgres_server.proc is not None
    fields = _proc_status(postgres_server.proc.pid)
    if os.geteuid() == 0:
        assert fields["Uid"][0] != "0" and fields["Gid"][0] != "0", "the server runs as root"
        assert "0" not in fields["Groups"], "the server kept root's groups"


def _proc_status(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split(":", 1)[0]: line.split(":", 1)[1].split() for line in lines}


def test_a_neighbour_cannot_speak_on_nats_nor_read_its_passwords(tmp_path: Path) -> None:
    found = nats_auth.identities(PIPELINE)
    creds = nats_auth.load_or_create(tmp_path / "nats-credentials.json", [i.name for i in found])
    server = NatsServer(
        tmp_path / "nats", extra_config=nats_auth.authorization_block(found, creds)
    ).start()
    try:
        # The NATS protocol by hand: CONNECT without credentials, then a decision.
        script = (
            "trap '' PIPE; "  # the server hangs up on us: read what it said first
            f"exec 3<>/dev/tcp/{server.host}/{server.port}; read -r info <&3; "
            'printf \'CONNECT {"verbose":false,"pedantic":false}\\r\\n'
            "PUB agog.strategic.decisions.REQ-X-1 2\\r\\n{}\\r\\nPING\\r\\n' >&3; "
            "timeout 5 cat <&3; true"
        )
        result = as_neighbour("bash", "-c", script)
        assert "Authorization Violation" in result.stdout, (result.stdout, result.stderr)
        assert "PONG" not in result.stdout
        for path in (tmp_path / "nats-credentials.json", server.data_dir / "nats-server.conf"):
            denied = as_neighbour("cat", str(path))
            assert denied.returncode != 0, f"a neighbour read {path.name}"
            assert path.stat().st_mode & 0o077 == 0
    finally:
        server.stop()
