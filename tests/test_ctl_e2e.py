"""The real `agogctl`, run as a subprocess against a real agogd (real
nats-server and PostgreSQL, scripted agents): every command, its human and
--json output, and its exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from tests.agents import (
    PIPELINE,
    ScriptedAgents,
    deliverable_subject,
    happy,
    notice,
    running_agogd,
    settings_for,
    wait_stage,
    wait_status,
)

AGOGCTL = str(Path(sys.executable).parent / "agogctl")
SEVEN = ["cynthia", "sylvia", "roy", "jen", "billy", "priya", "berry"]


def _env(token: str | None = "test-token", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
    env.pop("FORCE_COLOR", None)
    env.pop("NO_COLOR", None)
    env["AGOG_DATA_DIR"] = "/nonexistent-agogd-data-dir"  # no endpoints.json to fall back on
    if token:
        env["AGOG_API_TOKEN"] = token
    return {**env, **extra}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGOGCTL, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


async def ctl(
    url: str | None, *args: str, token: str | None = "test-token", **env: str
) -> subprocess.CompletedProcess[str]:
    argv = (["--url", url] if url else []) + list(args)
    return await asyncio.to_thread(_run, argv, _env(token, **env))


def _row(stdout: str, req: str) -> str:
    [line] = [line for line in stdout.splitlines() if line.startswith(req + " ")]
    return line


async def test_status_show_and_every_action(nats_server: NatsServer, nc: NATS, pg_dsn: str) -> None:
    def script(a: dict[str, Any]) -> dict[str, Any] | None:
        req, agent, attempt = a["req_number"], a["agent"], a["attempt"]
        if (req, agent) == ("REQ-CTL-2", "roy"):
            return None  # Roy never answers REQ-CTL-2
        if (req, agent) == ("REQ-CTL-3", "cynthia"):
            if attempt == 1:
                return notice(agent, req, "BLOCKED", summary="which warehouse?")
            return None
        return happy(a)

    await ScriptedAgents(nc, script).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon:
        url = daemon.http.url
        done = await ctl(
            url, "req", "submit", "REQ-CTL-1", "--title", "Inventory", "--priority", "P1"
        )
        assert done.returncode == 0 and done.stdout.strip() == "REQ-CTL-1: submitted", done.stderr
        for req in ("REQ-CTL-2", "REQ-CTL-3"):
            raw = await ctl(url, "req", "submit", req, "--json")
            assert raw.returncode == 0 and json.loads(raw.stdout) == {
                "req_number": req,
                "created": True,
            }
        await wait_status(pg_dsn, "REQ-CTL-1", "DEPLOYED")
        await wait_stage(pg_dsn, "REQ-CTL-2", 2)
        await wait_status(pg_dsn, "REQ-CTL-3", "BLOCKED")
        await asyncio.sleep(0.5)  # Tim's follow-up of REQ-CTL-1

        # status: REQs x stages
        grid = await ctl(url, "status")
        assert grid.returncode == 0, grid.stderr
        assert "\x1b[" not in grid.stdout  # no colours when stdout is not a terminal
        header = grid.stdout.splitlines()[0].split()
        assert header == ["REQ", "PRI", "STATUS", *SEVEN, "tim", "COST", "AGE"]
        assert _row(grid.stdout, "REQ-CTL-1").split()[1:11] == ["P1", "DEPLOYED"] + ["ok"] * 8
        cells = _row(grid.stdout, "REQ-CTL-2").split()
        assert cells[1:6] == ["P2", "IN_PROGRESS", "ok", "ok", "run"] and cells[6].endswith("s")
        assert _row(grid.stdout, "REQ-CTL-3").split()[1:5] == ["P2", "BLOCKED", "BLOCK", "."]
        assert "3 of 3 REQ(s)" in grid.stdout
        active = await ctl(url, "status", "--status", "active", "--json")
        assert active.returncode == 0
        assert sorted(r["req_number"] for r in json.loads(active.stdout)["reqs"]) == [
            "REQ-CTL-2",
            "REQ-CTL-3",
        ]
        at_roy = await ctl(url, "status", "--stage", "roy", "--priority", "P2", "--json")
        assert [r["req_number"] for r in json.loads(at_roy.stdout)["reqs"]] == ["REQ-CTL-2"]
        bad = await ctl(url, "status", "--status", "DONE")
        assert bad.returncode == 1 and "status 'DONE'" in bad.stderr

        # req show
        shown = await ctl(url, "req", "show", "REQ-CTL-1")
        assert shown.returncode == 0, shown.stderr
        first = shown.stdout.splitlines()[0].split()
        assert first == ["REQ-CTL-1", "DEPLOYED", "P1", "Inventory"]
        for needle in ("commit abc1234", "deliverables", "cynthia did the work", "events (last"):
            assert needle in shown.stdout, needle
        stage_rows = [line.split() for line in shown.stdout.splitlines() if "COMPLETE" in line]
        assert [r[2] for r in stage_rows[:8]] == [*SEVEN, "tim"]
        raw = await ctl(url, "req", "show", "REQ-CTL-3", "--json")
        history = json.loads(raw.stdout)
        assert history["status"] == "BLOCKED" and history["blocked_reason"] == "which warehouse?"
        assert [e["reason"] for e in history["escalations"]] == ["which warehouse?"]
        missing = await ctl(url, "req", "show", "REQ-NOPE-1")
        assert missing.returncode == 4 and "no workflow for REQ-NOPE-1" in missing.stderr

        # Actions the state refuses: exit 1 with the reason.
        refused = await ctl(url, "req", "retry", "REQ-CTL-1")
        assert refused.returncode == 1 and "REQ-CTL-1 is DEPLOYED" in refused.stderr
        refused = await ctl(url, "req", "resume", "REQ-CTL-2")
        assert refused.returncode == 1 and "only a BLOCKED or ESCALATED" in refused.stderr

        # resume a BLOCKED REQ
        resumed = await ctl(
            url,
            "req",
            "resume",
            "REQ-CTL-3",
            "--reason",
            "owner chose",
            "--instructions",
            '{"warehouse": "north"}',
        )
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.strip() == (
            "REQ-CTL-3: resume applied (RETRY): IN_PROGRESS at stage 0 Research (cynthia)"
        )

        # retry from an earlier stage, as JSON
        retried = await ctl(url, "req", "retry", "REQ-CTL-2", "--stage", "cynthia", "--json")
        assert retried.returncode == 0, retried.stderr
        body = json.loads(retried.stdout)
        assert (body["decision"], body["restart_stage"], body["outcome"]) == (
            "REQUEST_CHANGES",
            0,
            "applied",
        )
        await wait_stage(pg_dsn, "REQ-CTL-2", 2)

        # decide
        decided = await ctl(
            url, "req", "decide", "REQ-CTL-2", "escalate_human", "--reason", "Roy is stuck"
        )
        assert decided.returncode == 0, decided.stderr
        assert "decide applied (ESCALATE_HUMAN): ESCALATED at stage 2" in decided.stdout
        usage = await ctl(url, "req", "decide", "REQ-CTL-2", "MAYBE")
        assert usage.returncode == 2 and "Invalid value" in usage.stderr
        bad = await ctl(
            url, "req", "decide", "REQ-CTL-2", "REQUEST_CHANGES", "--restart-stage", "42"
        )
        assert bad.returncode == 1 and "restart_stage" in bad.stderr

        # cancel, without waiting for the engine
        cancelled = await ctl(url, "req", "cancel", "REQ-CTL-2", "--wait", "0", "--reason", "no")
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancel accepted (CANCEL, decision " in cancelled.stdout
        await wait_status(pg_dsn, "REQ-CTL-2", "CANCELLED")
        again = await ctl(url, "req", "cancel", "REQ-CTL-2")
        assert again.returncode == 1 and "CANCELLED" in again.stderr
        denied = await ctl(url, "req", "cancel", "REQ-CTL-3", token="wrong")
        assert denied.returncode == 5 and "bearer token" in denied.stderr
        anonymous = await ctl(url, "req", "cancel", "REQ-CTL-3", token=None)
        assert anonymous.returncode == 5
        await wait_status(pg_dsn, "REQ-CTL-3", "IN_PROGRESS")  # untouched

        # streams
        table = await ctl(url, "streams")
        assert table.returncode == 0, table.stderr
        for needle in ("agog_strategic_decisions", "  agogd_decisions", "verdict ok"):
            assert needle in table.stdout, needle
        raw = await ctl(url, "streams", "--json")
        streams = json.loads(raw.stdout)["streams"]
        assert sorted(s["stream"] for s in streams) == sorted(s.name for s in PIPELINE.streams)
        decisions = next(s for s in streams if s["stream"] == "agog_strategic_decisions")
        assert decisions["messages"] == 4  # resume, retry, decide, cancel


class Tail:
    """`agogctl tail` as a child process, its output read line by line."""

    def __init__(self, url: str, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen(
            [AGOGCTL, "--url", url, "tail", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(**env),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    async def until(self, check: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out: {self.out[-5:]} {self.err[-5:]}"
            await asyncio.sleep(0.05)

    async def exit_code(self, timeout: float = 10) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


async def test_tail_follows_live_events(nats_server: NatsServer, nc: NATS, pg_dsn: str) -> None:
    await ScriptedAgents(nc).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon:
        url = daemon.http.url
        tail = Tail(url, "--req", "REQ-TAIL-1")
        try:
            await tail.until(lambda: any("following" in line for line in tail.err))
            for req in ("REQ-TAIL-1", "REQ-TAIL-2"):
                assert (await ctl(url, "req", "submit", req)).returncode == 0
            await tail.until(
                lambda: any("stage.completed" in x and "/tim#1" in x for x in tail.out)
            )
            await asyncio.sleep(0.5)
            tail.proc.send_signal(signal.SIGINT)  # Ctrl-C
            assert await tail.exit_code() == 0
        finally:
            tail.kill()
        assert "Traceback" not in "\n".join(tail.err)
        assert all("REQ-TAIL-1" in line for line in tail.out), tail.out
        assert "\x1b[" not in "\n".join(tail.out)
        done = [line.split() for line in tail.out if "stage.completed" in line]
        assert [parts[3].split("/")[1].split("#")[0] for parts in done] == [*SEVEN, "tim"]
        assert all(parts[4] == "done" for parts in done)
        assert any("workflow.completed" in line and "DEPLOYED" in line for line in tail.out)

        # --json --count: one object per line, and an exit once enough came in.
        counted = Tail(url, "--req", "REQ-TAIL-3", "--json", "--count", "3")
        try:
            await counted.until(lambda: any("following" in line for line in counted.err))
            assert (await ctl(url, "req", "submit", "REQ-TAIL-3")).returncode == 0
            assert await counted.exit_code(30) == 0
        finally:
            counted.kill()
        events = [json.loads(line) for line in counted.out]
        assert len(events) == 3 and all(e["req_number"] == "REQ-TAIL-3" for e in events)
        assert events[0]["event"] == "workflow.started" == events[0]["eventType"]

        # Colours on request (a terminal, or FORCE_COLOR).
        coloured = Tail(url, "--req", "REQ-TAIL-4", "--count", "1", FORCE_COLOR="1")
        try:
            await coloured.until(lambda: any("following" in line for line in coloured.err))
            assert (await ctl(url, "req", "submit", "REQ-TAIL-4")).returncode == 0
            assert await coloured.exit_code(30) == 0
        finally:
            coloured.kill()
        assert "\x1b[" in coloured.out[0] and "REQ-TAIL-4" in coloured.out[0]
        await wait_status(pg_dsn, "REQ-TAIL-4", "DEPLOYED")


async def test_finding_agogd_and_exit_codes(
    nats_server: NatsServer, pg_dsn: str, tmp_path: Path
) -> None:
    async with running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon:
        url = daemon.http.url
        via_env = await ctl(None, "status", "--json", AGOG_URL=url)
        assert via_env.returncode == 0 and json.loads(via_env.stdout)["reqs"] == []

        # `agogd dev`'s endpoints.json and its local token, with no AGOG_* set.
        (tmp_path / "api_token").write_text("test-token\n")
        (tmp_path / "endpoints.json").write_text(
            json.dumps({"http_url": url, "api_token_file": str(tmp_path / "api_token")})
        )
        local = await ctl(
            None, "req", "submit", "REQ-FIND-1", token=None, AGOG_DATA_DIR=str(tmp_path)
        )
        assert local.returncode == 0 and "submitted" in local.stdout, local.stderr
        # That token is only ever sent to that agogd.
        (tmp_path / "endpoints.json").write_text(
            json.dumps(
                {"http_url": "http://127.0.0.1:9", "api_token_file": str(tmp_path / "api_token")}
            )
        )
        elsewhere = await ctl(
            url, "req", "submit", "REQ-FIND-2", token=None, AGOG_DATA_DIR=str(tmp_path)
        )
        assert elsewhere.returncode == 5

        nowhere = await ctl(None, "status")
        assert nowhere.returncode == 2 and "cannot find agogd" in nowhere.stderr
        version = await ctl(None, "--version")  # needs no agogd at all
        assert version.returncode == 0 and version.stdout.startswith("agogctl, version ")
        for args in (("status",), ("req", "show", "REQ-FIND-1"), ("streams",), ("tail",)):
            gone = await ctl("http://127.0.0.1:1", *args)
            assert gone.returncode == 3 and "cannot reach agogd" in gone.stderr, args

    # Reads behind the token.
    settings = settings_for(nats_server.url, pg_dsn, api_read_auth=True)
    async with running_agogd(settings) as daemon:
        url = daemon.http.url
        for args in (("status",), ("req", "show", "REQ-FIND-1"), ("streams",), ("tail",)):
            denied = await ctl(url, *args, token=None)
            assert denied.returncode == 5 and "bearer token" in denied.stderr, args
        shown = await ctl(url, "req", "show", "REQ-FIND-1")
        assert shown.returncode == 0 and "REQ-FIND-1" in shown.stdout


async def _history_at_least(dsn: str, req: str, count: int) -> bool:
    """Whether deliverable_history holds ``count`` rows of the REQ yet."""
    conn = await asyncpg.connect(dsn)
    try:
        sql = "SELECT count(*) FROM deliverable_history WHERE req_number = $1"
        return int(await conn.fetchval(sql, req)) >= count
    finally:
        await conn.close()


async def _until(check: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_show_lists_a_notice_delivered_twice_once(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    """deliverable_history keeps every message, so an agent that publishes its
    notice twice (no Nats-Msg-Id, two stream messages) left it there twice:
    `req show` listed it twice. Each distinct notice is shown once, with how
    often it came; notices that differ are all kept."""
    req = "REQ-DUP-1"
    await ScriptedAgents(nc, lambda a: None).start()  # the test is every agent
    async with running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon:
        url = daemon.http.url
        assert (await ctl(url, "req", "submit", req)).returncode == 0
        await wait_stage(pg_dsn, req, 0)
        js = nc.jetstream()
        research = json.dumps(notice("cynthia", req, summary="stock levels researched"))
        for _ in range(2):
            await js.publish(deliverable_subject("cynthia", req), research.encode())
        await wait_stage(pg_dsn, req, 1)
        await _until(lambda: _history_at_least(pg_dsn, req, 2), "both copies in history")
        critique = notice("sylvia", req, summary="looks sound")
        await js.publish(deliverable_subject("sylvia", req), json.dumps(critique).encode())
        await wait_stage(pg_dsn, req, 2)
        await _until(lambda: _history_at_least(pg_dsn, req, 3), "sylvia's notice in history")

        raw = await ctl(url, "req", "show", req, "--json")
        assert raw.returncode == 0, raw.stderr
        deliverables = json.loads(raw.stdout)["deliverables"]
        assert [(d["agent"], d["summary"], d["copies"]) for d in deliverables] == [
            ("cynthia", "stock levels researched", 2),
            ("sylvia", "looks sound", 1),
        ]
        first = deliverables[0]
        assert first["received_at"] <= first["last_received_at"]

        shown = await ctl(url, "req", "show", req)
        assert shown.returncode == 0, shown.stderr
        section = shown.stdout.split("deliverables\n", 1)[1].split("\n\n", 1)[0]
        rows = [line.split()[0] for line in section.splitlines()[1:]]
        assert rows == ["cynthia", "sylvia"], section
        assert "stock levels researched  (received 2x)" in section


async def test_priorities_read_P2_and_go_in_any_form(nats_server: NatsServer, pg_dsn: str) -> None:
    """The API answered priority 2 where agogctl shows P2: now P2 everywhere,
    and --priority takes 2, p2 or P2 (submit and the status filter)."""
    async with running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon:
        url = daemon.http.url
        for req, given in (("REQ-PRI-1", "2"), ("REQ-PRI-2", "p1"), ("REQ-PRI-3", "P0")):
            done = await ctl(url, "req", "submit", req, "--priority", given)
            assert done.returncode == 0, done.stderr
        raw = await ctl(url, "status", "--json")
        assert raw.returncode == 0, raw.stderr
        rows = {r["req_number"]: r["priority"] for r in json.loads(raw.stdout)["reqs"]}
        assert rows == {"REQ-PRI-1": "P2", "REQ-PRI-2": "P1", "REQ-PRI-3": "P0"}
        grid = await ctl(url, "status")
        assert [_row(grid.stdout, req).split()[1] for req in sorted(rows)] == ["P2", "P1", "P0"]
        for given in ("2", "p2", "P2"):
            only = await ctl(url, "status", "--priority", given, "--json")
            assert only.returncode == 0, only.stderr
            body = json.loads(only.stdout)
            assert [r["req_number"] for r in body["reqs"]] == ["REQ-PRI-1"], given
            assert body["filters"]["priority"] == ["P2"]
        shown = await ctl(url, "req", "show", "REQ-PRI-2", "--json")
        detail = json.loads(shown.stdout)
        assert (detail["priority"], detail["requirement"]["priority"]) == ("P1", "P1")
        human = await ctl(url, "req", "show", "REQ-PRI-2")
        assert human.stdout.splitlines()[0].split()[:3] == ["REQ-PRI-2", "IN_PROGRESS", "P1"]


def _bare_env(**extra: str) -> dict[str, str]:
    """No AGOG_* at all: what a new terminal has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
    env.pop("FORCE_COLOR", None)
    return {**env, **extra}


