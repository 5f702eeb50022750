"""DEMO agent: answers any stage assignment with a plausible notice.

Run by the runner in demo mode (``agogd dev --demo``) instead of a real agent
CLI. It reads the prompt on stdin, takes the assignment from its first fenced
json block, waits ``AGOG_DEMO_DELAY`` seconds and prints a notice. Sylvia
approves and Billy passes, except that agents named in ``AGOG_DEMO_REJECT``
reject or fail their first attempt, to show rework. In a REQ's worktree
(``AGOG_WORKTREE``, set by the runner) each agent also writes one file, so
the REQ's branch shows a commit per stage. Not for real work.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_FIRST_JSON = re.compile(r"```json\n(.*?)\n```", re.DOTALL)


def answer(assignment: dict[str, Any], reject: set[str]) -> dict[str, Any]:
    agent, req, attempt = assignment["agent"], assignment["req_number"], assignment["attempt"]
    first_try = attempt == 1 and not assignment.get("instructions")
    notice: dict[str, Any] = {
        "agent": agent,
        "req_number": req,
        "attempt": attempt,
        "status": "COMPLETE",
        "summary": f"[DEMO] {agent} finished {assignment.get('stage', 'its stage')} for {req}",
        "deliverable": assignment.get("deliverableSubject"),
    }
    gate = assignment.get("gate")  # the registry's word for what the stage is
    if gate == "critique":
        rejecting = agent in reject and first_try
        notice["critique_verdict"] = "REJECTED" if rejecting else "APPROVED"
        if rejecting:
            notice["required_fixes"] = ["[DEMO] cover the error paths in the research"]
    elif gate == "qa":
        failing = agent in reject and first_try
        notice["tests_passed"] = not failing
        if failing:
            notice["status"] = "FAILED"
            notice["qa_failures"] = ["[DEMO] the inventory API returns 500 on an empty list"]
    elif gate == "deploy":
        notice["commit_sha"] = "dec0de" + req.encode().hex()[-8:]  # a commit sha is hex
        notice["deployed_by"] = "berry (demo)"
        notice["deployed_at"] = datetime.now(UTC).isoformat()
    return notice


def write_demo_file(root: Path, assignment: dict[str, Any]) -> str:
    """One file of this agent's work in the worktree; its path, as listed."""
    agent, req, attempt = assignment["agent"], assignment["req_number"], assignment["attempt"]
    path = Path("agog-demo") / req / f"{agent}.md"
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a") as handle:
        handle.write(f"# [DEMO] {agent}, attempt {attempt}\n\n{assignment.get('stage', '')}\n")
    return path.as_posix()


def main() -> int:
    prompt = sys.stdin.read()
    match = _FIRST_JSON.search(prompt.replace("\r\n", "\n"))
    if match is None:
        print("[DEMO] no assignment found in the prompt", file=sys.stderr)
        return 2
    assignment = json.loads(match.group(1))
    reject = {a.strip() for a in os.environ.get("AGOG_DEMO_REJECT", "").split(",") if a.strip()}
    print(f"[DEMO] {assignment['agent']} working on {assignment['req_number']}...", flush=True)
    time.sleep(float(os.environ.get("AGOG_DEMO_DELAY", "1")))
    notice = answer(assignment, reject)
    worktree = os.environ.get("AGOG_WORKTREE")
    if worktree and notice["status"] == "COMPLETE" and assignment.get("gate") != "deploy":
        notice["files_modified"] = [write_demo_file(Path(worktree), assignment)]
    print("```json")
    print(json.dumps(notice, indent=2))
    print("```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
