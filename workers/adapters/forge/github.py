"""GitHub (and GitHub Enterprise Server) through githubkit's typed async REST API.

githubkit parses each answer into its models of GitHub's own schemas, so a
shape the code does not expect is an error here, not a silent None later.
Its automatic retries and HTTP cache are off: a retry is the caller's
decision (the flows in ``base`` are safe to retry), and a cached list could
hide the pull request an earlier attempt just opened.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from githubkit import GitHub, TokenAuthStrategy
from githubkit.exception import (
    GitHubException,
    RateLimitExceeded,
    RequestError,
    RequestFailed,
    RequestTimeout,
)
from pydantic import ValidationError

from workers.adapters.forge.base import (
    MAX_PAGES,
    Check,
    CiStatus,
    ForgeClient,
    ForgeConfig,
    FoundIssue,
    FoundPull,
    status_state,
    summarise,
)

PER_PAGE = 100
FAILED = frozenset({"failure", "timed_out", "cancelled", "action_required", "startup_failure"})
PASSED = frozenset({"success", "neutral", "skipped"})


def check_run_state(status: str, conclusion: str | None) -> str:
    """A check run as a Check's state: unfinished waits; a ``stale`` run
    (never finished, marked so by GitHub) or an unknown conclusion waits too."""
    if status != "completed":
        return "pending"
    if conclusion in FAILED:
        return "failure"
    return "success" if conclusion in PASSED else "pending"


class GitHubForge(ForgeClient):
    """Berry's forge on GitHub."""

    def __init__(self, config: ForgeConfig) -> None:
        super().__init__(config)
        self._github: GitHub[Any] | None = None
        self._entered = False

    async def _client(self) -> GitHub[Any]:
        if self._github is None:
            self._github = GitHub(
                TokenAuthStrategy(self.token()),
                base_url=self.config.api_url.rstrip("/") + "/",
                timeout=self.config.timeout,
                auto_retry=False,
                http_cache=False,
                user_agent="agogd-berry",
            )
        if not self._entered:
            await self._github.__aenter__()  # one connection pool until aclose
            self._entered = True
        return self._github

    @contextlib.asynccontextmanager
    async def _call(self, what: str) -> AsyncIterator[None]:
        """githubkit's errors as ForgeErrors that say what failed."""
        self.token()
        try:
            yield
        except RateLimitExceeded as exc:
            seconds = int(exc.retry_after.total_seconds())
            raise self.failure(
                what, exc.response.status_code, f"rate limited, retry after {seconds}s"
            ) from None
        except RequestFailed as exc:
            raise self.failure(what, exc.response.status_code, _message(exc)) from None
        except RequestTimeout:
            raise self.failure(what, None, f"no answer within {self.config.timeout}s") from None
        except RequestError as exc:
            raise self.failure(what, None, f"the forge is unreachable ({exc.exc!r})") from None
        except ValidationError as exc:
            where = ".".join(str(p) for p in exc.errors()[0]["loc"]) if exc.errors() else ""
            detail = f"unexpected answer ({exc.error_count()} errors, first at {where})"
            raise self.failure(what, None, detail) from None
        except GitHubException as exc:
            raise self.failure(what, None, type(exc).__name__) from None

    async def default_branch(self) -> str:
        gh = await self._client()
        async with self._call("reading the repository"):
            resp = await gh.rest.repos.async_get(self.config.owner, self.config.name)
            return resp.parsed_data.default_branch

    async def find_pull(self, head: str) -> FoundPull | None:
        gh, owner, name = await self._client(), self.config.owner, self.config.name
        async with self._call("listing the pull requests"):
            for page in range(1, MAX_PAGES + 1):
                resp = await gh.rest.pulls.async_list(
                    owner, name, state="open", head=f"{owner}:{head}", per_page=PER_PAGE, page=page
                )
                pulls = resp.parsed_data
                for pull in pulls:
                    if pull.head.ref == head:
                        return _pull(pull)
                if len(pulls) < PER_PAGE:
                    return None
        return None

    async def create_pull(self, *, head: str, base: str, title: str, body: str) -> FoundPull:
        gh = await self._client()
        async with self._call("opening the pull request"):
            resp = await gh.rest.pulls.async_create(
                self.config.owner, self.config.name, head=head, base=base, title=title, body=body
            )
            return _pull(resp.parsed_data)

    async def update_pull(self, number: int, *, title: str, body: str) -> FoundPull:
        gh = await self._client()
        async with self._call(f"updating pull request #{number}"):
            resp = await gh.rest.pulls.async_update(
                self.config.owner, self.config.name, number, title=title, body=body
            )
            return _pull(resp.parsed_data)

    async def add_labels(self, number: int, labels: tuple[str, ...]) -> None:
        gh = await self._client()
        async with self._call(f"labelling #{number}"):
            await gh.rest.issues.async_add_labels(
                self.config.owner, self.config.name, number, labels=list(labels)
            )

    async def request_reviewers(self, number: int, reviewers: tuple[str, ...]) -> None:
        gh = await self._client()
        async with self._call(f"requesting reviewers on pull request #{number}"):
            await gh.rest.pulls.async_request_reviewers(
                self.config.owner, self.config.name, number, reviewers=list(reviewers)
            )

    async def open_issues(self) -> list[FoundIssue]:
        gh, found = await self._client(), []
        async with self._call("listing the issues"):
            for page in range(1, MAX_PAGES + 1):
                resp = await gh.rest.issues.async_list_for_repo(
                    self.config.owner, self.config.name, state="open", per_page=PER_PAGE, page=page
                )
                items = resp.parsed_data
                # GitHub lists pull requests among the issues: they carry pull_request.
                found += [_issue(item) for item in items if not item.pull_request]
                if len(items) < PER_PAGE:
                    break
        return found

    async def create_issue(self, *, title: str, body: str) -> FoundIssue:
        gh = await self._client()
        async with self._call("opening the issue"):
            resp = await gh.rest.issues.async_create(
                self.config.owner,
                self.config.name,
                title=title,
                body=body,
                labels=list(self.config.labels),
            )
            return _issue(resp.parsed_data)

    async def comment(self, number: int, body: str) -> None:
        gh = await self._client()
        async with self._call(f"commenting on #{number}"):
            await gh.rest.issues.async_create_comment(
                self.config.owner, self.config.name, number, body=body
            )

    async def close(self, number: int) -> None:
        gh = await self._client()
        async with self._call(f"closing #{number}"):
            await gh.rest.issues.async_update(
                self.config.owner, self.config.name, number, state="closed"
            )

    async def ci_status(self, sha: str) -> CiStatus:
        """Check runs (Actions, apps) and commit statuses (older CI): both count."""
        gh, owner, name = await self._client(), self.config.owner, self.config.name
        checks: list[Check] = []
        async with self._call(f"reading the check runs of {sha}"):
            for page in range(1, MAX_PAGES + 1):
                runs = await gh.rest.checks.async_list_for_ref(
                    owner, name, sha, filter_="latest", per_page=PER_PAGE, page=page
                )
                batch = runs.parsed_data.check_runs
                checks += [
                    Check(
                        run.name,
                        check_run_state(run.status, run.conclusion),
                        run.html_url or run.details_url or None,
                    )
                    for run in batch
                ]
                if len(batch) < PER_PAGE:
                    break
        async with self._call(f"reading the commit statuses of {sha}"):
            for page in range(1, MAX_PAGES + 1):
                combined = await gh.rest.repos.async_get_combined_status_for_ref(
                    owner, name, sha, per_page=PER_PAGE, page=page
                )
                statuses = combined.parsed_data.statuses
                checks += [
                    Check(st.context, status_state(st.state), st.target_url or None)
                    for st in statuses
                ]
                if len(statuses) < PER_PAGE:
                    break
        return summarise(tuple(checks))

    async def aclose(self) -> None:
        if self._github is not None and self._entered:
            self._entered = False
            await self._github.__aexit__(None, None, None)


def _message(exc: RequestFailed) -> str:
    """The forge's own error message (GitHub's ``message`` field), if any."""
    try:
        body = exc.response.raw_response.json()
    except ValueError:
        return exc.response.raw_response.text[:300]
    if isinstance(body, dict):
        message = str(body.get("message", ""))
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            message += " " + "; ".join(
                str(e.get("message") or e.get("code")) if isinstance(e, dict) else str(e)
                for e in errors
            )
        return message
    return ""


def _pull(pull: Any) -> FoundPull:
    return FoundPull(
        pull.number, pull.html_url, pull.head.ref, pull.base.ref, pull.title, pull.body or ""
    )


def _issue(issue: Any) -> FoundIssue:
    names = frozenset(
        label if isinstance(label, str) else (label.name or "") for label in issue.labels
    )
    return FoundIssue(issue.number, issue.html_url, issue.title, names)
