"""A real PostgreSQL 16 with pgvector, using the binaries shipped by ``pgserver``.

pgserver's own server listens on a unix socket only; we run its binaries
ourselves so the server listens on a loopback TCP port that survives restarts,
and so tests can stop, kill and restart it. As root, the server runs as the
unprivileged ``pgserver`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import signal
import stat
import subprocess
from pathlib import Path

from orchestrator.embedded.procs import (
    EmbeddedError,
    free_port,
    kill_stale,
    parent_death_signal,
    stop_process,
    wait_until,
)

SYSTEM_USER = "pgserver"
SUPERUSER = "postgres"


def _bin_dir() -> Path:
    """pgserver's bundled binaries, found without importing pgserver itself."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("PostgreSQL binaries not found; pip install pgserver")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class PostgresServer:
    """Init, start, stop, kill and restart one PostgreSQL cluster."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        durable: bool = True,
        user: str = "agent_user",
        database: str = "agent_memory",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.durable = durable
        self.user = user
        self.database = database
        self.bin = _bin_dir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.run_as = SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "sock"

    def dsn(self, database: str | None = None, user: str | None = None) -> str:
        """Loopback DSN; the cluster trusts loopback, so it carries no password."""
        return (
            f"postgresql://{user or self.user}@{self.host}:{self.port}/{database or self.database}"
        )

    # --- set-up -------------------------------------------------------------
    def _prepare_root(self) -> None:
        """Let the unprivileged system user run the binaries and own the data."""
        if self.run_as is None:
            return
        try:
            entry = pwd.getpwnam(self.run_as)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", self.run_as],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(self.run_as)
        traverse = stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH
        for path in (self.bin.parent, self.data_dir):
            for parent in [path, *path.parents]:
                parent.chmod(parent.stat().st_mode | stat.S_IXOTH | stat.S_IXGRP)
        for root, dirs, files in os.walk(self.bin.parent):
            for name in dirs + files:
                p = Path(root) / name
                if not p.is_symlink():
                    p.chmod(p.stat().st_mode | traverse)
        for path in (self.data_dir, self.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        if self.pgdata.exists():
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    def _run(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            args, capture_output=True, text=True, user=self.run_as, check=False, **kwargs
        )  # type: ignore[call-overload]
        if result.returncode != 0:
            raise EmbeddedError(f"{Path(args[0]).name} failed: {result.stderr.strip()}")
        return result

    def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self._run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ]
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser through psql (for bootstrap and tests)."""
        return self._run(
            [
                str(self.bin / "psql"),
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ]
        ).stdout

    def _bootstrap(self) -> None:
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{self.user}'").strip()
        if not exists:
            self.psql(f'CREATE ROLE "{self.user}" LOGIN SUPERUSER')
        if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'").strip():
            self.create_database(self.database)

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create a database owned by the application user; returns its DSN."""
        tmpl = f' TEMPLATE "{template}"' if template else ""
        self.psql(f'CREATE DATABASE "{name}" OWNER "{self.user}"{tmpl}')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # --- lifecycle ----------------------------------------------------------
    def _ready(self) -> bool:
        result = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def start(self, timeout: float = 60.0) -> PostgresServer:
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._prepare_root()
        self._initdb()
        kill_stale(self.pgdata / "postmaster.pid", str(self.pgdata), signal.SIGINT)
        args = [
            str(self.bin / "postgres"),
            "-D",
            str(self.pgdata),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-k",
            str(self.socket_dir),
            "-c",
            "max_connections=200",
        ]
        if not self.durable:
            args += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        log = self.log_file.open("ab")
        if self.run_as:
            os.chown(self.log_file, pwd.getpwnam(self.run_as).pw_uid, -1)
        with log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self.run_as,
                start_new_session=True,
                preexec_fn=parent_death_signal,
            )
        wait_until(self._ready, timeout, "postgres", self.proc, self.log_file)
        self._bootstrap()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, data is kept."""
        stop_process(self.proc, signal.SIGINT, timeout=30)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the whole process group, for fault tests."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)
