"""Removes the worktrees of finished REQs, prunes old ones, and measures them.

A worktree stays while its REQ is live or BLOCKED (the operator inspects it
there); once the REQ is DEPLOYED or CANCELLED and none of its stages runs,
or it has not been touched for ``AGOG_WORKTREE_MAX_AGE_DAYS``, it goes. The
branch stays: it is the REQ's record. Disk use is the
``agogd_worktrees_bytes`` gauge.
"""

from __future__ import annotations

import asyncio
import os

from orchestrator.runtime import services
from orchestrator.runtime.context import Runtime
from orchestrator.runtime.metrics import WORKTREES, WORKTREES_BYTES
from workers.branches.worktrees import Worktrees


class WorktreeJanitor:
    def __init__(self, *, worktrees: Worktrees, rt: Runtime) -> None:
        self.worktrees, self.rt = worktrees, rt

    async def pass_once(self) -> int:
        removed = await self.worktrees.prune()
        root = self.worktrees.root
        count = len(os.listdir(root)) if root.is_dir() else 0
        WORKTREES.set(count)
        WORKTREES_BYTES.set(await asyncio.to_thread(self.worktrees.disk_bytes))
        return removed

    async def run(self) -> None:
        await services.periodic(
            self.pass_once,
            name="worktree-janitor",
            interval=self.rt.settings.worktree_prune_interval,
            stopping=self.rt.stopping,
            states=self.rt.states,
        )
