"""Small process helpers shared by the embedded servers."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path


class EmbeddedError(RuntimeError):
    """An embedded server could not be found, started or stopped."""


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel gives to client sockets (32768 by default)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, for a server we start next.

    Taken below the kernel's ephemeral range: a port from ``bind(0)`` comes from
    that range, so any client socket opened before our server listens (a test's
    own connections) can take it, and the server then dies with "address
    already in use". A port is never handed out twice by one process, so a
    server's client and monitor ports cannot be the same.
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    if low > 11_000:
        for _ in range(200):
            port = rng.randrange(10_000, low)
            if port not in _handed_out and _bindable(host, port):
                _handed_out.add(port)
                return port
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on the port (TIME_WAIT leftovers allowed,
    as servers set SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def find_executable(name: str, package_hint: str) -> Path:
    """An executable from this environment's scripts dir, else from PATH."""
    scripts = sysconfig.get_path("scripts")
    found = shutil.which(name, path=os.pathsep.join([scripts, os.environ.get("PATH", "")]))
    if not found:
        raise EmbeddedError(f"{name} not found; install it with: pip install {package_hint}")
    return Path(found)


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll ``check`` until true; fail with the log tail if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"{what} exited with code {proc.returncode}: {tail(log)}")
        if check():
            return
        time.sleep(0.05)
    raise EmbeddedError(f"{what} not ready after {timeout:.0f}s: {tail(log)}")


def tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return " | ".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop_process(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 15.0
) -> None:
    """Signal a child and wait; SIGKILL it if it does not go in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


try:
    import ctypes

    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc Linux: children may outlive a SIGKILLed parent
    _LIBC = None


def parent_death_signal() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def kill_stale(
    pid_file: Path, marker: str, sig: int = signal.SIGTERM, timeout: float = 15.0
) -> None:
    """Stop a leftover server of ours (from a crashed run) named in a pid file."""
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return
    if marker not in cmdline:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)
