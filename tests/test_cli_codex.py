"""The Codex CLI profile, on the real ``codex`` binary and a scripted model.

Only the model is scripted: ``OpenAIResponsesServer`` speaks the OpenAI
Responses API on 127.0.0.1, and the real Codex CLI, its ``apply_patch`` and
shell tools, its sandbox, files and processes do the rest, run through the
runner's own ``run_process``. Each CLI run is hermetic the way an operator's
would be configured: a temporary HOME and CODEX_HOME whose ``config.toml``
names the endpoint (``openai_base_url``), ``CODEX_API_KEY`` a dummy key, and
every proxy variable pointing at a trap that records (and refuses) any
connection Codex tries beyond 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.embedded.models.base import Script, Turn
from orchestrator.embedded.models.openai_responses import ApiError, OpenAIResponsesServer
from orchestrator.inbound.notice_extract import extract_notice
from tests.agents import agent_cli
from workers.adapters.supervise import ProcessResult, run_process
from workers.runner.profiles.base import AgentOutput, RunSpec, parse_version
from workers.runner.profiles.codex import MAX_ARG_BYTES, PROFILE, toml_string

MODEL = "gpt-5.5"  # in Codex's catalogue: it offers apply_patch as a freeform tool
RUN_TIMEOUT = 120.0
NOTICE = {"status": "COMPLETE", "agent": "tim", "changes": {"files": ["notes.md"]}}
FINAL = f"I wrote notes.md and fixed README.md.\n\n```json\n{json.dumps(NOTICE)}\n```\n"


# --- the harness --------------------------------------------------------------
@dataclass
class Box:
    """One test's directories: nothing of the machine's own HOME is used."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def codex_home(self) -> Path:
        return self.home / ".codex"

    @property
    def workdir(self) -> Path:
        return self.root / "tree"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def outside(self) -> Path:
        """Another directory under /tmp, beside the tree: not the agent's to write."""
        return self.root / "elsewhere"


@pytest.fixture
def box(tmp_path: Path) -> Box:
    made = Box(tmp_path)
    for path in (made.codex_home, made.workdir, made.scratch, made.outside):
        path.mkdir(parents=True)
    return made


@dataclass
class Trap:
    """A proxy that answers 502 to everything and remembers what was asked."""

    url: str = ""
    seen: list[str] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        self.seen.append(line.decode("latin-1").strip())
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.fixture
async def trap() -> AsyncIterator[Trap]:
    made = Trap()
    server = await asyncio.start_server(made.handle, "127.0.0.1", 0)
    made.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield made
    finally:
        server.close()
        await server.wait_closed()


def spec_for(box: Box, prompt: str = "Write notes.md.", **overrides: Any) -> RunSpec:
    values: dict[str, Any] = {
        "agent": "tim",
        "role": "developer",
        "model": MODEL,
        "workdir": box.workdir,
        "prompt": prompt,
        "scratch": box.scratch,
    }
    return RunSpec(**{**values, **overrides})


def agent_env(box: Box, trap: Trap) -> dict[str, str]:
    """What the runner would pass: the basics, the key, and (tests only) the trap."""
    proxies = {name: trap.url for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")}
    proxies |= {name.lower(): url for name, url in proxies.items()}
    local = "127.0.0.1,localhost"
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(box.home),
        "LANG": "C.UTF-8",
        "CODEX_HOME": str(box.codex_home),
        "CODEX_API_KEY": "test-key",
        **proxies,
        "NO_PROXY": local,
        "no_proxy": local,
    }


