"""OWNER_REQUESTS.md: the human-edited intake and status view of the REQs.

Postgres is the truth; this file is (a) an intake, where new or human-changed
entries become workflows, and (b) a view, where agogd writes each REQ's status
back. The old daemon lost human edits to unlocked, non-atomic writers and broke
on small format variations, so this module:

* parses tolerantly (``**Status:**`` or ``**Status**:``, any spacing, lowercase
  values, CRLF, a BOM, extra fields and prose, code fences that show templates);
* rewrites only the status lines of one entry, byte for byte elsewhere;
* hashes each entry without the lines agogd writes, so agogd's own writes never
  look like a human change to the file watcher;
* writes under an ``flock`` on a sidecar lock file, re-reading the file under
  the lock, atomically (temp file, fsync, ``os.replace``).

The functions here block (file I/O, ``flock``); call them from asyncio through
``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

__all__ = [
    "AGOGD_FIELDS",
    "DEFAULT_PRIORITY",
    "KNOWN_STATUSES",
    "OwnerRequest",
    "OwnerRequestsFile",
    "changed_entries",
    "check_update",
    "parse",
    "parse_report",
    "set_status",
]

KNOWN_STATUSES: frozenset[str] = frozenset(
    {
        "NEW",
        "PENDING",
        "IN_PROGRESS",
        "BLOCKED",
        "ESCALATED",
        "COMPLETE",
        "DEFERRED",
        "DEPLOYED",
        "CANCELLED",
    }
)
"""Statuses humans and agogd use; others still parse but are reported."""

AGOGD_FIELDS: tuple[str, ...] = (
    "Status",
    "Deployed At",
    "Commit",
    "Deployed By",
    "Blocked Reason",
    "Updated At",
)
"""Fields agogd writes. They are left out of content_hash, so set_status only
accepts these names as extras: anything else would look like a human edit."""

DEFAULT_PRIORITY = 2
_MAX_ID_LEN = 64
_ID_RE = re.compile(r"REQ-[A-Za-z0-9][A-Za-z0-9_-]*")
_STATUS_VALUE_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")

# An ATX heading of level 1-3 ends an entry; level 3 may start one.
_HEADING_RE = re.compile(r"^ {0,3}#{1,3}(?:[ \t]|$)")
_REQ_HEADING_RE = re.compile(
    r"^ {0,3}###[ \t]+[*`\[]*(?P<id>[^\s:*`\[\]]+)[*`\]]*[ \t]*(?::[*`]*)?[ \t]*(?P<title>.*)$"
)
_RULE_RE = re.compile(r"^ {0,3}-{3,}[ \t]*$")
_FENCE_RE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})")
# `**Name**: value`, `**Name:** value`, `**Name** : value`; not on bullet lines,
# so a requirement like `- **Latency**: < 200ms` stays a requirement.
_FIELD_RE = re.compile(
    r"^(?P<prefix>[ \t]{0,3}\*\*(?P<name>[^*\r\n:]*[^*\s:])[ \t]*"
    r"(?:\*\*[ \t]*:|:[ \t]*\*\*)[ \t]*)(?P<value>.*?)[ \t\r]*$"
)
_BULLET_RE = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+(?P<text>.*?)[ \t\r]*$")
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_BOM = "\ufeff"
_WRAPPERS = "*_`"
_PRIORITY_WORDS = {"critical": 0, "urgent": 0, "high": 1, "medium": 2, "normal": 2, "low": 3}


def _valid_req_id(req: str) -> bool:
    """Whether req is a well-formed REQ id (the canonical check will live elsewhere)."""
    return len(req) <= _MAX_ID_LEN and _ID_RE.fullmatch(req) is not None


def _norm_name(name: str) -> str:
    """Field names compare case- and spacing-insensitively (`**deployed  at**`)."""
    return " ".join(name.split()).casefold()


_AGOGD_NAMES: dict[str, str] = {_norm_name(n): n for n in AGOGD_FIELDS}
_STATUS = _norm_name("Status")


@dataclass(frozen=True)
class OwnerRequest:
    """One `### REQ-...` entry as a human wrote it."""

    req_number: str
    title: str
    status: str = "NEW"
    owner: str | None = None
    priority: int = DEFAULT_PRIORITY
    requirements: tuple[str, ...] = ()
    # Names as written; first occurrence wins. Read-only, excluded from hash().
    fields: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    content_hash: str = ""


# --------------------------------------------------------------------------- lines


@dataclass
class _Line:
    """One physical line: content without its ending, and the ending kept apart."""

    content: str
    ending: str  # "\r\n", "\n" or "" (last line without a newline)


def _split(text: str) -> list[_Line]:
    """Split on "\\n" only, so stray Unicode separators in prose never move lines."""
    lines: list[_Line] = []
    for raw in text.split("\n"):
        lines.append(_Line(raw, "\n"))
    last = lines.pop()  # text after the final "\n" (possibly "")
    if last.content:
        lines.append(_Line(last.content, ""))
    for line in lines:
        if line.ending == "\n" and line.content.endswith("\r"):
            line.content = line.content[:-1]
            line.ending = "\r\n"
    return lines


def _join(lines: list[_Line]) -> str:
    return "".join(line.content + line.ending for line in lines)


# --------------------------------------------------------------------------- entries


@dataclass
class _Entry:
    """Where one entry sits in the file; field/requirement lines are outside fences."""

    req: str
    title: str
    heading: int  # index of the heading line
    end: int  # index one past the last line of the entry (terminator excluded)
    text_lines: list[int]  # lines outside code fences, heading excluded
    fields: list[tuple[int, str, re.Match[str]]]  # (index, normalised name, match)


def _entries(lines: list[_Line], problems: list[str] | None = None) -> list[_Entry]:
    """Every `### <id>` entry (valid or not) in file order, code fences skipped."""
    entries: list[_Entry] = []
    current: _Entry | None = None
    fence: str | None = None
    fence_line = 0
    for i, line in enumerate(lines):
        content = line.content
        if fence is not None:
            m = _FENCE_RE.match(content)
            if m and m["fence"][0] == fence[0] and len(m["fence"]) >= len(fence):
                if not content.strip().lstrip(fence[0]):
                    fence = None
            continue
        m = _FENCE_RE.match(content)
        if m and not (m["fence"][0] == "`" and "`" in content.strip().lstrip("`")):
            fence, fence_line = m["fence"], i
            continue
        if _HEADING_RE.match(content) or _RULE_RE.match(content):
            if current is not None:
                current.end = i
                current = None
            h = _REQ_HEADING_RE.match(content)
            if h is not None:
                title = re.sub(r"[ \t]+#+[ \t]*$|^#+[ \t]*$", "", h["title"].rstrip())
                title = re.sub(r"^[-\u2013\u2014][ \t]+", "", title).strip()
                current = _Entry(h["id"], title, i, len(lines), [], [])
                entries.append(current)
            continue
        if current is not None:
            current.text_lines.append(i)
            f = _FIELD_RE.match(content)
            if f is not None:
                current.fields.append((i, _norm_name(f["name"]), f))
    if fence is not None and problems is not None:
        problems.append(f"line {fence_line + 1}: code fence is never closed")
    return entries


def _clean_value(value: str) -> str:
    """Drop markdown emphasis around a value (`**P1**`, `` `NEW` ``)."""
    return value.strip().strip(_WRAPPERS).strip()


def _norm_status(value: str) -> str | None:
    """Upper-cased status from a human value ("in progress  # note" -> IN_PROGRESS).

    Prefers a known status: the whole phrase, then its first two words, then its
    first word ("Complete - shipped" -> COMPLETE); else the phrase as is.
    """
    value = re.split(r"(?:^|\s)#", value, maxsplit=1)[0]
    m = re.search(r"[A-Za-z][A-Za-z0-9_\- \t]*", _clean_value(value))
    if m is None:
        return None
    words = [w for w in re.split(r"[\s_-]+", m.group().upper()) if w]
    for n in (len(words), 2, 1):
        candidate = "_".join(words[:n])
        if candidate in KNOWN_STATUSES:
            return candidate
    return "_".join(words)


def _parse_priority(value: str) -> int | None:
    """P0..P3 (or 0..3, or critical/high/medium/low) -> 0..3; None if unparseable."""
    v = _clean_value(value)
    m = re.match(r"^P?([0-3])(?![0-9])", v, re.IGNORECASE)
    if m:
        return int(m.group(1))
    word = re.match(r"^[A-Za-z]+", v)
    if word and word.group().casefold() in _PRIORITY_WORDS:
        return _PRIORITY_WORDS[word.group().casefold()]
    return None


def _requirements(lines: list[_Line], entry: _Entry) -> tuple[str, ...]:
    """Bullets after **Requirements** up to the next field; indented lines continue one."""
    items: list[str] = []
    start: int | None = None
    for idx, name, f in entry.fields:
        if name == "requirements":
            start = idx
            inline = _clean_value(f["value"])
            if inline:
                items.append(f["value"].strip())
            break
    if start is None:
        return ()
    field_lines = {idx for idx, _, _ in entry.fields}
    for i in entry.text_lines:
        if i <= start:
            continue
        if i in field_lines:
            break
        content = lines[i].content
        b = _BULLET_RE.match(content)
        if b is not None:
            if b["text"]:
                items.append(b["text"])
        elif items and content[:1] in (" ", "\t") and content.strip():
            items[-1] = f"{items[-1]} {content.strip()}"
    return tuple(items)


def _content_hash(lines: list[_Line], entry: _Entry) -> str:
    """sha256 of the entry without agogd's lines, trailing spaces or extra blank lines."""
    skip = {idx for idx, name, _ in entry.fields if name in _AGOGD_NAMES}
    out: list[str] = []
    for i in range(entry.heading, entry.end):
        if i in skip:
            continue
        content = lines[i].content.rstrip()
        if not content and (not out or not out[-1]):
            continue
        out.append(content)
    while out and not out[-1]:
        out.pop()
    return hashlib.sha256("\n".join(out).encode("utf-8")).hexdigest()


