"""Run agogd as a real subprocess and read its JSON log lines: the harness
that the tests and the benches share (``bench/`` never imports ``tests/``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


class DaemonProcess:
    """One agogd process; its stdout is collected line by line in a thread."""

    def __init__(
        self,
        env: dict[str, str],
        args: tuple[str, ...] = (),
        command: tuple[str, ...] = (sys.executable, "-m", "orchestrator"),
    ) -> None:
        """``command`` runs agogd: this venv's by default, or e.g. ``podman run IMAGE``."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
        self.env = {
            **base,
            "AGOG_HTTP_PORT": "0",
            "AGOG_HEALTH_INTERVAL": "0.2",
            "AGOG_BACKOFF_MAX": "1",
            "AGOG_LOG_FORMAT": "json",
            "AGOG_SHUTDOWN_GRACE": "5",
            **env,
        }
        self.args = args
        self.command = command
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> DaemonProcess:
        self.proc = subprocess.Popen(
            [*self.command, *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.append(item)
        return out

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def wait_for(self, check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            if self.proc is not None and self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader drain the last lines
                result = check()
                if result:
                    return result
                raise AssertionError(
                    f"agogd exited ({self.proc.returncode}) before {what}:\n"
                    + "\n".join(self.lines[-30:])
                )
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(self.lines[-30:]))

    def wait_event(self, event: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait_for(lambda: (self.named(event) or [None])[-1], timeout, event)

    @property
    def http_url(self) -> str:
        return str(self.wait_event("agogd.starting")["http"])

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def readyz(self) -> int:
        try:
            return self.get("/readyz")[0]
        except (urllib.error.URLError, OSError):
            return 0

    def wait_ready(self, timeout: float = 30) -> None:
        self.wait_for(lambda: self.readyz() == 200, timeout, "/readyz 200")

    def wait_not_ready(self, timeout: float = 30) -> None:
        self.wait_for(lambda: self.readyz() == 503, timeout, "/readyz 503")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
