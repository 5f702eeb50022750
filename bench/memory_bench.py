"""Recall latency and quality over 100,000 memories, beside exact scans of the same run.

Run: .venv/bin/python bench/memory_bench.py [--memories 100000] [--queries 200]

It starts a real PostgreSQL 16 with pgvector (orchestrator.embedded; the
version pgserver ships), applies the migrations and types the vector column
for the local model (all-MiniLM-L6-v2, 384 dimensions), then:

1. **Ingest with embeddings**, the real path: ``--ingest`` memories written by
   ``memory.writes`` (ten per transaction, pending), then embedded and stored
   by ``memory.embedder`` with the local model. Also the model alone.
2. **The 100,000 vectors**: ``--base`` texts made from a packaging-ERP
   vocabulary are embedded with the local model; each stored vector is a
   unit-normalised mixture of two of them plus Gaussian noise (so the corpus
   has the model's geometry, without embedding 100,000 texts on two cores).
   Each row gets an agent (one of 9), a kind, a REQ and an age (a year,
   in insertion order). Loaded with COPY; then the HNSW index is built
   (timed).
3. **Queries**: ``--queries`` held-out texts (not among the base texts),
   embedded with the model. For each, top-10:
   * exact, sequential scan (the baseline and the ground truth);
   * recall as agogd runs it (``memory.recall.candidates``): HNSW with
     ``hnsw.ef_search``; with an agent filter, the planner's estimate picks
     an exact scan of the filtered rows (B-tree, up to ``exact_limit`` rows)
     or HNSW with ef_search raised in proportion to the filter;
   * for comparison, the exact scan of the filtered rows, and plain HNSW
     with a post-filter at pgvector's default ef_search (pgvector 0.6 has no
     iterative index scan);
   * hybrid (vector and full text in one statement, fused) end to end.
   recall@10 is the share of the exact top 10 that a method returns.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.embedded import PostgresServer  # noqa: E402
from orchestrator.embeddings import LocalEmbeddings  # noqa: E402
from orchestrator.memory import dimension  # noqa: E402
from orchestrator.memory.embedder import Embedder  # noqa: E402
from orchestrator.memory.model import Draft, Filters  # noqa: E402
from orchestrator.memory.recall import Tuning, candidates, plan_vector, recall  # noqa: E402
from orchestrator.memory.writes import Writer  # noqa: E402
from orchestrator.runtime import migrate  # noqa: E402

AGENTS = ["cynthia", "sylvia", "roy", "jen", "billy", "priya", "berry", "tim", "strategic"]
KINDS = ["deliverable"] * 6 + ["qa_failure", "rejection", "escalation", "decision", "rollback"]
SUBJECTS = [
    "the stock ledger",
    "the invoice service",
    "pallet label printing",
    "the carton catalogue",
    "the warehouse API",
    "the login form",
    "the reorder job",
    "shipping manifests",
    "the quote calculator",
    "the customer portal",
    "the die-cut planner",
    "the print queue",
    "the material price list",
    "corrugated board grades",
    "the order import",
    "the audit log",
    "the user roles screen",
    "the production schedule",
    "the delivery notes",
    "the tax report",
]
VERBS = [
    "fails when",
    "was rebuilt to handle",
    "now supports",
    "is slow for",
    "rejects",
    "rounds wrongly",
    "must validate",
    "times out on",
    "duplicates",
    "loses",
    "needs an index for",
    "exports",
    "caches",
    "retries",
    "logs",
]
OBJECTS = [
    "mixed pallets of several SKUs",
    "discounts on large orders",
    "returns of damaged cartons",
    "customers with several warehouses",
    "negative stock after a correction",
    "orders imported from EDI",
    "prices in two currencies",
    "partial deliveries",
    "reprints of a lost label",
    "concurrent edits of one quote",
    "archived customers",
    "weights in grams and kilograms",
    "a new die shape",
    "rush orders",
    "month-end closing",
    "expired sessions",
    "printers that go offline",
    "VAT exemptions",
    "split shipments",
    "board grades with recycled fibre",
]
TAILS = ["", " in production", " since the last release", " for the Berlin plant", " on mobile"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sentences(rng: random.Random, n: int, exclude: set[str]) -> list[str]:
    out: list[str] = []
    seen = set(exclude)
    while len(out) < n:
        s = (
            f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} "
            f"{rng.choice(OBJECTS)}{rng.choice(TAILS)}."
        )
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


async def ingest(pool: asyncpg.Pool, local: LocalEmbeddings, texts: list[str]) -> dict[str, float]:
    """The real path: rows pending in transactions of ten, then the embedder."""
    writer = Writer(local.max_input_chars)
    started = time.perf_counter()
    for start in range(0, len(texts), 10):
        drafts = [
            Draft("deliverable", "roy", t, f"REQ-INGEST-{start + i}", 2)
            for i, t in enumerate(texts[start : start + 10])
        ]
        async with pool.acquire() as conn, conn.transaction():
            await writer.remember(conn, drafts)
    written = time.perf_counter() - started
    embedder = Embedder(local, batch=32)
    async with pool.acquire() as conn:
        await embedder.check_dimension(conn)
    t0 = time.perf_counter()
    embedded = await embedder.drain(pool)
    done = time.perf_counter()
    assert embedded == len(texts), (embedded, len(texts))
    t1 = time.perf_counter()
    await local.embed(texts[:256])
    model_only = 256 / (time.perf_counter() - t1)
    return {
        "memories": len(texts),
        "per_second": len(texts) / (done - started),
        "write_per_second": len(texts) / written,
        "embed_per_second": len(texts) / (done - t0),
        "model_only_per_second": model_only,
    }


def synthesise(base: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit mixtures of two base vectors plus noise (see the module docstring)."""
    i = rng.integers(0, len(base), n)
    j = rng.integers(0, len(base), n)
    mix = base[i] + rng.uniform(0, 0.6, (n, 1)) * base[j]
    mix += rng.normal(0, 0.35 / np.sqrt(base.shape[1]), mix.shape)
    return (mix / np.linalg.norm(mix, axis=1, keepdims=True)).astype(np.float32)


