"""The vector column's dimension, against the embedding provider's.

pgvector's HNSW index needs one fixed dimension, and vectors of two models
are not comparable even when their sizes agree. So ``embedding_config``
records the provider and dimension the stored vectors come from, and at
start:

* same provider and dimension: nothing to do;
* no row embedded yet: the column is re-typed to the provider's dimension
  (the index rebuilt) and the provider recorded;
* embedded rows from another provider or dimension: start-up is refused with
  the command that re-embeds (``agogd memory reembed``). Never mixed silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from orchestrator.runtime.logs import get_logger

log = get_logger("agogd.memory")

LOCK = 0x61676F6D  # "agom": one re-type at a time across replicas
INDEX = "memories_embedding_hnsw"
REEMBED = "agogd memory reembed --yes"


class DimensionMismatch(RuntimeError):
    """Stored embeddings cannot be used with the configured provider."""


@dataclass(frozen=True)
class Stored:
    provider: str
    model: str
    dimension: int
    column: int | None
    embedded: bool

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.model}" if self.model else self.provider


def split_name(name: str) -> tuple[str, str]:
    """``ollama:nomic-embed-text:latest`` -> (``ollama``, ``nomic-embed-text``)."""
    provider, _, model = name.partition(":")
    return provider, model.removesuffix(":latest")


# Answered by the partial index of embedded rows (V1.12.0), not by reading
# every memory: it runs at every start.
EMBEDDED_SQL = "SELECT EXISTS (SELECT 1 FROM memories WHERE embedding IS NOT NULL)"


async def column_dimension(conn: asyncpg.Connection) -> int | None:
    typmod = await conn.fetchval(
        "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'memories'::regclass"
        " AND attname = 'embedding'"
    )
    return int(typmod) if typmod and typmod > 0 else None


async def stored(conn: asyncpg.Connection) -> Stored:
    row = await conn.fetchrow("SELECT provider, model, dimension FROM embedding_config")
    embedded = await conn.fetchval(EMBEDDED_SQL)
    column = await column_dimension(conn)
    if row is None:
        return Stored("", "", column or 0, column, bool(embedded))
    return Stored(row["provider"], row["model"], row["dimension"], column, bool(embedded))


def mismatch_message(have: Stored, name: str, dimension: int, embedded: int) -> str:
    if have.dimension != dimension:
        what = (
            f"the memories table holds {embedded} embeddings of {have.dimension} dimensions"
            f" from {have.name}, but the embedding provider {name} makes {dimension}"
        )
    else:
        what = (
            f"the memories table holds {embedded} embeddings from {have.name}; {name} has the"
            " same dimension but its vectors are not comparable with them"
        )
    return (
        f"{what}. Mixing them would corrupt recall, so agogd will not start. To re-embed"
        f" every memory with {name}, stop agogd and run `{REEMBED}` with the same settings"
        f" (it clears the stored embeddings, marks every memory pending and re-types the"
        f" column to {dimension}); agogd then embeds them again in the background. Or set"
        f" AGOG_EMBEDDING_PROVIDER / AGOG_EMBEDDING_MODEL back to {have.name}."
    )


async def _retype(conn: asyncpg.Connection, dimension: int) -> None:
    await conn.execute(f"DROP INDEX IF EXISTS {INDEX}")
    await conn.execute(
        f"ALTER TABLE memories ALTER COLUMN embedding TYPE vector({int(dimension)})"
        f" USING NULL::vector({int(dimension)})"
    )
    await conn.execute(f"CREATE INDEX {INDEX} ON memories USING hnsw (embedding vector_cosine_ops)")


async def _record(conn: asyncpg.Connection, name: str, dimension: int) -> None:
    provider, model = split_name(name)
    await conn.execute(
        "INSERT INTO embedding_config (singleton, provider, model, dimension) VALUES"
        " (true, $1, $2, $3) ON CONFLICT (singleton) DO UPDATE SET provider = $1, model = $2,"
        " dimension = $3, recorded_at = now()",
        provider,
        model,
        dimension,
    )


async def ensure(conn: asyncpg.Connection, name: str, dimension: int) -> str:
    """Make the column fit the provider, or raise DimensionMismatch.

    Returns what was done: ``same``, ``recorded`` (another provider with no
    row embedded yet, same dimension) or ``retyped``.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK)
        have = await stored(conn)
        provider, model = split_name(name)
        same_name = (have.provider, have.model) == (provider, model)
        if same_name and have.dimension == dimension and have.column == dimension:
            return "same"
        if have.embedded:
            embedded = await conn.fetchval(
                "SELECT count(*) FROM memories WHERE embedding IS NOT NULL"
            )
            raise DimensionMismatch(mismatch_message(have, name, dimension, embedded))
        action = "recorded"
        if have.column != dimension:
            await _retype(conn, dimension)
            action = "retyped"
        await _record(conn, name, dimension)
    log.info(
        "memory.embedding_config",
        action=action,
        provider=name,
        dimension=dimension,
        previous=have.name,
        previous_dimension=have.dimension,
    )
    return action


async def reembed(conn: asyncpg.Connection, name: str, dimension: int) -> int:
    """Forget every stored embedding, re-type the column, record the provider.

    Returns how many memories are now pending. Recall contexts are dropped:
    the memory service computes them again.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK)
        await conn.execute(f"DROP INDEX IF EXISTS {INDEX}")
        await conn.execute(
            "UPDATE memories SET embedding = NULL, embedding_status = 'pending',"
            " embedded_at = NULL, embedding_attempts = 0, embedding_error = NULL,"
            " embedding_claimed_until = NULL"
            " WHERE embedding IS NOT NULL OR embedding_status <> 'pending'"
        )
        await _retype(conn, dimension)
        await _record(conn, name, dimension)
        await conn.execute("DELETE FROM memory_context")
        pending: int = await conn.fetchval(
            "SELECT count(*) FROM memories WHERE embedding_status = 'pending'"
        )
    log.warning("memory.reembed", provider=name, dimension=dimension, pending=pending)
    return pending
