"""Embedding providers for the deliverable memory: one small interface
(``base.EmbeddingProvider``), an Ollama client, a fully offline local model,
and ``none``."""