async def load(
    conn: asyncpg.Connection, vectors: np.ndarray, texts: list[str], rng: random.Random
) -> float:
    now = time.time()
    # Memories arrive over time: a year of them, in insertion order (so the
    # table's physical order follows created_at, as it does in agogd).
    ages = sorted((rng.uniform(0, 365 * 86400) for _ in vectors), reverse=True)
    rows = []
    for k, vector in enumerate(vectors):
        digest = uuid.uuid4().hex
        age = ages[k]
        rows.append(
            (
                uuid.uuid4(),
                rng.choice(AGENTS),
                rng.choice(KINDS),
                f"REQ-B-{rng.randrange(5000):04d}",
                rng.randrange(8),
                f"{texts[k % len(texts)]} (memory {k})",
                digest,
                digest,
                vector,
                "done",
                _ts(now - age),
            )
        )
    started = time.perf_counter()
    await conn.copy_records_to_table(
        "memories",
        records=rows,
        columns=[
            "id",
            "agent_id",
            "memory_type",
            "req_number",
            "stage",
            "content",
            "content_hash",
            "parent_hash",
            "embedding",
            "embedding_status",
            "created_at",
        ],
    )
    return time.perf_counter() - started


def _ts(epoch: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)


async def timed_exact(
    conn: asyncpg.Connection, q: np.ndarray, agent: str | None
) -> tuple[float, list[str]]:
    cond = " AND agent_id = $2" if agent else ""
    args: list[Any] = [q, agent] if agent else [q]
    async with conn.transaction():
        # The baseline: a sequential scan of every row, exact distances.
        await conn.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
        t = time.perf_counter()
        rows = await conn.fetch(
            "SELECT id::text FROM memories WHERE embedding IS NOT NULL"
            f"{cond} ORDER BY embedding <=> $1 LIMIT 10",
            *args,
        )
        return time.perf_counter() - t, [r["id"] for r in rows]


async def timed_agogd(
    conn: asyncpg.Connection, q: np.ndarray, agent: str | None, tuning: Tuning
) -> tuple[float, list[str]]:
    filters = Filters(agents=(agent,)) if agent else Filters()
    t = time.perf_counter()
    by_vector, _ = await candidates(conn, filters, 10, vector=q, text=None, tuning=tuning)
    return time.perf_counter() - t, [c.id for c in by_vector]


