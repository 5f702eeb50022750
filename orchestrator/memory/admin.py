"""``agogd memory reembed``: start the stored embeddings over with the
configured provider (after a change of model or dimension)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from orchestrator.embeddings.base import EmbeddingProvider, EmbeddingUnavailable
from orchestrator.memory import dimension
from orchestrator.runtime import migrate
from orchestrator.runtime.settings import Settings


@dataclass(frozen=True)
class Reembedded:
    provider: str
    dimension: int
    pending: int


async def provider_dimension(provider: EmbeddingProvider) -> int:
    try:
        return provider.dimension
    except EmbeddingUnavailable:
        probe = getattr(provider, "probe", None)
        if probe is None:
            raise
        return int(await probe())


async def reembed(settings: Settings, provider: EmbeddingProvider) -> Reembedded:
    """Clear every embedding, re-type the column to the provider's dimension and
    record the provider; agogd embeds the pending rows when it next runs."""
    size = await provider_dimension(provider)
    conn = await asyncpg.connect(settings.dsn(), timeout=10)
    try:
        await migrate.apply(conn, settings.migrations_dir)
        pending = await dimension.reembed(conn, provider.name, size)
    finally:
        await conn.close()
    return Reembedded(provider.name, size, pending)
