"""Stage advance as the history grows: a long record in Postgres must not slow
agogd down, nor must many REQs in flight (issue 19).

Run: .venv/bin/python bench/growth_bench.py           # --history 0,100000,1000000
     .venv/bin/python bench/growth_bench.py --quick   # smoke test, about a minute

One nats-server and one durable PostgreSQL (orchestrator.embedded) serve the
whole run; agogd runs as a separate process, started afresh for each
measurement on the database measured, with agents in this process answering
at once (bench/workflow_bench.run_engine). A transition's latency is the time
from an agent publishing its notice to it receiving the next assignment.

1. In flight, on an empty database: 1, 10, 100, 1,000 REQs kept in flight;
   transitions/s (middle 80% of the run) and stage-advance p50/p99.
2. History: finished REQs loaded into one database, progressively (100k,
   then 900k more), each level measured in ``--rounds`` rounds alternating
   with a fresh empty database of the same run (empty, loaded, empty,
   loaded...), so that the noise shows: the lone stage advance (1 REQ in
   flight) p50/p99, and transitions/s with 100 in flight. A level's figure is
   the median of its rounds, compared with the median of the empty rounds
   beside it, because absolute times are noisy on shared machines (target:
   lone p50 within 1.2x of the empty database at 1M REQs).

The history is modelled on a real REQ rather than written by hand, so that it
follows the schema and agogd's rows as they change: at the start agogd takes
one REQ through the pipeline on a template database, and every row that REQ
left is copied N times (COPY, into the real schema with all its indexes and
triggers) with a new REQ id, its timestamps moved into the past (newest first,
``--reqs-per-day`` apart; times inside JSON payloads are left as they are)
and fresh unique keys. outbox and processed_messages are pruned past their
streams' retention (orchestrator/engine/pruning.py), so only the copies still
inside that window are loaded (91 days' worth with the shipped registry);
every other table is the record, kept whole. The history's memories are
loaded without embeddings (see --pending-memories). Disk: the record is about
35 KiB per REQ with the bench's small notices, so 1M REQs take some 35 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.workflow_bench import (  # noqa: E402
    floor_pg_commit,
    floor_publish_ack,
    floor_pull_ack,
    run_engine,
)
from orchestrator.core import registry  # noqa: E402
from orchestrator.embedded import NatsServer, PostgresServer  # noqa: E402
from orchestrator.embedded.daemon_proc import DaemonProcess  # noqa: E402
from orchestrator.engine.pruning import MARGIN  # noqa: E402
from orchestrator.runtime import logs, migrate  # noqa: E402

PIPELINE = registry.load()
TEMPLATE_REQ = "REQ-TPL-00000"  # run_engine(prefix="TPL") names its first REQ so
HISTORY_REQ = "REQ-HIST-{:07d}"  # valid REQ ids (orchestrator/inbound/notices.py)
# History rows' stream sequences sit far above anything the live streams of
# this run reach: agogd looks processed messages up by (stream, seq), and a
# history row with a live message's seq would make agogd skip that message.
SEQ_BASE = 10**12
# Tables that pruning (orchestrator/engine/pruning.py) empties past their
# streams' max_age: a long history keeps only a retention window of them, so
# only the rows still inside the window are loaded. Every other table is the
# record, kept for ever: all of it is loaded.
PRUNED = {"outbox": "published_at", "processed_messages": "processed_at"}
# Unique keys that do not contain the REQ id: made afresh per copy (the same
# digest length, any "xxx:" prefix kept).
HASHED = {("memories", "content_hash"), ("memories", "parent_hash"), ("outbox", "msg_id")}
BUSY = 100  # REQs in flight for the history levels' throughput run
STARTED = time.perf_counter()
DB_SIZE = "SELECT pg_database_size(current_database())"


def say(message: str) -> None:
    """Progress, stamped with the run's elapsed time (loads take minutes)."""
    print(f"[{time.perf_counter() - STARTED:7.1f} s] {message}", flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def size(n: float) -> str:
    """Bytes, in the largest binary unit below 1024 of it."""
    units = ["B", "KiB", "MiB", "GiB"]
    while n >= 1024 and len(units) > 1:
        n /= 1024
        units.pop(0)
    return f"{n:.0f} B" if units[0] == "B" else f"{n:.1f} {units[0]}"


# --- the template REQ ------------------------------------------------------------------
@dataclass
class RowRecipe:
    """One row of the template REQ, and which of its fields each copy rewrites."""

    values: list[Any]
    req_fields: list[tuple[int, list[str]]]  # text split around the template REQ id
    time_fields: list[tuple[int, datetime]]
    hash_fields: list[tuple[int, str, int]]  # field, kept prefix, digest length
    seq_fields: list[tuple[int, int]]  # field, rank of the message on its stream
    kept_for: float | None = None  # pruned once older than this (s); None: kept
    at: datetime | None = None  # the time pruning compares with kept_for


@dataclass
class TableRecipe:
    name: str
    columns: list[str]
    rows: list[RowRecipe] = field(default_factory=list)


@dataclass
class Template:
    tables: list[TableRecipe]  # parents before children (foreign keys)
    ref: datetime  # the template REQ's last update: copy i's is this, moved back
    seq_stride: int  # template messages per stream, at most
    skipped: dict[str, int]  # rows that belong to no REQ, not copied


def retention() -> tuple[float | None, dict[str, float | None]]:
    """How long pruning keeps published outbox rows, and processed_messages
    rows per stream (seconds; None: for ever), as pruning.py computes them."""
    ages = [s.max_age for s in PIPELINE.streams]
    outbox = None if not ages or any(a <= 0 for a in ages) else max(ages) + MARGIN
    streams = {s.name: (s.max_age + MARGIN if s.max_age > 0 else None) for s in PIPELINE.streams}
    return outbox, streams


async def migrate_db(dsn: str) -> set[str]:
    """Apply agogd's migrations; return the tables that hold rows straight
    after (seed rows such as embedding_config: not part of any REQ)."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.apply(conn)
        seeded = set()
        for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ):
            if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{r["tablename"]}")'):
                seeded.add(r["tablename"])
        return seeded
    finally:
        await conn.close()


def _foreign_key_order(tables: list[str], edges: list[tuple[str, str]]) -> list[str]:
    """Tables with every referenced table before them."""
    ordered: list[str] = []
    left = sorted(tables)
    while left:
        ready = [
            t
            for t in left
            if all(p in ordered or p == t or p not in left for c, p in edges if c == t)
        ]
        if not ready:
            raise RuntimeError(f"foreign-key cycle among {left}")
        ordered += ready
        left = [t for t in left if t not in ready]
    return ordered


async def read_template(dsn: str, seeded: set[str], pending_memories: bool) -> Template:
    """Every row the template REQ left, as recipes for copies."""
    outbox_age, stream_age = retention()
    conn = await asyncpg.connect(dsn)
    try:
        meta = await conn.fetch(
            "SELECT table_name, column_name, column_default, is_generated, is_identity"
            " FROM information_schema.columns WHERE table_schema = 'public'"
            " ORDER BY table_name, ordinal_position"
        )
        edges = [
            (r["child"], r["parent"])
            for r in await conn.fetch(
                "SELECT conrelid::regclass::text AS child, confrelid::regclass::text AS parent"
                " FROM pg_constraint WHERE contype = 'f'"
            )
        ]
        ref = await conn.fetchval(
            "SELECT updated_at FROM workflow_state WHERE req_number = $1", TEMPLATE_REQ
        )
        data: dict[str, list[dict[str, Any]]] = {}
        skipped: dict[str, int] = {}
        for table in sorted({r["table_name"] for r in meta} - seeded):
            rows = [dict(r) for r in await conn.fetch(f'SELECT * FROM "{table}"')]
            mine = [
                r
                for r in rows
                if table in PRUNED
                or any(isinstance(v, str) and TEMPLATE_REQ in v for v in r.values())
            ]
            if len(mine) < len(rows):
                skipped[table] = len(rows) - len(mine)
            if mine:
                data[table] = mine
    finally:
        await conn.close()
    if ref is None or "workflow_state" not in data:
        raise RuntimeError(f"the template REQ {TEMPLATE_REQ} left no workflow_state row")
    if not pending_memories:
        # Real memories get embedded (a 768-d vector each, plus HNSW entries):
        # too much disk and load time for 8M rows here. The history's are left
        # unembedded but not 'pending', which would make the embedder retry
        # (and count) millions of rows in a steady state that has none.
        for row in data.get("memories", []):
            row.update(
                embedding_status="none",
                embedding_attempts=0,
                embedding_error=None,
                embedding_claimed_until=None,
            )
    # Message ranks per stream, shared by processed_messages and deliverable_history.
    seqs: dict[str, set[int]] = {}
    for rows in data.values():
        for r in rows:
            if r.get("stream") is not None and r.get("stream_seq") is not None:
                seqs.setdefault(r["stream"], set()).add(r["stream_seq"])
    rank = {(s, q): i for s, qs in seqs.items() for i, q in enumerate(sorted(qs))}
    recipes = []
    for table in _foreign_key_order(list(data), edges):
        rows = data[table]
        columns = []
        for m in (m for m in meta if m["table_name"] == table):
            default = m["column_default"] or ""
            if (
                m["is_generated"] == "ALWAYS"
                or m["is_identity"] == "YES"
                or "nextval(" in default
                or "gen_random_uuid(" in default
            ):
                continue  # the database makes them (ids, generated tsvector)
            if not default and all(r[m["column_name"]] is None for r in rows):
                continue  # NULL either way (e.g. the embedding: no codec needed)
            columns.append(m["column_name"])
        recipe = TableRecipe(table, columns)
        for r in rows:
            row = RowRecipe([r[c] for c in columns], [], [], [], [])
            for k, c in enumerate(columns):
                v = r[c]
                if c == "stream_seq" and (r.get("stream"), v) in rank:
                    row.seq_fields.append((k, rank[(r["stream"], v)]))
                elif isinstance(v, str) and TEMPLATE_REQ in v:
                    row.req_fields.append((k, v.split(TEMPLATE_REQ)))
                elif (table, c) in HASHED and isinstance(v, str):
                    prefix = v.rsplit(":", 1)[0] + ":" if ":" in v else ""
                    row.hash_fields.append((k, prefix, min(64, len(v) - len(prefix))))
                elif isinstance(v, datetime) and v.year not in (1, 9999):  # not +-infinity
                    row.time_fields.append((k, v))
            if table == "outbox":
                row.kept_for, row.at = outbox_age, r["published_at"]
            elif table == "processed_messages":
                row.kept_for, row.at = stream_age.get(r["stream"]), r["processed_at"]
            recipe.rows.append(row)
        recipes.append(recipe)
    stride = max((len(qs) for qs in seqs.values()), default=1)
    return Template(recipes, ref, stride, skipped)


def copies(
    t: Template, table: TableRecipe, first: int, last: int, now: datetime, spacing: float
) -> Iterator[tuple[Any, ...]]:
    """Rows of REQs ``first`` to ``last - 1``: REQ i finished (i + 1) x
    ``spacing`` seconds before ``now``; rows pruning would have removed by
    then are left out."""
    for i in range(first, last):
        req = HISTORY_REQ.format(i)
        delta = now - timedelta(seconds=(i + 1) * spacing) - t.ref
        for row in table.rows:
            if row.kept_for is not None and row.at is not None:
                if row.at + delta < now - timedelta(seconds=row.kept_for):
                    continue
            values = row.values.copy()
            for k, parts in row.req_fields:
                values[k] = req.join(parts)
            for k, when in row.time_fields:
                values[k] = when + delta
            for k, prefix, n in row.hash_fields:
                digest = hashlib.sha256(f"{req}/{values[k]}".encode()).hexdigest()
                values[k] = prefix + digest[:n]
            for k, rank in row.seq_fields:
                values[k] = SEQ_BASE + i * t.seq_stride + rank
            yield tuple(values)


@dataclass
class Load:
    reqs: int
    rows: int
    seconds: float
    db_bytes: int
    tables: dict[str, int]  # bytes per table, indexes and TOAST included, after the load


async def load_history(
    pg: PostgresServer,
    db: str,
    t: Template,
    first: int,
    last: int,
    opts: argparse.Namespace,
) -> Load:
    """COPY REQs ``first`` to ``last - 1`` in, one transaction per chunk of
    ``opts.chunk`` REQs on each of ``opts.load_workers`` connections, then
    bring the tables to the state autovacuum would leave them in."""
    dsn = pg.dsn(db)
    conn = await asyncpg.connect(dsn)
    now = datetime.now(UTC)
    spacing = 86400.0 / opts.reqs_per_day
    names = [table.name for table in t.tables]
    chunks = iter(range(first, last, opts.chunk))  # shared: each chunk is taken once
    done = {"reqs": 0, "rows": 0}
    free = shutil.disk_usage(pg.data_dir).free
    started = last_said = time.perf_counter()

    async def worker() -> None:
        nonlocal last_said
        wconn = await asyncpg.connect(dsn)
        try:
            for lo in chunks:
                hi = min(last, lo + opts.chunk)
                async with wconn.transaction():
                    for table in t.tables:
                        status = await wconn.copy_records_to_table(
                            table.name,
                            records=copies(t, table, lo, hi, now, spacing),
                            columns=table.columns,
                        )
                        done["rows"] += int(status.split()[-1])
                done["reqs"] += hi - lo
                # Stop before the disk fills (Postgres would stop mid-write); an
                # early projection misleads (the first chunks of a load grow the
                # indexes more than later ones do), so this checks what is left.
                if shutil.disk_usage(pg.data_dir).free < 5 * 2**30:
                    raise RuntimeError(
                        f"less than 5 GiB of disk left ({size(free)} at the start,"
                        f" {done['reqs']:,} REQs loaded): stopped"
                    )
                elapsed = time.perf_counter() - started
                if done["reqs"] == last - first or time.perf_counter() - last_said > 30:
                    last_said = time.perf_counter()
                    say(
                        f"  loaded {done['reqs']:,}/{last - first:,} REQs,"
                        f" {done['rows']:,} rows in {elapsed:.0f} s:"
                        f" {done['reqs'] / elapsed:,.0f} REQs/s,"
                        f" {done['rows'] / elapsed:,.0f} rows/s;"
                        f" database {size(await wconn.fetchval(DB_SIZE))}"
                    )
        finally:
            await wconn.close()

    try:
        # Autovacuum would start on the growing tables mid-load and compete
        # for the two cores; the VACUUM below does its work once, at the end.
        # A larger max_wal_size for the load only: checkpoints every 1 GB of
        # WAL would rewrite every page touched since as a full-page image.
        for name in names:
            await conn.execute(f'ALTER TABLE "{name}" SET (autovacuum_enabled = false)')
        await asyncio.to_thread(pg.psql, "ALTER SYSTEM SET max_wal_size = '4GB'")
        await asyncio.to_thread(pg.psql, "SELECT pg_reload_conf()")
        await asyncio.gather(*(worker() for _ in range(opts.load_workers)))
        seconds = time.perf_counter() - started
        for name in names:
            await conn.execute(f'ALTER TABLE "{name}" RESET (autovacuum_enabled)')
        await asyncio.to_thread(pg.psql, "ALTER SYSTEM RESET max_wal_size")
        await asyncio.to_thread(pg.psql, "SELECT pg_reload_conf()")
        # VACUUM sets hint bits and the visibility map, as autovacuum has long
        # done on a real history: the measurement then neither pays for
        # first-read hint-bit writes nor loses index-only scans; ANALYZE gives
        # the planner the statistics of the grown tables.
        vacuum = time.perf_counter()
        for name in names:
            await conn.execute(f'VACUUM (ANALYZE) "{name}"')
        vacuum = time.perf_counter() - vacuum
        checkpoint = time.perf_counter()
        # Writing out the load's dirty pages must not overlap the measurement.
        await asyncio.to_thread(pg.psql, "CHECKPOINT", db)
        checkpoint = time.perf_counter() - checkpoint
        db_bytes = await conn.fetchval("SELECT pg_database_size(current_database())")
        tables = {
            r["relname"]: r["size"]
            for r in await conn.fetch(
                "SELECT c.relname, pg_total_relation_size(c.oid) AS size FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'"
                " AND n.nspname = 'public' ORDER BY size DESC"
            )
        }
    finally:
        await conn.close()
    say(f"  VACUUM (ANALYZE) {vacuum:.0f} s, CHECKPOINT {checkpoint:.0f} s")
    return Load(last - first, done["rows"], seconds, db_bytes, tables)


def with_rows(t: Template, table: str, reqs: int, per_day: float) -> float:
    """How many of the newest ``reqs`` REQs still have rows in ``table``: all
    of them, but for the pruned tables only those inside the retention window."""
    for recipe in t.tables:
        if recipe.name == table and table in PRUNED:
            ages = [r.kept_for for r in recipe.rows]
            if None not in ages:
                return min(reqs, per_day * max(a for a in ages if a is not None) / 86400)
    return reqs


def projected(t: Template, ld: Load, level: int, reqs: int, per_day: float) -> float:
    """Bytes of ``reqs`` REQs' history, from the table sizes at ``level``: the
    record grows with every REQ, the pruned tables only up to their window."""
    return sum(
        b * with_rows(t, name, reqs, per_day) / max(with_rows(t, name, level, per_day), 1)
        for name, b in ld.tables.items()
    )


# --- measurements ------------------------------------------------------------------------
@dataclass
class Session:
    """One agogd process on one database, and the runs made against it."""

    label: str
    ready: float
    runs: dict[str, dict[str, Any]]
    troubles: Counter[str]


_sessions = 0


async def session(
    url: str,
    dsn: str,
    label: str,
    max_in_flight: int,
    plan: list[tuple[str, int, int]],
    warmup: int,
) -> Session:
    """Start agogd on ``dsn``, warm it up, make the runs of ``plan`` (name,
    REQs in flight, REQs), stop it. Every REQ id is new to the shared NATS."""
    global _sessions
    _sessions += 1
    tag = f"S{_sessions}"
    daemon = DaemonProcess(
        {
            "AGOG_NATS_URL": url,
            "AGOG_POSTGRES_DSN": dsn,
            "AGOG_MAX_IN_FLIGHT": str(max_in_flight),
            "AGOG_DISPATCH_INTERVAL": "0.05",
        }
    ).start()
    started = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    try:
        daemon.wait_ready(300)
        ready = time.perf_counter() - started
        if warmup:  # connections, prepared statements, caches: not part of a REQ's cost
            await run_engine(url, min(warmup, 5), warmup, 0.0, f"{tag}W")
        for n, (name, concurrent, total) in enumerate(plan):
            runs[name] = await run_engine(url, concurrent, total, 0.0, f"{tag}R{n}")
    finally:
        daemon.stop()
    # A run that hid retries or failures would give a false figure; count them
    # by event (notice.fields_fixed and the missing embedder are expected).
    troubles = Counter(
        str(e.get("event")) for e in daemon.events if e.get("level") in ("warning", "error")
    )
    s = Session(label, ready, runs, troubles)
    parts = [f"ready {ready:.1f} s"]
    for name, r in runs.items():
        parts.append(f"{name}: {r['per_second']:,.0f}/s p50 {ms(r['p50'])} p99 {ms(r['p99'])}")
    say(f"{label}: " + "; ".join(parts) + f"; agogd warnings/errors: {dict(troubles) or 'none'}")
    return s


_empties = 0


async def fresh_empty(pg: PostgresServer) -> tuple[str, str]:
    """A new, migrated, empty database (its name and DSN)."""
    global _empties
    _empties += 1
    name = f"empty{_empties}"
    dsn = await asyncio.to_thread(pg.create_database, name)
    await migrate_db(dsn)
    return name, dsn


async def db_size(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


async def make_template(
    url: str, pg: PostgresServer, pending: bool
) -> tuple[Template, dict[str, float]]:
    """The raw floors, then one REQ through agogd on a database of its own."""
    dsn = await asyncio.to_thread(pg.create_database, "template")
    seeded = await migrate_db(dsn)
    floors = {
        "JetStream pull+ack": await floor_pull_ack(url),
        "Postgres commit": await floor_pg_commit(dsn),
        "JetStream publish+ack": await floor_publish_ack(url),
    }
    daemon = DaemonProcess(
        {"AGOG_NATS_URL": url, "AGOG_POSTGRES_DSN": dsn, "AGOG_DISPATCH_INTERVAL": "0.05"}
    ).start()
    try:
        daemon.wait_ready(60)
        await run_engine(url, 1, 1, 0.0, "TPL")
        # run_engine ends when Tim's notice is out; wait for agogd to apply it.
        conn = await asyncpg.connect(dsn)
        try:
            want = len(PIPELINE.stages) + len(PIPELINE.followups)
            for _ in range(300):
                done = await conn.fetchval(
                    "SELECT count(*) FROM stage_attempts WHERE status <> 'RUNNING'"
                )
                unsent = await conn.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                )
                if done >= want and not unsent:
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the template REQ did not finish")
            await asyncio.sleep(1)
        finally:
            await conn.close()
    finally:
        daemon.stop()
    template = await read_template(dsn, seeded, pending)
    return template, floors


# --- the run -----------------------------------------------------------------------------
def levels(text: str) -> list[int]:
    return sorted({int(x.replace("_", "")) for x in text.split(",") if x.strip()})


def short(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def median(values: list[float]) -> float:
    """Of the rounds: one round disturbed by a neighbour on the machine moves it least."""
    return statistics.median(values)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", help="finished REQs loaded (default 0,100000,1000000)")
    parser.add_argument("--inflight", help="REQs in flight, empty database (default 1,10,100,1000)")
    parser.add_argument("--lone-reqs", type=int, help="REQs of a 1-in-flight run (default 40)")
    parser.add_argument("--busy-reqs", type=int, help="REQs of a 100-in-flight run (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="empty/loaded pairs per level")
    parser.add_argument("--warmup", type=int, default=5, help="REQs run before each measurement")
    parser.add_argument("--chunk", type=int, default=20000, help="REQs per COPY transaction")
    parser.add_argument(
        "--load-workers", type=int, default=2, help="connections loading the history at once"
    )
    parser.add_argument(
        "--reqs-per-day",
        type=float,
        default=1000.0,
        help="pace of the history's REQs: how many fall inside the outbox's retention window",
    )
    parser.add_argument(
        "--pending-memories",
        action="store_true",
        help="load the history's memories as 'pending' (never embedded), as this bench's"
        " agogd leaves them, instead of 'none'",
    )
    parser.add_argument("--quick", action="store_true", help="small levels, for a smoke test")
    args = parser.parse_args()
    logs.configure("warning", "console")  # not every migration applied to every database
    quick = args.quick
    history = levels(args.history or ("0,20000" if quick else "0,100000,1000000"))
    inflight = levels(args.inflight or ("1,10,100" if quick else "1,10,100,1000"))
    lone = args.lone_reqs or (10 if quick else 40)
    busy = args.busy_reqs or (100 if quick else 300)
    plan = [("lone", 1, lone), ("busy", BUSY, busy)]
    loaded_levels = [n for n in history if n > 0]

    with tempfile.TemporaryDirectory(prefix="agogd-growth-") as tmp:
        nats_server = NatsServer(Path(tmp) / "nats").start()
        pg = PostgresServer(Path(tmp) / "pg", durable=True).start()
        url = nats_server.url
        try:
            template, floors = await make_template(url, pg, args.pending_memories)
            floor = sum(floors.values())
            say(
                "floors: "
                + ", ".join(f"{k} {ms(v)}" for k, v in floors.items())
                + f"; sum {ms(floor)}"
            )
            say(
                "template REQ: rows per REQ "
                + ", ".join(f"{t.name} {len(t.rows)}" for t in template.tables)
                + (f"; not copied (no REQ id): {template.skipped}" if template.skipped else "")
            )

            # 1. REQs in flight, empty database.
            flights: dict[int, Session] = {}
            name, dsn = await fresh_empty(pg)
            for n in inflight:
                total = lone if n == 1 else max((2 if quick else 3) * n, 10 if quick else 40)
                flights[n] = await session(
                    url, dsn, f"{n} in flight", n, [("run", n, total)], args.warmup
                )
            await asyncio.to_thread(pg.drop_database, name)

            # 2. History levels, each against fresh empty databases, alternately.
            hist_db = "history"
            hist_dsn = await asyncio.to_thread(pg.create_database, hist_db)
            await migrate_db(hist_dsn)
            sizes = {0: await db_size(hist_dsn)}
            loads: dict[int, Load] = {}
            pairs: dict[int, list[tuple[Session, Session | None]]] = {}
            done = 0
            for level in loaded_levels or [0]:
                if level:
                    say(f"loading finished REQs {done:,} to {level - 1:,} into {hist_db}")
                    ld = loads[level] = await load_history(pg, hist_db, template, done, level, args)
                    done = level
                    sizes[level] = ld.db_bytes
                    per_req = (sizes[level] - sizes[0]) / level
                    kept = sum(b for n, b in loads[level].tables.items() if n not in PRUNED)
                    say(
                        f"  database {size(sizes[level])} for {level:,} REQs: {size(per_req)}"
                        f" per REQ, of which the kept record {size(kept / level)}; largest: "
                        + ", ".join(f"{n} {size(b)}" for n, b in list(ld.tables.items())[:6])
                    )
                pairs[level] = []
                for r in range(1, args.rounds + 1):
                    name, dsn = await fresh_empty(pg)
                    empty = await session(url, dsn, f"empty, round {r}", BUSY, plan, args.warmup)
                    await asyncio.to_thread(pg.drop_database, name)
                    loaded = None
                    if level:
                        loaded = await session(
                            url,
                            hist_dsn,
                            f"{short(level)} REQs, round {r}",
                            BUSY,
                            plan,
                            args.warmup,
                        )
                    pairs[level].append((empty, loaded))
        finally:
            nats_server.stop()
            pg.stop()

    proj = {
        lv: projected(template, ld, lv, 1_000_000, args.reqs_per_day) for lv, ld in loads.items()
    }
    report(floors, flights, pairs, sizes, loads, proj)


def report(
    floors: dict[str, float],
    flights: dict[int, Session],
    pairs: dict[int, list[tuple[Session, Session | None]]],
    sizes: dict[int, int],
    loads: dict[int, Load],
    proj: dict[int, float],
) -> None:
    floor = sum(floors.values())
    print()
    print(f"floor sum (pull+ack + commit + publish+ack): {ms(floor)}")
    print()
    print("| in flight | transitions/s | p50 | p99 |")
    print("|---|---|---|---|")
    for n, s in flights.items():
        r = s.runs["run"]
        print(f"| {n:,} | {r['per_second']:,.0f} | {ms(r['p50'])} | {ms(r['p99'])} |")
    print()
    empties = [e for level in pairs.values() for e, _ in level]
    rows: list[tuple[int, list[Session], list[Session]]] = [(0, empties, empties)]
    for level, ps in pairs.items():
        if level:
            rows.append((level, [e for e, _ in ps], [h for _, h in ps if h is not None]))
    print(
        "| history | DB size | lone p50 | lone p99 | p50 vs empty"
        " | transitions/s (100 in flight) | vs empty |"
    )
    print("|---|---|---|---|---|---|---|")
    verdict = None
    for level, base, measured in rows:
        p50 = median([s.runs["lone"]["p50"] for s in measured])
        p99 = median([s.runs["lone"]["p99"] for s in measured])
        rate = median([s.runs["busy"]["per_second"] for s in measured])
        p50_ratio = p50 / median([s.runs["lone"]["p50"] for s in base])
        rate_ratio = rate / median([s.runs["busy"]["per_second"] for s in base])
        print(
            f"| {level:,} | {size(sizes[level])} | {ms(p50)} | {ms(p99)} | {p50_ratio:.2f}x"
            f" | {rate:,.0f} | {rate_ratio:.2f}x |"
        )
        if level:
            verdict = (level, p50_ratio)
    print()
    lone_p50s = [s.runs["lone"]["p50"] for s in empties]
    rates = [s.runs["busy"]["per_second"] for s in empties]
    print(
        f"noise: the {len(empties)} empty databases' lone p50 ranged {ms(min(lone_p50s))}"
        f" to {ms(max(lone_p50s))}, their transitions/s {min(rates):,.0f} to {max(rates):,.0f}"
    )
    for level, ps in pairs.items():
        if level:
            ratios = [h.runs["lone"]["p50"] / e.runs["lone"]["p50"] for e, h in ps if h]
            print(
                f"{short(level)}: per-round lone p50 ratios "
                + ", ".join(f"{x:.2f}x" for x in ratios)
                + "; agogd ready in "
                + ", ".join(f"{h.ready:.1f} s" for _, h in ps if h)
                + " (empty: "
                + ", ".join(f"{e.ready:.1f} s" for e, _ in ps)
                + ")"
            )
    for level, ld in loads.items():
        per_req = (sizes[level] - sizes[0]) / level
        print(
            f"load to {short(level)}: {ld.reqs:,} REQs in {ld.seconds:.0f} s"
            f" ({ld.reqs / ld.seconds:,.0f} REQs/s, {ld.rows / ld.seconds:,.0f} rows/s),"
            f" {size(per_req)} per REQ; at this rate 1M REQs would take"
            f" {1e6 / (ld.reqs / ld.seconds) / 60:.0f} min and {size(proj[level])}"
        )
    if verdict is not None:
        level, ratio = verdict
        print(
            f"target (lone p50 within 1.2x of the empty database) at {level:,} REQs:"
            f" {ratio:.2f}x — {'met' if ratio <= 1.2 else 'NOT met'}"
        )
    print(f"total time {time.perf_counter() - STARTED:.0f} s")


if __name__ == "__main__":
    asyncio.run(main())
