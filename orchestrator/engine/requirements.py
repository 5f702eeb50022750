"""Store a parsed requirement: NATS, OWNER_REQUESTS.md and the API all end here.

Intake is idempotent by REQ id: the same REQ from two sources, or twice,
gives one workflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.engine import store
from orchestrator.inbound.intake import Requirement, priority_label
from orchestrator.memory import capture

if TYPE_CHECKING:
    from orchestrator.memory.service import Memory


async def submit(
    conn: store.Conn, req: Requirement, source: str, memory: Memory | None = None
) -> bool:
    """Create the workflow if it is new (inside the caller's transaction); with
    ``memory``, the requirement's text is remembered in the same transaction."""
    created = await store.insert_requirement(
        conn,
        req.req_number,
        title=req.title,
        priority=req.priority,
        source=source,
        owner=req.owner,
        requirement=req.model_dump(mode="json"),
    )
    if created:
        await store.record_event(
            conn,
            req.req_number,
            "workflow.queued",
            reason=f"from {source}",
            detail={"priority": priority_label(req.priority)},
        )
        if memory is not None:
            draft = capture.requirement(req.req_number, req.title, req.requirements, req.owner)
            await memory.writer.remember(conn, [draft])
    return created
