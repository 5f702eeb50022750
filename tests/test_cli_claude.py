"""Claude Code, the real CLI, driven through its profile by a scripted model.

Every CLI test runs the pinned ``claude`` binary exactly as the runner does
(``run_process`` with the profile's argv, stdin, files and environment)
against ``AnthropicServer``, a local Anthropic Messages API whose answers
are scripted. The CLI's tools, files and processes are real. Each test has
its own HOME (so its own ``~/.claude``), its own working tree, and talks to
nothing beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.embedded.models.anthropic import AnthropicServer, ApiError
from orchestrator.embedded.models.base import Script, Turn
from orchestrator.inbound.notices import extract_json
from tests.agents import agent_cli
from workers.adapters.supervise import ProcessResult, run_process
from workers.runner.profiles.base import AgentOutput, Invocation, RunSpec, parse_version
from workers.runner.profiles.claude import PROFILE, ROLE_FILE

RUN_TIMEOUT = 120.0  # one CLI run, on a loaded 2-core machine
NOTICE = {"agent": "roy", "req_number": "REQ-CC-1", "status": "COMPLETE"}
FINAL = "All done.\n\n```json\n" + json.dumps(NOTICE) + "\n```\n"
ROLE = "You are Roy, the backend engineer of this pipeline."


@dataclass(frozen=True)
class Box:
    """One test's private world: HOME, the working tree, a dir outside it."""

    home: Path
    workdir: Path
    outside: Path
    scratch: Path

    def spec(self, prompt: str = "Do the task.", **fields: Any) -> RunSpec:
        values: dict[str, Any] = {
            "agent": "roy",
            "role": "backend",
            "model": "claude-sonnet-5-5",
            "workdir": self.workdir,
            "prompt": prompt,
            "role_text": ROLE,
            "scratch": self.scratch,
        }
        return RunSpec(**{**values, **fields})


@dataclass
class Run:
    invocation: Invocation
    result: ProcessResult
    output: AgentOutput
    lines: list[str]


@pytest.fixture
def box(tmp_path: Path) -> Box:
    made = Box(tmp_path / "home", tmp_path / "tree", tmp_path / "outside", tmp_path / "scratch")
    for path in (made.home, made.workdir, made.outside, made.scratch):
        path.mkdir()
    return made


def hermetic_env(box: Box, server: AnthropicServer, **extra: str) -> dict[str, str]:
    """The environment a test CLI gets: built from nothing (no inherited
    ANTHROPIC_* or CLAUDE_* variable), a private HOME, the local server."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TMPDIR": str(box.scratch),
        "LANG": "C.UTF-8",
        **server.cli_env(box.home),
        **extra,
    }


async def run_claude(spec: RunSpec, box: Box, server: AnthropicServer, **env: str) -> Run:
    """One attempt, the way the runner makes it."""
    invocation = PROFILE.invocation(spec, agent_cli("claude"))
    for path, text in invocation.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    lines: list[str] = []
    result = await run_process(
        invocation.argv,
        stdin=invocation.stdin,
        cwd=spec.workdir,
        env={**hermetic_env(box, server, **env), **invocation.env},
        timeout=RUN_TIMEOUT,
        kill_grace=5.0,
        output_limit=4 * 1024 * 1024,
        on_line=lambda stream, line: lines.append(f"{stream}: {line}"),
    )
    assert not result.timed_out, "\n".join(lines[-20:])
    return Run(invocation, result, PROFILE.parse(result.stdout, result.stderr_tail), lines)


def tool_results(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool results the CLI sent back in a request, in order."""
    found = []
    for message in request["messages"]:
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, list):
            found += [c for c in content if c.get("type") == "tool_result"]
    return found


def result_text(result: dict[str, Any]) -> str:
    content = result.get("content")
    if isinstance(content, list):
        return " ".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content)


def all_text(request: dict[str, Any]) -> str:
    """Everything the request says, flattened (for "does it contain X")."""
    return json.dumps({"system": request.get("system"), "messages": request["messages"]})


