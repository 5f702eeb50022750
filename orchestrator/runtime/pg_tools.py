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
    dsn: str, to: Path, *, bin_dir: Path | None = None, timeout: float = 3600.0
) -> dict[str, object]:
    """A consistent custom-format ``pg_dump`` of the DSN's database into ``to``
    (written beside it, then renamed: a crash never leaves half an archive
    under the real name). Returns its path, size and sha256."""
    conn = Conn.of(dsn)
    tool = find_tool("pg_dump", bin_dir)
    to.parent.mkdir(parents=True, exist_ok=True)
    partial = to.with_name(to.name + ".partial")
    argv = [str(tool), "--format=custom", "--no-owner", "--file", str(partial), conn.dsn]
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
