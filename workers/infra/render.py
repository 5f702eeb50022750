"""The report as ``agogctl infra report`` prints it: the verdict, then one
table per part, then the problems."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workers.infra.entries import PROBLEM_KINDS


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
