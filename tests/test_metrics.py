"""/metrics on a real agogd: REQs flow through scripted agents, then the
exposition is scraped and parsed with prometheus_client's own parser. The
sample alert rules and Grafana dashboard are checked against that output."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import promql_parser
import pytest
import yaml
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from orchestrator.core import registry
from orchestrator.embedded import NatsServer
from orchestrator.runtime import metrics
from tests.agents import (
    ScriptedAgents,
    deliverable_subject,
    happy,
    notice,
    running_agogd,
    settings_for,
    submit,
    wait_status,
)

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "docs" / "prometheus" / "agogd-alerts.yml"
DASHBOARD = ROOT / "docs" / "grafana" / "agogd.json"
PIPELINE = registry.load()
AGENTS = [s.agent for s in (*PIPELINE.stages, *PIPELINE.followups)]


class Scrape:
    """One parsed /metrics answer: samples by name, looked up by labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[str, list[Sample]] = {}
        for family in self.families.values():
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append(sample)

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the series does not exist (yet)."""
        for sample in self.samples.get(name, []):
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
        return 0.0

    def series(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples.get(name, [])]


async def scrape(url: str) -> Scrape:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        return Scrape(await resp.text())


async def scrape_until(url: str, check: Any, what: str, timeout: float = 15) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        got = await scrape(url)
        if check(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics never showed {what}:\n{got.text}")
        await asyncio.sleep(0.3)


def script(assignment: dict[str, Any]) -> dict[str, Any] | None:
    """REQ-MET-1: Sylvia's runner fails once. REQ-MET-2: Sylvia rejects once.
    REQ-MET-3: Roy is blocked. Else happy."""
    agent, req, attempt = assignment["agent"], assignment["req_number"], assignment["attempt"]
    if req == "REQ-MET-1" and agent == "sylvia" and attempt == 1:
        # What the runner publishes when the agent's process fails.
        return notice(
            agent, req, status="FAILED", summary="the agent exited with code 1", exit_code=1
        )
    if req == "REQ-MET-2" and agent == "sylvia" and attempt == 1:
        return notice(agent, req, critique_verdict="REJECTED", required_fixes=["cite it"])
    if req == "REQ-MET-3" and agent == "roy":
        return notice(agent, req, status="BLOCKED", summary="no database credentials")
    return happy(assignment)


def delta(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


async def test_metrics_after_reqs_flow(nats_server: NatsServer, nc: NATS, pg_dsn: str) -> None:
    agents = await ScriptedAgents(nc, script).start()
    async with running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon:
        url = daemon.http.url
        before = await scrape(url)
        # A consumer nobody reads: its lag is every message of the stream.
        js = nc.jetstream()
        await js.add_consumer(
            "agog_requirements",
            ConsumerConfig(durable_name="test_idle", deliver_policy=DeliverPolicy.ALL),
        )
        for req in ("REQ-MET-1", "REQ-MET-2", "REQ-MET-3"):
            await submit(nc, req)
        await js.publish("agog.requirements.new", b"this is not json")
        unknown = notice("roy", "REQ-MET-NOPE")
        await js.publish(deliverable_subject("roy", "REQ-MET-NOPE"), json.dumps(unknown).encode())
        await wait_status(pg_dsn, "REQ-MET-1", "DEPLOYED")
        await wait_status(pg_dsn, "REQ-MET-2", "DEPLOYED")
        await wait_status(pg_dsn, "REQ-MET-3", "BLOCKED")
        # Everything published and marked, Tim done twice: the counters are final.
        after = await scrape_until(
            url,
            lambda s: (
                s.value("agogd_outbox_backlog") == 0
                and s.value("agogd_reqs", status="DEPLOYED", stage="berry") == 2  # <= 1 s old
                and delta(s, before, "agogd_stage_duration_seconds_count", agent="tim") == 2
            ),
            "an empty outbox, two REQs deployed and Tim's two stages",
        )
        await daemon.wiring.parts.observer.refresh_streams()
        streams = await scrape_until(
            url,
            lambda s: (
                s.value("agogd_consumer_lag", consumer="agogd_deliverables") == 0
                and s.value("agogd_consumer_lag", consumer="test_idle") == 4
            ),
            "the consumers' lag",
        )
    await agents.stop()

    # REQs by status and stage (a fresh database: absolute values).
    assert after.value("agogd_reqs", status="DEPLOYED", stage="berry") == 2
    assert after.value("agogd_reqs", status="BLOCKED", stage="roy") == 1
    assert after.value("agogd_reqs", status="IN_PROGRESS", stage="roy") == 0
    assert sum(s.value for s in after.samples["agogd_reqs"]) == 3
    # Transitions, per agent (process-wide counters: compare with the first scrape).
    completed = {
        a: delta(after, before, "agogd_transitions_total", event="stage.completed", agent=a)
        for a in AGENTS
    }
    assert completed == {
        "cynthia": 4,  # REQ-MET-2's research twice
        "sylvia": 3,  # and one rejection
        "roy": 2,  # and one BLOCKED
        "jen": 2,
        "billy": 2,
        "priya": 2,
        "berry": 2,
        "tim": 2,
    }
    assert (
        delta(after, before, "agogd_transitions_total", event="stage.started", agent="cynthia") == 4
    )
    assert (
        delta(after, before, "agogd_transitions_total", event="stage.failed", agent="sylvia") == 2
    )
    assert delta(after, before, "agogd_transitions_total", event="stage.blocked", agent="roy") == 1
    assert delta(after, before, "agogd_transitions_total", event="workflow.started", agent="") == 3
    assert (
        delta(after, before, "agogd_transitions_total", event="workflow.completed", agent="") == 2
    )
    # Stage durations: one observation per applied notice, per agent.
    observed = {
        a: delta(after, before, "agogd_stage_duration_seconds_count", agent=a) for a in AGENTS
    }
    assert observed == {
        "cynthia": 4,
        "sylvia": 5,
        "roy": 3,
        "jen": 2,
        "billy": 2,
        "priya": 2,
        "berry": 2,
        "tim": 2,
    }
    buckets = [
        s
        for s in after.samples["agogd_stage_duration_seconds_bucket"]
        if s.labels["agent"] == "roy"
    ]
    assert buckets and buckets[-1].labels["le"] == "+Inf"
    assert delta(after, before, "agogd_stage_duration_seconds_sum", agent="roy") > 0
    # Outcomes, rejections, retries, escalations, rejected messages.
    assert (
        delta(after, before, "agogd_stage_outcomes_total", agent="sylvia", outcome="REJECTED") == 1
    )
    assert delta(after, before, "agogd_stage_outcomes_total", agent="roy", outcome="BLOCKED") == 1
    # Her critique's one rejection, not her runner's failure: that is a failure.
    assert delta(after, before, "agogd_stage_rejections_total", agent="sylvia") == 1
    assert delta(after, before, "agogd_stage_rejections_total", agent="billy") == 0
    assert delta(after, before, "agogd_stage_failures_total", agent="sylvia", outcome="FAILED") == 1
    assert delta(after, before, "agogd_stage_retries_total", agent="sylvia", kind="retry") == 1
    assert delta(after, before, "agogd_stage_retries_total", agent="cynthia", kind="rework") == 1
    assert delta(after, before, "agogd_escalations_total", priority="NEEDS_HUMAN_DECISION") == 1
    assert delta(after, before, "agogd_messages_rejected_total", reason="invalid_json") == 1
    assert delta(after, before, "agogd_messages_rejected_total", reason="unknown_req") == 1
    # Outbox backlog and stage gauges exist.
    assert after.value("agogd_outbox_oldest_seconds") == 0
    assert {"agent": "roy"} in after.series("agogd_stage_running")
    assert after.value("agogd_stage_overdue", agent="roy") == 0
    assert after.value("agogd_stage_timeout_seconds", agent="roy") == 4 * 3600
    # Consumer lag per stream, and per consumer.
    lagged = {labels["stream"] for labels in streams.series("agogd_stream_lag")}
    assert lagged == {s.name for s in PIPELINE.streams}
    # Three REQs and the bad one, all consumed by agogd_intake; none by test_idle.
    assert streams.value("agogd_stream_lag", stream="agog_requirements") == 4
    assert streams.value("agogd_stream_messages", stream="agog_requirements") == 4
    assert streams.value("agogd_stream_bytes", stream="agog_requirements") > 0
    for stream in PIPELINE.consumers[0].streams:
        assert {"stream": stream, "consumer": "agogd_deliverables"} in streams.series(
            "agogd_consumer_lag"
        )
    # Process resources, and the families other features update.
    assert after.value("process_resident_memory_bytes") > 10_000_000
    assert after.value("process_cpu_seconds_total") > 0
    assert after.value("process_open_fds") > 0
    assert after.series("python_info")
    assert after.series("agogd_build_info")
    assert after.families["agogd_container_restarts"].type == "counter"
    assert after.families["agogd_memory_pending_embeddings"].type == "gauge"
    assert after.value("agogd_metrics_refresh_errors_total", source="postgres") == 0


def test_tally_counts_only_what_commits() -> None:
    """A batch that rolls back (and is retried message by message) never counts twice."""
    counter = metrics.ESCALATIONS.labels("NEEDS_MANUAL_INTERVENTION")
    start = counter._value.get()
    rolled_back, committed = metrics.Tally(), metrics.Tally()
    rolled_back.inc(metrics.ESCALATIONS, "NEEDS_MANUAL_INTERVENTION")
    rolled_back.discard()
    committed.inc(metrics.ESCALATIONS, "NEEDS_MANUAL_INTERVENTION")
    committed.inc(metrics.ESCALATIONS, "NEEDS_MANUAL_INTERVENTION")
    assert counter._value.get() == start  # nothing before the commit
    committed.apply()
    committed.apply()  # applied once, then empty
    assert counter._value.get() == start + 2


# --- the sample alert rules and dashboard -------------------------------------------------
@pytest.fixture(scope="module")
def exposed_names() -> set[str]:
    """Every sample name agogd can expose (labelled series created so that each shows)."""
    from prometheus_client import generate_latest

    from orchestrator.api.observe import _preset

    _preset(PIPELINE)
    for series in (
        metrics.REQS.labels("PENDING", "none"),
        metrics.STAGE_RUNNING.labels("roy"),
        metrics.STAGE_IDLE.labels("roy"),
        metrics.STAGE_OVERDUE.labels("roy"),
        metrics.STREAM_MESSAGES.labels("agog_requirements"),
        metrics.STREAM_BYTES.labels("agog_requirements"),
        metrics.STREAM_LAG.labels("agog_requirements"),
        metrics.CONSUMER_LAG.labels("agog_requirements", "agogd_intake"),
        metrics.CONTAINER_RESTARTS.labels("c"),
        metrics.BERRY_DEPLOYS.labels("deployed"),
        metrics.STAGE_OUTCOMES.labels("roy", "COMPLETE"),
        metrics.RETRIES.labels("roy", "retry"),
        metrics.MESSAGES_REJECTED.labels("invalid_json"),
        metrics.AGENT_TOKENS.labels("roy", "m", "input"),
        metrics.AGENT_COST.labels("roy", "m"),
        metrics.DEPLOY_SUCCESS.labels("production", "last_10"),
        metrics.ROLLBACK_LAST.labels("production"),
        metrics.BACKUP_RUNS.labels("ok"),  # else only after a backup ran in this session
    ):
        assert series is not None  # created, so that it is exposed
    text = generate_latest(metrics.REGISTRY).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def _selectors(node: Any) -> Iterator[str]:
    """The metric names a PromQL expression selects, from promql-parser's AST."""
    if isinstance(node, promql_parser.VectorSelector):
        name = node.name or next(
            (m.value for m in node.matchers.matchers if m.name == "__name__"), None
        )
        assert name, f"a selector without a metric name: {node}"
        yield name
        return
    if isinstance(node, promql_parser.MatrixSelector):
        yield from _selectors(node.vector_selector)
        return
    for attr in ("lhs", "rhs", "expr", "param"):
        child = getattr(node, attr, None)
        if child is not None:
            yield from _selectors(child)
    for arg in getattr(node, "args", None) or ():
        yield from _selectors(arg)