async def timed_post_filter(
    conn: asyncpg.Connection, q: np.ndarray, agent: str, ef: int
) -> tuple[float, list[str]]:
    async with conn.transaction():
        # What HNSW does with a filter in pgvector 0.6: at most ef_search rows
        # come out of the index, then the filter applies (written out, since the
        # planner would rather scan the filter itself).
        await conn.execute(f"SET LOCAL hnsw.ef_search = {ef}")
        t = time.perf_counter()
        rows = await conn.fetch(
            "SELECT id::text FROM (SELECT id, agent_id, embedding <=> $1 AS d FROM memories"
            " WHERE embedding IS NOT NULL ORDER BY embedding <=> $1 LIMIT $3) AS hnsw"
            " WHERE agent_id = $2 ORDER BY d LIMIT 10",
            q,
            agent,
            ef,
        )
        return time.perf_counter() - t, [r["id"] for r in rows]


def summary(times: list[float], found: list[list[str]], truth: list[list[str]]) -> dict[str, float]:
    hits = [len(set(f) & set(t)) / max(len(t), 1) for f, t in zip(found, truth, strict=True)]
    return {
        "p50": pct(times, 0.5) * 1000,
        "p99": pct(times, 0.99) * 1000,
        "mean": statistics.fmean(times) * 1000,
        "recall": statistics.fmean(hits),
    }


