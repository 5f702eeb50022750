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

This module is the server itself: lifecycle, test control, REST dispatch and
the checks. Its records are in ``state``, the response objects in
``github_shapes`` and ``gitea_shapes``, the git smart-HTTP bridge in
``git_http``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import re
import shutil
import zlib
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from orchestrator.embedded.forge import git_http, openapi
from orchestrator.embedded.forge.gitea_shapes import GiteaShapes, check_gitea_body
from orchestrator.embedded.forge.github_shapes import GitHubShapes
from orchestrator.embedded.forge.state import (
    BOT,
    CHECK_STATES,
    DOCS,
    GITHUB_ONLY,
    ROUTES,
    ApiError,
    CheckRun,
    Comment,
    CommitStatus,
    Fault,
    Pull,
    ResponseHook,
    Thread,
    _now,
)


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
        self.shapes: GitHubShapes | GiteaShapes
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
        shapes = GitHubShapes if self.flavour == "github" else GiteaShapes
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

    def next_id(self) -> int:
        """A fresh id from the forge's one sequence of ids."""
        return next(self._ids)

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
        return check_gitea_body(op, body, has_body)

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
            env=git_http.git_env(),
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

    async def _git_http(self, request: web.Request) -> web.StreamResponse:
        """Smart HTTP through ``git http-backend`` (CGI), bodies streamed both ways."""
        return await git_http.serve(
            request, git=self._git, bare_repo=self.bare_repo, token=self.token, log=self.git_log
        )


def _route(pattern: str, owner: str, name: str) -> str:
    return pattern.replace("{o}", re.escape(owner)).replace("{r}", re.escape(name))
