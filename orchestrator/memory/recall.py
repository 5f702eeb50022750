"""Hybrid recall: pgvector cosine similarity and Postgres full text, fused by RRF.

``recall`` embeds the query (outside any transaction), then fetches both
candidate lists in one statement and fuses them by reciprocal rank. Without
a provider, or when the query cannot be embedded now, it is full text alone;
the result always says which mode it used and why. An empty query, or one
made only of stop-words, is refused with a clear error (``QueryError``).

Vector search with a narrowing filter (agent, kind, REQ, age): the planner's
row estimate decides. Up to ``exact_limit`` rows, an exact scan of the
filtered rows (cheap there, and exact); beyond, HNSW with ``ef_search``
raised so that enough rows survive the filter (pgvector 0.6 has no
iterative index scan).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from orchestrator.embeddings.base import EmbeddingProvider, EmbeddingUnavailable
from orchestrator.memory import chunking, sql, vectors
from orchestrator.memory.fusion import rrf
from orchestrator.memory.model import Candidate, Filters, Hit, Mode, QueryError, RecallResult

QUERY_MAX = 4000  # characters of a query
DEFAULT_EF_SEARCH = 40  # pgvector's own default: no SET needed


@dataclass(frozen=True)
class Tuning:
    """Measured on 100,000 memories (bench/memory_bench.py, docs/benchmarks.md)."""

    candidates: int = 20  # per method, before fusion
    exact_limit: int = 3000  # filtered rows an exact scan may read (about 3 us each)
    ef_search: int = 100  # HNSW candidates without a narrowing filter
    fulltext_cap: int = 500  # most recent full-text matches ranked (about 10 us each)
    # Vector candidates below this cosine similarity are dropped before fusion
    # (0: none are). The right cut depends on the model: docs/benchmarks.md,
    # "The similarity cut".
    min_similarity: float = 0.0


def check_query(query: str) -> str:
    text = query.strip()
    if not text:
        raise QueryError("the query is empty: give some words to search for")
    if len(text) > QUERY_MAX:
        raise QueryError(f"the query has {len(text)} characters; the limit is {QUERY_MAX}")
    return text


async def query_vector(provider: EmbeddingProvider, text: str) -> list[float]:
    """The query's vector (a long query in pieces, averaged); EmbeddingUnavailable."""
    pieces = chunking.pieces_for_provider(text, provider.max_input_chars)
    try:
        got = await provider.embed(pieces)
    except (ValueError, TypeError) as exc:
        raise EmbeddingUnavailable(f"{provider.name} refused the query: {exc}") from None
    vectors.check(got, len(pieces), len(got[0]) if got else 0)
    return list(got[0]) if len(got) == 1 else vectors.mean_unit(got, [len(p) for p in pieces])


async def plan_vector(
    conn: asyncpg.Connection, filters: Filters, candidates: int, tuning: Tuning
) -> tuple[bool, int]:
    """(exact, ef_search) for the vector side under these filters."""
    if not filters.narrowing:
        return False, max(tuning.ef_search, candidates)
    statement, args = sql.estimate(filters)
    plan = json.loads(await conn.fetchval(statement, *args))
    matching = float(plan[0]["Plan"]["Plan Rows"])
    if matching <= tuning.exact_limit:
        return True, 0
    total = await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = 'memories'::regclass")
    return False, sql.ef_search(candidates, float(total or matching), matching)


async def candidates(
    conn: asyncpg.Connection,
    filters: Filters,
    count: int,
    *,
    vector: Sequence[float] | None,
    text: str | None,
    tuning: Tuning,
) -> tuple[list[Candidate], list[Candidate]]:
    """(vector list, full-text list), each best first, in one statement."""
    exact, ef = False, 0
    if vector is not None:
        exact, ef = await plan_vector(conn, filters, count, tuning)
    statement, args = sql.candidates(
        filters, count, vector=vector, text=text, exact=exact, fulltext_cap=tuning.fulltext_cap
    )
    async with conn.transaction():
        if ef and ef != DEFAULT_EF_SEARCH:
            await conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef)}")
        rows = await conn.fetch(statement, *args)
    found: dict[str, list[Candidate]] = {"v": [], "f": []}
    for row in rows:
        method, score = row["method"], float(row["score"])
        if method == "v" and score < tuning.min_similarity:
            continue  # rows come best first: ranks of the kept ones are unchanged
        fields = _fields(row)
        found[method].append(Candidate(fields["id"], len(found[method]) + 1, score, fields))
    return found["v"], found["f"]


def _fields(row: asyncpg.Record) -> dict[str, Any]:
    out = {k: row[k] for k in row.keys() if k not in ("method", "score")}
    if out.get("created_at") is not None:
        out["created_at"] = out["created_at"].isoformat()
    return out


async def recall(
    conn: asyncpg.Connection,
    query: str,
    *,
    provider: EmbeddingProvider | None,
    filters: Filters | None = None,
    limit: int = 10,
    mode: str = "auto",
    tuning: Tuning | None = None,
) -> RecallResult:
    """The ``limit`` best memories for ``query``; ``mode`` is auto, hybrid,
    vector or fulltext (auto: hybrid when the query can be embedded, else
    full text). An explicit hybrid or vector mode that cannot be served
    raises QueryError."""
    filters = filters or Filters()
    tuning = tuning or Tuning()
    if mode not in ("auto", "hybrid", "vector", "fulltext"):
        raise QueryError(f"mode {mode!r}: auto, hybrid, vector or fulltext")
    text = check_query(query)
    if not await conn.fetchval(sql.QUERY_WORDS, text):
        raise QueryError(
            f"the query {text[:80]!r} has no searchable words (empty after removing"
            " stop-words and punctuation): search for the words that matter"
        )
    vector: list[float] | None = None
    note = ""
    if mode != "fulltext":
        if provider is None:
            note = "no embedding provider (AGOG_EMBEDDING_PROVIDER=none): full text only"
        else:
            try:
                vector = await query_vector(provider, text)
            except EmbeddingUnavailable as exc:
                note = f"the query could not be embedded ({exc.reason}): full text only"
        if vector is None and mode in ("hybrid", "vector"):
            raise QueryError(f"{mode} recall is not possible now: {note}")
    count = max(tuning.candidates, limit)
    use_text = text if mode != "vector" else None
    by_vector, by_text = await candidates(
        conn, filters, count, vector=vector, text=use_text, tuning=tuning
    )
    used: Mode = "hybrid" if vector is not None and use_text else "vector" if vector else "fulltext"
    hits: list[Hit] = rrf(by_vector, by_text)[:limit]
    return RecallResult(used, hits, note)
