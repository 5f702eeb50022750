"""Whole REQs through agogd with a real agent CLI as every agent.

The CLIs are the real ones (scripts/agent-clis); only the model behind each
is scripted, by a local server that speaks its API (orchestrator.embedded.
models) and plays every stage from the prompt the runner wrote. The runner,
NATS, Postgres and the CLI's own tools are real: Roy's CLI writes a file in
the working tree through its edit tool, QA fails the first round so Roy's
rework resumes his own session (the server sees his first turns again), and
every attempt's tokens, cost, session and transcript are kept.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from orchestrator.embedded.models import Script, ScriptedModelServer, Turn
from orchestrator.embedded.models.anthropic import AnthropicServer
from orchestrator.embedded.models.gemini import GeminiServer
from orchestrator.embedded.models.openai_responses import OpenAIResponsesServer
from orchestrator.embedded.models.pipeline_script import PipelineResponder, assignments_in
from tests.agents import (
    ScriptedAgents,
    agent_cli,
    happy,
    running_agogd,
    settings_for,
    submit,
    wait_status,
)
from workers.runner.profiles.gemini import HEADLESS_SETTINGS

API = "def api():\n    return 42\n"
EVERY_AGENT = ["cynthia", "sylvia", "roy", "jen", "billy", "priya", "berry", "tim"]


@dataclass(frozen=True)
class Cli:
    """How a test points one real CLI at its scripted model, hermetically."""

    name: str
    server: Callable[[Script], ScriptedModelServer]
    env: Callable[[ScriptedModelServer, Path], dict[str, str]]
    write_tool: Callable[[Path], Turn]  # the CLI's own tool call that writes a file
    model: str
    reports_cost: bool = False
    # Who writes the file: Gemini CLI 0.61 cannot resume a session that used a
    # tool (upstream bug 29365), and Roy's session is resumed by the rework.
    writer: str = "roy"


def claude_env(server: ScriptedModelServer, home: Path) -> dict[str, str]:
    assert isinstance(server, AnthropicServer)
    return server.cli_env(home)


def codex_env(server: ScriptedModelServer, home: Path) -> dict[str, str]:
    codex_home = home / ".codex"
    codex_home.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(f'openai_base_url = "{server.url}/v1"\n')
    return {"HOME": str(home), "CODEX_HOME": str(codex_home), "CODEX_API_KEY": "test-key"}


def gemini_env(server: ScriptedModelServer, home: Path) -> dict[str, str]:
    (home / ".gemini").mkdir(exist_ok=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps(HEADLESS_SETTINGS))
    return {
        "HOME": str(home),
        "GOOGLE_GEMINI_BASE_URL": server.url,
        "GEMINI_API_KEY": "test-key",
    }


def codex_patch(path: Path) -> Turn:
    body = "".join(f"+{line}\n" for line in API.splitlines())
    return Turn(
        tool="apply_patch",
        arguments={"input": f"*** Begin Patch\n*** Add File: {path.name}\n{body}*** End Patch\n"},
    )


CLIS = {
    "claude": Cli(
        name="claude",
        server=lambda script: AnthropicServer(script),
        env=claude_env,
        write_tool=lambda path: Turn(
            tool="Write",
            arguments={"file_path": str(path), "content": "def api():\n    return 42\n"},
        ),
        model="claude-sonnet-4-5",
        reports_cost=True,
    ),
    "codex": Cli(
        name="codex",
        server=lambda script: OpenAIResponsesServer(script),
        env=codex_env,
        write_tool=codex_patch,
        model="gpt-5.5",
    ),
    "gemini": Cli(
        name="gemini",
        server=lambda script: GeminiServer(script, api_key="test-key"),
        env=gemini_env,
        write_tool=lambda path: Turn(
            tool="write_file", arguments={"file_path": str(path), "content": API}
        ),
        model="gemini-2.5-pro",
        writer="priya",
    ),
}


async def _attempts(dsn: str, req: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT a.agent, a.stage, a.attempt, a.status, a.cli, a.model, a.session_id,"
            " a.input_tokens, a.output_tokens, a.cost_usd::float8 AS cost, a.turns,"
            " t.total_bytes FROM stage_attempts a LEFT JOIN agent_transcripts t"
            " USING (req_number, stage, attempt) WHERE a.req_number = $1 ORDER BY a.id",
            req,
        )
    finally:
        await conn.close()


async def started_cli(
    cli: Cli,
    responder: PipelineResponder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[ScriptedModelServer, dict[str, Any]]:
    """The CLI's scripted model, started, its environment set for the runner's
    agents, and the runner settings that run this CLI in ``tmp_path/tree``."""
    tree, home = tmp_path / "tree", tmp_path / "home"
    tree.mkdir(exist_ok=True)
    home.mkdir(exist_ok=True)
    server = await cli.server(Script(responder=responder)).start()
    env = cli.env(server, home)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runner = {
        "runner_cli": cli.name,
        "runner_cli_paths": {cli.name: agent_cli(cli.name)},
        "runner_workdir": tree,
        "runner_env": sorted(env),
    }
    return server, runner


@pytest.mark.parametrize("cli_name", sorted(CLIS))
async def test_a_req_through_every_stage_with_a_real_cli_as_every_agent(
    cli_name: str,
    nats_server: NatsServer,
    pg_dsn: str,
    nc: NATS,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli = CLIS[cli_name]
    tree, home = tmp_path / "tree", tmp_path / "home"

    def writes(assignment: dict[str, Any]) -> Turn | None:
        if assignment["agent"] == cli.writer and assignment["attempt"] == 1:
            return cli.write_tool(tree / "api.py")
        return None

    responder = PipelineResponder(fail_first={"qa"}, tool_first=writes)
    server, runner = await started_cli(cli, responder, tmp_path, monkeypatch)
    settings = settings_for(
        nats_server.url,
        pg_dsn,
        runner_agents=["all"],
        runner_default_model=cli.model,
        runner_concurrency=2,
        **runner,
    )
    try:
        async with running_agogd(settings):
            await submit(nc, "REQ-REAL-1", title="Inventory API")
            row = await wait_status(pg_dsn, "REQ-REAL-1", "DEPLOYED", timeout=600)
            attempts = await _attempts(pg_dsn, "REQ-REAL-1")
            for _ in range(600):  # Tim runs after the deployment
                if any(a["agent"] == "tim" and a["status"] == "COMPLETE" for a in attempts):
                    break
                await asyncio.sleep(0.2)
                attempts = await _attempts(pg_dsn, "REQ-REAL-1")
    finally:
        await server.stop()
    assert row["commit_sha"] == "c0ffee1"
    # Every agent ran through the real CLI; QA failed once, so Roy reworked.
    done = [(a["agent"], a["attempt"]) for a in attempts if a["status"] == "COMPLETE"]
    assert {agent for agent, _ in done} == set(EVERY_AGENT), attempts
    assert ("roy", 2) in done and ("billy", 2) in done
    assert next(a["status"] for a in attempts if a["agent"] == "billy") == "FAILED"
    # The agent's CLI wrote the file itself, through its own tool, in the REQ's tree.
    assert (tree / "api.py").read_text() == API
    # Each attempt's accounting, from the CLI's own structured output.
    for a in attempts:
        assert a["cli"] == cli.name and a["session_id"] and a["model"] == cli.model, a
        assert a["input_tokens"] and a["output_tokens"] and a["turns"], a
        assert a["total_bytes"], f"no transcript kept for {a['agent']} #{a['attempt']}"
    roy = [a for a in attempts if a["agent"] == "roy"]
    assert roy[1]["session_id"] == roy[0]["session_id"], "the rework did not resume"
    # The server saw Roy's first prompt again in his rework's conversation.
    rework = [
        r
        for r in server.requests
        if (found := assignments_in(r)) and (found[-1]["agent"], found[-1]["attempt"]) == ("roy", 2)
    ]
    assert rework, "no request for roy's second attempt"
    earlier = [(x["agent"], x["attempt"]) for x in assignments_in(rework[0])]
    assert ("roy", 1) in earlier, earlier
    # The scripted turns report 100 tokens in, 20 out each. A resumed attempt
    # is counted for itself, not with the session's earlier turns.
    first_turns = 2 if cli.writer == "roy" else 1  # the write, then the notice
    assert (roy[0]["input_tokens"], roy[0]["output_tokens"]) == (
        100 * first_turns,
        20 * first_turns,
    )
    assert (roy[1]["input_tokens"], roy[1]["output_tokens"]) == (100, 20)
    if cli.reports_cost:
        assert roy[0]["cost"] > 0
        assert roy[1]["cost"] == pytest.approx(roy[0]["cost"] / first_turns)
    assert os.environ["HOME"] == str(home)


async def test_a_retry_after_a_failed_attempt_starts_a_fresh_session(
    nats_server: NatsServer,
    pg_dsn: str,
    nc: NATS,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rework resumes; a retry after a FAILED attempt does not: that session
    may be what failed (Gemini CLI 0.61 cannot resume one that used tools)."""
    responder = PipelineResponder(fail_agents={"jen"})
    server, runner = await started_cli(CLIS["claude"], responder, tmp_path, monkeypatch)
    settings = settings_for(nats_server.url, pg_dsn, runner_agents=["jen"], **runner)
    others = await ScriptedAgents(nc, lambda a: None if a["agent"] == "jen" else happy(a)).start()
    try:
        async with running_agogd(settings):
            await submit(nc, "REQ-REAL-2")
            await wait_status(pg_dsn, "REQ-REAL-2", "DEPLOYED", timeout=300)
    finally:
        await others.stop()
        await server.stop()
    jen = [a for a in await _attempts(pg_dsn, "REQ-REAL-2") if a["agent"] == "jen"]
    assert [a["status"] for a in jen] == ["FAILED", "COMPLETE"]
    assert jen[0]["session_id"] and jen[1]["session_id"]
    assert jen[1]["session_id"] != jen[0]["session_id"], "the retry resumed the failed session"
