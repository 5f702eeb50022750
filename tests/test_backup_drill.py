"""The backup drill (issue 20): agogd's own state outlives the loss of both
servers' data, through ``agogctl backup create`` and ``agogctl backup restore``.

Real nats-server, a PostgreSQL of the test's own (its data is destroyed), a
real agogd process (killed with SIGKILL) and scripted agents that take their
assignments the way agogd's runner does: from each agent's durable consumer
(the registry's ``[runner_consumer]``), acking only after the answer is
stored, so an assignment that a restore brings back unanswered is delivered
again, and one answered before the backup is not.

The story: REQs in flight at different stages, some with an attempt claimed
and its agent at work; a backup is taken while the agents keep working; more
work happens (stages complete, new REQs are submitted); agogd is killed, both
servers' data directories are deleted and fresh empty servers start on the
same ports; the backup is restored; agogd starts again; the agents keep
answering. Each promise of the issue is one assertion with its message.

REQs the owner asked for only after the backup (entries added to
OWNER_REQUESTS.md) are lost with the data: their rows were made after the
backup. The file outlives the servers, with those entries in it, so the
restore refuses to overwrite it; the operator moves it aside, restores (the
backup's copy of the file comes back), starts agogd and adds those entries
again as NEW (the runbook's steps). The drill asserts that they were absent
after the restore, and that they then go through like the others.

The events stream holds a history (as a real one does), and the backup is
held 4 s between the streams' snapshot and the dump (the failpoint
``backup.streams_snapshotted=pause:4``), so agogd applies messages in
between: the window the restore has to reconcile. The drill asserts that it
did. One REQ's work is held by its agent until the backup is done, so the
backup always finds work unfinished.

The agents' run log is the ground truth for "ran twice". Each run is
classified by when its agent did the work, against the backup's start (``b0``,
just before ``agogctl backup create`` starts) and end (``b1``):

* committed before the backup (COMPLETE in Postgres at ``b0``): one run, never
  again;
* done after the backup (the agent took it after ``b1``, answered after it, or
  had not answered when the data was destroyed): exactly two runs, the
  original and one redo;
* done while the backup ran: one or two (the streams are snapshotted before
  Postgres is dumped, so either can hold it);
* first run after the restore: one.

Every attempt of every stage is attempt 1: the redo goes through the same
attempt and its idempotency keys, not through a timeout and a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from orchestrator.embedded import NatsServer, PostgresServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from orchestrator.inbound.owner_requests import OwnerRequestsFile
from orchestrator.runtime import services
from orchestrator.runtime.pull import PullFeed
from orchestrator.runtime.services import Outcome
from orchestrator.runtime.state_log import StateLog
from orchestrator.runtime.topology import Reconciler
from tests.agents import PIPELINE, ScriptedAgents, submit
from tests.test_ctl_e2e import AGOGCTL
from tests.test_ctl_e2e import _env as ctl_env
from tests.test_engine_faults import _env as agogd_env

STEPS = (*PIPELINE.stages, *PIPELINE.followups)
FINAL = len(STEPS)  # every stage, and the follow-ups after them
# The events stream's history, as a real one holds: infra events nobody
# consumes (10 MiB), snapshotted and restored with the rest.
HISTORY_EVENTS, HISTORY_BYTES = 5_000, 2048
ACK_WAIT = 10.0  # the agents' consumers: far above one piece of work (at most 1.2 s)
Key = tuple[str, int, int]  # (REQ, stage, attempt)

# The rows committed before the backup, compared on their keys after the restore.
KEYS: dict[str, tuple[str, ...]] = {
    "stage_attempts": ("req_number", "stage", "attempt"),
    "nats_deliverable_cache": ("req_number", "agent", "stage"),
    "deliverable_history": ("id",),
    "workflow_events": ("id",),
}


@dataclass
class Run:
    """One piece of work an agent did: when it took the assignment and answered."""

    key: Key
    started: float
    answered: float | None = None


class RunnerAgents(ScriptedAgents):
    """Scripted agents reading each agent's durable consumer, like agogd's runner:
    an assignment is acked once its answer is stored in JetStream."""

    def __init__(self, nc: NATS, work: tuple[float, float] = (0.2, 1.2)) -> None:
        super().__init__(nc)
        self.work = work
        self.runs: list[Run] = []
        # Work of these REQs is taken but not answered until ``release``: a REQ
        # the backup is sure to find unfinished, however fast the machine.
        self.held: set[str] = set()
        self.release = asyncio.Event()
        self.stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> RunnerAgents:
        reconciler = Reconciler(self.nc, PIPELINE)
        for stage in STEPS:
            spec = replace(PIPELINE.runner_consumer(stage.agent), ack_wait=ACK_WAIT)
            stream = spec.streams[0]
            await reconciler.reconcile_consumer(stream, spec)
            feed = await PullFeed(self.nc, stream, spec.name, batch=1).start()
            loop = services.consume(
                feed,
                self._handle,
                name=spec.name,
                stopping=self.stopping,
                states=StateLog(),
                concurrency=8,
            )
            self._loops.append(asyncio.create_task(loop))
        return self

    async def _handle(self, msgs: list[Msg]) -> list[Outcome]:
        for msg in msgs:
            body = json.loads(msg.data)
            run = Run((body["req_number"], body["stageIndex"], body["attempt"]), time.monotonic())
            self.runs.append(run)
            while body["req_number"] in self.held and not self.release.is_set():
                await msg.in_progress()  # still at work: no redelivery meanwhile
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), ACK_WAIT / 4)
            await asyncio.sleep(self._rng.uniform(*self.work))
            await self._on_assignment(msg)  # raises while NATS is away: nak'd, comes back
            run.answered = time.monotonic()
        return ["ack"] * len(msgs)

    def answered_since(self, since: float) -> list[Run]:
        return [r for r in self.runs if r.answered is not None and r.answered > since]

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.gather(*self._loops, return_exceptions=True)


# --- Postgres --------------------------------------------------------------------
async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def committed(dsn: str) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """Every row of the compared tables that can no longer change (an attempt
    still RUNNING can), by key; and each REQ's state row."""
    out: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    for table, key in {**KEYS, "workflow_state": ("req_number",)}.items():
        rows = await _fetch(dsn, f"SELECT * FROM {table}")
        out[table] = {tuple(r[k] for k in key): dict(r) for r in rows}
    out["stage_attempts"] = {
        k: r for k, r in out["stage_attempts"].items() if r["status"] != "RUNNING"
    }
    return out


