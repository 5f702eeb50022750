"""Gitea's (and Forgejo's) response objects, and its request-body check.

The Gitea flavour of the local forge answers in Gitea's shapes, as its
swagger describes them, and, with no official spec loaded, checks request
bodies against a small hand schema (``GITEA_BODIES``). Both are Gitea's
alone, so they live apart from GitHub's shapes and from the server, which
they read only through ``ForgeView``.
"""

from __future__ import annotations

import zlib
from typing import Any

from orchestrator.embedded.forge.state import (
    BOT,
    ApiError,
    CheckRun,
    Comment,
    CommitStatus,
    ForgeView,
    Thread,
    _now,
)

# Gitea request bodies: field -> (JSON types, required). Unknown fields are refused.
GITEA_BODIES: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "pulls/create": {
        "head": ((str,), True),
        "base": ((str,), True),
        "title": ((str,), True),
        "body": ((str,), False),
        "labels": ((list,), False),
        "assignees": ((list,), False),
    },
    "pulls/update": {"title": ((str,), False), "body": ((str,), False), "state": ((str,), False)},
    "pulls/request-reviewers": {"reviewers": ((list,), True), "team_reviewers": ((list,), False)},
    "issues/create": {
        "title": ((str,), True),
        "body": ((str,), False),
        "labels": ((list,), False),
        "assignees": ((list,), False),
    },
    "issues/update": {"title": ((str,), False), "body": ((str,), False), "state": ((str,), False)},
    "issues/create-comment": {"body": ((str,), True)},
    "issues/add-labels": {"labels": ((list,), True)},
}


def check_gitea_body(op: str, body: Any, has_body: bool) -> list[str]:
    """Gitea's request bodies against the hand schema (no official spec is used)."""
    schema = GITEA_BODIES.get(op)
    if schema is None:
        return ["a body was sent, but the operation takes none"] if has_body else []
    if not isinstance(body, dict):
        return ["the request body must be a JSON object"]
    errors = [f"request body: {key!r} is not a field" for key in body if key not in schema]
    for key, (types, required) in schema.items():
        if key not in body:
            if required:
                errors.append(f"request body: {key!r} is required")
        elif not isinstance(body[key], types) or isinstance(body[key], bool) != (bool in types):
            errors.append(f"request body: {key!r} must be {'/'.join(t.__name__ for t in types)}")
    return errors


