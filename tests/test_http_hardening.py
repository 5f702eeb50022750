"""HTTP and CLI hardening (issue 15, item 7) on a real agogd: odd numbers and
tokens are 400 and 401 without a traceback, unknown Host headers are refused
(DNS rebinding), reads need the token beyond loopback, slow clients are cut
off, and no URL password is ever printed."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.embedded import NatsServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from tests.agents import running_agogd, settings_for

TOKEN = "hardening-Tok-3c9a"
NATS_SECRET = "url-Pw-8d1e77b0"


def _start(daemons: list[DaemonProcess], env: dict[str, str]) -> DaemonProcess:
    d = DaemonProcess(env).start()
    daemons.append(d)
    d.wait_ready(60)
    return d


def _where(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def raw_http(
    url: str,
    method: str,
    path: str,
    headers: list[bytes] | None = None,
    body: bytes = b"",
    host: bytes | None = None,
) -> tuple[int, bytes]:
    """One request as raw bytes (so a header can hold any byte), with
    ``Connection: close``; returns the status and the body."""
    where = _where(url)
    head = [f"{method} {path} HTTP/1.1".encode()]
    head.append(b"Host: " + (host if host is not None else f"{where[0]}:{where[1]}".encode()))
    head += headers or []
    head.append(b"Connection: close")
    if body:
        head.append(f"Content-Length: {len(body)}".encode())
    with socket.create_connection(where, timeout=15) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        chunks = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload


def _error(payload: bytes) -> str:
    body = json.loads(payload)
    assert isinstance(body, dict) and body.get("error") and body.get("code"), body
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    return str(body["error"])


def _no_tracebacks(d: DaemonProcess) -> None:
    bad = [
        line
        for line in d.lines
        if "Traceback" in line or "api.internal_error" in line or '"exception"' in line
    ]
    assert not bad, bad[:3]


# --- nan, inf and odd tokens --------------------------------------------------------------
def test_nan_inf_and_odd_tokens_are_400_and_401_without_a_traceback(
    nats_server: NatsServer, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    d = _start(
        daemons,
        {
            "AGOG_NATS_URL": nats_server.url,
            "AGOG_POSTGRES_DSN": pg_dsn,
            "AGOG_API_TOKEN": TOKEN,
            "AGOG_EMBEDDING_PROVIDER": "none",
        },
    )
    url = d.http_url
    auth = [f"Authorization: Bearer {TOKEN}".encode()]
    for value in ("nan", "NaN", "inf", "-inf", "Infinity", "1e999", "1e308", "0", "-1"):
        status, payload = raw_http(url, "GET", f"/api/memory/search?q=x&max_age_days={value}")
        assert status == 400, (value, payload)
        assert "max_age_days" in _error(payload)
    assert raw_http(url, "GET", "/api/memory/search?q=x&max_age_days=30")[0] == 200
    for path in (
        "/api/memory/search?q=x&min_similarity=nan",
        "/api/memory/search?q=x&min_similarity=inf",
        "/api/memory/search?q=x&limit=nan",
        "/api/events?ping=nan",
        "/api/events?ping=inf",
        "/api/reqs?limit=nan",
        "/api/reqs?limit=inf",
        "/api/reqs/REQ-X-1?events=nan",
    ):
        status, payload = raw_http(url, "GET", path)
        assert status == 400, (path, payload)
        _error(payload)
    for wait in ("nan", "inf", "-inf"):
        status, payload = raw_http(
            url, "POST", f"/api/reqs/REQ-X-1/cancel?wait={wait}", auth, b"{}"
        )
        assert status == 400, (wait, payload)
        _error(payload)

    # Tokens no well-behaved client sends: Latin-1 bytes (not UTF-8), UTF-8
    # beyond Latin-1, a lone 0xff; in the header and in ?token=.
    odd = (b"Bearer caf\xe9", "Bearer токен".encode(), b"Bearer \xff\xfe", b"Bearer \xed\xa0\x80")
    for value in odd:
        status, payload = raw_http(
            url, "POST", "/api/reqs", [b"Authorization: " + value], b'{"req_number": "REQ-X-2"}'
        )
        assert status == 401, (value, payload)
        assert "token" in _error(payload)
    status, payload = raw_http(url, "POST", "/api/reqs", auth, b'{"req_number": "REQ-X-2"}')
    assert status == 201, payload
    _no_tracebacks(d)


async def test_odd_read_tokens_are_401(nats_server: NatsServer, pg_dsn: str) -> None:
    settings = settings_for(nats_server.url, pg_dsn, api_read_auth=True, api_token=TOKEN)
    async with running_agogd(settings) as daemon:
        url = daemon.http.url
        for header in (b"Bearer caf\xe9", b"Bearer \xff"):
            status, payload = await asyncio.to_thread(
                raw_http, url, "GET", "/api/reqs", [b"Authorization: " + header]
            )
            assert status == 401, payload
        for query in ("caf%E9", "%ED%A0%80", "%FF%FE"):
            status, payload = await asyncio.to_thread(
                raw_http, url, "GET", f"/api/events?token={query}"
            )
            assert status == 401, (query, payload)
        ok = [f"Authorization: Bearer {TOKEN}".encode()]
        assert (await asyncio.to_thread(raw_http, url, "GET", "/api/reqs", ok))[0] == 200


# --- Host header (DNS rebinding) --------------------------------------------------------------
def _host_status(url: str, host: bytes, path: str = "/api/reqs") -> int:
    return raw_http(url, "GET", path, host=host)[0]


def test_an_unknown_host_is_refused_and_loopback_names_are_not(
    nats_server: NatsServer, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    d = _start(
        daemons,
        {"AGOG_NATS_URL": nats_server.url, "AGOG_POSTGRES_DSN": pg_dsn, "AGOG_API_TOKEN": TOKEN},
    )
    url = d.http_url
    port = _where(url)[1]
    # A page on evil.example whose name now points at 127.0.0.1 reads nothing.
    for path in ("/api/reqs", "/api/events", "/api/streams", "/", "/board/board.js"):
        status, payload = raw_http(url, "GET", path, host=f"evil.example:{port}".encode())
        assert status == 421, (path, status)
        assert "AGOG_HTTP_ALLOWED_HOSTS" in _error(payload)
    status, _ = raw_http(
        url,
        "POST",
        "/api/reqs",
        [f"Authorization: Bearer {TOKEN}".encode()],
        b'{"req_number": "REQ-H-1"}',
        host=b"evil.example",
    )
    assert status == 421
    for host in (b"evil.example", b"127.0.0.1.evil.example", b"localhost.evil.example:1", b""):
        assert _host_status(url, host) == 421, host
    for host in (
        f"localhost:{port}",
        "localhost",
        f"127.0.0.1:{port}",
        f"[::1]:{port}",
        "LOCALHOST.",
    ):
        assert _host_status(url, host.encode()) == 200, host
    # Probes and scrapes name the pod or service by whatever address they use.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert _host_status(url, b"10.1.2.3:8090", path) == 200, path
    _no_tracebacks(d)


async def test_allowed_hosts_are_configured(nats_server: NatsServer, pg_dsn: str) -> None:
    settings = settings_for(
        nats_server.url,
        pg_dsn,
        http_host="127.0.0.2",
        http_allowed_hosts="agogd.internal, board.example:8443",
    )
    async with running_agogd(settings) as daemon:
        url = daemon.http.url
        port = daemon.http.port
        for host, status in (
            (f"agogd.internal:{port}", 200),
            ("agogd.internal", 200),
            ("board.example:8443", 200),
            ("board.example:9999", 421),
            ("board.example", 421),
            (f"127.0.0.2:{port}", 200),  # the address it listens on
            (f"localhost:{port}", 200),
            (f"evil.example:{port}", 421),
        ):
            got = await asyncio.to_thread(_host_status, url, host.encode())
            assert got == status, (host, got)
    anything = settings_for(nats_server.url, pg_dsn, http_allowed_hosts="*")
    async with running_agogd(anything) as daemon:
        got = await asyncio.to_thread(_host_status, daemon.http.url, b"evil.example")
        assert got == 200


def test_a_bad_allowed_host_is_one_line_naming_the_setting() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "check-config"],
        env={**clean, "AGOG_HTTP_ALLOWED_HOSTS": "http://agogd.internal/"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    [line] = result.stderr.strip().splitlines()
    assert "AGOG_HTTP_ALLOWED_HOSTS" in line and "Traceback" not in result.stderr


# --- reads beyond loopback --------------------------------------------------------------------
async def test_reads_need_the_token_when_listening_beyond_loopback(
    nats_server: NatsServer, pg_dsn: str
) -> None:
    def reqs(url: str, token: str | None) -> int:
        headers = [f"Authorization: Bearer {token}".encode()] if token else []
        return raw_http(url, "GET", "/api/reqs", headers, host=b"127.0.0.1")[0]

    wide = settings_for(nats_server.url, pg_dsn, http_host="0.0.0.0", api_token=TOKEN)
    async with running_agogd(wide) as daemon:
        url = f"http://127.0.0.1:{daemon.http.port}"
        assert await asyncio.to_thread(reqs, url, None) == 401
        assert await asyncio.to_thread(reqs, url, "wrong") == 401
        assert await asyncio.to_thread(reqs, url, TOKEN) == 200
        # /healthz stays open for the probes.
        assert await asyncio.to_thread(_host_status, url, b"127.0.0.1", "/healthz") == 200
    # An operator who wants open reads there says so.
    chosen = settings_for(
        nats_server.url, pg_dsn, http_host="0.0.0.0", api_token=TOKEN, api_read_auth=False
    )
    async with running_agogd(chosen) as daemon:
        url = f"http://127.0.0.1:{daemon.http.port}"
        assert await asyncio.to_thread(reqs, url, None) == 200
    # On loopback reads stay open by default (agogctl on the same machine).
    async with running_agogd(settings_for(nats_server.url, pg_dsn, api_token=TOKEN)) as daemon:
        assert await asyncio.to_thread(reqs, daemon.http.url, None) == 200


# --- slow clients -------------------------------------------------------------------------------
HEADER_TIMEOUT = 2.0
SLACK = 10.0


async def _closed_within(
    url: str, first: bytes, trickle: bytes, limit: float
) -> tuple[float, bytes]:
    """Send ``first``, then ``trickle`` one byte every 0.3 s (never a whole
    request); returns how long until the server closed, and what it sent."""
    host, port = _where(url)
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()

    async def dribble() -> None:
        writer.write(first)
        for byte in trickle:
            await writer.drain()
            await asyncio.sleep(0.3)
            if writer.is_closing():
                return
            writer.write(bytes([byte]))

    sender = asyncio.create_task(dribble())
    got = b""
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                got += chunk
    except TimeoutError:
        raise AssertionError(f"the connection was still open after {limit:.0f} s") from None
    except ConnectionResetError:
        pass
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()
    return time.monotonic() - started, got


async def test_slow_headers_and_bodies_are_cut_off(
    nats_server: NatsServer, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    env = {
        "AGOG_NATS_URL": nats_server.url,
        "AGOG_POSTGRES_DSN": pg_dsn,
        "AGOG_API_TOKEN": TOKEN,
        "AGOG_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "AGOG_HTTP_BODY_TIMEOUT": str(HEADER_TIMEOUT),
    }
    d = await asyncio.to_thread(_start, daemons, env)
    url = d.http_url
    limit = HEADER_TIMEOUT + SLACK
    # A request line and headers that trickle in and never end.
    took, got = await _closed_within(url, b"GET /api/re", b"qs HTTP/1.1\r\nX-Slow: " * 10, limit)
    assert took <= limit and got == b"", (took, got)
    # A connection that sends nothing at all.
    took, got = await _closed_within(url, b"", b"", limit)
    assert took <= limit
    # A body that never completes: 408 and closed.
    head = (
        f"POST /api/reqs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    ).encode()
    took, got = await _closed_within(url, head, b" " * 100, limit)
    assert took <= limit and got.startswith(b"HTTP/1.1 408"), (took, got[:200])
    # Whole requests, as ever, and nothing but the answers in the log.
    status, _ = await asyncio.to_thread(raw_http, url, "GET", "/api/reqs")
    assert status == 200
    auth = [f"Authorization: Bearer {TOKEN}".encode()]
    body = b'{"req_number": "REQ-SLOW-1"}'
    status, _ = await asyncio.to_thread(raw_http, url, "POST", "/api/reqs", auth, body)
    assert status == 201
    _no_tracebacks(d)
    assert not [line for line in d.lines if "Unhandled exception" in line]


# --- URL credentials ----------------------------------------------------------------------------
def test_url_credentials_are_never_printed(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    auth = f'authorization {{ user: "agog", password: {json.dumps(NATS_SECRET)} }}'
    server = NatsServer(tmp_path / "nats", extra_config=auth).start()
    try:
        host_port = server.url.removeprefix("nats://")
        in_url = f"nats://agog:{NATS_SECRET}@{host_port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
        env = {"AGOG_NATS_URL": in_url, "AGOG_POSTGRES_DSN": pg_dsn}
        checked = subprocess.run(
            [sys.executable, "-m", "orchestrator", "check-config"],
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stderr
        assert NATS_SECRET not in checked.stdout + checked.stderr, checked.stdout
        assert f"nats://agog@{host_port}" in checked.stdout
        # A daemon that connects with it, and one whose URL password is wrong.
        good = _start(daemons, env)
        wrong = DaemonProcess(
            {**env, "AGOG_NATS_URL": in_url.replace(NATS_SECRET, "x" + NATS_SECRET[::-1])}
        )
        wrong.start()
        daemons.append(wrong)
        wrong.wait_for(lambda: wrong.named("nats.unreachable"), 60, "nats.unreachable")
        bad_secret = "x" + NATS_SECRET[::-1]
        for d, secret in ((good, NATS_SECRET), (wrong, bad_secret)):
            leaked = [line for line in d.lines if secret in line]
            assert not leaked, leaked[:3]
        assert good.named("nats.connected")[0]["servers"] == f"nats://agog:***@{host_port}"
    finally:
        server.stop()


def test_redact_text_masks_every_url_credential_and_only_that() -> None:
    from orchestrator.core.redact import redact_text

    said = "cannot reach nats://agog:pw@ss@h1:4222/x, tls://tok3n@h2 or postgresql://u:pg@db/m"
    assert redact_text(said) == (
        "cannot reach nats://agog:***@h1:4222/x, tls://***@h2 or postgresql://u:***@db/m"
    )
    assert redact_text(redact_text(said)) == redact_text(said)  # idempotent
    for kept in ("postgresql://agent_user@db/m", "see http://example.com/a@b", "no url at all"):
        assert redact_text(kept) == kept
