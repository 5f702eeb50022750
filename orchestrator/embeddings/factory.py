"""The embedding provider the settings ask for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.embeddings.base import EmbeddingProvider

if TYPE_CHECKING:
    from orchestrator.runtime.settings import Settings


def make_provider(settings: Settings) -> EmbeddingProvider | None:
    """``AGOG_EMBEDDING_PROVIDER``: ollama, local, or none (-> ``None``).

    ``local`` raises ``LocalModelMissing`` (with the install command) when the
    model or its libraries are not installed; it is a configuration error, so
    the daemon should refuse to start rather than store everything as pending.
    """
    kind = settings.embedding_provider
    if kind == "none":
        return None
    if kind == "ollama":
        from orchestrator.embeddings.ollama import OllamaEmbeddings

        return OllamaEmbeddings(
            settings.ollama_url,
            settings.embedding_model,
            timeout=settings.embedding_timeout,
            retries=settings.embedding_retries,
        )
    if kind == "local":
        from orchestrator.embeddings.local import LocalEmbeddings

        return LocalEmbeddings()
    raise ValueError(f"unknown embedding provider {kind!r}: ollama, local or none")
