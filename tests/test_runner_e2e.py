"""The agent runner inside agogd, on real NATS and Postgres, with real processes."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from tests.agents import (
    ScriptedAgents,
    collect,
    notice,
    running_agogd,
    settings_for,
    submit,
    wait_status,
)
from tests.test_memory import agogctl

# An agent that records each spawn, takes a while, and answers from its prompt.
AGENT = """
import json, re, sys, time
prompt = sys.stdin.read()
assignment = json.loads(re.search(r"```json\\n(.*?)\\n```", prompt, re.S).group(1))
with open(sys.argv[1], "a") as log:
    log.write("%s %s %s\\n" % (assignment["agent"], assignment["req_number"],
                               assignment["attempt"]))
time.sleep(float(sys.argv[2]))
print("done; notice follows")
print(json.dumps({"agent": assignment["agent"], "req_number": assignment["req_number"],
                  "status": "COMPLETE", "summary": "by the runner"}))
"""


def all_but_roy(a: dict[str, Any]) -> dict[str, Any] | None:
    """External agents for every stage but Roy's, which the runner runs."""
    return None if a["agent"] == "roy" else notice(a["agent"], a["req_number"])


async def started(spawns: Path) -> None:
    """Wait for the test agent's first spawn record."""
    for _ in range(200):
        if await asyncio.to_thread(spawns.exists):
            return
        await asyncio.sleep(0.05)


def agent_command(tmp_path: Path, seconds: float) -> tuple[str, Path]:
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent(AGENT))
    spawns = tmp_path / "spawns.log"
    return f"{sys.executable} {script} {spawns} {seconds}", spawns


async def test_demo_agents_take_a_req_to_deployed(
    nats_server: NatsServer, pg_dsn: str, nc: NATS
) -> None:
    settings = settings_for(
        nats_server.url, pg_dsn, demo=True, demo_delay=0.05, demo_reject=["sylvia"]
    )
    async with running_agogd(settings) as daemon:
        assert daemon.wiring.parts.runner is not None
        await submit(nc, "REQ-DEMO-9")
        row = await wait_status(pg_dsn, "REQ-DEMO-9", "DEPLOYED", timeout=90)
    assert row["deployed_by"] == "berry (demo)"
    conn = await asyncpg.connect(pg_dsn)
    try:
        sylvia = await conn.fetch(
            "SELECT attempt, status FROM stage_attempts WHERE req_number = 'REQ-DEMO-9'"
            " AND stage = 1 ORDER BY attempt"
        )
        assert [r["status"] for r in sylvia] == ["REJECTED", "COMPLETE"]  # rework shown
        runs = await conn.fetchval("SELECT count(*) FROM runner_runs WHERE status = 'published'")
        assert runs >= 9  # every stage attempt, Tim included, went through the runner
    finally:
        await conn.close()


async def test_plain_agogd_spawns_nothing(nats_server: NatsServer, pg_dsn: str, nc: NATS) -> None:
    await ScriptedAgents(nc).start()  # external agents, the seeds' normal mode
    async with running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon:
        assert daemon.wiring.parts.runner is None
        await submit(nc, "REQ-EXT-1")
        await wait_status(pg_dsn, "REQ-EXT-1", "DEPLOYED")
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM runner_runs") == 0
    finally:
        await conn.close()


async def test_a_redelivered_assignment_spawns_one_process(
    nats_server: NatsServer, pg_dsn: str, nc: NATS, tmp_path: Path
) -> None:
    command, spawns = agent_command(tmp_path, seconds=1.5)

    await ScriptedAgents(nc, all_but_roy).start()
    assignments, _ = await collect(nc, "agog.orchestration.events.stage.started.roy.>")
    settings = settings_for(
        nats_server.url,
        pg_dsn,
        runner_agents=["roy"],
        runner_command=command,
        runner_heartbeat_interval=0.3,
    )
    async with running_agogd(settings):
        await submit(nc, "REQ-RUN-1")
        await started(spawns)
        assert assignments, "Roy's assignment never came"
        # The same assignment again, while Roy's process runs, and once more later.
        payload = {k: v for k, v in assignments[0].items() if k != "subject"}
        subject = assignments[0]["subject"]
        await nc.jetstream().publish(subject, json.dumps(payload).encode())
        row = await wait_status(pg_dsn, "REQ-RUN-1", "DEPLOYED", timeout=60)
        await nc.jetstream().publish(subject, json.dumps(payload).encode())
        await asyncio.sleep(1.0)
    assert row["status"] == "DEPLOYED"
    assert spawns.read_text().splitlines() == ["roy REQ-RUN-1 1"]
    conn = await asyncpg.connect(pg_dsn)
    try:
        run = await conn.fetchrow("SELECT * FROM runner_runs WHERE req_number = 'REQ-RUN-1'")
        assert (run["status"], run["outcome"], run["runs"]) == ("published", "COMPLETE", 1)
        summary = await conn.fetchval(
            "SELECT deliverable->>'summary' FROM nats_deliverable_cache"
            " WHERE req_number = 'REQ-RUN-1' AND agent = 'roy'"
        )
        assert summary == "by the runner"
    finally:
        await conn.close()


