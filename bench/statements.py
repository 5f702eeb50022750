"""Which statements Postgres runs per saturated transition, and their time.

Run:  .venv/bin/python bench/statements.py [--reqs 500] [--top 25]

agogd saturated with 100 REQs in flight (agents that answer at once), on a
real nats-server and PostgreSQL; for the measured run the server logs every
statement's duration (``log_min_duration_statement = 0``, set by the
superuser and reset afterwards), and the log is summed per statement and
phase (parse, bind, execute). Durations are wall times inside the server
(a statement waiting on a lock or the disk counts its wait), divided by the
run's transitions: where Postgres's share of a transition goes. The baseline
of the same run is the total, so each line is also a share of it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import sys
import tempfile
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.workflow_bench import run_engine  # noqa: E402
from orchestrator.embedded import NatsServer, PostgresServer  # noqa: E402
from orchestrator.embedded.daemon_proc import DaemonProcess  # noqa: E402

_DURATION = re.compile(r"duration: ([\d.]+) ms\s+(?:(parse|bind|execute|statement)[^:]*: )?(.*)")


def summarise(log_text: str, transitions: int, top: int) -> list[str]:
    stats: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for m in _DURATION.finditer(log_text):
        key = (m.group(2) or "?", re.sub(r"\s+", " ", m.group(3))[:100])
        stats[key][0] += 1
        stats[key][1] += float(m.group(1))
    total = sum(v[1] for v in stats.values())
    lines = [
        f"{transitions} transitions; statement time {total / transitions * 1000:.0f} us"
        " per transition (the baseline: each line's share is of it)"
    ]
    for (phase, sql), (count, ms) in sorted(stats.items(), key=lambda kv: -kv[1][1])[:top]:
        lines.append(
            f"{ms / transitions * 1000:7.1f} us {ms / total:6.1%} {count / transitions:5.2f}"
            f" per transition  {phase:<9} {sql}"
        )
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reqs", type=int, default=500, help="REQs in the measured run")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agogd-statements-") as tmp:
        nats_server = NatsServer(Path(tmp) / "nats").start()
        pg = PostgresServer(Path(tmp) / "pg", durable=True).start()
        daemon = DaemonProcess(
            {
                "AGOG_NATS_URL": nats_server.url,
                "AGOG_POSTGRES_DSN": pg.dsn(),
                "AGOG_MAX_IN_FLIGHT": "100",
                "AGOG_DISPATCH_INTERVAL": "0.05",
            }
        ).start()
        admin = await asyncpg.connect(pg.superuser_dsn())
        try:
            daemon.wait_ready(60)
            await run_engine(nats_server.url, 100, 200, 0.0, "WARM", False)
            await admin.execute("ALTER SYSTEM SET log_min_duration_statement = 0")
            await admin.execute("SELECT pg_reload_conf()")
            await asyncio.sleep(1)
            mark = pg.log_file.stat().st_size
            result = await run_engine(nats_server.url, 100, args.reqs, 0.0, "SAT", False)
            await admin.execute("ALTER SYSTEM RESET log_min_duration_statement")
            await admin.execute("SELECT pg_reload_conf()")
            text = pg.log_file.read_bytes()[mark:].decode(errors="replace")
        finally:
            await admin.close()
            daemon.stop()
            nats_server.stop()
            pg.stop()
    print(f"saturated: {result['per_second']:.0f} transitions/s (every statement logged)")
    print("\n".join(summarise(text, result["transitions"], args.top)))


if __name__ == "__main__":
    asyncio.run(main())
