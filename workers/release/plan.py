"""What Berry's native run decides before touching anything: pure, no I/O.

Billy's approval is read from his cached deliverable; the file list comes
from every stage's deliverable; each path is checked lexically here (and
against symlinks by ``workers.workspace``); the commit message follows the
seed 002 format. Kept free of I/O so it is unit- and property-tested.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from orchestrator.core.registry import Pipeline
from orchestrator.inbound.notices import CompletionNotice

FILE_KEYS = ("files_created", "files_modified", "files_deleted")
MAX_PATH = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class StageDeliverable:
    """One earlier stage's cached deliverable."""

    stage: int
    agent: str
    deliverable: Mapping[str, Any]


def qa_refusal(approval: Mapping[str, Any] | None, qa_agent: str) -> str | None:
    """Why the QA gate's deliverable (Billy's) does not approve the REQ, or None if it does."""
    if approval is None:
        return f"no QA deliverable from {qa_agent} in nats_deliverable_cache"
    try:
        notice = CompletionNotice.model_validate(dict(approval))
    except ValueError as exc:
        return f"{qa_agent}'s QA deliverable cannot be read: {str(exc).splitlines()[0]}"
    if notice.qa_passed:
        return None
    failures = "; ".join(notice.qa_failures[:5])
    detail = f" ({failures})" if failures else ""
    return (
        f"{qa_agent} did not approve: status {notice.status}, tests_passed {notice.tests_passed}"
        + detail
    )


def listed_files(deliverables: Iterable[StageDeliverable]) -> list[object]:
    """Every path the stages' deliverables list, in stage order, once each.

    Values are returned as found (not only strings) so that a malformed
    entry is refused with a reason rather than silently dropped.
    """
    seen: dict[str, object] = {}
    for item in deliverables:
        for key in FILE_KEYS:
            values = item.deliverable.get(key) or []
            if isinstance(values, str | int | float):
                values = [values]
            for value in values:
                seen.setdefault(repr(value) if not isinstance(value, str) else value, value)
    return list(seen.values())


def path_problem(path: object) -> str | None:
    """Why a listed path may not be committed (lexically), or None."""
    if not isinstance(path, str):
        return f"not a string: {path!r}"
    if not path or not path.strip():
        return "empty path"
    if len(path) > MAX_PATH:
        return f"longer than {MAX_PATH} characters"
    if _CONTROL.search(path):
        return "contains control characters"
    if "\\" in path:
        return "contains a backslash"
    pure = PurePosixPath(path)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", path):
        return "absolute path: outside the workspace"
    if ".." in pure.parts:
        return "'..' leaves the workspace"
    if pure.parts and pure.parts[0] == ".git":
        return "inside .git"
    return None