def _build(lines: list[_Line], entry: _Entry, problems: list[str]) -> OwnerRequest:
    """The OwnerRequest for one entry; format slips go to problems, not exceptions."""
    fields: dict[str, str] = {}
    by_norm: dict[str, str] = {}
    for idx, name, f in entry.fields:
        if name in by_norm:
            problems.append(
                f"line {idx + 1}: {entry.req} repeats field {f['name']!r}; first one wins"
            )
            continue
        by_norm[name] = f["value"]
        fields[f["name"]] = f["value"]
    where = f"line {entry.heading + 1}: {entry.req}"
    raw_status = by_norm.get(_STATUS)
    status = _norm_status(raw_status) if raw_status is not None else None
    if raw_status is None:
        problems.append(f"{where} has no **Status** line; assuming NEW")
    elif status is None:
        problems.append(f"{where} has an empty status; assuming NEW")
    elif status not in KNOWN_STATUSES:
        problems.append(f"{where} has unknown status {raw_status.strip()!r}")
    raw_priority = by_norm.get("priority")
    priority = _parse_priority(raw_priority) if raw_priority is not None else None
    if raw_priority is not None and priority is None:
        problems.append(
            f"{where} has unparseable priority {raw_priority.strip()!r}; "
            f"assuming P{DEFAULT_PRIORITY}"
        )
    owner = _clean_value(by_norm.get("owner", "")).lstrip("@") or None
    return OwnerRequest(
        req_number=entry.req,
        title=entry.title,
        status=status or "NEW",
        owner=owner,
        priority=DEFAULT_PRIORITY if priority is None else priority,
        requirements=_requirements(lines, entry),
        fields=MappingProxyType(fields),
        content_hash=_content_hash(lines, entry),
    )


