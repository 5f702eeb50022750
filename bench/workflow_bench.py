"""Stage-advance latency and transitions/s, beside the raw floors of the same run.

Run: .venv/bin/python bench/workflow_bench.py [--reqs 100] [--rounds 5]

It starts a real nats-server and PostgreSQL (orchestrator.embedded), measures
three floors (a JetStream pull+ack, a Postgres commit, a JetStream
publish+ack), then runs agogd as a separate process and keeps ``--reqs`` REQs
in flight until ``--reqs x --rounds`` have gone through all stages: once
with agents that answer at once (saturated: the sustained transitions/s,
over the middle 80% of the run) and once with agents that think (paced: the
stage-advance latency). A transition's latency is the time from the agent
publishing its notice to the agent receiving the next assignment. Figures are
reported as absolute numbers and as ratios to the floors, because absolute
times are noisy on shared machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import nats
from nats.js.api import StreamConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.core import registry  # noqa: E402
from orchestrator.embedded import NatsServer, PostgresServer  # noqa: E402
from orchestrator.embedded.daemon_proc import DaemonProcess  # noqa: E402

PIPELINE = registry.load()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def floor_pull_ack(url: str, n: int = 2000) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="bench_floor", subjects=["bench.floor.>"]))
    for i in range(n):
        await js.publish(f"bench.floor.{i % 10}", b"{}")
    sub = await js.pull_subscribe("bench.floor.>", durable="bench")
    started = time.perf_counter()
    got = 0
    while got < n:
        for msg in await sub.fetch(64, timeout=5):
            await msg.ack()
            got += 1
    elapsed = (time.perf_counter() - started) / n
    await js.delete_stream("bench_floor")
    await nc.close()
    return elapsed


async def floor_publish_ack(url: str, n: int = 2000) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="bench_pub", subjects=["bench.pub.>"]))
    started = time.perf_counter()
    for i in range(n):
        await js.publish(f"bench.pub.{i % 10}", b'{"x": 1}')
    elapsed = (time.perf_counter() - started) / n
    await js.delete_stream("bench_pub")
    await nc.close()
    return elapsed


async def floor_pg_commit(dsn: str, n: int = 2000) -> float:
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial, v jsonb)")
    started = time.perf_counter()
    for _ in range(n):
        async with conn.transaction():
            await conn.execute("INSERT INTO bench_floor (v) VALUES ('{}'::jsonb)")
    elapsed = (time.perf_counter() - started) / n
    await conn.execute("DROP TABLE bench_floor")
    await conn.close()
    return elapsed


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return int(fields[1]), ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds a live process (and its reaped children) has spent so far."""
    stat = _stat(pid)
    if stat is None:
        raise ProcessLookupError(pid)
    return stat[1]


