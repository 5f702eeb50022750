"""Berry's integration of a REQ's branch: onto the integration branch's head,
then into it, never overwriting another REQ's work.

``update`` brings the branch on top of the integration head in the REQ's
own worktree (``rebase``: its commits replayed; ``merge``: the head merged
in, and always once the branch holds a merge, since replaying around one
would meet the conflict it resolved again). A conflict is no crash: it
comes back as ``Conflict`` with the files, the hunks and the agents whose
commits touched those files, for a rework. ``land`` then makes the seed 002
merge commit (its tree is the branch's, already tested) and fast-forwards
the integration branch to it; a re-run finds that commit by its
``Agog-Req`` trailer instead of making another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.core.registry import Pipeline
from orchestrator.runtime import failpoints
from orchestrator.runtime.logs import get_logger
from workers.adapters.git_repo import GitError, GitRepo
from workers.branches.changes import conflict_owners
from workers.branches.worktrees import Worktree, Worktrees

log = get_logger("agogd.berry")

HUNK_BYTES = 8000  # of conflict hunks a rework's instructions carry


@dataclass
class Conflict(Exception):
    """The branch does not apply on the integration head."""

    files: list[str]
    hunks: str
    integration_head: str
    owners: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "hunks": self.hunks,
            "integration_head": self.integration_head,
            "stages": self.owners,
        }


@dataclass(frozen=True)
class Updated:
    """The REQ's branch head, on top of ``integration_head``."""

    head: str
    integration_head: str
    how: str  # "up to date", "rebased", "merged"


class Integrator:
    def __init__(
        self, *, worktrees: Worktrees, workspace: GitRepo, mode: str, pipeline: Pipeline
    ) -> None:
        self.worktrees, self.workspace, self.mode, self.pipeline = (
            worktrees,
            workspace,
            mode,
            pipeline,
        )

    async def update(self, wt: Worktree) -> Updated:
        """The branch on top of the integration head, or Conflict."""
        tree = await self.worktrees.tree(wt)
        async with self.worktrees.lock(f"worktree:{wt.req}"):
            await self.worktrees.clean(tree)
            target = await self.worktrees.integration_head()
            head = await self.worktrees.rev("HEAD", tree)
            assert head is not None
            merged = await self.worktrees.merge_of(wt.req, head)
            if merged is not None:  # a re-run after the merge: nothing to move
                first = await self.worktrees.rev(f"{merged}^1", tree)
                return Updated(head, first or target, "already merged")
            code, _, _ = await tree.call("merge-base", "--is-ancestor", target, head)
            if code == 0:
                return Updated(head, target, "up to date")
            has_merge = bool(
                (await tree.run("rev-list", "--merges", "-n", "1", f"{target}..{head}")).strip()
            )
            how = "merged" if self.mode == "merge" or has_merge else "rebased"
            if how == "rebased":
                code, _, err = await tree.call("rebase", "--no-autostash", target)
            else:
                message = (
                    f"Merge {self.worktrees.integration} into {wt.branch}\n\nAgog-Req: {wt.req}\n"
                )
                code, _, err = await tree.call(
                    "merge", "--no-ff", "--no-edit", "-m", message, target
                )
            if code != 0:
                conflict = await self._conflict(tree, wt, target)
                await tree.call("rebase" if how == "rebased" else "merge", "--abort")
                if conflict is None:
                    raise GitError(f"git {how[:-1]} failed: {err.strip()[-400:]}")
                raise conflict
            failpoints.hit("berry.rebased")
            new = await self.worktrees.rev("HEAD", tree)
            assert new is not None
            log.info("berry.branch_updated", how=how, head=new, onto=target)
            return Updated(new, target, how)

    async def _conflict(self, tree: GitRepo, wt: Worktree, target: str) -> Conflict | None:
        out = await tree.run("diff", "--name-only", "-z", "--diff-filter=U")
        files = sorted({p for p in out.split("\0") if p})
        if not files:
            return None
        hunks = (await tree.run("diff", "--no-color", "--", *files, check=False))[:HUNK_BYTES]
        commits = [
            (c["agent"], [f["path"] for f in c["files"]])
            for c in await self.worktrees.commits(wt.req)
        ]
        order = [s.agent for s in self.pipeline.stages]
        owners = conflict_owners(commits, files, order)
        log.warning("berry.conflict", files=files[:20], owners=owners, onto=target)
        return Conflict(files, hunks, target, owners)

    async def land(self, wt: Worktree, updated: Updated, message: str) -> str:
        """The merge commit on the integration branch (made once)."""
        found = await self.worktrees.merge_of(wt.req, updated.head)
        if found is not None:
            log.info("berry.merge_found", commit_sha=found)
            return found
        tree = (await self.workspace.run("rev-parse", f"{updated.head}^{{tree}}")).strip()
        merge = (
            await self.workspace.run(
                "commit-tree", tree, "-p", updated.integration_head, "-p", updated.head,
                stdin=message,
            )
        ).strip()  # fmt: skip
        failpoints.hit("berry.merge_made")
        branch = await self.workspace.branch()
        if branch != self.worktrees.integration:
            raise GitError(
                f"the workspace has {branch or 'no branch'} checked out,"
                f" not the integration branch {self.worktrees.integration}"
            )
        # Fails if the integration branch moved meanwhile: the stage is retried.
        await self.workspace.run("merge", "--ff-only", "--quiet", merge)
        log.info("berry.merged", commit_sha=merge, branch=branch)
        return merge
