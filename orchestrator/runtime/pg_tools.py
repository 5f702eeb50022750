"""pg_dump and pg_restore, run as real processes, without a password in argv.

Two users need them: Berry's backup of the app database before a deploy
that adds migrations, and ``agogctl backup`` of agogd's own agent_memory.
The binaries come from ``AGOG_PG_BIN_DIR`` when set (an external Postgres
newer than 16 needs its own pg_dump), else pgserver's bundled PostgreSQL 16
(the embedded default), else ``PATH``. The password travels in the child's
``PGPASSWORD``, never on its command line (``ps`` would show it), and the
DSN in errors is the redacted one.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from orchestrator.runtime import failpoints
from orchestrator.runtime.settings import redact_url


class PgToolError(RuntimeError):
    """pg_dump or pg_restore is missing or failed; the message says why."""


def find_tool(name: str, bin_dir: Path | None = None) -> Path:
    """``pg_dump``/``pg_restore``/``psql``: AGOG_PG_BIN_DIR, pgserver's, PATH."""
    candidates: list[Path] = []
    if bin_dir is not None:
        candidates.append(Path(bin_dir) / name)
    else:
        spec = importlib.util.find_spec("pgserver")
        if spec is not None and spec.submodule_search_locations:
            root = Path(next(iter(spec.submodule_search_locations)))
            candidates.append(root / "pginstall" / "bin" / name)
        found = shutil.which(name)
        if found:
            candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    where = f"in {bin_dir} (AGOG_PG_BIN_DIR)" if bin_dir else "(pip install pgserver, or PATH)"
    raise PgToolError(f"{name} not found {where}")


@dataclass(frozen=True)
class Conn:
    """A DSN split into what goes on argv (no password) and the child's env."""

    dsn: str  # without the password
    env: dict[str, str]

    @classmethod
    def of(cls, dsn: str) -> Conn:
        parts = urllib.parse.urlsplit(dsn)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AGOG_"))}
        if parts.password is not None:
            env["PGPASSWORD"] = urllib.parse.unquote(parts.password)
            user = urllib.parse.quote(urllib.parse.unquote(parts.username or ""), safe="")
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
            dsn = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        return cls(dsn, env)


async def _run(argv: list[str], env: dict[str, str], timeout: float, what: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PgToolError(f"{what} timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip()[-800:]
        raise PgToolError(f"{what} failed (exit code {proc.returncode}): {text}")
    return out.decode(errors="replace")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def dump(
    dsn: str,
    to: Path,
    *,
    bin_dir: Path | None = None,
    timeout: float = 3600.0,
    snapshot: str | None = None,
) -> dict[str, object]:
    """A consistent custom-format ``pg_dump`` of the DSN's database into ``to``
    (written beside it, then renamed: a crash never leaves half an archive
    under the real name). Returns its path, size and sha256. ``snapshot``: an
    exported snapshot (``pg_export_snapshot()``) to dump, so that what the
    exporting transaction reads (row counts) is exactly what is dumped."""
    conn = Conn.of(dsn)
    tool = find_tool("pg_dump", bin_dir)
    to.parent.mkdir(parents=True, exist_ok=True)
    partial = to.with_name(to.name + ".partial")
    argv = [str(tool), "--format=custom", "--no-owner", "--file", str(partial)]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    argv.append(conn.dsn)
    try:
        await _run(argv, conn.env, timeout, f"pg_dump of {redact_url(dsn)}")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, to)
    return await asyncio.to_thread(_described, to)


def _described(path: Path) -> dict[str, object]:
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_of(path)}


async def restore(
    dsn: str,
    archive: Path,
    *,
    clean: bool = False,
    bin_dir: Path | None = None,
    timeout: float = 3600.0,
) -> None:
    """``pg_restore`` a custom-format archive into the DSN's database, in one
    transaction (a failure leaves the database as it was); ``clean`` drops
    the archive's objects first (replacing what is there)."""
    if not await asyncio.to_thread(os.path.isfile, archive):
        raise PgToolError(f"no such archive: {archive}")
    conn = Conn.of(dsn)
    tool = find_tool("pg_restore", bin_dir)
    argv = [str(tool), "--no-owner", "--no-comments", "--single-transaction", "--exit-on-error"]
    if clean:
        argv += ["--clean", "--if-exists"]
    argv += ["--dbname", conn.dsn, str(archive)]
    await _run(argv, conn.env, timeout, f"pg_restore into {redact_url(dsn)}")