# --- the real CLI ----------------------------------------------------------


async def test_the_cli_edits_a_file_in_its_tree_and_answers_the_notice(box: Box) -> None:
    notes = box.workdir / "notes.md"
    notes.write_text("# Notes\nstatus: draft\n")
    created = box.workdir / "src" / "api.py"
    script = Script(
        [
            Turn(tool="Read", arguments={"file_path": str(notes)}),
            Turn(
                tool="Edit",
                arguments={
                    "file_path": str(notes),
                    "old_string": "status: draft",
                    "new_string": "status: done",
                },
            ),
            Turn(
                text="Now the API module.",  # text, then the tool call, in one answer
                tool="Write",
                arguments={"file_path": str(created), "content": "VALUE = 42\n"},
            ),
            Turn(text=FINAL),
        ]
    )
    async with AnthropicServer(script) as server:
        run = await run_claude(box.spec("Finish the notes and add the API."), box, server)

    assert run.result.exit_code == 0, "\n".join(run.lines[-20:])
    assert notes.read_text() == "# Notes\nstatus: done\n"
    assert created.read_text() == "VALUE = 42\n"
    assert not run.output.is_error, run.output.error
    assert run.output.text.strip() == FINAL.strip()
    assert extract_json(run.output.text) == NOTICE  # what the runner reads as the notice
    # Each tool call was offered by the CLI, ran, and its result came back.
    first, last = server.requests[0], server.requests[-1]
    offered = {t["name"] for t in first["tools"]}
    assert {"Read", "Edit", "Write"} <= offered
    results = tool_results(last)
    assert len(results) == 3 and not any(r.get("is_error") for r in results), results
    said = [m for m in last["messages"] if m["role"] == "assistant"]
    assert [c["type"] for c in said[-1]["content"]] == ["text", "tool_use"]
    assert said[-1]["content"][0]["text"] == "Now the API module."
    # The prompt came on stdin, the role in the system prompt, the model flag through.
    assert "Finish the notes and add the API." in all_text(first)
    assert ROLE in json.dumps(first["system"])
    assert {r["model"] for r in server.requests} == {"claude-sonnet-5-5"}
    assert (box.scratch / ROLE_FILE).read_text() == ROLE
    assert any(p.is_dir() for p in box.scratch.glob("claude-*"))  # the CLI's temp dir


async def test_a_write_outside_the_tree_is_refused_without_bypass(box: Box) -> None:
    by_tool, by_shell = box.outside / "by-write.txt", box.outside / "by-bash.txt"
    inside = box.workdir / "made-by-bash.txt"
    script = Script(
        [
            Turn(tool="Write", arguments={"file_path": str(by_tool), "content": "escaped\n"}),
            Turn(tool="Bash", arguments={"command": f"echo escaped > {by_shell}"}),
            Turn(tool="Bash", arguments={"command": f"touch {inside}"}),
            Turn(text=FINAL),
        ]
    )
    async with AnthropicServer(script) as server:
        run = await run_claude(box.spec(), box, server)

    assert run.result.exit_code == 0, "\n".join(run.lines[-20:])
    assert not by_tool.exists() and not by_shell.exists()
    assert list(box.outside.iterdir()) == []
    assert inside.exists()  # a plain file command inside the tree needs no prompt
    write, shell, touch = tool_results(server.requests[-1])
    assert write.get("is_error") and shell.get("is_error") and not touch.get("is_error")
    assert "by-write.txt" in result_text(write) and "outside" in result_text(shell)
    assert run.output.text.strip() == FINAL.strip()  # the agent carried on and answered


async def test_bypass_permissions_lets_the_cli_write_anywhere(box: Box) -> None:
    """The operator's explicit bypass: the CLI's own flag (as root the CLI
    wants IS_SANDBOX=1 with it, which the operator sets)."""
    target = box.outside / "allowed.txt"
    script = Script(
        [
            Turn(tool="Write", arguments={"file_path": str(target), "content": "ok\n"}),
            Turn(text=FINAL),
        ]
    )
    async with AnthropicServer(script) as server:
        spec = box.spec(bypass_permissions=True)
        run = await run_claude(spec, box, server, IS_SANDBOX="1")

    assert "--dangerously-skip-permissions" in run.invocation.argv
    assert run.result.exit_code == 0, "\n".join(run.lines[-20:])
    assert target.read_text() == "ok\n"
    assert not run.output.is_error


