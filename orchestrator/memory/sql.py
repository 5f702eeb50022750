"""The recall statements, built from the filters (pure: no I/O).

Only the filters asked for appear in a statement, so that Postgres plans
each shape for what it is (an ``x IS NULL OR`` chain would defeat the
B-tree indexes under a generic plan).

Vector search has two shapes. pgvector 0.6 (the version pgserver ships) has
no iterative index scan: HNSW returns at most ``hnsw.ef_search`` rows and
filters apply after it, so a selective filter can starve the result.
``exact`` therefore sorts the filtered rows by distance without the index
(the ``+ 0`` hides the operator from it): exact, and cheap when the filter
keeps few rows. Otherwise the index is used, with ``ef_search`` raised by the
caller in proportion to how much the filter removes (``ef_search``).

Both methods go in one statement (``UNION ALL``), so a hybrid recall is one
round trip; each row says which method found it.
"""

from __future__ import annotations

from orchestrator.memory.model import Filters

FIELDS = (
    "m.id::text AS id, m.agent_id AS agent, m.memory_type AS kind, m.req_number,"
    " m.stage, m.metadata->>'title' AS title, m.content, m.created_at, m.parent_hash,"
    " m.chunk_index, m.chunk_count"
)
# The same columns, read from a subquery that selected FIELDS.
OUTER = (
    "m.id, m.agent, m.kind, m.req_number, m.stage, m.title, m.content, m.created_at,"
    " m.parent_hash, m.chunk_index, m.chunk_count"
)
# The query's words OR-ed: a memory that has some of them still ranks.
ANY_WORD = "nullif(replace(plainto_tsquery('english', {p})::text, ' & ', ' | '), '')::tsquery"


class Params:
    """Numbers the arguments of a statement as they are added."""

    def __init__(self) -> None:
        self.args: list[object] = []

    def __call__(self, value: object, cast: str = "") -> str:
        self.args.append(value)
        return f"${len(self.args)}{cast}"


def where(filters: Filters, p: Params) -> str:
    """`` AND ...`` conditions on ``m`` for the filters asked for."""
    clauses: list[str] = []
    if filters.agents:
        clauses.append(f"m.agent_id = ANY({p(list(filters.agents), '::varchar[]')})")
    if filters.kinds:
        clauses.append(f"m.memory_type = ANY({p(list(filters.kinds), '::text[]')})")
    if filters.req_number:
        clauses.append(f"m.req_number = {p(filters.req_number, '::varchar')}")
    if filters.exclude_req:
        clauses.append(f"m.req_number IS DISTINCT FROM {p(filters.exclude_req, '::varchar')}")
    if filters.max_age_days is not None:
        secs = p(filters.max_age_days * 86400.0, "::float8")
        clauses.append(f"m.created_at > now() - make_interval(secs => {secs})")
    return "".join(f" AND {c}" for c in clauses)


def candidates(
    filters: Filters,
    limit: int,
    *,
    vector: object | None,
    text: str | None,
    exact: bool = False,
    fulltext_cap: int = 500,
) -> tuple[str, list[object]]:
    """One statement for the vector and/or full-text candidates.

    Rows: ``method`` ('v' or 'f'), the FIELDS, and ``score``: cosine
    similarity for 'v' (1 - distance), ts_rank_cd for 'f'. Each method's rows
    come best first.

    Full text ranks only the ``fulltext_cap`` most recent rows that match any
    query word: ts_rank_cd costs about 10 us a row and GIN gives no top-k, so
    ranking every match of a common word over 100,000 memories takes a
    quarter of a second (bench/memory_bench.py).
    """
    if vector is None and text is None:
        raise ValueError("a recall needs a vector, a text or both")
    p = Params()
    n = p(limit, "::int")
    parts = []
    if vector is not None:
        v = p(vector, "::vector")
        cond = where(filters, p)
        order = f"(m.embedding <=> {v}) + 0" if exact else f"m.embedding <=> {v}"
        parts.append(
            f"(SELECT 'v' AS method, {FIELDS}, 1 - (m.embedding <=> {v}) AS score"
            f" FROM memories m WHERE m.embedding IS NOT NULL{cond} ORDER BY {order} LIMIT {n})"
        )
    if text is not None:
        q = ANY_WORD.format(p=p(text, "::text"))
        cond = where(filters, p)
        cap = p(fulltext_cap, "::int")
        parts.append(
            f"(SELECT 'f' AS method, {OUTER}, ts_rank_cd(m.content_tsv, m.q, 1) AS score"
            f" FROM (SELECT {FIELDS}, m.content_tsv, q.q FROM memories m, (SELECT {q} AS q) AS q"
            f" WHERE m.content_tsv @@ q.q{cond} ORDER BY m.created_at DESC LIMIT {cap}) AS m"
            f" ORDER BY score DESC, m.created_at DESC LIMIT {n})"
        )
    return " UNION ALL ".join(parts), p.args


def estimate(filters: Filters) -> tuple[str, list[object]]:
    """EXPLAIN of the filtered, embedded rows: the planner's row estimate."""
    p = Params()
    cond = where(filters, p)
    sql = "EXPLAIN (FORMAT JSON) SELECT 1 FROM memories m WHERE m.embedding IS NOT NULL" + cond
    return sql, p.args


def ef_search(limit: int, total: float, matching: float, floor: int = 40, cap: int = 1000) -> int:
    """How many HNSW candidates to visit so that ``limit`` survive a filter
    keeping ``matching`` of ``total`` rows (with a margin of 2)."""
    share = min(max(matching, 1.0) / max(total, 1.0), 1.0)
    wanted = int(2 * limit / share) + 1
    return max(floor, min(cap, wanted))


QUERY_WORDS = "SELECT numnode(plainto_tsquery('english', $1::text))"