async def test_a_failing_agent_fails_the_stage_fast(
    nats_server: NatsServer, pg_dsn: str, nc: NATS, tmp_path: Path
) -> None:
    await ScriptedAgents(nc, all_but_roy).start()
    settings = settings_for(
        nats_server.url,
        pg_dsn,
        runner_agents=["roy"],
        runner_command=f"{tmp_path}/no-such-claude --print",
    )
    async with running_agogd(settings):
        await submit(nc, "REQ-RUN-2")
        conn = await asyncpg.connect(pg_dsn)
        try:
            for _ in range(200):
                failed = await conn.fetchrow(
                    "SELECT deliverable FROM stage_attempts WHERE req_number = 'REQ-RUN-2'"
                    " AND stage = 2 AND status = 'FAILED'"
                )
                if failed:
                    break
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
    assert failed is not None, "the stage waited instead of failing fast"
    deliverable = json.loads(failed["deliverable"])
    assert "no-such-claude" in deliverable["reason"]


async def test_a_malformed_assignment_is_rejected_once(
    nats_server: NatsServer, pg_dsn: str, nc: NATS, tmp_path: Path
) -> None:
    command, spawns = agent_command(tmp_path, seconds=0)
    rejections, _ = await collect(nc, "agog.orchestration.events.message.rejected")
    settings = settings_for(nats_server.url, pg_dsn, runner_agents=["roy"], runner_command=command)
    async with running_agogd(settings):
        await nc.jetstream().publish(
            "agog.orchestration.events.stage.started.roy.REQ-RUN-3", b'{"agent": "roy"'
        )
        for _ in range(100):
            if rejections:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a redelivery loop would show more
    assert [(r["reason_code"], r["by"]) for r in rejections] == [("bad_assignment", "runner")]
    assert "not JSON" in rejections[0]["reason"]
    assert not spawns.exists()


async def test_agogd_runner_on_its_own_beside_the_engine(
    nats_server: NatsServer, pg_dsn: str, nc: NATS
) -> None:
    """`agogd runner --demo` as a separate process; the engine runs in another."""
    runner = DaemonProcess(
        {
            "AGOG_NATS_URL": nats_server.url,
            "AGOG_POSTGRES_DSN": pg_dsn,
            "AGOG_DEMO_DELAY": "0.05",
        },
        args=("runner", "--demo"),
    ).start()
    try:
        runner.wait_ready(60)
        async with running_agogd(settings_for(nats_server.url, pg_dsn)) as engine:
            assert engine.wiring.parts.runner is None
            await submit(nc, "REQ-SPLIT-1")
            await wait_status(pg_dsn, "REQ-SPLIT-1", "DEPLOYED", timeout=90)
        assert runner.named("runner.demo_mode")
        assert {e.get("agent") for e in runner.named("agent.finished")} >= {"cynthia", "berry"}
        assert not runner.named("stage.completed")  # the engine is not in this process
    finally:
        runner.stop()


async def test_cancel_stops_the_running_agent(
    nats_server: NatsServer, pg_dsn: str, nc: NATS, tmp_path: Path
) -> None:
    command, spawns = agent_command(tmp_path, seconds=600)  # would hang for ten minutes

    await ScriptedAgents(nc, all_but_roy).start()
    settings = settings_for(
        nats_server.url,
        pg_dsn,
        runner_agents=["roy"],
        runner_command=command,
        runner_kill_grace=1.0,
    )
    async with running_agogd(settings):
        await submit(nc, "REQ-RUN-4")
        await started(spawns)
        assert spawns.exists(), "Roy's process never started"
        await nc.jetstream().publish(
            "agog.strategic.decisions.REQ-RUN-4",
            json.dumps({"decision": "CANCEL", "reasoning": "not needed"}).encode(),
        )
        await wait_status(pg_dsn, "REQ-RUN-4", "CANCELLED")
        conn = await asyncpg.connect(pg_dsn)
        try:
            for _ in range(200):
                run = await conn.fetchrow(
                    "SELECT outcome, reason FROM runner_runs WHERE req_number = 'REQ-RUN-4'"
                )
                if run is not None and run["outcome"]:
                    break
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
    assert run is not None and run["outcome"] == "FAILED"
    assert run["reason"].startswith("cancelled")