def _valid_entries(
    lines: list[_Line], problems: list[str] | None = None
) -> Iterator[tuple[_Entry, bool]]:
    """Entries with a valid id, flagged False for duplicates (the first one wins)."""
    seen: dict[str, int] = {}
    for entry in _entries(lines, problems):
        if not _valid_req_id(entry.req):
            if problems is not None and entry.req[:3].upper() == "REQ":
                problems.append(
                    f"line {entry.heading + 1}: {entry.req!r} is not a valid REQ id; entry ignored"
                )
            continue
        if entry.req in seen:
            if problems is not None:
                problems.append(
                    f"line {entry.heading + 1}: duplicate entry {entry.req} "
                    f"(first at line {seen[entry.req] + 1}); first one wins"
                )
            yield entry, False
            continue
        seen[entry.req] = entry.heading
        yield entry, True


def parse_report(text: str) -> tuple[list[OwnerRequest], list[str]]:
    """Entries plus human-readable problems, so a typo is reported instead of lost.

    `### ` headings whose first token does not look like a REQ id at all (e.g.
    `### Notes`) are plain sections: they end an entry and are not reported.
    """
    lines = _split(text.removeprefix(_BOM))
    problems: list[str] = []
    result: list[OwnerRequest] = []
    for entry, first in _valid_entries(lines, problems):
        if first:
            result.append(_build(lines, entry, problems))
    return result, problems


