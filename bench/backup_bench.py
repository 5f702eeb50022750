"""Time to back up, verify and restore agogd's own state, by the size of its
history (issue 20).

Run: .venv/bin/python bench/backup_bench.py            # --levels 1000,10000 --rounds 2
     .venv/bin/python bench/backup_bench.py --quick    # smoke test, a few minutes

One durable PostgreSQL (orchestrator.embedded) serves the run, and each level
gets a nats-server of its own. The history is made the way bench/growth_bench.py
makes it: one REQ goes through the whole pipeline with agogd on a template
database, and its rows are copied N times with COPY (the real schema, every
index). Its stream messages are copied N times too (the same subjects and
bodies, with the copy's REQ id and a Nats-Msg-Id of its own), so the streams
hold what N REQs leave there, within the registry's limits (a deliverable
stream keeps its last 10,000 messages, the events stream 100 MiB).

Each round of a level then times, as an operator runs them (the real
``agogctl`` processes):

* ``agogctl backup create`` of the loaded servers;
* ``agogctl backup verify`` of that archive;
* ``agogctl backup restore`` of it onto empty servers (a fresh database in the
  same PostgreSQL, a fresh nats-server);

and, in the same run and on the same database, the baseline: a raw
``pg_dump`` and ``pg_restore`` alone (orchestrator/runtime/pg_tools.py, the
very calls agogctl makes), so the ratios show what the streams, the manifest
and the checks add. Figures are the median of the rounds.

The restore's own account of its parts (its ``--json`` "seconds": the
streams, the read of their Nats-Msg-Ids that decides which outbox rows go out
again, Postgres with the reconciliation) is reported beside its total; the
rest is the process's start, the unpacking and the checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.js.errors import NotFoundError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.growth_bench import (  # noqa: E402
    HISTORY_REQ,
    TEMPLATE_REQ,
    load_history,
    make_template,
    migrate_db,
    say,
    size,
)
from orchestrator.core import registry  # noqa: E402
from orchestrator.embedded import NatsServer, PostgresServer  # noqa: E402
from orchestrator.runtime import logs, pg_tools  # noqa: E402
from orchestrator.runtime.topology import Reconciler  # noqa: E402

PIPELINE = registry.load()
AGOGCTL = str(Path(sys.executable).parent / "agogctl")
WINDOW = 2000  # publishes in flight at once while the streams are filled
# The parts of a restore it times itself (its --json "seconds"): the streams'
# restore, the read of their Nats-Msg-Ids that decides which outbox rows go out
# again, and Postgres's restore with the reconciliation.
STEPS = ("streams", "stored_ids", "postgres")


@dataclass(frozen=True)
class TemplateMsg:
    """One message the template REQ left on a stream."""

    subject: str
    data: bytes
    msg_id: str | None


@dataclass
class Level:
    reqs: int
    db_bytes: int = 0
    stream_msgs: int = 0
    stream_bytes: int = 0
    archive_bytes: int = 0
    times: dict[str, list[float]] = field(default_factory=dict)

    def add(self, what: str, seconds: float) -> None:
        self.times.setdefault(what, []).append(seconds)

    def median(self, what: str) -> float:
        return statistics.median(self.times[what])


# --- the streams' history ------------------------------------------------------------
async def template_messages(url: str) -> list[TemplateMsg]:
    """Every message on the registry's streams that names the template REQ."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    out: list[TemplateMsg] = []
    try:
        for spec in PIPELINE.streams:
            info = await js.stream_info(spec.name)
            for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(spec.name, seq)
                except NotFoundError:
                    continue
                data = msg.data or b""
                if TEMPLATE_REQ in (msg.subject or "") or TEMPLATE_REQ.encode() in data:
                    msg_id = (msg.headers or {}).get("Nats-Msg-Id")
                    out.append(TemplateMsg(msg.subject or "", data, msg_id))
    finally:
        await nc.close()
    if not out:
        raise RuntimeError(f"the template REQ {TEMPLATE_REQ} left no stream message")
    return out