async def test_tokens_cost_session_model_and_turns_match_the_server(box: Box) -> None:
    turns = [
        Turn(
            tool="Write",
            arguments={"file_path": str(box.workdir / "a.txt"), "content": "a\n"},
            input_tokens=1200,
            output_tokens=80,
            cache_write_tokens=900,
        ),
        Turn(
            tool="Write",
            arguments={"file_path": str(box.workdir / "b.txt"), "content": "b\n"},
            input_tokens=300,
            output_tokens=60,
            cache_read_tokens=900,
        ),
        Turn(text=FINAL, input_tokens=350, output_tokens=45, cache_read_tokens=1000),
    ]
    async with AnthropicServer(Script(turns)) as server:
        run = await run_claude(box.spec(model="claude-opus-5-5"), box, server)

    assert run.result.exit_code == 0, "\n".join(run.lines[-20:])
    assert (box.workdir / "a.txt").exists() and (box.workdir / "b.txt").exists()
    usage = run.output.usage
    assert usage.input_tokens == sum(t.input_tokens for t in turns)
    assert usage.output_tokens == sum(t.output_tokens for t in turns)
    assert usage.cache_read_tokens == sum(t.cache_read_tokens for t in turns)
    assert usage.cache_write_tokens == sum(t.cache_write_tokens for t in turns)
    assert usage.turns == len(server.requests) == len(turns)
    raw = json.loads(run.result.stdout)
    assert usage.cost_usd == raw["total_cost_usd"] and usage.cost_usd > 0
    assert run.output.model == server.requests[0]["model"] == "claude-opus-5-5"
    session = run.output.session_id
    assert session and session == raw["session_id"]
    assert session in server.requests[0]["metadata"]["user_id"]
    assert list(box.home.glob(f".claude/projects/*/{session}.jsonl"))  # resumable
    # The profile's environment kept the CLI to the model API: no reachability
    # probe, no side call took a turn.
    assert [r["path"] for r in server.side_requests if r["path"] == "/api/hello"] == []


async def test_resume_sends_the_first_runs_turns_again(box: Box) -> None:
    first_answer = "The code word is PERSIMMON."
    first_turn = Turn(text=first_answer, input_tokens=1000, output_tokens=10)
    async with AnthropicServer(Script([first_turn])) as server:
        first = await run_claude(box.spec("Remember a code word."), box, server)
    assert first.result.exit_code == 0 and first.output.session_id, "\n".join(first.lines[-20:])

    second_turn = Turn(text=FINAL, input_tokens=3000, output_tokens=30)
    async with AnthropicServer(Script([second_turn])) as server:
        spec = box.spec("What was the code word?", resume_session=first.output.session_id)
        second = await run_claude(spec, box, server)

    assert ["--resume", first.output.session_id] == second.invocation.argv[-2:]
    assert second.result.exit_code == 0, "\n".join(second.lines[-20:])
    messages = server.requests[0]["messages"]
    said = [json.dumps(m) for m in messages]
    old_prompt = next(i for i, m in enumerate(said) if "Remember a code word." in m)
    old_answer = next(i for i, m in enumerate(said) if first_answer in m)
    new_prompt = next(i for i, m in enumerate(said) if "What was the code word?" in m)
    assert old_prompt < old_answer < new_prompt
    assert messages[old_answer]["role"] == "assistant"
    assert second.output.text.strip() == FINAL.strip()
    assert second.output.session_id == first.output.session_id  # resumed, not forked
    # The CLI reports the session's totals so far (the first run's included),
    # but this run's turns: the profile's docstring tells the runner.
    usage = second.output.usage
    assert usage.input_tokens == first_turn.input_tokens + second_turn.input_tokens
    assert usage.output_tokens == first_turn.output_tokens + second_turn.output_tokens
    assert usage.turns == 1
    assert first.output.usage.cost_usd is not None and usage.cost_usd is not None
    assert usage.cost_usd > first.output.usage.cost_usd


