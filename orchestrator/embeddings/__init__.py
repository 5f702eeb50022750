"""Embedding providers for the deliverable memory: one small interface
(``base.EmbeddingProvider``), an Ollama client, a fully offline local model,
and ``none``."""

from orchestrator.embeddings.base import EmbeddingProvider, EmbeddingUnavailable
from orchestrator.embeddings.factory import make_provider
from orchestrator.embeddings.local import LocalEmbeddings, LocalModelMissing
from orchestrator.embeddings.ollama import DimensionUnknown, OllamaEmbeddings

__all__ = [
    "DimensionUnknown",
    "EmbeddingProvider",
    "EmbeddingUnavailable",
    "LocalEmbeddings",
    "LocalModelMissing",
    "OllamaEmbeddings",
    "make_provider",
]
