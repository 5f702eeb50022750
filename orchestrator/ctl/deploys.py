"""``agogctl deploys`` and ``agogctl deploy show|restore-db``: Berry's
deployment records, and restoring the app database from one's backup.

A client of ``/api/deploys`` (orchestrator.api.deploys), with agogctl's exit
codes: 1 refused (a restore without a backup, a changed file...), 4 unknown
deployment, 3 agogd unreachable, 5 token.
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any, NoReturn

import click

from orchestrator.core.safe_text import neutralise, neutralise_data
from orchestrator.ctl import render
from orchestrator.ctl.client import EXIT_FAILED, auth_hint, call, exit_code, target

TOKEN_HELP = "API token (default: AGOG_API_TOKEN, else agogd dev's DIR/api_token)."


def _fail(status: int, body: dict[str, Any], as_json: bool) -> NoReturn:
    if as_json:
        click.echo(json.dumps(body, indent=2))
    error = str(body.get("error", status))
    if status in (401, 403):
        error = auth_hint(status, error)
    click.echo(f"agogctl: {neutralise(error)}", err=True)
    sys.exit(exit_code(status))


def _print(
    body: dict[str, Any], as_json: bool, lay_out: Callable[[dict[str, Any], Any], list[str]]
) -> None:
    """The JSON as the API gave it, or its layout with every string neutralised."""
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    paint = render.Painter(render.colour_enabled())
    lines = lay_out(neutralise_data(body), paint)
    click.echo(
        "\n".join(render.terminal_safe(line, paint.enabled) for line in lines), color=paint.enabled
    )


def _get(ctx: click.Context, token: str | None, path: str, as_json: bool) -> dict[str, Any]:
    found = target(ctx, token)
    status, body = call(found.url, "GET", path, token=found.token)
    if status >= 300:
        _fail(status, body, as_json)
    return body


@click.command("deploys")
@click.option("--env", "environment", default=None, help="Only this environment (staging...).")
@click.option("--req", "req_number", default=None, help="Only this REQ's deployments.")
@click.option("--status", default=None, help="Only this status (healthy, rolled_back...).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--before", type=click.IntRange(min=1), default=None, help="Older than this id.")
@click.option("--token", envvar="AGOG_API_TOKEN", default=None, help=TOKEN_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def deploys(
    ctx: click.Context,
    environment: str | None,
    req_number: str | None,
    status: str | None,
    limit: int,
    before: int | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Berry's deployment records, newest first: environment, REQ, commit,
    status, health, smoke tests, pre-flight, rollback and backup."""
    query: dict[str, Any] = {"limit": limit}
    for key, value in (("env", environment), ("req", req_number), ("status", status)):
        if value:
            query[key] = value
    if before is not None:
        query["before"] = before
    body = _get(ctx, token, "/api/deploys?" + urllib.parse.urlencode(query), as_json)
    _print(body, as_json, render.deploys_table)


@click.group("deploy")
def deploy() -> None:
    """One deployment record: show it, or restore the app database from its backup."""


@deploy.command("show")
@click.argument("deployment_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--token", envvar="AGOG_API_TOKEN", default=None, help=TOKEN_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def show(ctx: click.Context, deployment_id: int, token: str | None, as_json: bool) -> None:
    """Everything recorded of deployment ID (the ID column of `agogctl deploys`)."""
    _print(
        _get(ctx, token, f"/api/deploys/{deployment_id}", as_json), as_json, render.deploy_detail
    )


def _operator() -> str:
    """Who asks, for the record: the local user at this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:100]


def _confirm(record: dict[str, Any], undo: bool) -> bool:
    safe = neutralise_data(record)
    backup = safe.get("backup") or {}
    source = (
        "the dump taken before its last restore"
        if undo
        else f"its backup {backup.get('path')} (taken {render.stamp(backup.get('taken_at'))})"
    )
    click.echo(
        f"Restore the app database {backup.get('database') or ''} of deployment {safe['id']}"
        f" ({safe['req_number']}, {safe['environment']}, commit"
        f" {render.short_sha(safe.get('commit_sha'))}) from {source}?\nIts current contents"
        " are replaced (they are dumped first, so this can be undone).",
        err=True,
    )
    return click.confirm("Restore?", default=False, err=True)


@deploy.command("restore-db")
@click.argument("deployment_id", metavar="DEPLOYMENT", type=click.IntRange(min=1))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--undo", is_flag=True, help="Restore the dump taken before this deployment's last restore."
)
@click.option(
    "--timeout",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds to wait for the dump and the restore.",
)
@click.option("--token", envvar="AGOG_API_TOKEN", default=None, help=TOKEN_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def restore_db(
    ctx: click.Context,
    deployment_id: int,
    yes: bool,
    undo: bool,
    timeout: float,
    token: str | None,
    as_json: bool,
) -> None:
    """Restore the app database (AGOG_BERRY_APP_DB_DSN, as agogd has it) from
    the backup Berry took with DEPLOYMENT, on an operator's decision. agogd
    checks the file's sha256, dumps the database as it is first (the restore
    can be undone: --undo), restores in one transaction and records it."""
    path = f"/api/deploys/{deployment_id}"
    record = _get(ctx, token, path, as_json)
    backup = record.get("backup") or {}
    has_source = undo or bool(backup and not backup.get("pruned") and not backup.get("pruned_at"))
    if has_source and not yes and not _confirm(record, undo):
        click.echo("agogctl: nothing restored", err=True)
        sys.exit(EXIT_FAILED)
    found = target(ctx, token)
    fields = {"restore_id": uuid.uuid4().hex, "by": _operator(), "undo": undo}
    status, body = call(found.url, "POST", f"{path}/restore-db", fields, found.token, timeout)
    if status >= 300:
        _fail(status, body, as_json)
    _print(body, as_json, lambda b, _paint: [render.restore_line(b)])
