"""The deliverable memory on a real PostgreSQL with pgvector and the real local
model (all-MiniLM-L6-v2 in numpy): recall, fallbacks, the backfill after an
outage, dimensions, dedup, filters, retention, chunking, and memories that
reach a later REQ's assignments through a running agogd."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS
from pgvector.asyncpg import register_vector
from structlog.testing import capture_logs

from orchestrator.embedded import NatsServer
from orchestrator.embedded.procs import free_port
from orchestrator.embeddings import LocalEmbeddings, OllamaEmbeddings
from orchestrator.memory import admin, dimension, prune, retention, sql
from orchestrator.memory.embedder import Embedder
from orchestrator.memory.model import Draft, Filters, QueryError
from orchestrator.memory.recall import Tuning, recall
from orchestrator.memory.service import min_similarity_for
from orchestrator.memory.writes import Writer
from orchestrator.runtime import migrate
from orchestrator.runtime.daemon import EXIT_FAILED
from orchestrator.wiring import make_daemon
from tests.agents import (
    ScriptedAgents,
    happy,
    notice,
    running_agogd,
    settings_for,
    until,
    wait_status,
)
from workers.runner.prompt import build_prompt

INVOICE = "The invoice totals are wrong when a discount applies."
PARAPHRASE = "Billing amounts are miscalculated after a price reduction"
OTHERS = [
    "The login form loses what the user typed after a failed password check.",
    "Deploy the frontend container behind the reverse proxy with TLS.",
    "Warehouse stock levels are tracked per SKU with reorder points.",
    "The nightly backup of the orders database finished in 40 minutes.",
    "Sylvia asked for citations of the packaging standard in the research.",
]


@pytest.fixture(scope="module")
async def local() -> AsyncIterator[LocalEmbeddings]:
    provider = LocalEmbeddings()
    await asyncio.to_thread(provider.load)
    yield provider


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(pg_dsn)
    await migrate.apply(conn)
    await conn.close()
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4, init=register_vector)
    assert pool is not None
    yield pool
    await pool.close()


async def _embedder(pool: asyncpg.Pool, provider: Any, **kw: Any) -> Embedder:
    embedder = Embedder(provider, **kw)
    async with pool.acquire() as conn:
        await embedder.check_dimension(conn)
    return embedder


async def _remember(pool: asyncpg.Pool, drafts: list[Draft], chunk: int = 800) -> int:
    async with pool.acquire() as conn, conn.transaction():
        return await Writer(chunk).remember(conn, drafts)


def _drafts(texts: list[str], **kw: Any) -> list[Draft]:
    base: dict[str, Any] = {"kind": "deliverable", "agent": "roy", "req_number": "REQ-M-1"}
    return [Draft(text=t, **{**base, **kw}) for t in texts]


async def _count(pool: asyncpg.Pool, where: str = "true") -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM memories WHERE {where}"))


async def agogctl(url: str, *args: str) -> tuple[int, str, str]:
    """The real agogctl, as a process (the daemon shares this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "agogctl"),
        "--url",
        url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# --- recall -------------------------------------------------------------------------------
async def test_semantic_recall_finds_a_paraphrase_with_no_shared_word(
    pool: asyncpg.Pool, local: LocalEmbeddings
) -> None:
    await _remember(pool, _drafts([INVOICE, *OTHERS]))
    embedder = await _embedder(pool, local)
    assert await embedder.drain(pool) == 6
    async with pool.acquire() as conn:
        # No keyword in common: full text alone finds nothing for this query.
        any_word = sql.ANY_WORD.format(p="$2")
        shared = await conn.fetchval(
            f"SELECT to_tsvector('english', $1) @@ {any_word}", INVOICE, PARAPHRASE
        )
        assert shared is False
        text_only = await recall(conn, PARAPHRASE, provider=local, mode="fulltext")
        result = await recall(conn, PARAPHRASE, provider=local, limit=3)
    assert text_only.mode == "fulltext" and text_only.hits == []
    assert result.mode == "hybrid" and result.note == ""
    top = result.hits[0]
    assert top.fields["content"] == INVOICE
    assert top.fulltext_rank is None and top.vector_rank == 1
    assert top.similarity is not None and top.similarity > 0.5
    assert all(h.similarity is None or h.similarity < top.similarity for h in result.hits[1:])


