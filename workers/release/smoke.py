"""Smoke tests: what Berry runs against a stack once it is healthy.

``AGOG_BERRY_SMOKE_TESTS`` is a JSON list; each entry is a command or an
HTTP check::

    [{"name": "home", "url": "http://127.0.0.1:${WEB_PORT}/", "status": 200,
      "contains": "Welcome"},
     {"name": "api", "command": "npm run smoke", "timeout": 120}]

The same list runs against each environment: ``${VAR}`` in a URL is read
from that environment's env file (then agogd's environment), and a command
gets the env file's variables, ``DEPLOY_ENV`` (the environment's name) and
``COMPOSE_PROJECT_NAME`` in its environment. Commands are split into an argv
(no shell), run in the workspace with a timeout. Parsing is pure and checked
at start-up; running is below it.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.core.redact import redact_text
from orchestrator.runtime.logs import get_logger
from workers.adapters.supervise import ProcessResult, run_process
from workers.release.environments import EnvError, check_template, interpolate

log = get_logger("agogd.smoke")

SETTING = "AGOG_BERRY_SMOKE_TESTS"
KEYS = frozenset({"name", "command", "url", "status", "contains", "timeout"})
TAIL = 500  # characters of output (or body) kept per result
BODY_LIMIT = 256 * 1024  # bytes of a response body read
MAX_TIMEOUT = 3600.0


@dataclass(frozen=True)
class SmokeCheck:
    """One smoke test, as configured (a URL still holds its ``${VAR}``)."""

    name: str
    kind: str  # "command" | "http"
    timeout: float
    argv: tuple[str, ...] = ()
    url: str = ""
    status: int = 200
    contains: str | None = None


def parse_checks(raw: object, default_timeout: float) -> list[SmokeCheck]:
    """The configured smoke tests, or a ValueError saying which entry is wrong and why."""
    if not isinstance(raw, list):
        raise ValueError(f"{SETTING}: a JSON list of smoke tests, not {type(raw).__name__}")
    checks: list[SmokeCheck] = []
    for index, entry in enumerate(raw):
        try:
            check = _check(entry, default_timeout)
        except ValueError as exc:
            raise ValueError(f"{SETTING}[{index}]: {exc}") from None
        if any(c.name == check.name for c in checks):
            raise ValueError(f"{SETTING}[{index}]: the name {check.name!r} is used twice")
        checks.append(check)
    return checks


def _check(entry: object, default_timeout: float) -> SmokeCheck:
    if not isinstance(entry, dict):
        raise ValueError("each smoke test is a JSON object")
    unknown = sorted(set(entry) - KEYS)
    if unknown:
        raise ValueError(f"unknown keys {unknown} (known: {sorted(KEYS)})")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise ValueError("'name' is a non-empty string of at most 64 characters")
    if ("command" in entry) == ("url" in entry):
        raise ValueError(f"{name!r}: give exactly one of 'command' and 'url'")
    timeout = entry.get("timeout", default_timeout)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise ValueError(f"{name!r}: 'timeout' is seconds, above 0 and at most {MAX_TIMEOUT:.0f}")
    if "command" in entry:
        extra = sorted({"status", "contains"} & set(entry))
        if extra:
            raise ValueError(f"{name!r}: {extra} belong to URL checks")
        return SmokeCheck(name.strip(), "command", float(timeout), argv=_argv(name, entry))
    url, status, contains = entry["url"], entry.get("status", 200), entry.get("contains")
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"{name!r}: 'url' is an http:// or https:// URL")
    try:
        check_template(url)  # the values come later, per environment
    except EnvError as exc:
        raise ValueError(f"{name!r}: 'url': {exc}") from None
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"{name!r}: 'status' is an HTTP status code (100-599)")
    if contains is not None and (not isinstance(contains, str) or not contains):
        raise ValueError(f"{name!r}: 'contains' is a non-empty string")
    return SmokeCheck(
        name.strip(), "http", float(timeout), url=url, status=status, contains=contains
    )


def _argv(name: str, entry: dict[str, Any]) -> tuple[str, ...]:
    command = entry["command"]
    if isinstance(command, list):
        argv = command
    elif isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ValueError(f"{name!r}: 'command' cannot be split: {exc}") from None
    else:
        raise ValueError(f"{name!r}: 'command' is a string or a list of strings")
    if not argv or not all(isinstance(a, str) and a for a in argv):
        raise ValueError(f"{name!r}: 'command' is a string or a list of non-empty strings")
    return tuple(argv)


def all_passed(results: list[dict[str, Any]]) -> bool:
    return all(r.get("passed") is True for r in results)


def failures(results: list[dict[str, Any]]) -> str:
    """One line naming each failed smoke test and why."""
    return "; ".join(
        f"{r['name']}: {r.get('reason', 'failed')}" for r in results if not r["passed"]
    )


# --- running them ------------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    """Where smoke tests run: the environment, its project and its variables."""

    environment: str
    project: str
    variables: Mapping[str, str]  # the env file's, over agogd's public environment
    cwd: Path


async def run_checks(
    checks: list[SmokeCheck], place: Place, *, kill_grace: float
) -> list[dict[str, Any]]:
    """Run every check (one failing does not skip the others); a result each."""
    results = []
    for check in checks:
        started = time.monotonic()
        if check.kind == "command":
            result = await _command(check, place, kill_grace)
        else:
            result = await _http(check, place)
        result["seconds"] = round(time.monotonic() - started, 3)
        level = log.info if result["passed"] else log.warning
        level(
            "berry.smoke",
            environment=place.environment,
            name=check.name,
            kind=check.kind,
            passed=result["passed"],
            reason=result.get("reason"),
        )
        results.append(result)
    return results


async def _command(check: SmokeCheck, place: Place, kill_grace: float) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
    env.update(place.variables)
    env.update(DEPLOY_ENV=place.environment, COMPOSE_PROJECT_NAME=place.project)
    out: dict[str, Any] = {"name": check.name, "kind": "command", "command": list(check.argv)}
    run = await run_process(
        list(check.argv),
        stdin="",
        cwd=place.cwd,
        env=env,
        timeout=check.timeout,
        kill_grace=kill_grace,
        output_limit=64 * 1024,
        on_line=lambda _stream, _line: None,
    )
    tail = (run.stdout[-TAIL:] + "\n" + run.stderr_tail[-TAIL:]).strip()[-TAIL:]
    out.update(exit_code=run.exit_code, output_tail=redact_text(tail))
    reason = run_failure(run, check.timeout)
    if reason is None:
        return {**out, "passed": True}
    return {**out, "passed": False, "reason": reason}


def run_failure(run: ProcessResult, timeout: float) -> str | None:
    """Why a supervised command did not pass (None: it exited 0)."""
    if run.error:
        return run.error
    if run.timed_out:
        return f"timed out after {timeout:.0f}s"
    if run.exit_code != 0:
        return f"exit code {run.exit_code}"
    return None


async def _http(check: SmokeCheck, place: Place) -> dict[str, Any]:
    out: dict[str, Any] = {"name": check.name, "kind": "http", "url": redact_text(check.url)}
    try:
        url = interpolate(check.url, place.variables)
        out["resolved"] = redact_text(interpolate(check.url, place.variables, masked=True))
    except EnvError as exc:
        return {**out, "passed": False, "status": None, "reason": f"the URL: {exc}"}
    out["expected"] = {"status": check.status, "contains": check.contains}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=check.timeout)) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            status = response.status
            body = (await response.content.read(BODY_LIMIT)).decode("utf-8", "replace")
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        reason = f"no answer: {type(exc).__name__}: {exc}"[:300]
        return {**out, "passed": False, "status": None, "reason": redact_text(reason)}
    out.update(status=status, output_tail=body[-TAIL:])
    if status != check.status:
        return {**out, "passed": False, "reason": f"answered {status}, expected {check.status}"}
    if check.contains is not None and check.contains not in body:
        return {**out, "passed": False, "reason": f"the body does not contain {check.contains!r}"}
    return {**out, "passed": True}
