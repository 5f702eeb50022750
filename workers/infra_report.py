"""Miki's infrastructure report: containers, compose drift, streams, Postgres, disks.

On request (a message on ``agog.orchestration.events.infra_report.requested.<feature>``,
``POST /api/infra/report``, ``agogctl infra report``) and after each deploy
(Berry calls ``publish_report(daemon, req_number, reason="deploy")``), agogd
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

The first half of this module is pure (dicts in, dicts out) and unit-tested;
the second half does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiodocker
import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from orchestrator import store
from orchestrator.logs import get_logger
from orchestrator.notices import validate_req_id
from orchestrator.pull import PullFeed
from orchestrator.registry import ConsumerSpec, Pipeline, Reporter
from orchestrator.settings import Settings, redact_url
from workers.compose_cli import ComposeError, compose_env, run_compose
from workers.health import ENGINE_ERRORS, PROJECT_LABEL, probe_health

if TYPE_CHECKING:
    from orchestrator.daemon import Daemon

log = get_logger("agogd.infra_report")

Verdict = Literal["ok", "degraded", "failed"]
_RANK: dict[str, int] = {"ok": 0, "degraded": 1, "failed": 2}

SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"
REPORTER_AGENT = "miki"
STREAM_PREFIX = "agog_"
DEFAULT_FEATURE = "infra"
REQUEST_SUBJECT = "infra_report_request"  # the subject template's key in pipeline.toml
REQUEST_CONSUMER = "agogd_infra_reports"
DISK_DEGRADED, DISK_FAILED = 90.0, 95.0  # percent of the filesystem used
STREAM_NEAR_LIMIT = 0.9  # a stream this full of its max_msgs/max_bytes drops old data soon
CHECKED_MOUNT_TYPES = ("volume", "bind")  # tmpfs, npipe, image... are not compared
FEATURE_MAX = 64
PROBLEM_KINDS = ("state_problems", "mount_problems", "network_problems", "compose_problems")
DIR_SIZE_MAX_ENTRIES = 200_000  # stop walking a data directory past this many entries

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_ANONYMOUS = re.compile(r"^[0-9a-f]{64}$")
_PUBLISH_ERRORS = (NatsError, OSError, TimeoutError)
_ZERO_TIME = "0001-01-01T00:00:00Z"


# =============================================================================
# Pure part
# =============================================================================
def worst(verdicts: Iterable[str]) -> Verdict:
    """The most severe of some verdicts ("ok" for none)."""
    out: Verdict = "ok"
    for v in verdicts:
        if _RANK.get(v, 1) > _RANK[out]:
            out = v if v in _RANK else "degraded"  # type: ignore[assignment]
    return out


def sanitize_feature(name: object) -> str:
    """One safe subject token (letters, digits, ``_``, ``-``; at most 64 chars)."""
    text = _UNSAFE.sub("_", str(name if name is not None else "").strip())[:FEATURE_MAX]
    return text if text.strip("_") else DEFAULT_FEATURE


def report_req_number(feature: str) -> str:
    """The REQ id the deliverable carries: the feature itself when it is a REQ id
    (a deploy's report), else ``REQ-INFRA-<feature>`` (the engine requires one)."""
    try:
        return validate_req_id(feature)
    except ValueError:
        return f"REQ-INFRA-{sanitize_feature(feature)}"[:FEATURE_MAX]


# --- the compose model ---------------------------------------------------------
@dataclass(frozen=True)
class ExpectedMount:
    """A volume or bind mount the compose file declares for a service."""

    type: str
    target: str
    source: str | None  # engine volume name, host path, or None (anonymous / not compared)
    read_only: bool = False


@dataclass(frozen=True)
class ExpectedService:
    """What a service's containers should look like, as compose resolved it."""

    name: str
    mounts: tuple[ExpectedMount, ...] = ()
    networks: tuple[str, ...] | None = ()  # engine network names; None: network_mode
    network_mode: str | None = None
    tolerated_targets: tuple[str, ...] = ()  # secrets and configs: allowed, not required
    replicas: int = 1


@dataclass(frozen=True)
class ComposeProject:
    """One compose project (one file) resolved by ``docker-compose config``."""

    name: str
    services: Mapping[str, ExpectedService] = field(default_factory=dict)
    files: tuple[str, ...] = ()


def _names(section: Any, project: str) -> dict[str, str]:
    """Top-level volumes/networks: compose key -> engine name."""
    out: dict[str, str] = {}
    for key, spec in (section or {}).items():
        spec = spec or {}
        out[key] = str(spec.get("name") or f"{project}_{key}")
    return out


def compose_project(model: Mapping[str, Any], files: Sequence[str] = ()) -> ComposeProject:
    """The expectations of one ``docker-compose config --format json`` output."""
    project = str(model.get("name") or "")
    if not project:
        raise ValueError("the compose model has no project name")
    volumes = _names(model.get("volumes"), project)
    networks = _names(model.get("networks"), project)
    services: dict[str, ExpectedService] = {}
    for name, svc in (model.get("services") or {}).items():
        svc = svc or {}
        mounts = []
        for vol in svc.get("volumes") or []:
            if not isinstance(vol, Mapping) or vol.get("type", "volume") not in CHECKED_MOUNT_TYPES:
                continue
            kind, source = vol.get("type", "volume"), vol.get("source")
            if kind == "volume" and source:
                source = volumes.get(source, source)
            mounts.append(
                ExpectedMount(kind, str(vol["target"]), source, bool(vol.get("read_only")))
            )
        tolerated = []
        for key, default_dir in (("secrets", "/run/secrets/"), ("configs", "/")):
            for ref in svc.get(key) or []:
                ref = {"source": ref} if isinstance(ref, str) else ref
                target = str(ref.get("target") or ref.get("source") or "")
                tolerated.append(target if target.startswith("/") else default_dir + target)
        mode = svc.get("network_mode")
        if mode:
            nets: tuple[str, ...] | None = None
        else:
            keys = list(svc.get("networks") or {}) or ["default"]
            nets = tuple(sorted(networks.get(k, f"{project}_{k}") for k in keys))
        replicas = svc.get("scale", (svc.get("deploy") or {}).get("replicas", 1))
        services[name] = ExpectedService(
            name=name,
            mounts=tuple(mounts),
            networks=nets,
            network_mode=mode,
            tolerated_targets=tuple(tolerated),
            replicas=int(replicas if replicas is not None else 1),
        )
    return ComposeProject(project, services, tuple(files))


# --- one container -------------------------------------------------------------
def _time(value: Any) -> str | None:
    return value if isinstance(value, str) and value and value != _ZERO_TIME else None


def _state_problems(
    status: str, health: str | None, exit_code: Any, policy: str, oom: bool, error: str | None
) -> list[tuple[Verdict, str]]:
    out: list[tuple[Verdict, str]] = []
    if status == "running":
        if health == "unhealthy":
            out.append(("failed", "unhealthy"))
        elif health == "starting":
            out.append(("degraded", "its health check has not passed yet"))
    elif status == "exited":
        if exit_code not in (0, None):
            out.append(("failed", f"exited with code {exit_code}"))
        elif policy in ("always", "unless-stopped"):
            out.append(("degraded", f"stopped (exit 0) although its restart policy is {policy}"))
    elif status == "dead":
        out.append(("failed", "dead"))
    elif status == "created":
        out.append(("degraded", "created but never started"))
    else:  # restarting, paused, removing, anything new
        out.append(("degraded", status))
    if oom and status != "running":
        out.append(("failed", "killed by the OOM killer"))
    if error:
        out.append(("failed", f"engine error: {error}"))
    return out


def _mount_view(mount: Mapping[str, Any]) -> dict[str, Any]:
    kind = mount.get("Type") or ""
    name = mount.get("Name") or ""
    return {
        "type": kind,
        "source": name if kind == "volume" and name else mount.get("Source"),
        "target": mount.get("Destination"),
        "read_only": not mount.get("RW", True),
        "anonymous": bool(kind == "volume" and _ANONYMOUS.match(name)),
    }


def check_mounts(
    actual: Sequence[Mapping[str, Any]], expected: ExpectedService | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The container's mounts, each marked as expected or not, and what differs."""
    mounts = [_mount_view(m) for m in actual or []]
    if expected is None:
        return mounts, []
    problems: list[str] = []
    by_target = {m["target"]: m for m in mounts}
    declared = {e.target for e in expected.mounts}
    for want in expected.mounts:
        have = by_target.get(want.target)
        what = f"{want.type} {want.source}" if want.source else f"anonymous {want.type}"
        if have is None:
            problems.append(f"missing {what} mount at {want.target}")
            continue
        if have["type"] != want.type:
            problems.append(
                f"{want.target}: a {have['type']} mount, the compose file says {want.type}"
            )
        elif want.source is not None and _norm(have["source"], want.type) != _norm(
            want.source, want.type
        ):
            problems.append(
                f"{want.target}: mounts {have['source']}, the compose file says {want.source}"
            )
        if have["read_only"] != want.read_only:
            problems.append(
                f"{want.target}: {'read-only' if have['read_only'] else 'read-write'},"
                f" the compose file says {'read-only' if want.read_only else 'read-write'}"
            )
    for mount in mounts:
        known = mount["target"] in declared or mount["target"] in expected.tolerated_targets
        mount["expected"] = known
        if known or mount["anonymous"] or mount["type"] not in CHECKED_MOUNT_TYPES:
            continue
        problems.append(
            f"unexpected {mount['type']} mount {mount['source']} at {mount['target']}"
            " (not in the compose file)"
        )
    return mounts, problems


def _norm(source: Any, kind: str) -> str:
    text = str(source or "")
    return os.path.normpath(text) if kind == "bind" and text else text


def check_networks(
    actual: Mapping[str, Any] | None, expected: ExpectedService | None, running: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    """The container's networks, each marked as expected or not, and what differs."""
    networks = [
        {"name": name, "ip": (spec or {}).get("IPAddress") or None}
        for name, spec in sorted((actual or {}).items())
    ]
    if expected is None or expected.networks is None:
        return networks, []
    if not networks and not running:
        return networks, []  # some engines drop a stopped container's endpoints
    want = set(expected.networks)
    have = {n["name"] for n in networks}
    problems = [f"not on network {n} (the compose file says so)" for n in sorted(want - have)]
    problems += [
        f"on network {n}, which the compose file does not give it" for n in sorted(have - want)
    ]
    for net in networks:
        net["expected"] = net["name"] in want
    return networks, problems


def container_entry(
    info: Mapping[str, Any],
    project: ComposeProject | None = None,
    *,
    probed_health: str | None = None,
) -> dict[str, Any]:
    """One container's part of the report, from its inspect output.

    ``project`` is its compose project's model (None: not compared);
    ``probed_health`` the result of running its health check through exec,
    for engines that do not run the check themselves (podman without systemd).
    """
    config = info.get("Config") or {}
    labels = config.get("Labels") or {}
    state = info.get("State") or {}
    host = info.get("HostConfig") or {}
    status = str(state.get("Status") or "unknown")
    health = (state.get("Health") or {}).get("Status") or None
    health_source = "engine" if health else None
    if probed_health is not None and health in (None, "starting"):
        health, health_source = probed_health, "exec"
    policy = (host.get("RestartPolicy") or {}).get("Name") or "no"
    service_name = labels.get(SERVICE_LABEL)
    expected = project.services.get(service_name or "") if project else None
    compose_problems: list[str] = []
    if project is not None and expected is None:
        compose_problems.append(
            f"service {service_name!r} is not in the compose file"
            if service_name
            else "no compose service label"
        )
    mounts, mount_problems = check_mounts(info.get("Mounts") or [], expected)
    networks, network_problems = check_networks(
        (info.get("NetworkSettings") or {}).get("Networks"), expected, status == "running"
    )
    state_problems = _state_problems(
        status,
        health,
        state.get("ExitCode"),
        policy,
        bool(state.get("OOMKilled")),
        state.get("Error") or None,
    )
    drift = mount_problems + network_problems + compose_problems
    verdict = worst([v for v, _ in state_problems] + ["degraded" for _ in drift])
    return {
        "name": str(info.get("Name") or "").lstrip("/"),
        "id": str(info.get("Id") or "")[:12],
        "image": config.get("Image"),
        "project": labels.get(PROJECT_LABEL),
        "service": service_name,
        "oneoff": labels.get(ONEOFF_LABEL) == "True",
        "status": status,
        "health": health,
        "health_source": health_source,
        "exit_code": state.get("ExitCode"),
        "restart_count": int(info.get("RestartCount") or 0),
        "restart_policy": policy,
        "started_at": _time(state.get("StartedAt")),
        "finished_at": _time(state.get("FinishedAt")),
        "compose_checked": expected is not None,
        "network_mode": expected.network_mode if expected else None,
        "mounts": mounts,
        "networks": networks,
        "state_problems": [text for _, text in state_problems],
        "mount_problems": mount_problems,
        "network_problems": network_problems,
        "compose_problems": compose_problems,
        "verdict": verdict,
    }


def compose_entry(
    file: str,
    project: ComposeProject | None,
    error: str | None,
    containers: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """One compose file: the project it declares, and its services without a container."""
    if project is None:
        return {
            "file": file,
            "project": None,
            "services": [],
            "missing_services": [],
            "error": error,
            "verdict": "degraded",
            "problems": [f"compose file {file}: {error}"],
        }
    present = {
        c.get("service")
        for c in containers
        if c.get("project") == project.name and not c.get("oneoff")
    }
    missing = sorted(
        name for name, svc in project.services.items() if svc.replicas > 0 and name not in present
    )
    return {
        "file": file,
        "project": project.name,
        "services": sorted(project.services),
        "missing_services": missing,
        "error": None,
        "verdict": "degraded" if missing else "ok",
        "problems": [f"project {project.name}: service {m} has no container" for m in missing],
    }


# --- streams, disks ----------------------------------------------------------------
def consumer_entry(info: Mapping[str, Any]) -> dict[str, Any]:
    """A consumer in the JetStream API's shape -> name, pending, ack pending, lag."""
    pending = int(info.get("num_pending") or 0)
    ack_pending = int(info.get("num_ack_pending") or 0)
    return {
        "name": info.get("name"),
        "filter_subject": (info.get("config") or {}).get("filter_subject") or None,
        "pending": pending,  # stored, not yet delivered
        "ack_pending": ack_pending,  # delivered, not yet acked
        "redelivered": int(info.get("num_redelivered") or 0),
        "lag": pending + ack_pending,  # messages the consumer has not finished
    }


def stream_entry(info: Mapping[str, Any], consumers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A stream in the JetStream API's shape (``config``, ``state``) and its consumers."""
    config, state = info.get("config") or {}, info.get("state") or {}
    messages, size = int(state.get("messages") or 0), int(state.get("bytes") or 0)
    problems = []
    for used, limit, what in (
        (messages, config.get("max_msgs"), "max_msgs"),
        (size, config.get("max_bytes"), "max_bytes"),
    ):
        if isinstance(limit, int) and limit > 0 and used >= STREAM_NEAR_LIMIT * limit:
            problems.append(
                f"stream {config.get('name')} is at {100 * used / limit:.0f}% of its {what}"
                " (old messages are being dropped)"
            )
    entries = sorted((consumer_entry(c) for c in consumers), key=lambda c: str(c["name"]))
    return {
        "stream": config.get("name"),
        "subjects": list(config.get("subjects") or []),
        "messages": messages,
        "bytes": size,
        "first_seq": state.get("first_seq"),
        "last_seq": state.get("last_seq"),
        "consumers": entries,
        "lag": sum(c["lag"] for c in entries),
        "verdict": "degraded" if problems else "ok",
        "problems": problems,
    }


def registry_problems(pipeline: Pipeline, streams: Sequence[Mapping[str, Any]]) -> list[str]:
    """Streams and durable consumers of the registry that the server lacks."""
    have = {s["stream"]: {c["name"] for c in s["consumers"]} for s in streams}
    problems = [f"stream {s.name} is missing" for s in pipeline.streams if s.name not in have]
    for consumer in pipeline.consumers:
        for stream in consumer.streams:
            if stream in have and consumer.name not in have[stream]:
                problems.append(f"consumer {consumer.name} on {stream} is missing")
    return problems


def disk_entry(
    path: str,
    total: int,
    used: int,
    free: int,
    size_bytes: int | None = None,
    size_complete: bool = True,
) -> dict[str, Any]:
    """The filesystem holding a data directory, and the directory's own size."""
    percent = round(100.0 * used / total, 1) if total else 0.0
    verdict: Verdict = (
        "failed" if percent >= DISK_FAILED else "degraded" if percent >= DISK_DEGRADED else "ok"
    )
    problems = [] if verdict == "ok" else [f"{path}: its filesystem is {percent}% full"]
    return {
        "path": path,
        "exists": True,
        "total": total,
        "used": used,
        "free": free,
        "percent": percent,
        "size_bytes": size_bytes,
        "size_complete": size_complete,
        "error": None,
        "verdict": verdict,
        "problems": problems,
    }


def disk_error(path: str, error: str) -> dict[str, Any]:
    return {
        "path": path,
        "exists": False,
        "error": error,
        "verdict": "degraded",
        "problems": [f"{path}: {error}"],
    }


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Fill the report's overall ``verdict``, its ``problems`` and ``summary`` line."""
    problems: list[str] = []
    verdicts: list[str] = []
    for key in ("engine", "nats", "postgres"):
        part = report.get(key) or {}
        verdicts.append(part.get("verdict", "ok"))
        problems += part.get("problems", [])
    for key in ("compose", "streams", "disks"):
        for part in report.get(key) or []:
            verdicts.append(part.get("verdict", "ok"))
            problems += part.get("problems", [])
    for c in report.get("containers") or []:
        verdicts.append(c["verdict"])
        for kind in PROBLEM_KINDS:
            problems += [f"container {c['name']}: {p}" for p in c.get(kind, [])]
    report["verdict"] = worst(verdicts)
    report["problems"] = problems
    containers = report.get("containers") or []
    healthy = sum(1 for c in containers if c["verdict"] == "ok")
    pg = report.get("postgres") or {}
    parts = [
        f"{len(containers)} containers ({healthy} ok)",
        f"{len(report.get('streams') or [])} streams",
        "postgres reachable" if pg.get("reachable") else "postgres UNREACHABLE",
        f"{len(report.get('disks') or [])} data dirs",
    ]
    head = f"Infrastructure {report['verdict']}: " + ", ".join(parts)
    if problems:
        head += f"; {len(problems)} problem(s), first: {problems[0]}"
    report["summary"] = head
    return report


def deliverable(
    reporter: Reporter, feature: str, subject: str, report: Mapping[str, Any]
) -> dict[str, Any]:
    """Miki's completion notice carrying the report (accepted by ``parse_notice``)."""
    affected = [c["name"] for c in report.get("containers") or [] if c.get("verdict") != "ok"]
    return {
        "agent": reporter.agent,
        "req_number": report_req_number(feature),
        "feature": feature,
        "status": "COMPLETE",
        "deliverable": f"nats://{subject}",
        "summary": report.get("summary", ""),
        "verdict": report.get("verdict"),
        "reason": report.get("reason"),
        "containers_affected": affected,
        "report": dict(report),
        "timestamp": store.now_iso(),
    }


def encode_within(payload: dict[str, Any], max_bytes: int) -> bytes:
    """The payload as JSON, slimmed when it would be over ``max_bytes`` (the
    engine refuses larger notices): first without per-mount/network/consumer
    detail, then only the verdict and problems."""
    data = json.dumps(payload, default=str).encode()
    if len(data) <= max_bytes:
        return data
    report = dict(payload["report"])
    report["containers"] = [
        {
            **{k: v for k, v in c.items() if k not in ("mounts", "networks")},
            "mounts": len(c.get("mounts", [])),
            "networks": len(c.get("networks", [])),
        }
        for c in report.get("containers") or []
    ]
    report["streams"] = [
        {**{k: v for k, v in s.items() if k != "consumers"}, "consumers": len(s["consumers"])}
        for s in report.get("streams") or []
    ]
    report["truncated"] = "mounts, networks and consumers left out to fit the message limit"
    data = json.dumps({**payload, "report": report}, default=str).encode()
    if len(data) <= max_bytes:
        return data
    keep = ("kind", "feature", "reason", "generated_at", "host", "verdict", "summary")
    small = {k: report.get(k) for k in keep}
    small["problems"] = report.get("problems", [])[:50]
    small["truncated"] = "only the verdict and the first problems fit the message limit"
    return json.dumps({**payload, "report": small}, default=str).encode()


# --- requests on NATS ---------------------------------------------------------------
class BadRequest(ValueError):
    """A report request that will stay wrong: rejected once and term'd."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class ReportRequest:
    feature: str
    reason: str = "request"
    requested_by: str | None = None


def parse_request(
    subject: str, data: bytes, template: str, max_bytes: int = 1_048_576
) -> ReportRequest:
    """A request on ``template`` (``...requested.{feature}``): the feature comes from
    the subject; the optional JSON body may carry ``feature`` (must agree),
    ``reason`` and ``requested_by``."""
    prefix = template.split("{feature}", 1)[0]
    token = subject[len(prefix) :] if subject.startswith(prefix) else ""
    if not token or "." in token:
        raise BadRequest("wrong_subject", f"{subject} does not name one feature after {prefix}")
    feature = sanitize_feature(token)
    if len(data) > max_bytes:
        raise BadRequest("too_large", f"{len(data)} bytes; the limit is {max_bytes}")
    body: Any = {}
    if data.strip():
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest("invalid_json", f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("wrong_schema", "a report request is a JSON object (or empty)")
    given = body.get("feature")
    if given is not None and (not isinstance(given, str) or sanitize_feature(given) != feature):
        raise BadRequest(
            "wrong_schema", f"feature mismatch: subject says {feature}, payload says {given!r}"
        )
    reason, who = body.get("reason", "request"), body.get("requested_by")
    if not isinstance(reason, str) or (who is not None and not isinstance(who, str)):
        raise BadRequest("wrong_schema", "reason and requested_by must be strings")
    return ReportRequest(feature, sanitize_feature(reason or "request")[:40], who)


# --- the readable summary (agogctl) ----------------------------------------------------
def _size(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def render_text(result: Mapping[str, Any]) -> str:
    """A published report (or ``publish_report``'s result) as readable tables."""
    report = result.get("report", result)
    lines = [
        f"infrastructure report  feature={report.get('feature')}  reason={report.get('reason')}"
        f"  verdict={str(report.get('verdict', '?')).upper()}  at {report.get('generated_at')}"
    ]
    if result.get("subject"):
        state = "published" if result.get("published") else "NOT published"
        lines.append(f"{state} on {result['subject']}")
    engine = report.get("engine") or {}
    lines.append(
        f"\ncontainers  (engine {engine.get('url')}: "
        + ("reachable" if engine.get("reachable") else f"{engine.get('error') or 'not asked'}")
        + f"; projects {', '.join(report.get('projects') or []) or '-'})"
    )
    containers = report.get("containers") or []
    if containers:
        rows = [["NAME", "SERVICE", "STATUS", "HEALTH", "EXIT", "RESTARTS", "VERDICT", "PROBLEMS"]]
        for c in containers:
            found = [p for k in PROBLEM_KINDS for p in c.get(k, [])]
            rows.append(
                [
                    str(c.get("name")),
                    str(c.get("service") or "-"),
                    str(c.get("status")),
                    str(c.get("health") or "-"),
                    str(c.get("exit_code")),
                    str(c.get("restart_count")),
                    str(c.get("verdict")),
                    "; ".join(found) or "-",
                ]
            )
        lines += _table(rows)
    else:
        lines.append("  (no containers)")
    for entry in report.get("compose") or []:
        lines.append(
            f"  compose {entry['file']}: "
            + (
                f"project {entry['project']}, missing services: "
                f"{', '.join(entry['missing_services']) or 'none'}"
                if entry.get("project")
                else str(entry.get("error"))
            )
        )
    nats_part = report.get("nats") or {}
    lines.append(
        "\nstreams" + ("" if nats_part.get("reachable") else f"  ({nats_part.get('error')})")
    )
    streams = report.get("streams") or []
    if streams:
        rows = [["STREAM", "MESSAGES", "BYTES", "LAG", "CONSUMERS (lag)"]]
        for s in streams:
            rows.append(
                [
                    str(s["stream"]),
                    str(s["messages"]),
                    _size(s["bytes"]),
                    str(s["lag"]),
                    ", ".join(f"{c['name']}={c['lag']}" for c in s["consumers"]) or "-",
                ]
            )
        lines += _table(rows)
    pg = report.get("postgres") or {}
    lines.append(
        "\npostgres  "
        + (
            f"reachable  version {pg.get('version')}  {pg.get('latency_ms')} ms"
            f"  database {_size(pg.get('database_bytes'))}"
            if pg.get("reachable")
            else f"UNREACHABLE: {pg.get('error')}"
        )
    )
    disks = report.get("disks") or []
    lines.append("\ndata directories" + ("" if disks else "  (none configured)"))
    if disks:
        rows = [["PATH", "USED", "FREE", "TOTAL", "USE%", "DIR SIZE"]]
        for d in disks:
            if d.get("exists"):
                rows.append(
                    [
                        d["path"],
                        _size(d["used"]),
                        _size(d["free"]),
                        _size(d["total"]),
                        f"{d['percent']}%",
                        _size(d.get("size_bytes")),
                    ]
                )
            else:
                rows.append([d["path"], "-", "-", "-", "-", str(d.get("error"))])
        lines += _table(rows)
    problems = report.get("problems") or []
    lines.append(f"\nproblems ({len(problems)})")
    lines += [f"  - {p}" for p in problems] or ["  none"]
    return "\n".join(lines)


# =============================================================================
# I/O part
# =============================================================================
async def _guarded(
    work: Awaitable[Any], timeout: float, fallback: Callable[[str], Any], what: str
) -> Any:
    """Run one part of the report; a timeout or an unexpected error becomes its entry."""
    try:
        async with asyncio.timeout(timeout):
            return await work
    except TimeoutError:
        return fallback(f"timed out after {timeout:g}s")
    except Exception as exc:  # a report is always produced
        log.warning("infra.report_part_failed", part=what, error=repr(exc))
        return fallback(f"{type(exc).__name__}: {exc}")


def _existing_file(file: str) -> Path | None:
    path = Path(file).expanduser().absolute()
    return path if path.is_file() else None


async def load_compose(
    file: str, docker_url: str | None, timeout: float
) -> tuple[ComposeProject | None, str | None]:
    """Resolve one compose file with the real Compose binary; (project, error)."""
    path = await asyncio.to_thread(_existing_file, file)
    if path is None:
        return None, "not found"
    try:
        code, out, err = await run_compose(
            ["-f", str(path), "config", "--format", "json"],
            cwd=path.parent,
            env=compose_env(docker_url),
            timeout=timeout,
        )
    except ComposeError as exc:
        return None, str(exc)
    except TimeoutError:
        return None, f"docker-compose config timed out after {timeout:g}s"
    if code != 0:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        return None, f"invalid: {lines[-1][:500] if lines else f'exit code {code}'}"
    try:
        return compose_project(json.loads(out), (str(path),)), None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"unreadable compose model: {exc}"


async def _probe_health(
    docker: aiodocker.Docker, info: dict[str, Any], timeout: float
) -> str | None:
    """The container's own HEALTHCHECK run through exec (for engines without a
    health timer); None if it has none or the engine could not run it."""
    try:
        healthy = await probe_health(docker, info, timeout)
    except ENGINE_ERRORS:
        return None
    return None if healthy is None else "healthy" if healthy else "unhealthy"


def _needs_probe(info: Mapping[str, Any]) -> bool:
    state = info.get("State") or {}
    health = (state.get("Health") or {}).get("Status") or None
    test = ((info.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    return bool(state.get("Running")) and health in (None, "starting") and bool(test)


async def inspect_containers(
    docker_url: str,
    projects: Sequence[str],
    models: Mapping[str, ComposeProject],
    probe_timeout: float = 5.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(engine part, container entries) for the containers of some compose projects."""
    engine: dict[str, Any] = {"url": redact_url(docker_url), "reachable": False, "version": None}
    wanted = set(projects)
    docker: aiodocker.Docker | None = None
    try:
        docker = aiodocker.Docker(url=docker_url)
        version = await docker.version()
        engine.update(reachable=True, version=version.get("Version"), error=None)
        summaries = [
            s
            for s in await docker.containers.list(all=True)
            if (s._container.get("Labels") or {}).get(PROJECT_LABEL) in wanted
        ]
        shown = await asyncio.gather(*(s.show() for s in summaries), return_exceptions=True)
        infos = [i for i in shown if isinstance(i, dict)]  # one removed meanwhile: gone
        probes = await asyncio.gather(
            *(
                _probe_health(docker, i, probe_timeout) if _needs_probe(i) else _none()
                for i in infos
            )
        )
    except (*ENGINE_ERRORS, ValueError) as exc:
        engine.update(
            error=f"{type(exc).__name__}: {exc}"[:500],
            verdict="failed",
            problems=[f"container engine {engine['url']} unreachable: {exc}"[:500]],
        )
        return engine, []
    finally:
        if docker is not None:
            await docker.close()
    entries = [
        container_entry(
            info,
            models.get(((info.get("Config") or {}).get("Labels") or {}).get(PROJECT_LABEL, "")),
            probed_health=probed,
        )
        for info, probed in zip(infos, probes, strict=True)
    ]
    entries.sort(key=lambda c: (str(c["project"]), str(c["service"]), c["name"]))
    engine.update(verdict="ok", problems=[])
    return engine, entries


async def _none() -> None:
    return None


def _stream_dict(info: Any) -> dict[str, Any]:
    config, state = info.config, info.state
    return {
        "config": {
            "name": config.name,
            "subjects": list(config.subjects or []),
            "max_msgs": config.max_msgs,
            "max_bytes": config.max_bytes,
        },
        "state": {
            "messages": state.messages,
            "bytes": state.bytes,
            "first_seq": state.first_seq,
            "last_seq": state.last_seq,
        },
    }


def _consumer_dict(info: Any) -> dict[str, Any]:
    return {
        "name": info.name,
        "config": {"filter_subject": info.config.filter_subject if info.config else None},
        "num_pending": info.num_pending,
        "num_ack_pending": info.num_ack_pending,
        "num_redelivered": info.num_redelivered,
    }


async def inspect_streams(
    nc: NATS | None, pipeline: Pipeline
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(NATS part, stream entries) for every stream named ``agog_*``."""
    if nc is None or not nc.is_connected:
        return _nats_error("not connected to NATS"), []
    try:
        jsm = nc.jsm(timeout=5)
        entries = []
        for info in await jsm.streams_info():
            if not str(info.config.name).startswith(STREAM_PREFIX):
                continue
            consumers = await jsm.consumers_info(info.config.name)
            entries.append(stream_entry(_stream_dict(info), [_consumer_dict(c) for c in consumers]))
    except (NatsError, OSError, TimeoutError) as exc:
        return _nats_error(f"{type(exc).__name__}: {exc}"), []
    entries.sort(key=lambda s: str(s["stream"]))
    problems = registry_problems(pipeline, entries)
    url = nc.connected_url
    return {
        "reachable": True,
        "server": redact_url(url.geturl()) if url is not None else None,
        "error": None,
        "verdict": "degraded" if problems else "ok",
        "problems": problems,
    }, entries


def _nats_error(error: str) -> dict[str, Any]:
    return {
        "reachable": False,
        "error": error,
        "verdict": "failed",
        "problems": [f"NATS: {error}"],
    }


async def inspect_postgres(
    settings: Settings, pool: asyncpg.Pool | None, timeout: float = 5.0
) -> dict[str, Any]:
    """Reachability (``SELECT 1``), server version, database size and latency."""
    part: dict[str, Any] = {"dsn": settings.public_dsn(), "reachable": False}
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            if pool is not None:
                async with pool.acquire() as conn:
                    row = await _pg_facts(conn)
            else:
                conn = await asyncpg.connect(settings.dsn(), timeout=timeout)
                try:
                    row = await _pg_facts(conn)
                finally:
                    await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        part.update(error=error, verdict="failed", problems=[f"postgres unreachable: {error}"])
        return part
    part.update(
        reachable=True,
        version=row["version"],
        database=row["database"],
        database_bytes=row["size"],
        latency_ms=round(1000 * (time.monotonic() - started), 1),
        error=None,
        verdict="ok",
        problems=[],
    )
    return part


async def _pg_facts(conn: asyncpg.Connection) -> asyncpg.Record:
    assert await conn.fetchval("SELECT 1") == 1
    return await conn.fetchrow(
        "SELECT current_setting('server_version') AS version, current_database() AS database,"
        " pg_database_size(current_database()) AS size"
    )


def _dir_size(path: Path) -> tuple[int, bool]:
    """Bytes under a directory (not following links), bounded in entries."""
    total, seen, stack = 0, 0, [path]
    while stack:
        folder = stack.pop()
        with contextlib.suppress(OSError), os.scandir(folder) as it:
            for item in it:
                seen += 1
                if seen > DIR_SIZE_MAX_ENTRIES:
                    return total, False
                with contextlib.suppress(OSError):
                    if item.is_dir(follow_symlinks=False):
                        stack.append(Path(item.path))
                    else:
                        total += item.stat(follow_symlinks=False).st_size
    return total, True


def _disk(path: str) -> dict[str, Any]:
    folder = Path(path).expanduser().absolute()
    if not folder.exists():
        return disk_error(str(folder), "no such directory")
    try:
        usage = shutil.disk_usage(folder)
    except OSError as exc:
        return disk_error(str(folder), f"cannot read its disk use: {exc}")
    size, complete = _dir_size(folder) if folder.is_dir() else (folder.stat().st_size, True)
    return disk_entry(str(folder), usage.total, usage.used, usage.free, size, complete)


async def inspect_disks(paths: Sequence[str]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(asyncio.to_thread(_disk, p) for p in paths)))


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
                _guarded(
                    load_compose(f, docker_url, budget), budget, lambda e: (None, e), "compose"
                )
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
            engine, containers = await _guarded(
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
        return _nats_error(error), []

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
        _guarded(inspect_streams(nc, pipeline), budget, nats_fallback, "streams"),
        _guarded(inspect_postgres(settings, pool, min(5.0, budget)), budget, pg_fallback, "pg"),
        _guarded(inspect_disks(settings.infra_data_dirs), budget, disks_fallback, "disks"),
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
    """Miki's reporter entry of the registry (the first reporter if renamed)."""
    for reporter in pipeline.reporters:
        if reporter.agent == REPORTER_AGENT:
            return reporter
    if pipeline.reporters:
        return pipeline.reporters[0]
    return Reporter("Infrastructure", REPORTER_AGENT, "devops", "agog_features_devops")


async def publish_report(
    daemon: Daemon,
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
    reporter = reporter_of(daemon.pipeline)
    subject = daemon.pipeline.deliverable_subject(reporter, feature)
    report = await build_report(
        daemon.settings,
        daemon.pipeline,
        nc=daemon.nc,
        pool=daemon.pool,
        docker_url=daemon.settings.docker_url,
        feature=feature,
        reason=reason,
    )
    if requested_by:
        report["requested_by"] = requested_by[:200]
    payload = deliverable(reporter, feature, subject, report)
    data = encode_within(payload, daemon.settings.max_message_bytes)
    key = msg_id or f"infra-report:{reason}:{feature}:{uuid.uuid4().hex}"
    result: dict[str, Any] = {
        **payload,
        "subject": subject,
        "published": False,
        "duplicate": False,
        "publish_error": None,
    }
    nc = daemon.nc
    try:
        if nc is None or nc.is_closed:
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

    def __init__(self, daemon: Daemon, consumer: ConsumerSpec, template: str) -> None:
        self.daemon, self.consumer, self.template = daemon, consumer, template
        self.stream = consumer.streams[0]
        self.answered = 0

    async def run(self, daemon: Daemon) -> None:
        assert daemon.nc is not None
        feed = await PullFeed(daemon.nc, self.stream, self.consumer.name, batch=1).start()
        name = f"consumer.{self.stream}.{self.consumer.name}"
        try:
            while not daemon.stopping.is_set():
                msgs = await feed.next_batch(timeout=1)
                feed.report(daemon.states, name)
                for msg in msgs:
                    try:
                        await self.handle(msg)
                    except Exception as exc:  # a bug must not stop the daemon: retry later
                        log.exception("infra.report_request_failed", msg_subject=msg.subject)
                        daemon.states.set(name, "failing", "warning", error=repr(exc))
                        with contextlib.suppress(Exception):
                            await msg.nak(delay=5)
        finally:
            await feed.stop()

    async def handle(self, msg: Msg) -> None:
        meta = msg.metadata
        try:
            request = parse_request(
                msg.subject, msg.data, self.template, self.daemon.settings.max_message_bytes
            )
        except BadRequest as exc:
            await self._reject(msg, exc)
            return
        with contextlib.suppress(Exception):
            await msg.in_progress()
        result = await publish_report(
            self.daemon,
            request.feature,
            reason=request.reason,
            msg_id=f"infra-report:{meta.stream}:{meta.sequence.stream}",
            requested_by=request.requested_by,
        )
        with contextlib.suppress(Exception):
            if result["published"]:
                self.answered += 1
                await msg.ack()
            else:  # NATS trouble: try again later (max_deliver bounds it)
                await msg.nak(delay=5)

    async def _reject(self, msg: Msg, err: BadRequest) -> None:
        meta = msg.metadata
        stream, seq = meta.stream, meta.sequence.stream
        log.warning(
            "infra.report_request_rejected",
            msg_subject=msg.subject,
            stream=stream,
            seq=seq,
            reason_code=err.reason,
            reason=err.message,
        )
        assert self.daemon.nc is not None
        with contextlib.suppress(*_PUBLISH_ERRORS):
            await self.daemon.nc.jetstream().publish(
                self.daemon.pipeline.subjects["rejection"],
                json.dumps(
                    {
                        "eventType": "message.rejected",
                        "reason_code": err.reason,
                        "reason": err.message,
                        "subject": msg.subject,
                        "stream": stream,
                        "stream_seq": seq,
                        "by": "infra-report",
                        "timestamp": store.now_iso(),
                        "payload_excerpt": msg.data[:2048].decode("utf-8", "replace"),
                    }
                ).encode(),
                headers={"Nats-Msg-Id": f"infra-report-reject:{stream}:{seq}"},
            )
        with contextlib.suppress(Exception):
            await msg.term()


def install(daemon: Daemon) -> ReportRequests | None:
    """Answer report requests from NATS, where the workflow engine runs (the
    API's POST /api/infra/report lives there too). Off in `agogd runner`, or
    when the pipeline file has no request subject or consumer."""
    if daemon.engine is None:
        return None
    template = daemon.pipeline.subjects.get(REQUEST_SUBJECT)
    spec = next((c for c in daemon.pipeline.consumers if c.name == REQUEST_CONSUMER), None)
    if template is None or spec is None or not spec.streams:
        log.info("infra.report_requests_off", reason="no request subject or consumer")
        return None
    requests = ReportRequests(daemon, spec, template)
    daemon.add_service("infra-report-requests", requests.run)
    return requests
