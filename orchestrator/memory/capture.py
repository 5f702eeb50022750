"""What is remembered, as drafts (pure: no I/O).

The engine calls these inside the transaction that applies a message; the
drafts become rows there (``writes``), with no network call: embeddings come
after the commit. A draft's text is the substance only: a deliverable's
summary and key content, a critique's required fixes, a QA run's failures, a
rollback's reason and health problems, a decision's reasoning and
instructions. Who, what and which REQ are columns (agent, kind, req_number,
stage) and the REQ's title is in the metadata: a header line repeated in
every memory of a REQ would make them all look alike to the embedding model
and drown a short QA failure in its title.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.memory.model import Draft

LIST_MAX = 100  # items of one list kept in a memory; the rest is counted, visibly
# Free-text fields agents add beside the schema (kept: they are the substance).
_PROSE_KEYS = (
    "content",
    "details",
    "description",
    "findings",
    "analysis",
    "recommendations",
    "notes",
    "report",
    "research",
    "critique",
    "design",
    "rationale",
    "risks",
    "lessons_learned",
)
_LISTS = (
    ("Key changes", "key_changes"),
    ("Required fixes", "required_fixes"),
    ("Issues found", "issues_found"),
    ("Blockers", "blockers"),
    ("QA failures", "qa_failures"),
    ("Files created", "files_created"),
    ("Files modified", "files_modified"),
    ("Files deleted", "files_deleted"),
    ("Tables created", "tables_created"),
    ("Migrations added", "migrations_added"),
)
RESOLVING_STATUSES = frozenset({"BLOCKED", "ESCALATED"})


def _items(values: Iterable[Any]) -> list[str]:
    out = [str(v).strip() for v in values if str(v).strip()]
    if len(out) > LIST_MAX:
        out = [*out[:LIST_MAX], f"(+{len(out) - LIST_MAX} more not kept)"]
    return out


def _section(label: str, value: Any) -> list[str]:
    if value is None or value == "" or value == [] or value == {}:
        return []
    if isinstance(value, str):
        return [f"{label}: {value.strip()}"]
    if isinstance(value, list | tuple):
        items = _items(value)
        return [f"{label}:", *(f"- {i}" for i in items)] if items else []
    if isinstance(value, Mapping):
        lines = [f"{label}:"]
        lines += [f"- {k}: {v}" for k, v in value.items() if v not in (None, "", [], {})]
        return lines if len(lines) > 1 else []
    return [f"{label}: {value}"]


def requirement(
    req: str, title: str, requirements: Iterable[str], owner: str | None = None
) -> Draft | None:
    """The REQ's own text at intake; None when it has none (nothing to recall on)."""
    lines = _items(requirements)
    if not title.strip() and not lines:
        return None
    text = "\n".join([title.strip(), *(f"- {line}" for line in lines)]).strip()
    return Draft("requirement", "intake", text, req, None, {"title": title, "owner": owner})


def query_text(title: str, requirement: Mapping[str, Any] | None) -> str:
    """What a REQ is about, as a full-text query: its title and requirement lines."""
    lines = [title.strip()]
    items = (requirement or {}).get("requirements")
    if isinstance(items, list):
        lines += [str(i).strip() for i in items if str(i).strip()]
    return "\n".join(line for line in lines if line)


def notice_kind(gate: str | None, notice: Mapping[str, Any], outcome: str | None) -> str | None:
    """What an applied notice is remembered as, from the attempt's outcome.

    ``outcome`` is how the engine closed the attempt (COMPLETE, REJECTED,
    FAILED, BLOCKED, or None when it closed none).
    """
    deploy = notice.get("deploy")
    if isinstance(deploy, Mapping) and isinstance(deploy.get("rollback"), Mapping):
        if deploy["rollback"].get("attempted", True):
            return "rollback"
    if outcome == "REJECTED":
        return "rejection"
    if gate == "qa" and outcome == "FAILED":
        return "qa_failure"
    if outcome == "COMPLETE":
        return "deliverable"
    return None


def closed_outcome(effects: Iterable[Any], stage: int) -> str | None:
    """How a transition's effects closed the given stage's attempt, if they did."""
    for effect in effects:
        if type(effect).__name__ == "CloseAttempt" and effect.stage == stage:
            return str(effect.outcome)
    return None


def notice(
    kind: str,
    req: str,
    title: str,
    agent: str,
    stage_name: str,
    stage_index: int,
    body: Mapping[str, Any],
) -> Draft:
    """A deliverable, rejection, QA failure or rollback, from its notice."""
    label = {
        "deliverable": f"{stage_name} deliverable by {agent}",
        "rejection": f"{stage_name} rejection by {agent}",
        "qa_failure": f"QA failure reported by {agent}",
        "rollback": f"deployment rolled back by {agent}",
    }.get(kind, f"{kind} by {agent}")
    summary = body.get("summary")
    lines = [summary.strip()] if isinstance(summary, str) and summary.strip() else []
    if body.get("critique_verdict"):
        lines.append(f"Verdict: {body['critique_verdict']}")
    if body.get("tests_failed"):
        lines.append(f"Tests failed: {body['tests_failed']}")
    for label_, key in _LISTS:
        lines += _section(label_, body.get(key))
    for key in _PROSE_KEYS:
        lines += _section(key.replace("_", " ").capitalize(), body.get(key))
    deploy = body.get("deploy")
    if isinstance(deploy, Mapping):
        lines += _section("Deploy", deploy.get("reason"))
        rollback = deploy.get("rollback")
        if isinstance(rollback, Mapping):
            target = rollback.get("to") or "nothing"
            state = "healthy" if rollback.get("healthy") else "not healthy"
            lines.append(f"Rollback: to {target}, {state}")
            lines += _section("Rollback reason", rollback.get("reason"))
        health = deploy.get("health")
        if isinstance(health, Mapping):
            lines += _section("Health problems", health.get("problems"))
    if body.get("commit_sha"):
        lines.append(f"Commit: {body['commit_sha']}")
    meta = {
        "title": title,
        "label": label,
        "attempt": body.get("attempt"),
        "status": body.get("status"),
    }
    return Draft(kind, agent, "\n".join(lines), req, stage_index, meta)


def decision(
    req: str,
    title: str,
    kind: str,
    reasoning: str,
    instructions: Mapping[str, Any],
    previous_status: str,
    stage_index: int | None,
) -> list[Draft]:
    """A strategic decision; when it lifts a BLOCKED or ESCALATED REQ, also the
    resolution of that escalation."""
    lines = [f"Decision: {kind}", *_section("Reasoning", reasoning)]
    for key, value in instructions.items():
        if key != "reasoning":
            lines += _section(key.replace("_", " ").capitalize(), value)
    text = "\n".join(lines)
    meta = {"title": title, "decision": kind, "previous_status": previous_status}
    drafts = [Draft("decision", "strategic", text, req, stage_index, meta)]
    if previous_status in RESOLVING_STATUSES:
        resolution = text.replace(f"Decision: {kind}", f"Resolved the escalation: {kind}", 1)
        drafts.append(Draft("resolution", "strategic", resolution, req, stage_index, meta))
    return drafts


def escalation(
    req: str,
    title: str,
    agent: str | None,
    stage_index: int | None,
    priority: str,
    reason: str,
) -> Draft:
    text = "\n".join(_section("Escalated", reason))
    meta = {"title": title, "priority": priority}
    return Draft("escalation", agent or "agogd", text, req, stage_index, meta)
