"""Side-by-side: agogd against its raw floor, against DBOS, its recovery and footprint.

Run:  .venv/bin/pip install 'agogd[bench]'   # dbos (and py-spy for --profile)
      .venv/bin/python bench/compare.py [--quick] [--profile]

Everything runs in one process tree on one machine, on real servers started
here (orchestrator.embedded): one nats-server, one PostgreSQL. Figures are
ratios against baselines measured in the same run, because absolute times
are noisy on shared machines.

1. Per-stage overhead: an agent's notice published -> the next assignment
   delivered, one REQ at a time, against the raw floor of the same work
   (a JetStream pull+ack, a Postgres commit, a JetStream publish+ack); and
   throughput at 50 REQs in flight against the floor-sum ceiling. Then 100
   REQs in flight: saturated (agents answer at once: transitions/s, with the
   CPU each process spent per transition, which bounds it on two cores) and
   paced (agents think 0 to 1 s: the stage advance's p99), and the disk a
   finished REQ takes.
2. DBOS: a seven-step durable workflow (dbos, on the same Postgres) against
   agogd's seven-stage REQ with instant agents, 50 at a time: time per
   workflow, workflows per second, and cost per step.
3. Recovery: 1,000 REQs in flight, agogd SIGKILLed, the agents' notices
   published while it is down; time from the restart to every one of those
   REQs advancing again. Then the same, killed under load: while it applies
   the notices, with batches fetched and not acked (read back from the
   streams at the restart instead of waiting out the 60 s ack wait).
4. Footprint: idle RSS and CPU, and RSS with 10,000 REQs in flight.
5. History: the one-REQ stage advance with ``--history`` finished REQs'
   rows in the database (COPY, the real schema; bench/growth_bench.py), against
   an empty database, alternately; bench/growth_bench.py has the whole table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import growth_bench  # noqa: E402
from bench.workflow_bench import (  # noqa: E402
    answer,
    cpu_by_process,
    cpu_seconds,
    disk_per_req,
    floor_pg_commit,
    floor_publish_ack,
    floor_pull_ack,
    pct,
    run_engine,
)
from orchestrator.core import registry  # noqa: E402
from orchestrator.embedded import NatsServer, PostgresServer  # noqa: E402
from orchestrator.embedded.daemon_proc import DaemonProcess  # noqa: E402
from orchestrator.runtime import logs  # noqa: E402

PIPELINE = registry.load()
ASSIGNMENTS = "agog.orchestration.events.stage.started.>"


# --- process measurements -----------------------------------------------------------
def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def agogd(nats_url: str, dsn: str, **env: str) -> DaemonProcess:
    return DaemonProcess(
        {
            "AGOG_NATS_URL": nats_url,
            "AGOG_POSTGRES_DSN": dsn,
            "AGOG_DISPATCH_INTERVAL": "0.05",
            **env,
        }
    ).start()


# --- 1. overhead against the floor ----------------------------------------------------
async def overhead(url: str, dsn: str, quick: bool) -> dict[str, Any]:
    floors = {
        "jetstream_pull_ack": await floor_pull_ack(url),
        "postgres_commit": await floor_pg_commit(dsn),
        "jetstream_publish_ack": await floor_publish_ack(url),
    }
    floor = sum(floors.values())
    d = agogd(url, dsn, AGOG_MAX_IN_FLIGHT="50")
    try:
        d.wait_ready(60)
        lone = await run_engine(url, 1, 10 if quick else 40, 0.0, "LONE")
        busy = await run_engine(url, 50, 150 if quick else 500, 0.0, "BUSY")
    finally:
        d.stop()
    return {"floors": floors, "floor": floor, "lone": lone, "busy": busy}


async def hundred(url: str, dsn: str, servers: dict[str, int], quick: bool) -> dict[str, Any]:
    """100 REQs in flight: saturated with the CPU per transition of each
    process, then paced; and the disk per finished REQ afterwards."""
    total = 200 if quick else 500
    d = agogd(url, dsn, AGOG_MAX_IN_FLIGHT="100")
    try:
        d.wait_ready(60)
        assert d.proc is not None
        pids = {"agogd": d.proc.pid, **servers, "bench agents": os.getpid()}
        before = cpu_by_process(pids)
        saturated = await run_engine(url, 100, total, 0.0, "SAT")
        after = cpu_by_process(pids)
        paced = await run_engine(url, 100, total, 0.5, "PACED")
    finally:
        d.stop()
    cpu = {name: (after[name] - before[name]) / saturated["transitions"] for name in pids}
    return {
        "saturated": saturated,
        "paced": paced,
        "cpu": cpu,
        "disk": await disk_per_req(dsn),
    }


# --- 2. DBOS against agogd ---------------------------------------------------------------
DBOS_SCRIPT = r"""
import asyncio, json, sys, time
from dbos import DBOS

