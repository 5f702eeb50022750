"""Reciprocal rank fusion of the vector and full-text lists (pure: no I/O).

RRF (Cormack et al., 2009): each list contributes 1 / (k + rank) for every
item it holds; items found by both methods rise. It needs no calibration
between cosine similarities and ts_rank values, which are not comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.memory.model import Candidate, Hit

RRF_K = 60


def rrf(vector: Sequence[Candidate], fulltext: Sequence[Candidate], k: int = RRF_K) -> list[Hit]:
    """Fuse two ranked lists; best first (ties: vector rank, then id)."""
    by_id: dict[str, dict[str, object]] = {}
    for method, items in (("vector", vector), ("fulltext", fulltext)):
        for item in items:
            entry = by_id.setdefault(item.id, {"fields": item.fields, "score": 0.0})
            entry["score"] = float(entry["score"]) + 1.0 / (k + item.rank)  # type: ignore[arg-type]
            entry[method] = item
    hits = []
    for item_id, entry in by_id.items():
        v = entry.get("vector")
        f = entry.get("fulltext")
        hits.append(
            Hit(
                id=item_id,
                score=float(entry["score"]),  # type: ignore[arg-type]
                similarity=v.score if isinstance(v, Candidate) else None,
                text_rank=f.score if isinstance(f, Candidate) else None,
                vector_rank=v.rank if isinstance(v, Candidate) else None,
                fulltext_rank=f.rank if isinstance(f, Candidate) else None,
                fields=entry["fields"],  # type: ignore[arg-type]
            )
        )
    hits.sort(key=lambda h: (-h.score, h.vector_rank or 1 << 30, h.id))
    return hits
