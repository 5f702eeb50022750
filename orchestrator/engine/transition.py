"""Commit one transition: the new workflow row, then its effects, in the caller's
transaction. Shared by the message handlers and the scheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.core.registry import Pipeline
from orchestrator.core.workflow import Workflow
from orchestrator.engine import store
from orchestrator.engine.effects import EffectRunner, deployment
from orchestrator.engine.tx import EngineTx

if TYPE_CHECKING:
    from orchestrator.memory.service import Memory


class Transitions:
    """Writes transitions; with ``memory``, their deliverables are remembered too."""

    def __init__(self, pipeline: Pipeline, memory: Memory | None) -> None:
        self.pipeline, self.memory = pipeline, memory

    async def commit(
        self,
        conn: EngineTx,
        new: Workflow,
        effects: list[Any],
        locked: store.Locked,
        deliverable: dict[str, Any] | None = None,
        digest: str | None = None,
        usage: Any = None,
    ) -> None:
        await store.save_workflow(conn, new, deployment(effects))
        memory = self.memory.bind(locked.title, locked.recalled) if self.memory else None
        runner = EffectRunner(
            self.pipeline,
            conn,
            new,
            locked.title,
            deliverable,
            locked.delivered,
            memory,
            digest=digest,
            usage=usage,
        )
        await runner.run(effects)
        if new.status != "IN_PROGRESS":
            conn.after.wake_dispatcher = True  # a slot may have opened, once this commits
