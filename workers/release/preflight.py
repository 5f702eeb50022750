"""Seed 002's pre-flight checklist before production, as a pure function.

Seed 002 asks, before a production deploy: all tests passing, the staging
deployment successful, smoke tests passing, a rollback plan (a target to go
back to), and migrations run with a backup. Each is an item ``{item, ok,
detail}``; any item not ok blocks the production step, and the reason names
each one. What "tests green" means when no test command is configured: not
green. The seed's checklist asks for passing tests, and a deploy nothing
tested is exactly what it guards against, so it blocks (green CI on the
forge counts as tests green).
"""

from __future__ import annotations

from typing import Any

TESTS = "tests green"
STAGING = "staging healthy"
SMOKE = "smoke tests green at staging"
ROLLBACK = "rollback target known"
BACKUP = "database backup taken"


def checklist(
    *,
    tests: dict[str, Any] | None,
    ci: dict[str, Any] | None,
    staging_health: dict[str, Any] | None,
    staging_smoke: list[dict[str, Any]] | None,
    rollback_target: str | None,
    migrations: list[str],
    backup: dict[str, Any] | None,
    backup_error: str | None,
) -> list[dict[str, Any]]:
    """The checklist's items, in the seed's order; the backup item only when
    the commit adds migrations."""
    items = [
        _tests(tests, ci),
        _staging(staging_health),
        _smoke(staging_smoke),
        _item(
            ROLLBACK,
            rollback_target is not None,
            f"commit {rollback_target[:12]}"
            if rollback_target
            else "no earlier deployment or parent commit to roll back to",
        ),
    ]
    if migrations:
        items.append(backup_item(migrations, backup, backup_error))
    return items


def blocking(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if not i["ok"]]


def reason(items: list[dict[str, Any]]) -> str:
    """Why production is blocked: each missing item and its detail."""
    missing = blocking(items)
    return "pre-flight blocks production: " + "; ".join(
        f"{i['item']}: {i['detail']}" for i in missing
    )


def _item(item: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"item": item, "ok": ok, "detail": detail}


def _tests(tests: dict[str, Any] | None, ci: dict[str, Any] | None) -> dict[str, Any]:
    passed = (tests or {}).get("passed")
    ci_state = (ci or {}).get("state")
    if passed is True:
        command = " ".join((tests or {}).get("command") or [])[:200]
        return _item(TESTS, True, f"passed: {command}" if command else "passed")
    if passed is False:
        return _item(TESTS, False, f"failed: {(tests or {}).get('reason', 'red')}")
    if ci_state == "success":
        return _item(TESTS, True, "no test command; CI is green")
    return _item(
        TESTS,
        False,
        "no test command configured (AGOG_BERRY_TEST_COMMAND) and no green CI:"
        " nothing says the commit works",
    )


def _staging(health: dict[str, Any] | None) -> dict[str, Any]:
    if health is None:
        return _item(STAGING, False, "staging was not deployed")
    if health.get("healthy") is True:
        return _item(STAGING, True, "every service running and healthy")
    problems = "; ".join(str(p) for p in (health.get("problems") or [])[:3])
    return _item(STAGING, False, problems or "not healthy")


def _smoke(results: list[dict[str, Any]] | None) -> dict[str, Any]:
    if results is None:
        return _item(SMOKE, False, "the smoke tests did not run at staging")
    if not results:
        return _item(SMOKE, False, "no smoke tests configured (AGOG_BERRY_SMOKE_TESTS)")
    failed = [r for r in results if r.get("passed") is not True]
    if failed:
        names = ", ".join(f"{r.get('name')} ({r.get('reason', 'failed')})" for r in failed[:5])
        return _item(SMOKE, False, f"{len(failed)} of {len(results)} failed: {names}")
    return _item(SMOKE, True, f"{len(results)} passed")


def backup_item(
    migrations: list[str], backup: dict[str, Any] | None, error: str | None
) -> dict[str, Any]:
    shown = ", ".join(migrations[:5]) + (
        f" (+{len(migrations) - 5})" if len(migrations) > 5 else ""
    )
    if backup is not None:
        return _item(
            BACKUP, True, f"{backup.get('path')} ({backup.get('bytes')} bytes) before {shown}"
        )
    return _item(BACKUP, False, f"the commit adds migrations ({shown}): {error or 'no backup'}")
