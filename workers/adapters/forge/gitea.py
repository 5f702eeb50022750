"""Gitea and Forgejo through their REST API (``/api/v1``), with plain aiohttp.

Only endpoints that every Gitea and Forgejo release of the last years
serves are used: pull requests are found by listing the open ones and
comparing ``head.ref`` (the ``head`` filters differ between versions), and
labels are added by name after an issue is opened (the create call takes
label ids only).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from workers.adapters.forge.base import (
    MAX_PAGES,
    Check,
    CiStatus,
    ForgeClient,
    ForgeConfig,
    ForgeError,
    FoundIssue,
    FoundPull,
    status_state,
    summarise,
)

LIMIT = 50  # Gitea's default maximum page size


class GiteaForge(ForgeClient):
    """Berry's forge on Gitea or Forgejo."""

    def __init__(self, config: ForgeConfig) -> None:
        super().__init__(config)
        self._session: aiohttp.ClientSession | None = None
        base = config.api_url.rstrip("/")
        self._repo_url = f"{base}/repos/{config.owner}/{config.name}"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                headers={"Accept": "application/json", "User-Agent": "agogd-berry"},
            )
        return self._session

    async def _request(
        self,
        what: str,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | None = None,
        body: Any = None,
    ) -> Any:
        """One call: its JSON answer, or a ForgeError that says what failed."""
        headers = {"Authorization": f"token {self.token()}"}
        try:
            async with self._client().request(
                method, self._repo_url + path, params=params, json=body, headers=headers
            ) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise self.failure(what, resp.status, _message(text))
                if not text:
                    return None
                try:
                    return await resp.json(content_type=None)
                except ValueError:
                    raise self.failure(what, resp.status, "the answer is not JSON") from None
        except TimeoutError:
            raise self.failure(what, None, f"no answer within {self.config.timeout}s") from None
        except aiohttp.ClientError as exc:
            raise self.failure(
                what, None, f"the forge is unreachable ({type(exc).__name__})"
            ) from None

    async def _pages(self, what: str, path: str, params: dict[str, str | int]) -> list[Any]:
        items: list[Any] = []
        for page in range(1, MAX_PAGES + 1):
            batch = await self._request(
                what, "GET", path, params={**params, "limit": LIMIT, "page": page}
            )
            if not isinstance(batch, list):
                raise ForgeError(f"{what} failed: the answer is not a list")
            items += batch
            if len(batch) < LIMIT:
                break
        return items

    async def default_branch(self) -> str:
        repo = await self._request("reading the repository", "GET", "")
        return str(repo["default_branch"])

    async def find_pull(self, head: str) -> FoundPull | None:
        pulls = await self._pages("listing the pull requests", "/pulls", {"state": "open"})
        for pull in pulls:
            if pull["head"]["ref"] == head:
                return _pull(pull)
        return None

    async def create_pull(self, *, head: str, base: str, title: str, body: str) -> FoundPull:
        data = {"head": head, "base": base, "title": title, "body": body}
        return _pull(await self._request("opening the pull request", "POST", "/pulls", body=data))

    async def update_pull(self, number: int, *, title: str, body: str) -> FoundPull:
        pull = await self._request(
            f"updating pull request #{number}",
            "PATCH",
            f"/pulls/{number}",
            body={"title": title, "body": body},
        )
        return _pull(pull)

    async def add_labels(self, number: int, labels: tuple[str, ...]) -> None:
        await self._request(
            f"labelling #{number}",
            "POST",
            f"/issues/{number}/labels",
            body={"labels": list(labels)},
        )

    async def request_reviewers(self, number: int, reviewers: tuple[str, ...]) -> None:
        await self._request(
            f"requesting reviewers on pull request #{number}",
            "POST",
            f"/pulls/{number}/requested_reviewers",
            body={"reviewers": list(reviewers)},
        )

    async def open_issues(self) -> list[FoundIssue]:
        items = await self._pages(
            "listing the issues", "/issues", {"state": "open", "type": "issues"}
        )
        return [_issue(item) for item in items if not item.get("pull_request")]

    async def create_issue(self, *, title: str, body: str) -> FoundIssue:
        issue = _issue(
            await self._request(
                "opening the issue", "POST", "/issues", body={"title": title, "body": body}
            )
        )
        if self.config.labels:  # ensure_issue adds any still missing on a retry
            await self.add_labels(issue.number, self.config.labels)
        return issue

    async def comment(self, number: int, body: str) -> None:
        await self._request(
            f"commenting on #{number}", "POST", f"/issues/{number}/comments", body={"body": body}
        )

    async def close(self, number: int) -> None:
        await self._request(
            f"closing #{number}", "PATCH", f"/issues/{number}", body={"state": "closed"}
        )

    async def ci_status(self, sha: str) -> CiStatus:
        """The combined status: Gitea Actions and outside CI both report there."""
        combined = await self._request(
            f"reading the commit statuses of {sha}",
            "GET",
            f"/commits/{sha}/status",
            params={"limit": LIMIT},
        )
        checks = tuple(
            Check(
                str(st.get("context") or "status"),
                # Gitea names a status's state "status" (older releases: "state")
                status_state(str(st.get("status") or st.get("state") or "")),
                st.get("target_url") or None,
            )
            for st in (combined or {}).get("statuses") or []
        )
        return summarise(checks)

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            await asyncio.sleep(0)  # let the connector's transports close


def _message(text: str) -> str:
    """The forge's own error message (Gitea's ``message`` field), if any."""
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(body, dict):
        message = str(body.get("message", ""))
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            message += " " + "; ".join(str(e) for e in errors)
        return message
    return ""


def _pull(pull: dict[str, Any]) -> FoundPull:
    return FoundPull(
        int(pull["number"]),
        str(pull["html_url"]),
        str(pull["head"]["ref"]),
        str(pull["base"]["ref"]),
        str(pull.get("title") or ""),
        str(pull.get("body") or ""),
    )


def _issue(issue: dict[str, Any]) -> FoundIssue:
    labels = frozenset(str(label.get("name")) for label in issue.get("labels") or [])
    return FoundIssue(int(issue["number"]), str(issue["html_url"]), str(issue["title"]), labels)