class GiteaShapes:
    """Gitea's (and Forgejo's) response objects, as its swagger describes them."""

    edited_status = 201  # Gitea answers an edit with 201
    exists_status = 409

    def __init__(self, server: ForgeView) -> None:
        self.s = server
        self.api = f"{server.api_url}/repos/{server.owner}/{server.name}"

    def error(self, exc: ApiError) -> dict[str, Any]:
        body: dict[str, Any] = {"message": exc.message, "url": f"{self.s.api_url}/swagger"}
        if exc.errors is not None:
            body["errors"] = [e.get("message") or f"{e['field']} {e['code']}" for e in exc.errors]
        return body

    def user(self, login: str) -> dict[str, Any]:
        return {
            "id": zlib.crc32(login.encode()) % 10**6,
            "login": login,
            "login_name": "",
            "username": login,
            "full_name": "",
            "email": f"{login}@noreply.localhost",
            "avatar_url": f"{self.s.url}/avatars/{login}",
            "html_url": f"{self.s.url}/{login}",
            "language": "",
            "is_admin": False,
            "last_login": "2026-01-01T00:00:00Z",
            "created": "2026-01-01T00:00:00Z",
            "restricted": False,
            "active": True,
            "prohibit_login": False,
            "location": "",
            "website": "",
            "description": "",
            "visibility": "public",
            "followers_count": 0,
            "following_count": 0,
            "starred_repos_count": 0,
        }

    def repo(self, *, full: bool = False) -> dict[str, Any]:
        s = self.s
        open_issues = sum(t.state == "open" and t.pull is None for t in s.threads.values())
        open_pulls = sum(t.state == "open" and t.pull is not None for t in s.threads.values())
        return {
            "id": 4242,
            "owner": self.user(s.owner),
            "name": s.name,
            "full_name": f"{s.owner}/{s.name}",
            "description": "",
            "empty": False,
            "private": True,
            "fork": False,
            "template": False,
            "parent": None,
            "mirror": False,
            "size": 0,
            "language": "",
            "languages_url": f"{self.api}/languages",
            "html_url": s.html_url,
            "url": self.api,
            "link": "",
            "ssh_url": f"git@{s.host}:{s.owner}/{s.name}.git",
            "clone_url": s.git_url,
            "original_url": "",
            "website": "",
            "stars_count": 0,
            "forks_count": 0,
            "watchers_count": 0,
            "open_issues_count": open_issues,
            "open_pr_counter": open_pulls,
            "release_counter": 0,
            "default_branch": s.default,
            "archived": False,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": _now(),
            "permissions": {"admin": True, "push": True, "pull": True},
            "has_issues": True,
            "has_wiki": False,
            "has_pull_requests": True,
            "has_projects": False,
            "has_releases": True,
            "has_packages": False,
            "has_actions": True,
            "ignore_whitespace_conflicts": False,
            "allow_merge_commits": True,
            "allow_rebase": True,
            "allow_squash_merge": True,
            "default_merge_style": "merge",
            "avatar_url": "",
            "internal": False,
            "mirror_interval": "",
        }

    def label(self, name: str) -> dict[str, Any]:
        return {
            "id": self.s.labels[name],
            "name": name,
            "exclusive": False,
            "is_archived": False,
            "color": "ededed",
            "description": "",
            "url": f"{self.api}/labels/{self.s.labels[name]}",
        }

    def head_label(self, thread: Thread) -> str:
        assert thread.pull is not None
        return thread.pull.head

    def _branch(self, ref: str, sha: str) -> dict[str, Any]:
        return {"label": ref, "ref": ref, "sha": sha, "repo_id": 4242, "repo": self.repo()}

    def pull(self, t: Thread, *, simple: bool = False) -> dict[str, Any]:
        assert t.pull is not None
        html = f"{self.s.html_url}/pulls/{t.number}"
        return {
            "id": t.id,
            "url": html,
            "number": t.number,
            "user": self.user(BOT),
            "title": t.title,
            "body": t.body or "",
            "labels": [self.label(name) for name in t.labels],
            "milestone": None,
            "assignee": None,
            "assignees": None,
            "requested_reviewers": [self.user(r) for r in t.pull.reviewers] or None,
            "requested_reviewers_teams": None,
            "state": t.state,
            "draft": False,
            "is_locked": False,
            "comments": len(t.comments),
            "review_comments": 0,
            "additions": 0,
            "deletions": 0,
            "changed_files": 0,
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "mergeable": True,
            "merged": False,
            "merged_at": None,
            "merge_commit_sha": None,
            "merged_by": None,
            "allow_maintainer_edit": False,
            "base": self._branch(t.pull.base, t.pull.base_sha),
            "head": self._branch(t.pull.head, t.pull.head_sha),
            "merge_base": t.pull.base_sha,
            "due_date": None,
            "created_at": t.created_at,
            "updated_at": t.updated_at,
            "closed_at": t.closed_at,
            "pin_order": 0,
        }

    def reviewers_answer(self, thread: Thread) -> Any:
        assert thread.pull is not None
        return [
            {
                "id": self.s.next_id(),
                "user": self.user(login),
                "team": None,
                "state": "REQUEST_REVIEW",
                "body": "",
                "commit_id": thread.pull.head_sha,
                "stale": False,
                "official": False,
                "dismissed": False,
                "comments_count": 0,
                "submitted_at": _now(),
                "updated_at": _now(),
                "html_url": f"{self.s.html_url}/pulls/{thread.number}",
                "pull_request_url": f"{self.s.html_url}/pulls/{thread.number}",
            }
            for login in thread.pull.reviewers
        ]

    def issue(self, t: Thread) -> dict[str, Any]:
        kind = "pulls" if t.pull else "issues"
        html = f"{self.s.html_url}/{kind}/{t.number}"
        return {
            "id": t.id,
            "url": f"{self.api}/issues/{t.number}",
            "html_url": html,
            "number": t.number,
            "user": self.user(BOT),
            "original_author": "",
            "original_author_id": 0,
            "title": t.title,
            "body": t.body or "",
            "ref": "",
            "assets": [],
            "labels": [self.label(name) for name in t.labels],
            "milestone": None,
            "assignee": None,
            "assignees": None,
            "state": t.state,
            "is_locked": False,
            "comments": len(t.comments),
            "created_at": t.created_at,
            "updated_at": t.updated_at,
            "closed_at": t.closed_at,
            "due_date": None,
            "pull_request": (
                {"merged": False, "merged_at": None, "draft": False, "html_url": html}
                if t.pull
                else None
            ),
            "repository": {
                "id": 4242,
                "name": self.s.name,
                "owner": self.s.owner,
                "full_name": f"{self.s.owner}/{self.s.name}",
            },
            "pin_order": 0,
        }

    def comment(self, t: Thread, c: Comment) -> dict[str, Any]:
        kind = "pulls" if t.pull else "issues"
        return {
            "id": c.id,
            "html_url": f"{self.s.html_url}/{kind}/{t.number}#issuecomment-{c.id}",
            "pull_request_url": f"{self.s.html_url}/pulls/{t.number}" if t.pull else "",
            "issue_url": f"{self.s.html_url}/issues/{t.number}",
            "user": self.user(BOT),
            "original_author": "",
            "original_author_id": 0,
            "body": c.body,
            "assets": [],
            "created_at": c.created_at,
            "updated_at": c.created_at,
        }

    def check_run(self, sha: str, run: CheckRun) -> dict[str, Any]:
        raise ApiError(404, "Not Found")

    def combined(self, sha: str, statuses: list[CommitStatus]) -> dict[str, Any]:
        states = {st.state for st in statuses}
        if states & {"failure", "error"}:
            state = "failure"
        elif "pending" in states:
            state = "pending"
        elif "warning" in states:
            state = "warning"
        else:
            state = "success" if statuses else ""
        return {
            "state": state,
            "sha": sha,
            "total_count": len(statuses),
            "statuses": [
                {
                    "id": st.id,
                    "status": st.state,  # Gitea names a status's state "status"
                    "target_url": st.url or "",
                    "description": st.description or "",
                    "url": f"{self.api}/statuses/{sha}",
                    "context": st.context,
                    "creator": self.user(BOT),
                    "created_at": "2026-01-01T00:00:00Z",
                    "updated_at": "2026-01-01T00:00:00Z",
                }
                for st in statuses
            ],
            "repository": self.repo(),
            "commit_url": f"{self.api}/commits/{sha}",
            "url": f"{self.api}/commits/{sha}/status",
        }
