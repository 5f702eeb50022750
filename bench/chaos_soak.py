"""Chaos soak: REQs through all seven stages while replicas, NATS nodes and
Postgres fail on a seeded schedule; then prove nothing was lost or doubled.

Run (CI size is the default; the long manual variant is 5,000 REQs):

    .venv/bin/python bench/chaos_soak.py --reqs 200 --seed 1
    .venv/bin/python bench/chaos_soak.py --reqs 5000 --duration 900 --faults 60 --keep

It starts, from the project's own code, a three-node nats-server cluster with
R3 streams, one durable Postgres and three agogd replicas as processes
(``bench/chaos_stack.py``), and scripted agents that misbehave on a seeded
schedule (``bench/chaos_agents.py``). While REQs are submitted (through
OWNER_REQUESTS.md, half of them also on ``agog.requirements.new``) it injects
faults: SIGKILL of a replica then a restart, SIGKILL of a NATS node then a
restart, a Postgres stop and start, and a SIGSTOP of a replica for longer
than the consumer ack wait, then SIGCONT. It then waits for every REQ to
settle, stops the replicas and runs the checks (``bench/chaos_checks.py``).
It prints each fault with its recovery time and the verdict, writes
``verdict.json`` in the data directory, and exits 1 on any violation.
See docs/chaos.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import nats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import chaos_checks  # noqa: E402
from bench.chaos_agents import Agents, Plan  # noqa: E402
from bench.chaos_stack import Stack  # noqa: E402
from orchestrator.inbound.owner_requests import OwnerRequestsFile  # noqa: E402

KINDS = ("replica_kill", "nats_kill", "postgres_restart", "replica_pause")
TRANSITIONS = "(kind LIKE 'stage.%' OR kind LIKE 'workflow.%')"


@dataclass
class SoakConfig:
    reqs: int = 200
    seed: int = 1
    duration: float = 60.0  # seconds over which REQs are submitted and faults injected
    faults: int | None = None  # default: one per 9 s of duration, at least one of each kind
    keep: bool = False
    data_dir: Path | None = None
    ack_wait: float = 4.0  # agogd's durable consumers (the pause outlasts it)
    stage_timeout: float = 10.0  # every stage and Tim (AGOG_STAGE_TIMEOUTS)
    retries: int = 4  # per stage; see docs/chaos.md for why more than the default
    max_in_flight: int = 50
    warmup: float = 5.0  # seconds of calm before the first fault
    drain_timeout: float = 300.0
    # REQs submitted through OWNER_REQUESTS.md (the rest on NATS only): agogd
    # re-parses and rewrites the whole file per status change, so a 5,000-entry
    # file makes the mirror the bottleneck (docs/chaos.md). Default: up to 500.
    file_reqs: int | None = None
    log_level: str = "info"
    quiet: bool = False

    @property
    def fault_count(self) -> int:
        if self.faults is not None:
            return self.faults
        return max(len(KINDS), int((self.duration - self.warmup) // 9))


@dataclass
class Fault:
    kind: str
    target: int
    at: float  # planned, seconds after the first submission
    down: float  # planned outage (or pause) length
    injected: float = 0.0  # seconds after the first submission
    healed: float = 0.0  # restart / SIGCONT issued
    ready: float | None = None  # the restarted process or cluster was ready again
    next_commit: float | None = None  # seconds from injection to the next transition
    worst_wait: float | None = None  # longest notice -> next assignment around the fault
    error: str | None = None

    @property
    def label(self) -> str:
        names = {"replica": f"agogd-{self.target}", "nats": f"nats-n{self.target}"}
        return names.get(self.kind.split("_")[0], "postgres")


@dataclass
class Verdict:
    ok: bool
    reqs: int
    seed: int
    elapsed: float
    faults: list[Fault]
    checks: list[chaos_checks.Check]
    agents: dict[str, int]
    timeouts: dict[str, int]
    waits: dict[str, float]
    problems: list[str] = field(default_factory=list)
    data_dir: str = ""

    def report(self) -> str:
        out = [
            f"chaos soak: {self.reqs} REQs, seed {self.seed}, {len(self.faults)} faults,"
            " 3 agogd replicas, 3-node NATS cluster (R3 streams), 1 Postgres",
            "faults (t = seconds after the first submission; next commit = from the fault"
            " to the next committed transition; worst wait = longest an answer given"
            " during the fault waited for its next assignment):",
        ]
        for f in self.faults:
            ready = f" ready after {f.ready:.1f}s" if f.ready is not None else ""
            nxt = f"{f.next_commit:.2f}s" if f.next_commit is not None else "none"
            worst = f"{f.worst_wait:.1f}s" if f.worst_wait is not None else "-"
            down = f.healed - f.injected
            out.append(
                f"  t={f.injected:6.1f}s {f.kind:<17} {f.label:<9} down {down:4.1f}s"
                f"{ready}; next commit {nxt}; worst wait {worst}"
                + (f"; ERROR {f.error}" if f.error else "")
            )
        a = self.agents
        out.append(
            f"agents: {a.get('answered', 0)} answers, {a.get('hung', 0)} hung,"
            f" {a.get('crashed_nak', 0)} crashed+nak, {a.get('crashed_term', 0)} crashed+term,"
            f" duplicates: {a.get('dup_same_id', 0)} same Nats-Msg-Id"
            f" ({a.get('dup_same_id_dropped_by_jetstream', 0)} dropped by JetStream),"
            f" {a.get('dup_no_id', 0)} without id, {a.get('dup_late', 0)} late without id;"
            f" {a.get('redeliveries', 0)} redeliveries, {a.get('publish_retries', 0)} publish"
            " retries"
        )
        t = self.timeouts
        out.append(
            f"timeouts: {t.get('timed_out', 0)} attempts timed out ({t.get('scripted', 0)}"
            f" hung or crashed agents, {t.get('fault_induced', 0)} answered but applied after"
            " the deadline because of a fault)"
        )
        if self.waits:
            w = self.waits
            out.append(
                f"notice -> next assignment: p50 {w['p50']:.3f}s, p99 {w['p99']:.3f}s,"
                f" max {w['max']:.1f}s over {int(w['n'])} stage advances"
            )
        out.append("checks:")
        out += chaos_checks.flatten(self.checks)
        for problem in self.problems:
            out.append(f"  [FAIL] {problem}")
        violations = sum(len(c.violations) for c in self.checks) + len(self.problems)
        out.append(
            f"VERDICT: {'PASS' if self.ok else 'FAIL'} ({violations} violations) in"
            f" {self.elapsed:.0f}s; data in {self.data_dir}"
        )
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reqs": self.reqs,
            "seed": self.seed,
            "elapsed": round(self.elapsed, 1),
            "faults": [asdict(f) for f in self.faults],
            "checks": [
                {"name": c.name, "ok": c.ok, "summary": c.summary, "violations": c.violations}
                for c in self.checks
            ],
            "agents": self.agents,
            "timeouts": self.timeouts,
            "waits": self.waits,
            "problems": self.problems,
        }


def plan_faults(cfg: SoakConfig, rng: random.Random, replicas: int, nodes: int) -> list[Fault]:
    """The seeded schedule: each kind at least once, then kinds at random."""
    count = cfg.fault_count
    kinds = rng.sample(KINDS, len(KINDS))[:count]
    kinds += [rng.choice(KINDS) for _ in range(count - len(kinds))]
    slot = max(cfg.duration - cfg.warmup, 1.0) / max(count, 1)
    faults = []
    for i, kind in enumerate(kinds):
        target = rng.randrange(nodes if kind == "nats_kill" else replicas)
        down = {
            "replica_kill": rng.uniform(0.5, 3.0),
            "nats_kill": rng.uniform(1.0, 4.0),
            "postgres_restart": rng.uniform(1.0, 4.0),
            "replica_pause": cfg.ack_wait + rng.uniform(1.0, 3.0),
        }[kind]
        at = cfg.warmup + i * slot + rng.uniform(0, 0.3 * slot)
        faults.append(Fault(kind, target, round(at, 2), round(down, 2)))
    return faults


class Monitor:
    """Polls Postgres for committed transitions (workflow_events ids)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.samples: list[tuple[float, int]] = []  # (monotonic, newest transition id)
        self.errors = 0
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        conn: asyncpg.Connection | None = None
        last = 0
        while not self.stopping.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self.dsn, timeout=2)
                newest = await conn.fetchval(
                    f"SELECT max(id) FROM workflow_events WHERE id > $1 AND {TRANSITIONS}",
                    last,
                    timeout=2,
                )
                if newest is not None:
                    last = newest
                    self.samples.append((time.monotonic(), newest))
            except Exception:  # Postgres is down or restarting: reconnect
                self.errors += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
                conn = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self.stopping.wait()
        if conn is not None:
            await conn.close()

    def next_commit(self, after: float) -> float | None:
        for at, _ in self.samples:
            if at > after:
                return at - after
        return None


