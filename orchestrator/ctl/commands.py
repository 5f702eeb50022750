"""``agogctl``: the operator CLI. It only talks to agogd's HTTP API, so it
works the same against a remote agogd. Human output by default (see
``orchestrator.ctl.render``), ``--json`` for scripts."""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from orchestrator.core.safe_text import neutralise, neutralise_data
from orchestrator.ctl import agents as ctl_agents
from orchestrator.ctl import render as ctl_render
from orchestrator.ctl.client import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    auth_hint,
    discover_url,
    exit_code,
    target,
)
from orchestrator.ctl.client import call as _call
from orchestrator.ctl.client import unreachable as _unreachable
from orchestrator.ctl.render import Painter

DECISIONS = ("APPROVE", "REQUEST_CHANGES", "RETRY", "CANCEL", "ESCALATE_HUMAN")
F = TypeVar("F", bound=Callable[..., Any])


@click.group()
@click.version_option(package_name="agogd", prog_name="agogctl")
@click.option(
    "--url",
    envvar=None,
    default=None,
    help="agogd's HTTP URL (else --data-dir's endpoints.json, else AGOG_URL).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The data dir of `agogd dev` (its --data-dir): agogctl reads endpoints.json"
    " and api_token there (default: AGOG_DATA_DIR, else ./.agogd).",
)
@click.pass_context
def main(ctx: click.Context, url: str | None, data_dir: Path | None) -> None:
    """Operate a running agogd through its HTTP API.

    agogd is found from --url, else the endpoints.json in --data-dir, else
    AGOG_URL, else the endpoints.json in AGOG_DATA_DIR or ./.agogd (where
    `agogd dev` writes it).

    Actions need the API token: --token, else AGOG_API_TOKEN, else the token
    of `agogd dev` (DIR/api_token, sent only to that agogd). Reads send it
    too when known (needed with AGOG_API_READ_AUTH=true).

    \b
    Exit codes:
      0  ok
      1  refused or failed: invalid for the REQ's state (409), bad input (400);
         `ready`: not ready; `infra report`: problems found
      2  usage: bad arguments, or agogd cannot be found
      3  agogd unreachable, or unable to serve (503)
      4  not found: unknown REQ or deployment (404)
      5  unauthorized: missing or wrong token (401), or none configured (403)
    """
    ctx.obj = {"url": url, "data_dir": data_dir}


def _token_option(func: F) -> F:
    return click.option(
        "--token",
        envvar="AGOG_API_TOKEN",
        default=None,
        help="API token (default: AGOG_API_TOKEN, else agogd dev's DIR/api_token).",
    )(func)


def _json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")(func)


def _target(ctx: click.Context, token: str | None) -> tuple[str, str | None]:
    found = target(ctx, token)
    return found.url, found.token


def _fail(status: int, body: dict[str, Any], as_json: bool = False) -> NoReturn:
    """Report an error answer and exit with its code."""
    if as_json:
        click.echo(json.dumps(body, indent=2))
    error = str(body.get("error", status))
    if status in (401, 403):
        error = auth_hint(status, error)
    click.echo(f"agogctl: {neutralise(error)}", err=True)  # errors quote what was sent
    sys.exit(exit_code(status))


def _painter() -> Painter:
    return Painter(ctl_render.colour_enabled())


def _echo_lines(lines: list[str], paint: Painter) -> None:
    # click strips ANSI codes off a non-terminal unless told (FORCE_COLOR);
    # only the painter's own colour codes pass (terminal_safe)
    safe = [ctl_render.terminal_safe(line, paint.enabled) for line in lines]
    click.echo("\n".join(safe), color=paint.enabled)


