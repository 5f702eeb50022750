"""Checks on the vectors a provider returns, and pooling (pure: no I/O).

The providers already refuse garbage; this is the store's own guard, since
a vector that reaches the table is trusted by every recall after it: the
count, the dimension the column was typed for, finite values, a non-zero
norm. A failure raises ``EmbeddingUnavailable``, so the rows stay pending.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from orchestrator.embeddings.base import EmbeddingUnavailable


def check(vectors: Sequence[Sequence[float]], count: int, dimension: int) -> None:
    if len(vectors) != count:
        raise EmbeddingUnavailable(f"the provider returned {len(vectors)} vectors for {count}")
    for i, vector in enumerate(vectors):
        if len(vector) != dimension:
            raise EmbeddingUnavailable(
                f"vector {i} has {len(vector)} dimensions; the column holds {dimension}"
            )
        if not all(math.isfinite(x) for x in vector):
            raise EmbeddingUnavailable(f"vector {i} has a non-finite value")
        if not any(vector):
            raise EmbeddingUnavailable(f"vector {i} is all zeros")


def mean_unit(vectors: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """The weighted mean of unit vectors, normalised (pieces of one long text)."""
    if not vectors or len(vectors) != len(weights):
        raise ValueError("one weight per vector, at least one vector")
    size = len(vectors[0])
    total = [
        math.fsum(w * v[d] for v, w in zip(vectors, weights, strict=True)) for d in range(size)
    ]
    norm = math.sqrt(math.fsum(x * x for x in total))
    if norm == 0 or not math.isfinite(norm):
        raise EmbeddingUnavailable("the pieces of a text averaged to a zero vector")
    return [x / norm for x in total]


def literal(vector: Sequence[float]) -> str:
    """pgvector's text form, for connections without the binary codec."""
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"