async def in_flight(dsn: str) -> tuple[int, set[int]]:
    """Attempts claimed now, and the stages the unfinished REQs stand at."""
    running = await _fetch(dsn, "SELECT stage FROM stage_attempts WHERE status = 'RUNNING'")
    stages = await _fetch(
        dsn, "SELECT current_stage FROM workflow_state WHERE status = 'IN_PROGRESS'"
    )
    return len(running), {r["current_stage"] for r in stages}


async def finished(dsn: str, reqs: list[str]) -> set[str]:
    """REQs at their end: deployed, every stage and follow-up complete, nothing running."""
    rows = await _fetch(
        dsn,
        "SELECT ws.req_number FROM workflow_state ws WHERE ws.req_number = ANY($1::text[])"
        " AND ws.status = 'DEPLOYED' AND NOT EXISTS (SELECT 1 FROM stage_attempts a"
        "  WHERE a.req_number = ws.req_number AND a.status = 'RUNNING')"
        " AND (SELECT count(DISTINCT stage) FROM stage_attempts a WHERE a.req_number ="
        "  ws.req_number AND a.status = 'COMPLETE') = $2",
        reqs,
        FINAL,
    )
    return {r["req_number"] for r in rows}


async def wait_until(check: Any, timeout: float, what: str) -> Any:
    """Poll ``check`` (a coroutine function returning (done, detail)) until done;
    returns the detail."""
    deadline = time.monotonic() + timeout
    detail = None
    while time.monotonic() < deadline:
        done, detail = await check()
        if done:
            return detail
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {detail!r})")


