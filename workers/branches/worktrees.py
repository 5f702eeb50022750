"""A branch and a git worktree per REQ, and a commit per stage attempt.

Every REQ gets ``agog/<REQ>`` (``AGOG_BRANCH_TEMPLATE``) from the
integration branch's head and a worktree of it under
``AGOG_DATA_DIR/worktrees/<REQ>``; all its stages run there, so parallel
REQs never share files. The runner calls ``begin`` before an attempt (a
clean tree at the branch's head, or at the stage's start when a decision
resets it, or with the integration head merged in to resolve a conflict) and
``finish`` after it (a commit of whatever the agent left, with the agent as
author and ``Agog-*`` trailers).

Crash safety: Postgres holds the REQ's row (its one base) and each attempt's
start; every git step checks what is already there before it acts, so a
kill -9 between any two steps, or two replicas racing (serialised by
advisory locks), ends with one branch, one worktree and one commit per
attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from orchestrator.runtime import failpoints
from orchestrator.runtime.db import advisory_lock
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.settings import Settings
from workers.adapters.git_repo import Author, GitError, GitRepo
from workers.branches.changes import (
    Changed,
    attempt_message,
    branch_name,
    compare,
    has_conflict_markers,
    listed_paths,
    parse_name_status,
)

log = get_logger("agogd.worktrees")

MAX_FILES = 500  # paths kept per attempt row (a vendored tree is summarised)


class WorktreeError(RuntimeError):
    """The REQ's worktree cannot be had; the attempt fails saying why."""


@dataclass(frozen=True)
class Worktree:
    req: str
    branch: str
    base: str
    path: Path


@dataclass(frozen=True)
class Diff:
    """What changed between two commits of a REQ's branch."""

    start: str
    end: str
    text: str


@dataclass(frozen=True)
class AttemptKey:
    req: str
    stage: int
    attempt: int


