"""Claude Code (``claude``, npm ``@anthropic-ai/claude-code``), run headless.

A run is ``claude -p --output-format json`` with the prompt on stdin, in the
REQ's working tree. The argv of a normal run (``{scratch}`` is the attempt's
scratch directory; each flag only when the spec has its value)::

    claude -p --output-format json --permission-mode acceptEdits
        --permission-prompts none --model MODEL
        --append-system-prompt-file {scratch}/claude-role.md
        --max-budget-usd BUDGET [--resume SESSION]

Why these flags:

- The role goes in ``--append-system-prompt-file`` (written to the scratch
  directory): ``--agent`` takes the name of an agent defined under
  ``.claude/agents/`` (a path does not work, and an unknown name stops the
  run), which the REQ's tree need not have.
- Headless permissions: ``acceptEdits`` lets the Edit/Write tools (and plain
  file commands such as ``mkdir``/``touch`` in Bash) change files inside the
  working directory with no prompt; anything else that needs approval (a
  write outside it, other shell commands not allowed by the project's
  ``.claude/settings.json``) would prompt, and ``--permission-prompts none``
  denies every prompt automatically. Only ``bypass_permissions`` gives
  ``--dangerously-skip-permissions`` instead; as root the CLI refuses that
  flag unless ``IS_SANDBOX=1`` is in its environment (the operator's call).
- ``--resume SESSION`` continues the previous attempt's session: the CLI
  keeps sessions under ``$HOME/.claude/projects/<working tree>/``, so the
  resumed run needs the same HOME (or ``CLAUDE_CONFIG_DIR``) and working tree.
- ``-p`` skips the workspace trust dialog and every first-run screen; the
  profile's environment adds ``DISABLE_AUTOUPDATER=1`` (no update in the
  middle of a pipeline), ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` (no
  telemetry, error reports, surveys or reachability probes: the model API
  is the only traffic) and ``CLAUDE_CODE_TMPDIR`` in the attempt's scratch
  directory (the shell tool's task files and sockets go there, not to a
  shared ``/tmp/claude-<uid>``, and go away with the attempt).

The JSON result names the session, the cost (``total_cost_usd``), the turns
(``num_turns``) and, per model, the tokens (``modelUsage``); its top-level
``usage`` misses the last calls when a run stops early (a budget stop
reports zeros), so tokens are summed over ``modelUsage`` and the model is
the one that produced the most output. Mind a resumed run: the CLI carries
the session's cost and ``modelUsage`` over from the runs it resumes, so
cost and tokens are the session's totals so far (the earlier attempts
included), while ``num_turns`` and ``--max-budget-usd`` count this run only.
What one resumed attempt spent is its totals minus the previous attempt's.

What an operator sets for a real run (``AGOG_RUNNER_CLI=claude`` is the
default profile)::

    export ANTHROPIC_API_KEY=sk-ant-...                # the key: a secret, never in a file
    export ANTHROPIC_BASE_URL=https://llm-gateway:8443 # only for a gateway or local endpoint
    export AGOG_RUNNER_ENV=ANTHROPIC_API_KEY,ANTHROPIC_BASE_URL  # pass them to the agents

With ``AGOG_RUNNER_BYPASS_PERMISSIONS=true`` as root, also ``export IS_SANDBOX=1``
and add ``IS_SANDBOX`` to ``AGOG_RUNNER_ENV``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workers.runner.profiles.base import AgentOutput, Invocation, RunSpec, Usage

ROLE_FILE = "claude-role.md"
ENV = {"DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
ERROR_LIMIT = 300  # characters of an error kept for the notice


class ClaudeProfile:
    """Claude Code in print mode with its JSON result."""

    name = "claude"
    binary = "claude"
    min_version = (2, 1, 332)
    # A resumed run's total_cost_usd and modelUsage carry the earlier runs'.
    session_totals = True

    def invocation(self, spec: RunSpec, binary: str) -> Invocation:
        argv = [binary, "-p", "--output-format", "json", *_permissions(spec)]
        files: dict[Path, str] = {}
        if spec.model:
            argv += ["--model", spec.model]
        if spec.role_text:
            role = spec.scratch / ROLE_FILE
            files[role] = spec.role_text
            argv += ["--append-system-prompt-file", str(role)]
        if spec.budget_usd is not None:
            argv += ["--max-budget-usd", _money(spec.budget_usd)]
        if spec.resume_session:
            argv += ["--resume", spec.resume_session]
        env = {**ENV, "CLAUDE_CODE_TMPDIR": str(spec.scratch)}
        return Invocation(argv=argv, stdin=spec.prompt, env=env, files=files)

    def parse(self, stdout: str, stderr: str) -> AgentOutput:
        result = _result(stdout)
        if result is None:
            return AgentOutput(text="", is_error=True, error=_no_result(stdout, stderr))
        text = result.get("result")
        text = text if isinstance(text, str) else ""
        failed = bool(result.get("is_error")) or result.get("subtype") not in (None, "success")
        return AgentOutput(
            text=text,
            session_id=_str(result.get("session_id")),
            model=_main_model(result),
            usage=_usage(result),
            is_error=failed,
            error=_error(result, text, stderr) if failed else None,
        )

    def version_argv(self, binary: str) -> list[str]:
        return [binary, "--version"]


PROFILE = ClaudeProfile()


def _permissions(spec: RunSpec) -> list[str]:
    """Edits inside the working tree without a prompt, every prompt denied;
    or the CLI's own bypass when the operator chose it."""
    if spec.bypass_permissions:
        return ["--dangerously-skip-permissions"]
    return ["--permission-mode", "acceptEdits", "--permission-prompts", "none"]


