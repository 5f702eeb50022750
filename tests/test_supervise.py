"""Agent processes under supervision: real subprocesses written by the tests."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core import registry
from orchestrator.inbound.notices import parse_notice
from workers.adapters.supervise import ProcessResult, run_process
from workers.runner.service import outcome_notice

PIPELINE = registry.load()
ROY = PIPELINE.stage_for_agent("roy")
assert ROY is not None
ASSIGNMENT = {"agent": "roy", "req_number": "REQ-SUP-1", "attempt": 1}


def script(tmp_path: Path, body: str, name: str = "agent.py") -> list[str]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


async def run(argv: list[str], tmp_path: Path, **kw: Any) -> tuple[ProcessResult, list[str]]:
    lines: list[str] = []
    options: dict[str, Any] = {
        "stdin": "the prompt\n",
        "cwd": tmp_path,
        "env": {"PATH": os.environ["PATH"]},
        "timeout": 20.0,
        "kill_grace": 2.0,
        "output_limit": 64 * 1024,
        "on_line": lambda stream, line: lines.append(f"{stream}:{line}"),
        **kw,
    }
    return await run_process(argv, **options), lines


def notice_of(result: ProcessResult) -> dict[str, Any]:
    return outcome_notice(result, ROY, ASSIGNMENT, PIPELINE.agents, 1_048_576)


SHAPES = {
    "seed JSON": {"agent": "roy", "req_number": "REQ-SUP-1", "status": "COMPLETE"},
    "reqId and COMPLETED": {"agent": "roy", "reqId": "REQ-SUP-1", "status": "COMPLETED"},
    "reqNumber and lowercase": {"agentId": "roy", "reqNumber": "REQ-SUP-1", "status": "complete"},
    "nested changes": {
        "agent": "roy",
        "req_number": "REQ-SUP-1",
        "status": "COMPLETE",
        "changes": {"files_created": ["api.py"], "key_changes": ["inventory API"]},
    },
}


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
async def test_each_notice_shape_is_recovered(tmp_path: Path, shape: str) -> None:
    body = json.dumps(SHAPES[shape])
    argv = script(tmp_path, f"print('working...')\nprint({body!r})\n")
    result, _ = await run(argv, tmp_path)
    notice = notice_of(result)
    # Published as the agent wrote it (the deliverable cache keeps it so), its attempt added.
    assert notice == {**SHAPES[shape], "attempt": 1}
    parsed = parse_notice(json.dumps(notice), known_agents=PIPELINE.agents)
    assert parsed.status == "COMPLETE", notice
    assert (parsed.agent, parsed.req_number, parsed.attempt) == ("roy", "REQ-SUP-1", 1)
    if shape == "nested changes":
        assert parsed.files_created == ["api.py"]


async def test_crlf_and_noise_around_a_fenced_notice(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        r"""
        import sys
        sys.stdout.write('Thinking {about} it\r\n{"draft": true\r\n')
        sys.stdout.write('```json\r\n{"agent": "roy", "req_number": "REQ-SUP-1",\r\n')
        sys.stdout.write(' "status": "COMPLETE", "summary": "done"}\r\n```\r\nbye\r\n')
        """,
    )
    result, lines = await run(argv, tmp_path)
    notice = notice_of(result)
    assert notice["status"] == "COMPLETE" and notice["summary"] == "done"
    assert "stdout:bye" in lines  # streamed to the log, CR stripped


async def test_the_prompt_arrives_on_stdin(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        """
        import json, sys
        prompt = sys.stdin.read()
        print(json.dumps({"agent": "roy", "req_number": "REQ-SUP-1", "status": "COMPLETE",
                          "summary": prompt.strip()}))
        """,
    )
    result, _ = await run(argv, tmp_path, stdin="build the inventory API")
    assert notice_of(result)["summary"] == "build the inventory API"


async def test_no_output_gives_a_failed_notice(tmp_path: Path) -> None:
    result, _ = await run(script(tmp_path, "pass\n"), tmp_path)
    notice = notice_of(result)
    assert notice["status"] == "FAILED"
    assert "no valid notice" in notice["reason"]


async def test_non_zero_exit_gives_a_failed_notice_with_the_tail(tmp_path: Path) -> None:
    argv = script(
        tmp_path, "import sys\nprint('compiling')\nprint('boom', file=sys.stderr)\nsys.exit(3)\n"
    )
    result, lines = await run(argv, tmp_path)
    notice = notice_of(result)
    assert notice["status"] == "FAILED" and notice["exit_code"] == 3
    assert "exited with code 3" in notice["reason"]
    assert "compiling" in notice["output_tail"] and "boom" in notice["output_tail"]
    assert "stderr:boom" in lines


async def test_a_missing_binary_gives_a_failed_notice_naming_it(tmp_path: Path) -> None:
    result, _ = await run(["/nonexistent/claude", "--print"], tmp_path)
    notice = notice_of(result)
    assert notice["status"] == "FAILED"
    assert "/nonexistent/claude" in notice["reason"]


async def test_a_non_executable_file_gives_a_failed_notice(tmp_path: Path) -> None:
    path = tmp_path / "agent.sh"
    path.write_text("#!/bin/sh\necho hi\n")
    path.chmod(0o644)
    result, _ = await run([str(path)], tmp_path)
    assert "Permission denied" in notice_of(result)["reason"]


async def test_a_hanging_agent_is_killed_at_the_deadline(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    argv = script(
        tmp_path,
        f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # must take SIGKILL
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(600)
        """,
    )
    result, _ = await run(argv, tmp_path, timeout=3.0, kill_grace=0.5)
    assert result.timed_out
    assert result.killed == ["SIGTERM", "SIGKILL"]
    notice = notice_of(result)
    assert notice["status"] == "FAILED" and "deadline passed" in notice["reason"]
    # The whole process group is gone, grandchild included. SIGKILL is sent to
    # the group at once, but a loaded machine may take a moment to end a process
    # that is not ours to wait for (the grandchild): poll, don't sample once.
    for pid in (result.pid, int(pid_file.read_text())):
        assert pid is not None
        assert await gone_within(pid, 10), f"process {pid} survived the kill"