def parse(text: str) -> list[OwnerRequest]:
    """Every valid, first-seen REQ entry in file order."""
    return parse_report(text)[0]


# --------------------------------------------------------------------------- writing


def _check_value(name: str, value: str) -> str:
    """Values must be one line, or a write could inject markdown (a fake entry)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} value must be a string, not {type(value).__name__}")
    if any(c in _LINE_BREAKS for c in value):
        raise ValueError(f"{name} value must be a single line: {value!r}")
    return value.strip()


def _check_args(status: str, extra: Mapping[str, str] | None) -> tuple[str, list[tuple[str, str]]]:
    """Validate and canonicalise a status update before touching anything."""
    status = _check_value("Status", status).upper()
    if not _STATUS_VALUE_RE.match(status):
        raise ValueError(f"status must look like IN_PROGRESS, got {status!r}")
    extras: list[tuple[str, str]] = []
    for name, value in (extra or {}).items():
        norm = _norm_name(name)
        if norm not in _AGOGD_NAMES or norm == _STATUS:
            allowed = ", ".join(n for n in AGOGD_FIELDS if n != "Status")
            raise ValueError(f"extra field {name!r} is not one agogd writes ({allowed})")
        extras.append((norm, _check_value(_AGOGD_NAMES[norm], value)))
    return status, extras


def check_update(status: str, extra: Mapping[str, str] | None = None) -> None:
    """Raise ValueError (or TypeError) if a status update would be refused,
    so a caller can leave one bad update out instead of failing the batch."""
    _check_args(status, extra)


def _newline(text: str) -> str:
    """The file's line ending, so inserted lines match it."""
    return "\r\n" if "\r\n" in text else "\n"


def set_status(
    text: str, req_number: str, status: str, extra: Mapping[str, str] | None = None
) -> str:
    """text with only req_number's Status (and extra agogd field) lines changed.

    Existing lines keep their style (`**Status:**` vs `**Status**:`); lines that
    already say the same thing are left alone, so an unchanged result means there
    was nothing to do. New extra lines go right after the Status line (after any
    agogd lines already following it); a missing Status line goes after the
    heading's blank line. Raises KeyError if the REQ is not in the file and
    ValueError for multi-line values or extra names agogd does not own.
    """
    new, _, found = _edit(text, [(req_number, status, extra)])
    if req_number not in found:
        raise KeyError(req_number)
    return new


