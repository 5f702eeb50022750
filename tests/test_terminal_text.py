"""Agent text never drives the operator's terminal: the real agogctl against a
real agogd, and a real agogd's console log, with titles, summaries, reasons
and agent output full of escape sequences, newlines and bidi overrides."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from orchestrator.core.safe_text import UNSAFE
from orchestrator.embedded import NatsServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from tests.agents import ScriptedAgents, happy, notice, running_agogd, settings_for, submit
from tests.agents import wait_status as wait_req
from tests.test_ctl_e2e import AGOGCTL, ctl

# ESC ] 0; ... BEL (retitles the window), a clear screen (CSI 2J), a colour,
# a C1 CSI, a newline that would forge a line, and a right-to-left override.
FORGED = "REQ-FORGED-9  DEPLOYED  P0  all is well"
HOSTILE = (
    "\x1b]0;pwned\x07Ledger \u202etxt.exe\u2066 \x1b[2Jexport \x1b[5;31mred\x9b2J\x01\x7f\n"
    + FORGED
)
SGR = re.compile(r"\x1b\[[0-9;]*m")


def assert_clean(text: str, colour: bool = False) -> None:
    """No control character but the line breaks (and, with colour, the
    renderer's own SGR codes); no forged line; the escapes shown instead."""
    if colour:
        text = SGR.sub("", text)
    for line in text.split("\n"):
        line = line.removesuffix("\r")  # a terminal's own CR LF
        assert not UNSAFE.search(line), f"raw control character in {line!r}"
        assert not line.startswith(FORGED), f"a field started a line: {line!r}"
    assert "\\x1b]0;pwned\\x07" in text and "\\u202e" in text


def _stage_reply(a: dict[str, Any]) -> dict[str, Any] | None:
    if a["agent"] == "cynthia" and a["attempt"] == 1:
        return notice("cynthia", a["req_number"], "BLOCKED", summary=HOSTILE)
    if a["agent"] == "cynthia":
        return notice("cynthia", a["req_number"], summary=HOSTILE)
    return happy(a)


class Follow:
    """`agogctl tail` running in the background, its stdout read line by line."""

    def __init__(self, url: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
        env.pop("FORCE_COLOR", None)
        env.pop("NO_COLOR", None)
        env.update(AGOG_API_TOKEN="test-token", AGOG_DATA_DIR="/nonexistent-agogd-data-dir")
        self.proc = subprocess.Popen(
            [AGOGCTL, "--url", url, "tail", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.out, self.err = bytearray(), bytearray()
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

    @staticmethod
    def _read(stream: Any, into: bytearray) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            into += chunk

    async def wait_for(self, needle: bytes, timeout: float = 30, err: bool = False) -> str:
        seen = self.err if err else self.out
        deadline = time.monotonic() + timeout
        while needle not in seen:
            assert time.monotonic() < deadline, f"tail never printed {needle!r}: {seen!r}"
            assert self.proc.poll() is None, f"tail exited: {self.err!r}"
            await asyncio.sleep(0.05)
        return seen.decode()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def test_agogctl_views_escape_agent_text_and_json_keeps_it_exact(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    req = "REQ-TERM-1"
    await ScriptedAgents(nc, _stage_reply).start()
    settings = settings_for(nats_server.url, pg_dsn, embedding_provider="none")
    async with running_agogd(settings) as daemon:
        url = daemon.http.url
        human = Follow(url, "--req", req)
        raw = Follow(url, "--req", req, "--json")
        for follower in (human, raw):  # both follow before the REQ exists
            await follower.wait_for(b"following", err=True)
        await submit(nc, req, title=HOSTILE)
        await wait_req(pg_dsn, req, "BLOCKED")

        # tail: the blocked stage's reason, escaped; --json: the exact string
        shown = await human.wait_for(b"pwned")
        await raw.wait_for(b"pwned")
        human.stop()
        raw.stop()
        assert_clean(shown)
        events = [json.loads(line) for line in raw.out.decode().splitlines()]
        assert HOSTILE in [e.get("reason") for e in events]

        # An operator's decision with the same text, then the REQ runs to the end.
        resumed = await ctl(url, "req", "resume", req, "--reason", HOSTILE)
        assert resumed.returncode == 0, resumed.stderr
        assert not UNSAFE.search(resumed.stdout.rstrip("\n"))
        await wait_req(pg_dsn, req, "DEPLOYED")

        # req show: title, blocked reason, summaries, decision reasoning, events
        for colour in ({}, {"FORCE_COLOR": "1"}):
            shown_req = await ctl(url, "req", "show", req, "--events", "50", **colour)
            assert shown_req.returncode == 0, shown_req.stderr
            assert_clean(shown_req.stdout, colour=bool(colour))
            assert "\x1b[" in shown_req.stdout if colour else "\x1b" not in shown_req.stdout
        first = shown_req.stdout.splitlines()[0]
        assert "\\x1b]0;pwned\\x07Ledger" in first and "\\n" + FORGED in first

        as_json = await ctl(url, "req", "show", req, "--json")
        history = json.loads(as_json.stdout)
        assert history["title"] == HOSTILE
        assert [e["reason"] for e in history["escalations"]] == [HOSTILE]
        summaries = [d["summary"] for d in history["deliverables"] if d["agent"] == "cynthia"]
        assert summaries == [HOSTILE, HOSTILE]
        assert history["decisions"][-1]["reasoning"] == HOSTILE

        # memory search: memories are agents' text too
        found = await _memory_search(url, "ledger")
        assert_clean(found.stdout)
        raw_found = await ctl(url, "memory", "search", "ledger", "--json")
        contents = [r["content"] for r in json.loads(raw_found.stdout)["results"]]
        assert any("\x1b]0;pwned\x07" in c for c in contents)

        # an error quoting what was sent
        bad = await ctl(url, "req", "show", "REQ-\x1b]0;pwned\x07")
        assert bad.returncode != 0 and "\x1b" not in bad.stderr


async def _memory_search(url: str, text: str) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + 30
    while True:
        found = await ctl(url, "memory", "search", text)
        assert found.returncode == 0, found.stderr
        if "pwned" in found.stdout or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


# --- the console log renderer of a real agogd ------------------------------------
AGENT = r"""
import json, sys
hostile = json.load(open(sys.argv[1]))
sys.stdin.read()
print(hostile)
print("\x1b]0;pwned\x07")  # no space: the renderer would print it unquoted
print("\x1b[2J\x1b[H\u202eREQ-FORGED-9")
print("progress \x1b[1A\x1b[2K\rREQ-FORGED-9  overwritten line")
sys.stdout.flush()
print(json.dumps({"agent": "cynthia", "req_number": "REQ-LOG-1", "status": "BLOCKED",
                  "summary": hostile, "reason": hostile}))
"""


def _console_env(nats_server: NatsServer, dsn: str, tmp_path: Path) -> dict[str, str]:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(HOSTILE))
    return {
        "AGOG_NATS_URL": nats_server.url,
        "AGOG_POSTGRES_DSN": dsn,
        "AGOG_LOG_FORMAT": "console",
        "AGOG_LOG_LEVEL": "info",
        "AGOG_EMBEDDING_PROVIDER": "none",
        "AGOG_RUNNER_AGENTS": "cynthia",
        "AGOG_RUNNER_COMMAND": f"{sys.executable} {script} {hostile}",
    }


def _wait_ready(daemon: DaemonProcess, timeout: float = 60) -> None:
    """/readyz 200, at the address the console line `agogd.starting` names."""

    def url() -> str | None:
        for line in list(daemon.lines):
            found = re.search(r"agogd\.starting.*?http=(http://[0-9.:]+)", SGR.sub("", line))
            if found:
                return found.group(1)
        return None

    base = daemon.wait_for(url, timeout, "agogd.starting")

    def ready() -> bool:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    daemon.wait_for(ready, timeout, "/readyz 200")


class TtyDaemon(DaemonProcess):
    """agogd with its stdout on a pseudo-terminal, as in an operator's shell."""

    def start(self) -> TtyDaemon:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        self.raw = bytearray()
        self._master = master
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            self.raw += chunk
            self.lines[:] = self.raw.decode(errors="replace").split("\n")


@pytest.mark.parametrize("where", ["pipe", "tty"])
async def test_the_console_log_never_passes_an_escape_from_agent_text(
    where: str, nats_server: NatsServer, nc: NATS, pg_dsn: str, tmp_path: Path
) -> None:
    env = _console_env(nats_server, pg_dsn, tmp_path)
    kind = TtyDaemon if where == "tty" else DaemonProcess
    daemon = kind(env).start()
    try:
        _wait_ready(daemon)
        await submit(nc, "REQ-LOG-1", title=HOSTILE)
        await wait_req(pg_dsn, "REQ-LOG-1", "BLOCKED", timeout=60)
        daemon.wait_for(
            lambda: any("agent.finished" in x and "pwned" in x for x in daemon.lines),
            30,
            "agent.finished with the agent's reason",
        )
    finally:
        daemon.stop()
    out = "\n".join(daemon.lines)
    assert "agent.output" in out and "overwritten line" in out
    if where == "pipe":
        assert "\x1b" not in out  # under a pipe: not even the renderer's colours
        assert_clean(out)
    else:
        assert SGR.search(out)  # the renderer's own colours, on a terminal
        assert_clean(out, colour=True)