async def test_vector_matches_below_the_similarity_cut_are_not_recalled(
    pool: asyncpg.Pool, local: LocalEmbeddings
) -> None:
    await _remember(pool, _drafts([INVOICE, *OTHERS]))
    await (await _embedder(pool, local)).drain(pool)
    cut = min_similarity_for(local.name)
    assert cut == 0.2
    async with pool.acquire() as conn:
        uncut = await recall(conn, PARAPHRASE, provider=local, mode="vector")
        kept = await recall(conn, PARAPHRASE, provider=local, tuning=Tuning(min_similarity=cut))
        none = await recall(conn, PARAPHRASE, provider=local, tuning=Tuning(min_similarity=0.99))
    # Without a cut, vector recall lists the unrelated memories too.
    assert sum(1 for h in uncut.hits if (h.similarity or 0) < cut) >= 3
    assert kept.hits[0].fields["content"] == INVOICE
    assert all(h.similarity is not None and h.similarity >= cut for h in kept.hits)
    assert len(kept.hits) <= len(uncut.hits) - 3
    assert none.hits == []


async def test_full_text_when_there_is_no_provider_or_it_is_down(
    pool: asyncpg.Pool, local: LocalEmbeddings
) -> None:
    await _remember(pool, _drafts([INVOICE, *OTHERS]))
    down = OllamaEmbeddings(f"http://127.0.0.1:{free_port()}", "all-minilm", retries=0)
    async with pool.acquire() as conn:
        none = await recall(conn, "discount on the invoice", provider=None)
        failed = await recall(conn, "discount on the invoice", provider=down)
        with pytest.raises(QueryError, match="hybrid recall is not possible now"):
            await recall(conn, "discount on the invoice", provider=None, mode="hybrid")
    await down.close()
    assert none.mode == "fulltext" and "AGOG_EMBEDDING_PROVIDER=none" in none.note
    assert failed.mode == "fulltext" and "could not be embedded" in failed.note
    for result in (none, failed):
        assert result.hits[0].fields["content"] == INVOICE
        assert result.hits[0].similarity is None and result.hits[0].text_rank


async def test_empty_or_stop_word_queries_are_refused(
    pool: asyncpg.Pool, local: LocalEmbeddings
) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(QueryError, match="empty"):
            await recall(conn, "   ", provider=local)
        with pytest.raises(QueryError, match="no searchable words"):
            await recall(conn, "the and of it", provider=local)
        with pytest.raises(QueryError, match="no searchable words"):
            await recall(conn, "?!", provider=None)


async def test_filters(pool: asyncpg.Pool, local: LocalEmbeddings) -> None:
    text = "Stock levels for packaging material are checked {}"
    drafts = [
        Draft("deliverable", "roy", text.format("by the backend"), "REQ-F-1", 2),
        Draft("deliverable", "jen", text.format("in the frontend"), "REQ-F-1", 3),
        Draft("qa_failure", "billy", text.format("and fail in QA"), "REQ-F-2", 4),
        Draft("deliverable", "roy", text.format("nightly, long ago"), "REQ-F-3", 2),
    ]
    await _remember(pool, drafts)
    await (await _embedder(pool, local)).drain(pool)
    await pool.execute(
        "UPDATE memories SET created_at = now() - interval '10 days' WHERE req_number = 'REQ-F-3'"
    )
    query = "packaging stock levels"

    async def reqs_of(filters: Filters, mode: str = "auto") -> list[tuple[str, str, str]]:
        async with pool.acquire() as conn:
            result = await recall(conn, query, provider=local, filters=filters, mode=mode)
        assert result.mode == ("hybrid" if mode == "auto" else mode)
        return sorted(
            (h.fields["agent"], h.fields["kind"], h.fields["req_number"]) for h in result.hits
        )

    assert len(await reqs_of(Filters())) == 4
    assert await reqs_of(Filters(agents=("roy",))) == [
        ("roy", "deliverable", "REQ-F-1"),
        ("roy", "deliverable", "REQ-F-3"),
    ]
    assert await reqs_of(Filters(kinds=("qa_failure",))) == [("billy", "qa_failure", "REQ-F-2")]
    assert [r[2] for r in await reqs_of(Filters(req_number="REQ-F-1"))] == ["REQ-F-1"] * 2
    assert "REQ-F-3" not in {r[2] for r in await reqs_of(Filters(max_age_days=5))}
    assert "REQ-F-1" not in {r[2] for r in await reqs_of(Filters(exclude_req="REQ-F-1"))}
    for mode in ("vector", "fulltext"):
        assert await reqs_of(Filters(agents=("jen",)), mode) == [("jen", "deliverable", "REQ-F-1")]