async def fill_streams(url: str, template: list[TemplateMsg], reqs: int) -> tuple[int, int]:
    """The registry's streams and consumers, and the template's messages for
    ``reqs`` REQs; returns the messages and bytes the streams then hold."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        await Reconciler(nc, PIPELINE).reconcile()
        pending: set[asyncio.Future[Any]] = set()
        for i in range(reqs):
            req = HISTORY_REQ.format(i)
            for m in template:
                headers = None
                if m.msg_id is not None:
                    msg_id = m.msg_id.replace(TEMPLATE_REQ, req)
                    headers = {"Nats-Msg-Id": msg_id if msg_id != m.msg_id else f"{msg_id}/{i}"}
                pending.add(
                    asyncio.ensure_future(
                        js.publish(
                            m.subject.replace(TEMPLATE_REQ, req),
                            m.data.replace(TEMPLATE_REQ.encode(), req.encode()),
                            headers=headers,
                            timeout=30,
                        )
                    )
                )
                if len(pending) >= WINDOW:
                    done, pending = await asyncio.wait(pending, return_when="FIRST_COMPLETED")
                    for task in done:
                        task.result()
        for task in asyncio.as_completed(pending):
            await task
        infos = [await js.stream_info(s.name) for s in PIPELINE.streams]
        return sum(i.state.messages for i in infos), sum(i.state.bytes for i in infos)
    finally:
        await nc.close()


# --- the operator's commands ------------------------------------------------------------
def agogctl(env: dict[str, str], *args: str) -> tuple[float, dict[str, Any]]:
    """Run ``agogctl ARGS --json``; its wall time and JSON output."""
    started = time.perf_counter()
    result = subprocess.run(
        [AGOGCTL, *args, "--json"], capture_output=True, text=True, env=env, check=False
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"agogctl {' '.join(args)} exited {result.returncode}: {result.stderr or result.stdout}"
        )
    return seconds, json.loads(result.stdout)


def ctl_env(nats_url: str, dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
    return {
        **env,
        "AGOG_NATS_URL": nats_url,
        "AGOG_POSTGRES_DSN": dsn,
        "AGOG_DATA_DIR": "/nonexistent-agogd-data-dir",
    }


async def measure_level(
    pg: PostgresServer, tmp: Path, template: Any, messages: list[TemplateMsg], reqs: int, opts: Any
) -> Level:
    level = Level(reqs)
    db = f"hist{reqs}"
    dsn = await asyncio.to_thread(pg.create_database, db)
    await migrate_db(dsn)
    say(f"{reqs:,} REQs: loading the history into {db}")
    ld = await load_history(pg, db, template, 0, reqs, opts)
    level.db_bytes = ld.db_bytes
    source = NatsServer(tmp / f"nats-{reqs}").start()
    try:
        started = time.perf_counter()
        level.stream_msgs, level.stream_bytes = await fill_streams(source.url, messages, reqs)
        say(
            f"  streams: {level.stream_msgs:,} messages, {size(level.stream_bytes)}"
            f" in {time.perf_counter() - started:.0f} s; database {size(level.db_bytes)}"
        )
        env = ctl_env(source.url, dsn)
        for r in range(1, opts.rounds + 1):
            out = tmp / f"backups-{reqs}-{r}"
            seconds, created = await asyncio.to_thread(
                agogctl, env, "backup", "create", "--to", str(out)
            )
            level.add("create", seconds)
            archive = Path(created["archive"])
            level.archive_bytes = (await asyncio.to_thread(archive.stat)).st_size
            seconds, _ = await asyncio.to_thread(agogctl, env, "backup", "verify", str(archive))
            level.add("verify", seconds)
            target = NatsServer(tmp / f"nats-{reqs}-restore-{r}").start()
            try:
                name = f"restore{reqs}_{r}"
                target_dsn = await asyncio.to_thread(pg.create_database, name)
                seconds, done = await asyncio.to_thread(
                    agogctl, ctl_env(target.url, target_dsn), "backup", "restore", str(archive)
                )
                level.add("restore", seconds)
                for step in STEPS:  # the restore's own account of its parts
                    level.add(step, float((done.get("seconds") or {}).get(step, 0.0)))
                await asyncio.to_thread(pg.drop_database, name)
            finally:
                target.stop()
                shutil.rmtree(target.data_dir, ignore_errors=True)
            await baseline(pg, dsn, out, f"raw{reqs}_{r}", level)
            shutil.rmtree(out, ignore_errors=True)
            say(
                f"  round {r}: create {level.times['create'][-1]:.1f} s, verify"
                f" {level.times['verify'][-1]:.1f} s, restore {level.times['restore'][-1]:.1f} s ("
                + ", ".join(f"{step} {level.times[step][-1]:.1f} s" for step in STEPS)
                + ");"
                f" raw pg_dump {level.times['pg_dump'][-1]:.1f} s, pg_restore"
                f" {level.times['pg_restore'][-1]:.1f} s; archive {size(level.archive_bytes)}"
            )
    finally:
        source.stop()
        shutil.rmtree(source.data_dir, ignore_errors=True)
        await asyncio.to_thread(pg.drop_database, db)
    return level


async def baseline(pg: PostgresServer, dsn: str, out: Path, name: str, level: Level) -> None:
    """The same database's raw pg_dump, and its pg_restore into an empty database."""
    dump = out / "raw.dump"
    started = time.perf_counter()
    await pg_tools.dump(dsn, dump)
    level.add("pg_dump", time.perf_counter() - started)
    target = await asyncio.to_thread(pg.create_database, name)
    started = time.perf_counter()
    await pg_tools.restore(target, dump)
    level.add("pg_restore", time.perf_counter() - started)
    await asyncio.to_thread(pg.drop_database, name)


