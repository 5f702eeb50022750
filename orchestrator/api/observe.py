"""The operator's view of a running agogd: ``/metrics`` and the pipeline board.

The engine's counters (transitions, retries, rejections, escalations, stage
durations...) are updated where the work happens, after its commit (see
``metrics.Tally``): no query is added to the hot path. What only the
database or JetStream knows is read here instead:

- **at scrape time**, from Postgres, at most once per ``PG_TTL`` seconds
  whatever the scrape rate: REQs by status and stage, running and overdue
  stage attempts, the outbox backlog. Three small queries, on partial
  indexes for the running attempts and the pending outbox rows;
- **in the background**, every ``STREAMS_INTERVAL`` seconds, from JetStream:
  each ``agog_*`` stream's messages, bytes and consumer lag, with the same
  code as Miki's infrastructure report (``workers.infra.report``), so a slow
  or unreachable NATS never slows a scrape.

Every engine replica reports the same database-wide gauges: aggregate them
with ``max`` (the sample dashboard does). The board (``/``) is served where
the API is, by processes that run the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from orchestrator.core.workflow import STATUSES
from orchestrator.runtime import db, http_server, metrics
from orchestrator.runtime.logs import get_logger

if TYPE_CHECKING:
    from orchestrator.runtime.daemon import Daemon

log = get_logger(__name__)

PG_TTL = 1.0
STREAMS_INTERVAL = 15.0
PG_TIMEOUT = 3.0
NO_STAGE = "none"

_REQS_SQL = "SELECT status, current_stage, count(*) AS n FROM workflow_state GROUP BY 1, 2"
_RUNNING_SQL = (
    "SELECT agent, count(*) AS running,"
    " max(extract(epoch FROM now() - greatest(started_at, last_heartbeat_at)))::float8 AS idle,"
    " count(*) FILTER (WHERE deadline < now()) AS overdue"
    " FROM stage_attempts WHERE status = 'RUNNING' GROUP BY agent"
)
_OUTBOX_SQL = (
    "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8"
    " AS oldest FROM outbox WHERE published_at IS NULL"
)


def agogd_version() -> str:
    try:
        return version("agogd")
    except PackageNotFoundError:
        return "unknown"


class Observer:
    """Refreshes the gauges that /metrics cannot count as work happens."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.stage_agents = {
            s.index: s.agent for s in (*daemon.pipeline.stages, *daemon.pipeline.followups)
        }
        self.streams_interval = STREAMS_INTERVAL
        self._pg_at = float("-inf")
        self._pg_lock = asyncio.Lock()
        self._streams_wake = asyncio.Event()

    # --- Postgres, at scrape time ------------------------------------------------------
    async def refresh_postgres(self, force: bool = False) -> None:
        """Re-read the database gauges unless they are fresher than PG_TTL."""
        pool = self.daemon.pool
        if pool is None or self.daemon.engine is None:
            return
        async with self._pg_lock:  # concurrent scrapes share one refresh
            if not force and time.monotonic() - self._pg_at < PG_TTL:
                return
            try:
                async with asyncio.timeout(PG_TIMEOUT), pool.acquire() as conn:
                    reqs = await conn.fetch(_REQS_SQL)
                    running = await conn.fetch(_RUNNING_SQL)
                    outbox = await conn.fetchrow(_OUTBOX_SQL)
            except (TimeoutError, *db.DB_ERRORS) as exc:
                metrics.SCRAPE_ERRORS.labels("postgres").inc()
                log.debug("metrics.postgres_failed", error=repr(exc))
                return  # the last values stay
            self._pg_at = time.monotonic()
        # Synchronous from here on: a scrape never sees a half-written gauge.
        stages = [*self.stage_agents.values(), NO_STAGE]
        counts = {(status, stage): 0 for status in STATUSES for stage in stages}
        for row in reqs:
            status = "PENDING" if row["status"] == "NEW" else row["status"]
            stage = self.stage_agents.get(row["current_stage"], NO_STAGE)
            counts[(status, stage)] = counts.get((status, stage), 0) + row["n"]
        metrics.REQS.clear()
        for (status, stage), n in counts.items():
            metrics.REQS.labels(status, stage).set(n)
        by_agent = {r["agent"]: r for r in running}
        for agent in {*self.stage_agents.values(), *by_agent}:
            row = by_agent.get(agent)
            metrics.STAGE_RUNNING.labels(agent).set(row["running"] if row else 0)
            metrics.STAGE_IDLE.labels(agent).set((row["idle"] or 0) if row else 0)
            metrics.STAGE_OVERDUE.labels(agent).set(row["overdue"] if row else 0)
        assert outbox is not None
        metrics.OUTBOX_BACKLOG.set(outbox["n"])
        metrics.OUTBOX_OLDEST.set(outbox["oldest"])

    # --- JetStream, in the background ------------------------------------------------------
    async def refresh_streams(self) -> None:
        """Streams and consumer lag, as Miki's report reads them."""
        from workers.infra.inspect import inspect_streams

        part, entries = await inspect_streams(self.daemon.nc, self.daemon.pipeline)
        for gauge in (
            metrics.STREAM_MESSAGES,
            metrics.STREAM_BYTES,
            metrics.STREAM_LAG,
            metrics.CONSUMER_LAG,
        ):
            gauge.clear()  # a deleted stream or consumer must not linger
        if not part.get("reachable"):
            metrics.SCRAPE_ERRORS.labels("jetstream").inc()
            log.debug("metrics.streams_failed", error=part.get("error"))
            return
        for entry in entries:
            stream = str(entry["stream"])
            metrics.STREAM_MESSAGES.labels(stream).set(entry["messages"])
            metrics.STREAM_BYTES.labels(stream).set(entry["bytes"])
            metrics.STREAM_LAG.labels(stream).set(entry["lag"])
            for consumer in entry["consumers"]:
                metrics.CONSUMER_LAG.labels(stream, str(consumer["name"])).set(consumer["lag"])

    async def run(self, daemon: Daemon) -> None:
        """The ``metrics`` service: refresh the stream gauges until agogd stops."""
        while not daemon.stopping.is_set():
            try:
                await self.refresh_streams()
            except Exception as exc:  # a gauge must never take the daemon down
                metrics.SCRAPE_ERRORS.labels("jetstream").inc()
                log.warning("metrics.streams_failed", error=repr(exc))
            self._streams_wake.clear()
            waiters = [
                asyncio.ensure_future(daemon.stopping.wait()),
                asyncio.ensure_future(self._streams_wake.wait()),
            ]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait(
                    waiters, timeout=self.streams_interval, return_when=asyncio.FIRST_COMPLETED
                )
            for waiter in waiters:
                waiter.cancel()

    def wake_streams(self) -> None:
        """Refresh the stream gauges now (tests, or an operator in a hurry)."""
        self._streams_wake.set()


