"""Each agent's role definition, written from the registry (pure: no I/O).

One text per stage: who the agent is, what its stage is for, the rule of the
working tree, and the notice contract with its exact JSON. The runner gives
it to the CLI with each attempt (``RunSpec.role_text``), and ``agogctl agents
init`` writes it where each CLI looks for it (``.claude/agents/<agent>.md``,
``AGENTS.md``, ``GEMINI.md``). Nothing here names an agent: the registry does.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.core.registry import Pipeline, Stage

# What each kind of stage is for, by its gate (pipeline.toml's ``gate``).
_PURPOSE = {
    "none": "Do the {role} work of the requirement, building on the earlier stages' deliverables.",
    "critique": (
        "Critique the research before any code is written: approve it, approve it with"
        " conditions, or reject it with the fixes it needs. Reject only for real problems."
    ),
    "qa": (
        "Test what the earlier stages built. Pass it only when the tests pass; otherwise fail"
        " it, list each failure, and name the agents who must fix them in rework_agents."
    ),
    "deploy": (
        "Commit the REQ's changes, run the tests and deploy; report the commit and, only"
        " if the deployment happened, when it did (deployed_at, ISO 8601)."
    ),
}


def expected_notice(
    agent: str, req: str, attempt: int | str, gate: str, subject: str | None = None
) -> dict[str, Any]:
    """The completion notice an agent ends with, for its stage's gate."""
    notice: dict[str, Any] = {
        "agent": agent,
        "req_number": req,
        "attempt": attempt,
        "status": "COMPLETE",
        "summary": "<one paragraph: what you did>",
        "deliverable": subject,
        "changes": {"files_created": [], "files_modified": [], "key_changes": []},
    }
    if gate == "critique":
        notice["critique_verdict"] = "APPROVED | APPROVED_WITH_CONDITIONS | REJECTED"
        notice["required_fixes"] = []
    elif gate == "qa":
        notice["tests_passed"] = True
        notice["qa_failures"] = []
        notice["rework_agents"] = []
    elif gate == "deploy":
        notice["commit_sha"] = "<the deployed commit>"
    return notice


def role_text(pipeline: Pipeline, stage: Stage) -> str:
    """The role definition of one stage's agent, as Markdown."""
    purpose = _PURPOSE.get(stage.gate, _PURPOSE["none"]).format(role=stage.role)
    notice = expected_notice(stage.agent, "<REQ id>", "<attempt>", stage.gate, "<subject>")
    after = pipeline.followups_after(stage.agent)
    lines = [
        f"# {stage.agent}: {stage.name} ({stage.role})",
        "",
        f"You are {stage.agent}, the {stage.name} stage of the AgogSaaS pipeline"
        f" (stage {stage.index}). {purpose}",
        "",
        "## The working tree",
        "- Work only inside the current directory, the REQ's working tree: read, create",
        "  and edit files there, and nowhere else. Never write outside it.",
        "- Never print secrets (API keys, tokens, passwords), even from the environment.",
        "",
        "## Each assignment",
        "The prompt holds the assignment (REQ, attempt, deadline), the earlier stages'",
        "deliverables, any rework instructions (address every item) and recalled",
        "memories. Finish well before the deadline.",
        "",
        "## How to finish: the notice",
        "End your answer with exactly one fenced json block: your completion notice,",
        "with the REQ id and attempt from the assignment. status is COMPLETE when the",
        "work is done, BLOCKED when you need a human decision (say why in summary),",
        "FAILED when you could not do it.",
        "",
        "```json",
        json.dumps(notice, indent=2),
        "```",
    ]
    if stage.rework_to:
        lines += ["", f"rework_agents may name: {', '.join(stage.rework_to)}."]
    if after:
        lines += ["", f"After you: {', '.join(s.agent for s in after)} ({after[0].name})."]
    return "\n".join(lines) + "\n"
