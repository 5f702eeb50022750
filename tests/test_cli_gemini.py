"""Gemini CLI, the real binary, against the scripted Gemini API server.

Only the model is scripted: the CLI, its edit tools, the files and the
process supervision (``run_process``, as the runner runs it) are real. Each
run is hermetic: a fresh HOME with the profile's ``HEADLESS_SETTINGS`` (plus
one API attempt, so a scripted 500 fails at once instead of after ten
backoffs), TMPDIR inside the test, no environment inherited but PATH, and
the model API on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.embedded.models.base import Script, Turn
from orchestrator.embedded.models.gemini import PAIRING, ApiError, GeminiServer
from orchestrator.inbound.notice_extract import extract_notice
from tests.agents import agent_cli
from workers.adapters.supervise import ProcessResult, run_process
from workers.runner.profiles.base import AgentOutput, RunSpec, parse_version
from workers.runner.profiles.gemini import HEADLESS_SETTINGS, compose_prompt, profile

MODEL = "gemini-2.5-pro"
NOTICE = {"status": "COMPLETE", "agent": "roy", "summary": "notes marked done"}
FINAL = f"All done.\n\n```json\n{json.dumps(NOTICE)}\n```\n"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass
class Box:
    """One test's hermetic world: HOME, TMPDIR, a working tree, the server."""

    server: GeminiServer
    home: Path
    tmp: Path
    workdir: Path
    runs: list[ProcessResult] = field(default_factory=list)

    def spec(self, **overrides: Any) -> RunSpec:
        base = RunSpec(
            agent="roy",
            role="backend",
            model=MODEL,
            workdir=self.workdir,
            prompt="Mark notes.txt as done, then report.",
            role_text="You are Roy, the backend engineer.",
            scratch=self.tmp / "scratch",
        )
        return replace(base, **overrides)

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        return {
            "PATH": os.environ["PATH"],
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "GOOGLE_GEMINI_BASE_URL": self.server.url,
            "GEMINI_API_KEY": "test-key",
            **extra,
        }

    async def run(self, spec: RunSpec) -> AgentOutput:
        """The CLI run exactly as the runner runs it, and the profile's reading."""
        invocation = profile.invocation(spec, agent_cli("gemini"))
        for path, text in invocation.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        result = await run_process(
            invocation.argv,
            stdin=invocation.stdin,
            cwd=spec.workdir,
            env=self.env(invocation.env),
            timeout=120,
            kill_grace=5,
            output_limit=4 * 1024 * 1024,
            on_line=lambda stream, line: None,
        )
        assert result.error is None and not result.timed_out, result
        self.runs.append(result)
        return profile.parse(result.stdout, result.stderr_tail)


@pytest.fixture
async def box(tmp_path: Path) -> Any:
    home, tmp, workdir = tmp_path / "home", tmp_path / "tmp", tmp_path / "tree"
    for d in (home / ".gemini", tmp / "scratch", workdir):
        d.mkdir(parents=True)
    settings = json.loads(json.dumps(HEADLESS_SETTINGS))
    settings["general"]["maxAttempts"] = 1
    (home / ".gemini" / "settings.json").write_text(json.dumps(settings))
    (workdir / "notes.txt").write_text("status: draft\n")
    async with GeminiServer(api_key="test-key") as server:
        yield Box(server=server, home=home, tmp=tmp, workdir=workdir)


def function_responses(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        part["functionResponse"]
        for content in request["contents"]
        for part in content["parts"]
        if "functionResponse" in part
    ]


def texts(request: dict[str, Any]) -> list[str]:
    return [part["text"] for c in request["contents"] for part in c["parts"] if "text" in part]


def offered(request: dict[str, Any]) -> set[str]:
    return {f["name"] for t in request["tools"] for f in t.get("functionDeclarations", [])}


