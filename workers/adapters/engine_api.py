"""One way to talk to the container engine, for every DevOps worker.

aiodocker sets no timeout on its requests unless told, and none on stop,
restart and kill even then: one engine call that never answers would hang
Miki's watcher (inside a Postgres row lock) or Berry's health wait for good.
Here every call but the event stream and log streams is bounded, and the
engine's answers are sorted: the engine gone, or one container's trouble.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiodocker
import aiohttp

# A failed call: the engine's HTTP error, no connection, or no answer in time.
ENGINE_ERRORS = (aiodocker.DockerError, aiohttp.ClientError, OSError, asyncio.TimeoutError)
CALL_TIMEOUT = 30.0  # seconds for one engine call (list, inspect, start, exec)
CONNECT_TIMEOUT = 10.0
STOP_GRACE = 10  # seconds a restarted container gets to stop (Docker's default)
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


def connect(url: str, call_timeout: float = CALL_TIMEOUT) -> aiodocker.Docker:
    """A client whose calls time out; the event stream still runs unbounded."""
    timeout = aiohttp.ClientTimeout(total=call_timeout, sock_connect=CONNECT_TIMEOUT)
    return aiodocker.Docker(url=url, timeout=timeout)


async def restart(container: aiodocker.containers.DockerContainer) -> None:
    """Restart with Docker's stop grace, and an answer expected within it."""
    await container.restart(t=STOP_GRACE, timeout=STOP_GRACE + CALL_TIMEOUT)


def vanished(exc: BaseException) -> bool:
    """The engine answered "no such container": the container was removed
    (by compose, an operator, a deploy) while we looked at it. That is not
    the engine going away, and must not drop the connection. Docker says 404;
    podman says 500 when the removal races its own lookup."""
    if not isinstance(exc, aiodocker.DockerError):
        return False
    return exc.status == 404 or "no such container" in str(exc.message).lower()


def refused(exc: BaseException) -> bool:
    """The engine answered with an HTTP error about this container (a start
    that fails on a missing mount, a conflict): the engine is there. Not 503
    (the engine itself unavailable), nor aiodocker's 900 for no connection."""
    return isinstance(exc, aiodocker.DockerError) and 400 <= exc.status < 600 and exc.status != 503


async def probe_health(
    docker: aiodocker.Docker, info: dict[str, Any], timeout: float
) -> bool | None:
    """Healthy? From ``State.Health`` when the engine runs the check itself,
    else by running the container's HEALTHCHECK through exec. None when the
    container has no health check at all."""
    test = ((info.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    if not test or test[0] == "NONE":
        return None
    status = ((info.get("State") or {}).get("Health") or {}).get("Status")
    if status in ("healthy", "unhealthy"):
        return status == "healthy"
    cmd = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", " ".join(test[1:])]
    container = docker.containers.container(info["Id"])
    execute = await container.exec(cmd, stdout=True, stderr=True)
    try:  # only the check's own run is timed as "unhealthy"
        async with asyncio.timeout(timeout):
            async with execute.start(detach=False) as stream:
                while await stream.read_out() is not None:
                    pass
            result = await execute.inspect()
    except TimeoutError:
        return False
    return result.get("ExitCode") == 0


async def last_lines(docker: aiodocker.Docker, container_id: str, lines: int = 20) -> list[str]:
    """The container's last log lines (for escalations and failed deploys)."""
    with contextlib.suppress(*ENGINE_ERRORS):
        container = docker.containers.container(container_id)
        out = await container.log(stdout=True, stderr=True, tail=lines, timeout=CALL_TIMEOUT)
        return [line.rstrip("\n") for line in out][-lines:]
    return []
