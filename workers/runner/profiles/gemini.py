"""Gemini CLI (``gemini``, npm ``@google/gemini-cli``), run headless.

argv: ``gemini -p "" --output-format json --skip-trust --approval-mode
auto_edit [-m MODEL] [--resume SESSION]`` in the REQ's working tree, the
prompt on stdin (the CLI puts stdin before the empty ``-p`` text). The role
text has no flag of its own (``GEMINI_SYSTEM_MD`` would replace the CLI's
whole system prompt, tool rules included), so it goes first in the prompt.

Permissions: ``--approval-mode auto_edit`` lets the CLI's own edit tools
(``write_file``, ``replace``) change files without asking; headless, every
tool that would still ask (``run_shell_command``) is left out of the
model's tools. The tools refuse a path outside the workspace (the working
tree, plus the CLI's own ``~/.gemini/tmp/<project>`` scratch). With
``bypass_permissions`` it is ``--approval-mode yolo`` (every tool, shell
included, without asking). ``--skip-trust`` trusts the working tree for
this run (headless, an untrusted folder is a fatal error); note that it
lets the tree's own ``.gemini/settings.json`` apply. There is no budget
flag: ``budget_usd`` is not passed on.

Output: ``--output-format json`` prints one object on stdout,
``{"session_id", "response", "stats": {"models": {NAME: {"api":
{"totalRequests"}, "tokens": {"input", "prompt", "candidates", "cached",
"thoughts"}, "roles": {"main": ...}}}}}`` (``error`` when the run failed
late); an early failure prints ``{"session_id", "error": {"type",
"message", "code"}}`` on stderr instead. It reports no cost. Tokens are
summed over every model (side calls included); turns are the main loop's
model requests.

Resume: the session id is in the JSON; ``--resume <id>`` reloads the
session from ``~/.gemini/tmp/<project>/chats/``, so it needs the same HOME
and the same working tree as the first run. Gemini CLI 0.61 replays every
earlier tool result twice (upstream issue google-gemini/gemini-cli#29365),
which the Gemini API rejects ("the number of function response parts is
equal to the number of function call parts"): a session that used tools
does not resume on 0.61; one that did not, does.

Hermetic runs: the CLI reads ``~/.gemini/settings.json`` (HOME, or
``GEMINI_CLI_HOME``). ``HEADLESS_SETTINGS`` below turns off usage
statistics (else it calls play.googleapis.com), telemetry and update checks,
and pins the auth type: with ``GOOGLE_GEMINI_BASE_URL`` set, 0.61 infers
the "gateway" auth type, which its headless check rejects ("Invalid auth
method selected.", upstream google-gemini/gemini-cli#27550), unless
``security.auth.selectedType`` is ``gemini-api-key``. Folder trust is the
``--skip-trust`` flag (``GEMINI_CLI_TRUST_WORKSPACE=true`` is the same).

An operator running it for real sets, in the runner's environment::

    GEMINI_API_KEY=<your Gemini API key>
    # only for a proxy or local endpoint instead of generativelanguage.googleapis.com:
    GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:8080

and writes ``~/.gemini/settings.json`` for the runner's user::

    {"security": {"auth": {"selectedType": "gemini-api-key"}},
     "privacy": {"usageStatisticsEnabled": false},
     "telemetry": {"enabled": false},
     "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false}}
"""

from __future__ import annotations

import json
import re
from typing import Any

from workers.runner.profiles.base import AgentOutput, Invocation, RunSpec, Usage

# ~/.gemini/settings.json for headless runs (see the module doc).
HEADLESS_SETTINGS: dict[str, Any] = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_DECODER = json.JSONDecoder()


def compose_prompt(role_text: str, prompt: str) -> str:
    """The stdin text: the role first, then the prompt.

    The CLI takes input starting with ``/`` for one of its slash commands,
    so such a text gets a heading first.
    """
    text = (
        f"# Your role\n\n{role_text.strip()}\n\n# Your task\n\n{prompt}"
        if role_text.strip()
        else prompt
    )
    return f"# Task\n\n{text}" if text.lstrip().startswith("/") else text


