"""The servers of a stopped ``agogd dev``, started for one ``agogctl backup``.

``agogd dev`` runs its nats-server and PostgreSQL itself: once it is stopped
(as a restore needs), they are stopped too. When the data dir is agogd dev's
(its ``endpoints.json`` is there) and no agogd dev holds it (its lock is
free), the command starts both servers on the recorded ports, with the same
NATS authorization, holds the lock meanwhile (so agogd dev cannot start in
the middle of a restore) and stops them afterwards. A data dir whose server
directories were deleted gets fresh, empty servers, the target of a restore.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.backup.errors import Unreachable
from orchestrator.core.registry import Pipeline
from orchestrator.embedded import EmbeddedError, NatsServer, PostgresServer
from orchestrator.embedded.procs import port_is_free
from orchestrator.runtime import nats_auth


def _ports(endpoints: dict[str, object]) -> tuple[int, int] | None:
    ports = endpoints.get("ports")
    if isinstance(ports, dict) and ports.get("nats") and ports.get("postgres"):
        return int(ports["nats"]), int(ports["postgres"])
    try:
        nats_port = urlsplit(str(endpoints["nats_url"])).port
        pg_port = urlsplit(str(endpoints["postgres_dsn"])).port
    except (KeyError, ValueError):
        return None
    return (nats_port, pg_port) if nats_port and pg_port else None


@contextlib.contextmanager
def stopped_dev_servers(data_dir: Path, pipeline: Pipeline) -> Iterator[bool]:
    """Start agogd dev's servers for the block when agogd dev is stopped;
    yields whether it did (False: agogd dev runs, or this is no dev data dir)."""
    try:
        endpoints = json.loads((data_dir / "endpoints.json").read_text())
    except (OSError, ValueError):
        yield False
        return
    ports = _ports(endpoints) if isinstance(endpoints, dict) else None
    if ports is None:
        yield False
        return
    fd = os.open(data_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False  # agogd dev runs: its servers are up
            return
        with _servers(data_dir, pipeline, *ports):
            yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def _servers(data_dir: Path, pipeline: Pipeline, nats_port: int, pg_port: int) -> Iterator[None]:
    for port in (nats_port, pg_port):
        if not port_is_free(port):
            raise Unreachable(
                f"agogd dev in {data_dir} is stopped, but port {port} (its server's) is taken"
                " by something else: free it, or configure the servers (AGOG_NATS_URL,"
                " AGOG_POSTGRES_DSN)"
            )
    found = nats_auth.identities(pipeline)
    creds = nats_auth.load_or_create(
        data_dir / "nats-credentials.json", [ident.name for ident in found]
    )
    nats = NatsServer(
        data_dir / "nats", port=nats_port, extra_config=nats_auth.authorization_block(found, creds)
    )
    postgres = PostgresServer(data_dir / "postgres", port=pg_port)
    try:
        nats.start()
        postgres.start()
        yield
    except EmbeddedError as exc:
        raise Unreachable(f"could not start agogd dev's servers in {data_dir}: {exc}") from None
    finally:
        postgres.stop()
        nats.stop()