async def version(bin_dir: Path | None = None) -> str:
    """``pg_dump --version``, for a backup's manifest."""
    out = await _run(
        [str(find_tool("pg_dump", bin_dir)), "--version"], dict(os.environ), 30, "pg_dump"
    )
    return out.strip()


async def restore_atomic(
    dsn: str,
    archive: Path,
    *,
    before: str = "",
    after: str = "",
    clean: bool = False,
    bin_dir: Path | None = None,
    timeout: float = 3600.0,
) -> None:
    """Restore a custom-format archive with ``before`` and ``after`` SQL in the
    same single transaction: pg_restore writes the archive's SQL, psql runs it
    between ``BEGIN`` + ``before`` and ``after`` + ``COMMIT``. The COMMIT is
    sent only once pg_restore has exited 0 and psql has taken every statement
    (ON_ERROR_STOP), so a corrupt archive, a failing statement, a timeout or a
    kill at any moment leaves the database as it was. ``clean`` drops the
    archive's objects first (``--clean --if-exists``: replacing what is there)."""
    if not await asyncio.to_thread(os.path.isfile, archive):
        raise PgToolError(f"no such archive: {archive}")
    conn = Conn.of(dsn)
    what = f"restore into {redact_url(dsn)}"
    producer = await asyncio.create_subprocess_exec(
        str(find_tool("pg_restore", bin_dir)),
        "--no-owner",
        "--no-comments",
        *(["--clean", "--if-exists"] if clean else []),
        "--file=-",
        str(archive),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=conn.env,
    )
    consumer = await asyncio.create_subprocess_exec(
        str(find_tool("psql", bin_dir)),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "--dbname",
        conn.dsn,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**conn.env, "PGOPTIONS": "-c client_min_messages=warning"},
    )
    assert producer.stdout and producer.stderr and consumer.stdin and consumer.stderr
    errors = [asyncio.ensure_future(p.read()) for p in (producer.stderr, consumer.stderr)]
    sink, source = consumer.stdin, producer.stdout
    try:
        async with asyncio.timeout(timeout):
            try:
                sink.write(f"BEGIN;\n{before}\n".encode())
                while block := await source.read(1 << 20):
                    sink.write(block)
                    await sink.drain()
                if await producer.wait() == 0:
                    failpoints.hit("pg_restore.before_commit")
                    sink.write(f"\n{after}\nCOMMIT;\n".encode())
                    await sink.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # psql stopped at an error: its stderr says which
            finally:
                sink.close()
            produced, consumed = await producer.wait(), await consumer.wait()
    except TimeoutError:
        raise PgToolError(f"{what} timed out after {timeout:.0f}s; nothing was committed") from None
    finally:
        for proc in (producer, consumer):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    restore_err, psql_err = [(await e).decode(errors="replace").strip()[-800:] for e in errors]
    if produced != 0:
        raise PgToolError(f"pg_restore of {archive} failed (exit code {produced}): {restore_err}")
    if consumed != 0:
        raise PgToolError(
            f"{what} failed (exit code {consumed}); nothing was committed: {psql_err}"
        )


async def schemas_of(
    archive: Path, *, bin_dir: Path | None = None, timeout: float = 600.0
) -> list[str]:
    """The schemas a custom-format archive creates, and ``public`` (which a
    dump of PostgreSQL 15 or later holds objects in without creating it),
    from its table of contents (``pg_restore --list``)."""
    tool = find_tool("pg_restore", bin_dir)
    env = Conn.of("postgresql://").env
    out = await _run(
        [str(tool), "--list", str(archive)], env, timeout, f"pg_restore --list {archive}"
    )
    found = ["public"]
    for line in out.splitlines():
        # "7; 2615 16512 SCHEMA - billing owner" (2615: pg_namespace; the owner may be empty)
        head, _, entry = line.partition("; ")
        fields = entry.split(" ", 4)
        if head.strip().isdecimal() and len(fields) == 5 and fields[2:4] == ["SCHEMA", "-"]:
            name = fields[4].rpartition(" ")[0]
            if name and name not in found:
                found.append(name)
    return found
