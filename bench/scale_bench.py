"""Transitions per second with 1, 2 and 3 agogd replicas, in one run.

Run: .venv/bin/python bench/scale_bench.py [--reqs 100] [--rounds 3] [--replicas 1,2,3]

It starts one real nats-server and one PostgreSQL (orchestrator.embedded),
measures the raw floors (bench/workflow_bench.py: a JetStream pull+ack, a
Postgres commit, a JetStream publish+ack), then, for each replica count,
starts that many agogd processes on the same NATS and Postgres (they share
the durable consumers and the outbox; Postgres row locks keep one REQ's
transitions in order) and keeps ``--reqs`` REQs in flight with agents that
answer at once until ``--reqs x --rounds`` REQs went through every stage.
Each count gets fresh streams and tables (a new database and NATS), so the
runs do not inherit each other's backlog.

It reports the sustained transitions/s per count (the middle 80% of the
run), the ratio to one replica, and the CPU each process used, because on a
machine with few cores the replicas compete with nats-server and Postgres for
the same cores: the ratio then shows the cost of coordination, not the gain
of more machines. docs/scaling.md reads these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compare import cpu_seconds  # noqa: E402
from bench.workflow_bench import (  # noqa: E402
    floor_pg_commit,
    floor_publish_ack,
    floor_pull_ack,
    run_engine,
)
from orchestrator.embedded import NatsServer, PostgresServer  # noqa: E402
from orchestrator.embedded.daemon_proc import DaemonProcess  # noqa: E402


def postgres_pids() -> list[int]:
    """Every live postgres process (the postmaster and its backends)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of the processes still alive (a backend may have exited)."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue
    return total


async def sample_waits(dsn: str, waits: Counter[str]) -> None:
    """What agogd's Postgres sessions are doing, sampled every 20 ms: running
    a query, waiting for a lock, or waiting for agogd (idle in transaction)."""
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            rows = await conn.fetch(
                "SELECT state, wait_event_type, wait_event, left(query, 70) AS query"
                " FROM pg_stat_activity"
                " WHERE application_name LIKE 'agogd%' AND pid <> pg_backend_pid()"
            )
            for r in rows:
                if r["state"] == "active":
                    if r["wait_event_type"] == "Lock":
                        waits["lock wait"] += 1
                        waits[f"lock wait ({r['wait_event']}): {r['query']}"] += 1
                    else:
                        waits["running"] += 1
                elif r["state"] == "idle in transaction":
                    waits["in transaction, waiting for agogd"] += 1
            waits["samples"] += 1
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def one_count(
    base: Path, replicas: int, reqs: int, rounds: int, extra: dict[str, str]
) -> tuple[dict[str, Any], dict[str, float], Counter[str]]:
    """One replica count on fresh servers: the saturated run's figures, CPU
    seconds per process kind, and the replicas' warnings and errors."""
    nats_server = NatsServer(base / f"nats-{replicas}").start()
    pg = PostgresServer(base / f"pg-{replicas}", durable=True).start()
    daemons: list[DaemonProcess] = []
    try:
        env = {
            "AGOG_NATS_URL": nats_server.url,
            "AGOG_POSTGRES_DSN": pg.dsn(),
            "AGOG_MAX_IN_FLIGHT": str(reqs),
            "AGOG_DISPATCH_INTERVAL": "0.05",
            **extra,
        }
        for _ in range(replicas):
            daemons.append(DaemonProcess(env).start())
        for daemon in daemons:
            daemon.wait_ready(90)
        pids = {"agogd": [d.proc.pid for d in daemons if d.proc is not None]}
        if nats_server.proc is not None:
            pids["nats-server"] = [nats_server.proc.pid]
        pids["postgres"] = postgres_pids()
        before = {k: cpu_of(v) for k, v in pids.items()}
        started, client_cpu = time.perf_counter(), time.process_time()
        waits: Counter[str] = Counter()
        sampler = asyncio.create_task(sample_waits(pg.dsn(), waits))
        try:
            result = await run_engine(nats_server.url, reqs, reqs * rounds, 0.0, f"R{replicas}")
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        wall = time.perf_counter() - started
        cpu = {k: cpu_of(v) - before[k] for k, v in pids.items()}
        cpu["bench agents"] = time.process_time() - client_cpu
        cpu["wall"] = wall
        result["waits"] = waits
        troubles: Counter[str] = Counter()
        for daemon in daemons:
            for e in daemon.events:
                if e.get("level") in ("warning", "error"):
                    troubles[str(e.get("event"))] += 1
        return result, cpu, troubles
    finally:
        for daemon in daemons:
            daemon.stop()
        nats_server.stop()
        pg.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reqs", type=int, default=100, help="REQs kept in flight")
    parser.add_argument("--rounds", type=int, default=3, help="REQs per count = rounds x reqs")
    parser.add_argument("--replicas", default="1,2,3", help="replica counts, comma-separated")
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for agogd, e.g. AGOG_MEMORY_ENABLED=0"
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    counts = [int(x) for x in args.replicas.split(",")]
    with tempfile.TemporaryDirectory(prefix="agogd-scale-") as tmp:
        base = Path(tmp)
        nats_server = NatsServer(base / "nats-floor").start()
        pg = PostgresServer(base / "pg-floor", durable=True).start()
        try:
            floors = {
                "jetstream_pull_ack": await floor_pull_ack(nats_server.url),
                "postgres_commit": await floor_pg_commit(pg.dsn()),
                "jetstream_publish_ack": await floor_publish_ack(nats_server.url),
            }
        finally:
            nats_server.stop()
            pg.stop()
        results = {n: await one_count(base, n, args.reqs, args.rounds, extra) for n in counts}
    floor_sum = sum(floors.values())
    print(
        f"cores: {os.cpu_count()}; REQs in flight: {args.reqs}; REQs per count:"
        f" {args.reqs * args.rounds}; floor sum {floor_sum * 1000:.3f} ms"
        f" (ceiling {1 / floor_sum:.0f} transitions/s for one sequential worker)"
    )
    one = results[counts[0]][0]["per_second"]
    for n, (r, cpu, troubles) in results.items():
        wall = cpu.pop("wall")
        used = ", ".join(f"{k} {v / wall:.2f} cores" for k, v in cpu.items())
        print(
            f"{n} replica{'s' if n > 1 else ' '}: {r['per_second']:7.1f} transitions/s"
            f" = {r['per_second'] / one:4.2f} x {counts[0]} replica;"
            f" stage advance p50 {r['p50'] * 1000:6.1f} ms p99 {r['p99'] * 1000:6.1f} ms;"
            f" CPU {used}; warnings/errors: {dict(troubles) or 'none'}"
        )
        w = r["waits"]
        n = max(w.pop("samples", 1), 1)
        detail = {k: v for k, v in w.items() if k.startswith("lock wait (")}
        print(
            "    agogd's Postgres sessions, on average: "
            + ", ".join(f"{v / n:.2f} {k}" for k, v in sorted(w.items()) if k not in detail)
        )
        for k, v in sorted(detail.items(), key=lambda kv: -kv[1])[:3]:
            print(f"      {v / n:.2f} {k}")


if __name__ == "__main__":
    asyncio.run(main())
