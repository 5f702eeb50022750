"""The deployment gauges of ``/metrics``, derived from the records.

Success rate, rollback time and time to recovery (the seeds' DevOps success
metrics) are read from ``berry_deployments`` at scrape time, with the other
database gauges (``orchestrator.api.observe``), never counted in-process: a
restarted agogd and every replica report the same values, however many
deploys each one ran. Four small aggregate queries over one row per
deployment; the failures' recovery looks up the next healthy row by
environment. ``apply`` is synchronous, so a scrape never sees half of it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg

from orchestrator.api.deploy_records import STATUSES, VERDICTS
from orchestrator.runtime import metrics

# The records' environment when staging is off (the column's default): its
# series exist from the start, so that alerts and rate() see zeros, not gaps.
DEFAULT_ENVIRONMENT = "production"
RECENT = 10  # the success ratio's short window, in deployments

_COUNTS_SQL = "SELECT environment, status, count(*)::int AS n FROM berry_deployments GROUP BY 1, 2"
_RECENT_SQL = (
    "SELECT environment, count(*) FILTER (WHERE status = 'healthy')::int AS healthy,"
    " count(*)::int AS n FROM (SELECT environment, status, row_number() OVER"
    " (PARTITION BY environment ORDER BY finished_at DESC NULLS LAST, id DESC) AS k"
    " FROM berry_deployments WHERE status = ANY($1::text[])) r WHERE k <= $2 GROUP BY 1"
)
_ROLLBACKS_SQL = (
    "SELECT environment, rollback_seconds FROM berry_deployments"
    " WHERE rollback_seconds IS NOT NULL AND status <> 'rollback_failed'"
    " ORDER BY finished_at NULLS LAST, id"
)
# Per failed deployment (its verdict failed: rolled back; rollback failed;
# 'failed', nothing to roll back to): its time to recovery (until the next
# deployment of its environment that left it healthy, itself or by its
# rollback, unless its own rollback did), whether it is still down, and how
# long ago it ended.
_RECOVERY_SQL = (
    "SELECT f.environment, CASE WHEN f.status = 'rolled_back' THEN f.rollback_seconds"
    " ELSE extract(epoch FROM h.finished_at - f.finished_at)::float8 END AS seconds,"
    " f.status <> 'rolled_back' AND h.finished_at IS NULL AS down,"
    " extract(epoch FROM now() - f.finished_at)::float8 AS ago"
    " FROM berry_deployments f LEFT JOIN LATERAL (SELECT finished_at FROM berry_deployments h"
    "  WHERE h.environment = f.environment AND h.status IN ('healthy', 'rolled_back')"
    "  AND h.finished_at >= f.finished_at AND h.id <> f.id ORDER BY h.finished_at LIMIT 1) h"
    " ON true"
    " WHERE f.status IN ('rolled_back', 'rollback_failed', 'failed') AND f.finished_at IS NOT NULL"
)


@dataclass
class Snapshot:
    """What the records say, per environment."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    recent: dict[str, tuple[int, int]] = field(default_factory=dict)  # (healthy, finished)
    rollbacks: list[tuple[str, float]] = field(default_factory=list)  # oldest first
    recoveries: list[tuple[str, float]] = field(default_factory=list)
    down: dict[str, float] = field(default_factory=dict)  # longest unrecovered, seconds


async def read(conn: asyncpg.Connection) -> Snapshot:
    """The snapshot, from the records."""
    snap = Snapshot()
    for row in await conn.fetch(_COUNTS_SQL):
        snap.counts[(row["environment"], row["status"])] = row["n"]
    for row in await conn.fetch(_RECENT_SQL, list(VERDICTS), RECENT):
        snap.recent[row["environment"]] = (row["healthy"], row["n"])
    snap.rollbacks = [
        (r["environment"], r["rollback_seconds"]) for r in await conn.fetch(_ROLLBACKS_SQL)
    ]
    for row in await conn.fetch(_RECOVERY_SQL):
        if row["down"]:
            env = row["environment"]
            snap.down[env] = max(snap.down.get(env, 0.0), row["ago"] or 0.0)
        elif row["seconds"] is not None:
            snap.recoveries.append((row["environment"], max(row["seconds"], 0.0)))
    return snap


def success_ratios(snap: Snapshot) -> dict[tuple[str, str], float]:
    """(environment, window) -> healthy / finished with a verdict, where any finished."""
    finished: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (env, status), n in snap.counts.items():
        if status in VERDICTS:
            finished[env][1] += n
            if status == "healthy":
                finished[env][0] += n
    ratios = {(env, "all"): ok / n for env, (ok, n) in finished.items() if n}
    ratios |= {(env, f"last_{RECENT}"): ok / n for env, (ok, n) in snap.recent.items() if n}
    return ratios


def apply(snap: Snapshot) -> None:
    """Set the gauges to the snapshot (synchronously: no scrape sees half)."""
    envs = {DEFAULT_ENVIRONMENT, *(env for env, _ in snap.counts)}
    for gauge in (
        metrics.DEPLOYMENTS,
        metrics.DEPLOY_SUCCESS,
        metrics.ROLLBACK_LAST,
        metrics.ROLLBACK_DURATION,
        metrics.RECOVERY,
        metrics.UNRECOVERED,
    ):
        gauge.clear()  # an environment whose records are gone must not linger
    for env in envs:
        for status in STATUSES:
            metrics.DEPLOYMENTS.labels(env, status).set(snap.counts.get((env, status), 0))
        metrics.ROLLBACK_DURATION.labels(env)
        metrics.RECOVERY.labels(env)
        metrics.UNRECOVERED.labels(env).set(snap.down.get(env, 0.0))
    for (env, window), ratio in success_ratios(snap).items():
        metrics.DEPLOY_SUCCESS.labels(env, window).set(ratio)
    for env, seconds in snap.rollbacks:
        metrics.ROLLBACK_DURATION.labels(env).observe(seconds)
        metrics.ROLLBACK_LAST.labels(env).set(seconds)  # oldest first: the newest stays
    for env, seconds in snap.recoveries:
        metrics.RECOVERY.labels(env).observe(seconds)


def preset() -> None:
    """The series of an agogd with no records yet."""
    apply(Snapshot())
