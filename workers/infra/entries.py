"""Miki's report, the pure part: verdicts, names, stream and disk entries,
the summary and the deliverable (dicts in, dicts out; unit-tested)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from orchestrator.core.registry import Pipeline, Reporter
from orchestrator.engine import store
from orchestrator.inbound.notices import validate_req_id

Verdict = Literal["ok", "degraded", "failed"]
_RANK: dict[str, int] = {"ok": 0, "degraded": 1, "failed": 2}

STREAM_PREFIX = "agog_"
DEFAULT_FEATURE = "infra"
REQUEST_SUBJECT = "infra_report_request"  # the subject template's key in pipeline.toml
REQUEST_CONSUMER = "agogd_infra_reports"
DISK_DEGRADED, DISK_FAILED = 90.0, 95.0  # percent of the filesystem used
STREAM_NEAR_LIMIT = 0.9  # a stream this full of its max_msgs/max_bytes drops old data soon
FEATURE_MAX = 64
PROBLEM_KINDS = ("state_problems", "mount_problems", "network_problems", "compose_problems")

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


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