def report(levels: list[Level]) -> None:
    print()
    print(
        "| REQs of history | database | streams | archive | create | verify | restore"
        " | of it: streams, Msg-Id read, Postgres | raw pg_dump | raw pg_restore"
        " | create / pg_dump | restore / pg_restore |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for lv in levels:
        create, restore = lv.median("create"), lv.median("restore")
        dump, pg_restore = lv.median("pg_dump"), lv.median("pg_restore")
        print(
            f"| {lv.reqs:,} | {size(lv.db_bytes)}"
            f" | {lv.stream_msgs:,} msgs, {size(lv.stream_bytes)}"
            f" | {size(lv.archive_bytes)} | {create:.1f} s | {lv.median('verify'):.1f} s"
            f" | {restore:.1f} s | "
            + ", ".join(f"{lv.median(step):.1f} s" for step in STEPS)
            + f" | {dump:.1f} s | {pg_restore:.1f} s"
            f" | {create / dump:.2f}x | {restore / pg_restore:.2f}x |"
        )
    print()
    for lv in levels:
        print(
            f"{lv.reqs:,} REQs, each round (s): "
            + "; ".join(
                f"{what} " + ", ".join(f"{t:.1f}" for t in times)
                for what, times in lv.times.items()
            )
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", help="REQs of history, comma-separated (default 1000,10000)")
    parser.add_argument("--rounds", type=int, default=2, help="backups and restores per level")
    parser.add_argument("--chunk", type=int, default=5000, help="REQs per COPY transaction")
    parser.add_argument("--load-workers", type=int, default=2, help="connections loading at once")
    parser.add_argument(
        "--reqs-per-day",
        type=float,
        default=1000.0,
        help="pace of the history's REQs (how many fall inside the outbox's retention)",
    )
    parser.add_argument("--quick", action="store_true", help="small levels, one round")
    args = parser.parse_args()
    args.pending_memories = False
    if args.quick:
        args.rounds = 1
    text = args.levels or ("100,1000" if args.quick else "1000,10000")
    wanted = sorted({int(x.replace("_", "")) for x in text.split(",") if x.strip()})
    logs.configure("warning", "console")
    with tempfile.TemporaryDirectory(prefix="agogd-backup-bench-") as name:
        tmp = Path(name)
        shared = NatsServer(tmp / "nats").start()
        pg = PostgresServer(tmp / "pg", durable=True).start()
        try:
            template, _floors = await make_template(shared.url, pg, False)
            messages = await template_messages(shared.url)
            say(f"template REQ: {len(messages)} stream messages")
            shared.stop()
            levels = [await measure_level(pg, tmp, template, messages, n, args) for n in wanted]
        finally:
            shared.stop()
            pg.stop()
    report(levels)


if __name__ == "__main__":
    asyncio.run(main())
