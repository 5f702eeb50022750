"""Embeddings from an Ollama server over HTTP.

``POST /api/embed {"model", "input": [texts]}`` answers
``{"embeddings": [[...], ...]}``. Servers older than Ollama 0.3 answer 404
there; the client then uses ``POST /api/embeddings {"model", "prompt"}`` ->
``{"embedding": [...]}``, one text at a time, and remembers that for the rest
of its life.

Each request has a total timeout. Connection errors and 5xx answers are
retried ``retries`` times with exponential backoff; a timeout is not retried
(the next backfill pass tries again). Whatever goes wrong, down, slow, or a
garbage answer (not JSON, wrong shape or count, non-numeric, NaN or infinite,
empty or all-zero vectors, a dimension that changes), ``embed`` raises
``EmbeddingUnavailable`` with one line saying what. Vectors come back
L2-normalised.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from orchestrator.embeddings._common import clean_vector, text_list
from orchestrator.embeddings.base import EmbeddingUnavailable
from orchestrator.runtime.logs import get_logger

log = get_logger(__name__)

# Output sizes of the usual Ollama embedding models, so that the dimension is
# known before the first answer (the store checks it against the database at
# start-up). Any other model's dimension is learned from its first answer.
KNOWN_DIMENSIONS: dict[str, int] = {
    "nomic-embed-text": 768,
    "mxbai-embed-large": 1024,
    "all-minilm": 384,
    "snowflake-arctic-embed": 1024,
    "bge-m3": 1024,
}

# nomic-embed-text reads 8192 tokens. A word piece is at least one
# non-space character, so 8000 characters always fit.
DEFAULT_MAX_INPUT_CHARS = 8000


class DimensionUnknown(EmbeddingUnavailable):
    """The model's dimension is not known before its first answer (``probe()``)."""


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _error_text(body: bytes) -> str:
    """Ollama's ``{"error": "..."}``, or the start of whatever else it sent."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return _one_line(text) or "(empty body)"
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return _one_line(data["error"])
    return _one_line(text)


def _model_missing(body: bytes) -> bool:
    """A 404 that names a missing model, as opposed to a missing endpoint."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    return isinstance(error, str) and "model" in error.lower() and "not found" in error.lower()


def _known_dimension(model: str) -> int | None:
    base, _, tag = model.partition(":")
    if tag in ("", "latest"):
        return KNOWN_DIMENSIONS.get(base)
    return None


