"""The deliverable memory inside agogd: provider, writer, recaller and services.

``build(runtime)`` (where the engine runs) builds the provider from the
settings; ``Memory.check`` and ``Memory.services`` are what the daemon runs:

* a start-up check, before /readyz turns 200: the vector column's dimension
  against the provider's (``dimension``), or a clear refusal;
* ``memory-listen``: LISTEN ``agogd_memory``, waking the two services below
  when a transaction wrote memories;
* ``memory-embedder`` (unless the provider is ``none``): embeds pending rows,
  and backfills after an outage (``embedder``);
* ``memory-context``: per-REQ recall for assignments (``context``);
* ``memory-retention``: pruning by age and count per kind (``prune``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import asyncpg

from orchestrator.core.registry import Pipeline
from orchestrator.embeddings.base import EmbeddingProvider, EmbeddingUnavailable
from orchestrator.memory import context, dimension, policy, prune
from orchestrator.memory.embedder import Embedder
from orchestrator.memory.hooks import Bound
from orchestrator.memory.model import PENDING_CHANNEL
from orchestrator.memory.recall import Tuning
from orchestrator.memory.writes import Writer
from orchestrator.runtime import db
from orchestrator.runtime.daemon import StartupError
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.services import Service, periodic, sleep_unless_stopped

if TYPE_CHECKING:
    from orchestrator.runtime.context import Runtime
    from orchestrator.runtime.settings import Settings

log = get_logger("agogd.memory")


def make_provider(settings: Settings) -> EmbeddingProvider | None:
    from orchestrator.embeddings import make_provider as factory

    return factory(settings)


# The cosine similarity below which a model's vector matches are noise, as
# measured (docs/benchmarks.md, "The similarity cut"). A model not
# listed gets no cut: its scale is unknown (nomic-embed-text's unrelated
# texts score far higher than MiniLM's).
MIN_SIMILARITY = {"local:all-MiniLM-L6-v2": 0.2}


def min_similarity_for(provider_name: str) -> float:
    return MIN_SIMILARITY.get(provider_name, 0.0)


class Memory:
    """The memory of one agogd: what the engine, the API and the services share."""

    def __init__(
        self, settings: Settings, stages: tuple[tuple[int, str, tuple[policy.Pair, ...]], ...]
    ) -> None:
        self.settings = settings
        self.problem: str | None = None
        try:
            self.provider = make_provider(settings)
        except Exception as exc:  # e.g. the local model is not installed
            self.provider, self.problem = None, str(exc)
        limit = settings.memory_chunk_chars
        if self.provider is not None:
            limit = min(limit, self.provider.max_input_chars)
        self.writer = Writer(limit, settings.memory_max_chunks)
        cut = settings.memory_min_similarity
        if cut is None:
            cut = min_similarity_for(self.provider.name if self.provider else "")
        self.tuning = Tuning(
            candidates=settings.memory_recall_candidates,
            exact_limit=settings.memory_exact_limit,
            ef_search=settings.memory_ef_search,
            fulltext_cap=settings.memory_fulltext_cap,
            min_similarity=cut,
        )
        # Recall for assignments runs in the background: more candidates, so
        # that every stage's policy finds its kinds among them.
        wide = replace(self.tuning, candidates=max(60, self.tuning.candidates))
        self.recaller = context.Recaller(
            stages,
            settings.memory_top_k,
            wide,
            replace(context.DISPATCH_TUNING, min_similarity=cut),
        )
        self.context_wake = asyncio.Event()
        self.embedder = (
            Embedder(
                self.provider,
                batch=settings.memory_embed_batch,
                interval=settings.memory_embed_interval,
                retry_max=settings.memory_embed_retry_max,
                on_embedded=lambda _reqs: self.context_wake.set(),
            )
            if self.provider is not None
            else None
        )

    async def check(self, pool: asyncpg.Pool) -> None:
        """Refuse to start on a missing model or a dimension mismatch."""

        if self.problem is not None:
            raise StartupError(f"embedding provider: {self.problem}")
        if self.embedder is None:
            log.info(
                "memory.embeddings_off",
                note="AGOG_EMBEDDING_PROVIDER=none: memories are stored pending and recall"
                " is full text only",
            )
            return
        try:
            async with pool.acquire() as conn:
                await self.embedder.check_dimension(conn)
        except dimension.DimensionMismatch as exc:
            raise StartupError(str(exc)) from exc
        except EmbeddingUnavailable as exc:
            # e.g. an Ollama model whose size is unknown until it answers: the
            # embedder checks before it writes its first vector.
            log.info("memory.dimension_deferred", provider=self.provider_name, reason=exc.reason)

    def bind(self, title: str = "", recalled: tuple[int, Any] | None = None) -> Bound:
        """The memory for one transition of one REQ (see ``hooks``)."""
        return Bound(self.writer, self.recaller, title, recalled)

    @property
    def provider_name(self) -> str:
        return self.provider.name if self.provider is not None else "none"

    # The engine wakes this process's services itself after its commits (no
    # NOTIFY on the hot path); other writers (the API, OWNER_REQUESTS.md) NOTIFY.
    local_channels = frozenset({PENDING_CHANNEL})

    def wake(self) -> None:
        """New memories were committed: embed them and refresh contexts now."""
        self.context_wake.set()
        if self.embedder is not None:
            self.embedder.wake.set()

    async def listen(self, dsn: str, stopping: asyncio.Event) -> None:
        """Wake the embedder and the context service on NOTIFY agogd_memory."""

        def wake(*_: object) -> None:
            self.wake()

        while not stopping.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(dsn, timeout=5)
                await conn.add_listener(PENDING_CHANNEL, wake)
                wake()  # rows may have come while nobody listened
                while not conn.is_closed() and not stopping.is_set():
                    await sleep_unless_stopped(stopping, 1)
            except (TimeoutError, *db.DB_ERRORS) as exc:
                log.debug("memory.listen_failed", error=str(exc))
                await sleep_unless_stopped(stopping, 2)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close()

    def services(self, rt: Runtime) -> dict[str, Service]:
        """The memory's services: LISTEN, the embedder, contexts, retention."""
        settings = rt.settings
        found: dict[str, Service] = {
            "memory-listen": lambda: self.listen(settings.dsn(), rt.stopping),
            "memory-context": lambda: context.refresh_loop(
                rt.pool,
                self.recaller,
                self.context_wake,
                stopping=rt.stopping,
                states=rt.states,
                ttl=settings.memory_context_ttl,
                interval=settings.memory_context_interval,
            ),
            "memory-retention": lambda: periodic(
                lambda: prune.prune(rt.pool, settings.memory_retention),
                name="memory.retention",
                interval=settings.memory_retention_interval,
                first_delay=min(prune.FIRST_PASS, settings.memory_retention_interval),
                stopping=rt.stopping,
                states=rt.states,
            ),
        }
        if self.embedder is not None:
            embedder = self.embedder
            found["memory-embedder"] = lambda: embedder.run(rt.pool, rt.stopping, rt.states)
        return found


def build(settings: Settings, pipeline: Pipeline) -> Memory:
    """The memory of an agogd that runs the engine (each stage's recall policy
    from the registry)."""
    stages = tuple(
        (s.index, s.agent, s.recall or policy.DEFAULT)
        for s in (*pipeline.stages, *pipeline.followups)
    )
    return Memory(settings, stages)
