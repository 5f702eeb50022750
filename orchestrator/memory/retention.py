"""Retention rules per kind, and the statements that apply them (pure: no I/O).

``AGOG_MEMORY_RETENTION`` is a JSON object of kind -> rule, e.g.
``{"deliverable": {"max_age_days": 365}, "qa_failure": {"max_count": 5000},
"*": {"max_age_days": 730}}``. ``*`` applies to every kind without a rule of
its own. A memory's chunks go together: counts are of memories, not rows.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.core.memory_kinds import ANY as ANY
from orchestrator.core.memory_kinds import KINDS
from orchestrator.core.memory_kinds import Rule as Rule
from orchestrator.core.memory_kinds import check_kinds as check_kinds

BATCH = 1000  # memories deleted per statement, so a first prune never locks for long


def effective(rules: Mapping[str, Rule]) -> dict[str, Rule]:
    """The rule of every kind (its own, else ``*``), kinds without one left out."""
    out = {}
    for kind in KINDS:
        rule = rules.get(kind) or rules.get(ANY)
        if rule is not None:
            out[kind] = rule
    return out


AGE_SQL = (
    "DELETE FROM memories WHERE parent_hash IN ("
    " SELECT DISTINCT parent_hash FROM memories WHERE memory_type = $1"
    " AND created_at < now() - make_interval(secs => $2) LIMIT $3)"
)
COUNT_SQL = (
    "DELETE FROM memories WHERE parent_hash IN ("
    " SELECT parent_hash FROM ("
    "  SELECT parent_hash, max(created_at) AS at FROM memories WHERE memory_type = $1"
    "  GROUP BY parent_hash ORDER BY at DESC, parent_hash OFFSET $2 LIMIT $3) AS old)"
)


def statements(kind: str, rule: Rule) -> list[tuple[str, tuple[object, ...]]]:
    """The DELETEs for one kind; each removes at most BATCH memories (run until 0)."""
    out: list[tuple[str, tuple[object, ...]]] = []
    if rule.max_age_days is not None:
        out.append((AGE_SQL, (kind, rule.max_age_days * 86400.0, BATCH)))
    if rule.max_count is not None:
        out.append((COUNT_SQL, (kind, rule.max_count, BATCH)))
    return out