async def test_a_server_error_is_an_error_result(box: Box) -> None:
    def broken(_: dict[str, Any]) -> Turn:
        raise ApiError(500, "api_error", "scripted internal failure")

    async with AnthropicServer(Script(responder=broken)) as server:
        # No retries: the CLI would back off for minutes before giving up.
        run = await run_claude(box.spec(), box, server, CLAUDE_CODE_MAX_RETRIES="0")

    assert run.result.exit_code != 0
    assert run.output.is_error
    assert run.output.error and "500" in run.output.error
    assert "scripted internal failure" in run.output.error
    assert len(run.output.error) <= 300


async def test_a_bad_request_error_object_is_an_error_result(box: Box) -> None:
    def refused(_: dict[str, Any]) -> Turn:
        raise ApiError(400, "invalid_request_error", "messages.0: scripted refusal")

    async with AnthropicServer(Script(responder=refused)) as server:
        run = await run_claude(box.spec(), box, server)

    assert run.output.is_error
    assert run.output.error and "400" in run.output.error
    assert "scripted refusal" in run.output.error


async def test_an_argv_the_cli_refuses_is_an_error_with_its_words(box: Box) -> None:
    """No JSON at all (the CLI stops before it starts): stderr's last line."""
    async with AnthropicServer(Script([Turn(text=FINAL)])) as server:
        run = await run_claude(box.spec(budget_usd=0.0), box, server)

    assert ["--max-budget-usd", "0"] == run.invocation.argv[-2:]
    assert run.result.exit_code != 0
    assert run.output.is_error
    assert run.output.error and "--max-budget-usd" in run.output.error
    assert server.requests == []


async def test_the_budget_flag_stops_the_run(box: Box) -> None:
    turns = [
        Turn(
            tool="Write",
            arguments={"file_path": str(box.workdir / f"{n}.txt"), "content": "x\n"},
            input_tokens=50_000,
            output_tokens=2_000,
        )
        for n in range(5)
    ]
    async with AnthropicServer(Script(turns)) as server:
        run = await run_claude(box.spec(budget_usd=0.01), box, server)

    assert run.output.is_error
    assert run.output.error and "budget" in run.output.error.lower()
    assert len(server.requests) < len(turns)
    assert run.output.usage.cost_usd is not None and run.output.usage.cost_usd >= 0.01


async def test_the_version_is_at_least_the_tested_one(tmp_path: Path) -> None:
    binary = agent_cli("claude")
    result = await run_process(
        PROFILE.version_argv(binary),
        stdin="",
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
        timeout=RUN_TIMEOUT,
        kill_grace=5.0,
        output_limit=64 * 1024,
        on_line=lambda *_: None,
    )
    assert result.exit_code == 0, result.stderr_tail
    version = parse_version(result.stdout)
    assert version is not None and version >= PROFILE.min_version, result.stdout


# --- the server's own protocol ------------------------------------------------