def set_statuses(
    text: str, updates: Sequence[tuple[str, str, Mapping[str, str] | None]]
) -> tuple[str, set[str]]:
    """Several REQs' status updates, as ``set_status`` does one, with the file
    parsed once: (new text, the REQs whose lines changed). REQs not in the
    file are skipped; a REQ given twice gets the later status and both sets
    of extra lines (the later value wins). Bad arguments raise ValueError."""
    new, changed, _ = _edit(text, updates)
    return new, changed


def _edit(
    text: str, updates: Sequence[tuple[str, str, Mapping[str, str] | None]]
) -> tuple[str, set[str], set[str]]:
    """(new text, REQs whose lines changed, REQs found in the file)."""
    merged: dict[str, tuple[str, dict[str, str]]] = {}
    for req_number, status, extra in updates:
        status, extras = _check_args(status, extra)
        previous = merged.get(req_number, ("", {}))[1]
        merged[req_number] = (status, {**previous, **dict(extras)})
    bom = _BOM if text.startswith(_BOM) else ""
    lines = _split(text.removeprefix(_BOM))
    entries = {e.req: e for e, first in _valid_entries(lines) if first and e.req in merged}
    nl = _newline(text)
    changed: set[str] = set()
    # Bottom up: lines inserted into one entry never move the entries above it.
    for entry in sorted(entries.values(), key=lambda e: e.heading, reverse=True):
        status, extras = merged[entry.req]
        if _apply(lines, entry, status, list(extras.items()), nl):
            changed.add(entry.req)
    return (bom + _join(lines) if changed else text), changed, set(entries)


def _apply(
    lines: list[_Line], entry: _Entry, status: str, extras: list[tuple[str, str]], nl: str
) -> bool:
    """Write one entry's Status and extra lines in place; True if anything changed."""
    existing: dict[str, tuple[int, re.Match[str]]] = {}
    for idx, name, f in entry.fields:
        existing.setdefault(name, (idx, f))
    changed = False

    def rewrite(idx: int, f: re.Match[str], value: str) -> None:
        nonlocal changed
        prefix = f["prefix"]
        if not f["value"] and not prefix[-1:].isspace():
            prefix += " "  # `**Commit**:` was empty: write `**Commit**: abc`
        lines[idx].content = prefix + value
        changed = True

    inserts: list[str] = []
    if _STATUS in existing:
        idx, f = existing[_STATUS]
        if _norm_status(f["value"]) != status:
            rewrite(idx, f, status)
        anchor = idx
    else:
        inserts.append(f"**Status**: {status}")
        anchor = entry.heading
        if anchor + 1 < entry.end and not lines[anchor + 1].content.strip():
            anchor += 1
    for norm, value in extras:
        if norm in existing:
            idx, f = existing[norm]
            if f["value"].strip() != value:
                rewrite(idx, f, value)
        else:
            inserts.append(f"**{_AGOGD_NAMES[norm]}**: {value}".rstrip())
    if inserts:
        if _STATUS in existing:  # keep agogd's block together: Status, Deployed At, ...
            managed = {idx for idx, name, _ in entry.fields if name in _AGOGD_NAMES}
            while anchor + 1 in managed:
                anchor += 1
        ending = lines[anchor].ending
        if not ending:  # inserting after the last line, which had no newline
            lines[anchor].ending = nl
        new = [_Line(content, nl) for content in inserts]
        new[-1].ending = ending or ""
        lines[anchor + 1 : anchor + 1] = new
        changed = True
    return changed


# --------------------------------------------------------------------------- the file


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