async def run_codex(
    box: Box, server: OpenAIResponsesServer, spec: RunSpec, trap: Trap
) -> tuple[ProcessResult, AgentOutput]:
    """One attempt, as the runner makes it: the profile's argv, supervised."""
    (box.codex_home / "config.toml").write_text(f'openai_base_url = "{server.url}/v1"\n')
    invocation = PROFILE.invocation(spec, agent_cli("codex"))
    for path, text in invocation.files.items():
        path.write_text(text)
    result = await run_process(
        invocation.argv,
        stdin=invocation.stdin,
        cwd=spec.workdir,
        env={**agent_env(box, trap), **invocation.env},
        timeout=RUN_TIMEOUT,
        kill_grace=5.0,
        output_limit=4 * 1024 * 1024,
        on_line=lambda _stream, _line: None,
    )
    assert result.error is None and not result.timed_out, result
    return result, PROFILE.parse(result.stdout, result.stderr_tail)


def patch(*ops: str) -> Turn:
    """An ``apply_patch`` call (Codex's freeform edit tool) with these file ops."""
    body = "".join(ops)
    return Turn(tool="apply_patch", arguments={"input": f"*** Begin Patch\n{body}*** End Patch\n"})


def tool_outputs(request: dict[str, Any]) -> list[str]:
    """What Codex sent back for the tool calls, in a request's input."""
    kinds = ("function_call_output", "custom_tool_call_output")
    return [str(i.get("output")) for i in request.get("input", []) if i.get("type") in kinds]


def texts(request: dict[str, Any]) -> list[str]:
    """Every text of every message in a request's input."""
    found = []
    for item in request.get("input", []):
        if item.get("type") == "message":
            found += [c.get("text", "") for c in item.get("content", []) if isinstance(c, dict)]
    return found


def metadata(request: dict[str, Any]) -> dict[str, Any]:
    """What Codex says about the turn in its ``x-codex-turn-metadata`` header."""
    return json.loads(request["headers"]["x-codex-turn-metadata"])


def raising(error: ApiError) -> Any:
    def responder(_: dict[str, Any]) -> Turn:
        raise error

    return responder


# --- the real CLI ---------------------------------------------------------------
async def test_codex_edits_files_through_its_own_tool_and_answers(box: Box, trap: Trap) -> None:
    (box.workdir / "README.md").write_text("# Project\nold line\n")
    script = Script(
        [
            patch(
                "*** Add File: notes.md\n+# Notes\n+written by the agent\n",
                "*** Update File: README.md\n@@\n # Project\n-old line\n+new line\n",
            ),
            Turn(text=FINAL),
        ]
    )
    async with OpenAIResponsesServer(script) as server:
        result, out = await run_codex(box, server, spec_for(box), trap)
    assert result.exit_code == 0, result.stderr_tail
    assert (box.workdir / "notes.md").read_text() == "# Notes\nwritten by the agent\n"
    assert (box.workdir / "README.md").read_text() == "# Project\nnew line\n"
    first, second = server.requests
    offered = {t.get("name"): t.get("type") for t in first["tools"]}
    assert offered.get("apply_patch") == "custom"  # the tool the script called
    assert "Success" in tool_outputs(second)[0]
    assert not out.is_error, out.error
    assert out.text == FINAL
    assert extract_notice(out.text) == NOTICE


async def test_a_write_outside_the_tree_is_refused(box: Box, trap: Trap) -> None:
    evil_patch, evil_shell = box.outside / "by-patch.txt", box.outside / "by-shell.txt"
    script = Script(
        [
            patch(f"*** Add File: {evil_patch}\n+escaped\n"),
            Turn(tool="exec_command", arguments={"cmd": f"echo escaped > {evil_shell}"}),
            Turn(tool="exec_command", arguments={"cmd": "echo inside > inside.txt"}),
            Turn(text="I tried."),
        ]
    )
    async with OpenAIResponsesServer(script) as server:
        result, out = await run_codex(box, server, spec_for(box), trap)
    assert result.exit_code == 0, result.stderr_tail
    assert not evil_patch.exists() and not evil_shell.exists()
    assert list(box.outside.iterdir()) == []
    assert (box.workdir / "inside.txt").read_text() == "inside\n"  # the shell itself works
    answers = tool_outputs(server.requests[-1])
    assert "rejected" in answers[0]  # apply_patch: writing outside of the project
    assert "Read-only file system" in answers[1]  # the sandbox's read-only mounts
    assert out.text == "I tried." and not out.is_error
    assert {metadata(r)["sandbox_mode"] for r in server.requests} == {"workspace-write"}


