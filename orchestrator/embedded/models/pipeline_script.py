"""A scripted model that plays every agent of the pipeline, through a real CLI.

It reads the assignment from the prompt the runner wrote (the first fenced
json block holding a ``stageIndex``), whatever the wire protocol carried it
in, and answers with that stage's completion notice: approvals, QA passes,
a deployment. ``fail_first`` names gates whose first attempt fails (QA sends
the work back), to show rework and session resume. It is a test double of
the model only: the CLI, its tools and the runner stay real.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from orchestrator.embedded.models.base import Turn

_BLOCK = re.compile(r"```json\s*\n(.*?)\n\s*```", re.DOTALL)


def strings(value: Any) -> Iterator[str]:
    """Every string in a request body, depth first (the prompt is among them)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def assignments_in(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The assignments the request's texts hold, in order (a resumed session
    carries its earlier prompts too: the last one is the current)."""
    found = []
    for text in strings(request):
        for block in _BLOCK.findall(text):
            try:
                value = json.loads(block)
            except ValueError:
                continue
            if isinstance(value, dict) and "stageIndex" in value and "req_number" in value:
                found.append(value)
    return found


class PipelineResponder:
    """Answers each stage's prompt with its notice, as the stage's agent would."""

    def __init__(
        self,
        fail_first: Iterable[str] = (),
        tool_first: Callable[[dict[str, Any]], Turn | None] | None = None,
        fail_agents: Iterable[str] = (),
    ) -> None:
        """``tool_first(assignment)``: a tool call the agent makes before it
        answers (once per attempt), e.g. writing a file through the CLI."""
        self.fail_first = set(fail_first)
        self.fail_agents = set(fail_agents)  # these report FAILED on their first attempt
        self.tool_first = tool_first
        self.answered: list[tuple[str, str, int]] = []  # (agent, REQ, attempt)
        self._tooled: set[tuple[str, str, int]] = set()

    def __call__(self, request: dict[str, Any]) -> Turn:
        found = assignments_in(request)
        if not found:
            return Turn(text="I see no assignment in this conversation.")
        assignment = found[-1]
        key = (assignment["agent"], assignment["req_number"], assignment["attempt"])
        if self.tool_first is not None and key not in self._tooled:
            self._tooled.add(key)
            turn = self.tool_first(assignment)
            if turn is not None:
                return turn
        notice = self.notice(assignment)
        self.answered.append((assignment["agent"], assignment["req_number"], notice["attempt"]))
        text = f"Done.\n\n```json\n{json.dumps(notice, indent=2)}\n```\n"
        return Turn(text=text)

    def notice(self, assignment: dict[str, Any]) -> dict[str, Any]:
        agent, req, attempt = assignment["agent"], assignment["req_number"], assignment["attempt"]
        gate = assignment.get("gate") or "none"
        notice: dict[str, Any] = {
            "agent": agent,
            "req_number": req,
            "attempt": attempt,
            "status": "COMPLETE",
            "summary": f"{agent} did stage {assignment['stageIndex']} (attempt {attempt})",
        }
        failing = gate in self.fail_first and attempt == 1
        if agent in self.fail_agents and attempt == 1:
            notice["status"] = "FAILED"
            notice["summary"] = f"{agent} could not finish (scripted)"
        if gate == "critique":
            notice["critique_verdict"] = "APPROVED"
        elif gate == "qa":
            notice["tests_passed"] = not failing
            notice["tests_failed"] = 1 if failing else 0
            notice["qa_failures"] = ["the endpoint returns 500"] if failing else []
        elif gate == "deploy":
            notice["commit_sha"] = "c0ffee1"
            notice["deployed_at"] = datetime.now(UTC).isoformat()
        return notice
