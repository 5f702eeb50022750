"""The one interface every embedding provider implements.

A provider either returns real vectors or raises ``EmbeddingUnavailable``:
there is no fallback vector, ever (the old daemon stored zero vectors when
Ollama failed, and those rows silently matched nothing).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class EmbeddingUnavailable(RuntimeError):
    """The provider cannot embed right now (down, slow, garbage answer).

    The caller stores the memory with a NULL embedding and a pending mark;
    the backfill embeds it later. ``reason`` is one human line.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@runtime_checkable
class EmbeddingProvider(Protocol):
    """Turns texts into unit-length vectors of a fixed dimension."""

    @property
    def name(self) -> str:
        """Recorded in the database with the dimension, e.g.
        ``ollama:nomic-embed-text`` or ``local:all-MiniLM-L6-v2``."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every vector this provider returns."""
        ...

    @property
    def max_input_chars(self) -> int:
        """Longest text embedded whole; longer texts are chunked by the caller."""
        ...

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order; raises EmbeddingUnavailable."""
        ...

    async def close(self) -> None:
        """Release connections or model memory."""
        ...