class Worktrees:
    """The REQs' branches and worktrees of one repository."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        repo: GitRepo,
        root: Path,
        integration: str,
        branch_template: str,
        email_domain: str,
        max_age_days: float,
    ) -> None:
        self.pool, self.repo, self.root = pool, repo, root
        self.integration, self.template = integration, branch_template
        self.email_domain, self.max_age_days = email_domain, max_age_days
        self.common_dir = repo.root / ".git"  # where .git/worktrees is; check() asks git

    # --- locks ----------------------------------------------------------------
    def lock(self, key: str) -> contextlib.AbstractAsyncContextManager[None]:
        """An advisory lock across every agogd replica (and every coroutine)."""
        return advisory_lock(self.pool, key)

    def _repo_lock(self) -> contextlib.AbstractAsyncContextManager[None]:
        # Branch creation and worktree bookkeeping touch the shared .git.
        return self.lock(f"worktrees:{self.repo.root}")

    async def check(self) -> None:
        """That the repository can work (git, a branch with a commit, a branch
        name git takes), else a WorktreeError said once at start-up."""
        root = self.repo.root
        if not await self.repo.is_repo():
            raise WorktreeError(f"AGOG_REPO {root} is not a git working tree")
        if not self.integration:
            self.integration = await self.repo.branch() or ""
            if not self.integration:
                raise WorktreeError(
                    f"AGOG_REPO {root} has no branch checked out: set AGOG_INTEGRATION_BRANCH"
                )
        probe = branch_name(self.template, "REQ-1")
        code, _, _ = await self.repo.call("check-ref-format", "--branch", probe)
        if code != 0:
            raise WorktreeError(f"AGOG_BRANCH_TEMPLATE {self.template!r} is no branch name")
        await self.integration_head()
        common = await self.repo.run("rev-parse", "--path-format=absolute", "--git-common-dir")
        self.common_dir = Path(common.strip())
        self.root.mkdir(parents=True, exist_ok=True)

    # --- the integration branch -------------------------------------------------
    async def integration_head(self) -> str:
        sha = await self.rev(f"refs/heads/{self.integration}")
        if sha is None:
            raise WorktreeError(f"the integration branch {self.integration!r} has no commit")
        return sha

    async def rev(self, ref: str, repo: GitRepo | None = None) -> str | None:
        code, out, _ = await (repo or self.repo).call("rev-parse", "--verify", "-q", ref)
        return out.strip() if code == 0 and out.strip() else None

    # --- the REQ's worktree --------------------------------------------------------
    async def find(self, req: str) -> Worktree | None:
        row = await self.pool.fetchrow(
            "SELECT branch, base_sha, path FROM req_worktrees WHERE req_number = $1", req
        )
        return Worktree(req, row["branch"], row["base_sha"], Path(row["path"])) if row else None

    async def ensure(self, req: str) -> Worktree:
        """The REQ's branch and worktree, made if missing (idempotent)."""
        try:
            async with self._repo_lock():
                return await self._ensure(req)
        except GitError as exc:
            raise WorktreeError(f"the worktree of {req} cannot be made: {exc}") from None

    async def _ensure(self, req: str) -> Worktree:
        found = await self.find(req)
        if found is None:
            base = await self.integration_head()
            await self.pool.execute(
                "INSERT INTO req_worktrees (req_number, branch, base_sha, path)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (req_number) DO NOTHING",
                req,
                branch_name(self.template, req),
                base,
                str(self.root / req),
            )
            failpoints.hit("worktree.recorded")
            found = await self.find(req)
            assert found is not None
        if await self.rev(f"refs/heads/{found.branch}") is None:
            await self.repo.run("branch", "--no-track", found.branch, found.base)
            log.info("worktree.branch_created", branch=found.branch, base=found.base)
            failpoints.hit("worktree.branched")
        if not await self._registered(found.path):
            if found.path.exists():  # a crash during `worktree add` left half a tree
                shutil.rmtree(found.path)
            await self.repo.run("worktree", "prune")
            found.path.parent.mkdir(parents=True, exist_ok=True)
            await self.repo.run("worktree", "add", "--quiet", str(found.path), found.branch)
            log.info("worktree.created", path=str(found.path), branch=found.branch)
            failpoints.hit("worktree.added")
        await self.pool.execute(
            "UPDATE req_worktrees SET removed_at = NULL, removed_reason = NULL,"
            " touched_at = now() WHERE req_number = $1",
            req,
        )
        return found

    async def _registered(self, path: Path) -> bool:
        """Whether git knows this worktree and its files are there."""
        out = await self.repo.run("worktree", "list", "--porcelain")
        paths = {
            line[len("worktree ") :] for line in out.splitlines() if line.startswith("worktree ")
        }
        return str(path) in paths and (path / ".git").is_file()  # paths are resolved

    async def tree(self, wt: Worktree, author: Author | None = None) -> GitRepo:
        """git in the REQ's worktree, once its ``.git`` file is what git wrote.

        The agent may edit anything in its worktree, ``.git`` included: a
        ``gitdir:`` pointing at a repository of its own would hand git that
        repository's config (filters, hooks). So it is rewritten to git's own
        administrative directory for this worktree before git runs there."""
        expected = await asyncio.to_thread(_gitdir_line, self.common_dir, wt.path)
        marker = wt.path / ".git"
        if expected is None:
            raise WorktreeError(f"git does not know the worktree {wt.path}")
        try:
            found = marker.read_text() if not marker.is_symlink() else None
        except (OSError, UnicodeDecodeError):
            found = None
        if found != expected:
            log.warning("worktree.gitdir_restored", path=str(marker))
            if marker.is_symlink() or marker.is_dir():
                await asyncio.to_thread(_remove, marker)
            marker.write_text(expected)
        return self.repo.at(wt.path, author)

    async def clean(self, tree: GitRepo) -> None:
        """No rebase, merge or leftover edit of an earlier run in a worktree."""
        await _clean(tree)

    # --- one attempt ----------------------------------------------------------------
    async def begin(
        self,
        wt: Worktree,
        key: AttemptKey,
        agent: str,
        *,
        reset: bool = False,
        merge: str | None = None,
    ) -> str:
        """Make the worktree ready for this attempt; returns its start commit.

        A clean tree at the branch's head (what earlier attempts committed;
        leftovers of a failed or crashed attempt are dropped). ``reset``: at
        the stage's first start instead. ``merge``: that commit (the
        integration head) merged in, conflicts left for the agent."""
        tree = await self.tree(wt)
        async with self.lock(f"worktree:{wt.req}"):
            await _clean(tree)
            # An earlier agent may have left it on another branch or detached.
            await tree.run("checkout", "--quiet", "--force", wt.branch)
            row = await self.pool.fetchrow(
                "SELECT start_sha FROM stage_commits WHERE req_number = $1 AND stage = $2"
                " AND attempt = $3",
                key.req,
                key.stage,
                key.attempt,
            )
            if row is not None:  # this attempt again (a crash): from where it began
                start = row["start_sha"]
            else:
                start = await self.rev("HEAD", tree) or wt.base
                if reset:
                    first = await self.pool.fetchval(
                        "SELECT start_sha FROM stage_commits WHERE req_number = $1"
                        " AND stage = $2 ORDER BY attempt LIMIT 1",
                        key.req,
                        key.stage,
                    )
                    start = first or start
                await self.pool.execute(
                    "INSERT INTO stage_commits (req_number, stage, attempt, agent, start_sha)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    key.req,
                    key.stage,
                    key.attempt,
                    agent,
                    start,
                )
            await tree.run("reset", "--quiet", "--hard", start)
            if merge is not None and await self.rev(merge, tree) is not None:
                code, _, err = await tree.call(
                    "merge", "--no-ff", "--no-commit", "--no-edit", merge
                )
                if code != 0 and not await self.rev("MERGE_HEAD", tree):
                    raise WorktreeError(f"merging {merge[:12]} failed: {err.strip()[-300:]}")
            log.info("worktree.attempt_started", start=start, reset=reset or None)
            return start

    async def finish(
        self,
        wt: Worktree,
        key: AttemptKey,
        *,
        agent: str,
        stage_name: str,
        notice: dict[str, Any],
    ) -> dict[str, Any]:
        """Commit what the agent left; what changed, compared with its notice.

        Returns the notice's ``branch`` object; ``unresolved`` names files that
        still hold conflict markers (then nothing is committed)."""
        author = Author(f"{agent.capitalize()} ({stage_name})", f"{agent}@{self.email_domain}")
        tree = await self.tree(wt, author)
        async with self.lock(f"worktree:{wt.req}"):
            start = await self.pool.fetchval(
                "SELECT start_sha FROM stage_commits WHERE req_number = $1 AND stage = $2"
                " AND attempt = $3",
                key.req,
                key.stage,
                key.attempt,
            )
            if start is None:
                raise WorktreeError("the attempt's start was not recorded")
            on = await tree.branch()
            if on != wt.branch:
                raise WorktreeError(
                    f"the agent left the worktree on {on or 'a detached HEAD'},"
                    f" not the REQ's branch {wt.branch}: its work is not taken"
                )
            merging = await self.rev("MERGE_HEAD", tree)
            edited: list[Changed] = []
            if merging:
                unresolved = await _unresolved(tree, wt.path)
                if unresolved:
                    return {"branch": wt.branch, "unresolved": unresolved}
                edited = await _edited(tree)  # the agent's, not the merge's own changes
            await tree.run("add", "--all")
            staged = await tree.run("diff", "--cached", "--name-only", "-z")
            if staged.strip("\0") or merging:
                message = attempt_message(
                    req=key.req,
                    stage=key.stage,
                    stage_name=stage_name,
                    agent=agent,
                    attempt=key.attempt,
                    summary=str(notice.get("summary") or ""),
                )
                await tree.run("commit", "--quiet", "--no-verify", "--file=-", stdin=message)
                failpoints.hit("stage.committed")
            end = await self.rev("HEAD", tree)
            if merging:
                changed = edited
            else:
                changed = await self._changed(tree, start, end) if end and end != start else []
            unlisted, missing = compare(listed_paths(notice), changed)
            await self.pool.execute(
                "UPDATE stage_commits SET end_sha = $4, files = $5::jsonb, unlisted = $6::jsonb,"
                " missing = $7::jsonb, committed_at = now() WHERE req_number = $1"
                " AND stage = $2 AND attempt = $3",
                key.req,
                key.stage,
                key.attempt,
                end if end != start else None,
                json.dumps([c.as_dict() for c in changed[:MAX_FILES]]),
                json.dumps(unlisted[:MAX_FILES]),
                json.dumps(missing[:MAX_FILES]),
            )
            await self.pool.execute(
                "UPDATE req_worktrees SET touched_at = now() WHERE req_number = $1", key.req
            )
        result: dict[str, Any] = {
            "branch": wt.branch,
            "commit": end if end != start else None,
            "files": [c.as_dict() for c in changed[:MAX_FILES]],
        }
        if unlisted:
            result["unlisted"] = unlisted[:MAX_FILES]
        if missing:
            result["missing"] = missing[:MAX_FILES]
        log.info(
            "worktree.attempt_committed",
            commit=result["commit"],
            files=len(changed),
            unlisted=len(unlisted) or None,
            missing=len(missing) or None,
        )
        return result

    async def _changed(self, tree: GitRepo, start: str, end: str) -> list[Changed]:
        """What the attempt's commit changed."""
        return parse_name_status(await tree.run("diff", "--name-status", "-z", start, end))

    # --- what the branch changed -------------------------------------------------------
    async def range_of(self, req: str, stage: int | None = None) -> tuple[str, str] | None:
        """The (from, to) commits whose diff is what the REQ (or one stage) changed."""
        wt = await self.find(req)
        if wt is None:
            return None
        if stage is not None:
            rows = await self.pool.fetch(
                "SELECT start_sha, end_sha FROM stage_commits WHERE req_number = $1"
                " AND stage = $2 ORDER BY attempt",
                req,
                stage,
            )
            if not rows:
                return None
            ends = [r["end_sha"] for r in rows if r["end_sha"]]
            return rows[0]["start_sha"], ends[-1] if ends else rows[0]["start_sha"]
        head = await self.rev(f"refs/heads/{wt.branch}")
        if head is None:
            return None
        merged = await self.merge_of(req, head)
        if merged is not None:
            return f"{merged}^1", merged
        code, out, _ = await self.repo.call("merge-base", f"refs/heads/{self.integration}", head)
        return (out.strip() if code == 0 and out.strip() else wt.base), head

    async def merge_of(self, req: str, head: str) -> str | None:
        """The integration branch's merge of this REQ's branch head, if any."""
        out = await self.repo.run(
            "log",
            "--merges",
            "--format=%H %P",
            "-n",
            "200",
            "--fixed-strings",
            f"--grep=Agog-Req: {req}",
            f"refs/heads/{self.integration}",
            check=False,
        )
        for line in out.splitlines():
            sha, *parents = line.split()
            if len(parents) >= 2 and parents[1] == head:
                return sha
        return None

    async def diff(self, req: str, stage: int | None = None) -> Diff | None:
        """The unified diff of what the REQ (or one of its stages) changed,
        with the commits it runs between; None when there is no such range."""
        found = await self.range_of(req, stage)
        if found is None:
            return None
        # No external diff and no textconv: a REQ's files name no command git runs.
        text = await self.repo.run(
            "diff", "--no-color", "--no-ext-diff", "--no-textconv", found[0], found[1]
        )
        return Diff(found[0], found[1], text)

    async def commits(self, req: str) -> list[dict[str, Any]]:
        """Each attempt's commit row, for show, the board and the API."""
        rows = await self.pool.fetch(
            "SELECT stage, attempt, agent, start_sha, end_sha, files, unlisted, missing,"
            " committed_at FROM stage_commits WHERE req_number = $1 ORDER BY stage, attempt",
            req,
        )
        return [
            {
                "stage": r["stage"],
                "attempt": r["attempt"],
                "agent": r["agent"],
                "start": r["start_sha"],
                "commit": r["end_sha"],
                "files": json.loads(r["files"]),
                "unlisted": json.loads(r["unlisted"]),
                "missing": json.loads(r["missing"]),
                "committed_at": r["committed_at"].isoformat() if r["committed_at"] else None,
            }
            for r in rows
        ]

    # --- removal ---------------------------------------------------------------------
    async def remove(self, req: str, reason: str) -> bool:
        """Remove the REQ's worktree (the branch stays); False if there was none."""
        wt = await self.find(req)
        if wt is None:
            return False
        async with self._repo_lock():
            if await self._registered(wt.path):
                await self.repo.run("worktree", "remove", "--force", "--force", str(wt.path))
            if wt.path.exists():
                shutil.rmtree(wt.path)
            await self.repo.run("worktree", "prune")
            await self.pool.execute(
                "UPDATE req_worktrees SET removed_at = now(), removed_reason = $2"
                " WHERE req_number = $1",
                req,
                reason,
            )
        log.info("worktree.removed", req_number=req, reason=reason)
        return True

    async def prune(self) -> int:
        """Remove the worktrees of finished REQs (DEPLOYED, CANCELLED, none of
        their stages running; COMPLETE: committed, not deployed) and of any not
        touched for the maximum age."""
        rows = await self.pool.fetch(
            "SELECT t.req_number, w.status, t.touched_at < now() - make_interval(secs => $1)"
            " AS old FROM req_worktrees t LEFT JOIN workflow_state w USING (req_number)"
            " WHERE t.removed_at IS NULL AND ((w.status IN ('DEPLOYED', 'COMPLETE', 'CANCELLED')"
            " AND NOT EXISTS (SELECT 1 FROM stage_attempts a WHERE a.req_number ="
            " t.req_number AND a.status = 'RUNNING'))"
            " OR t.touched_at < now() - make_interval(secs => $1) OR w.req_number IS NULL)",
            self.max_age_days * 86400,
        )
        removed = 0
        for row in rows:
            reason = (
                f"not touched for {self.max_age_days:g} days"
                if row["old"]
                else (row["status"] or "gone").lower()
            )
            try:
                removed += await self.remove(row["req_number"], reason)
            except (GitError, OSError) as exc:
                log.warning("worktree.remove_failed", req_number=row["req_number"], error=str(exc))
        return removed

    def disk_bytes(self) -> int:
        """What the worktrees take on disk (for the gauge)."""
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total


