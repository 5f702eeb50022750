"""The prompt an agent gets on stdin for one stage assignment.

Everything the agent needs is in the prompt, never in its argv: the
assignment, the previous stages' deliverables, rework instructions, recalled
memories, and the exact JSON notice it must end with. A fenced ``json``
block carries the assignment for programs (the demo agent reads it).
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.core import roles

PREVIOUS_LIMIT = 8000  # characters of one previous deliverable in the prompt


def expected_notice(assignment: dict[str, Any]) -> dict[str, Any]:
    """The notice skeleton the agent must fill in and print last."""
    return roles.expected_notice(
        assignment["agent"],
        assignment["req_number"],
        assignment["attempt"],
        str(assignment.get("gate") or "none"),
        assignment.get("deliverableSubject"),
    )


def build_prompt(assignment: dict[str, Any], deliverables: list[dict[str, Any]]) -> str:
    """The full stdin text for one assignment."""
    context = assignment.get("contextData") or {}
    lines = [
        f"# {assignment.get('stage', 'Stage')} for {assignment['req_number']}",
        "",
        f"You are {assignment['agent']}. Feature: {context.get('featureTitle') or '(untitled)'}",
        f"Attempt {assignment['attempt']}; deadline {assignment.get('deadline', 'none')}.",
        "",
        "## Assignment",
        "```json",
        json.dumps(assignment, indent=2, sort_keys=True, default=str),
        "```",
    ]
    instructions = assignment.get("instructions") or {}
    if instructions:
        lines += [
            "",
            "## Rework and instructions (address every item)",
            "```json",
            json.dumps(instructions, indent=2, default=str),
            "```",
        ]
    if deliverables:
        lines += ["", "## Previous stages' deliverables"]
        for item in deliverables:
            body = json.dumps(item.get("deliverable"), indent=2, default=str)
            if len(body) > PREVIOUS_LIMIT:
                body = body[:PREVIOUS_LIMIT] + "\n… (truncated)"
            lines += ["", f"### {item.get('agent')} (stage {item.get('stage')})", body]
    memories = assignment.get("memories") or []
    lines += ["", "## Recalled memories"]
    lines += [f"- {json.dumps(m, default=str)}" for m in memories] or ["(none recalled)"]
    lines += [
        "",
        "## How to finish",
        "End your output with exactly one fenced json block holding your completion",
        "notice, in this shape (status COMPLETE, BLOCKED or FAILED):",
        "```json",
        json.dumps(expected_notice(assignment), indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)