# --- NATS ------------------------------------------------------------------------
async def stream_states(nc: NATS) -> dict[str, tuple[int, int]]:
    """(first, last) sequence of every stream on the server."""
    return {
        info.config.name: (info.state.first_seq, info.state.last_seq)
        for info in await nc.jetstream().streams_info()
        if info.config.name
    }


async def stored_msg_ids(nc: NATS) -> dict[str, Counter[str]]:
    """How often each Nats-Msg-Id is stored, per stream (agogd's publishes carry
    one), read through a headers-only consumer of each stream."""
    js = nc.jetstream()
    out: dict[str, Counter[str]] = {}
    for name in await stream_states(nc):
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE, headers_only=True, mem_storage=True, inactive_threshold=60
        )
        info = await js.add_consumer(name, config)
        sub = await js.pull_subscribe_bind(info.name, name)
        ids: Counter[str] = Counter()
        left = info.num_pending
        while left > 0:
            for msg in await sub.fetch(min(left, 1000), timeout=10):
                left -= 1
                if msg.headers and msg.headers.get("Nats-Msg-Id"):
                    ids[msg.headers["Nats-Msg-Id"]] += 1
        await sub.unsubscribe()
        await js.delete_consumer(name, info.name)
        out[name] = ids
    return out


async def fill_events_history(nc: NATS) -> None:
    """HISTORY_EVENTS infra events of HISTORY_BYTES each, none alike (they are
    stored compressed in the snapshot)."""
    js = nc.jetstream()
    subject = PIPELINE.subject("infra_event", event="restarted", target="drill-history")
    for _ in range(HISTORY_EVENTS // 500):
        bodies = [json.dumps({"detail": os.urandom(HISTORY_BYTES // 2).hex()}) for _ in range(500)]
        await asyncio.gather(*(js.publish(subject, b.encode()) for b in bodies))


async def applied_in_window(dsn: str, manifest: dict[str, Any]) -> int:
    """Messages Postgres applied before its dump that the streams' snapshot lacks."""
    last = {name: s["last_seq"] for name, s in manifest["nats"]["streams"].items()}
    rows = await _fetch(
        dsn,
        "SELECT stream, stream_seq FROM processed_messages WHERE processed_at <= $1",
        datetime.fromisoformat(manifest["postgres"]["dumped_at"]),
    )
    return sum(1 for r in rows if r["stream_seq"] > last.get(r["stream"], 0))


# --- the operator's commands -------------------------------------------------------
async def run_ctl(env: dict[str, str], *args: str, timeout: float = 240) -> Any:
    """``agogctl ARGS --json``, as a process; its CompletedProcess."""
    return await asyncio.to_thread(
        subprocess.run,
        [AGOGCTL, *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


async def agogctl(env: dict[str, str], *args: str) -> Any:
    """``agogctl ARGS --json``: its JSON output, failing with its output otherwise."""
    result = await run_ctl(env, *args)
    assert result.returncode == 0, (
        f"agogctl {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return json.loads(result.stdout)


def _moved(before: dict[tuple[Any, ...], dict[str, Any]], after: dict[Any, Any]) -> list[Any]:
    """Keys of ``before`` missing from ``after`` or different there."""
    return [k for k, row in before.items() if after.get(k) != row]


@pytest.mark.timeout(600)
async def test_backup_drill_loses_nothing_and_redoes_only_the_work_after_the_backup(
    nats_server: NatsServer, work_dir: Path, tmp_path: Path
) -> None:
    # Not under tmp_path: pytest keeps its root 0700, which the server's own
    # user could not traverse when another pytest run resets it meanwhile.
    pg_dir = work_dir / f"drill-pg-{tmp_path.name}"
    pg = PostgresServer(pg_dir, durable=False).start()
    dsn = pg.dsn()
    owner = tmp_path / "OWNER_REQUESTS.md"
    env = ctl_env(
        None,
        AGOG_NATS_URL=nats_server.url,
        AGOG_POSTGRES_DSN=dsn,
        AGOG_OWNER_REQUESTS_FILE=str(owner),
    )
    nc = await nats.connect(
        nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=_quiet
    )
    agogd = {
        **agogd_env(nats_server, dsn),
        "AGOG_OWNER_REQUESTS_FILE": str(owner),
        "AGOG_OWNER_REQUESTS_INTERVAL": "0.5",
    }
    daemon = DaemonProcess(agogd).start()
    agents: RunnerAgents | None = None
    try:
        daemon.wait_ready(90)
        await fill_events_history(nc)
        agents = await RunnerAgents(nc).start()

        # REQs in flight: three finished (the owner's, from OWNER_REQUESTS.md), six at
        # different stages with their agents at work, and twelve just submitted, whose
        # first answers come in while the backup runs.
        done_early = [f"REQ-DRILL-{i}" for i in range(1, 4)]
        await add_entries(owner, done_early)
        await wait_until(lambda: _all_finished(dsn, done_early), 120, "the first REQs to finish")
        in_progress = [f"REQ-DRILL-{i}" for i in range(4, 10)]
        for req in in_progress:
            await submit(nc, req)
            await asyncio.sleep(0.7)
        await wait_until(lambda: _spread(dsn), 60, "attempts claimed at three stages or more")
        arriving = [f"REQ-DRILL-{i}" for i in range(10, 22)]
        agents.held = {arriving[-1]}
        for req in arriving:
            await submit(nc, req)
        await wait_until(lambda: _known(dsn, arriving), 30, "the new REQs to be taken in")
        before_reqs = done_early + in_progress + arriving

        # The backup, taken while the agents keep working.
        at_backup = await committed(dsn)
        # The backup holds 4 s between the streams' snapshot and the dump (a
        # failpoint): the agents keep answering, so agogd applies messages the
        # snapshot lacks, the window the restore has to reconcile, on any machine.
        created = await agogctl(
            {**env, "AGOG_FAILPOINTS": "backup.streams_snapshotted=pause:4"},
            "backup",
            "create",
            "--to",
            str(tmp_path / "backups"),
        )
        b1 = time.monotonic()
        agents.release.set()
        archive = Path(created["archive"])
        assert await asyncio.to_thread(archive.is_file), f"backup create named no file: {created}"
        assert len(await finished(dsn, before_reqs)) < len(before_reqs), (
            "every REQ in flight finished while the backup ran: no work left for after it"
        )
        await agogctl(env, "backup", "verify", str(archive))
        assert set(await stream_states(nc)) == {s.name for s in PIPELINE.streams}, (
            "verify left streams of its own behind"
        )

        # More work: stages complete, and the owner asks for new REQs.
        after_reqs = [f"REQ-DRILL-{i}" for i in range(22, 25)]
        await add_entries(owner, after_reqs)
        await wait_until(
            lambda: _stages_after(dsn, agents, b1, after_reqs), 120, "work after the backup"
        )
        lost_work = {r.key for r in agents.answered_since(b1)}
        window = await applied_in_window(dsn, created["manifest"])
        assert window, (
            "no message was applied between the streams' snapshot and the dump: the drill"
            f" missed the window it is there to test ({created['manifest']['nats']})"
        )

        # Disaster: agogd is killed, both servers' data is destroyed.
        daemon.signal(signal.SIGKILL)
        daemon.wait_exit(15)
        pg.kill()
        shutil.rmtree(pg.data_dir)
        nats_server.kill()
        lost_at = time.monotonic()
        shutil.rmtree(nats_server.data_dir)
        pg = PostgresServer(pg_dir, port=pg.port, durable=False).start()
        nats_server.start()
        await wait_until(lambda: _connected(nc), 30, "the test's client to reconnect to NATS")
        assert await stream_states(nc) == {}, "the fresh nats-server has streams"
        assert not await _fetch(dsn, "SELECT 1 FROM pg_tables WHERE schemaname = 'public'"), (
            "the fresh PostgreSQL has tables"
        )

        # The restore, onto the empty servers, with agogd stopped. OWNER_REQUESTS.md
        # changed since the backup: the restore leaves it be, until it is moved aside.
        refused = await run_ctl(env, "backup", "restore", str(archive))
        assert refused.returncode != 0 and "OWNER_REQUESTS.md" in refused.stderr, (
            f"a restore would overwrite the newer OWNER_REQUESTS.md: {refused}"
        )
        aside = owner.with_name("OWNER_REQUESTS.md.after-backup")
        await asyncio.to_thread(owner.rename, aside)
        done = await agogctl(env, "backup", "restore", str(archive))
        assert done["outbox"]["reset"], f"no outbox row to publish again: {done['outbox']}"
        restored = await committed(dsn)
        print(
            f"drill: {window} messages applied between the snapshot and the dump,"
            f" {len(lost_work)} stages done after the backup, restore: {done['outbox']}"
        )
        for table, rows in at_backup.items():
            if table == "workflow_state":
                continue
            moved = _moved(rows, restored[table])
            assert not moved, f"{table}: rows committed before the backup lost or changed: {moved}"
        for req, row in at_backup["workflow_state"].items():
            assert req in restored["workflow_state"], f"{req} was lost by the restore"
            assert restored["workflow_state"][req]["version"] >= row["version"], (
                f"{req}: the restored state is older than at the backup"
            )
        assert not set(after_reqs) & set(restored["workflow_state"]), (
            "REQs submitted after the backup came back from it"
        )
        in_file = {e.req_number for e in await asyncio.to_thread(OwnerRequestsFile(owner).read)}
        assert in_file == set(done_early), f"OWNER_REQUESTS.md is not the backup's: {in_file}"
        await _assert_no_seq_beyond_streams(dsn, created["manifest"])
        again = await run_ctl(env, "backup", "restore", str(archive))
        assert again.returncode != 0, "a second restore overwrote the restored servers"
        assert await committed(dsn) == restored, "a refused restore changed the database"

        # agogd starts again; the owner's requests made after the backup are made again
        # (the entries of the file moved aside, as NEW).
        daemon = DaemonProcess(agogd).start()
        daemon.wait_ready(90)
        await add_entries(owner, after_reqs)
        everyone = before_reqs + after_reqs
        await wait_until(
            lambda: _all_finished(dsn, everyone), 240, "every REQ to reach its end after restore"
        )
        await wait_until(lambda: _file_shows_deployed(owner), 30, "the file to show DEPLOYED")
        final = await committed(dsn)
        attempts = await _fetch(dsn, "SELECT req_number, stage, attempt FROM stage_attempts")
        stored = await stored_msg_ids(nc)
    finally:
        if agents is not None:
            await agents.stop()
        daemon.stop()
        await nc.close()
        pg.stop()

    # Nothing committed before the backup was re-applied after the restore either.
    moved = _moved(at_backup["stage_attempts"], final["stage_attempts"])
    assert not moved, f"attempts committed before the backup changed after the restore: {moved}"
    moved = _moved(at_backup["nats_deliverable_cache"], final["nats_deliverable_cache"])
    assert not moved, f"deliverables cached before the backup changed after the restore: {moved}"

    _assert_runs(agents, set(at_backup["stage_attempts"]), lost_work, b1, lost_at)
    retried = sorted(
        (r["req_number"], r["stage"], r["attempt"]) for r in attempts if r["attempt"] > 1
    )
    assert not retried, f"attempts past the first (a timeout or a lost assignment): {retried}"
    assert len(attempts) == len(everyone) * FINAL, "each REQ runs each stage once"
    dupes = {s: [i for i, n in ids.items() if n > 1] for s, ids in stored.items()}
    assert not any(dupes.values()), f"messages stored twice under one Nats-Msg-Id: {dupes}"


def _assert_runs(
    agents: RunnerAgents, committed_keys: set[Any], lost_work: set[Key], b1: float, lost_at: float
) -> None:
    """The agents' own log: how often each (REQ, stage, attempt) ran, by when it was done."""
    by_key: dict[Key, list[Run]] = defaultdict(list)
    for run in agents.runs:
        by_key[run.key].append(run)
    twice = {k: len(by_key[k]) for k in committed_keys if len(by_key[k]) != 1}
    assert not twice, f"stages committed before the backup ran again: {twice}"
    assert lost_work, "no stage completed between the backup and the disaster"
    redone = {}
    for key, runs in by_key.items():
        first = runs[0]
        if first.started > lost_at:
            expected: tuple[int, ...] = (1,)  # first done after the restore
        elif first.started > b1 or first.answered is None or first.answered > b1:
            expected = (2,)  # done after the backup: redone exactly once
        elif key in committed_keys:
            continue  # asserted above
        else:
            expected = (1, 2)  # done while the backup ran
        if len(runs) not in expected:
            redone[key] = (len(runs), expected)
    assert not redone, f"runs per (REQ, stage, attempt) not as expected (runs, expected): {redone}"
    assert all(len(by_key[k]) == 2 for k in lost_work), "work after the backup was not redone once"


def _entry(req: str) -> str:
    return f"### {req}: A feature\n\n**Status**: NEW\n\n"


async def add_entries(path: Path, reqs: list[str]) -> None:
    """The owner adds entries, under the lock agogd's own writes take."""

    def append() -> None:
        with OwnerRequestsFile(path).locked(), path.open("a") as fh:
            fh.write("".join(_entry(r) for r in reqs))

    await asyncio.to_thread(append)


async def _file_shows_deployed(path: Path) -> tuple[bool, Any]:
    entries = await asyncio.to_thread(OwnerRequestsFile(path).read)
    statuses = {e.req_number: e.status for e in entries}
    return set(statuses.values()) == {"DEPLOYED"}, statuses


async def _spread(dsn: str) -> tuple[bool, Any]:
    """Two attempts claimed or more, the unfinished REQs at three stages or more."""
    claimed, stages = await in_flight(dsn)
    return claimed >= 2 and len(stages) >= 3, (claimed, stages)


async def _known(dsn: str, reqs: list[str]) -> tuple[bool, Any]:
    rows = await _fetch(
        dsn, "SELECT req_number FROM workflow_state WHERE req_number = ANY($1::text[])", reqs
    )
    return len(rows) == len(reqs), sorted(r["req_number"] for r in rows)


async def _stages_after(
    dsn: str, agents: RunnerAgents, since: float, reqs: list[str]
) -> tuple[bool, Any]:
    """Ten stages answered after the backup, and each new REQ two stages in."""
    rows = await _fetch(
        dsn,
        "SELECT req_number, current_stage FROM workflow_state WHERE req_number = ANY($1::text[])",
        reqs,
    )
    stages = {r["req_number"]: r["current_stage"] for r in rows}
    answered = len(agents.answered_since(since))
    ok = answered >= 10 and len(stages) == len(reqs) and min(s or 0 for s in stages.values()) >= 2
    return ok, (answered, stages)


async def _quiet(_exc: Exception) -> None:
    """The client's reconnect errors while the servers are being replaced: expected."""


async def _connected(nc: NATS) -> tuple[bool, Any]:
    try:
        await nc.flush(timeout=1)
        return True, None
    except Exception as exc:  # still reconnecting
        return False, repr(exc)


async def _all_finished(dsn: str, reqs: list[str]) -> tuple[bool, Any]:
    left = sorted(set(reqs) - await finished(dsn, reqs))
    return not left, left


async def _assert_no_seq_beyond_streams(dsn: str, manifest: dict[str, Any]) -> None:
    """Postgres must claim no stream position the restored streams had not
    reached (their snapshot's last sequence: the agents publish into them at
    once): the next message stored there would take that sequence and be
    skipped as already processed (agogd dedupes by stream and sequence)."""
    last = {name: s["last_seq"] for name, s in manifest["nats"]["streams"].items()}
    rows = await _fetch(
        dsn, "SELECT stream, max(stream_seq) AS seq FROM processed_messages GROUP BY stream"
    )
    ahead = {r["stream"]: (r["seq"], last.get(r["stream"])) for r in rows}
    ahead = {s: v for s, v in ahead.items() if v[1] is None or v[0] > v[1]}
    assert not ahead, (
        "processed_messages claims sequences past the restored streams' last"
        f" (stream: (claimed, last)): {ahead}"
    )
