"""Retention, applied in the background (rules in ``retention``).

Every ``memory_retention_interval`` seconds (and shortly after start) each
kind's rule deletes its memories past the maximum age, then the oldest past
the maximum count, a batch at a time. Recall contexts of finished REQs are
dropped too: only live REQs are dispatched.
"""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

from orchestrator.memory import retention
from orchestrator.runtime.logs import get_logger

# Seconds after start before the first pass (a restart loop must not prune in a loop).
FIRST_PASS = 30.0

log = get_logger("agogd.memory")

CONTEXT_SQL = (
    "DELETE FROM memory_context mc WHERE mc.computed_at < now() - interval '1 hour'"
    " AND NOT EXISTS (SELECT 1 FROM workflow_state ws WHERE ws.req_number = mc.req_number"
    "  AND ws.status IN ('PENDING', 'IN_PROGRESS', 'BLOCKED', 'ESCALATED'))"
)


def _count(status: str) -> int:
    """Rows of a DELETE's status line (``DELETE 12``)."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


async def prune(pool: asyncpg.Pool, rules: Mapping[str, retention.Rule]) -> dict[str, int]:
    """Apply every rule once; returns the rows deleted per kind."""
    deleted: dict[str, int] = {}
    for kind, rule in retention.effective(rules).items():
        for statement, args in retention.statements(kind, rule):
            while True:
                n = _count(await pool.execute(statement, *args))
                if n:
                    deleted[kind] = deleted.get(kind, 0) + n
                if n == 0:
                    break
    await pool.execute(CONTEXT_SQL)
    if deleted:
        log.info("memory.pruned", deleted=deleted)
    return deleted