async def bare(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """agogctl run from ``cwd`` with only the given AGOG_* variables."""
    return await asyncio.to_thread(
        subprocess.run,
        [AGOGCTL, *args],
        capture_output=True,
        text=True,
        env=_bare_env(**env),
        cwd=cwd,
        timeout=60,
        check=False,
    )


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


async def test_data_dir_of_agogd_dev_and_messages_that_say_what_to_set(tmp_path: Path) -> None:
    """After `scripts/dev --data-dir DIR`, agogctl looked in ./.agogd only and
    its errors named neither AGOG_DATA_DIR nor where the token is. It takes
    --data-dir (or AGOG_DATA_DIR), and each error names what would fix it."""
    data_dir = tmp_path / "elsewhere"
    elsewhere = tmp_path / "a-checkout"  # the operator's cwd: no .agogd in it
    elsewhere.mkdir()
    dev = DaemonProcess({"AGOG_HTTP_PORT": "0"}, ("dev", "--data-dir", str(data_dir))).start()
    try:
        dev.wait_for(
            lambda: any(line.startswith("agogd dev ready:") for line in dev.lines), 60, "ready"
        )
        url = json.loads((data_dir / "endpoints.json").read_text())["http_url"]

        lost = await bare(elsewhere, "status")
        assert lost.returncode == 2
        message = _one_line(lost.stderr)
        assert f"no endpoints.json in {elsewhere / '.agogd'}" in message, message
        for name in ("--data-dir", "AGOG_DATA_DIR", "AGOG_URL"):
            assert name in message, (name, message)

        found = await bare(elsewhere, "--data-dir", str(data_dir), "status", "--json")
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout)["reqs"] == []
        # Actions use DIR/api_token, agogd dev's own token: no AGOG_API_TOKEN needed.
        submitted = await bare(elsewhere, "--data-dir", str(data_dir), "req", "submit", "REQ-DD-1")
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout.strip() == "REQ-DD-1: submitted"
        via_env = await bare(elsewhere, "req", "submit", "REQ-DD-2", AGOG_DATA_DIR=str(data_dir))
        assert via_env.returncode == 0 and "submitted" in via_env.stdout, via_env.stderr
        ready = await bare(elsewhere, "--data-dir", str(data_dir), "ready")
        assert ready.returncode == 0 and ready.stdout.startswith("ready"), ready.stderr

        # A --data-dir with no agogd dev in it says which one it read.
        empty = tmp_path / "empty"
        missing = await bare(elsewhere, "--data-dir", str(empty), "status")
        assert missing.returncode == 2
        message = _one_line(missing.stderr)
        assert f"no endpoints.json in {empty}" in message and "agogd dev --data-dir" in message

        # AGOG_URL alone finds agogd, but not its token: say where it is.
        tokenless = await bare(elsewhere, "req", "cancel", "REQ-DD-1", AGOG_URL=url)
        assert tokenless.returncode == 5
        message = _one_line(tokenless.stderr)
        for name in ("AGOG_API_TOKEN", "--data-dir", "DIR/api_token"):
            assert name in message, (name, message)
        wrong = await bare(
            elsewhere, "req", "cancel", "REQ-DD-1", AGOG_URL=url, AGOG_API_TOKEN="wrong"
        )
        assert wrong.returncode == 5
        assert "the token from AGOG_API_TOKEN was refused" in _one_line(wrong.stderr)
        # With AGOG_URL and the data dir, the token is found again.
        both = await bare(
            elsewhere,
            "--data-dir",
            str(data_dir),
            "req",
            "cancel",
            "REQ-DD-1",
            "--wait",
            "0",
            AGOG_URL=url,
        )
        assert both.returncode == 0, both.stderr
        assert "Traceback" not in lost.stderr + missing.stderr + tokenless.stderr
    finally:
        dev.stop()
