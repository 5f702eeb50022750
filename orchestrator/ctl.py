"""``agogctl``: the operator CLI. It talks to agogd's HTTP API."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import click

DEFAULT_DATA_DIR = Path(".agogd")


def discover_url(explicit: str | None) -> str:
    """--url, then AGOG_URL, then the endpoints.json of `agogd dev`."""
    if explicit:
        return explicit.rstrip("/")
    if os.environ.get("AGOG_URL"):
        return os.environ["AGOG_URL"].rstrip("/")
    data_dir = Path(os.environ.get("AGOG_DATA_DIR", DEFAULT_DATA_DIR))
    endpoints = data_dir / "endpoints.json"
    try:
        return str(json.loads(endpoints.read_text())["http_url"]).rstrip("/")
    except (OSError, ValueError, KeyError):
        raise click.UsageError(
            f"cannot find agogd: pass --url, set AGOG_URL, or start `agogd dev` (no {endpoints})"
        ) from None


def local_token(url: str) -> str | None:
    """The token `agogd dev` keeps in its data dir, sent only to that agogd."""
    data_dir = Path(os.environ.get("AGOG_DATA_DIR", DEFAULT_DATA_DIR))
    try:
        endpoints = json.loads((data_dir / "endpoints.json").read_text())
        if str(endpoints["http_url"]).rstrip("/") != url:
            return None
        return Path(endpoints["api_token_file"]).read_text().strip() or None
    except (OSError, ValueError, KeyError, TypeError):
        return None


@click.group()
@click.option(
    "--url",
    envvar=None,
    default=None,
    help="agogd's HTTP URL (else AGOG_URL, else .agogd/endpoints.json).",
)
@click.pass_context
def main(ctx: click.Context, url: str | None) -> None:
    """Operate a running agogd: readiness now; REQs, streams and memory as they land."""
    ctx.obj = {"url": url}


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def ready(ctx: click.Context, as_json: bool) -> None:
    """Ask agogd whether it is ready; exit 0 if so, 1 if not, 3 if unreachable."""
    url = discover_url(ctx.obj["url"])
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
            body, ok = json.loads(resp.read()), True
    except urllib.error.HTTPError as exc:
        body, ok = json.loads(exc.read() or b"{}"), False
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"agogctl: cannot reach agogd at {url}: {exc}", err=True)
        sys.exit(3)
    if as_json:
        click.echo(json.dumps(body, indent=2))
    else:
        checks = body.get("checks", {})
        click.echo(
            f"{body.get('status', 'unknown')}  " + "  ".join(f"{k}={v}" for k, v in checks.items())
        )
    sys.exit(0 if ok else 1)


def _call(
    url: str,
    method: str,
    path: str,
    body: dict[str, object] | None = None,
    token: str | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, object]]:
    """One JSON request to agogd; exits 3 when agogd cannot be reached."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": exc.reason}
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"agogctl: cannot reach agogd at {url}: {exc}", err=True)
        sys.exit(3)


@main.group()
def req() -> None:
    """Submit and inspect requirements."""


@req.command("submit")
@click.argument("req_number")
@click.option("--title", default="", help="Short title.")
@click.option("--priority", default="P2", show_default=True, help="P0 (urgent) to P3.")
@click.option("--owner", default=None)
@click.option("--requirement", "requirements", multiple=True, help="One requirement line; repeat.")
@click.option(
    "--token", envvar="AGOG_API_TOKEN", default=None, help="API token (default: AGOG_API_TOKEN)."
)
@click.option("--json", "as_json", is_flag=True)
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
    url = discover_url(ctx.obj["url"])
    status, body = _call(
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
        token or local_token(url),
    )
    if as_json:
        click.echo(json.dumps(body, indent=2))
    elif status < 300:
        click.echo(f"{req_number}: {'submitted' if body.get('created') else 'already known'}")
    else:
        click.echo(f"agogctl: {body.get('error', status)}", err=True)
    sys.exit(0 if status < 300 else 1)


@req.command("show")
@click.argument("req_number")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def req_show(ctx: click.Context, req_number: str, as_json: bool) -> None:
    """Show a REQ and its stage attempts."""
    url = discover_url(ctx.obj["url"])
    status, body = _call(url, "GET", f"/api/reqs/{req_number}")
    if status >= 300:
        click.echo(f"agogctl: {body.get('error', status)}", err=True)
        sys.exit(4 if status == 404 else 1)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(
        f"{body['req_number']}  {body['status']}  stage={body['current_stage']}  "
        f"P{body['priority']}  {body['title']}"
    )
    for attempt in body.get("attempts", []):  # type: ignore[union-attr]
        click.echo(
            f"  {attempt['stage']}  {attempt['agent']:<8} #{attempt['attempt']}  "
            f"{attempt['status']:<10} {attempt.get('reason') or ''}"
        )


@main.group()
def infra() -> None:
    """Miki's infrastructure report."""


@infra.command("report")
@click.option("--feature", default="infra", show_default=True, help="Names the report's subject.")
@click.option(
    "--token", envvar="AGOG_API_TOKEN", default=None, help="API token (default: AGOG_API_TOKEN)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def infra_report(ctx: click.Context, feature: str, token: str | None, as_json: bool) -> None:
    """Build and publish the infrastructure report on agog.deliverables.miki.devops.<feature>,
    and print it. Exit 0 when all is well, 1 when it found problems or was not published."""
    url = discover_url(ctx.obj["url"])
    status, body = _call(
        url, "POST", "/api/infra/report", {"feature": feature}, token or local_token(url), 180
    )
    if status >= 300:
        click.echo(f"agogctl: {body.get('error', status)}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(body, indent=2))
    else:
        from workers.infra_report import render_text

        click.echo(render_text(body))
    sys.exit(0 if body.get("published") and body.get("verdict") == "ok" else 1)
