"""GitHub's response objects, as the local forge sends them.

GitHub's OpenAPI description requires many properties of each object (a
repository alone has dozens), and the forge checks every answer against
it; building them is long and has nothing to do with routing or state, so it
lives here, reading the server only through ``ForgeView``.
"""

from __future__ import annotations

import zlib
from typing import Any

from orchestrator.embedded.forge.state import (
    BOT,
    DOCS,
    ApiError,
    CheckRun,
    Comment,
    CommitStatus,
    ForgeView,
    Thread,
    _now,
)


class GitHubShapes:
    """GitHub's response objects, complete: every property its schema requires."""

    edited_status = 200
    exists_status = 422

    def __init__(self, server: ForgeView) -> None:
        self.s = server
        self.api = f"{server.url}/repos/{server.owner}/{server.name}"

    def error(self, exc: ApiError) -> dict[str, Any]:
        body: dict[str, Any] = {"message": exc.message, "documentation_url": DOCS}
        if exc.errors is not None:
            body["errors"] = exc.errors
        body["status"] = str(exc.status)
        return body

    def user(self, login: str) -> dict[str, Any]:
        url = f"{self.s.url}/users/{login}"
        return {
            "login": login,
            "id": zlib.crc32(login.encode()) % 10**6,
            "node_id": f"U_{login}",
            "avatar_url": f"{self.s.url}/avatars/{login}",
            "gravatar_id": "",
            "url": url,
            "html_url": f"{self.s.url}/{login}",
            "followers_url": f"{url}/followers",
            "following_url": f"{url}/following{{/other_user}}",
            "gists_url": f"{url}/gists{{/gist_id}}",
            "starred_url": f"{url}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{url}/subscriptions",
            "organizations_url": f"{url}/orgs",
            "repos_url": f"{url}/repos",
            "events_url": f"{url}/events{{/privacy}}",
            "received_events_url": f"{url}/received_events",
            "type": "User" if login == BOT else "Organization",
            "site_admin": False,
        }

    def repo(self, *, full: bool = False) -> dict[str, Any]:
        a, s = self.api, self.s
        templated = {
            "archive_url": "/{archive_format}{/ref}",
            "assignees_url": "/assignees{/user}",
            "blobs_url": "/git/blobs{/sha}",
            "branches_url": "/branches{/branch}",
            "collaborators_url": "/collaborators{/collaborator}",
            "comments_url": "/comments{/number}",
            "commits_url": "/commits{/sha}",
            "compare_url": "/compare/{base}...{head}",
            "contents_url": "/contents/{+path}",
            "contributors_url": "/contributors",
            "deployments_url": "/deployments",
            "downloads_url": "/downloads",
            "events_url": "/events",
            "forks_url": "/forks",
            "git_commits_url": "/git/commits{/sha}",
            "git_refs_url": "/git/refs{/sha}",
            "git_tags_url": "/git/tags{/sha}",
            "hooks_url": "/hooks",
            "issue_comment_url": "/issues/comments{/number}",
            "issue_events_url": "/issues/events{/number}",
            "issues_url": "/issues{/number}",
            "keys_url": "/keys{/key_id}",
            "labels_url": "/labels{/name}",
            "languages_url": "/languages",
            "merges_url": "/merges",
            "milestones_url": "/milestones{/number}",
            "notifications_url": "/notifications{?since,all,participating}",
            "pulls_url": "/pulls{/number}",
            "releases_url": "/releases{/id}",
            "stargazers_url": "/stargazers",
            "statuses_url": "/statuses/{sha}",
            "subscribers_url": "/subscribers",
            "subscription_url": "/subscription",
            "tags_url": "/tags",
            "teams_url": "/teams",
            "trees_url": "/git/trees{/sha}",
        }
        open_count = sum(t.state == "open" for t in s.threads.values())
        repo: dict[str, Any] = {key: a + suffix for key, suffix in templated.items()}
        repo.update(
            id=4242,
            node_id="R_agog",
            name=s.name,
            full_name=f"{s.owner}/{s.name}",
            owner=self.user(s.owner),
            private=True,
            html_url=s.html_url,
            description=None,
            fork=False,
            url=a,
            clone_url=s.git_url,
            git_url=f"git://{s.host}/{s.owner}/{s.name}.git",
            ssh_url=f"git@{s.host}:{s.owner}/{s.name}.git",
            svn_url=s.html_url,
            mirror_url=None,
            homepage=None,
            language="Python",
            forks=0,
            forks_count=0,
            stargazers_count=0,
            watchers=0,
            watchers_count=0,
            size=0,
            default_branch=s.default,
            open_issues=open_count,
            open_issues_count=open_count,
            has_issues=True,
            has_projects=False,
            has_wiki=False,
            has_pages=False,
            has_downloads=False,
            has_discussions=False,
            archived=False,
            disabled=False,
            visibility="private",
            license=None,
            pushed_at=_now(),
            created_at="2026-01-01T00:00:00Z",
            updated_at=_now(),
            allow_forking=False,
            is_template=False,
            topics=[],
        )
        if full:
            repo.update(network_count=0, subscribers_count=0)
        return repo

    def label(self, name: str) -> dict[str, Any]:
        return {
            "id": self.s.labels[name],
            "node_id": f"LA_{self.s.labels[name]}",
            "url": f"{self.api}/labels/{name}",
            "name": name,
            "description": "",  # pull-request-simple's labels may not have null here
            "color": "ededed",
            "default": False,
            "archived_by": None,  # API version 2026-03-10 (githubkit's) requires it
        }

    def head_label(self, thread: Thread) -> str:
        assert thread.pull is not None
        return f"{self.s.owner}:{thread.pull.head}"

    def _branch(self, ref: str, sha: str) -> dict[str, Any]:
        return {
            "label": f"{self.s.owner}:{ref}",
            "ref": ref,
            "sha": sha,
            "user": self.user(self.s.owner),
            "repo": self.repo(),
        }

    def pull(self, t: Thread, *, simple: bool = False) -> dict[str, Any]:
        assert t.pull is not None
        a, n = self.api, t.number
        url = f"{a}/pulls/{n}"
        html = f"{self.s.html_url}/pull/{n}"
        links = {
            "self": url,
            "html": html,
            "issue": f"{a}/issues/{n}",
            "comments": f"{a}/issues/{n}/comments",
            "review_comments": f"{url}/comments",
            "review_comment": f"{a}/pulls/comments{{/number}}",
            "commits": f"{url}/commits",
            "statuses": f"{a}/statuses/{t.pull.head_sha}",
        }
        pull: dict[str, Any] = {
            "url": url,
            "id": t.id,
            "node_id": f"PR_{t.id}",
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": links["issue"],
            "commits_url": links["commits"],
            "review_comments_url": links["review_comments"],
            "review_comment_url": links["review_comment"],
            "comments_url": links["comments"],
            "statuses_url": links["statuses"],
            "number": n,
            "state": t.state,
            "locked": False,
            "title": t.title,
            "user": self.user(BOT),
            "body": t.body,
            "labels": [self.label(name) for name in t.labels],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": t.created_at,
            "updated_at": t.updated_at,
            "closed_at": t.closed_at,
            "merged_at": None,
            "merge_commit_sha": None,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [self.user(r) for r in t.pull.reviewers],
            "requested_teams": [],
            "head": self._branch(t.pull.head, t.pull.head_sha),
            "base": self._branch(t.pull.base, t.pull.base_sha),
            "_links": {key: {"href": href} for key, href in links.items()},
            "author_association": "MEMBER",
            "auto_merge": None,
            "draft": False,
        }
        if not simple:
            pull.update(
                merged=False,
                mergeable=True,
                rebaseable=True,
                mergeable_state="clean",
                merged_by=None,
                comments=len(t.comments),
                review_comments=0,
                maintainer_can_modify=False,
                commits=1,
                additions=0,
                deletions=0,
                changed_files=0,
            )
        return pull

    def reviewers_answer(self, thread: Thread) -> Any:
        return self.pull(thread, simple=True)

    def issue(self, t: Thread) -> dict[str, Any]:
        url = f"{self.api}/issues/{t.number}"
        html = f"{self.s.html_url}/{'pull' if t.pull else 'issues'}/{t.number}"
        issue: dict[str, Any] = {
            "id": t.id,
            "node_id": f"I_{t.id}",
            "url": url,
            "repository_url": self.api,
            "labels_url": f"{url}/labels{{/name}}",
            "comments_url": f"{url}/comments",
            "events_url": f"{url}/events",
            "html_url": html,
            "number": t.number,
            "state": t.state,
            "state_reason": "completed" if t.state == "closed" else None,
            "title": t.title,
            "body": t.body,
            "user": self.user(BOT),
            "labels": [self.label(name) for name in t.labels],
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "locked": False,
            "active_lock_reason": None,
            "comments": len(t.comments),
            "closed_at": t.closed_at,
            "created_at": t.created_at,
            "updated_at": t.updated_at,
            "author_association": "MEMBER",
        }
        if t.pull is not None:
            issue["pull_request"] = {
                "url": f"{self.api}/pulls/{t.number}",
                "html_url": html,
                "diff_url": f"{html}.diff",
                "patch_url": f"{html}.patch",
                "merged_at": None,
            }
        return issue

    def comment(self, t: Thread, c: Comment) -> dict[str, Any]:
        kind = "pull" if t.pull else "issues"
        return {
            "id": c.id,
            "node_id": f"IC_{c.id}",
            "url": f"{self.api}/issues/comments/{c.id}",
            "html_url": f"{self.s.html_url}/{kind}/{t.number}#issuecomment-{c.id}",
            "issue_url": f"{self.api}/issues/{t.number}",
            "body": c.body,
            "user": self.user(BOT),
            "created_at": c.created_at,
            "updated_at": c.created_at,
            "author_association": "MEMBER",
        }

    def check_run(self, sha: str, run: CheckRun) -> dict[str, Any]:
        done = run.status == "completed"
        return {
            "id": run.id,
            "node_id": f"CR_{run.id}",
            "head_sha": sha,
            "external_id": str(run.id),
            "url": f"{self.api}/check-runs/{run.id}",
            "html_url": f"{self.s.html_url}/runs/{run.id}",
            "details_url": run.url,
            "status": run.status,
            "conclusion": run.conclusion,
            "started_at": "2026-01-01T00:00:00Z",
            "completed_at": "2026-01-01T00:01:00Z" if done else None,
            "output": {
                "title": run.name,
                "summary": run.conclusion or run.status,
                "text": None,
                "annotations_count": 0,
                "annotations_url": f"{self.api}/check-runs/{run.id}/annotations",
            },
            "name": run.name,
            "check_suite": {"id": run.id + 1},
            "app": None,
            "pull_requests": [],
        }

    def combined(self, sha: str, statuses: list[CommitStatus]) -> dict[str, Any]:
        states = {st.state for st in statuses}
        if states & {"failure", "error"}:
            state = "failure"
        elif not statuses or "pending" in states:
            state = "pending"
        else:
            state = "success"
        return {
            "state": state,
            "sha": sha,
            "total_count": len(statuses),
            "statuses": [
                {
                    "id": st.id,
                    "node_id": f"SC_{st.id}",
                    "url": f"{self.api}/statuses/{sha}",
                    "avatar_url": None,
                    "state": st.state,
                    "description": st.description,
                    "target_url": st.url,
                    "context": st.context,
                    "created_at": "2026-01-01T00:00:00Z",
                    "updated_at": "2026-01-01T00:00:00Z",
                }
                for st in statuses
            ],
            "repository": self.repo(),
            "commit_url": f"{self.api}/commits/{sha}",
            "url": f"{self.api}/commits/{sha}/status",
        }