def line(name: str, s: dict[str, float], base: dict[str, float] | None = None) -> str:
    out = (
        f"  {name:<52} p50 {s['p50']:7.2f} ms  p99 {s['p99']:7.2f} ms  recall@10 {s['recall']:.3f}"
    )
    if base is not None:
        out += f"  ({s['p50'] / base['p50']:.3f} x / {s['p99'] / base['p99']:.3f} x the exact scan)"
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memories", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--base", type=int, default=2000, help="texts embedded for the corpus")
    parser.add_argument("--ingest", type=int, default=1000, help="memories for the ingest rate")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    nrng = np.random.default_rng(args.seed)
    local = LocalEmbeddings()
    await asyncio.to_thread(local.load)

    with tempfile.TemporaryDirectory(prefix="agogd-membench-") as tmp:
        pg = PostgresServer(Path(tmp) / "pg", durable=True).start()
        try:
            conn = await asyncpg.connect(pg.dsn())
            await migrate.apply(conn)
            await dimension.ensure(conn, local.name, local.dimension)
            version = await conn.fetchval(
                "SELECT extversion FROM pg_extension WHERE extname='vector'"
            )
            server = await conn.fetchval("SHOW server_version")
            buffers = await conn.fetchval("SHOW shared_buffers")
            await conn.close()
            pool = await asyncpg.create_pool(pg.dsn(), min_size=1, max_size=4, init=register_vector)
            assert pool is not None

            base_texts = sentences(rng, args.base, set())
            query_texts = sentences(rng, args.queries, set(base_texts))
            ingest_texts = sentences(rng, args.ingest, set(base_texts) | set(query_texts))
            print(f"postgres {server}, pgvector {version}, shared_buffers {buffers}")
            ing = await ingest(pool, local, ingest_texts)
            print(
                f"ingest with embeddings (writes, then the embedder, local model): "
                f"{ing['per_second']:.0f} memories/s over {ing['memories']} "
                f"(writes alone {ing['write_per_second']:.0f}/s, embed+store "
                f"{ing['embed_per_second']:.0f}/s, the model alone"
                f" {ing['model_only_per_second']:.0f}/s)"
            )
            await pool.execute("TRUNCATE memories")

            t = time.perf_counter()
            base = np.array(await local.embed(base_texts), dtype=np.float32)
            queries = np.array(await local.embed(query_texts), dtype=np.float32)
            print(
                f"embedded {len(base_texts)} base and {len(query_texts)} query texts in "
                f"{time.perf_counter() - t:.1f} s"
            )
            vectors = synthesise(base, args.memories, nrng)
            async with pool.acquire() as conn:
                await conn.execute("DROP INDEX IF EXISTS memories_embedding_hnsw")
                copy_s = await load(conn, vectors, base_texts, rng)
                await conn.execute("SET maintenance_work_mem = '1GB'")
                t = time.perf_counter()
                await conn.execute(
                    "CREATE INDEX memories_embedding_hnsw ON memories"
                    " USING hnsw (embedding vector_cosine_ops)"
                )
                build_s = time.perf_counter() - t
                await conn.execute("RESET maintenance_work_mem")
                await conn.execute("VACUUM ANALYZE memories")
                size = await conn.fetchval(
                    "SELECT pg_size_pretty(pg_total_relation_size('memories'))"
                )
            print(
                f"loaded {args.memories} memories (COPY) in {copy_s:.1f} s"
                f" ({args.memories / copy_s:.0f}/s); HNSW built in {build_s:.1f} s; table {size}"
            )

            agent_of = [rng.choice(AGENTS[:7]) for _ in range(len(queries))]
            async with pool.acquire() as conn:
                for q in queries[:20]:  # warm the caches
                    await timed_exact(conn, q, None)
                    await timed_agogd(conn, q, None, Tuning())
                exact: list[tuple[float, list[str]]] = []
                exact_f: list[tuple[float, list[str]]] = []
                for q, agent in zip(queries, agent_of, strict=True):
                    exact.append(await timed_exact(conn, q, None))
                    exact_f.append(await timed_exact(conn, q, agent))
                truth = [ids for _, ids in exact]
                truth_f = [ids for _, ids in exact_f]
                base_s = summary([t for t, _ in exact], truth, truth)
                base_f = summary([t for t, _ in exact_f], truth_f, truth_f)

                print(f"\ntop-10 over {args.memories} memories, {len(queries)} queries:")
                print(line("exact, sequential scan (baseline)", base_s))
                for ef in (40, 64, 100, 200):
                    tuning = Tuning(candidates=10, ef_search=ef)
                    runs = [await timed_agogd(conn, q, None, tuning) for q in queries]
                    s = summary([t for t, _ in runs], [i for _, i in runs], truth)
                    print(line(f"agogd recall, HNSW ef_search={ef}", s, base_s))

                print(
                    f"\nwith an agent filter (1 of {len(AGENTS)} agents,"
                    f" ~{100 / len(AGENTS):.0f}% of the rows):"
                )
                print(line("exact, sequential scan (baseline)", base_f))
                tuning = Tuning(candidates=10)
                exact_plan, ef = await plan_vector(conn, Filters(agents=("roy",)), 10, tuning)
                how = "exact scan of the filter" if exact_plan else f"HNSW, ef_search {ef}"
                runs = [
                    await timed_agogd(conn, q, a, tuning)
                    for q, a in zip(queries, agent_of, strict=True)
                ]
                s = summary([t for t, _ in runs], [i for _, i in runs], truth_f)
                print(line(f"agogd recall (estimate -> {how})", s, base_f))
                forced = Tuning(candidates=10, exact_limit=10**9)
                runs = [
                    await timed_agogd(conn, q, a, forced)
                    for q, a in zip(queries, agent_of, strict=True)
                ]
                s = summary([t for t, _ in runs], [i for _, i in runs], truth_f)
                print(line("exact scan of the filtered rows (B-tree)", s, base_f))
                runs = [
                    await timed_post_filter(conn, q, a, 40)
                    for q, a in zip(queries, agent_of, strict=True)
                ]
                s = summary([t for t, _ in runs], [i for _, i in runs], truth_f)
                print(line("plain HNSW + post-filter, default ef_search 40", s, base_f))

                hybrid_t: list[float] = []
                for text in query_texts[:100]:
                    t = time.perf_counter()
                    await recall(conn, text, provider=local, limit=10)
                    hybrid_t.append(time.perf_counter() - t)
                fts_t: list[float] = []
                for text in query_texts[:100]:
                    t = time.perf_counter()
                    await recall(conn, text, provider=None, limit=10)
                    fts_t.append(time.perf_counter() - t)
            print(
                f"\nend to end, 100 queries: hybrid recall (embed the query with the local model,"
                f" vector + full text, fused) p50 {pct(hybrid_t, 0.5) * 1000:.1f} ms,"
                f" p99 {pct(hybrid_t, 0.99) * 1000:.1f} ms; full text alone"
                f" p50 {pct(fts_t, 0.5) * 1000:.1f} ms, p99 {pct(fts_t, 0.99) * 1000:.1f} ms"
            )
            await pool.close()
        finally:
            pg.stop()
            await local.close()


if __name__ == "__main__":
    asyncio.run(main())