async def test_bypass_is_the_clis_own_flag_and_only_on_request(box: Box, trap: Trap) -> None:
    outside = box.outside / "allowed.txt"
    script = Script(
        [Turn(tool="exec_command", arguments={"cmd": f"echo out > {outside}"}), Turn(text="ok")]
    )
    async with OpenAIResponsesServer(script) as server:
        result, out = await run_codex(box, server, spec_for(box, bypass_permissions=True), trap)
    assert result.exit_code == 0 and not out.is_error, result.stderr_tail
    assert outside.read_text() == "out\n"
    assert metadata(server.requests[0])["sandbox_mode"] == "danger-full-access"


async def test_usage_session_and_turns_are_what_the_server_said(box: Box, trap: Trap) -> None:
    turns = [
        Turn(tool="exec_command", arguments={"cmd": "true"}, input_tokens=1200, output_tokens=70),
        Turn(
            tool="exec_command",
            arguments={"cmd": "ls"},
            input_tokens=300,
            output_tokens=40,
            cache_read_tokens=1100,
        ),
        Turn(
            text="Counted.",
            input_tokens=90,
            output_tokens=15,
            cache_read_tokens=1400,
            cache_write_tokens=25,
        ),
    ]
    async with OpenAIResponsesServer(Script(turns)) as server:
        result, out = await run_codex(box, server, spec_for(box), trap)
    assert result.exit_code == 0, result.stderr_tail
    assert len(server.requests) == 3
    assert out.usage.input_tokens == 1200 + 300 + 90  # uncached, as scripted
    assert out.usage.output_tokens == 70 + 40 + 15
    assert out.usage.cache_read_tokens == 1100 + 1400
    assert out.usage.cache_write_tokens == 25
    assert out.usage.cost_usd is None  # Codex reports no cost
    assert out.usage.turns == 1  # Codex's own turn: one prompt to its final answer
    assert out.session_id and {r["headers"]["session-id"] for r in server.requests} == {
        out.session_id
    }
    assert {r["model"] for r in server.requests} == {MODEL}
    assert out.model is None  # codex exec --json never names the model
    assert out.text == "Counted."


async def test_resume_sends_the_first_runs_turns_again(box: Box, trap: Trap) -> None:
    script = Script([Turn(text="First answer: the parser needs a fix."), Turn(text=FINAL)])
    async with OpenAIResponsesServer(script) as server:
        _, first = await run_codex(box, server, spec_for(box, prompt="Look at the parser."), trap)
        assert first.session_id and not first.is_error, first.error
        spec = spec_for(box, prompt="Now fix it.", resume_session=first.session_id)
        result, second = await run_codex(box, server, spec, trap)
    assert result.exit_code == 0, result.stderr_tail
    assert len(server.requests) == 2
    resumed = texts(server.requests[1])
    assert "Look at the parser." in resumed
    assert "First answer: the parser needs a fix." in resumed
    assert resumed[-1] == "Now fix it."
    assert metadata(server.requests[1])["sandbox_mode"] == "workspace-write"  # still headless
    assert second.session_id == first.session_id
    assert second.text == FINAL and not second.is_error
    # Codex's usage after a resume is the session's running total.
    assert second.usage.input_tokens == 2 * Turn().input_tokens


async def test_resuming_an_unknown_session_is_an_error(box: Box, trap: Trap) -> None:
    unknown = "01a235b8-019e-7db2-a845-e2483fe07899"
    async with OpenAIResponsesServer(Script([Turn(text="never")])) as server:
        result, out = await run_codex(box, server, spec_for(box, resume_session=unknown), trap)
    assert result.exit_code != 0
    assert server.requests == []
    assert out.is_error and out.error and "no rollout found" in out.error