# --- ready ---------------------------------------------------------------------------
@main.command()
@_json_option
@click.pass_context
def ready(ctx: click.Context, as_json: bool) -> None:
    """Ask agogd whether it is ready; exit 0 if so, 1 if not, 3 if unreachable."""
    url = discover_url(ctx.obj["url"], ctx.obj["data_dir"])
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
            body, ok = json.loads(resp.read()), True
    except urllib.error.HTTPError as exc:
        body, ok = json.loads(exc.read() or b"{}"), False
    except (urllib.error.URLError, OSError) as exc:
        _unreachable(url, exc)
    if as_json:
        click.echo(json.dumps(body, indent=2))
    else:
        checks = body.get("checks", {})
        line = f"{body.get('status', 'unknown')}  " + "  ".join(
            f"{k}={v}" for k, v in checks.items()
        )
        click.echo(neutralise(line))
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


# --- status --------------------------------------------------------------------------
@main.command()
@click.option("--status", "statuses", multiple=True, help="e.g. IN_PROGRESS, BLOCKED, active.")
@click.option("--stage", "stages", multiple=True, help="Current stage: index, agent or name.")
@click.option("--priority", "priorities", multiple=True, help="P0 to P3 (or 0 to 3).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@_token_option
@_json_option
@click.pass_context
def status(
    ctx: click.Context,
    statuses: tuple[str, ...],
    stages: tuple[str, ...],
    priorities: tuple[str, ...],
    limit: int,
    token: str | None,
    as_json: bool,
) -> None:
    """REQs x stages: where every REQ stands (newest activity first)."""
    url, token = _target(ctx, token)
    query = [("limit", str(limit))]
    query += [("status", s) for s in statuses] + [("stage", s) for s in stages]
    query += [("priority", p) for p in priorities]
    code, body = _call(url, "GET", "/api/reqs?" + urllib.parse.urlencode(query), token=token)
    _show(code, body, as_json, ctl_render.status_grid)


def _show(
    code: int,
    body: dict[str, Any],
    as_json: bool,
    render: Callable[[dict[str, Any], Painter], list[str]],
) -> None:
    """An API answer: the error (with its exit code), the JSON (exactly the
    API's data), or the rendering of it, every string in it neutralised first
    (agents wrote titles, summaries and reasons: see orchestrator.core.safe_text)."""
    if code >= 300:
        _fail(code, body, as_json)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    paint = _painter()
    _echo_lines(render(neutralise_data(body), paint), paint)


# --- req -----------------------------------------------------------------------------
@main.group()
def req() -> None:
    """Submit, inspect and act on requirements."""


@req.command("submit")
@click.argument("req_number")
@click.option("--title", default="", help="Short title.")
@click.option(
    "--priority", default="P2", show_default=True, help="P0 (urgent) to P3; 2 or p2 also do."
)
@click.option("--owner", default=None)
@click.option("--requirement", "requirements", multiple=True, help="One requirement line; repeat.")
@_token_option
@_json_option
@click.pass_context
def req_submit(
    ctx: click.Context,
    req_number: str,
    title: str,
    priority: str,
    owner: str | None,
    requirements: tuple[str, ...],
    token: str | None,
    as_json: bool,
) -> None:
    """Submit a REQ; idempotent: submitting it again changes nothing."""
    url, token = _target(ctx, token)
    code, body = _call(
        url,
        "POST",
        "/api/reqs",
        {
            "req_number": req_number,
            "title": title,
            "priority": priority,
            "owner": owner,
            "requirements": list(requirements),
        },
        token,
    )
    if code >= 300:
        _fail(code, body, as_json)
    if as_json:
        click.echo(json.dumps(body, indent=2))
    else:
        done = "submitted" if body.get("created") else "already known"
        click.echo(f"{neutralise(req_number)}: {done}")


@req.command("show")
@click.argument("req_number")
@click.option("--events", default=20, show_default=True, help="Audit events to print.")
@_token_option
@_json_option
@click.pass_context
def req_show(
    ctx: click.Context, req_number: str, events: int, token: str | None, as_json: bool
) -> None:
    """Show a REQ with its history: stage attempts with timings, deliverables,
    decisions, escalations and events."""
    url, token = _target(ctx, token)
    path = f"/api/reqs/{urllib.parse.quote(req_number, safe='')}"
    code, body = _call(url, "GET", path, token=token)
    _show(code, body, as_json, lambda safe, paint: ctl_render.req_detail(safe, paint, events))


@req.command("logs")
@click.argument("req_number")
@click.option("--stage", default=None, help="Index, agent or name (default: the latest run).")
@click.option("--attempt", default=None, type=click.IntRange(1), help="Default: the latest.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing while the agent runs.")
@_token_option
@_json_option
@click.pass_context
def req_logs(
    ctx: click.Context,
    req_number: str,
    stage: str | None,
    attempt: int | None,
    follow: bool,
    token: str | None,
    as_json: bool,
) -> None:
    """An attempt's agent output as the runner kept it (the last
    AGOG_RUNNER_TRANSCRIPT_BYTES); --follow prints on until the agent ends."""
    url, token = _target(ctx, token)
    path = f"/api/reqs/{urllib.parse.quote(req_number, safe='')}/logs"
    query = {"stage": stage, "attempt": attempt}
    since: int | None = None
    while True:
        params = {k: v for k, v in {**query, "since": since}.items() if v is not None}
        code, body = _call(url, "GET", f"{path}?{urllib.parse.urlencode(params)}", token=token)
        if code >= 300:
            _fail(code, body, as_json)
        if not body.get("kept"):
            if follow:  # the runner has not started its agent yet
                time.sleep(1.0)
                continue
            click.echo(
                f"no agent output kept for {neutralise(req_number)}: its agents run outside"
                " agogd's runner, or none has started yet",
                err=True,
            )
            return
        if as_json:
            click.echo(json.dumps(body))
        else:
            if since is None:
                header = f"== {body['agent']} stage {body['stage']} attempt {body['attempt']}"
                skipped = f" ({body['skipped']} earlier bytes not kept)" if body["skipped"] else ""
                click.echo(neutralise(header + skipped), err=True)
            click.echo(neutralise(body["text"], keep_newlines=True), nl=False)
        # Stay on the attempt first shown, even when a newer one starts.
        query = {"stage": body["stage"], "attempt": body["attempt"]}
        since = body["total_bytes"]
        if not follow or not body["running"]:
            return
        time.sleep(1.0)


@req.command("diff")
@click.argument("req_number")
@click.option("--stage", default=None, help="One stage's diff: index, agent or name.")
@click.option(
    "--raw", is_flag=True, help="The diff exactly as git made it (for git apply), unescaped."
)
@_token_option
@_json_option
@click.pass_context
def req_diff(
    ctx: click.Context,
    req_number: str,
    stage: str | None,
    raw: bool,
    token: str | None,
    as_json: bool,
) -> None:
    """What the REQ's branch changed (AGOG_REPO), as a unified diff: the whole
    REQ, or one --stage (from its first attempt's start to its last commit).
    Agent-written text is escaped (--raw: not); colours on a terminal."""
    url, token = _target(ctx, token)
    path = f"/api/reqs/{urllib.parse.quote(req_number, safe='')}/diff"
    if stage is not None:
        path += "?" + urllib.parse.urlencode({"stage": stage})
    code, body = _call(url, "GET", path, token=token, timeout=60)
    if code >= 300:
        _fail(code, body, as_json)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(neutralise(ctl_render.diff_header(body)), err=True)
    text = str(body.get("diff") or "")
    if raw:
        click.echo(text, nl=False)
    elif text:
        paint = _painter()
        click.echo("\n".join(ctl_render.diff_lines(text, paint)), color=paint.enabled)
    if body.get("truncated"):
        click.echo(
            f"agogctl: the diff is {ctl_render.size(body.get('bytes'))}; agogd sent only its"
            f" first {ctl_render.size(len(text.encode()))} (truncated)",
            err=True,
        )


def _act(
    ctx: click.Context,
    req_number: str,
    action: str,
    fields: dict[str, Any],
    token: str | None,
    wait: float,
    as_json: bool,
) -> None:
    url, token = _target(ctx, token)
    path = f"/api/reqs/{urllib.parse.quote(req_number, safe='')}/{action}"
    if wait > 0:
        path += f"?wait={wait:g}"
    body = {k: v for k, v in fields.items() if v not in (None, "")}
    code, answer = _call(url, "POST", path, body, token, timeout=wait + 10)
    if code >= 300:
        _fail(code, answer, as_json)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    answer, req_number = neutralise_data(answer), neutralise(req_number)
    kind = answer.get("decision")
    if answer.get("outcome") == "applied":
        row = answer.get("req") or {}
        where = ""
        if row.get("current_stage") is not None:
            where = (
                f" at stage {row['current_stage']} {row.get('current_stage_name')}"
                f" ({row.get('current_agent')})"
            )
        again = " (already applied)" if answer.get("duplicate") else ""
        click.echo(f"{req_number}: {action} applied ({kind}){again}: {row.get('status')}{where}")
    else:
        click.echo(
            f"{req_number}: {action} accepted ({kind}, decision {answer.get('decision_id')});"
            " the engine has not applied it yet"
        )


def _reason_option(func: F) -> F:
    return click.option("--reason", default="", help="Why (recorded with the decision).")(func)


def _instructions_option(func: F) -> F:
    return click.option(
        "--instructions", default=None, help="For the agent: text or a JSON object."
    )(func)


def _budget_option(func: F) -> F:
    return click.option(
        "--budget-usd",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="A new budget for the REQ (USD): resumes one blocked on its spend.",
    )(func)


def _wait_option(func: F) -> F:
    return click.option(
        "--wait",
        default=5.0,
        show_default=True,
        type=click.FloatRange(0, 30),
        help="Seconds to wait for the engine to apply it (0: do not wait).",
    )(func)


def _instructions(value: str | None) -> str | dict[str, Any] | None:
    """--instructions: a JSON object, or plain text."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, dict) else value


@req.command("retry")
@click.argument("req_number")
@click.option(
    "--stage",
    default=None,
    help="An earlier stage to restart from (index or agent), or a follow-up to run again"
    " on a finished REQ (tim).",
)
@_reason_option
@_instructions_option
@_budget_option
@_wait_option
@_token_option
@_json_option
@click.pass_context
def req_retry(
    ctx: click.Context,
    req_number: str,
    stage: str | None,
    reason: str,
    instructions: str | None,
    budget_usd: float | None,
    wait: float,
    token: str | None,
    as_json: bool,
) -> None:
    """Run the current stage again (or restart from an earlier --stage, or
    re-run a follow-up such as --stage tim: the REQ stays DEPLOYED)."""
    fields = {
        "stage": stage,
        "reason": reason,
        "instructions": _instructions(instructions),
        "budget_usd": budget_usd,
    }
    _act(ctx, req_number, "retry", fields, token, wait, as_json)


@req.command("cancel")
@click.argument("req_number")
@_reason_option
@_wait_option
@_token_option
@_json_option
@click.pass_context
def req_cancel(
    ctx: click.Context, req_number: str, reason: str, wait: float, token: str | None, as_json: bool
) -> None:
    """Cancel a REQ that has not finished."""
    _act(ctx, req_number, "cancel", {"reason": reason}, token, wait, as_json)


@req.command("resume")
@click.argument("req_number")
@_reason_option
@_instructions_option
@_budget_option
@_wait_option
@_token_option
@_json_option
@click.pass_context
def req_resume(
    ctx: click.Context,
    req_number: str,
    reason: str,
    instructions: str | None,
    budget_usd: float | None,
    wait: float,
    token: str | None,
    as_json: bool,
) -> None:
    """Take a BLOCKED or ESCALATED REQ forward: its current stage runs again
    (a RETRY decision, with a fresh retry budget)."""
    fields = {
        "reason": reason,
        "instructions": _instructions(instructions),
        "budget_usd": budget_usd,
    }
    _act(ctx, req_number, "resume", fields, token, wait, as_json)


@req.command("decide")
@click.argument("req_number")
@click.argument("decision", type=click.Choice(DECISIONS, case_sensitive=False))
@click.option("--restart-stage", default=None, help="REQUEST_CHANGES: the stage to go back to.")
@click.option("--reason", default="", help="The decision's reasoning.")
@click.option(
    "--reset-branch",
    is_flag=True,
    help="AGOG_REPO: the stage starts over from where its first attempt began on the branch.",
)
@_instructions_option
@_budget_option
@_wait_option
@_token_option
@_json_option
@click.pass_context
def req_decide(
    ctx: click.Context,
    req_number: str,
    decision: str,
    restart_stage: str | None,
    reason: str,
    reset_branch: bool,
    instructions: str | None,
    budget_usd: float | None,
    wait: float,
    token: str | None,
    as_json: bool,
) -> None:
    """Make a strategic decision: APPROVE, REQUEST_CHANGES, RETRY, CANCEL or
    ESCALATE_HUMAN."""
    restart: int | str | None = restart_stage
    if restart_stage is not None and restart_stage.isdecimal():
        restart = int(restart_stage)
    fields = {
        "decision": decision.upper(),
        "restart_stage": restart,
        "reason": reason,
        "instructions": _with_reset(_instructions(instructions), reset_branch),
        "budget_usd": budget_usd,
    }
    _act(ctx, req_number, "decide", fields, token, wait, as_json)


def _with_reset(
    instructions: str | dict[str, Any] | None, reset: bool
) -> str | dict[str, Any] | None:
    """--reset-branch, carried in the decision's instructions."""
    if not reset:
        return instructions
    if isinstance(instructions, dict):
        return {**instructions, "reset_branch": True}
    return {"reset_branch": True, **({"text": instructions} if instructions else {})}


# --- agents ----------------------------------------------------------------------------
@main.group()
def agents() -> None:
    """The pipeline's agent definitions for the agent CLIs."""


@agents.command("init")
@click.option("--cli", "cli", type=click.Choice(ctl_agents.CLIS), required=True)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The working tree the agents run in (AGOG_RUNNER_WORKDIR).",
)
@click.option("--force", is_flag=True, help="Replace files that were edited since.")
def agents_init(cli: str, directory: Path, force: bool) -> None:
    """Write each agent's role definition (role, working-tree rule, the notice
    contract with its JSON) where the CLI reads it: .claude/agents/<agent>.md,
    AGENTS.md (codex) or GEMINI.md (gemini). Edited files are kept without --force."""
    import os

    from orchestrator.core.registry import RegistryError, load

    source = os.environ.get("AGOG_PIPELINE_FILE")
    try:
        pipeline = load(Path(source) if source else None)
    except RegistryError as exc:
        raise click.ClickException(f"AGOG_PIPELINE_FILE: {exc}") from None
    for path, outcome in ctl_agents.write(ctl_agents.plan(pipeline, cli, directory), force):
        click.echo(f"{outcome:<10} {path}")