def _one_line(text: object, limit: int = 200) -> str:
    line = " ".join(_CONTROL.sub(" ", str(text or "")).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def commit_message(
    req: str,
    title: str | None,
    deliverables: Iterable[StageDeliverable],
    pipeline: Pipeline,
    email_domain: str,
) -> str:
    """The seed 002 commit message: title, summary, QA status, deliverables,
    and a Co-Authored-By trailer per agent (plus an Agog-Req trailer, which
    is how a re-run finds the REQ's commit instead of making another)."""
    items = {d.agent: d for d in deliverables}
    stage_of = {s.agent: s for s in pipeline.stages}
    qa_stage, deploy_stage = pipeline.gate_stage("qa"), pipeline.gate_stage("deploy")
    qa = qa_stage.agent if qa_stage else None
    deployer = deploy_stage.agent if deploy_stage else None
    heading = _one_line(title or "", 72) or "deliver the requirement"
    lines = [f"feat({req}): {heading}", "", "Summary:"]
    summaries = [
        f"- {stage_of[a].name}: {_one_line(d.deliverable.get('summary'))}"
        for a, d in items.items()
        if a in stage_of and a != qa and _one_line(d.deliverable.get("summary"))
    ]
    lines += summaries or ["- (no summaries in the deliverables)"]
    approval = items.get(qa) if qa else None
    lines += ["", f"QA Status: APPROVED by {(qa or 'QA').capitalize()}"]
    if approval is not None:
        for key, label in (("summary", "Report"), ("tests_passed", "Tests passed")):
            value = approval.deliverable.get(key)
            if value not in (None, ""):
                lines.append(f"- {label}: {_one_line(value)}")
    lines += ["", "Deliverables:"]
    for stage in pipeline.stages:
        if stage.agent == deployer or stage.agent not in items:
            continue
        deliverable = items[stage.agent].deliverable
        verdict = deliverable.get("critique_verdict") or deliverable.get("status") or ""
        lines.append(f"- {stage.name}: {stage.agent.capitalize()} ({verdict})")
    lines += ["", f"Agog-Req: {req}"]
    for stage in pipeline.stages:
        if stage.agent in items or stage.agent == deployer:
            lines.append(
                f"Co-Authored-By: {stage.agent.capitalize()} ({stage.name})"
                f" <{stage.agent}@{email_domain}>"
            )
    return "\n".join(lines) + "\n"


def pull_request_title(req: str, title: str | None) -> str:
    """Seed 002's pull request title: ``REQ-…: feature title``."""
    return f"{req}: {_one_line(title or '', 100) or 'deliver the requirement'}"


def pull_request_body(
    req: str, deliverables: Iterable[StageDeliverable], pipeline: Pipeline
) -> str:
    """Seed 002's pull request body: the summary from the QA report, the
    changes from the build stages' deliverables, the testing verdict and the
    deliverables with each stage's status."""
    items = {d.agent: d for d in deliverables}
    qa_stage, deploy_stage = pipeline.gate_stage("qa"), pipeline.gate_stage("deploy")
    qa = items.get(qa_stage.agent) if qa_stage else None
    summary = _one_line((qa.deliverable.get("summary") if qa else "") or "", 600)
    lines = ["## Summary", summary or "(no QA summary)", "", "## Changes"]
    builders = [s for s in pipeline.stages if s.gate == "none" and s.agent in items]
    changes = [
        f"- {s.name}: {_one_line(items[s.agent].deliverable.get('summary'))}"
        for s in builders
        if s.role in ("backend", "frontend")
        and _one_line(items[s.agent].deliverable.get("summary"))
    ]
    lines += changes or ["- (no build summaries in the deliverables)"]
    lines += ["", "## Testing"]
    if qa is not None and qa_stage is not None:
        lines.append(f"QA Approved by {qa_stage.agent.capitalize()}")
        for key, label in (("test_coverage", "Test Coverage"), ("tests_passed", "Tests passed")):
            value = qa.deliverable.get(key)
            if value not in (None, ""):
                lines.append(f"- {label}: {_one_line(value)}")
    else:
        lines.append("(no QA report)")
    lines += ["", "## Deliverables"]
    for stage in pipeline.stages:
        if deploy_stage is not None and stage.agent == deploy_stage.agent:
            lines.append(f"- {stage.name}: {stage.agent.capitalize()} (IN_PROGRESS)")
            continue
        if stage.agent in items:
            d = items[stage.agent].deliverable
            verdict = d.get("critique_verdict") or d.get("status") or "COMPLETE"
            lines.append(f"- {stage.name}: {stage.agent.capitalize()} ({_one_line(verdict, 40)})")
    lines += ["", f"Agog-Req: {req}"]
    return "\n".join(lines) + "\n"


def issue_key(req: str) -> str:
    """How Berry's issue for a REQ is found again: its title starts with this."""
    return f"[{req}]"


def issue_title(req: str, what: str) -> str:
    return f"{issue_key(req)} {_one_line(what, 120)}"


def issue_body(req: str, what: str, detail: str, tail: str) -> str:
    """An issue for a failed push, red tests or red CI, with the log tail."""
    lines = [f"Berry could not finish {req}: {_one_line(what, 300)}", ""]
    if detail:
        lines += [detail, ""]
    if tail:
        lines += ["```", tail[-6000:].replace("```", "'''"), "```", ""]
    lines.append("The REQ is BLOCKED until an operator decides (`agogctl req decide`).")
    return "\n".join(lines) + "\n"