@pytest.mark.parametrize(
    "error",
    [
        ApiError(
            400, "invalid_request_error", "The model `gpt-5.5` does not exist.", "model_not_found"
        ),
        ApiError(
            400,
            "invalid_request_error",
            "Your prompt was flagged.",
            "invalid_prompt",
            in_stream=True,
        ),
    ],
    ids=["http-400", "response.failed"],
)
async def test_an_api_error_is_an_error_result(box: Box, trap: Trap, error: ApiError) -> None:
    async with OpenAIResponsesServer(Script(responder=raising(error))) as server:
        result, out = await run_codex(box, server, spec_for(box), trap)
    assert result.exit_code != 0
    assert len(server.requests) == 1  # neither error is retried
    assert out.is_error and out.error == error.message
    assert out.session_id  # the session exists, for a later resume


async def test_a_run_reaches_nothing_but_its_model_endpoint(box: Box, trap: Trap) -> None:
    script = Script(
        [Turn(tool="exec_command", arguments={"cmd": "echo ok > ok.txt"}), Turn(text="ok")]
    )
    async with OpenAIResponsesServer(script) as server:
        result, out = await run_codex(box, server, spec_for(box), trap)
    assert result.exit_code == 0 and out.text == "ok", result.stderr_tail
    assert trap.seen == []  # no analytics, no plugin sync, no update check
    assert server.side_requests == []
    assert server.websocket_attempts >= 1  # refused with 426: Codex falls back to HTTP


async def test_the_role_goes_in_as_developer_instructions(box: Box, trap: Trap) -> None:
    role = 'You are "Tim", the developer.\n\tRule: be \\strict\\ — ✓ 😀'
    async with OpenAIResponsesServer(Script([Turn(text="ok")])) as server:
        _, out = await run_codex(box, server, spec_for(box, role_text=role), trap)
    assert not out.is_error, out.error
    developer = [
        c["text"]
        for item in server.requests[0]["input"]
        if item.get("type") == "message" and item.get("role") == "developer"
        for c in item["content"]
    ]
    assert role in developer
    assert texts(server.requests[0])[-1] == "Write notes.md."


async def test_version_is_at_least_the_tested_minimum() -> None:
    argv = PROFILE.version_argv(agent_cli("codex"))
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    version = parse_version(stdout.decode())
    assert version is not None and version >= PROFILE.min_version


