"""Which memories each stage's agent gets (pure: no I/O).

A policy is a list of (kind, agent) pairs; agent ``*`` means any agent and
``self`` the stage's own agent. Past work of the same kind of stage, plus
what went wrong downstream of it: Roy gets past backend deliverables and QA
failures, Sylvia past rejections, Berry past rollbacks. Each stage's policy
is its ``recall`` in pipeline.toml; a stage without one gets the default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Pair = tuple[str, str]

DEFAULT: tuple[Pair, ...] = (
    ("deliverable", "self"),
    ("qa_failure", "*"),
    ("escalation", "self"),
    ("resolution", "*"),
)


def allows(pairs: Iterable[Pair], agent: str, kind: str, author: str) -> bool:
    for want_kind, want_agent in pairs:
        if want_kind != kind:
            continue
        if want_agent == "*" or want_agent == author or (want_agent == "self" and author == agent):
            return True
    return False


def pick(
    candidates: Sequence[Mapping[str, Any]],
    agent: str,
    top_k: int,
    pairs: Sequence[Pair] = DEFAULT,
) -> list[dict[str, Any]]:
    """The best ``top_k`` fused candidates this agent's policy (``pairs``, the
    registry's ``recall``) allows, one chunk per memory (its best).
    ``candidates`` are best first."""
    chosen: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in candidates:
        if len(chosen) >= top_k:
            break
        parent = str(item.get("parent_hash") or item.get("id"))
        if parent in seen or not allows(pairs, agent, str(item["kind"]), str(item["agent"])):
            continue
        seen.add(parent)
        chosen.append({k: v for k, v in item.items() if k != "parent_hash"})
    return chosen


def picks_by_stage(
    candidates: Sequence[Mapping[str, Any]],
    stages: Iterable[tuple[int, str, Sequence[Pair]]],
    top_k: int,
) -> dict[str, list[dict[str, Any]]]:
    """{stage index (as text, a JSON key): picks} for every (index, agent, policy)."""
    return {str(index): pick(candidates, agent, top_k, pairs) for index, agent, pairs in stages}