def _preset(daemon: Daemon) -> None:
    """Series that exist from the start (so rate() and alerts see a zero, not a gap)."""
    metrics.BUILD_INFO.labels(agogd_version()).set(1)
    for stage in (*daemon.pipeline.stages, *daemon.pipeline.followups):
        metrics.STAGE_TIMEOUT.labels(stage.agent).set(stage.timeout)
        metrics.STAGE_DURATION.labels(stage.agent)
        metrics.TRANSITIONS.labels("stage.started", stage.agent)
        metrics.TRANSITIONS.labels("stage.completed", stage.agent)
        if stage.gate in ("critique", "qa"):
            metrics.REJECTIONS.labels(stage.agent)
        for outcome in ("FAILED", "TIMED_OUT"):
            metrics.FAILURES.labels(stage.agent, outcome)
    for priority in ("NEEDS_HUMAN_DECISION", "NEEDS_MANUAL_INTERVENTION"):
        metrics.ESCALATIONS.labels(priority)
    for source in ("postgres", "jetstream"):
        metrics.SCRAPE_ERRORS.labels(source)


def install(daemon: Daemon) -> Observer:
    """``/metrics`` on every agogd; the board where the engine (and its API) runs."""
    observer = Observer(daemon)
    _preset(daemon)
    http_server.add_metrics(daemon.http.app, observer.refresh_postgres)
    daemon.add_service("metrics", observer.run)
    if daemon.engine is not None:
        http_server.add_board(daemon.http.app)
    return observer