def _gitdir_line(common_dir: Path, path: Path) -> str | None:
    """What git wrote into ``path/.git``: the ``gitdir:`` line naming its
    administrative directory under the repository's ``.git/worktrees``."""
    admin = common_dir / "worktrees"
    if not admin.is_dir():
        return None
    for entry in admin.iterdir():
        try:
            target = (entry / "gitdir").read_text().strip()
        except OSError:
            continue
        if Path(target) == path / ".git":
            return f"gitdir: {entry}\n"
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


async def _clean(tree: GitRepo) -> None:
    """No rebase, merge or leftover edit of an earlier run in the worktree."""
    for args in (("rebase", "--abort"), ("merge", "--abort"), ("cherry-pick", "--abort")):
        await tree.call(*args)
    await tree.run("reset", "--quiet", "--hard")
    await tree.run("clean", "--quiet", "-fd")


async def _edited(tree: GitRepo) -> list[Changed]:
    """During a merge: what the agent changed beyond what git merged itself
    (the work tree against the index, where the merge put its result)."""
    found = parse_name_status(await tree.run("diff", "--name-status", "-z"))
    out = await tree.run("ls-files", "--others", "--exclude-standard", "-z")
    found += [Changed(p, "added") for p in out.split("\0") if p]
    return sorted({c.path: c for c in found}.values(), key=lambda c: c.path)


