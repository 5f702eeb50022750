"""A real Docker-API container engine on machines without Docker: podman's
Docker-compatible service, for the DevOps workers' tests and for `agogd dev`.

On a workstation with Docker none of this is needed: the workers talk to
``/var/run/docker.sock`` or ``DOCKER_HOST`` unchanged. Here (see
shared/reference/container-engine.md) podman needs a containers.conf that
uses runc and fixed ulimits, which we pass through ``CONTAINERS_CONF``
instead of editing /etc, and images are made offline from busybox-static.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import urllib.error
from collections.abc import Iterator
from pathlib import Path

from orchestrator.embedded.procs import (
    EmbeddedError,
    kill_stale,
    parent_death_signal,
    stop_process,
    wait_until,
)

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
"""
BUSYBOX_IMAGE = "localhost/agog-busybox:2"
BUSYBOX_LINKS = (
    *("sh", "sleep", "httpd", "nc", "wget", "cat", "echo", "true", "false", "ls"),
    *("rm", "touch", "test", "mkdir", "kill", "ps", "grep", "env", "date", "id"),
)
INSTALL_HINT = "apt-get install -y podman runc busybox-static (as root; see README)"


class ContainerEngine:
    """Start, stop and restart one `podman system service` on a unix socket."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.socket = base_dir / "podman.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for podman and docker-compose to use this engine."""
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.base_dir / "containers.conf"),
            "DOCKER_HOST": self.url,
        }

    @property
    def log_file(self) -> Path:
        return self.base_dir / "podman.log"

    def start(self, timeout: float = 30.0) -> ContainerEngine:
        podman = shutil.which("podman")
        if podman is None:
            raise EmbeddedError(f"podman not found; install it with: {INSTALL_HINT}")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "containers.conf").write_text(CONTAINERS_CONF)
        kill_stale(self.base_dir / "podman.pid", str(self.socket))
        self.socket.unlink(missing_ok=True)
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [podman, "system", "service", "--time=0", self.url],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=parent_death_signal,
            )
        (self.base_dir / "podman.pid").write_text(str(self.proc.pid))
        wait_until(self._answers, timeout, "podman system service", self.proc, self.log_file)
        return self

    def _answers(self) -> bool:
        try:
            return self.api("GET", "/_ping") == "OK"
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def api(self, method: str, path: str) -> str:
        """One plain HTTP call on the socket (for readiness; workers use aiodocker)."""
        conn = _UnixHTTPConnection(self.socket)
        try:
            conn.request(method, path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)
        self.proc = None

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The engine hung: it keeps its socket and connections but answers
        nothing (SIGSTOP) until the block ends (SIGCONT)."""
        assert self.proc is not None, "the engine is not running"
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def podman(self, *args: str, check: bool = True) -> str:
        """Run the podman CLI against the same storage (argv, no shell)."""
        result = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise EmbeddedError(f"podman {' '.join(args)}: {result.stderr.strip()[-500:]}")
        return result.stdout

    def ensure_busybox_image(self, name: str = BUSYBOX_IMAGE) -> str:
        """A tiny image made offline from busybox-static (no registry needed)."""
        exists = subprocess.run(
            ["podman", "image", "exists", name], env=self.env, capture_output=True, timeout=60
        )
        if exists.returncode == 0:
            return name
        busybox = shutil.which("busybox") or "/bin/busybox"
        if not Path(busybox).exists():
            raise EmbeddedError(f"busybox not found; install it with: {INSTALL_HINT}")
        rootfs = self.base_dir / "rootfs.tar"
        with tarfile.open(rootfs, "w") as tar:
            tar.add(busybox, arcname="bin/busybox")
            for link in BUSYBOX_LINKS:
                info = tarfile.TarInfo(f"bin/{link}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
            for folder in ("tmp", "www", "etc"):
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777
                tar.addfile(info)
        self.podman("import", "--change", 'CMD ["/bin/sh"]', str(rootfs), name)
        return name


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket, as the Docker API is served."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(self.path))
