"""``GET /api/reqs/{req}/diff[?stage=S]``: what a REQ's branch changed.

With ``AGOG_REPO`` every REQ has a branch (workers.branches.worktrees) and
each stage attempt a commit on it. The whole REQ's diff is from where the
branch left the integration branch to its head (once Berry merged it: what
the merge brought in); a stage's (``stage``: an index, an agent or a stage
name) is from where its first attempt started to its last attempt's commit.

The answer: ``{req_number, branch, stage, stage_name, agent, from, to,
diff, bytes, truncated}`` (``stage`` null for the whole REQ). A diff beyond
``MAX_DIFF_BYTES`` is cut at a line's end, ``truncated`` true, ``bytes`` its
whole size. 404 with the reason when there is nothing to diff: branches off
(``AGOG_REPO`` unset), an unknown REQ, no branch yet, a stage not run yet.
A read: open unless ``AGOG_API_READ_AUTH`` asks for the token.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchestrator.api import views as api_views
from orchestrator.api.common import ApiError, context_of, json_ok, pipeline_of, req_of
from orchestrator.core.registry import Stage
from orchestrator.engine import store
from orchestrator.runtime.logs import get_logger

log = get_logger("agogd.api")

MAX_DIFF_BYTES = 2 * 1024 * 1024
BRANCHES_OFF = "branches are off: AGOG_REPO is not set"


def capped(text: str, limit: int = MAX_DIFF_BYTES) -> tuple[str, int, bool]:
    """(the text cut to ``limit`` UTF-8 bytes at a line's end, its whole size
    in bytes, whether it was cut)."""
    data = text.encode()
    if len(data) <= limit:
        return text, len(data), False
    head = data[:limit]
    end = head.rfind(b"\n")
    head = head[: end + 1] if end >= 0 else head
    return head.decode("utf-8", "ignore"), len(data), True


async def diff(request: web.Request) -> web.Response:
    """``GET /api/reqs/{req}/diff[?stage=S]``: the REQ's (or one stage's) diff."""
    req = req_of(request)
    stage: Stage | None = None
    if request.query.get("stage"):
        try:
            stage = api_views.find_stage(pipeline_of(request), request.query["stage"])
        except api_views.BadFilter as exc:
            raise ApiError(400, str(exc)) from None
    context = context_of(request)
    worktrees = context.worktrees
    if worktrees is None:
        raise ApiError(404, BRANCHES_OFF)
    async with context.rt.pool.acquire() as conn:
        if not await store.workflow_exists(conn, req):
            raise ApiError(404, f"no workflow for {req}")
    wt = await worktrees.find(req)
    if wt is None:
        raise ApiError(404, f"{req} has no branch yet: none of its stages has started")
    try:
        found = await worktrees.diff(req, stage.index if stage else None)
    except RuntimeError as exc:  # git refused (GitError): a commit gone, say
        log.warning("api.diff_failed", req_number=req, error=str(exc))
        raise ApiError(500, f"git could not make the diff of {req}: {exc}") from None
    if found is None and stage is not None:
        raise ApiError(
            404, f"stage {stage.index} {stage.name} ({stage.agent}) of {req} has not run yet"
        )
    if found is None:
        raise ApiError(404, f"the branch {wt.branch} of {req} is gone from AGOG_REPO")
    text, size, truncated = capped(found.text)
    body: dict[str, Any] = {
        "req_number": req,
        "branch": wt.branch,
        "stage": stage.index if stage else None,
        "stage_name": stage.name if stage else None,
        "agent": stage.agent if stage else None,
        "from": found.start,
        "to": found.end,
        "diff": text,
        "bytes": size,
        "truncated": truncated,
    }
    return json_ok(body)


def install(app: web.Application) -> None:
    app.router.add_get("/api/reqs/{req}/diff", diff)