async def test_side_requests_take_no_turn_and_errors_have_the_api_shape() -> None:
    script = Script([Turn(text="the main turn")])
    headers = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
    async with AnthropicServer(script) as server, aiohttp.ClientSession(headers=headers) as http:
        side = {"model": "claude-haiku-4-5", "max_tokens": 32, "messages": [_user("Title?")]}
        async with http.post(f"{server.url}/v1/messages", json=side) as resp:
            assert resp.status == 200
            assert (await resp.json())["content"][0]["text"] == AnthropicServer.side_text
        titled = {**side, "output_config": {"format": {"type": "json_schema", "schema": _TITLE}}}
        async with http.post(f"{server.url}/v1/messages", json=titled) as resp:
            assert json.loads((await resp.json())["content"][0]["text"]) == {"title": "scripted"}
        count = {"model": "claude-opus-5-5", "messages": [_user("hi")]}
        async with http.post(f"{server.url}/v1/messages/count_tokens", json=count) as resp:
            assert (await resp.json())["input_tokens"] > 0
        main = {**side, "tools": [_TOOL]}
        async with http.post(f"{server.url}/v1/messages?beta=true", json=main) as resp:
            assert (await resp.json())["content"][0]["text"] == "the main turn"
        assert script.used == 1 and len(server.requests) == 1
        assert len(server.side_requests) == 3

        for body, status, kind in [
            ({"model": "m", "messages": [_user("x")]}, 400, "invalid_request_error"),
            ({"model": "m", "max_tokens": 5, "messages": []}, 400, "invalid_request_error"),
            ("not json", 400, "invalid_request_error"),
        ]:
            data = body if isinstance(body, str) else json.dumps(body)
            async with http.post(f"{server.url}/v1/messages", data=data) as resp:
                assert resp.status == status and resp.headers.get("request-id")
                error = await resp.json()
                assert error["type"] == "error" and error["error"]["type"] == kind
        async with aiohttp.ClientSession(headers={"x-api-key": "k"}) as unversioned:
            async with unversioned.post(f"{server.url}/v1/messages", json=main) as resp:
                assert resp.status == 400
                assert "anthropic-version" in (await resp.json())["error"]["message"]
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.post(f"{server.url}/v1/messages", json=main) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["type"] == "authentication_error"
        async with http.get(f"{server.url}/v1/nothing") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["type"] == "not_found_error"
        assert script.used == 1