# --- writes ---------------------------------------------------------------------------------
async def test_dedup_by_content_hash(pool: asyncpg.Pool, local: LocalEmbeddings) -> None:
    long = "The reorder job reads every warehouse. " * 60
    drafts = _drafts([INVOICE, long])
    await _remember(pool, drafts)
    rows = await _count(pool)
    assert rows > 2  # the long one is chunked
    await _remember(pool, drafts)  # a redelivery
    await _remember(pool, _drafts([INVOICE.replace(" ", "  ") + "\n"]))  # whitespace only
    assert await _count(pool) == rows
    await _remember(pool, _drafts([INVOICE], req_number="REQ-M-2"))  # another REQ's
    assert await _count(pool) == rows + 1


async def test_long_text_is_chunked_to_the_provider_and_embedded_whole(
    pool: asyncpg.Pool, local: LocalEmbeddings
) -> None:
    body = " ".join(f"Finding {i}: the pallet label printer drops job {i}." for i in range(120))
    findings = {"summary": "Label printing research", "findings": body}
    draft = Draft("deliverable", "cynthia", json.dumps(findings), "REQ-L-1", 0)
    embedder = await _embedder(pool, local)
    limit = local.max_input_chars
    await _remember(pool, [draft], chunk=limit)
    rows = await pool.fetch(
        "SELECT content, chunk_index, chunk_count FROM memories ORDER BY chunk_index"
    )
    assert len(rows) >= 8 and all(len(r["content"]) <= limit for r in rows)
    assert {r["chunk_count"] for r in rows} == {len(rows)}
    assert "job 119." in rows[-1]["content"]  # the end is there, not cut off
    assert await embedder.drain(pool) == len(rows)
    assert await _count(pool, "embedding_status = 'done' AND embedding IS NOT NULL") == len(rows)


async def test_zero_vectors_are_refused_by_the_table(pool: asyncpg.Pool) -> None:
    await _remember(pool, _drafts([INVOICE]))
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "UPDATE memories SET embedding = $1::vector(768), embedding_status = 'done'",
            [0.0] * 768,
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE memories SET embedding_status = 'done'")


