"""Miki's report, the I/O part: each source looked at with a timeout, and
every failure turned into an entry that says why (never an exception)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiodocker
import asyncpg
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from orchestrator.core.registry import Pipeline
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.settings import Settings, redact_url
from workers.adapters.compose_cli import ComposeError, compose_env, run_compose
from workers.adapters.engine_api import ENGINE_ERRORS, PROJECT_LABEL, connect, probe_health
from workers.infra.compose import ComposeProject, compose_project, container_entry
from workers.infra.entries import (
    STREAM_PREFIX,
    disk_entry,
    disk_error,
    registry_problems,
    stream_entry,
)

log = get_logger("agogd.infra_report")

DIR_SIZE_MAX_ENTRIES = 200_000  # stop walking a data directory past this many entries


async def guarded(
    work: Awaitable[Any], timeout: float, fallback: Callable[[str], Any], what: str
) -> Any:
    """Run one part of the report; a timeout or an unexpected error becomes its entry."""
    try:
        async with asyncio.timeout(timeout):
            return await work
    except TimeoutError:
        return fallback(f"timed out after {timeout:g}s")
    except Exception as exc:  # a report is always produced
        log.warning("infra.report_part_failed", part=what, error=repr(exc))
        return fallback(f"{type(exc).__name__}: {exc}")


def _existing_file(file: str) -> Path | None:
    path = Path(file).expanduser().absolute()
    return path if path.is_file() else None


async def load_compose(
    file: str, docker_url: str | None, timeout: float
) -> tuple[ComposeProject | None, str | None]:
    """Resolve one project with the real Compose binary; (project, error).

    ``file`` is one compose file, or several joined by ``+`` (a base and its
    overrides, ``-f a.yml -f b.yml``): one project, merged as Compose merges."""
    paths: list[Path] = []
    for name in (part.strip() for part in file.split("+")):
        path = await asyncio.to_thread(_existing_file, name) if name else None
        if path is None:
            return None, "not found" if "+" not in file else f"{name or '(empty)'} not found"
        paths.append(path)
    try:
        code, out, err = await run_compose(
            [*(arg for path in paths for arg in ("-f", str(path))), "config", "--format", "json"],
            cwd=paths[0].parent,
            env=compose_env(docker_url),
            timeout=timeout,
        )
    except ComposeError as exc:
        return None, str(exc)
    except TimeoutError:
        return None, f"docker-compose config timed out after {timeout:g}s"
    if code != 0:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        return None, f"invalid: {lines[-1][:500] if lines else f'exit code {code}'}"
    try:
        return compose_project(json.loads(out), tuple(str(path) for path in paths)), None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"unreadable compose model: {exc}"


async def _probe_health(
    docker: aiodocker.Docker, info: dict[str, Any], timeout: float
) -> str | None:
    """The container's own HEALTHCHECK run through exec (for engines without a
    health timer); None if it has none or the engine could not run it."""
    try:
        healthy = await probe_health(docker, info, timeout)
    except ENGINE_ERRORS:
        return None
    return None if healthy is None else "healthy" if healthy else "unhealthy"


def _needs_probe(info: Mapping[str, Any]) -> bool:
    state = info.get("State") or {}
    health = (state.get("Health") or {}).get("Status") or None
    test = ((info.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    return bool(state.get("Running")) and health in (None, "starting") and bool(test)


async def inspect_containers(
    docker_url: str,
    projects: Sequence[str],
    models: Mapping[str, ComposeProject],
    probe_timeout: float = 5.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(engine part, container entries) for the containers of some compose projects."""
    engine: dict[str, Any] = {"url": redact_url(docker_url), "reachable": False, "version": None}
    wanted = set(projects)
    docker: aiodocker.Docker | None = None
    try:
        docker = connect(docker_url)
        version = await docker.version()
        engine.update(reachable=True, version=version.get("Version"), error=None)
        summaries = [
            s
            for s in await docker.containers.list(all=True)
            if (s._container.get("Labels") or {}).get(PROJECT_LABEL) in wanted
        ]
        shown = await asyncio.gather(*(s.show() for s in summaries), return_exceptions=True)
        infos = [i for i in shown if isinstance(i, dict)]  # one removed meanwhile: gone
        probes = await asyncio.gather(
            *(
                _probe_health(docker, i, probe_timeout) if _needs_probe(i) else _none()
                for i in infos
            )
        )
    except (*ENGINE_ERRORS, ValueError) as exc:
        engine.update(
            error=f"{type(exc).__name__}: {exc}"[:500],
            verdict="failed",
            problems=[f"container engine {engine['url']} unreachable: {exc}"[:500]],
        )
        return engine, []
    finally:
        if docker is not None:
            await docker.close()
    entries = [
        container_entry(
            info,
            models.get(((info.get("Config") or {}).get("Labels") or {}).get(PROJECT_LABEL, "")),
            probed_health=probed,
        )
        for info, probed in zip(infos, probes, strict=True)
    ]
    entries.sort(key=lambda c: (str(c["project"]), str(c["service"]), c["name"]))
    engine.update(verdict="ok", problems=[])
    return engine, entries


