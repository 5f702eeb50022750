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
