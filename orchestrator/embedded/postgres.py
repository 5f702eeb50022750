"""A real PostgreSQL 16 with pgvector, using the binaries shipped by ``pgserver``.

pgserver's own server listens on a unix socket only; we run its binaries
ourselves so the server listens on a loopback TCP port that survives restarts,
and so tests can stop, kill and restart it. As root, the server runs as the
unprivileged ``pgserver`` user and group (PostgreSQL refuses to run as root).

Every connection authenticates with a password (scram-sha-256), over TCP and
the unix socket alike: a loopback port is open to every local user, and trust
authentication made any of them a superuser who could run programs as the
server (``COPY ... TO PROGRAM``). The passwords are random, made once, and
kept in the data dir's ``pgpass`` file (mode 0600, libpq's format), which the
DSNs name (``?passfile=``) instead of carrying a secret. agogd's role owns its
database and is not a superuser; ``pgvector`` is created by the superuser when
the database is.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import signal
import stat
import subprocess
from pathlib import Path
from urllib.parse import quote

from orchestrator.embedded.procs import (
    EmbeddedError,
    free_port,
    kill_stale,
    parent_death_signal,
    stop_process,
    wait_until,
)
from orchestrator.runtime.private_file import write_private

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
        self._passwords: dict[str, str] = {}

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "sock"

    @property
    def passfile(self) -> Path:
        """The passwords, in libpq's pgpass format, readable by their owner only."""
        return self.data_dir / "pgpass"

    def dsn(self, database: str | None = None, user: str | None = None) -> str:
        """Loopback DSN naming the password file: it carries no secret itself."""
        return (
            f"postgresql://{user or self.user}@{self.host}:{self.port}/{database or self.database}"
            f"?passfile={quote(str(self.passfile))}"
        )

    def superuser_dsn(self, database: str = "postgres") -> str:
        """For set-up and tests that need the superuser (never agogd)."""
        return self.dsn(database, SUPERUSER)

    def password(self, user: str) -> str:
        """The password of ``user`` (agogd's role or the superuser), made once."""
        if not self._passwords:
            self._passwords = self._read_passwords()
        if user not in self._passwords:
            self._passwords[user] = secrets.token_urlsafe(32)
            self._write_passwords()
        return self._passwords[user]

    def _read_passwords(self) -> dict[str, str]:
        try:
            lines = self.passfile.read_text().splitlines()
        except FileNotFoundError:
            return {}
        found = {}
        for line in lines:
            fields = line.split(":")
            if len(fields) == 5 and not line.startswith("#"):
                found[fields[3]] = fields[4]
        return found

    def _write_passwords(self) -> None:
        """Replace the pgpass file atomically, created 0600 (never readable by others)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = ["# host:port:database:user:password (written by agogd)"]
        lines += [f"*:*:*:{user}:{pw}" for user, pw in sorted(self._passwords.items())]
        write_private(self.passfile, "\n".join(lines) + "\n")

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

    def _identity(self) -> dict[str, object]:
        """Run as the server's own user *and group*: subprocess's ``user=``
        alone keeps root's gid 0 (and its supplementary groups)."""
        if self.run_as is None:
            return {}
        entry = pwd.getpwnam(self.run_as)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _run(
        self, args: list[str], as_server: bool = True, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        identity = self._identity() if as_server else {}
        result = subprocess.run(
            args, capture_output=True, text=True, check=False, **identity, **kwargs
        )  # type: ignore[call-overload]
        if result.returncode != 0:
            raise EmbeddedError(f"{Path(args[0]).name} failed: {result.stderr.strip()}")
        return result

    def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        # The superuser's password goes to initdb in a file only the server's
        # user can read, removed straight after.
        pwfile = self.data_dir / ".initdb-pw"
        pwfile.unlink(missing_ok=True)
        fd = os.open(pwfile, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.password(SUPERUSER) + "\n")
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        try:
            self._run(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    SUPERUSER,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--no-instructions",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _hba_trusts(self) -> bool:
        """A cluster made before passwords (``--auth=trust``) still trusts everyone."""
        hba = self.pgdata / "pg_hba.conf"
        return any(
            line.split()[-1] == "trust"
            for line in hba.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        )

    def _require_passwords(self) -> None:
        """Upgrade a trusting cluster: set the passwords, then require them."""
        for role in (SUPERUSER, self.user):
            exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'").strip()
            if exists:
                self.psql(f"ALTER ROLE \"{role}\" PASSWORD '{self.password(role)}'")
        hba = self.pgdata / "pg_hba.conf"
        lines = [
            "# Written by agogd: every connection authenticates with a password.",
            "local all all scram-sha-256",
            "host all all 127.0.0.1/32 scram-sha-256",
            "host all all ::1/128 scram-sha-256",
            "local replication all scram-sha-256",
            "host replication all 127.0.0.1/32 scram-sha-256",
            "host replication all ::1/128 scram-sha-256",
        ]
        hba.write_text("\n".join(lines) + "\n")
        self.psql("SELECT pg_reload_conf()")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser through psql (for bootstrap and tests).

        psql runs as the caller (it reads the password file, which the
        server's user may not), with the password from that file."""
        env = {**os.environ, "PGPASSFILE": str(self.passfile)}
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
            ],
            as_server=False,
            env=env,
        ).stdout

    def _bootstrap(self) -> None:
        if self._hba_trusts():
            self._require_passwords()
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{self.user}'").strip()
        password = self.password(self.user)
        if not exists:
            self.psql(f"CREATE ROLE \"{self.user}\" LOGIN PASSWORD '{password}'")
        # Not a superuser, even in a cluster made when it was one.
        self.psql(f'ALTER ROLE "{self.user}" NOSUPERUSER NOCREATEROLE NOREPLICATION')
        # pgvector in the template: every database made from it has it from
        # its first moment (a client connecting in between would race to
        # create it itself, and may not).
        self.psql("CREATE EXTENSION IF NOT EXISTS vector", "template1")
        if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'").strip():
            self.create_database(self.database)
        else:
            self.psql("CREATE EXTENSION IF NOT EXISTS vector", self.database)

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create a database owned by the application user, with pgvector
        (not a trusted extension: only a superuser can create it; template1
        has it, see _bootstrap); returns its DSN."""
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
                start_new_session=True,
                preexec_fn=parent_death_signal,
                **self._identity(),  # type: ignore[arg-type]
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
