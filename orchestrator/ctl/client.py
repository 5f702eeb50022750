"""How agogctl reaches agogd: finding its URL and token (``--url``,
``--data-dir``, ``AGOG_URL``, agogd dev's ``endpoints.json``) and one JSON
request. Every agogctl command module uses it; it uses none of them."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from orchestrator.core.safe_text import neutralise

DEFAULT_DATA_DIR = Path(".agogd")

EXIT_OK = 0
EXIT_FAILED = 1  # refused (400, 409) or failed; `ready`: not ready; report: problems
EXIT_USAGE = 2  # bad arguments, or agogd cannot be found
EXIT_UNREACHABLE = 3  # no answer from agogd, or it cannot serve (503)
EXIT_NOT_FOUND = 4  # unknown REQ (404)
EXIT_UNAUTHORIZED = 5  # missing or wrong token (401), or no token configured (403)


@dataclass
class Target:
    """Which agogd agogctl talks to, with what token, and where each came
    from: an error then names the file or variable that would fix it."""

    url: str
    data_dir: Path
    data_dir_from: str  # "--data-dir", "AGOG_DATA_DIR" or "default"
    token: str | None = None
    token_from: str | None = None  # "--token", "AGOG_API_TOKEN" or the token file
    token_note: str = ""  # why agogd dev's token was not used, if it was not


def data_dir_of(explicit: Path | None) -> tuple[Path, str]:
    """`agogd dev`'s data dir: --data-dir, else AGOG_DATA_DIR, else ./.agogd."""
    if explicit is not None:
        return explicit, "--data-dir"
    if os.environ.get("AGOG_DATA_DIR"):
        return Path(os.environ["AGOG_DATA_DIR"]), "AGOG_DATA_DIR"
    return DEFAULT_DATA_DIR, "default"


def _usage(message: str) -> NoReturn:
    click.echo(f"agogctl: {neutralise(message)}", err=True)
    sys.exit(EXIT_USAGE)


def _read_endpoints(data_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """endpoints.json of a data dir, or None and what is wrong with it."""
    path = data_dir / "endpoints.json"
    try:
        endpoints = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"no endpoints.json in {data_dir.absolute()}"
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path.absolute()}: {exc}"
    if not isinstance(endpoints, dict) or not endpoints.get("http_url"):
        return None, f"{path.absolute()} has no http_url"
    return endpoints, ""


def _not_found(problem: str, data_dir: Path, source: str) -> NoReturn:
    if source == "--data-dir":
        hint = (
            f"is `agogd dev --data-dir {data_dir}` (or scripts/dev --data-dir) running?"
            " Else pass --url or set AGOG_URL"
        )
    elif source == "AGOG_DATA_DIR":
        hint = (
            "is `agogd dev` running with that AGOG_DATA_DIR? Else fix AGOG_DATA_DIR,"
            " pass --data-dir DIR, or set AGOG_URL"
        )
    else:
        hint = (
            "pass --data-dir DIR or set AGOG_DATA_DIR (the DIR of `agogd dev --data-dir DIR`),"
            " or set AGOG_URL (or pass --url) for an agogd elsewhere"
        )
    _usage(f"cannot find agogd: {problem}: {hint}")


def discover_url(explicit: str | None, data_dir: Path | None = None) -> str:
    """--url, then --data-dir's endpoints.json, then AGOG_URL, then the
    endpoints.json of AGOG_DATA_DIR or ./.agogd (`agogd dev`'s data dir)."""
    if explicit:
        return explicit.rstrip("/")
    if data_dir is None and os.environ.get("AGOG_URL"):
        return os.environ["AGOG_URL"].rstrip("/")
    directory, source = data_dir_of(data_dir)
    endpoints, problem = _read_endpoints(directory)
    if endpoints is None:
        _not_found(problem, directory, source)
    return str(endpoints["http_url"]).rstrip("/")


def local_token(url: str, data_dir: Path | None = None) -> tuple[str | None, str]:
    """The token `agogd dev` keeps in its data dir, sent only to that agogd:
    (the token, or None, and the file it came from, or why there is none)."""
    directory, _ = data_dir_of(data_dir)
    endpoints, problem = _read_endpoints(directory)
    if endpoints is None:
        return None, problem
    theirs = str(endpoints["http_url"]).rstrip("/")
    path = Path(str(endpoints.get("api_token_file") or directory / "api_token"))
    if theirs != url:
        return None, f"{path} is the token of the agogd at {theirs}, not sent to {url}"
    try:
        token = path.read_text().strip()
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    return (token, str(path)) if token else (None, f"{path} is empty")


def target(ctx: click.Context, token: str | None) -> Target:
    """The agogd to talk to and the token to send: --token or AGOG_API_TOKEN,
    else the token file of `agogd dev`'s data dir."""
    data_dir = ctx.obj.get("data_dir")
    url = discover_url(ctx.obj.get("url"), data_dir)
    directory, source = data_dir_of(data_dir)
    found = Target(url, directory, source)
    if token:
        origin = ctx.get_parameter_source("token")
        found.token = token
        found.token_from = (
            "AGOG_API_TOKEN" if origin == click.core.ParameterSource.ENVIRONMENT else "--token"
        )
    else:
        found.token, where = local_token(url, data_dir)
        if found.token is not None:
            found.token_from = where
        else:
            found.token_note = where
    ctx.obj["target"] = found
    return found


def auth_hint(status: int, error: str) -> str:
    """The 401/403 message, saying where a token comes from (or came from)."""
    ctx = click.get_current_context(silent=True)
    found: Target | None = ctx.obj.get("target") if ctx and ctx.obj else None
    if status == 403:
        return f"{error} (agogd has no API token: set AGOG_API_TOKEN where agogd runs)"
    if found is None:
        return error
    if found.token is None:
        message = (
            f"the API needs a token ({error}): set AGOG_API_TOKEN or pass --token, or pass"
            " --data-dir DIR so agogctl reads DIR/api_token (`agogd dev --data-dir DIR` writes it)"
        )
        return f"{message} ({found.token_note})" if found.token_note else message
    return (
        f"the token from {found.token_from} was refused ({error}): it must equal the"
        " AGOG_API_TOKEN of the agogd at " + found.url
    )


def exit_code(status: int) -> int:
    """The exit code for an HTTP status (see ``agogctl --help``)."""
    if status < 300:
        return EXIT_OK
    if status in (401, 403):
        return EXIT_UNAUTHORIZED
    if status == 404:
        return EXIT_NOT_FOUND
    if status in (502, 503, 504):
        return EXIT_UNREACHABLE
    return EXIT_FAILED


def unreachable(url: str, exc: BaseException) -> NoReturn:
    reason = getattr(exc, "reason", None) or exc
    click.echo(neutralise(f"agogctl: cannot reach agogd at {url}: {reason}"), err=True)
    sys.exit(EXIT_UNREACHABLE)


def call(
    url: str,
    method: str,
    path: str,
    body: dict[str, object] | None = None,
    token: str | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, Any]]:
    """One JSON request to agogd; exits 3 when agogd cannot be reached."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read() or b"{}")
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        answer.setdefault("error", f"HTTP {exc.code} {exc.reason}")
        return exc.code, answer
    except (urllib.error.URLError, OSError) as exc:
        unreachable(url, exc)
