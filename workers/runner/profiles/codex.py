"""The OpenAI Codex CLI profile (``codex exec``, npm @openai/codex >= 0.171.0).

One attempt is ``codex exec`` with the prompt on stdin (the ``-`` prompt
argument), ``--json`` (one JSON event a line: ``thread.started`` with the
session id, ``item.*`` events with the agent's messages, commands and file
changes, ``turn.completed`` with the usage or ``turn.failed`` with the error)
and ``--cd`` the REQ's working tree. A resume puts ``resume <session>``
after the same options: Codex reloads the session's earlier turns from
``$CODEX_HOME/sessions`` and sends them to the model again.

Headless permissions, without a bypass: ``--sandbox workspace-write`` with
``approval_policy="never"`` (nothing ever waits for an answer) and
``sandbox_workspace_write.exclude_slash_tmp`` and ``.exclude_tmpdir_env_var``
set, so the working tree is the one writable root (workspace-write alone also
opens /tmp and $TMPDIR). Codex's ``apply_patch`` edits inside the tree apply
at once; a patch outside is rejected ("writing outside of the project"); a
shell command runs in Codex's Linux sandbox (its bundled bubblewrap plus a
seccomp filter, no network), which mounts everything but the tree read-only.
Codex also keeps ``.git``, ``.codex`` and ``.agents`` of the tree read-only:
the agent edits files, it does not commit. With ``bypass_permissions``:
``--dangerously-bypass-approvals-and-sandbox`` instead, and nothing else.

The role text goes in as Codex's own ``developer_instructions`` (a developer
message after Codex's base instructions), as a TOML string in ``-c``; a role
too long for one argv entry is put before the prompt instead. Codex has no
budget flag (``budget_usd`` is not passed) and reports no cost.

Also on every run, for a headless agent: ``-c analytics.enabled=false`` (no
analytics events to OpenAI) and ``--disable plugins`` (no plugin marketplace
sync from GitHub); ``--skip-git-repo-check`` (the tree need not be a git
repository). ``codex exec`` asks no trust or first-run question and checks
for no update. With these, a run talks to nothing but its model endpoint.

What ``parse`` reads from the JSON lines: the text of the last
``agent_message`` item; the session from ``thread.started``; the tokens of
the last ``turn.completed``, where Codex's ``input_tokens`` counts cached
input too, so ``input_tokens`` here is ``input_tokens - cached_input_tokens -
cache_write_input_tokens`` (the uncached rest, as the other profiles count
it), ``cache_read_tokens`` is ``cached_input_tokens`` and
``cache_write_tokens`` is ``cache_write_input_tokens``. Two things Codex does
not say: which model answered (``model`` is None unless an event names one:
the runner knows the model it asked for) and how many model requests a run
made, so ``turns`` counts Codex's own turns (one per prompt: ``turn.completed``
and ``turn.failed`` events). After a resume, Codex's usage is the session's
running total, earlier attempts included.

What an operator sets for a real run (pass the variables to the agents
with ``AGOG_RUNNER_ENV``)::

    CODEX_API_KEY=sk-...              # the OpenAI API key (codex exec reads
                                      # CODEX_API_KEY; OPENAI_API_KEY alone is not used)
    AGOG_RUNNER_ENV=CODEX_API_KEY     # add CODEX_HOME too if it is not ~/.codex
    # only for a local or proxy Responses API endpoint, in $CODEX_HOME/config.toml
    # (default ~/.codex/config.toml): openai_base_url = "http://127.0.0.1:8080/v1"

Sessions live in ``$CODEX_HOME`` (default ``~/.codex``): keep it across the
attempts of a REQ, or a resume finds nothing. Tests use a temporary HOME and
``CODEX_HOME`` with exactly that ``config.toml``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from workers.runner.profiles.base import AgentOutput, Invocation, RunSpec, Usage

# Headless, without a bypass: the working tree is the only writable place.
SANDBOX_ARGS = (
    "--sandbox",
    "workspace-write",
    "-c",
    'approval_policy="never"',
    "-c",
    "sandbox_workspace_write.exclude_slash_tmp=true",
    "-c",
    "sandbox_workspace_write.exclude_tmpdir_env_var=true",
    "-c",
    "sandbox_workspace_write.network_access=false",
)
BYPASS_ARGS = ("--dangerously-bypass-approvals-and-sandbox",)
# No analytics, no plugin sync: a run talks to its model endpoint only.
QUIET_ARGS = ("-c", "analytics.enabled=false", "--disable", "plugins")
# Linux caps one argv entry at 128 KiB; a longer role goes before the prompt.
MAX_ARG_BYTES = 100_000
ERROR_LIMIT = 500  # characters of an error message kept


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (what ``-c key=value`` parses)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _role_arg(role_text: str) -> str | None:
    """The ``developer_instructions`` override, or None (no role, or too long)."""
    if not role_text.strip():
        return None
    arg = "developer_instructions=" + toml_string(role_text)
    return arg if len(arg.encode()) <= MAX_ARG_BYTES else None


def _prompt(spec: RunSpec, role_arg: str | None) -> str:
    if role_arg is None and spec.role_text.strip():
        return f"# Your role\n\n{spec.role_text}\n\n# Your assignment\n\n{spec.prompt}"
    return spec.prompt


def _events(stdout: str) -> list[dict[str, Any]]:
    """The JSON objects among stdout's lines (anything else is skipped)."""
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(usage: dict[str, Any], turns: int) -> Usage:
    cached = _int(usage.get("cached_input_tokens"))
    written = _int(usage.get("cache_write_input_tokens"))
    return Usage(
        input_tokens=max(0, _int(usage.get("input_tokens")) - cached - written),
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=cached,
        cache_write_tokens=written,
        cost_usd=None,
        turns=turns,
    )