def test_selectors_walk_the_whole_expression() -> None:
    expr = promql_parser.parse(
        "histogram_quantile(0.9, sum by (le) (rate(a_bucket[5m]))) > on() (b + -max_over_time"
        '(c[10m:1m])) unless {__name__="d"}'
    )
    assert sorted(_selectors(expr)) == ["a_bucket", "b", "c", "d"]


def test_alert_rules_parse_and_use_only_exposed_metrics(exposed_names: set[str]) -> None:
    rules = yaml.safe_load(RULES.read_text())
    groups = rules["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    # The three the issue asks for, at least.
    assert {"AgogdStageStalled", "AgogdEscalationRateHigh", "AgogdOutboxBacklog"} <= set(alerts)
    for group in groups:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            expr = promql_parser.parse(rule["expr"])  # raises on invalid PromQL
            names = set(_selectors(expr))
            assert names, rule
            missing = names - exposed_names - {"up"}  # Prometheus's own, per target
            assert not missing, f"{rule.get('alert')}: {missing} is not in /metrics"
            if "alert" in rule:
                assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule
                assert rule["labels"]["severity"] in ("warning", "critical")
                assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_dashboard_queries_use_only_exposed_metrics(exposed_names: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    panels = dashboard["panels"]
    targets = [t for p in panels for t in p.get("targets", [])]
    assert len(targets) >= 10
    used: set[str] = set()
    for target in targets:
        expr = target["expr"].replace("$__rate_interval", "5m").replace("$__range", "1h")
        used |= set(_selectors(promql_parser.parse(expr)))
    assert not used - exposed_names, used - exposed_names
    # Every family agogd defines is on the dashboard (process metrics aside).
    defined = {
        name.removesuffix("_total")
        for name in exposed_names
        if name.startswith("agogd_") and not name.endswith(("_bucket", "_count", "_sum"))
    }
    on_board = {name.removesuffix("_total").removesuffix("_bucket") for name in used}
    assert not defined - on_board - {"agogd_build_info"}, defined - on_board
