"""Security checks as tests: NATS auth and TLS on a real nats-server, and
known secrets that must never reach any output line, even at debug level."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg

from orchestrator.embedded import NatsServer, PostgresServer
from orchestrator.embedded.daemon_proc import DaemonProcess

NATS_PASSWORD = "nats-Pw-7f3a9c1e"
DSN_PASSWORD = "dsn-Pw-41b8d2aa"
API_TOKEN = "api-Tok-99e0c5f2"
SECRETS = (NATS_PASSWORD, DSN_PASSWORD, API_TOKEN)


def _start(daemons: list[DaemonProcess], env: dict[str, str]) -> DaemonProcess:
    d = DaemonProcess(env).start()
    daemons.append(d)
    return d


def _make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem")
    )
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for argv in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "1", "-subj", "/CN=agogd test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", ext],
    ):  # fmt: skip
        result = subprocess.run(["openssl", *map(str, argv)], capture_output=True, text=True)
        assert result.returncode == 0, f"openssl failed (apt-get install openssl): {result.stderr}"
    return ca, cert, key


def _auth_block(password: str = NATS_PASSWORD) -> str:
    return f"authorization {{ user: {json.dumps('agog')}, password: {json.dumps(password)} }}"


def test_nats_user_and_password_work_and_a_wrong_password_says_so(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    server = NatsServer(tmp_path / "nats", extra_config=_auth_block()).start()
    try:
        good = _start(
            daemons,
            {
                "AGOG_NATS_URL": server.url,
                "AGOG_NATS_USER": "agog",
                "AGOG_NATS_PASSWORD": NATS_PASSWORD,
                "AGOG_POSTGRES_DSN": pg_dsn,
            },
        )
        good.wait_ready()
        bad = _start(
            daemons,
            {
                "AGOG_NATS_URL": server.url,
                "AGOG_NATS_USER": "agog",
                "AGOG_NATS_PASSWORD": "wrong-" + NATS_PASSWORD,
                "AGOG_POSTGRES_DSN": pg_dsn,
            },
        )
        said = bad.wait_for(
            lambda: [line for line in bad.lines if "uthorization" in line], 30, "an auth error"
        )
        assert bad.readyz() == 503
        assert all(secret not in line for line in bad.lines + good.lines for secret in SECRETS)
        assert "authorization violation" in said[0].lower(), said[0]
    finally:
        server.stop()


def test_nats_over_tls_with_a_generated_ca(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    ca, cert, key = _make_certs(tmp_path / "certs")
    tls = f"tls {{ cert_file: {json.dumps(str(cert))}, key_file: {json.dumps(str(key))} }}"
    server = NatsServer(tmp_path / "nats", extra_config=tls, scheme="tls").start()
    try:
        env = {"AGOG_NATS_URL": server.url, "AGOG_POSTGRES_DSN": pg_dsn}
        trusted = _start(daemons, {**env, "AGOG_NATS_TLS_CA": str(ca)})
        trusted.wait_ready()
        untrusted = _start(daemons, env)  # the system store does not know our CA
        said = untrusted.wait_for(
            lambda: [line for line in untrusted.lines if "CERTIFICATE_VERIFY_FAILED" in line],
            30,
            "a certificate error",
        )
        assert untrusted.readyz() == 503 and said
    finally:
        server.stop()


async def test_known_secrets_never_appear_in_any_output_even_at_debug(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """Every secret agogd holds, a debug log, and the paths that print errors:
    a refused token, a NATS outage, a Postgres outage, a shutdown."""
    pg = PostgresServer(tmp_path / "pg", durable=False).start()
    nats = NatsServer(tmp_path / "nats", extra_config=_auth_block()).start()
    try:
        conn = await asyncpg.connect(pg.superuser_dsn())
        await conn.execute(f"CREATE ROLE secuser LOGIN SUPERUSER PASSWORD '{DSN_PASSWORD}'")
        await conn.close()
        base = pg.dsn().split("://", 1)[1].split("@", 1)[1].split("?", 1)[0]
        d = _start(
            daemons,
            {
                "AGOG_NATS_URL": nats.url,
                "AGOG_NATS_USER": "agog",
                "AGOG_NATS_PASSWORD": NATS_PASSWORD,
                "AGOG_POSTGRES_DSN": f"postgresql://secuser:{DSN_PASSWORD}@{base}",
                "AGOG_API_TOKEN": API_TOKEN,
                "AGOG_LOG_LEVEL": "debug",
            },
        )
        d.wait_ready()
        url = json.loads(d.wait_for(lambda: _http_url(d), 10, "the http url"))
        assert _post(url + "/api/reqs", {"req_number": "REQ-SEC-1", "title": "t"}, API_TOKEN) == 201
        assert _post(url + "/api/reqs", {"req_number": "REQ-SEC-2"}, "wrong" + API_TOKEN) == 401
        nats.stop()
        d.wait_not_ready()
        nats.start()
        d.wait_ready()
        pg.stop()
        d.wait_not_ready()
        await asyncio.sleep(1)  # a few failed pings and reconnects, at debug level
        pg.start()
        d.wait_ready()
        d.stop()
        output = "\n".join(d.lines)
        assert any(e.get("level") == "debug" for e in d.events), "no debug line was logged"
        for secret in SECRETS:
            assert secret not in output, f"a secret leaked into the output: {secret[:8]}…"
        # The lines that would carry them were there, redacted.
        assert "secuser" in output and "postgres" in output and "nats" in output
    finally:
        nats.stop()
        pg.stop()


def _http_url(d: DaemonProcess) -> str | None:
    for event in d.events:
        if event.get("event") == "agogd.starting" and event.get("http"):
            return json.dumps(event["http"])
    return None


def _post(url: str, body: dict[str, str], token: str) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_threat_in_the_threat_model_names_a_test_that_exists() -> None:
    """docs/security.md: each row of a threat table cites at least one test,
    and each cited test is a real test function of the suite."""
    repo = Path(__file__).resolve().parent.parent
    doc = (repo / "docs" / "security.md").read_text()
    defined = {
        name
        for path in (repo / "tests").rglob("test_*.py")
        for name in re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M)
    }
    threat_rows, header = [], ""
    for line in doc.splitlines():
        if not line.startswith("|"):
            header = ""
        elif not header:
            header = line
        elif header.startswith("| threat") and not line.startswith("|---"):
            threat_rows.append(line)
    assert len(threat_rows) >= 25, len(threat_rows)
    for row in threat_rows:
        cited = set(re.findall(r"(test_\w+)", row.rsplit("|", 2)[-2]))
        functions = {c for c in cited if not (repo / "tests" / f"{c}.py").exists()}
        assert functions or "the same test" in row or "same test" in row, row
        assert functions <= defined, (row, functions - defined)