# --- the real CLI ----------------------------------------------------------------
async def test_the_cli_edits_a_file_in_the_working_tree(box: Box) -> None:
    notes, added = box.workdir / "notes.txt", box.workdir / "docs" / "done.md"
    box.server.script = Script(
        [
            Turn(
                tool="replace",
                arguments={
                    "file_path": str(notes),
                    "old_string": "status: draft",
                    "new_string": "status: done",
                    "instruction": "Mark the notes as done.",
                },
            ),
            Turn(tool="write_file", arguments={"file_path": str(added), "content": "# Done\n"}),
            Turn(text=FINAL),
        ]
    )
    out = await box.run(box.spec())
    assert not out.is_error, out
    assert notes.read_text() == "status: done\n"
    assert added.read_text() == "# Done\n"
    assert out.text == FINAL
    assert extract_notice(out.text) == NOTICE
    first, *later = box.server.requests
    assert {"replace", "write_file"} <= offered(first)
    assert "run_shell_command" not in offered(first)  # headless auto_edit: no shell
    assert "You are Roy, the backend engineer." in texts(first)[-1]  # the role, before the prompt
    answered = function_responses(later[-1])
    assert [r["name"] for r in answered] == ["replace", "write_file"]
    assert all("error" not in r["response"] for r in answered), answered


