"""``agogd dev``: agogd on its own nats-server and PostgreSQL, under one data dir.

The data directory (default ``./.agogd``) keeps both servers' data between
runs; a second run reuses it and, when they are free, the same ports. Once
ready, one line with the endpoints is printed and ``endpoints.json`` written
for scripts, agents and agogctl.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr

from orchestrator.embedded import EmbeddedError, NatsServer, PostgresServer
from orchestrator.embedded.procs import free_port, port_is_free
from orchestrator.runtime import event_loop, logs, nats_auth
from orchestrator.runtime.daemon import Daemon
from orchestrator.runtime.private_file import write_private
from orchestrator.runtime.settings import Settings
from orchestrator.wiring import make_daemon

# The compose stack's host ports, used when free so habits carry over.
PREFERRED_PORTS = {"nats": 4222, "postgres": 5434, "http": 8090}


def _previous_ports(endpoints: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads(endpoints.read_text()).get("ports", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _choose_port(name: str, previous: dict[str, int]) -> int:
    for candidate in (previous.get(name), PREFERRED_PORTS[name]):
        if candidate and port_is_free(candidate):
            return candidate
    return free_port()


def write_endpoints(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace endpoints.json."""
    write_private(path, json.dumps(data, indent=2) + "\n")


def _lock(data_dir: Path) -> int:
    fd = os.open(data_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise click.ClickException(f"another `agogd dev` is using {data_dir}") from None
    return fd


def nats_credentials_file(data_dir: Path) -> Path:
    """Every NATS identity's password for this data dir (mode 0600): agogd's,
    and the agents' that `agogd nats-creds AGENT` prints."""
    return data_dir / "nats-credentials.json"


def dev_token(data_dir: Path) -> str:
    """The local API token of this data dir: made once, readable by its owner only,
    so that `agogctl` on the same machine can act without any set-up."""
    path = data_dir / "api_token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        return token


def demo_repo(data_dir: Path) -> Path:
    """The demo's git repository (``--demo`` without AGOG_REPO): one commit on
    main, so that each demo REQ shows its branch, its per-stage commits and
    its diff (``agogctl req diff``)."""
    root = data_dir / "demo-repo"
    if (root / ".git").is_dir():
        return root
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("# The demo's repository\n\nEach REQ lands here.\n")
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "agogd dev",
        "GIT_AUTHOR_EMAIL": "dev@agogsaas.ai",
        "GIT_COMMITTER_NAME": "agogd dev",
        "GIT_COMMITTER_EMAIL": "dev@agogsaas.ai",
    }
    for args in (["init", "-q", "-b", "main"], ["add", "README.md"], ["commit", "-qm", "demo"]):
        subprocess.run(["git", "-C", str(root), *args], check=True, env=env, capture_output=True)
    return root


def run_dev(settings: Settings) -> int:
    """Start the embedded servers, run agogd on them, stop them on exit."""
    log_format = settings.log_format if "AGOG_LOG_FORMAT" in os.environ else "auto"
    logs.configure(settings.log_level, log_format)
    log = logs.get_logger("agogd.dev")
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = _lock(data_dir)
    endpoints_file = data_dir / "endpoints.json"
    previous = _previous_ports(endpoints_file)
    # AGOG_HTTP_PORT, when set, is used as it is (0: any free port): taken, it
    # is a one-line error naming it, never a silent move to another port.
    if "http_port" in settings.model_fields_set:
        http_port = settings.http_port
    else:
        http_port = _choose_port("http", previous)
    # NATS authentication on by default: each identity of the registry with
    # its own password and allow lists (orchestrator.runtime.nats_auth); agogd is one.
    pipeline = settings.load_pipeline()
    found = nats_auth.identities(pipeline)
    creds = nats_auth.load_or_create(
        nats_credentials_file(data_dir), [ident.name for ident in found]
    )
    nats = NatsServer(
        data_dir / "nats",
        port=_choose_port("nats", previous),
        extra_config=nats_auth.authorization_block(found, creds),
    )
    postgres = PostgresServer(data_dir / "postgres", port=_choose_port("postgres", previous))
    try:
        log.info("dev.starting_servers", data_dir=str(data_dir))
        nats.start()
        postgres.start()
        run_settings = settings.model_copy(
            update={
                "nats_url": [nats.url],
                "nats_user": nats_auth.AGOGD,
                "nats_password": SecretStr(creds[nats_auth.AGOGD]),
                "postgres_dsn": type(settings.postgres_dsn)(postgres.dsn()),
                "postgres_password": None,
                "http_port": http_port,
                "api_token": settings.api_token or SecretStr(dev_token(data_dir)),
                "infra_data_dirs": settings.infra_data_dirs
                or [str(nats.data_dir), str(postgres.data_dir)],
                "repo": settings.repo or (demo_repo(data_dir) if settings.demo else None),
            }
        )
        daemon = make_daemon(run_settings, pipeline)  # loaded once, for the authorization too

        async def announce(d: Daemon) -> None:
            endpoints = {
                "nats_url": nats.url,
                "postgres_dsn": postgres.dsn(),
                "http_url": d.http.url,
                "data_dir": str(data_dir),
                "ports": {"nats": nats.port, "postgres": postgres.port, "http": d.http.port},
                "api_token_file": str(data_dir / "api_token"),
                "nats_credentials_file": str(nats_credentials_file(data_dir)),
                "pid": os.getpid(),
            }
            write_endpoints(endpoints_file, endpoints)
            click.echo(
                f"agogd dev ready: nats={nats.url} postgres={postgres.dsn()} "
                f"http={d.http.url} (endpoints in {endpoints_file})",
                err=False,
            )

        daemon.ready_hooks.append(announce)
        return event_loop.run(daemon.run(), run_settings.event_loop)
    except EmbeddedError as exc:
        log.error("dev.server_failed", error=str(exc))
        return 1
    finally:
        postgres.stop()
        nats.stop()
        os.close(lock_fd)