# --- parse, on real output ----------------------------------------------------
# Captured from codex-cli 0.171.0 against OpenAIResponsesServer: an apply_patch
# call (120 input, 40 cached, 30 out) then a text (200 input, 8 cache writes, 25 out).
REAL_RUN = """\
{"type":"thread.started","thread_id":"01a235b8-019e-7db2-a845-e2483fe07834"}
{"type":"turn.started"}
{"type":"item.started","item":{"id":"item_0","type":"file_change","changes":[{"path":"/tmp/cap-u2qxa632/ws/notes.md","kind":"add"}],"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_0","type":"file_change","changes":[{"path":"/tmp/cap-u2qxa632/ws/notes.md","kind":"add"}],"status":"completed"}}
{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"Done.\\n```json\\n{\\"status\\": \\"COMPLETE\\"}\\n```"}}
{"type":"turn.completed","usage":{"input_tokens":368,"cached_input_tokens":40,"cache_write_input_tokens":8,"output_tokens":55,"reasoning_output_tokens":0}}
"""  # noqa: E501
REAL_STDERR = (
    "WARNING: proceeding, even though we could not create PATH aliases: Refusing to create helper"
    ' binaries under temporary dir "/tmp" (codex_home:'
    ' AbsolutePathBuf("/tmp/cap-u2qxa632/home/.codex"))\n'
    "2026-12-02T07:46:21.257568Z ERROR codex_api::endpoint::responses_websocket: failed to connect"
    " to Responses WebSocket stage=Unknown\n"
)
# The same session resumed with one more text turn (50 input, 5 out): the running total.
REAL_RESUME = """\
{"type":"thread.started","thread_id":"01a235b8-019e-7db2-a845-e2483fe07834"}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"again"}}
{"type":"turn.completed","usage":{"input_tokens":418,"cached_input_tokens":40,"cache_write_input_tokens":8,"output_tokens":60,"reasoning_output_tokens":0}}
"""
# A 400 model_not_found from the server.
REAL_FAILURE = """\
{"type":"thread.started","thread_id":"01a235b8-04e9-7152-8f73-83f56f21fa1e"}
{"type":"turn.started"}
{"type":"error","message":"The model `gpt-5.5` does not exist or you do not have access to it."}
{"type":"turn.failed","error":{"message":"The model `gpt-5.5` does not exist or you do not have access to it."}}
"""  # noqa: E501
# HTTP 500s until the retries ran out, and what Codex then says (not the server's words).
REAL_RETRIES = """\
{"type":"thread.started","thread_id":"01a235b5-a7fd-7743-b313-7f9a0d2fcb4b"}
{"type":"turn.started"}
{"type":"error","message":"Reconnecting... 1/5 (We\u2019re currently experiencing high demand, which may cause temporary errors.)"}
{"type":"error","message":"Reconnecting... 5/5 (We\u2019re currently experiencing high demand, which may cause temporary errors.)"}
{"type":"error","message":"We\u2019re currently experiencing high demand, which may cause temporary errors."}
{"type":"turn.failed","error":{"message":"We\u2019re currently experiencing high demand, which may cause temporary errors."}}
"""  # noqa: E501
# Retries that succeeded after all.
REAL_RECOVERED = """\
{"type":"thread.started","thread_id":"01a235af-a9a5-7783-a3f5-930ef275fcd0"}
{"type":"turn.started"}
{"type":"error","message":"Reconnecting... 2/5 (stream disconnected before completion: failed to lookup address information: Name does not resolve)"}
{"type":"item.completed","item":{"id":"item_0","type":"error","message":"Falling back from WebSockets to HTTPS transport. stream disconnected before completion"}}
{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"hello there"}}
{"type":"turn.completed","usage":{"input_tokens":11,"cached_input_tokens":3,"cache_write_input_tokens":0,"output_tokens":7,"reasoning_output_tokens":0}}
"""  # noqa: E501
# Codex stopping before any JSON: a resume of a session it does not have, a bad config.
REAL_NO_SESSION = (
    "WARNING: proceeding, even though we could not create PATH aliases: Refusing to create helper"
    ' binaries under temporary dir "/tmp" (codex_home: AbsolutePathBuf("/tmp/cap/home/.codex"))\n'
    "Error: thread/resume: thread/resume failed: no rollout found for thread id"
    " 01a235b8-019e-7db2-a845-e2483fe07899 (code -32600)\n"
)
REAL_BAD_CONFIG = (
    "Error loading config.toml: unknown variant `bogus`, expected one of `read-only`,"
    " `workspace-write`, `danger-full-access`\nin `sandbox_mode`\n"
)


def test_parse_a_real_run() -> None:
    out = PROFILE.parse(REAL_RUN, REAL_STDERR)
    assert out.text == 'Done.\n```json\n{"status": "COMPLETE"}\n```'
    assert extract_notice(out.text) == {"status": "COMPLETE"}
    assert out.session_id == "01a235b8-019e-7db2-a845-e2483fe07834"
    assert out.model is None
    assert out.usage.input_tokens == 120 + 200
    assert out.usage.cache_read_tokens == 40
    assert out.usage.cache_write_tokens == 8
    assert out.usage.output_tokens == 55
    assert out.usage.cost_usd is None and out.usage.turns == 1
    assert not out.is_error and out.error is None


