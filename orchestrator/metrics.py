"""Every Prometheus metric agogd exports, defined in one place.

Modules import the metric they update from here (never define their own),
so that ``/metrics`` and the Grafana dashboard have one list to agree with.
A private registry keeps tests that start several daemons in one process
from colliding on the global default registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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

# --- workflow ------------------------------------------------------------------------
STAGE_DURATION = Histogram(
    "agogd_stage_duration_seconds",
    "Time from a stage's dispatch to its completion notice, per agent.",
    ["agent"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400),
    registry=REGISTRY,
)
