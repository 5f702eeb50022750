"""The operator's view of a running agogd: ``/metrics`` and the pipeline board.

The engine's counters (transitions, retries, rejections, escalations, stage
durations...) are updated where the work happens, after its commit (see
``metrics.Tally``): no query is added to the hot path. What only the
database or JetStream knows is read here instead:

- **at scrape time**, from Postgres, at most once per ``PG_TTL`` seconds
  whatever the scrape rate: REQs by status and stage, running and overdue
  stage attempts, the outbox backlog. Three small queries, on partial
  indexes for the running attempts and the pending outbox rows; and the
  deployment gauges, from the records (orchestrator.api.deploy_metrics);
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
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS

from orchestrator.api import deploy_metrics
from orchestrator.core.registry import Pipeline
from orchestrator.core.workflow import STATUSES
from orchestrator.runtime import db, http_server, metrics
from orchestrator.runtime.context import Late
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.services import sleep_unless_stopped
from workers.infra.inspect import inspect_streams

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

    def __init__(
        self, *, pool: asyncpg.Pool, nc: NATS, pipeline: Pipeline, database_gauges: bool
    ) -> None:
        """``database_gauges``: read the REQ and outbox gauges from Postgres
        (where the engine runs; a lone runner reports only its own counters)."""
        self.pool, self.nc, self.pipeline = pool, nc, pipeline
        self.database_gauges = database_gauges
        self.stage_agents = {s.index: s.agent for s in (*pipeline.stages, *pipeline.followups)}
        self.streams_interval = STREAMS_INTERVAL
        self._pg_at = float("-inf")
        self._pg_lock = asyncio.Lock()
        self._streams_wake = asyncio.Event()

    # --- Postgres, at scrape time ------------------------------------------------------
    async def refresh_postgres(self, force: bool = False) -> None:
        """Re-read the database gauges unless they are fresher than PG_TTL."""
        pool = self.pool
        if not self.database_gauges:
            return
        async with self._pg_lock:  # concurrent scrapes share one refresh
            if not force and time.monotonic() - self._pg_at < PG_TTL:
                return
            try:
                async with asyncio.timeout(PG_TIMEOUT), pool.acquire() as conn:
                    reqs = await conn.fetch(_REQS_SQL)
                    running = await conn.fetch(_RUNNING_SQL)
                    outbox = await conn.fetchrow(_OUTBOX_SQL)
                    deploys = await deploy_metrics.read(conn)
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
        deploy_metrics.apply(deploys)

    # --- JetStream, in the background ------------------------------------------------------
    async def refresh_streams(self) -> None:
        """Streams and consumer lag, as Miki's report reads them."""
        part, entries = await inspect_streams(self.nc, self.pipeline)
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

    async def run(self, stopping: asyncio.Event) -> None:
        """The ``metrics`` service: refresh the stream gauges until agogd stops."""
        while not stopping.is_set():
            self._streams_wake.clear()
            try:
                await self.refresh_streams()
            except Exception as exc:  # a gauge must never take the daemon down
                metrics.SCRAPE_ERRORS.labels("jetstream").inc()
                log.warning("metrics.streams_failed", error=repr(exc))
            await sleep_unless_stopped(stopping, self.streams_interval, self._streams_wake)

    def wake_streams(self) -> None:
        """Refresh the stream gauges now (tests, or an operator in a hurry)."""
        self._streams_wake.set()


def _preset(pipeline: Pipeline) -> None:
    """Series that exist from the start (so rate() and alerts see a zero, not a gap)."""
    metrics.BUILD_INFO.labels(agogd_version()).set(1)
    for stage in (*pipeline.stages, *pipeline.followups):
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
    deploy_metrics.preset()


def install(
    app: web.Application, pipeline: Pipeline, observer: Late[Observer], *, board: bool
) -> None:
    """``/metrics`` on every agogd; the board where the engine (and its API) runs.
    The database gauges are read once ``observer`` is bound (agogd connected)."""
    _preset(pipeline)

    async def refresh() -> None:
        if observer.bound:
            await observer.get().refresh_postgres()

    http_server.add_metrics(app, refresh)
    if board:
        add_board(app)


# --- the board -------------------------------------------------------------------------------
# The board's assets ship in the package (no CDN): plain HTML, CSS and JS.
BOARD_DIR = Path(__file__).with_name("board")
BOARD_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}


def _board_file(name: str) -> web.Response:
    path = BOARD_DIR / name
    kind = BOARD_TYPES.get(path.suffix)
    if kind is None or path.parent != BOARD_DIR or not path.is_file():
        raise web.HTTPNotFound(text=f"no board asset {name!r}")
    return web.Response(
        body=path.read_bytes(),
        content_type=kind,
        charset="utf-8" if kind.startswith("text/") else None,
        headers={"Cache-Control": "no-cache"},  # an upgraded agogd serves its own
    )


async def board_page(_request: web.Request) -> web.Response:
    return _board_file("index.html")


async def board_asset(request: web.Request) -> web.Response:
    return _board_file(request.match_info["name"])


def add_board(app: web.Application) -> None:
    """The pipeline board: ``/`` and its assets under ``/board/`` (see board/board.js)."""
    app.router.add_get("/", board_page)
    app.router.add_get("/board/{name}", board_asset)
