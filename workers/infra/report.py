"""Miki's infrastructure report: containers, compose drift, streams, Postgres, disks.

On request (a message on ``agog.orchestration.events.infra_report.requested.<feature>``,
``POST /api/infra/report``, ``agogctl infra report``) and after each deploy
(Berry calls ``publish_report(rt, req_number, reason="deploy")``), agogd
publishes a full report as Miki's deliverable on
``agog.deliverables.miki.devops.<feature>``.

The report holds, for the containers of the configured compose projects,
their status, health, exit code and restart count, and their volume mounts
and networks checked against the compose file (as the real Compose binary
resolves it: ``docker-compose config --format json``); for every ``agog_*``
stream its messages, bytes and each consumer's lag; Postgres reachability;
and the disk use of the data directories. Every part that cannot be looked at
(engine away, compose file missing or invalid, NATS or Postgres down) becomes
an entry that says why: a report is always produced, never an exception.

This module builds, publishes and serves the report. Its parts: the pure
checks, dicts in and dicts out (``infra_compose``: the compose model and each
container against it; ``infra_entries``: streams, disks, verdicts, the
summary and the deliverable), the I/O that feeds them (``infra_inspect``),
requests on NATS (``infra_request``) and the text agogctl prints
(``infra_render``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from orchestrator.core.registry import ConsumerSpec, Pipeline, RegistryError, Reporter
from orchestrator.engine import store
from orchestrator.inbound.rejection import Rejection
from orchestrator.runtime.context import Runtime
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.pull import PullFeed
from orchestrator.runtime.services import Outcome, consume
from orchestrator.runtime.settings import Settings, redact_url
from workers.infra.compose import ComposeProject, compose_entry
from workers.infra.entries import (
    DEFAULT_FEATURE,
    REQUEST_CONSUMER,
    REQUEST_SUBJECT,
    deliverable,
    disk_error,
    encode_within,
    sanitize_feature,
    summarize,
)
from workers.infra.inspect import (
    guarded,
    inspect_containers,
    inspect_disks,
    inspect_postgres,
    inspect_streams,
    load_compose,
    nats_error,
)
from workers.infra.request import BadRequest, parse_request

log = get_logger("agogd.infra_report")

_PUBLISH_ERRORS = (NatsError, OSError, TimeoutError)
RETRY_DELAY = 5.0  # seconds before a request whose report was not published comes back


async def build_report(
    settings: Settings,
    pipeline: Pipeline,
    *,
    nc: NATS | None,
    pool: asyncpg.Pool | None,
    docker_url: str,
    feature: str = DEFAULT_FEATURE,
    reason: str = "request",
) -> dict[str, Any]:
    """The whole report. Never raises: a part that fails says why in its entry."""
    started = time.monotonic()
    budget = settings.infra_report_timeout
    files = list(settings.infra_compose_files)

    async def compose_and_containers() -> tuple[list[str], dict[str, Any], list[Any], list[Any]]:
        loaded = await asyncio.gather(
            *(
                guarded(load_compose(f, docker_url, budget), budget, lambda e: (None, e), "compose")
                for f in files
            )
        )
        models: dict[str, ComposeProject] = {}
        results: list[tuple[str, ComposeProject | None, str | None]] = []
        for file, (project, error) in zip(files, loaded, strict=True):
            if project is not None and project.name in models:
                first = models[project.name].files[0]
                project, error = None, f"declares project {project.name}, as {first} does"
            if project is not None:
                models[project.name] = project
            results.append((file, project, error))
        projects = sorted(set(settings.heal_projects) | set(models))
        if projects:
            engine, containers = await guarded(
                inspect_containers(docker_url, projects, models, min(5.0, budget)),
                budget,
                lambda e: (
                    {
                        "url": redact_url(docker_url),
                        "reachable": False,
                        "error": e,
                        "verdict": "failed",
                        "problems": [f"container engine: {e}"],
                    },
                    [],
                ),
                "containers",
            )
        else:
            engine = {
                "url": redact_url(docker_url),
                "reachable": None,
                "error": "no compose projects configured"
                " (AGOG_HEAL_PROJECTS, AGOG_INFRA_COMPOSE_FILES)",
                "verdict": "ok",
                "problems": [],
            }
            containers = []
        compose = [compose_entry(f, p, e, containers) for f, p, e in results]
        return projects, engine, compose, containers

    def nats_fallback(error: str) -> tuple[dict[str, Any], list[Any]]:
        return nats_error(error), []

    def pg_fallback(error: str) -> dict[str, Any]:
        return {
            "dsn": settings.public_dsn(),
            "reachable": False,
            "error": error,
            "verdict": "failed",
            "problems": [f"postgres: {error}"],
        }

    def disks_fallback(error: str) -> list[dict[str, Any]]:
        return [disk_error(p, error) for p in settings.infra_data_dirs]

    (projects, engine, compose, containers), (nats_part, streams), pg, disks = await asyncio.gather(
        compose_and_containers(),
        guarded(inspect_streams(nc, pipeline), budget, nats_fallback, "streams"),
        guarded(inspect_postgres(settings, pool, min(5.0, budget)), budget, pg_fallback, "pg"),
        guarded(inspect_disks(settings.infra_data_dirs), budget, disks_fallback, "disks"),
    )
    report: dict[str, Any] = {
        "kind": "infrastructure_report",
        "feature": feature,
        "reason": reason,
        "generated_at": store.now_iso(),
        "host": socket.gethostname(),
        "projects": projects,
        "engine": engine,
        "compose": compose,
        "containers": containers,
        "nats": nats_part,
        "streams": streams,
        "postgres": pg,
        "disks": disks,
    }
    summarize(report)
    report["duration_ms"] = round(1000 * (time.monotonic() - started), 1)
    return report


def reporter_of(pipeline: Pipeline) -> Reporter:
    """The registry's reporter that publishes the report (Miki in pipeline.toml:
    the first of its ``[[reporters]]``); a pipeline without one has no report."""
    if not pipeline.reporters:
        raise RegistryError("the pipeline has no [[reporters]] entry to publish the report as")
    return pipeline.reporters[0]


async def publish_report(
    rt: Runtime,
    feature: str,
    *,
    reason: str,
    msg_id: str | None = None,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """Build the report and publish it as Miki's deliverable on
    ``agog.deliverables.miki.devops.<feature>``; never raises.

    ``feature`` is made one subject token (a REQ id stays as it is). ``reason``
    says why (``deploy``, ``request``, ``api``...). ``msg_id`` is the
    ``Nats-Msg-Id``: pass a stable one (e.g. ``infra-report:deploy:<REQ>:<attempt>``)
    to make a retried call publish once; by default each call publishes anew.

    Returns the published payload (``agent``, ``req_number``, ``feature``,
    ``status``, ``summary``, ``verdict``, ``report``...) plus ``subject``,
    ``published`` (JetStream acked it), ``duplicate`` (an earlier publish with
    this msg_id stands) and ``publish_error``.
    """
    feature = sanitize_feature(feature)
    reason = sanitize_feature(reason)[:40]
    reporter = reporter_of(rt.pipeline)
    subject = rt.pipeline.deliverable_subject(reporter, feature)
    report = await build_report(
        rt.settings,
        rt.pipeline,
        nc=rt.nc,
        pool=rt.pool,
        docker_url=rt.settings.docker_url,
        feature=feature,
        reason=reason,
    )
    if requested_by:
        report["requested_by"] = requested_by[:200]
    payload = deliverable(reporter, feature, subject, report)
    data = encode_within(payload, rt.settings.max_message_bytes)
    key = msg_id or f"infra-report:{reason}:{feature}:{uuid.uuid4().hex}"
    result: dict[str, Any] = {
        **payload,
        "subject": subject,
        "published": False,
        "duplicate": False,
        "publish_error": None,
    }
    nc = rt.nc
    try:
        if nc.is_closed:
            raise OSError("not connected to NATS")
        ack = await nc.jetstream().publish(subject, data, headers={"Nats-Msg-Id": key})
        result.update(published=True, duplicate=bool(ack.duplicate))
    except _PUBLISH_ERRORS as exc:
        result["publish_error"] = f"{type(exc).__name__}: {exc}"
    log.info(
        "infra.report",
        feature=feature,
        reason=reason,
        verdict=report["verdict"],
        problems=len(report["problems"]),
        msg_subject=subject,
        published=result["published"],
        duplicate=result["duplicate"],
        publish_error=result["publish_error"],
    )
    return result


# --- the request consumer ----------------------------------------------------------------
class ReportRequests:
    """Answers report requests from a durable consumer; each is acked after its
    report is published, and a malformed one is rejected once and term'd."""

    def __init__(self, rt: Runtime, consumer: ConsumerSpec, template: str) -> None:
        self.rt, self.consumer, self.template = rt, consumer, template
        self.stream = consumer.streams[0]
        self.answered = 0

    async def run(self) -> None:
        """Until the daemon stops: one request at a time, a report each."""
        feed = await PullFeed(self.rt.nc, self.stream, self.consumer.name, batch=1).start()
        await consume(
            feed,
            self.handle_batch,
            name=f"consumer.{self.stream}.{self.consumer.name}",
            stopping=self.rt.stopping,
            states=self.rt.states,
            nak_delay=RETRY_DELAY,
        )

    async def handle_batch(self, msgs: list[Msg]) -> list[Outcome]:
        return [await self.handle(msg) for msg in msgs]

    async def handle(self, msg: Msg) -> Outcome:
        """What becomes of one request: ack once its report is published, nak
        to retry (NATS trouble; max_deliver bounds it), term when malformed."""
        meta = msg.metadata
        try:
            request = parse_request(
                msg.subject, msg.data, self.template, self.rt.settings.max_message_bytes
            )
        except BadRequest as exc:
            await self._reject(msg, exc)
            return "term"
        with contextlib.suppress(Exception):
            await msg.in_progress()
        result = await publish_report(
            self.rt,
            request.feature,
            reason=request.reason,
            msg_id=f"infra-report:{meta.stream}:{meta.sequence.stream}",
            requested_by=request.requested_by,
        )
        if not result["published"]:
            return "nak"
        self.answered += 1
        return "ack"

    async def _reject(self, msg: Msg, err: BadRequest) -> None:
        """Say why on the rejection subject (once per stored request)."""
        rejection = Rejection.of(msg, err.reason, err.message, by="infra-report")
        log.warning(
            "infra.report_request_rejected",
            msg_subject=msg.subject,
            stream=rejection.stream,
            seq=rejection.seq,
            reason_code=err.reason,
            reason=err.message,
        )
        with contextlib.suppress(*_PUBLISH_ERRORS):
            await self.rt.nc.jetstream().publish(
                self.rt.pipeline.subjects["rejection"],
                json.dumps(rejection.event()).encode(),
                headers={"Nats-Msg-Id": rejection.msg_id},
            )


def build(rt: Runtime) -> ReportRequests | None:
    """The consumer of report requests from NATS, or None when the pipeline
    file has no request subject or consumer. Where it runs (beside the
    workflow engine, not in `agogd runner`) is the composition root's call;
    its service is ``requests.run``."""
    template = rt.pipeline.subjects.get(REQUEST_SUBJECT)
    spec = next((c for c in rt.pipeline.consumers if c.name == REQUEST_CONSUMER), None)
    if template is None or spec is None or not spec.streams:
        log.info("infra.report_requests_off", reason="no request subject or consumer")
        return None
    return ReportRequests(rt, spec, template)