# --- outage and backfill ------------------------------------------------------------------------
class OllamaOnLocal:
    """A real HTTP server speaking Ollama's /api/embed, its vectors from the local model."""

    def __init__(self, local: LocalEmbeddings, port: int) -> None:
        self.local, self.port = local, port
        self.calls = 0
        self._runner: web.AppRunner | None = None

    async def _embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls += 1
        return web.json_response({"embeddings": await self.local.embed(body["input"])})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/embed", self._embed)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_pending_rows_are_backfilled_when_the_provider_comes_back(
    nats_server: NatsServer, nc: NATS, pg_dsn: str, local: LocalEmbeddings
) -> None:
    port = free_port()
    server = OllamaOnLocal(local, port)
    settings = settings_for(
        nats_server.url,
        pg_dsn,
        embedding_provider="ollama",
        embedding_model="all-minilm",
        ollama_url=f"http://127.0.0.1:{port}",
        embedding_retries=0,
        memory_embed_interval=0.2,
        memory_embed_retry_max=0.5,
    )
    agents = await ScriptedAgents(nc, happy).start()
    with capture_logs() as logs:
        async with running_agogd(settings) as daemon:
            assert daemon.runtime is not None
            pool = daemon.runtime.pool
            for i in range(3):
                await nc.jetstream().publish(
                    "agog.requirements.new",
                    json.dumps(
                        {"req_number": f"REQ-OUT-{i}", "title": f"Pallet labels {i}"}
                    ).encode(),
                )
            await wait_status(pg_dsn, "REQ-OUT-2", "DEPLOYED")
            # A requirement, seven stages and Tim, per REQ: all pending.
            await until(
                lambda: pool.fetchval(
                    "SELECT count(*) = 27 FROM memories WHERE embedding_status = 'pending'"
                ),
                what="27 pending memories",
            )
            assert (
                await pool.fetchval("SELECT count(*) FROM memories WHERE embedding IS NOT NULL")
                == 0
            )
            await asyncio.sleep(1.5)  # several failed passes: still one warning
            warnings = [e for e in logs if e["event"] == "memory.embeddings_unavailable"]
            assert len(warnings) == 1, warnings
            assert "cannot reach ollama" in warnings[0]["reason"]
            await server.start()
            try:
                await until(lambda: _none_pending(pool), what="the backfill to embed every row")

                async def restored_logged() -> list[dict[str, Any]]:
                    # Logged once the pass that embedded the rows returns.
                    return [e for e in logs if e["event"] == "memory.embeddings_restored"]

                restored = await until(restored_logged, what="memory.embeddings_restored")
                assert len(restored) == 1 and restored[0]["failed_calls"] >= 2
            finally:
                await server.stop()
            rows = await pool.fetch("SELECT content, embedding FROM memories LIMIT 3")
    await agents.stop()
    # The vectors are the model's own, not a stand-in.
    expected = await local.embed([r["content"] for r in rows])
    for row, want in zip(rows, expected, strict=True):
        assert sum(a * b for a, b in zip(row["embedding"].to_list(), want, strict=True)) > 0.999
    assert server.calls >= 1


async def _none_pending(pool: asyncpg.Pool | None) -> bool:
    assert pool is not None
    return bool(
        await pool.fetchval("SELECT count(*) = 0 FROM memories WHERE embedding_status = 'pending'")
    )


# --- dimensions ------------------------------------------------------------------------
async def test_the_column_follows_the_provider_until_rows_are_embedded(
    pool: asyncpg.Pool, local: LocalEmbeddings, pg_dsn: str, nats_server: NatsServer
) -> None:
    async with pool.acquire() as conn:
        assert await dimension.column_dimension(conn) == 768  # V1.0.0's nomic-embed-text
        assert await dimension.ensure(conn, local.name, 384) == "retyped"
        assert await dimension.column_dimension(conn) == 384
        assert await dimension.ensure(conn, local.name, 384) == "same"
    await _remember(pool, _drafts([INVOICE]))
    await (await _embedder(pool, local)).drain(pool)
    nomic = OllamaEmbeddings(f"http://127.0.0.1:{free_port()}", "nomic-embed-text")
    async with pool.acquire() as conn:
        with pytest.raises(dimension.DimensionMismatch) as refused:
            await dimension.ensure(conn, nomic.name, nomic.dimension)
    message = str(refused.value)
    assert "1 embeddings of 384 dimensions from local:all-MiniLM-L6-v2" in message
    assert "makes 768" in message and "agogd memory reembed --yes" in message
    # Same size, another model: refused too.
    async with pool.acquire() as conn:
        with pytest.raises(dimension.DimensionMismatch, match="not comparable"):
            await dimension.ensure(conn, "ollama:all-minilm", 384)

    # agogd itself refuses to start, with that message, before it is ready.
    settings = settings_for(
        nats_server.url, pg_dsn, embedding_provider="ollama", embedding_model="nomic-embed-text"
    )
    with capture_logs() as logs:
        assert await make_daemon(settings).run(handle_signals=False) == EXIT_FAILED
    failed = [e for e in logs if e["event"] == "agogd.startup_failed"]
    assert failed and "agogd memory reembed" in failed[0]["error"]

    # The re-embed command: every row pending again, the column re-typed.
    done = await admin.reembed(settings, nomic)
    assert (done.pending, done.dimension) == (1, 768)
    assert await _count(pool, "embedding IS NULL AND embedding_status = 'pending'") == 1
    async with pool.acquire() as conn:
        assert await dimension.column_dimension(conn) == 768
        assert await dimension.ensure(conn, nomic.name, 768) == "same"
    await nomic.close()