def cpu_by_process(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process and its live descendants (a
    Postgres server is a postmaster and a backend per connection); a named
    process below another (agogd is the bench's child) counts only as itself.
    Reaped children count through their parent's cutime, so a short-lived
    backend is not lost."""
    stats = {int(p): st for p in os.listdir("/proc") if p.isdigit() if (st := _stat(int(p)))}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    named = set(pids.values())
    totals: dict[str, float] = {}
    for name, root in pids.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                total += stats[pid][1]
            todo.extend(c for c in children.get(pid, ()) if c not in named)
        totals[name] = total
    return totals


async def rows_written(dsn: str) -> dict[str, int]:
    """Rows inserted, updated and deleted so far, by table (Postgres's cumulative
    statistics; other backends report theirs within a second of going idle)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS n FROM pg_stat_user_tables"
        )
    finally:
        await conn.close()
    return {r["relname"]: r["n"] for r in rows}


def answer(agent: str, req: str) -> bytes:
    body: dict[str, Any] = {
        "agent": agent,
        "req_number": req,
        "status": "COMPLETE",
        "summary": "bench",
    }
    if agent == "sylvia":
        body["critique_verdict"] = "APPROVED"
    if agent == "billy":
        body["tests_passed"] = True
    if agent == "berry":
        body["commit_sha"] = "be2c4a1"  # a hex sha, as Berry's are
    return json.dumps(body).encode()


TITLE_WORDS = (
    "inventory stock pallet carton invoice discount label printer warehouse quote die-cut"
    " board shipment order customer price tax report schedule delivery return"
).split()


def requirement(req: str, rng: random.Random, titles: bool) -> dict[str, Any]:
    """The intake message; with ``titles``, a title and requirement lines, so that
    the deliverable memory has text to remember and recall on."""
    body: dict[str, Any] = {"req_number": req}
    if titles:
        words = rng.sample(TITLE_WORDS, 6)
        body["title"] = " ".join(words[:3]).capitalize()
        body["requirements"] = [f"Track {words[3]} per {words[4]}", f"Report {words[5]} totals"]
    return body


async def run_engine(
    url: str, concurrent: int, total: int, think: float, prefix: str, titles: bool = False
) -> dict[str, Any]:
    """Keep ``concurrent`` REQs in flight until ``total`` have gone through every
    stage; agents answer each assignment after a random 0 to 2 x ``think`` s."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sent_at: dict[tuple[str, int], float] = {}
    latencies: list[float] = []
    arrivals: list[float] = []  # when each assignment (a transition's end) arrived
    done = asyncio.Event()
    finished: set[str] = set()
    submitted = 0
    order = {s.agent: s.index for s in (*PIPELINE.stages, *PIPELINE.followups)}
    tasks: set[asyncio.Future[None]] = set()
    rng = random.Random(1)
    title_rng = random.Random(2)  # its own, so think times do not change with --titles

    async def submit_next() -> None:
        nonlocal submitted
        req = requirement(f"REQ-{prefix}-{submitted:05d}", title_rng, titles)
        body = json.dumps(req).encode()
        submitted += 1
        await js.publish("agog.requirements.new", body)

    async def on_assignment(a: dict[str, Any], received: float) -> None:
        req, agent = a["req_number"], a["agent"]
        arrivals.append(received)
        prev = sent_at.pop((req, order[agent] - 1), None)
        if prev is not None:
            latencies.append(received - prev)
        if think:  # spread answers out, as real agents are not in lockstep
            await asyncio.sleep(rng.uniform(0, 2 * think))
        sent_at[(req, order[agent])] = time.perf_counter()
        stage = PIPELINE.stage_for_agent(agent)
        assert stage is not None
        await js.publish(PIPELINE.deliverable_subject(stage, req), answer(agent, req))
        if agent == "tim":
            finished.add(req)
            if submitted < total:
                await submit_next()
            if len(finished) == total:
                done.set()

    async def cb(msg: Any) -> None:
        received = time.perf_counter()
        a = json.loads(msg.data)
        if a["req_number"].startswith(f"REQ-{prefix}-"):
            # One task per assignment, so that thinking agents work in parallel.
            task = asyncio.ensure_future(on_assignment(a, received))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    sub = await nc.subscribe("agog.orchestration.events.stage.started.>", cb=cb)
    for _ in range(concurrent):
        await submit_next()
    await asyncio.wait_for(done.wait(), 900)
    await sub.unsubscribe()
    await nc.close()
    # Sustained rate: the middle 80% of the run, without ramp-up and drain.
    arrivals.sort()
    lo, hi = int(0.1 * len(arrivals)), int(0.9 * len(arrivals))
    return {
        "transitions": len(arrivals),
        "per_second": (hi - lo) / (arrivals[hi] - arrivals[lo]),
        "p50": pct(latencies, 0.50),
        "p90": pct(latencies, 0.90),
        "p99": pct(latencies, 0.99),
        "max": max(latencies),
        "mean": statistics.fmean(latencies),
        "samples": len(latencies),
    }


async def disk_per_req(dsn: str) -> dict[str, Any]:
    """What the finished REQs of the run take in Postgres: every table of
    agogd's schema with its indexes and TOAST, over the REQs that finished.
    Vacuumed first, so dead rows of the run's updates do not count."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM")
        rows = await conn.fetch(
            "SELECT c.relname, pg_total_relation_size(c.oid) AS size FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'"
            " AND n.nspname = 'public' ORDER BY size DESC"
        )
        reqs = await conn.fetchval(
            "SELECT count(*) FROM workflow_state WHERE status IN ('DEPLOYED', 'COMPLETE')"
        )
    finally:
        await conn.close()
    total = sum(r["size"] for r in rows)
    return {
        "reqs": reqs,
        "per_req": total / max(reqs, 1),
        "top": [(r["relname"], r["size"]) for r in rows[:5]],
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reqs", type=int, default=100)
    parser.add_argument(
        "--think", type=float, default=0.5, help="agent think time for the paced run (s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="REQs per run = rounds x concurrent REQs"
    )
    parser.add_argument("--settle", type=float, default=0.0, help="pause between the two runs (s)")
    parser.add_argument(
        "--titles", action="store_true", help="REQs with titles and requirements (memory recall)"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for agogd, e.g. AGOG_MEMORY_ENABLED=0"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agogd-bench-") as tmp:
        nats_server = NatsServer(Path(tmp) / "nats").start()
        pg = PostgresServer(Path(tmp) / "pg", durable=True).start()
        try:
            floors = {
                "jetstream_pull_ack": await floor_pull_ack(nats_server.url),
                "postgres_commit": await floor_pg_commit(pg.dsn()),
                "jetstream_publish_ack": await floor_publish_ack(nats_server.url),
            }
            daemon = DaemonProcess(
                {
                    "AGOG_NATS_URL": nats_server.url,
                    "AGOG_POSTGRES_DSN": pg.dsn(),
                    "AGOG_MAX_IN_FLIGHT": str(args.reqs),
                    "AGOG_DISPATCH_INTERVAL": "0.05",
                    **dict(item.split("=", 1) for item in args.env),
                }
            ).start()
            try:
                daemon.wait_ready(60)
                total = args.reqs * args.rounds
                assert daemon.proc and nats_server.proc and pg.proc
                pids = {
                    "agogd": daemon.proc.pid,
                    "postgres": pg.proc.pid,
                    "nats-server": nats_server.proc.pid,
                    "bench agents": os.getpid(),
                }
                rows_before = await rows_written(pg.dsn())
                cpu_before = cpu_by_process(pids)
                result = await run_engine(
                    nats_server.url, args.reqs, total, 0.0, "SAT", args.titles
                )
                cpu_after = cpu_by_process(pids)
                await asyncio.sleep(1.5)  # the backends' statistics reach the view
                rows_after = await rows_written(pg.dsn())
                await asyncio.sleep(args.settle)
                paced = await run_engine(
                    nats_server.url, args.reqs, total, args.think, "PACED", args.titles
                )
            finally:
                daemon.stop()
            disk = await disk_per_req(pg.dsn())
            # A fast run that hid retries or failures would be a false figure.
            troubles = Counter(
                e.get("event") for e in daemon.events if e.get("level") in ("warning", "error")
            )
        finally:
            nats_server.stop()
            pg.stop()
    floor_sum = sum(floors.values())
    print(
        f"concurrent REQs: {args.reqs}, REQs per run: {args.reqs * args.rounds},"
        f" transitions per run: {result['transitions']}"
    )
    for name, value in floors.items():
        print(f"floor {name:<24} {value * 1000:8.3f} ms")
    print(f"floor sum (pull+ack + commit + publish+ack) {floor_sum * 1000:8.3f} ms")
    print(
        f"disk per finished REQ (all tables and indexes): {disk['per_req'] / 1024:.1f} KiB"
        f" over {disk['reqs']} REQs; largest: "
        + ", ".join(f"{name} {size / disk['reqs'] / 1024:.1f}" for name, size in disk["top"])
    )
    print(f"agogd warnings and errors: {dict(troubles) or 'none'}")
    shown = [e for e in daemon.events if e.get("level") in ("warning", "error")]
    for e in shown[:10]:
        print("  ", json.dumps(e)[:400])
    transitions = result["transitions"]
    cpu = {name: (cpu_after[name] - cpu_before[name]) / transitions for name in pids}
    print(
        "saturated: CPU per transition: "
        + ", ".join(f"{name} {value * 1e3:.3f} ms" for name, value in cpu.items())
        + f"; sum {sum(cpu.values()) * 1e3:.3f} ms, so {os.cpu_count()} cores"
        f" bound the run at {os.cpu_count() / sum(cpu.values()):.0f} transitions/s"
    )
    written = {t: n - rows_before.get(t, 0) for t, n in rows_after.items()}
    written = {t: n / transitions for t, n in written.items() if n > 0}
    print(
        f"saturated: rows written per transition {sum(written.values()):.1f}: "
        + ", ".join(f"{t} {n:.2f}" for t, n in sorted(written.items(), key=lambda kv: -kv[1]))
    )
    for title, r in (
        ("saturated run (agents answer at once)", result),
        (f"paced run (agents think {args.think} s)", paced),
    ):
        print(f"{title}:")
        print(
            f"  throughput {r['per_second']:8.1f} transitions/s "
            f"= {r['per_second'] * floor_sum:5.2f} x the floor-sum ceiling "
            f"({1 / floor_sum:.0f}/s)"
        )
        for q in ("p50", "p90", "p99", "max"):
            print(
                f"  stage advance {q} {r[q] * 1000:8.2f} ms = {r[q] / floor_sum:6.1f} x floor sum"
            )


if __name__ == "__main__":
    asyncio.run(main())