def stubborn_child(pid_file: Path) -> str:
    """Agent code: a child that ignores SIGTERM, shares our stdout, and says its pid."""
    return f"""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        """


async def test_what_outlives_the_agent_is_killed_when_it_exits(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    notice = {"agent": "roy", "req_number": "REQ-SUP-1", "status": "COMPLETE"}
    argv = script(
        tmp_path,
        stubborn_child(pid_file)
        + f"""
        import json
        print(json.dumps({notice!r}), flush=True)
        """,
    )
    started = time.monotonic()
    result, _ = await run(argv, tmp_path, kill_grace=8.0)
    assert result.exit_code == 0 and not result.timed_out and result.killed == []
    assert notice_of(result)["status"] == "COMPLETE"
    assert result.stragglers_killed
    assert await gone_within(int(pid_file.read_text()), 10), "the background child survived"
    # Its open stdout did not hold the run up until the grace period ran out.
    assert time.monotonic() - started < 8.0


async def test_an_agent_that_exits_on_sigterm_takes_its_children_along(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    argv = script(
        tmp_path,
        stubborn_child(pid_file)
        + """
        import time
        print("started", flush=True)
        time.sleep(600)  # SIGTERM's default action ends this one, not the child
        """,
    )
    result, _ = await run(argv, tmp_path, timeout=3.0, kill_grace=3.0)
    assert result.timed_out and result.killed == ["SIGTERM"]
    assert result.stragglers_killed
    assert await gone_within(int(pid_file.read_text()), 10), "the child survived its agent"


async def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for an init that never reaps."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_huge_output_keeps_the_tail_and_the_notice(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        """
        import json, sys
        for i in range(20000):
            sys.stdout.write("noise line %d {not json\\n" % i)
        sys.stdout.write("x" * 300000 + "\\n")
        print(json.dumps({"agent": "roy", "req_number": "REQ-SUP-1", "status": "COMPLETE"}))
        """,
    )
    result, lines = await run(argv, tmp_path, output_limit=8192)
    assert result.stdout_truncated and len(result.stdout) <= 8192
    assert notice_of(result)["status"] == "COMPLETE"
    assert max(len(line) for line in lines) < 5000  # long lines are cut in the log


async def test_a_slow_agent_heartbeats_while_it_works(tmp_path: Path) -> None:
    beats: list[int] = []

    async def beat() -> None:
        beats.append(1)

    argv = script(
        tmp_path,
        """
        import json, time
        time.sleep(1.2)
        print(json.dumps({"agent": "roy", "req_number": "REQ-SUP-1", "status": "COMPLETE"}))
        """,
    )
    result, _ = await run(argv, tmp_path, heartbeat=beat, heartbeat_interval=0.2)
    assert notice_of(result)["status"] == "COMPLETE"
    assert len(beats) >= 3


async def test_a_notice_for_another_req_or_agent_fails(tmp_path: Path) -> None:
    for wrong in (
        {"agent": "roy", "req_number": "REQ-OTHER-2", "status": "COMPLETE"},
        {"agent": "jen", "req_number": "REQ-SUP-1", "status": "COMPLETE"},
    ):
        result, _ = await run(script(tmp_path, f"print({json.dumps(wrong)!r})\n"), tmp_path)
        notice = notice_of(result)
        assert notice["status"] == "FAILED", notice
        assert notice["agent"] == "roy" and notice["req_number"] == "REQ-SUP-1"
