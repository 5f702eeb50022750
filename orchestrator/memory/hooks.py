"""What the engine calls inside its transaction: never a network call.

``Bound`` is the memory as seen by one transition of one REQ: it writes
memories (queued rows, ``writes``) and gives a stage assignment its memories
(``context``: from the lock query's picks, or computed from the database).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.memory import capture
from orchestrator.memory.context import Recaller
from orchestrator.memory.model import Draft
from orchestrator.memory.writes import Writer


@dataclass(frozen=True)
class Bound:
    writer: Writer
    recaller: Recaller
    title: str = ""
    recalled: tuple[int, Any] | None = None

    async def remember(self, conn: Any, drafts: list[Draft | None]) -> int:
        return await self.writer.remember(conn, drafts)

    async def assignment(self, conn: Any, req: str, stage: int) -> list[dict[str, Any]]:
        return await self.recaller.for_dispatch(conn, req, stage, self.recalled)

    async def notice(
        self,
        conn: Any,
        req: str,
        agent: str,
        stage_name: str,
        stage: int,
        gate: str | None,
        body: dict[str, Any],
        outcome: str | None,
    ) -> None:
        """An applied notice: a deliverable, rejection, QA failure or rollback."""
        kind = capture.notice_kind(gate, body, outcome)
        if kind is not None:
            draft = capture.notice(kind, req, self.title, agent, stage_name, stage, body)
            await self.writer.remember(conn, [draft])

    async def decision(
        self,
        conn: Any,
        req: str,
        kind: str,
        reasoning: str,
        instructions: dict[str, Any],
        previous_status: str,
        stage: int | None,
    ) -> None:
        drafts = capture.decision(
            req, self.title, kind, reasoning, instructions, previous_status, stage
        )
        await self.writer.remember(conn, list(drafts))

    async def escalation(
        self,
        conn: Any,
        req: str,
        agent: str | None,
        stage: int | None,
        priority: str,
        reason: str,
    ) -> None:
        draft = capture.escalation(req, self.title, agent, stage, priority, reason)
        await self.writer.remember(conn, [draft])