class OllamaEmbeddings:
    """``EmbeddingProvider`` backed by an Ollama server."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:11434",
        model: str = "nomic-embed-text",
        timeout: float = 30.0,
        retries: int = 2,
        dimension: int | None = None,
        *,
        max_input_chars: int = DEFAULT_MAX_INPUT_CHARS,
        batch_size: int = 32,
        backoff: float = 0.5,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"ollama URL must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("ollama embedding model must not be empty")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        if dimension is not None and dimension < 1:
            raise ValueError("dimension must be positive")
        if max_input_chars < 1 or batch_size < 1 or backoff < 0:
            raise ValueError(
                "max_input_chars and batch_size must be positive, backoff not negative"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self._dimension = dimension if dimension is not None else _known_dimension(model)
        self._max_input_chars = max_input_chars
        self._batch_size = batch_size
        self._backoff = backoff
        self._legacy = False  # True once /api/embed answered 404
        self._session: aiohttp.ClientSession | None = None

    # --- EmbeddingProvider ----------------------------------------------------
    @property
    def name(self) -> str:
        return f"ollama:{self.model}"

    @property
    def dimension(self) -> int:
        """Given, known for the usual models (``KNOWN_DIMENSIONS``), or learned
        from the first answer; before that ``DimensionUnknown`` (an
        ``EmbeddingUnavailable``). Note that on Python 3.11
        ``isinstance(p, EmbeddingProvider)`` reads this property, and so raises
        too while the dimension is unknown."""
        if self._dimension is None:
            raise DimensionUnknown(
                f"the dimension of ollama model {self.model!r} is not known until its first "
                "answer: pass dimension= or await probe() first"
            )
        return self._dimension

    @property
    def max_input_chars(self) -> int:
        return self._max_input_chars

    @property
    def legacy_endpoint(self) -> bool:
        """True once the server turned out to have only ``/api/embeddings``."""
        return self._legacy

    async def embed(self, texts: list[str]) -> list[list[float]]:
        texts = text_list(texts, self._max_input_chars, self.name)
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            batch = texts[start : start + self._batch_size]
            if self._legacy:
                raw = await self._embed_legacy(batch)
            else:
                raw = await self._embed_batch(batch)
            vectors.extend(self._accept(raw))
        return vectors

    async def probe(self) -> int:
        """Embed one short text and return the dimension (learning it if unknown)."""
        await self.embed(["dimension probe"])
        return self.dimension

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # --- the two endpoints ------------------------------------------------------
    async def _embed_batch(self, batch: list[str]) -> list[Any]:
        status, body = await self._post("/api/embed", {"model": self.model, "input": batch})
        if status == 404 and not _model_missing(body):
            log.info("ollama has no /api/embed, using /api/embeddings", url=self.base_url)
            self._legacy = True
            return await self._embed_legacy(batch)
        self._check_status(status, body, "/api/embed")
        data = self._parse(body, "/api/embed")
        embeddings = data.get("embeddings") if isinstance(data, dict) else None
        if not isinstance(embeddings, list):
            raise EmbeddingUnavailable(
                f"ollama /api/embed answer has no 'embeddings' list: {_error_text(body)}"
            )
        if len(embeddings) != len(batch):
            raise EmbeddingUnavailable(
                f"ollama /api/embed returned {len(embeddings)} vectors for {len(batch)} texts"
            )
        return embeddings

    async def _embed_legacy(self, batch: list[str]) -> list[Any]:
        embeddings: list[Any] = []
        for text in batch:
            status, body = await self._post(
                "/api/embeddings", {"model": self.model, "prompt": text}
            )
            if status == 404 and not _model_missing(body):
                raise EmbeddingUnavailable(
                    f"ollama at {self.base_url} has neither /api/embed nor /api/embeddings "
                    "(HTTP 404): is it an Ollama server?"
                )
            self._check_status(status, body, "/api/embeddings")
            data = self._parse(body, "/api/embeddings")
            embedding = data.get("embedding") if isinstance(data, dict) else None
            if embedding is None:
                raise EmbeddingUnavailable(
                    f"ollama /api/embeddings answer has no 'embedding': {_error_text(body)}"
                )
            embeddings.append(embedding)
        return embeddings

    # --- HTTP -------------------------------------------------------------------
    async def _post(self, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        """(status, body) of the first answer that is not a 5xx, after retries."""
        url = self.base_url + path
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        attempts = self.retries + 1
        failure = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
            try:
                async with self._session.post(url, json=payload, timeout=timeout) as resp:
                    body = await resp.read()
                    status = resp.status
            except TimeoutError:
                raise EmbeddingUnavailable(
                    f"ollama at {self.base_url} did not answer {path} within {self.timeout:g}s"
                ) from None
            except aiohttp.ClientError as exc:
                failure = f"cannot reach ollama at {self.base_url}: {_one_line(str(exc)) or exc!r}"
                continue
            if status >= 500:
                failure = f"ollama answered HTTP {status} on {path}: {_error_text(body)}"
                continue
            return status, body
        raise EmbeddingUnavailable(f"{failure} (after {attempts} attempts)")

    def _check_status(self, status: int, body: bytes, path: str) -> None:
        if status == 404 and _model_missing(body):
            raise EmbeddingUnavailable(
                f"ollama has no model {self.model!r} (run: ollama pull {self.model})"
            )
        if status != 200:
            raise EmbeddingUnavailable(
                f"ollama answered HTTP {status} on {path}: {_error_text(body)}"
            )

    @staticmethod
    def _parse(body: bytes, path: str) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            start = _one_line(body.decode("utf-8", "replace"), 60)
            raise EmbeddingUnavailable(f"ollama {path} answer is not JSON: {start!r}") from None

    def _accept(self, raw: list[Any]) -> list[list[float]]:
        """Validated, unit-length vectors; learns the dimension from the first answer."""
        vectors = [clean_vector(v, f"ollama vector {i}") for i, v in enumerate(raw)]
        sizes = {len(v) for v in vectors}
        if len(sizes) > 1:
            raise EmbeddingUnavailable(
                f"ollama returned vectors of different sizes in one answer: {sorted(sizes)}"
            )
        if not sizes:
            return vectors
        size = sizes.pop()
        if self._dimension is None:
            self._dimension = size
        elif size != self._dimension:
            raise EmbeddingUnavailable(
                f"ollama returned {size}-dimensional vectors for {self.model}, "
                f"expected {self._dimension}"
            )
        return vectors
