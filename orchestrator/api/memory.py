"""``GET /api/memory/search``: hybrid recall over the deliverable memory.

Query parameters: ``q`` (the text, required), ``agent`` and ``kind``
(comma-separated), ``req``, ``max_age_days``, ``limit`` (1 to 100, default
10), ``mode`` (auto, hybrid, vector, fulltext) and ``min_similarity`` (-1 to
1; default ``AGOG_MEMORY_MIN_SIMILARITY`` or the provider's measured cut).
The answer holds the mode actually used, why it is not hybrid when it is not, and the ranked results
with their fused score, cosine similarity and full-text rank. A read: open
unless ``AGOG_API_READ_AUTH`` asks for the token (orchestrator.api.routes).
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from orchestrator.api.common import ApiError, context_of, json_ok, pool_of
from orchestrator.inbound.notices import validate_req_id
from orchestrator.memory.model import KINDS, Filters, QueryError
from orchestrator.memory.recall import recall

LIMIT_MAX = 100
MAX_AGE_DAYS = 36_500  # a century: beyond it, leave the filter out


def _names(raw: str) -> tuple[str, ...]:
    return tuple(v.strip().lower() for v in raw.split(",") if v.strip())


def parse(query: web.MultiDictProxy[str]) -> tuple[str, Filters, int, str, float | None]:
    """(text, filters, limit, mode, min_similarity) from the query string, else
    ApiError(400)."""
    # Postgres text cannot hold NUL: a query with one was a 500, not a 400.
    if any("\x00" in value for value in query.values()):
        raise ApiError(400, "the query string holds a NUL character")
    text = query.get("q", "")
    kinds = _names(query.get("kind", ""))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ApiError(400, f"unknown kind {', '.join(unknown)}; kinds are {', '.join(KINDS)}")
    req = query.get("req") or None
    if req is not None:
        try:
            req = validate_req_id(req)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    age, cut = query.get("max_age_days"), query.get("min_similarity")
    try:
        max_age = float(age) if age else None
        limit = int(query.get("limit", "10"))
        min_similarity = float(cut) if cut else None
    except ValueError:
        raise ApiError(400, "max_age_days, limit and min_similarity are numbers") from None
    # NaN passes neither comparison: it is refused too.
    if min_similarity is not None and not -1.0 <= min_similarity <= 1.0:
        raise ApiError(400, "min_similarity must be a cosine similarity, between -1 and 1")
    # Written so that NaN fails it (nan <= 0 is False: NaN, inf and 1e308 reached
    # Postgres's interval arithmetic, a 500 with a traceback in the log).
    if max_age is not None and not 0 < max_age <= MAX_AGE_DAYS:
        raise ApiError(
            400, f"max_age_days must be a number of days above 0, at most {MAX_AGE_DAYS}"
        )
    if not 1 <= limit <= LIMIT_MAX:
        raise ApiError(400, f"limit must be between 1 and {LIMIT_MAX}")
    filters = Filters(
        agents=_names(query.get("agent", "")), kinds=kinds, req_number=req, max_age_days=max_age
    )
    return text, filters, limit, query.get("mode", "auto"), min_similarity


async def search(request: web.Request) -> web.Response:
    memory = context_of(request).memory
    if memory is None:
        raise ApiError(503, "the deliverable memory runs where the engine runs, not here")
    text, filters, limit, mode, min_similarity = parse(request.query)
    tuning = memory.tuning
    if min_similarity is not None:
        tuning = replace(tuning, min_similarity=min_similarity)
    async with pool_of(request).acquire() as conn:
        try:
            result = await recall(
                conn,
                text,
                provider=memory.provider,
                filters=filters,
                limit=limit,
                mode=mode,
                tuning=tuning,
            )
        except QueryError as exc:
            raise ApiError(400, str(exc)) from None
    body = result.as_dict()
    body["provider"] = memory.provider_name
    body["min_similarity"] = tuning.min_similarity
    for item in body["results"]:
        item.pop("parent_hash", None)
    return json_ok(body)


def install(app: web.Application) -> None:
    app.router.add_get("/api/memory/search", search)
