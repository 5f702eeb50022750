"""What Berry asks of a forge, whichever it is: push access, a pull request,
CI's verdict on a commit, an issue for a failure.

The flows live here, once, for GitHub and Gitea alike: ``ForgeClient`` says
*what* ensure_pull_request, ensure_issue and close_issue do, and each forge's
subclass says how its REST API does the few primitive calls (find, create,
edit, comment). Every flow starts by looking for what an earlier attempt may
already have made, so a retry after a crash at any point (even one between
the forge's commit and our reading of its answer) never opens a second pull
request or issue.

The token is a ``SecretStr``: it reaches the forge in a header, git through
the environment (``git_env``), and nothing else: no log line, no exception
text, no argv, no URL.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import SecretStr

from orchestrator.runtime.logs import get_logger

log = get_logger(__name__)

NO_TOKEN = "no forge token configured (AGOG_FORGE_TOKEN)"
MAX_PAGES = 10  # list calls: 100 per page, so a thousand open items at most
_REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ForgeConfig:
    """Where the forge is and how Berry talks to it."""

    kind: Literal["github", "gitea"]
    api_url: str  # GitHub: https://api.github.com or GHE https://host/api/v3; Gitea: .../api/v1
    repo: str  # "owner/name"
    token: SecretStr | None  # never logged, never in an exception message, never in argv
    git_url: str | None = None  # smart-HTTP clone URL; None: derived from api_url
    labels: tuple[str, ...] = ()
    reviewers: tuple[str, ...] = ()
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.kind not in ("github", "gitea"):
            raise ValueError(f"unknown forge kind {self.kind!r} (github or gitea)")
        if not _REPO.fullmatch(self.repo) or ".." in self.repo:
            raise ValueError(f"the forge repository must be owner/name, not {self.repo!r}")

    @property
    def owner(self) -> str:
        return self.repo.split("/")[0]

    @property
    def name(self) -> str:
        return self.repo.split("/")[1]


def derive_git_url(api_url: str, repo: str) -> str:
    """The clone URL a forge's API URL implies: api.github.com is github.com;
    a GitHub Enterprise (``/api/v3``) or Gitea (``/api/v1``) API lives under
    its web host."""
    root = api_url.rstrip("/")
    if re.fullmatch(r"https?://api\.github\.com", root):
        return f"https://github.com/{repo}.git"
    root = re.sub(r"/api/v[13]\Z", "", root)
    return f"{root}/{repo}.git"


class ForgeError(RuntimeError):
    """A forge call failed. The message says what failed and the HTTP status,
    never the token; ``auth`` tells a missing or refused token from the rest."""

    def __init__(self, message: str, *, status: int | None = None, auth: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.auth = auth


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str
    head: str
    base: str
    created: bool
    updated: bool


@dataclass(frozen=True)
class Check:
    name: str
    state: str  # "success" | "failure" | "pending"
    url: str | None


@dataclass(frozen=True)
class CiStatus:
    state: str  # "success" | "failure" | "pending" | "none" (no checks at all)
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class Issue:
    number: int
    url: str
    created: bool


class Forge(Protocol):
    config: ForgeConfig

    def git_url(self) -> str: ...
    def git_env(self) -> dict[str, str]: ...
    async def default_branch(self) -> str: ...
    async def ensure_pull_request(
        self, *, head: str, base: str, title: str, body: str
    ) -> PullRequest: ...
    async def ci_status(self, sha: str) -> CiStatus: ...
    async def ensure_issue(self, *, key: str, title: str, body: str) -> Issue: ...
    async def close_issue(self, *, key: str, comment: str) -> Issue | None: ...
    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class FoundPull:
    """A pull request as a forge lists it: what the flows compare and report."""

    number: int
    url: str
    head: str
    base: str
    title: str
    body: str


@dataclass(frozen=True)
class FoundIssue:
    number: int
    url: str
    title: str
    labels: frozenset[str]


def summarise(checks: tuple[Check, ...]) -> CiStatus:
    """One verdict: any failure fails, else anything unfinished waits, else
    all passed; no checks at all is "none" (CI never reported)."""
    states = {check.state for check in checks}
    if not checks:
        state = "none"
    elif "failure" in states:
        state = "failure"
    elif "pending" in states:
        state = "pending"
    else:
        state = "success"
    return CiStatus(state, checks)


def status_state(state: str) -> str:
    """A commit status's state as a Check's: only success passes (Gitea's
    ``warning`` does not), pending waits, the rest (failure, error) fails."""
    if state == "success":
        return "success"
    return "pending" if state == "pending" else "failure"


class ForgeClient:
    """The flows, over the primitives a forge's subclass implements."""

    def __init__(self, config: ForgeConfig) -> None:
        self.config = config

    # -- git ---------------------------------------------------------------

    def git_url(self) -> str:
        return self.config.git_url or derive_git_url(self.config.api_url, self.config.repo)

    def git_env(self) -> dict[str, str]:
        """Environment that makes ``git push <git_url>`` authenticate: an HTTP
        header git adds for that URL only, set through git's environment
        config (so neither argv nor the URL carries the token)."""
        if self.config.token is None:
            return {}
        secret = f"x-access-token:{self.config.token.get_secret_value()}"
        basic = base64.b64encode(secret.encode()).decode()
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{self.git_url()}.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }

    # -- helpers for subclasses --------------------------------------------

    def token(self) -> str:
        """The token, or the auth ForgeError saying none is configured."""
        if self.config.token is None:
            raise ForgeError(NO_TOKEN, auth=True)
        return self.config.token.get_secret_value()

    def scrub(self, text: str) -> str:
        """``text`` (a forge's error message) without the token, should it echo it."""
        token = self.config.token.get_secret_value() if self.config.token else ""
        return text.replace(token, "***") if token else text

    def failure(self, what: str, status: int | None, detail: str = "") -> ForgeError:
        """The ForgeError for a failed call: 401/403 are the token's fault."""
        if status in (401, 403):
            message = f"{what} failed: the forge refused the token (HTTP {status})"
            error = ForgeError(message, status=status, auth=True)
        else:
            code = f" (HTTP {status})" if status is not None else ""
            tail = f": {self.scrub(detail)[:500]}" if detail else ""
            error = ForgeError(f"{what} failed{code}{tail}", status=status)
        log.warning("forge.call_failed", forge=self.config.kind, what=what, status=status)
        return error

    # -- primitives (per forge) --------------------------------------------

    async def default_branch(self) -> str:
        raise NotImplementedError

    async def find_pull(self, head: str) -> FoundPull | None:
        raise NotImplementedError

    async def create_pull(self, *, head: str, base: str, title: str, body: str) -> FoundPull:
        raise NotImplementedError

    async def update_pull(self, number: int, *, title: str, body: str) -> FoundPull:
        raise NotImplementedError

    async def add_labels(self, number: int, labels: tuple[str, ...]) -> None:
        raise NotImplementedError

    async def request_reviewers(self, number: int, reviewers: tuple[str, ...]) -> None:
        raise NotImplementedError

    async def open_issues(self) -> list[FoundIssue]:
        """The open issues, pull requests left out."""
        raise NotImplementedError

    async def create_issue(self, *, title: str, body: str) -> FoundIssue:
        """A new issue with ``config.labels`` (as one call where the forge can)."""
        raise NotImplementedError

    async def comment(self, number: int, body: str) -> None:
        raise NotImplementedError

    async def close(self, number: int) -> None:
        raise NotImplementedError

    async def ci_status(self, sha: str) -> CiStatus:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None

    # -- the flows ---------------------------------------------------------

    async def ensure_pull_request(
        self, *, head: str, base: str, title: str, body: str
    ) -> PullRequest:
        """The one open pull request of ``head``: found (its title and body
        brought up to date) or opened; then labelled and its reviewers asked."""
        self.token()
        created = updated = False
        pull = await self.find_pull(head)
        if pull is None:
            try:
                pull = await self.create_pull(head=head, base=base, title=title, body=body)
                created = True
            except ForgeError as exc:
                # "already exists": an earlier attempt opened it and lost the answer.
                if exc.status not in (409, 422):
                    raise
                pull = await self.find_pull(head)
                if pull is None:
                    raise
        if not created and (pull.title != title or pull.body != body):
            pull = await self.update_pull(pull.number, title=title, body=body)
            updated = True
        if self.config.labels:
            await self.add_labels(pull.number, self.config.labels)
        if self.config.reviewers:
            await self.request_reviewers(pull.number, self.config.reviewers)
        action = "opened" if created else "updated" if updated else "found"
        log.info("forge.pull_request", action=action, number=pull.number, url=pull.url, head=head)
        return PullRequest(pull.number, pull.url, pull.head, pull.base, created, updated)

    async def find_issue(self, key: str) -> FoundIssue | None:
        """The open issue whose title starts with ``key`` (the oldest, should
        there be several)."""
        found = [issue for issue in await self.open_issues() if issue.title.startswith(key)]
        return min(found, key=lambda issue: issue.number) if found else None

    async def ensure_issue(self, *, key: str, title: str, body: str) -> Issue:
        """The open issue of ``key``: commented on when it exists, else opened
        (``title`` gets ``key`` in front when it does not start with it)."""
        self.token()
        if not title.startswith(key):
            title = f"{key} {title}"
        found = await self.find_issue(key)
        if found is None:
            issue = await self.create_issue(title=title, body=body)
            log.info("forge.issue", action="opened", number=issue.number, url=issue.url)
            return Issue(issue.number, issue.url, created=True)
        missing = tuple(label for label in self.config.labels if label not in found.labels)
        if missing:  # an earlier attempt crashed between opening and labelling
            await self.add_labels(found.number, missing)
        await self.comment(found.number, body)
        log.info("forge.issue", action="commented", number=found.number, url=found.url)
        return Issue(found.number, found.url, created=False)

    async def close_issue(self, *, key: str, comment: str) -> Issue | None:
        """Comment on the open issue of ``key``, then close it; None without one."""
        self.token()
        found = await self.find_issue(key)
        if found is None:
            return None
        await self.comment(found.number, comment)
        await self.close(found.number)
        log.info("forge.issue", action="closed", number=found.number, url=found.url)
        return Issue(found.number, found.url, created=False)
