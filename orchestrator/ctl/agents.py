"""``agogctl agents init``: the pipeline's role definitions, where each CLI reads them.

Claude Code reads one file per agent, ``.claude/agents/<agent>.md`` with its
frontmatter (``name``, ``description``); Codex reads ``AGENTS.md``, Gemini
CLI ``GEMINI.md``, one file with a section per agent. The texts come from
the registry (``orchestrator.core.roles``). Each file carries a marker with
the hash of what was written, so a file nobody edited is brought up to date
and an edited one is left alone unless ``--force``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.registry import Pipeline
from orchestrator.core.roles import role_text

CLIS = ("claude", "codex", "gemini")
SHARED_FILE = {"codex": "AGENTS.md", "gemini": "GEMINI.md"}
_MARKER = re.compile(r"<!-- written by agogctl agents init; sha256:([0-9a-f]{64}) -->\n")


@dataclass(frozen=True)
class Planned:
    path: Path
    text: str


def _marked(body: str) -> str:
    digest = hashlib.sha256(body.encode()).hexdigest()
    return f"<!-- written by agogctl agents init; sha256:{digest} -->\n{body}"


def plan(pipeline: Pipeline, cli: str, directory: Path) -> list[Planned]:
    """The files ``init`` writes for ``cli`` under ``directory``."""
    stages = [*pipeline.stages, *pipeline.followups]
    if cli == "claude":
        files = []
        for stage in stages:
            front = (
                f"---\nname: {stage.agent}\ndescription: The {stage.name} stage of the AgogSaaS"
                f" pipeline ({stage.role}); run by agogd for each assignment.\n---\n"
            )
            body = _marked(role_text(pipeline, stage))
            files.append(
                Planned(directory / ".claude" / "agents" / f"{stage.agent}.md", front + body)
            )
        return files
    header = (
        "# AgogSaaS pipeline agents\n\nagogd runs one agent per stage; the assignment in the"
        " prompt says which you are. Follow that agent's section.\n\n"
    )
    body = header + "\n".join(_demoted(role_text(pipeline, s)) for s in stages)
    return [Planned(directory / SHARED_FILE[cli], _marked(body))]


def _demoted(text: str) -> str:
    """Each heading one level down: the agents' sections under the file's title."""
    return "\n".join("#" + line if line.startswith("#") else line for line in text.split("\n"))


def edited(existing: str) -> bool:
    """True when a file is not exactly as ``init`` wrote it (or has no marker)."""
    match = _MARKER.search(existing)
    if match is None:
        return True
    return hashlib.sha256(existing[match.end() :].encode()).hexdigest() != match.group(1)


def write(planned: list[Planned], force: bool) -> list[tuple[Path, str]]:
    """Write the files; returns (path, what happened) for each."""
    done = []
    for item in planned:
        if item.path.exists():
            current = item.path.read_text(errors="replace")
            if current == item.text:
                done.append((item.path, "unchanged"))
                continue
            if edited(current) and not force:
                done.append((item.path, "kept (edited; --force replaces it)"))
                continue
            outcome = "replaced"
        else:
            outcome = "written"
        item.path.parent.mkdir(parents=True, exist_ok=True)
        item.path.write_text(item.text)
        done.append((item.path, outcome))
    return done