def test_parse_a_real_resume() -> None:
    out = PROFILE.parse(REAL_RESUME, "")
    assert out.text == "again" and out.session_id == "01a235b8-019e-7db2-a845-e2483fe07834"
    assert (out.usage.input_tokens, out.usage.output_tokens) == (320 + 50, 60)


@pytest.mark.parametrize(
    ("stdout", "error"),
    [
        (REAL_FAILURE, "The model `gpt-5.5` does not exist or you do not have access to it."),
        (
            REAL_RETRIES,
            "We\u2019re currently experiencing high demand, which may cause temporary errors.",
        ),
    ],
)
def test_parse_a_real_failure(stdout: str, error: str) -> None:
    out = PROFILE.parse(stdout, REAL_STDERR)
    assert out.is_error and out.error == error
    assert out.session_id is not None and out.text == ""
    assert out.usage.turns == 1


def test_parse_retries_that_recovered_are_no_error() -> None:
    out = PROFILE.parse(REAL_RECOVERED, "")
    assert not out.is_error and out.text == "hello there"
    assert (out.usage.input_tokens, out.usage.cache_read_tokens) == (8, 3)


@pytest.mark.parametrize(
    ("stderr", "error"),
    [
        (REAL_NO_SESSION, REAL_NO_SESSION.splitlines()[-1]),
        (REAL_BAD_CONFIG, REAL_BAD_CONFIG.splitlines()[0]),
        ("", "codex printed no JSON events"),
    ],
)
def test_parse_without_json_says_why(stderr: str, error: str) -> None:
    out = PROFILE.parse("", stderr)
    assert out.is_error and out.error == error and out.text == ""