class Soak:
    def __init__(self, cfg: SoakConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.base = cfg.data_dir or Path(tempfile.mkdtemp(prefix="agogd-chaos-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.stack = Stack(
            self.base,
            ack_wait=cfg.ack_wait,
            retries=cfg.retries,
            stage_timeout=cfg.stage_timeout,
            max_in_flight=cfg.max_in_flight,
            log_level=cfg.log_level,
        )
        self.reqs = [f"REQ-CHAOS-{cfg.seed}-{i:05d}" for i in range(cfg.reqs)]
        in_file = min(cfg.reqs, 500) if cfg.file_reqs is None else min(cfg.file_reqs, cfg.reqs)
        self.file_reqs = set(random.Random(f"{cfg.seed}:file").sample(self.reqs, in_file))
        self.faults = plan_faults(
            cfg, self.rng, len(self.stack.replicas), len(self.stack.cluster.nodes)
        )
        self.plan = Plan(seed=cfg.seed)
        self.problems: list[str] = []
        self.t0 = 0.0
        self.submitted = 0
        self.faulted: set[str] = set()  # processes down on purpose right now
        self.nats_errors = 0

    async def _nats_error(self, exc: Exception) -> None:
        """nats-py's default prints a traceback per failed reconnect; count them."""
        self.nats_errors += 1

    def say(self, text: str) -> None:
        if not self.cfg.quiet:
            print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", flush=True)

    # --- submission ----------------------------------------------------------
    async def submit(self, agents: Agents) -> None:
        """Submit over the first 80% of the duration: entries appended to
        OWNER_REQUESTS.md (under its lock, as agogd writes it), half of them
        also on NATS intake; REQs beyond ``file_reqs`` on NATS only."""
        span = self.cfg.duration * 0.8
        owner = OwnerRequestsFile(self.stack.owner_file)
        due_at = [span * i / max(len(self.reqs), 1) for i in range(len(self.reqs))]
        both = {req for req in self.reqs if self.rng.random() < 0.5}
        index = 0
        while index < len(self.reqs):
            now = time.monotonic() - self.t0
            batch = []
            while index < len(self.reqs) and due_at[index] <= now:
                batch.append(self.reqs[index])
                index += 1
            if batch:
                text = "".join(
                    _entry(req, self.rng.randrange(4)) for req in batch if req in self.file_reqs
                )
                if text:
                    await asyncio.to_thread(_append, owner, text)
                for req in batch:
                    if req in both or req not in self.file_reqs:
                        body = {"req_number": req, "title": f"Chaos {req}", "priority": "P2"}
                        await agents._publish(
                            "agog.requirements.new", json.dumps(body).encode(), f"intake:{req}"
                        )
                self.submitted = index
            await asyncio.sleep(0.25)

    # --- faults ----------------------------------------------------------------
    async def inject_all(self) -> None:
        for fault in self.faults:
            wait = fault.at - (time.monotonic() - self.t0)
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self.inject(fault)
            except Exception as exc:
                fault.error = repr(exc)
                self.problems.append(f"fault {fault.kind} on {fault.label} failed: {exc!r}")
            await asyncio.sleep(1.0)  # faults do not overlap

    async def inject(self, fault: Fault) -> None:
        stack = self.stack
        self.faulted.add(fault.label)
        fault.injected = time.monotonic() - self.t0
        self.say(f"fault: {fault.kind} {fault.label} for {fault.down:.1f}s")
        try:
            if fault.kind == "replica_kill":
                replica = stack.replicas[fault.target]
                replica.kill()
                await asyncio.sleep(fault.down)
                replica.start()
                fault.healed = time.monotonic() - self.t0
                await asyncio.to_thread(replica.wait_ready)
            elif fault.kind == "nats_kill":
                await asyncio.to_thread(stack.cluster.kill, fault.target)
                await asyncio.sleep(fault.down)
                await asyncio.to_thread(stack.cluster.start_node, fault.target)
                fault.healed = time.monotonic() - self.t0
                await asyncio.to_thread(stack.cluster.wait_ready)
            elif fault.kind == "postgres_restart":
                await asyncio.to_thread(stack.postgres.stop)
                await asyncio.sleep(fault.down)
                await asyncio.to_thread(stack.postgres.start)
                fault.healed = time.monotonic() - self.t0
            else:
                replica = stack.replicas[fault.target]
                replica.pause()
                await asyncio.sleep(fault.down)
                replica.resume()
                fault.healed = time.monotonic() - self.t0
            fault.ready = time.monotonic() - self.t0 - fault.healed
        finally:
            self.faulted.discard(fault.label)
        self.say(f"healed: {fault.kind} {fault.label} (ready after {fault.ready:.1f}s)")

    async def watchdog(self) -> None:
        """A replica or node that dies without being faulted is a failure."""
        while True:
            await asyncio.sleep(1.0)
            for replica in self.stack.replicas:
                if replica.name not in self.faulted and not replica.running:
                    code = replica.proc.returncode if replica.proc else None
                    self.problems.append(f"{replica.name} exited by itself (code {code})")
                    self.say(f"{replica.name} exited by itself (code {code}); restarting it")
                    replica.start()

    async def progress(self) -> None:
        while True:
            await asyncio.sleep(10)
            with contextlib.suppress(Exception):
                counts = await _statuses(self.stack.dsn)
                shown = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                self.say(f"progress: {self.submitted}/{len(self.reqs)} submitted; {shown}")

    # --- the end ---------------------------------------------------------------
    async def wait_settled(self) -> bool:
        """Every REQ out of PENDING/IN_PROGRESS, no RUNNING attempt, and the
        file mirrored; False at the drain timeout."""
        deadline = time.monotonic() + self.cfg.drain_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn = await asyncpg.connect(self.stack.dsn, timeout=5)
                try:
                    row = await conn.fetchrow(
                        "SELECT (SELECT count(*) FROM workflow_state WHERE status NOT IN"
                        " ('PENDING', 'IN_PROGRESS', 'NEW')) AS settled,"
                        " (SELECT count(*) FROM stage_attempts WHERE status = 'RUNNING')"
                        "  AS running,"
                        " (SELECT count(*) FROM workflow_state"
                        "  WHERE mirrored_status IS DISTINCT FROM status) AS unmirrored,"
                        " (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS unpublished"
                    )
                finally:
                    await conn.close()
                if (
                    row["settled"] >= len(self.reqs)
                    and row["running"] == 0
                    and row["unmirrored"] == 0
                    and row["unpublished"] == 0
                ):
                    return True
            await asyncio.sleep(0.5)
        return False

    def waits(self, snap: chaos_checks.Snapshot, record: Any) -> tuple[dict[str, float], list]:
        """Notice -> next assignment, per stage advance: (publish time, wait)."""
        advances = []
        for (req, stage, attempt), rows in snap.attempts.items():
            if rows[0]["status"] != "COMPLETE" or stage >= len(self.stack.pipeline.stages):
                continue
            published = record.published.get((req, stage, attempt))
            arrived = record.arrived.get((req, stage + 1, 1))
            if published is not None and arrived is not None:
                advances.append((published - self.t0, arrived - published))
        values = sorted(w for _, w in advances)
        if not values:
            return {}, advances
        summary = {
            "p50": statistics.median(values),
            "p99": values[min(len(values) - 1, int(0.99 * len(values)))],
            "max": values[-1],
            "n": float(len(values)),
        }
        return summary, advances

    async def run(self) -> Verdict:
        started = time.monotonic()
        self.t0 = started
        self.say(f"starting in {self.base}: 3-node NATS cluster, Postgres, 3 agogd replicas")
        nc = None
        tasks: list[asyncio.Task[Any]] = []
        monitor = Monitor(self.stack.dsn)
        agents: Agents | None = None
        ok = False
        try:
            await asyncio.to_thread(self.stack.start)
            nc = await nats.connect(
                servers=self.stack.cluster.urls,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.2,
                name="chaos-agents",
                error_cb=self._nats_error,
            )
            agents = await Agents(nc, self.plan).start()
            tasks = [
                asyncio.create_task(monitor.run()),
                asyncio.create_task(self.watchdog()),
                asyncio.create_task(self.progress()),
            ]
            self.t0 = time.monotonic()
            self.say(f"ready; submitting {len(self.reqs)} REQs, {len(self.faults)} faults planned")
            await asyncio.gather(self.submit(agents), self.inject_all())
            self.say("all submitted, all faults healed; waiting for every REQ to settle")
            if not await self.wait_settled():
                self.problems.append(f"not settled after {self.cfg.drain_timeout:.0f}s of drain")
            await agents.stop()
            for task in tasks[1:]:
                task.cancel()
            monitor.stopping.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            codes = await asyncio.to_thread(self.stack.stop_replicas)
            self.problems += [f"{n} exited with code {c} on SIGTERM" for n, c in codes.items() if c]
            self.say("replicas stopped; checking")
            snap = await chaos_checks.snapshot(self.stack.dsn)
            stored = await chaos_checks.stored_assignments(self.stack.cluster.urls)
            checks = chaos_checks.run_all(
                snap,
                self.reqs,
                agents.record,
                stored,
                self.stack.owner_file,
                self.file_reqs,
                self.stack.pipeline,
            )
            summary, advances = self.waits(snap, agents.record)
            for fault in self.faults:
                fault.next_commit = monitor.next_commit(self.t0 + fault.injected)
                around = [
                    w for at, w in advances if fault.injected - 1.0 <= at <= max(fault.healed, 0)
                ]
                fault.worst_wait = max(around) if around else None
            ok = all(c.ok for c in checks) and not self.problems
            verdict = Verdict(
                ok=ok,
                reqs=len(self.reqs),
                seed=self.cfg.seed,
                elapsed=time.monotonic() - started,
                faults=self.faults,
                checks=checks,
                agents=dict(agents.record.stats),
                timeouts=chaos_checks.timeouts(snap, agents.record),
                waits=summary,
                problems=self.problems,
                data_dir=str(self.base),
            )
            (self.base / "verdict.json").write_text(json.dumps(verdict.to_json(), indent=2))
            return verdict
        finally:
            for task in tasks:
                task.cancel()
            monitor.stopping.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
            await asyncio.to_thread(self.stack.teardown)
            if not self.cfg.keep and ok:
                shutil.rmtree(self.base, ignore_errors=True)


def _entry(req: str, priority: int) -> str:
    return (
        f"### {req}: Chaos feature {req.rsplit('-', 1)[-1]}\n\n"
        f"**Status**: NEW\n**Priority**: P{priority}\n**Owner**: chaos-soak\n\n"
        "**Requirements**:\n- survive whatever fails\n\n"
    )


def _append(owner: OwnerRequestsFile, text: str) -> None:
    with owner.locked(), owner.path.open("a", encoding="utf-8") as f:
        f.write(text)


async def _statuses(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn, timeout=2)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM workflow_state GROUP BY status")
    finally:
        await conn.close()
    return {r["status"]: r["n"] for r in rows}


async def run(cfg: SoakConfig) -> Verdict:
    return await Soak(cfg).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reqs", type=int, default=200, help="REQs to submit (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault and agent schedule")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds over which REQs are submitted and faults injected"
        " (default: 60, or reqs/4 beyond 240 REQs)",
    )
    parser.add_argument(
        "--faults", type=int, default=None, help="faults to inject (default: one per 9 s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    parser.add_argument("--data-dir", type=Path, default=None, help="where to run (default: tmp)")
    parser.add_argument(
        "--file-reqs",
        type=int,
        default=None,
        help="REQs submitted through OWNER_REQUESTS.md (default: up to 500; the rest on NATS)",
    )
    parser.add_argument("--stage-timeout", type=float, default=10.0)
    parser.add_argument("--drain-timeout", type=float, default=None)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else max(60.0, args.reqs / 4)
    cfg = SoakConfig(
        reqs=args.reqs,
        seed=args.seed,
        duration=duration,
        faults=args.faults,
        keep=args.keep,
        data_dir=args.data_dir,
        stage_timeout=args.stage_timeout,
        file_reqs=args.file_reqs,
        drain_timeout=args.drain_timeout or max(300.0, args.reqs / 10),
        log_level=args.log_level,
    )
    verdict = asyncio.run(run(cfg))
    print(verdict.report(), flush=True)
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
