"""agogd's HTTP port already taken: `agogd runner` beside `agogd dev` on one
host died with a 40-line traceback. Real processes on real ports."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.embedded import NatsServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from orchestrator.runtime.settings import Settings

DEFAULT_PORT = Settings.model_fields["http_port"].default


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process listens on (here: this test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def default_port_taken() -> Iterator[None]:
    """The default port (8090) in use, as `agogd dev` holds it. If something
    else on this host already listens there, it is taken all the same."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", DEFAULT_PORT))
        sock.listen()
    except OSError as exc:
        assert exc.errno == errno.EADDRINUSE, exc
    try:
        yield
    finally:
        sock.close()


def _agogd(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [[], ["run"], ["runner", "--demo"], ["dev", "--data-dir", "{tmp}"]],
    ids=["agogd", "run", "runner", "dev"],
)
def test_a_port_in_use_is_one_line_naming_the_setting(
    taken_port: int, tmp_path: Path, args: list[str]
) -> None:
    argv = [a.format(tmp=tmp_path / "dev") for a in args]
    done = _agogd(argv, AGOG_HTTP_PORT=str(taken_port), AGOG_LOG_LEVEL="warning")
    assert done.returncode == 2, done
    assert "Traceback" not in done.stdout + done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.strip()]
    assert line.startswith("agogd: AGOG_HTTP_PORT: ")
    assert f"127.0.0.1:{taken_port} is already in use" in line, line


async def test_runner_takes_a_free_port_when_none_was_chosen(
    nats_server: NatsServer, pg_dsn: str, default_port_taken: None
) -> None:
    env = {"AGOG_NATS_URL": nats_server.url, "AGOG_POSTGRES_DSN": pg_dsn}
    runner = DaemonProcess(env, ("runner", "--demo"))
    del runner.env["AGOG_HTTP_PORT"]  # not chosen: the default, 8090, is taken
    runner.start()
    try:
        moved = runner.wait_event("http.port_in_use")
        assert moved["port"] == DEFAULT_PORT and "AGOG_HTTP_PORT" in moved["hint"]
        assert runner.http_url == moved["http"]
        assert not moved["http"].endswith(f":{DEFAULT_PORT}")
        runner.wait_ready()
        assert runner.get("/healthz") == (200, {"status": "alive"})
    finally:
        runner.stop()
    assert runner.wait_exit() == 0