@pytest.mark.parametrize(
    "stdout",
    [
        "not json at all\n",
        "[1, 2]\n{]\n",
        '{"type": "turn.completed", "usage": "lots"}\n',  # a finished turn: no error, no tokens
        '{"type": "item.completed", "item": {"type": "agent_message", "text": 7}}\n',
        REAL_RUN[: len(REAL_RUN) // 2],  # cut off mid-run
        "\x00\xff garbage " * 100,
    ],
)
def test_parse_never_raises_on_garbage(stdout: str) -> None:
    out = PROFILE.parse(stdout, "boom\n")
    assert isinstance(out, AgentOutput)
    if '"turn.completed"' not in stdout:
        assert out.is_error and out.error
    assert out.usage.input_tokens >= 0


def test_a_long_error_is_cut_short() -> None:
    stdout = json.dumps({"type": "turn.failed", "error": {"message": "x" * 10_000}})
    out = PROFILE.parse(stdout, "")
    assert out.is_error and out.error is not None and len(out.error) <= 500


# --- the argv, pure -------------------------------------------------------------
def test_argv_of_a_normal_run(tmp_path: Path) -> None:
    spec = RunSpec(
        agent="tim", role="developer", model="gpt-5.5", workdir=tmp_path, prompt="Do it."
    )
    invocation = PROFILE.invocation(spec, "/bin/codex")
    assert invocation.argv == [
        "/bin/codex", "exec", "--json", "--skip-git-repo-check", "--cd", str(tmp_path),
        "--sandbox", "workspace-write",
        "-c", 'approval_policy="never"',
        "-c", "sandbox_workspace_write.exclude_slash_tmp=true",
        "-c", "sandbox_workspace_write.exclude_tmpdir_env_var=true",
        "-c", "sandbox_workspace_write.network_access=false",
        "-c", "analytics.enabled=false", "--disable", "plugins",
        "--model", "gpt-5.5",
        "-",
    ]  # fmt: skip
    assert invocation.stdin == "Do it." and invocation.env == {} and invocation.files == {}


def test_argv_of_a_resume_and_of_a_bypass(tmp_path: Path) -> None:
    spec = RunSpec(
        agent="tim",
        role="developer",
        model=None,
        workdir=tmp_path,
        prompt="Again.",
        resume_session="01a235b8-019e-7db2-a845-e2483fe07834",
        bypass_permissions=True,
        budget_usd=3.0,  # Codex has no budget flag
    )
    argv = PROFILE.invocation(spec, "codex").argv
    assert argv == [
        "codex", "exec", "--json", "--skip-git-repo-check", "--cd", str(tmp_path),
        "--dangerously-bypass-approvals-and-sandbox",
        "-c", "analytics.enabled=false", "--disable", "plugins",
        "resume", "01a235b8-019e-7db2-a845-e2483fe07834",
        "-",
    ]  # fmt: skip


def test_role_text_as_developer_instructions(tmp_path: Path) -> None:
    role = 'Quotes " and \\ and\nnewlines\tand \x01 \x7f, ünï ✓ 😀'
    spec = RunSpec(
        agent="tim", role="developer", model=None, workdir=tmp_path, prompt="P", role_text=role
    )
    invocation = PROFILE.invocation(spec, "codex")
    override = invocation.argv[invocation.argv.index("-") - 1]
    assert tomllib.loads(override) == {"developer_instructions": role}
    assert invocation.stdin == "P"


def test_a_role_too_long_for_argv_goes_before_the_prompt(tmp_path: Path) -> None:
    role = "Be careful. " * (MAX_ARG_BYTES // 10)
    spec = RunSpec(
        agent="tim", role="developer", model=None, workdir=tmp_path, prompt="P", role_text=role
    )
    invocation = PROFILE.invocation(spec, "codex")
    assert not any(a.startswith("developer_instructions=") for a in invocation.argv)
    assert invocation.stdin.startswith("# Your role\n\n" + role)
    assert invocation.stdin.endswith("\n\nP")


@pytest.mark.parametrize("text", ["", "plain", '"', "\\", "\n\r\t\b\f", "\x00\x1f\x7f", "😀\u2028"])
def test_toml_string_round_trips(text: str) -> None:
    assert tomllib.loads(f"v = {toml_string(text)}")["v"] == text


# --- the server's own protocol --------------------------------------------------
AUTH = {"Authorization": "Bearer test-key"}


async def sse_events(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """The data of each server-sent event, checked against its ``event:`` line."""
    events, kind = [], None
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: ") :])
            assert data["type"] == kind
            events.append(data)
    return events


async def test_server_streams_a_function_call_then_text() -> None:
    tools = [{"type": "function", "name": "exec_command", "parameters": {"type": "object"}}]
    script = Script([Turn(tool="exec_command", arguments={"cmd": "ls -la"}), Turn(text="x" * 60)])
    async with OpenAIResponsesServer(script) as server, aiohttp.ClientSession() as http:
        body = {"model": "m", "stream": True, "input": "hi", "tools": tools}
        async with http.post(f"{server.url}/v1/responses", json=body, headers=AUTH) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            call = await sse_events(resp)
        async with http.post(f"{server.url}/v1/responses", json=body, headers=AUTH) as resp:
            text = await sse_events(resp)
    assert [e["sequence_number"] for e in call] == list(range(len(call)))
    assert [e["type"] for e in call][:3] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ]
    item = call[-1]["response"]["output"][0]
    assert item["type"] == "function_call" and item["name"] == "exec_command"
    assert item["call_id"].startswith("call_") and item["id"].startswith("fc_")
    deltas = "".join(
        e["delta"] for e in call if e["type"] == "response.function_call_arguments.delta"
    )
    assert json.loads(deltas) == {"cmd": "ls -la"}
    assert call[-1]["type"] == "response.completed"
    assert call[-1]["response"]["usage"]["input_tokens"] == 100
    pieces = [e["delta"] for e in text if e["type"] == "response.output_text.delta"]
    assert len(pieces) > 1 and "".join(pieces) == "x" * 60
    assert text[-1]["response"]["output"][0]["content"][0]["text"] == "x" * 60


async def test_server_calls_a_custom_tool_in_a_namespace_with_raw_input() -> None:
    tools = [
        {"type": "namespace", "name": "ns", "tools": [{"type": "custom", "name": "Apply_Patch"}]}
    ]
    script = Script(
        [Turn(tool="apply_patch", arguments={"input": "*** Begin Patch\n"}, cache_read_tokens=7)]
    )
    async with OpenAIResponsesServer(script) as server, aiohttp.ClientSession() as http:
        body = {"model": "m", "input": [], "tools": tools}  # not streamed: one JSON
        async with http.post(f"{server.url}/responses", json=body, headers=AUTH) as resp:
            answer = await resp.json()
    item = answer["output"][0]
    assert item["type"] == "custom_tool_call" and item["name"] == "Apply_Patch"
    assert item["input"] == "*** Begin Patch\n"
    assert answer["usage"]["input_tokens"] == 107
    assert answer["usage"]["input_tokens_details"] == {"cached_tokens": 7}


async def test_server_side_requests_take_no_turn() -> None:
    script = Script([Turn(text="main")])
    side = {**AUTH, "x-openai-subagent": "compact"}
    meta = {**AUTH, "x-codex-turn-metadata": json.dumps({"request_kind": "memory"})}
    async with OpenAIResponsesServer(script) as server, aiohttp.ClientSession() as http:
        for headers in (side, meta):
            async with http.post(
                f"{server.url}/v1/responses", json={"model": "m"}, headers=headers
            ) as r:
                assert (await r.json())["output"][0]["content"][0]["text"] == server.side_text
        turn = {**AUTH, "x-codex-turn-metadata": json.dumps({"request_kind": "turn"})}
        async with http.post(f"{server.url}/v1/responses", json={"model": "m"}, headers=turn) as r:
            assert (await r.json())["output"][0]["content"][0]["text"] == "main"
    assert len(server.side_requests) == 2 and len(server.requests) == 1 and script.used == 1


async def test_server_answers_malformed_requests_with_api_errors() -> None:
    async with (
        OpenAIResponsesServer(Script([Turn(text="never")])) as server,
        aiohttp.ClientSession() as http,
    ):
        url = f"{server.url}/v1/responses"
        cases = [
            (http.post(url, json={"model": "m"}), 401, None),
            (http.post(url, data=b"{not json", headers=AUTH), 400, None),
            (http.post(url, json={"input": "hi"}, headers=AUTH), 400, "missing_required_parameter"),
            (http.post(url, json={"model": "m", "input": 3}, headers=AUTH), 400, "invalid_type"),
            (
                http.get(url, headers={**AUTH, "Upgrade": "websocket", "Connection": "Upgrade"}),
                426,
                None,
            ),
            (http.post(f"{server.url}/v1/chat/completions", json={}, headers=AUTH), 404, None),
        ]
        for call, status, code in cases:
            async with call as resp:
                body = await resp.json()
                assert resp.status == status, body
                assert set(body["error"]) == {"message", "type", "param", "code"}
                assert (
                    body["error"]["type"] == "invalid_request_error"
                    and body["error"]["code"] == code
                )
                assert resp.headers["x-request-id"].startswith("req_")
        async with http.get(f"{server.url}/v1/models", headers=AUTH) as resp:
            assert (await resp.json())["object"] == "list"
    assert server.requests == [] and server.script.used == 0


async def test_server_reads_a_gzip_body() -> None:
    body = gzip.compress(json.dumps({"model": "m", "input": "hi"}).encode())
    headers = {**AUTH, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with (
        OpenAIResponsesServer(Script([Turn(text="unzipped")])) as server,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(f"{server.url}/v1/responses", data=body, headers=headers) as resp:
            assert (await resp.json())["output"][0]["content"][0]["text"] == "unzipped"
    assert server.requests[0]["input"] == "hi"
