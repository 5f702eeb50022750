"""The shapes of the deliverable memory (pure: no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.core.memory_kinds import KINDS as KINDS  # re-exported: a memory's kinds

Mode = Literal["hybrid", "vector", "fulltext"]
MODES: tuple[str, ...] = ("hybrid", "vector", "fulltext")
# Written to the database by the memory service (never the engine).
PENDING_CHANNEL = "agogd_memory"


class QueryError(ValueError):
    """A recall query that cannot be answered (empty, only stop-words...)."""


@dataclass(frozen=True)
class Draft:
    """One memory before it is stored: it becomes one row per chunk."""

    kind: str
    agent: str
    text: str
    req_number: str | None = None
    stage: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One row of ``memories``: a whole memory, or one chunk of a long one."""

    kind: str
    agent: str
    req_number: str | None
    stage: int | None
    content: str
    content_hash: str
    parent_hash: str
    chunk_index: int
    chunk_count: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Filters:
    """What a recall may return. Empty tuples and None mean "any"."""

    agents: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    req_number: str | None = None
    exclude_req: str | None = None
    max_age_days: float | None = None

    @property
    def narrowing(self) -> bool:
        """Filters that may keep only a small part of the table (all but exclude_req)."""
        return bool(self.agents or self.kinds or self.req_number or self.max_age_days is not None)


@dataclass(frozen=True)
class Candidate:
    """A row found by one method, with its rank (1 = best) in that method's list."""

    id: str
    rank: int
    score: float  # cosine similarity for vectors, ts_rank_cd for full text
    fields: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    """A fused result: its RRF score and what each method said."""

    id: str
    score: float
    similarity: float | None
    text_rank: float | None
    vector_rank: int | None
    fulltext_rank: int | None
    fields: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "score": round(self.score, 6),
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "text_rank": None if self.text_rank is None else round(self.text_rank, 4),
            "vector_rank": self.vector_rank,
            "fulltext_rank": self.fulltext_rank,
            **self.fields,
        }

    def as_item(self) -> dict[str, Any]:
        """The compact form an assignment carries (and the prompt shows)."""
        f = self.fields
        ranks = (("vector", self.vector_rank), ("fulltext", self.fulltext_rank))
        found = [method for method, rank in ranks if rank]
        return {
            "id": self.id,
            "kind": f.get("kind"),
            "agent": f.get("agent"),
            "req_number": f.get("req_number"),
            "stage": f.get("stage"),
            "title": f.get("title"),
            "created_at": f.get("created_at"),
            "score": round(self.score, 5),
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "found_by": "+".join(found),
            "content": f.get("content"),
            "parent_hash": f.get("parent_hash"),
        }


@dataclass(frozen=True)
class RecallResult:
    mode: Mode
    hits: list[Hit]
    # Why the mode is not hybrid, when it is not (no provider, provider down...).
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "note": self.note,
            "count": len(self.hits),
            "results": [h.as_dict() for h in self.hits],
        }