# --- retention ---------------------------------------------------------------------------------
async def test_retention_by_age_and_by_count(pool: asyncpg.Pool) -> None:
    await _remember(pool, _drafts([f"QA failure number {i}" for i in range(6)], kind="qa_failure"))
    await _remember(pool, _drafts(["an old deliverable", "a new deliverable"]))
    await _remember(pool, _drafts(["a long old decision " * 100], kind="decision"), chunk=300)
    await pool.execute(
        "UPDATE memories SET created_at = now() - interval '40 days'"
        " WHERE content LIKE 'an old%' OR content LIKE 'a long old%' OR content LIKE '%(part%'"
    )
    await pool.execute(
        "UPDATE memories SET created_at = now() - make_interval(mins => 10 - cast("
        "substring(content from 'number (\\d+)') AS int)) WHERE memory_type = 'qa_failure'"
    )
    rules = {
        "*": retention.Rule(max_age_days=30),
        "qa_failure": retention.Rule(max_count=2),
    }
    deleted = await prune.prune(pool, rules)
    assert deleted["qa_failure"] == 4 and deleted["deliverable"] == 1 and deleted["decision"] > 1
    left = sorted(r["content"] for r in await pool.fetch("SELECT content FROM memories"))
    assert left == ["QA failure number 4", "QA failure number 5", "a new deliverable"]
    assert await prune.prune(pool, rules) == {}


# --- through a running agogd -------------------------------------------------------------------
REQ1 = {
    "req_number": "REQ-INV-1",
    "title": "Inventory API for packaging stock",
    "requirements": ["Track stock levels of cartons and pallets per warehouse"],
}
REQ2 = {
    "req_number": "REQ-INV-2",
    "title": "Stock level service for packaging materials",
    "requirements": ["Report carton and pallet quantities for each warehouse"],
}


def _script(a: dict[str, Any]) -> dict[str, Any] | None:
    agent, req = a["agent"], a["req_number"]
    if req == REQ2["req_number"] and agent == "cynthia":
        return None  # the test answers, once REQ-INV-2's own requirement is embedded
    if req == REQ1["req_number"] and a["attempt"] == 1:
        if agent == "sylvia":
            return notice(
                agent,
                req,
                critique_verdict="REJECTED",
                summary="The research ignores pallet mixing rules",
                required_fixes=["cover mixed pallets of several SKUs"],
            )
        if agent == "billy":
            return notice(
                agent,
                req,
                "FAILED",
                tests_passed=False,
                summary="Stock endpoint returns negative quantities",
                qa_failures=["GET /stock returns -3 cartons after a return"],
                rework_agents=["roy"],
            )
    if agent == "roy":
        return notice(
            agent,
            req,
            summary=f"Stock ledger tables and a REST endpoint for {req}",
            key_changes=["stock_movements table", "GET /stock?warehouse="],
        )
    return happy(a)