async def test_a_streamed_tool_call_reassembles_to_the_scripted_arguments() -> None:
    arguments = {"file_path": "/tmp/x.txt", "content": "a fairly long content " * 5}
    turn = Turn(text="Writing it.", tool="write", arguments=arguments, output_tokens=9)
    script = Script([turn])
    headers = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
    body = {
        "model": "claude-opus-5-5",
        "max_tokens": 100,
        "stream": True,
        "messages": [_user("go")],
        "tools": [{**_TOOL, "name": "Write"}],
    }
    async with AnthropicServer(script) as server, aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{server.url}/v1/messages?beta=true", json=body) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = _sse_events(await resp.text())
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] == turn.input_tokens
    assert start["model"] == "claude-opus-5-5" and start["content"] == []
    starts = [data for name, data in events if name == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1]
    text = "".join(
        data["delta"]["text"]
        for name, data in events
        if name == "content_block_delta" and data["index"] == 0
    )
    assert starts[0]["content_block"]["type"] == "text" and text == "Writing it."
    block = starts[1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "Write"  # as the client spelled it
    assert block["id"].startswith("toolu_") and block["input"] == {}
    pieces = [
        data["delta"]["partial_json"]
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta"
    ]
    assert len(pieces) > 1 and json.loads("".join(pieces)) == arguments
    delta = next(data for name, data in events if name == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] == 9


_TITLE = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
_TOOL = {"name": "Read", "description": "read", "input_schema": {"type": "object"}}


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


# --- the profile, pure ----------------------------------------------------------


def test_the_argv_of_a_normal_a_resumed_and_a_bypass_run(tmp_path: Path) -> None:
    spec = RunSpec(
        agent="roy",
        role="backend",
        model="sonnet",
        workdir=tmp_path / "tree",
        prompt="the prompt",
        role_text=ROLE,
        budget_usd=2.5,
        scratch=tmp_path / "scratch",
    )
    role_file = tmp_path / "scratch" / ROLE_FILE
    normal = PROFILE.invocation(spec, "/bin/claude")
    assert normal.argv == [
        "/bin/claude",
        "-p",
        "--output-format",
        "json",
        "--permission-mode",
        "acceptEdits",
        "--permission-prompts",
        "none",
        "--model",
        "sonnet",
        "--append-system-prompt-file",
        str(role_file),
        "--max-budget-usd",
        "2.5",
    ]
    assert normal.stdin == "the prompt" and normal.files == {role_file: ROLE}
    assert normal.env["DISABLE_AUTOUPDATER"] == "1"
    assert normal.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert normal.env["CLAUDE_CODE_TMPDIR"] == str(tmp_path / "scratch")
    assert "--dangerously-skip-permissions" not in normal.argv

    resumed = PROFILE.invocation(replace(spec, resume_session="abc-123"), "claude")
    assert resumed.argv[-2:] == ["--resume", "abc-123"]

    bypass = PROFILE.invocation(replace(spec, bypass_permissions=True), "claude")
    assert "--dangerously-skip-permissions" in bypass.argv
    assert "acceptEdits" not in bypass.argv and "--permission-prompts" not in bypass.argv

    bare = PROFILE.invocation(replace(spec, model=None, role_text="", budget_usd=None), "claude")
    assert bare.argv[1:] == normal.argv[1:8] and bare.files == {}
    assert PROFILE.version_argv("claude") == ["claude", "--version"]


# Real outputs of claude 2.1.332 (``-p --output-format json``), captured
# against AnthropicServer with the profile's argv. A success: a Write inside
# the tree, a refused Write outside it, then the final text.
REAL_SUCCESS = (
    '{"duration_api_ms":151,"stop_reason":"end_turn","session_id":"1f6cddea-ff47-4a73'
    '-b83d-20b18cce44b3","total_cost_usd":0.01598,"usage":{"input_tokens":1850,"cache_cre'
    'ation_input_tokens":900,"cache_read_input_tokens":1900,"output_tokens":185,"output_t'
    'okens_details":{"thinking_tokens":0},"server_tool_use":{"web_search_requests":0,"web'
    '_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_'
    'tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"spe'
    'ed":"standard","fallback_credit":null},"modelUsage":{"claude-opus-5-5":{"inputTo'
    'kens":1850,"outputTokens":185,"cacheReadInputTokens":1900,"cacheCreationInputTokens"'
    ':900,"webSearchRequests":0,"costUSD":0.01598,"contextWindow":1000000,"maxOutputToken'
    's":128000,"thinkingTokens":0,"cacheCreationEphemeral5mInputTokens":0,"cacheCreationE'
    'phemeral1hInputTokens":0,"canonicalModel":"claude-opus-5-5","provider":"firstPar'
    'ty","costBasis":"list"}},"permission_denials":[{"tool_name":"Write","tool_use_id'
    '":"toolu_3afaa6a90906417a9eedae2d","tool_input":{"file_path":"/tmp/capture-llsavzhy/'
    'outside/no.txt","content":"x\\n"}}],"terminal_reason":"completed","fast_mode_stat'
    'e":"off","fast_mode_disabled_reason":"sdk_opt_in_required","subagent_stats":{"sp'
    'awned":0,"requested":{"background":0,"foreground":0,"unset":0},"started_in_backg'
    'round":0,"max_depth":0,"spawned_by_subagents":0,"completed":0,"failed":0,"killed'
    '":{"parent":0,"user":0,"system":0},"refused":{"depth_limit":0,"concurrency_limit'
    '":0,"budget":0},"by_type":{}},"safety_stops":0,"is_error":false,"num_turns":3,"s'
    'ubtype":"success","api_error_status":null,"result":"done\\n```json\\n{\\"status'
    '\\": \\"COMPLETE\\"}\\n```","ttft_ms":203,"type":"result","duration_ms":498,'
    '"uuid":"5d32166c-a0a8-4788-bd39-2b5b76d3b9ea","ttft_stream_ms":201,"time_to_request_'
    'ms":182,"first_content_frame_ms":201,"queued_turn_count":0,"result_index":0}\n'
)

# --max-budget-usd ran out after the first call: no "result", an "errors"
# list, and a top-level "usage" of zeros (modelUsage has the tokens).
REAL_BUDGET = (
    '{"duration_api_ms":0,"stop_reason":"tool_use","session_id":"078f2fc3-9ee8-4cca-a'
    'cad-a6269845c52c","total_cost_usd":0.24000000000000002,"usage":{"output_tokens_detai'
    'ls":{"thinking_tokens":0},"input_tokens":0,"cache_creation_input_tokens":0,"cache_re'
    'ad_input_tokens":0,"output_tokens":0,"server_tool_use":{"web_search_requests":0,"web'
    '_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_'
    'tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"spe'
    'ed":"standard","fallback_credit":null},"modelUsage":{"claude-opus-5-5":{"inputTo'
    'kens":50000,"outputTokens":2000,"cacheReadInputTokens":0,"cacheCreationInputTokens":'
    '0,"webSearchRequests":0,"costUSD":0.24000000000000002,"contextWindow":1000000,"maxOu'
    'tputTokens":128000,"thinkingTokens":0,"cacheCreationEphemeral5mInputTokens":0,"cache'
    'CreationEphemeral1hInputTokens":0,"canonicalModel":"claude-opus-5-5","provider":"fir'
    'stParty","costBasis":"list"}},"permission_denials":[],"terminal_reason":"budget_'
    'exhausted","fast_mode_state":"off","fast_mode_disabled_reason":"sdk_opt_in_requi'
    'red","subagent_stats":{"spawned":0,"requested":{"background":0,"foreground":0,"u'
    'nset":0},"started_in_background":0,"max_depth":0,"spawned_by_subagents":0,"completed'
    '":0,"failed":0,"killed":{"parent":0,"user":0,"system":0},"refused":{"depth_l'
    'imit":0,"concurrency_limit":0,"budget":0},"by_type":{}},"safety_stops":0,"is_err'
    'or":true,"num_turns":1,"subtype":"error_max_budget_usd","errors":["Reached maxim'
    'um budget ($0.01)"],"type":"result","duration_ms":272,"uuid":"f4ccb2fb-d86e-4e33'
    '-a72a-fc43b2238409","queued_turn_count":0,"result_index":0}\n'
)

# An HTTP 400 error object from the API: subtype "success" but is_error.
REAL_API_ERROR = (
    '{"duration_api_ms":0,"stop_reason":"stop_sequence","session_id":"ebcd5aa0-b47c-4'
    'fd1-93f4-eab9242ed5ac","total_cost_usd":0,"usage":{"output_tokens_details":{"thinkin'
    'g_tokens":0},"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_toke'
    'ns":0,"output_tokens":0,"server_tool_use":{"web_search_requests":0,"web_fetch_reques'
    'ts":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0'
    ',"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"speed":"stan'
    'dard","fallback_credit":null},"modelUsage":{},"permission_denials":[],"terminal_reas'
    'on":"api_error","fast_mode_state":"off","fast_mode_disabled_reason":"sdk_opt_in_'
    'required","subagent_stats":{"spawned":0,"requested":{"background":0,"foreground"'
    ':0,"unset":0},"started_in_background":0,"max_depth":0,"spawned_by_subagents":0,"'
    'completed":0,"failed":0,"killed":{"parent":0,"user":0,"system":0},"refused":'
    '{"depth_limit":0,"concurrency_limit":0,"budget":0},"by_type":{}},"safety_stops":'
    '0,"is_error":true,"num_turns":1,"subtype":"success","api_error_status":400,"api_'
    'error_type":"invalid_request_error","result":"API Error: 400 messages.0: scripted re'
    'fusal","type":"result","duration_ms":545,"uuid":"10bcd001-7493-49ab-b1ea-8ecd7f7'
    'a86c8","queued_turn_count":0,"result_index":0}\n'
)


def test_parse_a_real_success() -> None:
    out = PROFILE.parse(REAL_SUCCESS, "")
    assert not out.is_error and out.error is None
    assert out.text == 'done\n```json\n{"status": "COMPLETE"}\n```'
    assert extract_json(out.text) == {"status": "COMPLETE"}
    assert out.session_id == "1f6cddea-ff47-4a73-b83d-20b18cce44b3"
    assert out.model == "claude-opus-5-5"
    assert (out.usage.input_tokens, out.usage.output_tokens) == (1850, 185)
    assert (out.usage.cache_read_tokens, out.usage.cache_write_tokens) == (1900, 900)
    assert out.usage.cost_usd == pytest.approx(0.01598) and out.usage.turns == 3


def test_parse_a_real_budget_stop() -> None:
    out = PROFILE.parse(REAL_BUDGET, "")
    assert out.is_error and out.error == "Reached maximum budget ($0.01)"
    assert out.text == "" and out.session_id == "078f2fc3-9ee8-4cca-acad-a6269845c52c"
    assert (out.usage.input_tokens, out.usage.output_tokens) == (50_000, 2_000)
    assert out.usage.turns == 1 and out.usage.cost_usd == pytest.approx(0.24)


def test_parse_a_real_api_error() -> None:
    out = PROFILE.parse(REAL_API_ERROR, "")
    assert out.is_error and out.error == "API Error: 400 messages.0: scripted refusal"
    assert out.model is None and out.usage.cost_usd == 0.0
    assert out.session_id == "ebcd5aa0-b47c-4fd1-93f4-eab9242ed5ac"


def test_parse_the_result_line_of_stream_json_and_stray_lines() -> None:
    init = json.dumps({"type": "system", "subtype": "init", "session_id": "s"})
    out = PROFILE.parse(f"a warning\n{init}\n{REAL_SUCCESS}", "")
    assert not out.is_error and out.session_id == "1f6cddea-ff47-4a73-b83d-20b18cce44b3"
    listed = PROFILE.parse(json.dumps([json.loads(init), json.loads(REAL_SUCCESS)]), "")
    assert listed.usage.turns == 3


@pytest.mark.parametrize(
    ("stdout", "stderr", "said"),
    [
        ("", "", "no output from claude"),
        ("", "Error: Invalid API key\n", "Invalid API key"),
        ("<html>502 Bad Gateway</html>", "", "502 Bad Gateway"),
        ('{"type": "assistant"}', "boom\n", "boom"),
        ("[1, 2", "", "[1, 2"),
        ("[" * 100_000, "", "no JSON result"),
        ('{"type": "result", "is_error": true}', "last words\n", "last words"),
        ('{"type": "result", "subtype": "error_during_execution"}', "", "error_during_execution"),
    ],
)
def test_parse_garbage_is_an_error_and_never_raises(stdout: str, stderr: str, said: str) -> None:
    out = PROFILE.parse(stdout, stderr)
    assert out.is_error and out.error and said in out.error and len(out.error) <= 300


def test_parse_odd_field_types_do_not_raise() -> None:
    odd = {
        "type": "result",
        "subtype": "success",
        "result": 42,
        "session_id": 7,
        "total_cost_usd": "1.0",
        "num_turns": True,
        "usage": [],
        "modelUsage": {"m": {"inputTokens": "9", "outputTokens": None}, "n": 5},
    }
    out = PROFILE.parse(json.dumps(odd), "")
    assert not out.is_error and out.text == "" and out.session_id is None
    assert out.model == "m" and out.usage.input_tokens == 0
    assert out.usage.cost_usd is None and out.usage.turns is None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_FIELDS = st.sampled_from(
    "result session_id is_error subtype errors usage modelUsage total_cost_usd num_turns".split()
)


@given(st.text(), st.text())
def test_parse_never_raises_on_any_text(stdout: str, stderr: str) -> None:
    out = PROFILE.parse(stdout, stderr)
    assert isinstance(out, AgentOutput)
    assert out.error is None or len(out.error) <= 300


@given(st.dictionaries(_FIELDS, _JSON))
def test_parse_never_raises_on_any_result_shape(fields: dict[str, Any]) -> None:
    out = PROFILE.parse(json.dumps({"type": "result", **fields}), "stderr line")
    assert isinstance(out.text, str) and isinstance(out.usage.input_tokens, int)
    assert out.is_error == (out.error is not None)