async def _none() -> None:
    return None


def _stream_dict(info: Any) -> dict[str, Any]:
    config, state = info.config, info.state
    return {
        "config": {
            "name": config.name,
            "subjects": list(config.subjects or []),
            "max_msgs": config.max_msgs,
            "max_bytes": config.max_bytes,
        },
        "state": {
            "messages": state.messages,
            "bytes": state.bytes,
            "first_seq": state.first_seq,
            "last_seq": state.last_seq,
        },
    }


def _consumer_dict(info: Any) -> dict[str, Any]:
    return {
        "name": info.name,
        "config": {"filter_subject": info.config.filter_subject if info.config else None},
        "num_pending": info.num_pending,
        "num_ack_pending": info.num_ack_pending,
        "num_redelivered": info.num_redelivered,
    }


async def inspect_streams(
    nc: NATS | None, pipeline: Pipeline
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(NATS part, stream entries) for every stream named ``agog_*``."""
    if nc is None or not nc.is_connected:
        return nats_error("not connected to NATS"), []
    try:
        jsm = nc.jsm(timeout=5)
        entries = []
        for info in await jsm.streams_info():
            if not str(info.config.name).startswith(STREAM_PREFIX):
                continue
            consumers = await jsm.consumers_info(info.config.name)
            entries.append(stream_entry(_stream_dict(info), [_consumer_dict(c) for c in consumers]))
    except (NatsError, OSError, TimeoutError) as exc:
        return nats_error(f"{type(exc).__name__}: {exc}"), []
    entries.sort(key=lambda s: str(s["stream"]))
    problems = registry_problems(pipeline, entries)
    url = nc.connected_url
    return {
        "reachable": True,
        "server": redact_url(url.geturl()) if url is not None else None,
        "error": None,
        "verdict": "degraded" if problems else "ok",
        "problems": problems,
    }, entries


def nats_error(error: str) -> dict[str, Any]:
    return {
        "reachable": False,
        "error": error,
        "verdict": "failed",
        "problems": [f"NATS: {error}"],
    }


async def inspect_postgres(
    settings: Settings, pool: asyncpg.Pool | None, timeout: float = 5.0
) -> dict[str, Any]:
    """Reachability (``SELECT 1``), server version, database size and latency."""
    part: dict[str, Any] = {"dsn": settings.public_dsn(), "reachable": False}
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            if pool is not None:
                async with pool.acquire() as conn:
                    row = await _pg_facts(conn)
            else:
                conn = await asyncpg.connect(settings.dsn(), timeout=timeout)
                try:
                    row = await _pg_facts(conn)
                finally:
                    await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        part.update(error=error, verdict="failed", problems=[f"postgres unreachable: {error}"])
        return part
    part.update(
        reachable=True,
        version=row["version"],
        database=row["database"],
        database_bytes=row["size"],
        latency_ms=round(1000 * (time.monotonic() - started), 1),
        error=None,
        verdict="ok",
        problems=[],
    )
    return part


async def _pg_facts(conn: asyncpg.Connection) -> asyncpg.Record:
    assert await conn.fetchval("SELECT 1") == 1
    return await conn.fetchrow(
        "SELECT current_setting('server_version') AS version, current_database() AS database,"
        " pg_database_size(current_database()) AS size"
    )


def _dir_size(path: Path) -> tuple[int, bool]:
    """Bytes under a directory (not following links), bounded in entries."""
    total, seen, stack = 0, 0, [path]
    while stack:
        folder = stack.pop()
        with contextlib.suppress(OSError), os.scandir(folder) as it:
            for item in it:
                seen += 1
                if seen > DIR_SIZE_MAX_ENTRIES:
                    return total, False
                with contextlib.suppress(OSError):
                    if item.is_dir(follow_symlinks=False):
                        stack.append(Path(item.path))
                    else:
                        total += item.stat(follow_symlinks=False).st_size
    return total, True


def _disk(path: str) -> dict[str, Any]:
    folder = Path(path).expanduser().absolute()
    if not folder.exists():
        return disk_error(str(folder), "no such directory")
    try:
        usage = shutil.disk_usage(folder)
    except OSError as exc:
        return disk_error(str(folder), f"cannot read its disk use: {exc}")
    size, complete = _dir_size(folder) if folder.is_dir() else (folder.stat().st_size, True)
    return disk_entry(str(folder), usage.total, usage.used, usage.free, size, complete)


async def inspect_disks(paths: Sequence[str]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(asyncio.to_thread(_disk, p) for p in paths)))