async def test_a_write_outside_the_working_tree_is_refused(box: Box, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target, kept = elsewhere / "evil.txt", elsewhere / "kept.txt"
    kept.write_text("original\n")
    edit = {
        "file_path": str(kept),
        "old_string": "original",
        "new_string": "owned",
        "instruction": "Own it.",
    }
    box.server.script = Script(
        [
            Turn(tool="write_file", arguments={"file_path": str(target), "content": "owned\n"}),
            Turn(tool="replace", arguments=edit),
            Turn(text="I could not write there."),
        ]
    )
    out = await box.run(box.spec())
    assert not target.exists()
    assert kept.read_text() == "original\n"
    assert not out.is_error and out.text == "I could not write there."
    refusals = function_responses(box.server.requests[-1])
    assert len(refusals) == 2
    assert all("outside the allowed workspace" in r["response"]["error"] for r in refusals), (
        refusals
    )


async def test_tokens_session_model_and_turns_are_what_the_server_reported(box: Box) -> None:
    box.server.script = Script(
        [
            Turn(
                tool="write_file",
                arguments={"file_path": str(box.workdir / "a.txt"), "content": "a\n"},
                input_tokens=1200,
                output_tokens=340,
                cache_read_tokens=500,
            ),
            Turn(text=FINAL, input_tokens=1500, output_tokens=60, cache_read_tokens=700),
        ]
    )
    out = await box.run(box.spec())
    assert not out.is_error, out
    assert out.usage.input_tokens == 1200 + 1500
    assert out.usage.output_tokens == 340 + 60
    assert out.usage.cache_read_tokens == 500 + 700
    assert out.usage.cache_write_tokens == 0
    assert out.usage.cost_usd is None  # Gemini CLI reports no cost
    assert out.usage.turns == 2 == len(box.server.requests)
    assert out.model == MODEL
    assert out.session_id and UUID.match(out.session_id)
    chats = list(
        (box.home / ".gemini" / "tmp").glob(f"*/chats/session-*-{out.session_id[:8]}.jsonl")
    )
    assert len(chats) == 1, chats  # the session the CLI saved, under that id


async def test_side_requests_do_not_consume_the_script(box: Box) -> None:
    """Without a model the CLI routes: a unary side call scores the task first."""
    box.server.script = Script([Turn(text="routed answer", input_tokens=300, output_tokens=30)])
    out = await box.run(box.spec(model=None))
    assert not out.is_error, out
    assert out.text == "routed answer"
    assert box.server.script.used == 1 and len(box.server.requests) == 1
    assert any(r["path"].endswith(":generateContent") for r in box.server.side_requests)
    main_model = box.server.requests[0]["path"].split("/models/")[1].split(":")[0]
    assert out.model == main_model
    assert out.usage.turns == 1
    assert out.usage.input_tokens == sum(r["input"] for r in box.server.reported)
    assert out.usage.output_tokens == sum(r["output"] for r in box.server.reported)
    assert {r["kind"] for r in box.server.reported} == {"main", "side"}


async def test_resume_sends_the_first_runs_turns(box: Box) -> None:
    box.server.script = Script([Turn(text="First answer: the notes are a draft.")])
    first = await box.run(box.spec(prompt="What do the notes say?"))
    assert not first.is_error and first.session_id
    box.server.script = Script([Turn(text=FINAL)])
    second = await box.run(box.spec(prompt="Now finish.", resume_session=first.session_id))
    assert not second.is_error, second
    assert second.session_id == first.session_id
    assert second.text == FINAL
    seen = texts(box.server.requests[-1])
    assert any("What do the notes say?" in t for t in seen)
    assert "First answer: the notes are a draft." in seen
    assert "Now finish." in seen[-1]
    assert second.usage.turns == 1  # this attempt's own request only


async def test_resume_after_a_tool_call_is_refused_on_0_61(box: Box) -> None:
    """Known upstream bug (gemini-cli#29365): the resumed history carries each
    tool result twice, which the Gemini API answers with 400. When a newer CLI
    fixes it this test fails: then resume works after tools too."""
    box.server.script = Script(
        [
            Turn(
                tool="write_file",
                arguments={"file_path": str(box.workdir / "a.txt"), "content": "a\n"},
            ),
            Turn(text="wrote a.txt"),
        ]
    )
    first = await box.run(box.spec())
    assert not first.is_error and first.session_id
    box.server.script = Script([Turn(text=FINAL)])
    second = await box.run(box.spec(prompt="Continue.", resume_session=first.session_id))
    assert second.is_error
    assert (
        second.error
        and "400 INVALID_ARGUMENT" in second.error
        and "function response parts" in second.error
    )
    assert box.server.script.used == 0  # refused before any turn
    assert len(function_responses(box.server.requests[-1])) == 2  # one call, two answers


async def test_resuming_an_unknown_session_is_a_readable_error(box: Box) -> None:
    out = await box.run(box.spec(resume_session="00000000-0000-4000-8000-000000000000"))
    assert out.is_error
    assert out.error and "session" in out.error.lower()
    assert box.server.requests == []


async def test_a_server_error_is_an_error_result(box: Box) -> None:
    def failing(body: dict[str, Any]) -> Turn:
        raise ApiError(500, "the scripted backend fell over")

    box.server.script = Script([], responder=failing)
    out = await box.run(box.spec())
    assert out.is_error
    assert out.error == "500 INTERNAL: the scripted backend fell over"
    assert box.runs[-1].exit_code != 0


async def test_a_rejected_api_key_is_an_error_result(box: Box) -> None:
    box.server.api_key = "another-key"
    out = await box.run(box.spec())
    assert out.is_error
    assert out.error and "API key not valid" in out.error


async def test_the_version_is_at_least_the_tested_minimum(box: Box) -> None:
    result = await run_process(
        profile.version_argv(agent_cli("gemini")),
        stdin="",
        cwd=box.workdir,
        env=box.env({}),
        timeout=120,
        kill_grace=5,
        output_limit=65536,
        on_line=lambda stream, line: None,
    )
    assert result.exit_code == 0, result
    version = parse_version(result.stdout)
    assert version is not None and version >= profile.min_version


# --- the server's own protocol ------------------------------------------------------
async def test_the_server_answers_malformed_requests_in_the_apis_shape(box: Box) -> None:
    url = f"{box.server.url}/v1beta/models/{MODEL}"
    key = {"x-goog-api-key": "test-key"}
    good = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    call = {"role": "model", "parts": [{"functionCall": {"id": "c1", "name": "f", "args": {}}}]}
    twice = {
        "role": "user",
        "parts": [{"functionResponse": {"id": "c1", "name": "f", "response": {}}}] * 2,
    }
    cases: list[tuple[str, dict[str, str], Any, int, str]] = [
        (":generateContent", {}, good, 403, "PERMISSION_DENIED"),
        (":generateContent", key, "{not json", 400, "INVALID_ARGUMENT"),
        (":generateContent", key, {**good, "prompt": "x"}, 400, "INVALID_ARGUMENT"),
        (":generateContent", key, {"contents": []}, 400, "INVALID_ARGUMENT"),
        (
            ":generateContent",
            key,
            {"contents": [{"role": "system", "parts": [{"text": "x"}]}]},
            400,
            "INVALID_ARGUMENT",
        ),
        (
            ":streamGenerateContent?alt=sse",
            key,
            {"contents": [good["contents"][0], call, twice]},
            400,
            "INVALID_ARGUMENT",
        ),
        (":embedContent", key, good, 404, "NOT_FOUND"),
    ]
    async with aiohttp.ClientSession() as http:
        for suffix, headers, body, code, status in cases:
            data = body if isinstance(body, str) else json.dumps(body)
            async with http.post(url + suffix, data=data, headers=headers) as resp:
                answer = await resp.json()
                assert (resp.status, answer["error"]["code"], answer["error"]["status"]) == (
                    code,
                    code,
                    status,
                ), (
                    suffix,
                    body,
                    answer,
                )
        assert (
            box.server.requests[-1]["contents"][2] == twice
        )  # a refused main request is still recorded
        pairing = {"contents": [good["contents"][0], call, twice]}
        async with http.post(url + ":generateContent", json=pairing, headers=key) as resp:
            assert (await resp.json())["error"]["message"] == PAIRING
        async with http.post(url + ":countTokens", json=good, headers=key) as resp:
            assert resp.status == 200 and (await resp.json())["totalTokens"] >= 1
        async with http.get(f"{box.server.url}/v1beta/models", headers=key) as resp:
            assert resp.status == 200 and (await resp.json())["models"]
    assert box.server.script.used == 0


async def test_the_stream_is_server_sent_events_whose_last_chunk_finishes(box: Box) -> None:
    box.server.script = Script(
        [Turn(text="x" * 60, input_tokens=7, output_tokens=9, cache_read_tokens=3)]
    )
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    url = f"{box.server.url}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body, headers={"x-goog-api-key": "test-key"}) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            raw = (await resp.read()).decode()
    events = [json.loads(e[len("data: ") :]) for e in raw.split("\r\n\r\n") if e]
    assert len(events) == 3
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == "x" * 60
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert all("finishReason" not in e["candidates"][0] for e in events[:-1])
    usage = events[-1]["usageMetadata"]
    assert (
        usage["promptTokenCount"],
        usage["cachedContentTokenCount"],
        usage["candidatesTokenCount"],
    ) == (10, 3, 9)
    assert usage["totalTokenCount"] == 19 and events[-1]["modelVersion"] == MODEL


# --- pure: argv, stdin, and parse on real captured output -----------------------------
def test_the_argv_of_a_normal_a_resume_and_a_bypass_run(tmp_path: Path) -> None:
    spec = RunSpec(agent="roy", role="backend", model=MODEL, workdir=tmp_path, prompt="Do it.")
    base = ["gemini", "-p", "", "--output-format", "json", "--skip-trust", "--approval-mode"]
    normal = profile.invocation(spec, "gemini")
    assert normal.argv == [*base, "auto_edit", "-m", MODEL]
    assert normal.stdin == "Do it." and normal.files == {}
    resumed = profile.invocation(replace(spec, resume_session="abc"), "gemini")
    assert resumed.argv == [*base, "auto_edit", "-m", MODEL, "--resume", "abc"]
    bypass = profile.invocation(
        replace(spec, model=None, bypass_permissions=True, budget_usd=2.0), "gemini"
    )
    assert bypass.argv == [*base, "yolo"]


def test_the_role_goes_first_and_a_slash_never_starts_the_input() -> None:
    assert compose_prompt("Be Roy.", "Do it.") == "# Your role\n\nBe Roy.\n\n# Your task\n\nDo it."
    assert compose_prompt("", "/etc is read-only").startswith("# Task\n\n/etc")
    assert compose_prompt("  ", "Do it.") == "Do it."


# A real run (the edit test's script), stdout of ``gemini -p "" --output-format json``.
REAL_SUCCESS = """{
  "session_id": "5abdf492-3827-4790-84ce-7e59b4c2441f",
  "response": "Done.\\n```json\\n{\\"status\\": \\"COMPLETE\\"}\\n```",
  "stats": {
    "models": {
      "gemini-2.5-pro": {
        "api": {
          "totalRequests": 2,
          "totalErrors": 0,
          "totalLatencyMs": 119,
          "errorsByType": {}
        },
        "tokens": {
          "input": 2300,
          "prompt": 2500,
          "candidates": 120,
          "total": 2620,
          "cached": 200,
          "thoughts": 0,
          "tool": 0
        },
        "roles": {
          "main": {
            "totalRequests": 2,
            "totalErrors": 0,
            "totalLatencyMs": 119,
            "tokens": {
              "input": 2300,
              "prompt": 2500,
              "candidates": 120,
              "total": 2620,
              "cached": 200,
              "thoughts": 0,
              "tool": 0
            }
          }
        }
      }
    },
    "tools": {
      "totalCalls": 1,
      "totalSuccess": 1,
      "totalFail": 0,
      "totalDurationMs": 31,
      "totalDecisions": {
        "accept": 1,
        "reject": 0,
        "modify": 0,
        "auto_accept": 0
      },
      "byName": {
        "replace": {
          "count": 1,
          "success": 1,
          "fail": 0,
          "durationMs": 31,
          "decisions": {
            "accept": 1,
            "reject": 0,
            "modify": 0,
            "auto_accept": 0
          }
        }
      }
    },
    "files": {
      "totalLinesAdded": 1,
      "totalLinesRemoved": 1
    }
  }
}"""

# A real routed run (no -m): the router's side call on one model, the main loop on another.
REAL_ROUTED = """{
  "session_id": "8226618b-3a23-4255-b94d-34b717af7d04",
  "response": "b",
  "stats": {
    "models": {
      "gemini-3.5-flash-lite": {
        "api": {
          "totalRequests": 1,
          "totalErrors": 0,
          "totalLatencyMs": 27,
          "errorsByType": {}
        },
        "tokens": {
          "input": 10,
          "prompt": 10,
          "candidates": 2,
          "total": 12,
          "cached": 0,
          "thoughts": 0,
          "tool": 0
        },
        "roles": {
          "utility_router": {
            "totalRequests": 1,
            "totalErrors": 0,
            "totalLatencyMs": 27,
            "tokens": {
              "input": 10,
              "prompt": 10,
              "candidates": 2,
              "total": 12,
              "cached": 0,
              "thoughts": 0,
              "tool": 0
            }
          }
        }
      },
      "gemini-3.8-flash": {
        "api": {
          "totalRequests": 1,
          "totalErrors": 0,
          "totalLatencyMs": 74,
          "errorsByType": {}
        },
        "tokens": {
          "input": 100,
          "prompt": 100,
          "candidates": 20,
          "total": 120,
          "cached": 0,
          "thoughts": 0,
          "tool": 0
        },
        "roles": {
          "main": {
            "totalRequests": 1,
            "totalErrors": 0,
            "totalLatencyMs": 74,
            "tokens": {
              "input": 100,
              "prompt": 100,
              "candidates": 20,
              "total": 120,
              "cached": 0,
              "thoughts": 0,
              "tool": 0
            }
          }
        }
      }
    },
    "tools": {
      "totalCalls": 0,
      "totalSuccess": 0,
      "totalFail": 0,
      "totalDurationMs": 0,
      "totalDecisions": {
        "accept": 0,
        "reject": 0,
        "modify": 0,
        "auto_accept": 0
      },
      "byName": {}
    },
    "files": {
      "totalLinesAdded": 0,
      "totalLinesRemoved": 0
    }
  }
}"""

# A real run whose model API answered 500: nothing on stdout, the error JSON on stderr
# (the stack trace shortened).
REAL_API_ERROR_STDERR = """\
Warning: 256-color support not detected. Using a terminal with at least 256-color support is recommended for a better visual experience.
Ripgrep is not available. Falling back to GrepTool.
Attempt 1 failed: {"error":{"code":500,"message":"scripted failure","status":"INTERNAL"}}. Max attempts reached
Error when talking to Gemini API Full report available at: /tmp/tmpvi47_06z/tmp/gemini-client-error-Turn.run-sendMessageStream-2026-12-02T07-43-38-489Z.json _ApiError: {"error":{"code":500,"message":"scripted failure","status":"INTERNAL"}}
    at throwErrorIfNotOK (file:///work/main/.agent-clis/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:267833:24)
    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)
    at async Turn.run (file:///work/main/.agent-clis/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:333001:24) {
  status: 500
}
{
  "session_id": "e91ed195-bf31-4fad-9b51-ed7c33462fc0",
  "error": {
    "type": "Error",
    "message": "{\\"error\\":{\\"code\\":500,\\"message\\":\\"scripted failure\\",\\"status\\":\\"INTERNAL\\"}}",
    "code": 500
  }
}
"""  # noqa: E501

# Real: GOOGLE_GEMINI_BASE_URL set but no selectedType in settings.json (the 0.61 gateway bug).
REAL_AUTH_ERROR_STDERR = """{
  "session_id": "08e6482f-bf78-4033-831b-4c5dca527866",
  "error": {
    "type": "Error",
    "message": "Invalid auth method selected.",
    "code": 41
  }
}
"""

# Real: without --skip-trust (no JSON at all, a red line).
REAL_UNTRUSTED_STDERR = (
    'Approval mode overridden to "default" because the current folder is not trusted.\n'
    "\x1b[31mGemini CLI is not running in a trusted directory. To proceed, either use "
    "`--skip-trust`, set the `GEMINI_CLI_TRUST_WORKSPACE=true` environment variable, "
    "or trust this directory in interactive mode. For more details, see "
    "https://geminicli.com/docs/cli/trusted-folders/#headless-and-automated-environments\x1b[0m\n"
)


def test_parse_a_real_success() -> None:
    out = profile.parse(REAL_SUCCESS, "Ripgrep is not available. Falling back to GrepTool.\n")
    assert not out.is_error and out.error is None
    assert out.text == 'Done.\n```json\n{"status": "COMPLETE"}\n```'
    assert out.session_id == "5abdf492-3827-4790-84ce-7e59b4c2441f"
    assert out.model == "gemini-2.5-pro"
    assert (out.usage.input_tokens, out.usage.output_tokens, out.usage.cache_read_tokens) == (
        2300,
        120,
        200,
    )
    assert out.usage.turns == 2 and out.usage.cost_usd is None


def test_parse_a_real_routed_run_names_the_main_model_and_sums_every_model() -> None:
    out = profile.parse(REAL_ROUTED, "")
    assert out.model == "gemini-3.8-flash"
    assert (out.usage.input_tokens, out.usage.output_tokens, out.usage.turns) == (110, 22, 1)


def test_parse_a_real_api_error() -> None:
    out = profile.parse("", REAL_API_ERROR_STDERR)
    assert out.is_error and out.error == "500 INTERNAL: scripted failure"
    assert out.session_id == "e91ed195-bf31-4fad-9b51-ed7c33462fc0"


def test_parse_a_real_auth_error() -> None:
    out = profile.parse("", REAL_AUTH_ERROR_STDERR)
    assert out.is_error and out.error == "Invalid auth method selected."


def test_parse_without_json_says_the_last_stderr_line() -> None:
    out = profile.parse("", REAL_UNTRUSTED_STDERR)
    assert (
        out.is_error
        and out.error
        and out.error.startswith("Gemini CLI is not running in a trusted directory")
    )
    assert "\x1b" not in out.error


@pytest.mark.parametrize(
    ("stdout", "stderr"),
    [
        ("", ""),
        ("garbage {", "node: crashed\n"),
        ('{"response": 5, "stats": []}', ""),
        ('{"stats": {"models": {"m": {"tokens": {"input": "x"}, "roles": 3}}}}', ""),
        ("[1, 2]", "boom"),
        ("\x00\xff", "\x1b[31m"),
    ],
)
def test_parse_never_raises(stdout: str, stderr: str) -> None:
    out = profile.parse(stdout, stderr)
    assert isinstance(out, AgentOutput)
    if not stdout.startswith("{"):
        assert out.is_error and out.error