def _message(event: dict[str, Any]) -> str | None:
    """The error message an ``error`` or ``turn.failed`` event carries."""
    error = event.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    message = event.get("message")
    return message if isinstance(message, str) else None


def _stderr_reason(text: str) -> str | None:
    """Why Codex stopped before its JSON said: its last ``Error...`` line (a
    config error goes on over more lines), else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error")]
    return (errors or lines or [None])[-1]


def _short(text: str) -> str:
    return text if len(text) <= ERROR_LIMIT else text[: ERROR_LIMIT - 1] + "…"


@dataclass
class _Reading:
    """What the events said, gathered in order."""

    text: str = ""
    session_id: str | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None
    turns: int = 0
    finished: bool = False  # a turn completed
    failure: str | None = None
    last_error: str | None = None

    def take(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if isinstance(event.get("model"), str):
            self.model = event["model"]
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            self.session_id = event["thread_id"]
        elif kind == "item.completed" and isinstance(event.get("item"), dict):
            item = event["item"]
            if item.get("type") == "agent_message" and isinstance(item.get("text"), str):
                self.text = item["text"]
        elif kind == "turn.completed":
            self.turns += 1
            self.finished, self.failure = True, None
            if isinstance(event.get("usage"), dict):
                self.usage = event["usage"]
        elif kind == "turn.failed":
            self.turns += 1
            self.failure = _message(event) or "the turn failed"
        elif kind == "error":
            self.last_error = _message(event)


@dataclass(frozen=True)
class CodexProfile:
    """``codex exec``, headless, JSON lines out (see the module doc)."""

    name: str = "codex"
    binary: str = "codex"
    min_version: tuple[int, ...] = (0, 171, 0)
    # After a resume, its usage is the session's running total.
    session_totals: bool = True

    def invocation(self, spec: RunSpec, binary: str) -> Invocation:
        role_arg = _role_arg(spec.role_text)
        argv = [binary, "exec", "--json", "--skip-git-repo-check", "--cd", str(spec.workdir)]
        argv += BYPASS_ARGS if spec.bypass_permissions else SANDBOX_ARGS
        argv += QUIET_ARGS
        if spec.model:
            argv += ["--model", spec.model]
        if role_arg is not None:
            argv += ["-c", role_arg]
        if spec.resume_session:
            argv += ["resume", spec.resume_session]
        argv.append("-")  # the prompt comes on stdin
        return Invocation(argv=argv, stdin=_prompt(spec, role_arg))

    def parse(self, stdout: str, stderr: str) -> AgentOutput:
        reading = _Reading()
        for event in _events(stdout):
            reading.take(event)
        usage = _usage(reading.usage or {}, reading.turns)
        error = reading.failure
        if error is None and not reading.finished:
            error = reading.last_error or _stderr_reason(stderr) or "codex printed no JSON events"
        return AgentOutput(
            text=reading.text,
            session_id=reading.session_id,
            model=reading.model,
            usage=usage,
            is_error=error is not None,
            error=_short(error) if error is not None else None,
        )

    def version_argv(self, binary: str) -> list[str]:
        return [binary, "--version"]


PROFILE = CodexProfile()