def _money(amount: float) -> str:
    """A dollar amount as the CLI's number parser reads it (no exponent)."""
    return f"{amount:.10f}".rstrip("0").rstrip(".") or "0"


def _result(stdout: str) -> dict[str, Any] | None:
    """The ``type: result`` object: the whole output, else its last such line
    (stream-json, or stray lines before the JSON)."""
    candidates = [stdout.strip(), *reversed(stdout.strip().splitlines())]
    for chunk in candidates:
        try:
            value = json.loads(chunk)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            continue
        if isinstance(value, list):  # older --verbose output: every message in a list
            value = next((v for v in reversed(value) if _is_result(v)), None)
        if _is_result(value):
            return value
    return None


def _is_result(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "result"


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _models(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    models = result.get("modelUsage")
    if not isinstance(models, dict):
        return {}
    return {k: v for k, v in models.items() if isinstance(k, str) and isinstance(v, dict)}


def _main_model(result: dict[str, Any]) -> str | None:
    """The model that did the work: the most output (side calls use a small one)."""
    models = _models(result)
    if not models:
        return _str(result.get("model"))
    return max(
        models,
        key=lambda m: (_int(models[m].get("outputTokens")), _int(models[m].get("inputTokens"))),
    )


def _usage(result: dict[str, Any]) -> Usage:
    models = _models(result)
    if models:
        totals = {
            key: sum(_int(m.get(key)) for m in models.values())
            for key in (
                "inputTokens",
                "outputTokens",
                "cacheReadInputTokens",
                "cacheCreationInputTokens",
            )
        }
        tokens = (totals["inputTokens"], totals["outputTokens"])
        cache = (totals["cacheReadInputTokens"], totals["cacheCreationInputTokens"])
    else:
        usage = result.get("usage") if isinstance(result.get("usage"), dict) else {}
        tokens = (_int(usage.get("input_tokens")), _int(usage.get("output_tokens")))
        cache = (
            _int(usage.get("cache_read_input_tokens")),
            _int(usage.get("cache_creation_input_tokens")),
        )
    cost = result.get("total_cost_usd")
    turns = result.get("num_turns")
    return Usage(
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cache_read_tokens=cache[0],
        cache_write_tokens=cache[1],
        cost_usd=_cost(cost),
        turns=turns if isinstance(turns, int) and not isinstance(turns, bool) else None,
    )


def _cost(value: Any) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        return None


def _error(result: dict[str, Any], text: str, stderr: str) -> str:
    """Why a run failed: the CLI's errors, its result text, or its subtype."""
    errors = result.get("errors")
    if isinstance(errors, list) and errors:
        why = "; ".join(str(e) for e in errors)
    elif text:
        why = text
    else:
        why = _last_line(stderr) or f"claude reported {result.get('subtype') or 'an error'}"
    return _short(why)


def _no_result(stdout: str, stderr: str) -> str:
    why = _last_line(stderr) or _last_line(stdout)
    return _short(f"no JSON result from claude: {why}" if why else "no output from claude")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_LIMIT else text[: ERROR_LIMIT - 1] + "…"
