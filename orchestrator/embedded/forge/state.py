"""The local forge's state: its in-memory records, constants and routes.

Every other forge module works on these: the server keeps them, the shape
modules render them as GitHub's or Gitea's JSON. They live here, below all
of those, so that nothing needs to import the server (no import circle):
``ForgeView`` is the small read-only face of the server the shapes are given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

DOCS = "https://docs.github.com/rest"
BOT = "agogd-bot"  # the login the token belongs to: the author of what Berry opens
# (method, path under the API root, operation): the same paths on GitHub and Gitea.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", r"/repos/{o}/{r}", "repos/get"),
    ("GET", r"/repos/{o}/{r}/pulls", "pulls/list"),
    ("POST", r"/repos/{o}/{r}/pulls", "pulls/create"),
    ("GET", r"/repos/{o}/{r}/pulls/(?P<number>\d+)", "pulls/get"),
    ("PATCH", r"/repos/{o}/{r}/pulls/(?P<number>\d+)", "pulls/update"),
    (
        "POST",
        r"/repos/{o}/{r}/pulls/(?P<number>\d+)/requested_reviewers",
        "pulls/request-reviewers",
    ),
    ("GET", r"/repos/{o}/{r}/issues", "issues/list-for-repo"),
    ("POST", r"/repos/{o}/{r}/issues", "issues/create"),
    ("GET", r"/repos/{o}/{r}/issues/(?P<number>\d+)", "issues/get"),
    ("PATCH", r"/repos/{o}/{r}/issues/(?P<number>\d+)", "issues/update"),
    ("GET", r"/repos/{o}/{r}/issues/(?P<number>\d+)/comments", "issues/list-comments"),
    ("POST", r"/repos/{o}/{r}/issues/(?P<number>\d+)/comments", "issues/create-comment"),
    ("POST", r"/repos/{o}/{r}/issues/(?P<number>\d+)/labels", "issues/add-labels"),
    ("GET", r"/repos/{o}/{r}/commits/(?P<ref>[^/]+)/check-runs", "checks/list-for-ref"),
    ("GET", r"/repos/{o}/{r}/commits/(?P<ref>[^/]+)/status", "repos/get-combined-status-for-ref"),
)
GITHUB_ONLY = frozenset({"checks/list-for-ref"})
CHECK_STATES = {  # what set_check takes -> (status, conclusion)
    "success": ("completed", "success"),
    "failure": ("completed", "failure"),
    "neutral": ("completed", "neutral"),
    "skipped": ("completed", "skipped"),
    "cancelled": ("completed", "cancelled"),
    "timed_out": ("completed", "timed_out"),
    "action_required": ("completed", "action_required"),
    "pending": ("queued", None),
    "queued": ("queued", None),
    "in_progress": ("in_progress", None),
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Comment:
    id: int
    body: str
    created_at: str


@dataclass
class Pull:
    head: str
    base: str
    head_sha: str
    base_sha: str
    reviewers: list[str] = field(default_factory=list)


@dataclass
class Thread:
    """An issue or a pull request: both forges number them in one sequence,
    and list pull requests among the issues."""

    number: int
    id: int
    title: str
    body: str | None
    created_at: str
    updated_at: str
    state: str = "open"
    closed_at: str | None = None
    labels: list[str] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)
    pull: Pull | None = None


@dataclass
class CheckRun:
    id: int
    name: str
    status: str
    conclusion: str | None
    url: str | None


@dataclass
class CommitStatus:
    id: int
    context: str
    state: str
    url: str | None
    description: str | None


@dataclass
class Fault:
    times: int
    status: int
    after: bool  # the operation takes effect, then the answer is lost


class ApiError(Exception):
    """An error answer from a handler (the forge's own error body)."""

    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors


# Given (operation, status, body), what to send instead (for tests of bad shapes).
ResponseHook = Callable[[str, int, Any], tuple[int, Any]]


class ForgeView(Protocol):
    """What the response shapes read of the server: its addresses and state."""

    @property
    def url(self) -> str: ...

    @property
    def api_url(self) -> str: ...

    @property
    def git_url(self) -> str: ...

    @property
    def html_url(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def owner(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def default(self) -> str: ...

    @property
    def threads(self) -> dict[int, Thread]: ...

    @property
    def labels(self) -> dict[str, int]: ...

    def next_id(self) -> int:
        """A fresh id from the forge's one sequence of ids."""
        ...