# --- streams -------------------------------------------------------------------------
@main.command()
@_token_option
@_json_option
@click.pass_context
def streams(ctx: click.Context, token: str | None, as_json: bool) -> None:
    """Every agog_* stream: messages, bytes, and each consumer's lag."""
    url, token = _target(ctx, token)
    code, body = _call(url, "GET", "/api/streams", token=token)
    _show(code, body, as_json, ctl_render.streams_table)


# --- tail ----------------------------------------------------------------------------
@main.command()
@click.option("--req", "reqs", multiple=True, help="Only this REQ's events; repeat for more.")
@click.option("--heartbeats", is_flag=True, help="Include agents' heartbeats.")
@click.option("--count", default=0, type=click.IntRange(0), help="Exit after N events.")
@_token_option
@_json_option
@click.pass_context
def tail(
    ctx: click.Context,
    reqs: tuple[str, ...],
    heartbeats: bool,
    count: int,
    token: str | None,
    as_json: bool,
) -> None:
    """Follow live events (server-sent, from GET /api/events) until Ctrl-C.
    --json prints one JSON object per line."""
    url, token = _target(ctx, token)
    query: list[tuple[str, str]] = [("req", r) for r in reqs]
    if heartbeats:
        query.append(("heartbeats", "1"))
    request = urllib.request.Request(f"{url}/api/events?{urllib.parse.urlencode(query)}")
    request.add_header("Accept", "text/event-stream")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    paint = _painter()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `agogctl tail | head` ends quietly
    seen = 0
    try:
        with urllib.request.urlopen(request, timeout=90) as resp:
            for event, data in _sse(resp):
                if event == "ready":
                    click.echo(f"agogctl: following {url}/api/events (Ctrl-C to stop)", err=True)
                    continue
                if event == "bye":
                    click.echo("agogctl: agogd is stopping; the stream ended", err=True)
                    sys.exit(EXIT_UNREACHABLE)
                if as_json:
                    click.echo(json.dumps({"event": event, **data}))
                else:
                    line = ctl_render.event_line(neutralise(event), neutralise_data(data), paint)
                    _echo_lines([line], paint)
                seen += 1
                if count and seen >= count:
                    return
        click.echo("agogctl: agogd closed the stream", err=True)
        sys.exit(EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        return
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {"error": f"HTTP {exc.code}"}
        _fail(exc.code, body if isinstance(body, dict) else {})
    except (urllib.error.URLError, OSError) as exc:
        _unreachable(url, exc)


def _sse(resp: Any) -> Any:
    """(event, data) pairs of a server-sent event stream; comments are skipped."""
    event, data = "message", []
    for raw in resp:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                try:
                    parsed = json.loads("\n".join(data))
                except ValueError:
                    parsed = {"data": "\n".join(data)}
                yield event, parsed if isinstance(parsed, dict) else {"data": parsed}
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


# --- infra ---------------------------------------------------------------------------
@main.group()
def infra() -> None:
    """Miki's infrastructure report."""


@infra.command("report")
@click.option("--feature", default="infra", show_default=True, help="Names the report's subject.")
@_token_option
@_json_option
@click.pass_context
def infra_report(ctx: click.Context, feature: str, token: str | None, as_json: bool) -> None:
    """Build and publish the infrastructure report on agog.deliverables.miki.devops.<feature>,
    and print it. Exit 0 when all is well, 1 when it found problems or was not published."""
    url, token = _target(ctx, token)
    code, body = _call(url, "POST", "/api/infra/report", {"feature": feature}, token, 180)
    if code >= 300:
        _fail(code, body)
    if as_json:
        click.echo(json.dumps(body, indent=2))
    else:
        from workers.infra.render import render_text

        text = render_text(neutralise_data(body))  # container logs, compose files...
        click.echo("\n".join(neutralise(line) for line in text.split("\n")))
    sys.exit(EXIT_OK if body.get("published") and body.get("verdict") == "ok" else EXIT_FAILED)


# --- memory (orchestrator.ctl.memory) ------------------------------------------------
from orchestrator.ctl.memory import memory  # noqa: E402

main.add_command(memory)

# --- deployment records (orchestrator.ctl.deploys) ------------------------------------
from orchestrator.ctl.deploys import deploy, deploys  # noqa: E402

main.add_command(deploys)
main.add_command(deploy)

# --- backup and restore of agogd's own state (orchestrator.ctl.backup) ----------------
from orchestrator.ctl.backup import backup  # noqa: E402

main.add_command(backup)