@DBOS.step()
async def stage(i: int, req: str) -> str:
    return f"{req}:{i}"

@DBOS.workflow()
async def seven(req: str) -> int:
    for i in range(7):
        await stage(i, req)
    return 7

async def main(total: int, concurrent: int) -> None:
    DBOS(config={"name": "agogbench", "system_database_url": sys.argv[1]})
    DBOS.launch()
    for i in range(5):  # warm-up
        await (await DBOS.start_workflow_async(seven, f"warm-{i}")).get_result()
    sem = asyncio.Semaphore(concurrent)
    times = []
    async def one(i: int) -> None:
        async with sem:
            started = time.perf_counter()
            handle = await DBOS.start_workflow_async(seven, f"wf-{i}")
            await handle.get_result()
            times.append(time.perf_counter() - started)
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(total)))
    elapsed = time.perf_counter() - started
    print(json.dumps({"times": times, "elapsed": elapsed}))
    DBOS.destroy()

asyncio.run(main(int(sys.argv[2]), int(sys.argv[3])))
"""


def run_dbos(dsn: str, total: int, concurrent: int, work: Path) -> dict[str, Any]:
    script = work / "dbos_seven.py"
    script.write_text(DBOS_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), dsn, str(total), str(concurrent)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=work,
    )
    if result.returncode != 0:
        raise RuntimeError(f"dbos run failed: {result.stderr[-2000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return _summary(data["times"], data["elapsed"])


def _summary(times: list[float], elapsed: float) -> dict[str, Any]:
    return {
        "count": len(times),
        "per_second": len(times) / elapsed,
        "p50": pct(times, 0.5),
        "p99": pct(times, 0.99),
        "mean": statistics.fmean(times),
    }


async def run_agogd_reqs(url: str, total: int, concurrent: int) -> dict[str, Any]:
    """agogd's seven stages with instant agents: submit -> Tim's assignment
    (Berry's stage done), ``concurrent`` REQs at a time."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    started_at: dict[str, float] = {}
    times: list[float] = []
    done = asyncio.Event()
    submitted = 0

    async def submit() -> None:
        nonlocal submitted
        req = f"REQ-CMP-{submitted:05d}"
        submitted += 1
        started_at[req] = time.perf_counter()
        await js.publish("agog.requirements.new", json.dumps({"req_number": req}).encode())

    async def cb(msg: Any) -> None:
        a = json.loads(msg.data)
        req, agent = a["req_number"], a["agent"]
        if not req.startswith("REQ-CMP-"):
            return
        if agent == "tim":
            times.append(time.perf_counter() - started_at[req])
            if submitted < total:
                await submit()
            if len(times) == total:
                done.set()
        stage = PIPELINE.stage_for_agent(agent)
        assert stage is not None
        await js.publish(PIPELINE.deliverable_subject(stage, req), answer(agent, req))

    sub = await nc.subscribe(ASSIGNMENTS, cb=cb)
    begin = time.perf_counter()
    for _ in range(concurrent):
        await submit()
    await asyncio.wait_for(done.wait(), 900)
    elapsed = time.perf_counter() - begin
    await sub.unsubscribe()
    await nc.close()
    return _summary(times, elapsed)


# --- 3. recovery after SIGKILL -----------------------------------------------------------
async def recovery(
    url: str, dsn: str, in_flight: int, under_load: bool = False, tag: str = "REC"
) -> dict[str, Any]:
    """``under_load``: the notices are published first and agogd is killed
    while it applies them (a third advanced), with batches fetched and not
    yet acked; otherwise it is killed idle and they are published while it is
    down."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    prefix = f"REQ-{tag}-"
    first: dict[str, dict[str, Any]] = {}
    advanced: dict[str, float] = {}
    all_started, all_advanced, a_third = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def cb(msg: Any) -> None:
        a = json.loads(msg.data)
        req = a["req_number"]
        if not req.startswith(prefix):
            return
        if a["agent"] == "cynthia":
            first.setdefault(req, a)
            if len(first) == in_flight:
                all_started.set()
        elif a["agent"] == "sylvia":
            advanced.setdefault(req, time.perf_counter())
            if len(advanced) >= in_flight // 3:
                a_third.set()
            if len(advanced) == in_flight:
                all_advanced.set()

    sub = await nc.subscribe(ASSIGNMENTS, cb=cb)
    d = agogd(url, dsn, AGOG_MAX_IN_FLIGHT=str(in_flight))
    d.wait_ready(60)
    for i in range(in_flight):
        body = json.dumps({"req_number": f"{prefix}{i:05d}"}).encode()
        await js.publish("agog.requirements.new", body)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_started.wait(), 300)
    assert len(first) == in_flight, f"only {len(first)} of {in_flight} REQs started"
    stage = PIPELINE.stage_for_agent("cynthia")
    assert stage is not None

    async def notices() -> None:
        for req in first:
            await js.publish(PIPELINE.deliverable_subject(stage, req), answer("cynthia", req))

    if under_load:
        await notices()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(a_third.wait(), 300)
    d.signal(signal.SIGKILL)
    d.wait_exit(30)
    left = in_flight - len(advanced)
    # What the killed process held unacked (JetStream's count, the research stream's).
    held = (await js.consumer_info(stage.stream, "agogd_deliverables")).num_ack_pending
    if not under_load:
        await notices()  # the agents finish while agogd is down
    restarted = time.perf_counter()
    d2 = agogd(url, dsn, AGOG_MAX_IN_FLIGHT=str(in_flight))
    try:
        d2.wait_ready(60)
        ready = time.perf_counter() - restarted
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_advanced.wait(), 300)
    finally:
        d2.stop()
        await sub.unsubscribe()
        await nc.close()
    assert len(advanced) == in_flight, f"only {len(advanced)} of {in_flight} advanced"
    waits = [t - restarted for t in advanced.values() if t >= restarted]
    return {
        "in_flight": in_flight,
        "left": left,
        "ready": ready,
        "all_advanced": max(waits),
        "p50": pct(waits, 0.5),
        "held": held,
        "swept": sum(e.get("messages", 0) for e in d2.named("unacked.applied")),
    }


# --- 4. footprint -----------------------------------------------------------------------
async def footprint(url: str, dsn: str, in_flight: int) -> dict[str, Any]:
    # The intake quota would refuse most of a burst this size: lifted here.
    d = agogd(
        url,
        dsn,
        AGOG_MAX_IN_FLIGHT=str(in_flight),
        AGOG_INTAKE_MAX_PENDING=str(2 * in_flight),
    )
    try:
        d.wait_ready(60)
        assert d.proc is not None
        pid = d.proc.pid
        await asyncio.sleep(3)
        idle_rss = rss_mb(pid)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(10)
        idle_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
        nc = await nats.connect(url)
        js = nc.jetstream()
        seen: set[str] = set()
        all_seen = asyncio.Event()

        async def cb(msg: Any) -> None:
            req = json.loads(msg.data)["req_number"]
            if req.startswith("REQ-FOOT-"):
                seen.add(req)
                if len(seen) == in_flight:
                    all_seen.set()

        sub = await nc.subscribe(ASSIGNMENTS, cb=cb)
        for i in range(in_flight):
            await js.publish(
                "agog.requirements.new", json.dumps({"req_number": f"REQ-FOOT-{i:05d}"}).encode()
            )
        await asyncio.wait_for(all_seen.wait(), 600)
        await asyncio.sleep(2)
        loaded_rss = rss_mb(pid)
        await sub.unsubscribe()
        await nc.close()
    finally:
        d.stop()
    return {
        "idle_rss_mb": idle_rss,
        "idle_cpu_percent": idle_cpu,
        "in_flight": len(seen),
        "loaded_rss_mb": loaded_rss,
    }


# --- 5. history -------------------------------------------------------------------------
async def history(work: Path, pg: PostgresServer, reqs: int, rounds: int) -> dict[str, Any]:
    """The lone stage advance on a database holding ``reqs`` finished REQs'
    history against fresh empty ones, ``rounds`` times alternately. On a
    nats-server of its own: the template REQ must be the only one its agogd
    sees (the recovery runs leave notices pending on the shared one, which a
    starting agogd reads back, and those would be rows of the template)."""
    nats_server = NatsServer(work / "nats-history").start()
    try:
        return await _history(nats_server.url, pg, reqs, rounds)
    finally:
        nats_server.stop()


async def _history(url: str, pg: PostgresServer, reqs: int, rounds: int) -> dict[str, Any]:
    template, _ = await growth_bench.make_template(url, pg, pending=False)
    db = "history"
    await growth_bench.migrate_db(await asyncio.to_thread(pg.create_database, db))
    opts = argparse.Namespace(chunk=20000, load_workers=2, reqs_per_day=1000.0)
    load = await growth_bench.load_history(pg, db, template, 0, reqs, opts)
    plan = [("lone", 1, 40), ("busy", 100, 300)]
    pairs = []
    for r in range(rounds):
        name, dsn = await growth_bench.fresh_empty(pg)
        empty = await growth_bench.session(url, dsn, f"empty {r + 1}", 100, plan, 5)
        await asyncio.to_thread(pg.drop_database, name)
        full = await growth_bench.session(url, pg.dsn(db), f"history {r + 1}", 100, plan, 5)
        pairs.append((empty, full))
    med = statistics.median
    return {
        "reqs": reqs,
        "db_bytes": load.db_bytes,
        "empty_p50": med([e.runs["lone"]["p50"] for e, _ in pairs]),
        "full_p50": med([h.runs["lone"]["p50"] for _, h in pairs]),
        "empty_rate": med([e.runs["busy"]["per_second"] for e, _ in pairs]),
        "full_rate": med([h.runs["busy"]["per_second"] for _, h in pairs]),
    }


# --- profile ------------------------------------------------------------------------------
async def profile(
    url: str, dsn: str, work: Path, keep: Path | None = None
) -> list[tuple[str, float]]:
    """Where agogd spends its time when saturated: py-spy's samples, by function.
    With ``keep``, the raw collapsed stacks are also written there."""
    spy = py_spy()
    d = agogd(url, dsn, AGOG_MAX_IN_FLIGHT="100")
    out = work / "profile.txt"
    try:
        d.wait_ready(60)
        assert d.proc is not None
        spy_proc = await asyncio.create_subprocess_exec(
            spy, "record", "--pid", str(d.proc.pid), "--format", "raw", "--output", str(out),
            "--rate", "200", "--nonblocking", "--full-filenames",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await run_engine(url, 100, 400, 0.0, "PROF")
        spy_proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(spy_proc.wait(), 30)
    finally:
        d.stop()
    if keep is not None:
        shutil.copyfile(out, keep)
    return summarize_profile(out.read_text())


def summarize_profile(raw: str) -> list[tuple[str, float]]:
    """Self time by package (the leaf frame), then inclusive time of agogd's own
    functions, each as a share of all samples."""
    leaf: dict[str, int] = {}
    ours: dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        samples += n
        key = "self: " + _package(frames[-1])
        leaf[key] = leaf.get(key, 0) + n
        for name in {_bucket(f) for f in frames if _is_ours(f)}:
            ours[name] = ours.get(name, 0) + n
    top = sorted(leaf.items(), key=lambda kv: -kv[1])[:12]
    top += sorted(((f"in: {k}", v) for k, v in ours.items()), key=lambda kv: -kv[1])[:12]
    return [(k, v / max(samples, 1) * 100) for k, v in top]


def _where(frame: str) -> str:
    return frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]


def _is_ours(frame: str) -> bool:
    path = _where(frame)
    return "/orchestrator/" in path or "/workers/" in path


def _package(frame: str) -> str:
    """The package (or agogd module) a frame's code belongs to."""
    path = _where(frame)
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if _is_ours(frame):
        return "agogd " + "/".join(Path(path).parts[-2:])
    if "/lib/python3" in path:
        parts = path.split("/lib/python3", 1)[1].split("/")
        return "stdlib " + (parts[1] if len(parts) > 2 else Path(path).stem)
    return Path(path).name or frame


def py_spy() -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise RuntimeError("py-spy not found: pip install 'agogd[bench]'")
    return spy


def _bucket(frame: str) -> str:
    """'func (path/to/module.py:12)' -> 'module.py:func'."""
    name, _, where = frame.partition(" (")
    return f"{Path(where.split(':')[0]).name}:{name}"


# --- report ----------------------------------------------------------------------------------
async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument("--profile", action="store_true", help="also profile with py-spy")
    parser.add_argument("--profile-only", action="store_true", help="only the py-spy profile")
    parser.add_argument("--profile-out", type=Path, help="keep the raw py-spy stacks here")
    parser.add_argument(
        "--history",
        type=int,
        default=100_000,
        help="finished REQs of history for row 5 (0: skip; 1,000,000 takes ~35 GiB and 20 min)",
    )
    args = parser.parse_args()
    logs.configure("warning", "console")  # the history's migrations, one line each
    if args.profile_only:
        with tempfile.TemporaryDirectory(prefix="agogd-profile-") as tmp:
            work = Path(tmp)
            nats_server = NatsServer(work / "nats").start()
            pg = PostgresServer(work / "pg", durable=True).start()
            try:
                print_profile(await profile(nats_server.url, pg.dsn(), work, args.profile_out))
            finally:
                nats_server.stop()
                pg.stop()
        return
    total = 100 if args.quick else 400
    rec = 200 if args.quick else 1000
    foot = 1000 if args.quick else 10000
    with tempfile.TemporaryDirectory(prefix="agogd-compare-") as tmp:
        work = Path(tmp)
        nats_server = NatsServer(work / "nats").start()
        pg = PostgresServer(work / "pg", durable=True).start()
        try:
            names = ("ovh", "hundred", "cmp", "dbos", "rec", "rld", "foot")
            dbs = {name: pg.create_database(name) for name in names}
            over = await overhead(nats_server.url, dbs["ovh"], args.quick)
            assert nats_server.proc is not None and pg.proc is not None
            servers = {"postgres": pg.proc.pid, "nats-server": nats_server.proc.pid}
            busy = await hundred(nats_server.url, dbs["hundred"], servers, args.quick)
            d = agogd(nats_server.url, dbs["cmp"], AGOG_MAX_IN_FLIGHT="50")
            try:
                d.wait_ready(60)
                agog = await run_agogd_reqs(nats_server.url, total, 50)
            finally:
                d.stop()
            dbos = run_dbos(dbs["dbos"], total, 50, work)
            recov = await recovery(nats_server.url, dbs["rec"], rec)
            loaded = await recovery(nats_server.url, dbs["rld"], rec, under_load=True, tag="RLD")
            feet = await footprint(nats_server.url, dbs["foot"], foot)
            hist = (
                await history(work, pg, args.history, 1 if args.quick else 3)
                if args.history
                else None
            )
            prof = (
                await profile(nats_server.url, dbs["ovh"], work, args.profile_out)
                if args.profile
                else []
            )
        finally:
            nats_server.stop()
            pg.stop()
    report(over, busy, agog, dbos, recov, loaded, feet, hist, prof)


def report(
    over: dict[str, Any],
    busy: dict[str, Any],
    agog: dict[str, Any],
    dbos: dict[str, Any],
    recov: dict[str, Any],
    loaded: dict[str, Any],
    feet: dict[str, Any],
    hist: dict[str, Any] | None,
    prof: list[tuple[str, float]],
) -> None:
    floor = over["floor"]
    ms = 1000
    print("1. per-stage overhead (notice published -> next assignment delivered)")
    for name, value in over["floors"].items():
        print(f"   floor {name:<22} {value * ms:7.3f} ms")
    print(f"   floor sum                    {floor * ms:7.3f} ms  (ceiling {1 / floor:.0f}/s)")
    lone = over["lone"]
    print(
        f"   agogd, one REQ at a time: p50 {lone['p50'] * ms:.2f} ms = {lone['p50'] / floor:.1f}x"
        f" the floor; p99 {lone['p99'] * ms:.2f} ms"
    )
    fifty = over["busy"]
    print(
        f"   agogd, 50 in flight: {fifty['per_second']:.0f} transitions/s;"
        f" the floor ceiling is {(1 / floor) / fifty['per_second']:.2f}x that"
    )
    sat, paced, cpu = busy["saturated"], busy["paced"], busy["cpu"]
    cores = os.cpu_count() or 1
    print(
        f"   agogd, 100 in flight, saturated: {sat['per_second']:.0f} transitions/s"
        f" (target >= 3000); CPU per transition: "
        + ", ".join(f"{name} {value * ms:.3f} ms" for name, value in cpu.items())
        + f"; {cores} cores bound it at {cores / sum(cpu.values()):.0f}/s"
    )
    print(
        f"   agogd, 100 in flight, paced (think 0-1 s): p50 {paced['p50'] * ms:.2f} ms,"
        f" p99 {paced['p99'] * ms:.2f} ms (target < 8 ms)"
    )
    disk = busy["disk"]
    print(
        f"   disk per finished REQ: {disk['per_req'] / 1024:.1f} KiB over {disk['reqs']} REQs"
        " (all tables and indexes)"
    )
    print("2. seven-step durable workflow, 50 at a time")
    for name, r in (("DBOS", dbos), ("agogd", agog)):
        print(
            f"   {name:<6} {r['per_second']:7.1f} workflows/s  p50 {r['p50'] * ms:8.1f} ms"
            f"  p99 {r['p99'] * ms:8.1f} ms  per step {r['p50'] / 7 * ms:6.2f} ms"
        )
    print(
        f"   agogd/DBOS: throughput {agog['per_second'] / dbos['per_second']:.2f}x,"
        f" per-step cost {agog['p50'] / dbos['p50']:.2f}x (target: throughput >= 3x)"
    )
    print(f"3. recovery after SIGKILL with {recov['in_flight']} REQs in flight")
    print(
        f"   ready {recov['ready']:.2f} s after the restart; all advanced after"
        f" {recov['all_advanced']:.2f} s (p50 {recov['p50']:.2f} s; target < 1 s)"
    )
    print(
        f"   killed under load ({loaded['left']} of {loaded['in_flight']} notices still to"
        f" apply, {loaded['held']} of them held unacked by the killed agogd,"
        f" {loaded['swept']} read back at the restart): ready"
        f" {loaded['ready']:.2f} s; all advanced after {loaded['all_advanced']:.2f} s"
        f" (p50 {loaded['p50']:.2f} s)"
    )
    print("4. footprint")
    print(
        f"   idle RSS {feet['idle_rss_mb']:.0f} MB (target < 120 MB), idle CPU"
        f" {feet['idle_cpu_percent']:.1f}%; RSS with {feet['in_flight']} REQs in flight"
        f" {feet['loaded_rss_mb']:.0f} MB"
    )
    if hist is not None:
        print(f"5. history: {hist['reqs']:,} finished REQs ({hist['db_bytes'] / 2**30:.1f} GiB)")
        print(
            f"   lone stage advance p50 {hist['full_p50'] * ms:.2f} ms against"
            f" {hist['empty_p50'] * ms:.2f} ms on an empty database:"
            f" {hist['full_p50'] / hist['empty_p50']:.2f}x (target <= 1.2x);"
            f" 100 in flight {hist['full_rate']:.0f}/s against {hist['empty_rate']:.0f}/s"
        )
    print_profile(prof)


def print_profile(prof: list[tuple[str, float]]) -> None:
    if prof:
        print("profile of the saturated run (share of py-spy samples):")
        print("   self = time in that package's own code; in = agogd functions on the stack")
        for name, share in prof:
            print(f"   {share:5.1f}%  {name}")


if __name__ == "__main__":
    asyncio.run(main())
