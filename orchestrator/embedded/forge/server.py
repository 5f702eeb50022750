"""A local forge, GitHub or Gitea/Forgejo, for Berry's tests: REST and real git.

Berry pushes a branch, opens a pull request, waits for CI and files issues.
Tests of that need a forge that behaves like one, without the network: this
server speaks the REST endpoints Berry's forge clients call (the same paths,
status codes and response shapes), with in-memory state, and serves the bare
repository it is given over git's smart HTTP through the real
``git http-backend``, so ``git push`` really pushes.

It is strict where a real forge is lenient, so that a client bug shows:
- GitHub flavour: every request (path and query parameters, JSON body) and
  every response it sends is checked against GitHub's own OpenAPI
  description (``openapi.py``). A request body field the operation does not
  name (a misspelt ``titel``) counts as wrong. Gitea flavour: the request
  bodies are checked against a small hand schema.
- A violation is kept in ``violations`` (operation, direction, error) and
  the answer becomes HTTP 599 carrying it, so the client fails loudly.

Tests steer it with plain methods: ``set_check`` / ``set_status`` (CI per
sha), ``fail_next`` (the next N calls of an operation answer 500, before or
after their effect), ``revoke_token``, ``response_hook`` (to send a
malformed response) and read ``pulls``, ``issues``, ``requests``.
Operations are named by GitHub's operation ids (``pulls/create``...) in
both flavours.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import itertools
import json
import os
import re
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from orchestrator.embedded.forge import openapi

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


class ForgeServer:
    """The local forge: ``await start()``, then ``api_url`` and ``git_url``."""

    def __init__(
        self,
        flavour: Literal["github", "gitea"],
        bare_repo: Path,
        *,
        owner: str = "agog",
        name: str = "app",
        token: str,
        spec: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        if flavour not in ("github", "gitea"):
            raise ValueError(f"unknown forge flavour {flavour!r}")
        self.flavour, self.bare_repo, self.owner, self.name = flavour, bare_repo, owner, name
        self.token: str | None = token
        self.spec_path, self.host, self.port = spec, host, 0
        self.default = "main"  # the bare repository's HEAD, read at start
        self.api: openapi.OpenApi | None = None
        self.threads: dict[int, Thread] = {}
        self.labels: dict[str, int] = {}  # name -> id: created on first use
        self.checks: dict[str, dict[str, CheckRun]] = {}  # sha -> name -> latest run
        self.statuses: dict[str, dict[str, CommitStatus]] = {}  # sha -> context -> latest
        self.faults: dict[str, Fault] = {}
        self.requests: list[dict[str, Any]] = []
        self.violations: list[str] = []
        # each smart-HTTP request: method, path, user, encoding, status, stderr
        self.git_log: list[dict[str, Any]] = []
        self.response_hook: ResponseHook | None = None
        self._ids = itertools.count(1001)
        self._numbers = itertools.count(1)
        self._routes = [
            (method, re.compile(_route(pattern, owner, name) + r"\Z"), op)
            for method, pattern, op in ROUTES
            if flavour == "github" or op not in GITHUB_ONLY
        ]
        self.shapes: _GitHubShapes | _GiteaShapes
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> ForgeServer:
        git = shutil.which("git")
        if git is None:
            raise RuntimeError("the local forge needs the git CLI (git http-backend)")
        self._git = git
        if self.flavour == "github":
            self.api = openapi.load(self.spec_path or openapi.default_spec())
        await self._run_git("config", "http.receivepack", "true")
        self.default = await self.default_branch()
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", f"/{self.owner}/{self.name}.git/{{tail:.*}}", self._git_http)
        app.router.add_route("*", "/{tail:.*}", self._rest)
        # git's gzip'd request bodies reach http-backend as sent (it undoes them).
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        shapes = _GitHubShapes if self.flavour == "github" else _GiteaShapes
        self.shapes = shapes(self)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ForgeServer:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.url if self.flavour == "github" else self.url + "/api/v1"

    @property
    def git_url(self) -> str:
        return f"{self.url}/{self.owner}/{self.name}.git"

    @property
    def html_url(self) -> str:
        return f"{self.url}/{self.owner}/{self.name}"

    # -- test control ------------------------------------------------------

    def set_check(self, sha: str, name: str, state: str, url: str | None = None) -> None:
        """A check run (GitHub) on ``sha``: success, failure, pending (or any
        other conclusion or status GitHub has); it replaces one of that name."""
        if self.flavour != "github":
            raise ValueError("Gitea has no check runs: use set_status")
        status, conclusion = CHECK_STATES[state]
        self.checks.setdefault(sha, {})[name] = CheckRun(
            next(self._ids), name, status, conclusion, url
        )

    def set_status(
        self, sha: str, context: str, state: str, url: str | None = None, description: str = ""
    ) -> None:
        """A commit status on ``sha``: success, failure, error or pending
        (Gitea also: warning); it replaces one of that context."""
        self.statuses.setdefault(sha, {})[context] = CommitStatus(
            next(self._ids), context, state, url, description or None
        )

    def fail_next(
        self, operation: str, times: int = 1, *, status: int = 500, after: bool = False
    ) -> None:
        """The next ``times`` calls of ``operation`` answer ``status``; with
        ``after`` they take effect first (a crash between the forge's commit
        and the client's reading of the answer)."""
        self.faults[operation] = Fault(times, status, after)

    def revoke_token(self) -> None:
        self.token = None

    @property
    def pulls(self) -> list[Thread]:
        return [t for t in self.threads.values() if t.pull is not None]

    @property
    def issues(self) -> list[Thread]:
        return [t for t in self.threads.values() if t.pull is None]

    def calls(self, operation: str) -> list[dict[str, Any]]:
        """The recorded requests of one operation, in order."""
        return [r for r in self.requests if r["operation"] == operation]

    # -- REST --------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if self.token is None or scheme.lower() not in ("token", "bearer"):
            return False
        return hmac.compare_digest(given.strip().encode(), self.token.encode())

    def _match(self, method: str, path: str) -> tuple[str, dict[str, str]] | None:
        for route_method, pattern, op in self._routes:
            found = pattern.match(path)
            if found and route_method == method:
                return op, found.groupdict()
        return None

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        prefix = "" if self.flavour == "github" else "/api/v1"
        path = request.path
        if not path.startswith(prefix + "/"):
            return self._error_response(404, "Not Found")
        path = path[len(prefix) :]
        raw = await request.read()
        if request.headers.get("Content-Encoding", "").lower() in ("gzip", "deflate"):
            raw = zlib.decompress(raw, 47)  # gzip or zlib: aiohttp leaves them to us
        query = {key: request.query.getone(key) for key in request.query}
        entry: dict[str, Any] = {"method": request.method, "path": path, "query": query}
        self.requests.append(entry)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            entry.update(operation=None, status=400)
            self.violations.append(f"{request.method} {path}: request body is not JSON")
            return self._error_response(400, "Problems parsing JSON")
        entry["body"] = body
        matched = self._match(request.method, path)
        entry["operation"] = matched[0] if matched else None
        if matched is None and self.api is not None:
            if self.api.match(request.method, path) is None:  # a client bug: loud
                return self._violation(entry, path, "request", ["no operation of GitHub's API"])
            entry["status"] = 501
            return self._error_response(501, "not served by the local forge")
        if matched is None:
            entry["status"] = 404
            return self._error_response(404, "Not Found")
        op, params = matched
        problems = self._check_request(op, request.method, path, query, body, bool(raw))
        if problems:
            return self._violation(entry, op, "request", problems)
        if not self._authorised(request):
            entry["status"] = 401
            return self._unauthorised()
        fault = self.faults.get(op)
        if fault is not None and fault.times > 0:
            fault.times -= 1
            if fault.after:
                with contextlib.suppress(ApiError):
                    await self._handle(op, params, query, body)
            entry["status"] = fault.status
            return self._error_response(fault.status, "Server Error (injected by the test)")
        try:
            status, answer = await self._handle(op, params, query, body)
        except ApiError as exc:
            status, answer = exc.status, self.shapes.error(exc)
        if self.response_hook is not None:
            status, answer = self.response_hook(op, status, answer)
        problems = self._check_response(op, request.method, path, status, answer)
        if problems:
            return self._violation(entry, op, "response", problems)
        entry["status"] = status
        if answer is None:
            return web.Response(status=status)
        return web.json_response(answer, status=status)

    def _check_request(
        self, op: str, method: str, path: str, query: dict[str, str], body: Any, has_body: bool
    ) -> list[str]:
        if self.api is not None:
            found = self.api.match(method, path)
            assert found is not None  # every served route is one of GitHub's operations
            operation, params = found
            return operation.check_request(params, query, body, has_body)
        return _check_gitea_body(op, body, has_body)

    def _check_response(self, op: str, method: str, path: str, status: int, body: Any) -> list[str]:
        if self.api is None:
            return []
        found = self.api.match(method, path)
        assert found is not None  # the request was matched already
        return found[0].check_response(status, body, body is not None)

    def _violation(
        self, entry: dict[str, Any], op: str, direction: str, problems: list[str]
    ) -> web.Response:
        text = f"{op} {direction}: " + "; ".join(problems)
        self.violations.append(text)
        entry["status"] = 599
        return web.json_response(
            {"message": f"OpenAPI violation: {text}", "documentation_url": DOCS}, status=599
        )

    def _error_response(self, status: int, message: str) -> web.Response:
        return web.json_response(self.shapes.error(ApiError(status, message)), status=status)

    def _unauthorised(self) -> web.Response:
        if self.flavour == "github":
            body = {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}
        else:
            message = "user does not exist [uid: 0, name: ]"
            body = {"message": message, "url": self.api_url + "/swagger"}
        return web.json_response(body, status=401)

    # -- the operations ----------------------------------------------------

    async def _handle(
        self, op: str, params: dict[str, str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        s = self.shapes
        number = int(params["number"]) if "number" in params else 0
        if op == "repos/get":
            return 200, s.repo(full=True)
        if op == "pulls/list":
            found = [t for t in self._threads(query.get("state", "open"), pulls=True)]
            if "head" in query:
                found = [t for t in found if s.head_label(t) == query["head"]]
            return 200, [s.pull(t, simple=True) for t in self._page(found, query)]
        if op == "pulls/create":
            return 201, s.pull(await self._create_pull(body))
        if op == "pulls/get":
            return 200, s.pull(self._thread(number, pull=True))
        if op == "pulls/update":
            thread = self._thread(number, pull=True)
            self._edit(thread, body)
            return s.edited_status, s.pull(thread)
        if op == "pulls/request-reviewers":
            thread = self._thread(number, pull=True)
            assert thread.pull is not None
            for login in body.get("reviewers", []):
                if login == BOT:
                    raise ApiError(422, "Review cannot be requested from pull request author.")
                if login not in thread.pull.reviewers:
                    thread.pull.reviewers.append(login)
            return 201, s.reviewers_answer(thread)
        if op == "issues/list-for-repo":
            found = self._threads(query.get("state", "open"), pulls=None)
            if query.get("type") == "issues":  # Gitea's filter; GitHub lists both
                found = [t for t in found if t.pull is None]
            if query.get("type") == "pulls":
                found = [t for t in found if t.pull is not None]
            return 200, [s.issue(t) for t in self._page(found, query)]
        if op == "issues/create":
            thread = self._new_thread(body["title"], body.get("body"))
            self._add_labels(thread, [lb for lb in body.get("labels", []) if isinstance(lb, str)])
            return 201, s.issue(thread)
        if op == "issues/get":
            return 200, s.issue(self._thread(number))
        if op == "issues/update":
            thread = self._thread(number)
            self._edit(thread, body)
            return s.edited_status, s.issue(thread)
        if op == "issues/list-comments":
            thread = self._thread(number)
            return 200, [s.comment(thread, c) for c in self._page(thread.comments, query)]
        if op == "issues/create-comment":
            thread = self._thread(number)
            comment = Comment(next(self._ids), body["body"], _now())
            thread.comments.append(comment)
            thread.updated_at = comment.created_at
            return 201, s.comment(thread, comment)
        if op == "issues/add-labels":
            thread = self._thread(number)
            names = body.get("labels", []) if isinstance(body, dict) else body
            self._add_labels(thread, [n if isinstance(n, str) else n["name"] for n in names])
            return 200, [s.label(n) for n in thread.labels]
        if op == "checks/list-for-ref":
            runs = list(self.checks.get(params["ref"], {}).values())
            if "check_name" in query:
                runs = [r for r in runs if r.name == query["check_name"]]
            page = [s.check_run(params["ref"], r) for r in self._page(runs, query)]
            return 200, {"total_count": len(runs), "check_runs": page}
        if op == "repos/get-combined-status-for-ref":
            statuses = list(self.statuses.get(params["ref"], {}).values())
            return 200, s.combined(params["ref"], statuses)
        raise ApiError(404, "Not Found")

    def _threads(self, state: str, *, pulls: bool | None) -> list[Thread]:
        found = [
            t
            for t in sorted(self.threads.values(), key=lambda t: -t.number)  # newest first
            if (state == "all" or t.state == state)
            and (pulls is None or (t.pull is not None) == pulls)
        ]
        return found

    def _page(self, items: list[Any], query: dict[str, str]) -> list[Any]:
        size = int(query.get("per_page") or query.get("limit") or 30)
        page = max(int(query.get("page") or 1), 1)
        return items[(page - 1) * size : page * size]

    def _thread(self, number: int, *, pull: bool = False) -> Thread:
        thread = self.threads.get(number)
        if thread is None or (pull and thread.pull is None):
            raise ApiError(404, "Not Found")
        return thread

    def _new_thread(self, title: str, body: str | None) -> Thread:
        now = _now()
        thread = Thread(next(self._numbers), next(self._ids), title, body, now, now)
        self.threads[thread.number] = thread
        return thread

    def _edit(self, thread: Thread, body: dict[str, Any]) -> None:
        for key in ("title", "body"):
            if key in body:
                setattr(thread, key, body[key])
        if body.get("state") in ("open", "closed") and body["state"] != thread.state:
            thread.state = body["state"]
            thread.closed_at = _now() if thread.state == "closed" else None
        thread.updated_at = _now()

    def _add_labels(self, thread: Thread, names: list[str]) -> None:
        for name in names:
            self.labels.setdefault(name, next(self._ids))
            if name not in thread.labels:
                thread.labels.append(name)

    async def _create_pull(self, body: dict[str, Any]) -> Thread:
        head, base = body["head"].split(":")[-1], body["base"]
        head_sha, base_sha = await self._branch(head), await self._branch(base)
        for field_name, sha in (("head", head_sha), ("base", base_sha)):
            if sha is None:
                raise ApiError(
                    422,
                    "Validation Failed",
                    [{"resource": "PullRequest", "field": field_name, "code": "invalid"}],
                )
        for thread in self.pulls:
            assert thread.pull is not None
            if thread.state == "open" and (thread.pull.head, thread.pull.base) == (head, base):
                label = f"{self.owner}:{head}"
                message = f"A pull request already exists for {label}."
                raise ApiError(
                    self.shapes.exists_status,
                    "Validation Failed",
                    [{"resource": "PullRequest", "code": "custom", "message": message}],
                )
        assert head_sha is not None and base_sha is not None
        thread = self._new_thread(body.get("title") or head, body.get("body"))
        thread.pull = Pull(head, base, head_sha, base_sha)
        return thread

    # -- git ---------------------------------------------------------------

    async def _run_git(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            self._git,
            "--git-dir",
            str(self.bare_repo),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=_git_env(),
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode().strip()

    async def _branch(self, branch: str) -> str | None:
        """The sha of a branch in the bare repository, None when it has none."""
        code, out = await self._run_git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")
        return out if code == 0 and out else None

    async def default_branch(self) -> str:
        code, out = await self._run_git("symbolic-ref", "--short", "HEAD")
        return out if code == 0 and out else "main"

    def _git_user(self, request: web.Request) -> str | None:
        """The Basic-auth user when its password is the token (any user name)."""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic" or self.token is None:
            return None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user if hmac.compare_digest(password.encode(), self.token.encode()) else None

    async def _git_http(self, request: web.Request) -> web.StreamResponse:
        """Smart HTTP through ``git http-backend`` (CGI), bodies streamed both ways."""
        user = self._git_user(request)
        entry = {
            "method": request.method,
            "path": request.path,
            "user": user,
            "encoding": request.headers.get("Content-Encoding"),
        }
        self.git_log.append(entry)
        if user is None:
            entry["status"] = 401
            return web.Response(
                status=401,
                text="the forge refused the credentials\n",
                headers={"WWW-Authenticate": 'Basic realm="agog forge"'},
            )
        env = {
            **_git_env(),
            "GIT_PROJECT_ROOT": str(self.bare_repo),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": "/" + request.match_info["tail"],
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "REMOTE_USER": user,
            "REMOTE_ADDR": request.remote or "127.0.0.1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        for header, variable in (
            ("Content-Length", "CONTENT_LENGTH"),
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
            ("Git-Protocol", "HTTP_GIT_PROTOCOL"),
        ):
            if header in request.headers:
                env[variable] = request.headers[header]
        proc = await asyncio.create_subprocess_exec(
            self._git,
            "http-backend",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stdin and proc.stdout and proc.stderr
        feeding = asyncio.create_task(_feed(request, proc.stdin))
        errors = asyncio.create_task(proc.stderr.read())
        try:
            status, headers = await _cgi_headers(proc.stdout)
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            while chunk := await proc.stdout.read(65536):
                await response.write(chunk)
            await response.write_eof()
            await feeding
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        finally:
            feeding.cancel()
            await proc.wait()
        entry.update(status=status, stderr=(await errors).decode(errors="replace")[-2000:])
        return response


def _route(pattern: str, owner: str, name: str) -> str:
    return pattern.replace("{o}", re.escape(owner)).replace("{r}", re.escape(name))


def _git_env() -> dict[str, str]:
    """git's environment: no system or global config of the machine's."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "HOME": os.devnull,
    }


async def _feed(request: web.Request, stdin: asyncio.StreamWriter) -> None:
    try:
        async for chunk in request.content.iter_chunked(65536):
            stdin.write(chunk)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stdin.close()


async def _cgi_headers(stdout: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The CGI response's header block: its ``Status`` and the other headers."""
    status, headers = 200, {}
    while True:
        line = (await stdout.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            return status, headers
        key, _, value = line.partition(":")
        if key.lower() == "status":
            status = int(value.split()[0])
        else:
            headers[key.strip()] = value.strip()


def _check_gitea_body(op: str, body: Any, has_body: bool) -> list[str]:
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


class _GitHubShapes:
    """GitHub's response objects, complete: every property its schema requires."""

    edited_status = 200
    exists_status = 422

    def __init__(self, server: ForgeServer) -> None:
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


class _GiteaShapes:
    """Gitea's (and Forgejo's) response objects, as its swagger describes them."""

    edited_status = 201  # Gitea answers an edit with 201
    exists_status = 409

    def __init__(self, server: ForgeServer) -> None:
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
                "id": next(self.s._ids),
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