async def test_a_later_req_gets_the_earlier_reqs_memories(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    settings = settings_for(nats_server.url, pg_dsn, embedding_provider="local")
    agents = await ScriptedAgents(nc, _script).start()
    async with running_agogd(settings) as daemon:
        assert daemon.runtime is not None
        pool = daemon.runtime.pool
        assert pool is not None
        await nc.jetstream().publish("agog.requirements.new", json.dumps(REQ1).encode())
        await wait_status(pg_dsn, "REQ-INV-1", "DEPLOYED")
        await asyncio.sleep(0.5)  # Tim
        await until(lambda: _none_pending(pool), what="REQ-INV-1's memories embedded")
        kinds = {
            r["memory_type"]
            for r in await pool.fetch(
                "SELECT memory_type FROM memories WHERE req_number = 'REQ-INV-1'"
            )
        }
        assert kinds == {"requirement", "deliverable", "rejection", "qa_failure"}
        await nc.jetstream().publish("agog.requirements.new", json.dumps(REQ2).encode())
        # Real agents take minutes per stage; this one waits until the memory
        # service has redone REQ-INV-2's recall with its embedded requirement.
        await until(
            lambda: pool.fetchval(
                "SELECT mode = 'hybrid' FROM memory_context WHERE req_number = 'REQ-INV-2'"
            ),
            what="REQ-INV-2's recall to be hybrid",
        )
        await nc.jetstream().publish(
            "agog.deliverables.cynthia.research.REQ-INV-2",
            json.dumps(notice("cynthia", "REQ-INV-2")).encode(),
        )
        await wait_status(pg_dsn, "REQ-INV-2", "DEPLOYED")

        # The API and agogctl search the same memory.
        url = daemon.http.url
        code, out, err = await agogctl(url, "memory", "search", "negative carton counts", "--json")
        assert code == 0, err
        found = json.loads(out)
        assert found["mode"] == "hybrid" and found["provider"] == "local:all-MiniLM-L6-v2"
        assert found["results"][0]["kind"] == "qa_failure"
        code, out, err = await agogctl(url, "memory", "search", "stock ledger", "--agent", "roy")
        assert code == 0 and out.startswith("mode: hybrid"), err
        assert " deliverable roy REQ-INV-" in out
        code, _, err = await agogctl(url, "memory", "search", "the of and")
        assert code == 1 and "no searchable words" in err
        # The daemon's cut is the local model's; a search may ask for its own.
        code, out, err = await agogctl(url, "memory", "search", "stock ledger", "--json")
        assert code == 0 and json.loads(out)["min_similarity"] == 0.2, err
        code, out, err = await agogctl(
            url, "memory", "search", "rainbow unicorn", "--min-similarity", "0.95", "--json"
        )
        assert code == 0 and json.loads(out)["results"] == [], out
        code, _, err = await agogctl(url, "memory", "search", "stock", "--min-similarity", "2")
        assert code == 2 and "-1<=x<=1" in err.replace(" ", ""), err
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/memory/search?q=stock&min_similarity=nan") as r:
                assert r.status == 400 and "between -1 and 1" in (await r.json())["error"]
    await agents.stop()

    by = {(a["req_number"], a["agent"], a["attempt"]): a for a in agents.assignments}
    roy = by[("REQ-INV-2", "roy", 1)]["memories"]
    assert roy, "Roy's assignment for REQ-INV-2 carries no memories"
    assert all(m["req_number"] == "REQ-INV-1" for m in roy)  # never its own REQ's
    assert {m["kind"] for m in roy} == {"deliverable", "qa_failure"}
    assert all(m["agent"] == "roy" for m in roy if m["kind"] == "deliverable")
    assert "vector" in roy[0]["found_by"]
    sylvia = by[("REQ-INV-2", "sylvia", 1)]["memories"]
    assert any(m["kind"] == "rejection" and "pallet mixing" in m["content"] for m in sylvia), sylvia
    # Cynthia's came at once, before the requirement was embedded: full text.
    cynthia = by[("REQ-INV-2", "cynthia", 1)]["memories"]
    assert cynthia and all(m["found_by"] == "fulltext" for m in cynthia)
    assert all(m["req_number"] == "REQ-INV-1" for m in cynthia)
    # REQ-INV-1 had nothing to recall (the memory was empty), and the runner's
    # prompt renders what an assignment carries.
    assert by[("REQ-INV-1", "roy", 1)]["memories"] == []
    prompt = build_prompt(by[("REQ-INV-2", "roy", 1)], [])
    assert "## Recalled memories" in prompt and "GET /stock returns -3 cartons" in prompt


async def test_recall_read_needs_the_token_only_with_read_auth(
    nats_server: NatsServer, pg_dsn: str
) -> None:
    settings = settings_for(nats_server.url, pg_dsn, embedding_provider="none", api_read_auth=True)
    async with running_agogd(settings) as daemon:
        url = daemon.http.url
        code, _, err = await agogctl(url, "memory", "search", "stock")
        assert code == 5 and "token" in err
        code, out, err = await agogctl(url, "memory", "search", "stock", "--token", "test-token")
        assert code == 0 and out.startswith("mode: fulltext"), err
        assert "AGOG_EMBEDDING_PROVIDER=none" in out