def _json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects that start a line of ``text``, in order."""
    found: list[dict[str, Any]] = []
    for match in re.finditer(r"(?m)^\{", text):
        try:
            value, _ = _DECODER.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def _result(stdout: str, stderr: str) -> dict[str, Any] | None:
    """The CLI's JSON result: on stdout, else (an early failure) on stderr."""
    for text in (stdout, _ANSI.sub("", stderr)):
        objects = [
            o for o in _json_objects(text) if "response" in o or "error" in o or "stats" in o
        ]
        if objects:
            return objects[-1]
    return None


def _last_line(stderr: str) -> str:
    lines = [line.strip() for line in _ANSI.sub("", stderr).splitlines()]
    lines = [line for line in lines if line and not line.startswith("at ")]
    return lines[-1][:300] if lines else ""


def _error_text(error: Any) -> str:
    """A readable line for the CLI's ``error`` (its message may be the API's JSON)."""
    if not isinstance(error, dict):
        return str(error)[:300]
    message = str(error.get("message") or error.get("type") or "error")
    try:
        api = json.loads(message)
    except ValueError:
        api = None
    if isinstance(api, list) and api:
        api = api[0]
    if isinstance(api, dict) and isinstance(api.get("error"), dict):
        inner = api["error"]
        message = (
            f"{inner.get('code', '')} {inner.get('status', '')}: {inner.get('message', '')}".strip()
        )
    return message[:300]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(models: dict[str, Any]) -> Usage:
    """Tokens summed over every model; turns are the main role's requests."""
    fresh = output = cached = turns = 0
    for metrics in models.values():
        tokens = metrics.get("tokens") or {}
        fresh += _int(tokens.get("input"))
        output += _int(tokens.get("candidates")) + _int(tokens.get("thoughts"))
        cached += _int(tokens.get("cached"))
        turns += _main_requests(metrics)
    return Usage(input_tokens=fresh, output_tokens=output, cache_read_tokens=cached, turns=turns)


def _main_requests(metrics: dict[str, Any]) -> int:
    roles = metrics.get("roles")
    if isinstance(roles, dict):
        return _int((roles.get("main") or {}).get("totalRequests"))
    return _int((metrics.get("api") or {}).get("totalRequests"))


def _main_model(models: dict[str, Any]) -> str | None:
    """The model that answered most of the main loop."""
    best, most = None, -1
    for name, metrics in models.items():
        count = _main_requests(metrics) if isinstance(metrics, dict) else 0
        if count > most:
            best, most = name, count
    return best


class GeminiProfile:
    """Gemini CLI headless (see the module doc)."""

    name = "gemini"
    binary = "gemini"
    min_version = (0, 61, 0)
    # A resumed run's stats are that run's own.
    session_totals = False

    def invocation(self, spec: RunSpec, binary: str) -> Invocation:
        mode = "yolo" if spec.bypass_permissions else "auto_edit"
        argv = [
            binary,
            "-p",
            "",
            "--output-format",
            "json",
            "--skip-trust",
            "--approval-mode",
            mode,
        ]
        if spec.model:
            argv += ["-m", spec.model]
        if spec.resume_session:
            argv += ["--resume", spec.resume_session]
        return Invocation(
            argv=argv,
            stdin=compose_prompt(spec.role_text, spec.prompt),
            env={"GEMINI_TELEMETRY_ENABLED": "false"},
        )

    def parse(self, stdout: str, stderr: str) -> AgentOutput:
        result = _result(stdout, stderr)
        if result is None:
            why = _last_line(stderr) or (
                "no JSON result on stdout" if stdout.strip() else "no output"
            )
            return AgentOutput(text=stdout.strip()[-2000:], is_error=True, error=why)
        stats = result.get("stats") if isinstance(result.get("stats"), dict) else {}
        models = stats.get("models") if isinstance(stats.get("models"), dict) else {}
        models = {k: v for k, v in models.items() if isinstance(v, dict)}
        session = result.get("session_id")
        response = result.get("response")
        error = result.get("error")
        return AgentOutput(
            text=response if isinstance(response, str) else "",
            session_id=session if isinstance(session, str) else None,
            model=_main_model(models),
            usage=_usage(models),
            is_error=error is not None,
            error=_error_text(error) if error is not None else None,
        )

    def version_argv(self, binary: str) -> list[str]:
        return [binary, "--version"]


profile = GeminiProfile()
