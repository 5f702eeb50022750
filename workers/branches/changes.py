"""What a REQ's branch says changed, and how that compares with what the
agents said: pure, no I/O, property-tested.

The branch's diff is the truth. An agent's notice lists files
(``files_created``, ``files_modified``, ``files_deleted``, ``changes``); a
file the commit changed but the notice did not list, or listed but the
commit did not change, is recorded on the attempt for the operator.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LIST_KEYS = ("files_created", "files_modified", "files_deleted")
CHANGE_KEYS = ("file", "path", "filename")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# git's own names for what happened to a path in --name-status output.
STATUS_NAMES = {
    "A": "added",
    "M": "modified",
    "D": "deleted",
    "R": "renamed",
    "C": "copied",
    "T": "type changed",
}


@dataclass(frozen=True)
class Changed:
    """One path a commit changed, as git says."""

    path: str
    status: str  # added, modified, deleted, renamed...

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "status": self.status}


def branch_name(template: str, req: str) -> str:
    """The REQ's branch: the template with {req} filled (a REQ id is already
    restricted to characters a ref may hold)."""
    return template.format(req=req)


def listed_paths(notice: Mapping[str, Any]) -> list[str]:
    """Every path the notice names as changed, once each, normalised like git
    prints them (no ``./``, no trailing ``/``); anything that is not a string
    path is left out (Berry no longer commits lists: nothing to refuse)."""
    found: dict[str, None] = {}
    values: list[Any] = []
    for key in LIST_KEYS:
        got = notice.get(key)
        values.extend(got if isinstance(got, list) else [got] if isinstance(got, str) else [])
    changes = notice.get("changes")
    for item in changes if isinstance(changes, list) else []:
        if isinstance(item, str):
            values.append(item)
        elif isinstance(item, Mapping):
            values.extend(item[k] for k in CHANGE_KEYS if isinstance(item.get(k), str))
    for value in values:
        if isinstance(value, str) and (path := normalise(value)):
            found.setdefault(path, None)
    return list(found)


def normalise(path: str) -> str:
    """A listed path as git would print it, or '' when it names no file."""
    text = path.strip()
    if not text or _CONTROL.search(text) or len(text) > 1024:
        return ""
    while text.startswith("./"):
        text = text[2:]
    parts = [p for p in text.split("/") if p not in ("", ".")]
    return "/".join(parts)


def compare(listed: Iterable[str], changed: Iterable[Changed]) -> tuple[list[str], list[str]]:
    """(changed but not listed, listed but unchanged), each sorted."""
    said = set(listed)
    done = {c.path for c in changed}
    return sorted(done - said), sorted(said - done)


def parse_name_status(out: str) -> list[Changed]:
    """``git diff --name-status -z`` (or diff-tree's) output as Changed paths;
    a rename or copy is its new path."""
    fields = out.split("\0")
    found: list[Changed] = []
    i = 0
    while i < len(fields):
        code = fields[i].strip()
        if not code:
            i += 1
            continue
        kind = code[0]
        if kind in ("R", "C") and i + 2 < len(fields):
            found.append(Changed(fields[i + 2], STATUS_NAMES[kind]))
            i += 3
            continue
        if i + 1 < len(fields) and fields[i + 1]:
            found.append(Changed(fields[i + 1], STATUS_NAMES.get(kind, "modified")))
        i += 2
    return found


def attempt_message(
    *, req: str, stage: int, stage_name: str, agent: str, attempt: int, summary: str
) -> str:
    """The runner's commit of one stage attempt: a subject, the agent's
    summary, and the trailers that find it again (``Agog-Req``,
    ``Agog-Stage``, ``Agog-Attempt``, ``Agog-Agent``)."""
    line = " ".join(_CONTROL.sub(" ", summary).split())
    heading = line if len(line) <= 60 else line[:59] + "…"
    subject = f"{stage_name.lower()}({req}): {heading or f'{agent} attempt {attempt}'}"
    body = [subject, ""]
    if line and line != heading:
        body += [line, ""]
    body += [
        f"Agog-Req: {req}",
        f"Agog-Stage: {stage}",
        f"Agog-Attempt: {attempt}",
        f"Agog-Agent: {agent}",
    ]
    return "\n".join(body) + "\n"


def conflict_owners(
    commits: Iterable[tuple[str, Iterable[str]]], conflicting: Iterable[str], order: list[str]
) -> list[str]:
    """The agents whose commits touched a conflicting file, in pipeline order
    (``order``: the agents as the stages run): who a conflict goes back to."""
    wanted = set(conflicting)
    owners = {agent for agent, files in commits if wanted & set(files)}
    return [a for a in order if a in owners]


def has_conflict_markers(text: str) -> bool:
    """Whether a file still holds git's conflict markers (a line starting with
    seven '<', and one with seven '>')."""
    lines = text.splitlines()
    return any(x.startswith("<<<<<<< ") or x == "<<<<<<<" for x in lines) and any(
        x.startswith(">>>>>>> ") or x == ">>>>>>>" for x in lines
    )
