"""Berry on the forge: push, pull request, CI, and an issue when it fails.

Seed 002 asks Berry to push, open a pull request when the target is not the
default branch, watch CI, and open an issue (the REQ BLOCKED) when the push,
the tests or CI fail. Every step is idempotent: the push sends a commit the
forge may already have, the pull request and the issue are looked up by
their branch and their ``[REQ-…]`` title before one is made, so a retry or a
restart after kill -9 never opens a second. The token travels in git's
environment and the client's headers only, never in argv, a URL or a log.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from orchestrator.runtime import failpoints
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.settings import Settings
from workers.adapters.forge import CiStatus, Forge, ForgeError
from workers.adapters.git_repo import GitError, GitRepo
from workers.release.plan import issue_body, issue_key, issue_title

log = get_logger("agogd.berry")


class ForgeStop(Exception):
    """The forge step failed: the REQ is BLOCKED with this reason."""

    def __init__(self, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.reason, self.extra = reason, extra


class ForgeSteps:
    def __init__(self, *, forge: Forge, repo: GitRepo, settings: Settings) -> None:
        self.forge, self.repo, self.settings = forge, repo, settings

    async def push(self, sha: str, branch: str, *, force: bool) -> None:
        """Push ``sha`` to ``branch`` on the forge (forced for a REQ's own
        branch, which a rebase rewrites)."""
        ref = f"{'+' if force else ''}{sha}:refs/heads/{branch}"
        try:
            await self.repo.run(
                "push", "--quiet", "--porcelain", self.forge.git_url(), ref,
                env=self.forge.git_env(),
            )  # fmt: skip
        except GitError as exc:
            raise ForgeStop(f"the push of {branch} failed: {exc}", push_error=str(exc)) from None
        failpoints.hit("forge.pushed")
        log.info("forge.pushed", branch=branch, commit_sha=sha)

    async def base(self) -> str:
        """The pull requests' base; asked first, so that a missing or refused
        token is the forge's clear answer rather than git's prompt error."""
        return self.settings.forge_base or await self.forge.default_branch()

    async def pull_request(
        self, *, head: str, base: str, title: str, body: str
    ) -> dict[str, Any] | None:
        """The open pull request of ``head`` into ``base`` (made or updated
        once); None when ``head`` is the base itself."""
        if head == base:
            return None
        pr = await self.forge.ensure_pull_request(head=head, base=base, title=title, body=body)
        failpoints.hit("forge.pull_request")
        log.info("forge.pull_request", number=pr.number, created=pr.created, updated=pr.updated)
        return {
            "number": pr.number,
            "url": pr.url,
            "head": pr.head,
            "base": pr.base,
            "created": pr.created,
            "updated": pr.updated,
        }

    async def wait_ci(self, sha: str) -> CiStatus | None:
        """The commit's CI once it is decided, or at the timeout (None: not
        waited for, AGOG_FORGE_CI_TIMEOUT=0)."""
        timeout = self.settings.forge_ci_timeout
        if timeout <= 0:
            return None
        deadline = time.monotonic() + timeout
        while True:
            status = await self.forge.ci_status(sha)
            if status.state in ("success", "failure"):
                return status
            left = deadline - time.monotonic()
            if left <= 0:
                return status
            await asyncio.sleep(min(self.settings.forge_ci_poll, left))

    async def report(self, req: str, what: str, detail: str, tail: str) -> dict[str, Any]:
        """Open the REQ's issue, or comment on the one open; never raises."""
        try:
            issue = await self.forge.ensure_issue(
                key=issue_key(req),
                title=issue_title(req, what),
                body=issue_body(req, what, detail, tail),
            )
        except ForgeError as exc:
            log.warning("forge.issue_failed", error=str(exc))
            return {"error": str(exc)}
        log.info("forge.issue", number=issue.number, created=issue.created)
        return {"number": issue.number, "url": issue.url, "created": issue.created}

    async def resolved(self, req: str, comment: str) -> dict[str, Any] | None:
        """Close the REQ's open issue with a comment, if it has one; never raises."""
        try:
            issue = await self.forge.close_issue(key=issue_key(req), comment=comment)
        except ForgeError as exc:
            log.warning("forge.issue_close_failed", error=str(exc))
            return {"error": str(exc)}
        if issue is None:
            return None
        log.info("forge.issue_closed", number=issue.number)
        return {"number": issue.number, "url": issue.url, "closed": True}


def failing_checks(status: CiStatus) -> list[dict[str, Any]]:
    return [
        {"name": c.name, "state": c.state, "url": c.url}
        for c in status.checks
        if c.state not in ("success", "pending")
    ]


def describe_checks(checks: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{c['name']} ({c['state']}{', ' + c['url'] if c.get('url') else ''})" for c in checks[:10]
    )
