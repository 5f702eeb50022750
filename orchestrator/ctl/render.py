"""agogctl's human output: aligned tables, ANSI colours on a terminal.

Colours are used only when stdout is a TTY and ``NO_COLOR`` is unset
(``FORCE_COLOR`` forces them, e.g. through ``less -R``). No dependency
beyond the standard library: the API's JSON is the source, this only lays
it out. Agents wrote much of that JSON: agogctl neutralises every string in
it before it is laid out, and ``terminal_safe`` lets no escape sequence but
the painter's own colours reach the terminal.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

from orchestrator.core.safe_text import excerpt, neutralise

_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
    "bold red": "1;31",
    "bold yellow": "1;33",
    "bold green": "1;32",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# REQ status -> style
STATUS_STYLE = {
    "PENDING": "dim",
    "IN_PROGRESS": "cyan",
    "BLOCKED": "bold yellow",
    "ESCALATED": "bold red",
    "COMPLETE": "green",
    "DEPLOYED": "bold green",
    "CANCELLED": "dim",
}
# stage cell state -> (text, style)
CELL = {
    "waiting": (".", "dim"),
    "running": ("run", "cyan"),
    "done": ("ok", "green"),
    "rejected": ("rej", "magenta"),
    "failed": ("fail", "red"),
    "blocked": ("BLOCK", "bold yellow"),
    "cancelled": ("x", "dim"),
}
# SSE status -> style, for tail
EVENT_STYLE = {
    "running": "cyan",
    "done": "green",
    "failed": "red",
    "blocked": "bold yellow",
    "IN_PROGRESS": "blue",
    "finished": "bold green",
    "COMPLETE": "green",
    "DEPLOYED": "bold green",
    "CANCELLED": "dim",
    "ESCALATED": "bold red",
    "decided": "magenta",
    "rejected": "magenta",
}


def colour_enabled(stream: TextIO | None = None) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    stream = stream or sys.stdout
    return stream.isatty() and os.environ.get("TERM") != "dumb"


class Painter:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, style: str | None) -> str:
        if not self.enabled or not style or style not in _CODES:
            return text
        return f"\x1b[{_CODES[style]}m{text}\x1b[0m"


def terminal_safe(line: str, colour: bool) -> str:
    """A line as it may reach the terminal: every control character escaped
    visibly, except (with colour on) the painter's own colour codes. The
    safety net under the neutralised data: nothing else can move the cursor,
    retitle the window or start a line."""
    if not colour:
        return neutralise(line)
    parts = _ANSI.split(line)
    codes = [*_ANSI.findall(line), ""]
    return "".join(neutralise(part) + code for part, code in zip(parts, codes, strict=True))


def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns; ANSI colour codes do not count towards widths."""
    if not rows:
        return []
    widths = [max(visible_len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell + " " * (w - visible_len(cell)) for cell, w in zip(row, widths, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    s = float(seconds)
    if s < 10:
        return f"{s:.1f}s"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def clock(value: Any) -> str:
    """An ISO time as HH:MM:SS (local time), or '-'."""
    if not isinstance(value, str) or not value:
        return "-"
    try:
        return (
            datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
        )
    except ValueError:
        return value


def stamp(value: Any) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS' (local time), or '-'."""
    if not isinstance(value, str) or not value:
        return "-"
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone()
    except ValueError:
        return value
    return parsed.strftime("%Y-%m-%d %H:%M:%S")


def priority(value: Any) -> str:
    """The API answers "P2"; an older agogd answered 2: shown the same way."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"P{value}"
    return "-" if value is None else str(value)


def money(value: Any) -> str:
    """USD as "$0.42" ("-": nothing reported)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not value:
        return "-"
    return f"${value:.2f}" if value >= 0.01 else f"${value:.4f}"


def tokens(a: Mapping[str, Any]) -> str:
    """Tokens in/out of an attempt ("-": none reported)."""
    n_in, n_out = a.get("input_tokens"), a.get("output_tokens")
    if n_in is None and n_out is None:
        return "-"
    return f"{n_in or 0}/{n_out or 0}"


def cell_text(cell: Mapping[str, Any], paint: Painter) -> str:
    text, style = CELL.get(str(cell.get("state")), (str(cell.get("state")), None))
    attempt = cell.get("attempt")
    if cell.get("state") == "running":
        text = f"run {duration(cell.get('seconds'))}"
    elif isinstance(attempt, int) and attempt > 1:
        text = f"{text}#{attempt}"
    return paint(text, style)


def status_grid(body: Mapping[str, Any], paint: Painter) -> list[str]:
    """REQs x stages: one row per REQ, one column per stage (agent names)."""
    stages = body.get("stages", [])
    header = ["REQ", "PRI", "STATUS", *[s["agent"] for s in stages], "COST", "AGE"]
    rows = [[paint(h, "bold") for h in header]]
    for req in body.get("reqs", []):
        cells = {c["index"]: c for c in req.get("stages", [])}
        rows.append(
            [
                req["req_number"],
                priority(req.get("priority")),
                paint(req["status"], STATUS_STYLE.get(req["status"])),
                *[cell_text(cells.get(s["index"], {"state": "waiting"}), paint) for s in stages],
                money(req.get("cost_usd")),
                duration(req.get("age_seconds")),
            ]
        )
    lines = table(rows)
    shown, total = body.get("count", 0), body.get("total", 0)
    if not body.get("reqs"):
        lines = ["no REQs match"]
    lines.append("")
    lines.append(
        f"{shown} of {total} REQ(s).  "
        + "  ".join(paint(text, style) + f" {state}" for state, (text, style) in CELL.items())
    )
    return lines


def _short(text: Any, width: int = 70) -> str:
    """A cell's excerpt of (neutralised) text, on one line."""
    return excerpt(neutralise(str(text or "")), width)


def _failures(attempts: list[Mapping[str, Any]], paint: Painter) -> list[str]:
    """Why each attempt that failed did, in full (the table cuts reasons short):
    the exit code and the agent's last lines of stderr, as the runner said."""
    lines = []
    for a in attempts:
        reason = neutralise(str(a.get("reason") or ""), keep_newlines=True)
        if a.get("status") in ("FAILED", "TIMED_OUT", "BLOCKED") and len(reason) > 50:
            head = f"  {a['agent']} stage {a['stage']} try {a['attempt']}: "
            body = reason[:1500].replace("\n", "\n" + " " * len(head))
            lines.append(paint(head, "yellow") + body)
    return ["", *lines] if lines else []


def _usage(body: Mapping[str, Any]) -> list[str]:
    """The REQ's spend: in total, per agent, against its budget."""
    usage = body.get("usage") or {}
    total = usage.get("total") or {}
    if not total.get("attempts_reported"):
        return []
    budget = body.get("budget_usd")
    against = f" of a ${budget:.2f} budget" if isinstance(budget, int | float) else ""
    line = (
        f"  spent {money(body.get('cost_usd') or total.get('cost_usd'))}{against};"
        f" tokens {total.get('input_tokens') or 0} in, {total.get('output_tokens') or 0} out,"
        f" {total.get('cache_read_tokens') or 0} from cache"
    )
    agents = [
        f"{a['agent']} {money(a.get('cost_usd'))}"
        for a in usage.get("agents", [])
        if a.get("attempts_reported")
    ]
    return [line, "  by agent: " + ", ".join(agents)] if agents else [line]


def req_detail(body: Mapping[str, Any], paint: Painter, events: int = 20) -> list[str]:
    """A REQ and its history, section by section."""
    status = body["status"]
    lines = [
        f"{paint(body['req_number'], 'bold')}  {paint(status, STATUS_STYLE.get(status))}  "
        f"{priority(body.get('priority'))}  {body.get('title') or ''}".rstrip()
    ]
    where = (
        f"stage {body['current_stage']} {body.get('current_stage_name')}"
        f" ({body.get('current_agent')})"
        if body.get("current_stage") is not None
        else "not started"
    )
    facts = [where, f"created {stamp(body.get('created_at'))}"]
    facts.append(f"updated {stamp(body.get('updated_at'))}")
    if body.get("commit_sha"):
        facts.append(f"commit {body['commit_sha']}")
    if body.get("deployed_at"):
        facts.append(f"deployed {stamp(body['deployed_at'])} by {body.get('deployed_by')}")
    lines.append("  " + "  ".join(facts))
    if body.get("blocked_reason") and status in ("BLOCKED", "ESCALATED"):
        lines.append("  " + paint(f"blocked: {body['blocked_reason']}", "yellow"))
    attempts = body.get("attempts", [])
    lines += ["", paint("stages", "bold")]
    if attempts:
        header = ["#", "STAGE", "AGENT", "TRY", "STATUS", "STARTED", "TOOK", "TOKENS", "COST"]
        rows = [[*header, "REASON"]]
        for a in attempts:
            rows.append(
                [
                    str(a["stage"]),
                    str(a.get("stage_name") or ""),
                    a["agent"],
                    str(a["attempt"]),
                    paint(a["status"], _attempt_style(a["status"])),
                    clock(a.get("started_at")),
                    duration(a.get("seconds")),
                    tokens(a),
                    money(a.get("cost_usd")),
                    _short(a.get("reason"), 50),
                ]
            )
        lines += table(rows, "  ")
        lines += _failures(attempts, paint)
    else:
        lines.append("  (no attempts yet)")
    lines += _usage(body)
    lines += _branch(body, attempts, paint)
    deliverables = body.get("deliverables", [])
    if deliverables:
        lines += ["", paint("deliverables", "bold")]
        rows = [["AGENT", "TRY", "STATUS", "AT", "SUMMARY"]]
        for d in deliverables:
            rows.append(
                [
                    d["agent"],
                    str(d.get("attempt") or "-"),
                    str(d.get("status") or "-")
                    + (f" ({d['verdict']})" if d.get("verdict") else ""),
                    clock(d.get("received_at")),
                    _short(d.get("summary")) + _copies(d.get("copies")),
                ]
            )
        lines += table(rows, "  ")
    decisions = body.get("decisions", [])
    if decisions:
        lines += ["", paint("decisions", "bold")]
        rows = [["DECISION", "SOURCE", "ACTION", "APPLIED", "REASONING"]]
        for d in decisions:
            rows.append(
                [
                    d["decision"],
                    str(d.get("source") or "-"),
                    str(d.get("action") or "-"),
                    clock(d.get("applied_at")),
                    _short(d.get("reasoning"), 50),
                ]
            )
        lines += table(rows, "  ")
    escalations = body.get("escalations", [])
    if escalations:
        lines += ["", paint("escalations", "bold")]
        rows = [["PRIORITY", "AT", "RESOLVED", "REASON"]]
        for e in escalations:
            rows.append(
                [
                    paint(e["priority"], "yellow"),
                    clock(e.get("created_at")),
                    clock(e.get("resolved_at")),
                    _short(e.get("reason"), 60),
                ]
            )
        lines += table(rows, "  ")
    trail = body.get("events", [])
    if trail and events > 0:
        shown = trail[-events:]
        lines += ["", paint(f"events (last {len(shown)} of {len(trail)})", "bold")]
        rows = [["AT", "KIND", "STAGE", "AGENT", "TRY", "REASON"]]
        for e in shown:
            rows.append(
                [
                    clock(e.get("created_at")),
                    e["kind"],
                    "-" if e.get("stage") is None else str(e["stage"]),
                    str(e.get("agent") or "-"),
                    "-" if e.get("attempt") is None else str(e["attempt"]),
                    _short(e.get("reason"), 50),
                ]
            )
        lines += table(rows, "  ")
    return lines


def short_sha(sha: Any) -> str:
    return str(sha)[:7] if sha else "-"


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def _branch(
    body: Mapping[str, Any], attempts: list[Mapping[str, Any]], paint: Painter
) -> list[str]:
    """The REQ's branch (AGOG_REPO) and each attempt's commit on it: its sha,
    how many files it changed, and what its notice listed that differs."""
    branch = body.get("branch")
    if not branch:
        return []
    where = f"worktree {branch.get('worktree')}"
    if branch.get("removed_at"):
        why = f" ({branch['removed_reason']})" if branch.get("removed_reason") else ""
        where = f"worktree removed {stamp(branch['removed_at'])}{why}"
    lines = [
        "",
        f"{paint('branch', 'bold')} {branch.get('name')}  from {short_sha(branch.get('base'))}"
        f"  {where}",
    ]
    rows = [["#", "AGENT", "TRY", "COMMIT", "FILES"]]
    notes: list[list[str]] = []
    for a in attempts:
        commit = a.get("commit")
        if not isinstance(commit, Mapping):
            continue
        files = commit.get("files") or []
        if commit.get("sha"):
            sha, changed = paint(short_sha(commit["sha"]), "yellow"), _files(len(files))
        else:
            sha = "-"
            changed = "no changes" if commit.get("committed_at") else "not committed"
        rows.append([str(a["stage"]), a["agent"], str(a["attempt"]), sha, changed])
        extra = []
        for key, label in (
            ("unlisted", "changed but not listed"),
            ("missing", "listed but unchanged"),
        ):
            paths = [str(p) for p in commit.get(key) or []]
            if paths:
                shown = ", ".join(paths[:20])
                if len(paths) > 20:
                    shown += f" (and {len(paths) - 20} more)"
                extra.append(paint(f"      {label}: ", "yellow") + shown)
        notes.append(extra)
    if len(rows) == 1:
        return lines
    for line, extra in zip(table(rows, "  "), [[], *notes], strict=True):
        lines += [line, *extra]
    return lines


def diff_header(body: Mapping[str, Any]) -> str:
    """What `agogctl req diff` shows (on stderr, so stdout is the diff alone)."""
    what = "the whole REQ"
    if body.get("stage") is not None:
        what = f"stage {body['stage']} {body.get('stage_name')} ({body.get('agent')})"
    line = (
        f"== {body.get('branch')} {short_sha(body.get('from'))}..{short_sha(body.get('to'))}"
        f" ({what})"
    )
    return line if body.get("diff") else line + ": no changes"


def diff_lines(text: str, paint: Painter) -> list[str]:
    """A unified diff's lines, each neutralised (tabs kept: they move no
    cursor) and, with colour on, painted like git: file headers bold, hunk
    heads cyan, additions green, deletions red."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out, header = [], False
    for line in lines:
        safe = "\t".join(neutralise(part) for part in line.split("\t"))
        if line.startswith("diff "):
            header = True
        elif line.startswith("@@"):
            header = False
        if header:
            style = "bold"
        elif line.startswith("@@"):
            style = "cyan"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        else:
            style = None
        out.append(paint(safe, style))
    return out


def _copies(copies: Any) -> str:
    """A notice received more than once is listed once, with how often it came."""
    return f"  (received {copies}x)" if isinstance(copies, int) and copies > 1 else ""


def _attempt_style(status: str) -> str | None:
    return {
        "RUNNING": "cyan",
        "COMPLETE": "green",
        "REJECTED": "magenta",
        "FAILED": "red",
        "TIMED_OUT": "red",
        "BLOCKED": "yellow",
    }.get(status, "dim")


def size(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def streams_table(body: Mapping[str, Any], paint: Painter) -> list[str]:
    """One line per stream, then one per consumer under it."""
    rows = [[paint(h, "bold") for h in ("STREAM / CONSUMER", "MESSAGES", "BYTES", "LAG", "")]]
    for stream in body.get("streams", []):
        lag = stream.get("lag", 0)
        rows.append(
            [
                stream["stream"],
                str(stream.get("messages", 0)),
                size(stream.get("bytes")),
                paint(str(lag), "yellow" if lag else None),
                paint("; ".join(stream.get("problems", [])), "yellow"),
            ]
        )
        for consumer in stream.get("consumers", []):
            c_lag = consumer.get("lag", 0)
            rows.append(
                [
                    f"  {consumer['name']}",
                    f"pending {consumer.get('pending', 0)}",
                    f"ack {consumer.get('ack_pending', 0)}",
                    paint(str(c_lag), "yellow" if c_lag else None),
                    consumer.get("filter_subject") or "",
                ]
            )
    lines = table(rows)
    nats = body.get("nats", {})
    lines.append("")
    lines.append(f"server {nats.get('server')}  verdict {nats.get('verdict')}")
    for problem in nats.get("problems", []):
        lines.append(paint(f"  {problem}", "yellow"))
    return lines


def event_line(event: str, data: Mapping[str, Any], paint: Painter) -> str:
    """One live event, for ``agogctl tail``."""
    status = str(data.get("status") or "")
    where = ""
    if data.get("stage") or data.get("agent"):
        where = f"{data.get('stage') or '?'}/{data.get('agent') or '?'}"
        if data.get("attempt") is not None:
            where += f"#{data['attempt']}"
    extra = data.get("reason") or ""
    if event == "decision":
        extra = f"{data.get('decision')} {data.get('reasoning') or ''}".strip()
    elif event == "escalation":
        extra = f"{data.get('priority')} {data.get('reason') or ''}".strip()
    elif event.startswith("infra"):
        extra = extra or str(data.get("container") or data.get("feature") or "")
    style = EVENT_STYLE.get(status)
    parts = [
        paint(clock(data.get("timestamp")), "dim"),
        paint(str(data.get("req_number") or "-").ljust(16), "bold"),
        paint(event.ljust(18), style),
        where.ljust(22),
        paint(status.ljust(11), style),
        _short(extra, 80),
    ]
    return "  ".join(parts).rstrip()


# --- deployment records (agogctl deploys, agogctl deploy show / restore-db) ---------------
DEPLOY_STYLE = {
    "deploying": "cyan",
    "healthy": "green",
    "rolled_back": "yellow",
    "rollback_failed": "bold red",
    "failed": "red",
    "blocked": "bold yellow",
}


def _ratio(summary: Any, good: str) -> tuple[str, bool]:
    """A verdict summary as "2/3" and whether all of it passed ("-": none)."""
    if not isinstance(summary, Mapping) or not summary.get("total"):
        return "-", True
    return f"{summary.get(good, 0)}/{summary['total']}", summary.get(good) == summary["total"]


def _health_cell(health: Any) -> tuple[str, str | None]:
    if not isinstance(health, Mapping):
        return "-", None
    if health.get("healthy"):
        return "ok", "green"
    count = health.get("problem_count") or 0
    return (f"{count} problem" + ("" if count == 1 else "s")), "red"


def _rollback_cell(rollback: Any) -> tuple[str, str | None]:
    if not isinstance(rollback, Mapping):
        return "-", None
    if not rollback.get("healthy"):
        return "failed", "bold red"
    return f"{duration(rollback.get('seconds'))} to {short_sha(rollback.get('to'))}", "yellow"


def _backup_cell(backup: Any, restores: Any) -> str:
    if not isinstance(backup, Mapping):
        return "-"
    text = (
        "pruned" if backup.get("pruned") or backup.get("pruned_at") else size(backup.get("bytes"))
    )
    if isinstance(restores, int) and restores:
        text += f", restored {restores}x"
    return text


def deploys_table(body: Mapping[str, Any], paint: Painter) -> list[str]:
    """One line per deployment record, newest first."""
    header = ["ID", "ENV", "REQ", "TRY", "COMMIT", "STATUS", "STARTED", "TOOK", "HEALTH"]
    rows = [[paint(h, "bold") for h in (*header, "SMOKE", "PREFLIGHT", "ROLLBACK", "BACKUP")]]
    for d in body.get("deployments", []):
        smoke, smoke_ok = _ratio(d.get("smoke"), "passed")
        checks, checks_ok = _ratio(d.get("preflight"), "ok")
        health, health_style = _health_cell(d.get("health"))
        rollback, rollback_style = _rollback_cell(d.get("rollback"))
        rows.append(
            [
                str(d.get("id")),
                str(d.get("environment")),
                str(d.get("req_number")),
                str(d.get("attempt")),
                short_sha(d.get("commit_sha")),
                paint(str(d.get("status")), DEPLOY_STYLE.get(str(d.get("status")))),
                stamp(d.get("started_at")),
                duration(d.get("seconds")),
                paint(health, health_style),
                paint(smoke, None if smoke_ok else "red"),
                paint(checks, None if checks_ok else "yellow"),
                paint(rollback, rollback_style),
                _backup_cell(d.get("backup"), d.get("restore_count")),
            ]
        )
    lines = table(rows) if body.get("deployments") else ["no deployments match"]
    lines += ["", f"{body.get('count', 0)} of {body.get('total', 0)} deployment(s)."]
    if body.get("next_before"):
        lines[-1] += f"  More: --before {body['next_before']}"
    return lines


def _section(title: str, paint: Painter) -> list[str]:
    return ["", paint(title, "bold")]


def deploy_detail(body: Mapping[str, Any], paint: Painter) -> list[str]:
    """One deployment record, section by section (``agogctl deploy show``)."""
    status = str(body.get("status"))
    lines = [
        f"{paint('deployment ' + str(body.get('id')), 'bold')}  {body.get('environment')}"
        f"  {paint(status, DEPLOY_STYLE.get(status))}  {body.get('req_number')}"
        f" try {body.get('attempt')}"
    ]
    facts = [f"commit {body.get('commit_sha')}", f"project {body.get('project')}"]
    facts += [f"started {stamp(body.get('started_at'))}"]
    if body.get("finished_at"):
        facts.append(f"finished {stamp(body['finished_at'])}")
    facts.append(f"took {duration(body.get('seconds'))}")
    lines.append("  " + "  ".join(facts))
    full = body.get("full") if isinstance(body.get("full"), Mapping) else {}
    images = body.get("images") or {}
    if isinstance(images, Mapping) and images:
        lines += _section("images", paint)
        lines += table([["SERVICE", "IMAGE"], *[[str(k), str(v)] for k, v in images.items()]], "  ")
    lines += _deploy_health(full.get("health"), paint)
    lines += _deploy_checks("smoke tests", full.get("smoke"), "name", "passed", paint)
    lines += _deploy_checks("pre-flight", full.get("preflight"), "item", "ok", paint)
    rollback = body.get("rollback")
    if isinstance(rollback, Mapping):
        lines += _section("rollback", paint)
        state = paint("healthy", "green") if rollback.get("healthy") else paint("failed", "red")
        line = f"  to {rollback.get('to') or '-'}: {state}  in {duration(rollback.get('seconds'))}"
        lines.append(line + (f"  ({rollback['reason']})" if rollback.get("reason") else ""))
    backup = body.get("backup")
    if isinstance(backup, Mapping):
        lines += _section("database backup", paint)
        lines.append(f"  {backup.get('path')}  {size(backup.get('bytes'))}")
        lines.append(
            f"  database {backup.get('database') or '-'}  taken {stamp(backup.get('taken_at'))}"
            f"  sha256 {backup.get('sha256') or '-'}"
        )
        if backup.get("pruned") or backup.get("pruned_at"):
            lines.append(paint(f"  pruned {stamp(backup.get('pruned_at'))}", "yellow"))
    restores = body.get("restores")
    if isinstance(restores, list) and restores:
        lines += _section("database restores", paint)
        rows = [["#", "AT", "BY", "OUTCOME", "TOOK", "FROM", "PRE-RESTORE DUMP"]]
        for r in restores:
            source = r.get("from") if isinstance(r.get("from"), Mapping) else {}
            pre = r.get("pre_restore") if isinstance(r.get("pre_restore"), Mapping) else {}
            outcome = str(r.get("outcome"))
            rows.append(
                [
                    str(r.get("n")),
                    stamp(r.get("at")),
                    _short(r.get("by"), 30),
                    paint(outcome, "green" if outcome == "restored" else "red"),
                    duration(r.get("seconds")),
                    str(source.get("what") or "-"),
                    str(pre.get("path") or "-"),
                ]
            )
        lines += table(rows, "  ")
        lines += [f"  #{r.get('n')}: {_short(r['error'], 300)}" for r in restores if r.get("error")]
    return lines


def _deploy_health(health: Any, paint: Painter) -> list[str]:
    if not isinstance(health, Mapping):
        return []
    lines = _section("health", paint)
    if health.get("healthy"):
        return [*lines, "  " + paint("healthy", "green")]
    problems = health.get("problems") or ["not healthy"]
    return lines + [paint("  " + _short(p, 200), "red") for p in problems[:10]]


def _deploy_checks(title: str, results: Any, name: str, good: str, paint: Painter) -> list[str]:
    """Smoke results or pre-flight items: one row each, what failed in colour."""
    if isinstance(results, Mapping):
        results = next((v for v in results.values() if isinstance(v, list)), None)
    if not isinstance(results, list) or not results:
        return []
    rows = [["NAME", "RESULT", "DETAIL"]]
    for item in results:
        if not isinstance(item, Mapping):
            continue
        ok = bool(item.get(good))
        detail = item.get("detail") or item.get("reason") or item.get("output_tail") or ""
        if item.get("seconds") is not None and not detail:
            detail = duration(item.get("seconds"))
        rows.append(
            [
                str(item.get(name) or "?"),
                paint("ok" if ok else "FAILED", "green" if ok else "red"),
                _short(detail, 80),
            ]
        )
    return [*_section(title, paint), *table(rows, "  ")]


def restore_line(body: Mapping[str, Any]) -> str:
    """What `agogctl deploy restore-db` says when the database was restored."""
    entry = body.get("restore") if isinstance(body.get("restore"), Mapping) else {}
    source = entry.get("from") if isinstance(entry.get("from"), Mapping) else {}
    pre = entry.get("pre_restore") if isinstance(entry.get("pre_restore"), Mapping) else {}
    again = " (already done: this restore id was restored before)" if body.get("duplicate") else ""
    what = str(source.get("what"))
    return (
        f"deployment {body.get('deployment_id')} ({body.get('req_number')},"
        f" {body.get('environment')}): {entry.get('database')} restored from"
        f" {'the ' + what if what == 'backup' else what} {source.get('path')}"
        f" in {duration(entry.get('seconds'))}{again}."
        f" The database as it was is in {pre.get('path')}"
        f" (undo: agogctl deploy restore-db {body.get('deployment_id')} --undo)"
    )
