"""Every Prometheus metric agogd exports, defined in one place.

Modules import the metric they update from here (never define their own),
so that ``/metrics`` and the Grafana dashboard have one list to agree with.
A private registry keeps tests that start several daemons in one process
from colliding on the global default registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

# No `*_created` series beside each counter: they double the output for nothing
# Grafana or the alert rules use.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)

# --- deliverable memory -----------------------------------------------------------
MEMORY_PENDING = Gauge(
    "agogd_memory_pending_embeddings",
    "Memories stored without an embedding yet (waiting for the provider).",
    registry=REGISTRY,
)
MEMORY_EMBEDDED = Counter(
    "agogd_memory_embedded_total",
    "Memories embedded (at once or by the backfill).",
    registry=REGISTRY,
)
MEMORY_EMBED_FAILURES = Counter(
    "agogd_memory_embed_failures_total",
    "Embedding calls that failed (the rows stay pending).",
    registry=REGISTRY,
)

# --- DevOps workers -------------------------------------------------------------------
CONTAINER_RESTARTS = Counter(
    "agogd_container_restarts_total",
    "Containers restarted by the health watch.",
    ["container"],
    registry=REGISTRY,
)
BERRY_DEPLOYS = Counter(
    "agogd_berry_deploys_total",
    "Berry's native deploys by outcome (deployed, skipped, failed).",
    ["outcome"],
    registry=REGISTRY,
)

# --- backups of agogd's own state (orchestrator.backup.schedule) ----------------------
BACKUP_LAST_SUCCESS = Gauge(
    "agogd_backup_last_success_timestamp_seconds",
    "When the last good backup of agogd's state finished (Unix time; 0: none yet), read"
    " from backup_runs, so every replica reports the same.",
    registry=REGISTRY,
)
BACKUP_SCHEDULE = Gauge(
    "agogd_backup_schedule_seconds",
    "AGOG_BACKUP_SCHEDULE as seconds between scheduled backups (0: not scheduled here).",
    registry=REGISTRY,
)
BACKUP_RUNS = Counter(
    "agogd_backup_runs_total",
    "Scheduled backups this replica took, by outcome (ok, failed).",
    ["outcome"],
    registry=REGISTRY,
)

# --- workflow ------------------------------------------------------------------------
WORKTREES = Gauge(
    "agogd_worktrees",
    "REQ worktrees on this agogd's disk (removed when the REQ is deployed or cancelled).",
    registry=REGISTRY,
)
WORKTREES_BYTES = Gauge(
    "agogd_worktrees_bytes",
    "Disk used by the REQs' worktrees, in bytes.",
    registry=REGISTRY,
)
STAGE_DURATION = Histogram(
    "agogd_stage_duration_seconds",
    "Time from a stage's dispatch to its completion notice, per agent.",
    ["agent"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400),
    registry=REGISTRY,
)
STAGE_OUTCOMES = Counter(
    "agogd_stage_outcomes_total",
    "Stage attempts closed, per agent and outcome (COMPLETE, REJECTED, FAILED,"
    " TIMED_OUT, BLOCKED, SUPERSEDED, CANCELLED).",
    ["agent", "outcome"],
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "agogd_transitions_total",
    "Workflow and stage events agogd committed (workflow.started, stage.completed...),"
    " per agent (empty for workflow events).",
    ["event", "agent"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "agogd_stage_retries_total",
    "Stages dispatched again by agogd itself, per agent: kind retry (after a failure or a"
    " missed deadline, within the retry budget) or rework (sent back by a gate).",
    ["agent", "kind"],
    registry=REGISTRY,
)
REJECTIONS = Counter(
    "agogd_stage_rejections_total",
    "Work sent back by a gate: Sylvia's critique REJECTED, Billy's QA failed. An agent"
    " that failed is counted in agogd_stage_failures_total instead.",
    ["agent"],
    registry=REGISTRY,
)
FAILURES = Counter(
    "agogd_stage_failures_total",
    "Stage attempts that failed (outcome FAILED: the agent or its runner said so) or"
    " missed their deadline (TIMED_OUT), per agent; not a gate's verdict.",
    ["agent", "outcome"],
    registry=REGISTRY,
)
ESCALATIONS = Counter(
    "agogd_escalations_total",
    "Escalations sent (once per cause), by priority.",
    ["priority"],
    registry=REGISTRY,
)
AGENT_TOKENS = Counter(
    "agogd_agent_tokens_total",
    "Tokens agents used, by kind (input, output, cache_read, cache_write), from their notices.",
    ["agent", "model", "kind"],
    registry=REGISTRY,
)
AGENT_COST = Counter(
    "agogd_agent_cost_usd_total",
    "What agents spent (USD), as their CLIs reported it in the notices' usage.",
    ["agent", "model"],
    registry=REGISTRY,
)
MESSAGES_REJECTED = Counter(
    "agogd_messages_rejected_total",
    "Bad messages rejected once and term'd, by reason code (invalid_json, wrong_schema...).",
    ["reason"],
    registry=REGISTRY,
)

# --- refreshed from Postgres at scrape time (orchestrator.scrape) ----------------
REQS = Gauge(
    "agogd_reqs",
    "REQs by workflow status and current stage (the stage's agent; none before the first).",
    ["status", "stage"],
    registry=REGISTRY,
)
STAGE_RUNNING = Gauge(
    "agogd_stage_running",
    "Stage attempts RUNNING now, per agent.",
    ["agent"],
    registry=REGISTRY,
)
STAGE_IDLE = Gauge(
    "agogd_stage_idle_seconds",
    "Per agent, the longest time a RUNNING attempt has gone without a notice or a"
    " heartbeat (0 when none runs).",
    ["agent"],
    registry=REGISTRY,
)
STAGE_OVERDUE = Gauge(
    "agogd_stage_overdue",
    "RUNNING attempts past their deadline, per agent (the deadline scanner retries or"
    " escalates them within a second or so; a lasting value means it is stuck).",
    ["agent"],
    registry=REGISTRY,
)
STAGE_TIMEOUT = Gauge(
    "agogd_stage_timeout_seconds",
    "Each stage's timeout from the pipeline registry (for alert thresholds).",
    ["agent"],
    registry=REGISTRY,
)
OUTBOX_BACKLOG = Gauge(
    "agogd_outbox_backlog",
    "Outbox rows committed but not yet marked published.",
    registry=REGISTRY,
)
OUTBOX_OLDEST = Gauge(
    "agogd_outbox_oldest_seconds",
    "Age of the oldest outbox row not yet marked published (0 when none).",
    registry=REGISTRY,
)

# --- refreshed from the deployment records at scrape time (orchestrator.api.deploy_metrics) ---
# Derived from berry_deployments, not counted in-process: every replica (and a
# restarted one) reports the same values. Take their `max`.
ROLLBACK_BUCKETS = (5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600)
RECOVERY_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
DEPLOYMENTS = Gauge(
    "agogd_deployments",
    "Deployment records by environment and status (deploying, healthy, rolled_back,"
    " rollback_failed, failed, blocked).",
    ["environment", "status"],
    registry=REGISTRY,
)
DEPLOY_SUCCESS = Gauge(
    "agogd_deployment_success_ratio",
    "Per environment, healthy deployments over those finished with a verdict (healthy,"
    " rolled_back, rollback_failed, failed; not blocked or deploying): over every record"
    " (window all) and over the last 10 (window last_10). No series before the first verdict.",
    ["environment", "window"],
    registry=REGISTRY,
)
ROLLBACK_LAST = Gauge(
    "agogd_rollback_last_seconds",
    "Per environment, the newest rollback that restored health: seconds from the failed"
    " verdict to the rolled-back stack healthy.",
    ["environment"],
    registry=REGISTRY,
)
ROLLBACK_DURATION = Histogram(
    "agogd_rollback_duration_seconds",
    "Rollbacks that restored health, per environment: seconds from the failed verdict to"
    " the rolled-back stack healthy (the records' rollback_seconds).",
    ["environment"],
    buckets=ROLLBACK_BUCKETS,
    registry=REGISTRY,
)
RECOVERY = Histogram(
    "agogd_deployment_recovery_seconds",
    "Time to recovery after a failed deployment, per environment: the rollback's seconds"
    " when it restored health, else from the failed deployment's end to the end of the"
    " next healthy one. _sum / _count is the mean time to recovery.",
    ["environment"],
    buckets=RECOVERY_BUCKETS,
    registry=REGISTRY,
)
UNRECOVERED = Gauge(
    "agogd_deployment_unrecovered_seconds",
    "Per environment, seconds since a deployment failed and was not rolled back to health"
    " (its rollback failed, or there was nothing to roll back to), with no healthy"
    " deployment since (0: none; the environment may be down).",
    ["environment"],
    registry=REGISTRY,
)

# --- refreshed periodically from JetStream (workers.infra.inspect.inspect_streams) --
STREAM_MESSAGES = Gauge(
    "agogd_stream_messages",
    "Messages stored in each agog_* stream.",
    ["stream"],
    registry=REGISTRY,
)
STREAM_BYTES = Gauge(
    "agogd_stream_bytes",
    "Bytes stored in each agog_* stream.",
    ["stream"],
    registry=REGISTRY,
)
STREAM_LAG = Gauge(
    "agogd_stream_lag",
    "Per stream, the messages its durable consumers have not finished (pending plus"
    " ack pending, summed over consumers; 0 for a stream without consumers).",
    ["stream"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "agogd_consumer_lag",
    "Per durable consumer: messages stored but not delivered, plus delivered but not acked.",
    ["stream", "consumer"],
    registry=REGISTRY,
)
SCRAPE_ERRORS = Counter(
    "agogd_metrics_refresh_errors_total",
    "Failed refreshes of the Postgres or JetStream gauges (the last values are kept"
    " for Postgres; JetStream series are dropped until the next success).",
    ["source"],
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "agogd_build_info",
    "Always 1; the version label is agogd's.",
    ["version"],
    registry=REGISTRY,
)

# --- process resources -----------------------------------------------------------------
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes...
PlatformCollector(registry=REGISTRY)  # python_info
GCCollector(registry=REGISTRY)  # python_gc_*


# --- counting inside a transaction ---------------------------------------------------------
class Tally:
    """Metric updates of one transaction, applied only once it has committed,
    so that a rolled-back batch (retried message by message) never counts twice.
    Updates are dictionary adds; ``apply`` is called after the commit."""

    __slots__ = ("_incs", "_observations")

    def __init__(self) -> None:
        self._incs: dict[tuple[Counter, tuple[str, ...]], float] = {}
        self._observations: list[tuple[Histogram, tuple[str, ...], float]] = []

    def inc(self, metric: Counter, *labels: str, amount: float = 1.0) -> None:
        key = (metric, labels)
        self._incs[key] = self._incs.get(key, 0.0) + amount

    def observe(self, metric: Histogram, value: float, *labels: str) -> None:
        self._observations.append((metric, labels, value))

    def apply(self) -> None:
        for (metric, labels), amount in self._incs.items():
            (metric.labels(*labels) if labels else metric).inc(amount)
        for hist, labels, value in self._observations:
            (hist.labels(*labels) if labels else hist).observe(value)
        self.discard()

    def discard(self) -> None:
        self._incs.clear()
        self._observations.clear()


class _Immediate(Tally):
    """For a connection without a tally (outside the engine's batches): at once."""

    __slots__ = ()

    def inc(self, metric: Counter, *labels: str, amount: float = 1.0) -> None:
        (metric.labels(*labels) if labels else metric).inc(amount)

    def observe(self, metric: Histogram, value: float, *labels: str) -> None:
        (metric.labels(*labels) if labels else metric).observe(value)


_IMMEDIATE = _Immediate()


def tally_of(conn: object) -> Tally:
    """The tally of the engine's batched connection, else one that counts at once."""
    tally = getattr(conn, "tally", None)
    return tally if isinstance(tally, Tally) else _IMMEDIATE


# --- what the engine counts (called from orchestrator.engine.effects and .engine) -----------------
def count_close(conn: object, agent: str, outcome: str, verdict: str | None = None) -> None:
    """A stage attempt closed with an outcome. The workflow says whether it was
    a gate sending work back (a rejection) or an agent failing (a failure):
    Sylvia's runner failing is FAILED, but not a critique that rejected."""
    tally = tally_of(conn)
    tally.inc(STAGE_OUTCOMES, agent, outcome)
    if verdict == "rejection":
        tally.inc(REJECTIONS, agent)
    elif verdict == "failure":
        tally.inc(FAILURES, agent, outcome)


def count_usage(conn: object, agent: str, usage: Any) -> None:
    """An applied notice's usage: its tokens by kind and its cost."""
    tally = tally_of(conn)
    model = usage.model or "unknown"
    for kind, n in usage.tokens.items():
        tally.inc(AGENT_TOKENS, agent, model, kind, amount=n)
    if usage.cost_usd:
        tally.inc(AGENT_COST, agent, model, amount=usage.cost_usd)


def count_dispatch(conn: object, agent: str, attempt: int, instructions: Mapping[str, Any]) -> None:
    """A stage dispatched; with retry or rework instructions, it is a retry of that kind."""
    tally = tally_of(conn)
    tally.inc(TRANSITIONS, "stage.started", agent)
    for kind in ("retry", "rework"):
        if kind in instructions:
            tally.inc(RETRIES, agent, kind)