# An agent that talks for a while (one line holds a secret from its
# environment), so its transcript can be followed live, then answers.
TALKER = """
import json, os, re, sys, time
prompt = sys.stdin.read()
assignment = json.loads(re.search(r"```json\\n(.*?)\\n```", prompt, re.S).group(1))
for i in range(6):
    print("working step %d" % i, flush=True)
    time.sleep(0.4)
print("using key " + os.environ["TEST_AGENT_API_KEY"], flush=True)
print("a warning", file=sys.stderr, flush=True)
print(json.dumps({"agent": assignment["agent"], "req_number": assignment["req_number"],
                  "status": "COMPLETE", "summary": "talked"}))
"""

# An agent that fails the way a CLI does: a message on stderr, exit code 3.
FAILER = """
import sys
sys.stdin.read()
print("starting", flush=True)
print("Error: invalid x-api-key (401)", file=sys.stderr)
print("giving up", file=sys.stderr)
sys.exit(3)
"""


async def test_an_attempts_output_is_kept_followed_live_and_scrubbed_of_secrets(
    nats_server: NatsServer, pg_dsn: str, nc: NATS, tmp_path: Path, monkeypatch: Any
) -> None:
    script = tmp_path / "talker.py"
    script.write_text(textwrap.dedent(TALKER))
    monkeypatch.setenv("TEST_AGENT_API_KEY", "sk-test-0123456789abcdef")
    await ScriptedAgents(nc, all_but_roy).start()
    settings = settings_for(
        nats_server.url,
        pg_dsn,
        runner_agents=["roy"],
        runner_command=f"{sys.executable} {script}",
        runner_env=["TEST_AGENT_API_KEY"],
    )
    async with running_agogd(settings) as daemon:
        url = daemon.http.url
        await submit(nc, "REQ-LOG-1")
        seen: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as http:
            deadline = asyncio.get_running_loop().time() + 60
            while True:  # follow it while it runs, as agogctl req logs --follow does
                async with http.get(f"{url}/api/reqs/REQ-LOG-1/logs?stage=roy") as response:
                    body = await response.json()
                    if response.status == 200 and body["kept"]:
                        seen.append(body)
                if seen and not seen[-1]["running"]:
                    break
                assert asyncio.get_running_loop().time() < deadline, seen[-1:] or "no logs"
                await asyncio.sleep(0.2)
        code, out, err = await agogctl(url, "req", "logs", "REQ-LOG-1", "--stage", "roy")
        await wait_status(pg_dsn, "REQ-LOG-1", "DEPLOYED")
    running = [s for s in seen if s["running"]]
    assert running, "the transcript was not readable while the agent ran"
    assert "working step" in running[0]["text"] and "talked" not in running[0]["text"]
    final = seen[-1]
    assert final["agent"] == "roy" and final["attempt"] == 1
    assert "working step 5" in final["text"] and "[stderr] a warning" in final["text"]
    assert "sk-test-0123456789abcdef" not in final["text"]
    assert "using key [redacted]" in final["text"]
    assert code == 0, err
    assert "working step 0" in out and "[redacted]" in out and "sk-test" not in out


async def test_a_failing_agent_shows_its_exit_code_and_stderr_in_req_show(
    nats_server: NatsServer, pg_dsn: str, nc: NATS, tmp_path: Path
) -> None:
    script = tmp_path / "failer.py"
    script.write_text(textwrap.dedent(FAILER))
    await ScriptedAgents(nc, all_but_roy).start()
    settings = settings_for(
        nats_server.url,
        pg_dsn,
        runner_agents=["roy"],
        runner_command=f"{sys.executable} {script}",
    )
    async with running_agogd(settings) as daemon:
        await submit(nc, "REQ-FAIL-1")
        await wait_status(pg_dsn, "REQ-FAIL-1", "BLOCKED", timeout=60)
        code, out, err = await agogctl(daemon.http.url, "req", "show", "REQ-FAIL-1")
    assert code == 0, err
    assert "exited with code 3: Error: invalid x-api-key (401) | giving up" in out