class OwnerRequestsFile:
    """OWNER_REQUESTS.md on disk, written only under a lock and atomically.

    Humans edit the file without taking the lock, so update_status re-reads it
    under the lock and, if it changes between the read and the replace, reads
    it again instead of overwriting the edit. An editor holding an old buffer
    can still save over agogd's line; Postgres stays the truth and the mirror
    writes the status again (owner_sync).
    """

    ATTEMPTS = 5

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        # The last parse, by the digest of the bytes parsed: the watcher reads
        # the file every pass, and parsing 5,000 entries takes ~150 ms while
        # hashing them takes ~1 ms. A cache only: never the truth.
        self._parsed: tuple[bytes, tuple[list[OwnerRequest], list[str]]] | None = None
        # What a reader has done with which content, by purpose (owner_sync:
        # "ingested", "checked"): work a pass can skip while the bytes stay.
        self.handled: dict[str, bytes | None] = {}

    @property
    def digest(self) -> bytes | None:
        """Digest of the content the last read parsed (None before any read)."""
        return self._parsed[0] if self._parsed is not None else None

    def __repr__(self) -> str:
        return f"OwnerRequestsFile({str(self.path)!r})"

    def read(self) -> list[OwnerRequest]:
        """Current entries; a missing file is an empty intake, not an error."""
        return self.read_report()[0]

    def read_report(self) -> tuple[list[OwnerRequest], list[str]]:
        """Current entries and format problems (see parse_report)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], []
        digest = hashlib.blake2b(data, digest_size=20).digest()
        if self._parsed is None or self._parsed[0] != digest:
            self._parsed = (digest, parse_report(data.decode("utf-8")))
        entries, problems = self._parsed[1]
        return list(entries), list(problems)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive flock on `<path>.lock`, shared by agogd processes and threads."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def update_status(
        self, req_number: str, status: str, extra: Mapping[str, str] | None = None
    ) -> bool:
        """Write req_number's status (and extra lines); False if absent or already so."""
        return req_number in self.update_statuses([(req_number, status, extra)])

    def update_statuses(
        self, updates: Sequence[tuple[str, str, Mapping[str, str] | None]]
    ) -> set[str]:
        """Write several REQs' statuses (and extra lines) in one rewrite of the
        file; returns the REQs whose lines changed (absent or already so: not).

        One rewrite per batch, not per REQ: a big file is rewritten, fsynced
        and renamed once for a burst of status changes."""
        for _, status, extra in updates:
            _check_args(status, extra)  # bad arguments raise even when the file is missing
        target = Path(os.path.realpath(self.path))  # keep a symlinked file a symlink
        with self.locked():
            for _ in range(self.ATTEMPTS):
                try:
                    before = os.stat(target)
                except FileNotFoundError:
                    return set()
                text = target.read_bytes().decode("utf-8")
                new, changed = set_statuses(text, updates)
                if not changed:
                    return set()
                if self._replace(target, new, before):
                    return changed
            raise RuntimeError(f"{self.path} kept changing while agogd tried to update it")

    @staticmethod
    def _replace(target: Path, text: str, before: os.stat_result) -> bool:
        """Atomically replace target unless it changed since `before` was taken."""
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fchmod(f.fileno(), stat.S_IMODE(before.st_mode))
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), before.st_uid, before.st_gid)
                os.fsync(f.fileno())
            try:
                now = os.stat(target)
            except FileNotFoundError:
                now = None
            if now is None or _signature(now) != _signature(before):
                os.unlink(tmp)
                return False  # a human saved meanwhile: re-read and re-apply
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True


def changed_entries(
    previous: Mapping[str, str], current: Iterable[OwnerRequest]
) -> list[OwnerRequest]:
    """New or human-changed entries, given the last content_hash seen per REQ.

    Status and deployment lines are not in the hash, so agogd's own writes (and
    a human retyping a status) do not show up here; compare statuses with
    Postgres separately if that matters.
    """
    return [r for r in current if previous.get(r.req_number) != r.content_hash]
