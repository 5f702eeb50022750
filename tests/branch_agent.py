"""A real agent process for the branch tests: edits files in its cwd (the
REQ's worktree) the way the plan in ``BRANCH_AGENT_PLAN`` says, and prints
its notice.

Run by the runner through the generic profile (``python branch_agent.py
{agent} {role}``). The plan (JSON, keyed by REQ) names, for the backend
role, a section of ``shared/sections.txt`` to edit and whether to claim the
one line of ``shared/owner.txt`` (the contended line: a real conflict); the
frontend role writes a page of its own. A rework for a merge conflict is
resolved by keeping both sides, ours first. ``BRANCH_AGENT_SLEEP`` makes
every REQ's agents overlap in time.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

MARKER = re.compile(r"^(<<<<<<<|=======|>>>>>>>)( .*)?$")


def assignment_of(prompt: str) -> dict[str, Any]:
    found = re.search(r"```json\n(.*?)\n```", prompt.replace("\r\n", "\n"), re.S)
    if found is None:
        raise SystemExit("no assignment in the prompt")
    return json.loads(found.group(1))


def resolve_conflicts(root: Path, files: list[str]) -> list[str]:
    """Keep both sides of every conflict: drop git's marker lines."""
    done = []
    for name in files:
        path = root / name
        if path.is_file():
            lines = path.read_text().splitlines(keepends=True)
            path.write_text("".join(x for x in lines if not MARKER.match(x.rstrip("\n"))))
            done.append(name)
    return done


def edit_section(path: Path, section: int, text: str) -> None:
    """Replace line ``section`` of the sections file (its other lines stay)."""
    lines = path.read_text().splitlines()
    lines[section] = text
    path.write_text("\n".join(lines) + "\n")


def work(role: str, req: str, attempt: int, instructions: dict[str, Any]) -> dict[str, Any]:
    root = Path.cwd()
    plan = json.loads(os.environ.get("BRANCH_AGENT_PLAN", "{}")).get(req, {})
    listed: list[str] = []
    rework = instructions.get("rework") or {}
    conflict = rework.get("conflict") if isinstance(rework, dict) else None
    if isinstance(conflict, dict):
        listed += resolve_conflicts(root, conflict.get("files", []))
    elif role == "backend":
        src = root / "src" / f"{req.lower()}.py"
        src.parent.mkdir(exist_ok=True)
        src.write_text(f"FEATURE = {req!r}\n")
        listed.append(src.relative_to(root).as_posix())
        if "section" in plan:
            edit_section(root / "shared" / "sections.txt", plan["section"], f"section of {req}")
            listed.append("shared/sections.txt")
        if plan.get("owner"):
            with (root / "shared" / "owner.txt").open("a") as handle:
                handle.write(f"owner = {req}\n")
            listed.append("shared/owner.txt")
        listed += plan.get("extra_listed", [])
    elif role == "frontend":
        page = root / "web" / f"{req.lower()}.html"
        page.parent.mkdir(exist_ok=True)
        page.write_text(f"<h1>{req}</h1>\n")
        if not plan.get("unlisted_page"):
            listed.append(page.relative_to(root).as_posix())
    return {"files_modified": listed}


def main() -> int:
    agent, role = sys.argv[1], sys.argv[2]
    assignment = assignment_of(sys.stdin.read())
    req, attempt = assignment["req_number"], assignment["attempt"]
    time.sleep(float(os.environ.get("BRANCH_AGENT_SLEEP", "0")))
    notice: dict[str, Any] = {
        "agent": agent,
        "req_number": req,
        "attempt": attempt,
        "status": "COMPLETE",
        "summary": f"{agent} did {role} for {req} (attempt {attempt})",
    }
    gate = assignment.get("gate")
    if gate == "critique":
        notice["critique_verdict"] = "APPROVED"
    elif gate == "qa":
        notice["tests_passed"] = True
    else:
        notice.update(work(role, req, attempt, assignment.get("instructions") or {}))
    print(json.dumps(notice))
    return 0


if __name__ == "__main__":
    sys.exit(main())