async def _unresolved(tree: GitRepo, root: Path) -> list[str]:
    """Files of an unfinished merge that still hold conflict markers."""
    out = await tree.run("diff", "--name-only", "-z", "--diff-filter=U")
    paths = {p for p in out.split("\0") if p}
    out = await tree.run("diff", "--name-only", "-z", "MERGE_HEAD")
    paths |= {p for p in out.split("\0") if p}
    left = []
    for path in sorted(paths):
        try:
            text = (root / path).read_text(errors="replace")
        except (OSError, IsADirectoryError):
            continue
        if has_conflict_markers(text):
            left.append(path)
    return left


def worktrees_of(settings: Settings, pool: asyncpg.Pool) -> Worktrees | None:
    """The REQs' worktrees of AGOG_REPO, or None when it is unset (no I/O:
    ``check`` looks at the repository once the daemon is up)."""
    if settings.repo is None:
        return None
    repo = GitRepo(
        settings.repo.resolve(),
        Author(settings.berry_author_name, settings.berry_author_email),
        global_config=settings.berry_git_config.resolve() if settings.berry_git_config else None,
        hooks=settings.berry_git_hooks,
        home=settings.data_dir.resolve() / "git-home",
    )
    return Worktrees(
        pool=pool,
        repo=repo,
        root=settings.data_dir.resolve() / "worktrees",
        integration=settings.integration_branch,
        branch_template=settings.branch_template,
        email_domain=settings.berry_coauthor_domain,
        max_age_days=settings.worktree_max_age_days,
    )
