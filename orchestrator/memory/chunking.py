"""Content hashes and chunks (pure: no I/O).

A memory longer than the provider takes whole is cut into chunks at the
nicest boundary available (a blank line, a line end, a sentence end, a
space), never mid-word unless a word is longer than a chunk. The parts
concatenated give back the whole text: nothing is dropped silently. Each
chunk after the first starts with the memory's first line, so that a chunk
found alone still says what it belongs to.

Dedup: the hash covers the kind, agent, REQ and the text with its
whitespace normalised, so a redelivered notice (or the same QA failure
reported twice) maps to rows that already exist.
"""

from __future__ import annotations

import hashlib
import re

from orchestrator.memory.model import Draft, Row

_SPACE = re.compile(r"\s+")
# Boundaries in order of preference; a cut goes just after the match.
_BOUNDARIES = (
    re.compile(r"\n\s*\n"),
    re.compile(r"\n"),
    re.compile(r"[.!?;:]\s"),
    re.compile(r"\s"),
)
HEADER_MAX = 160  # characters of the first line repeated on later chunks


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def parent_hash(kind: str, agent: str, req: str | None, text: str) -> str:
    key = "\x1f".join((kind, agent, req or "", normalise(text)))
    return hashlib.sha256(key.encode()).hexdigest()


def split(text: str, limit: int) -> list[str]:
    """Cut ``text`` into parts of at most ``limit`` characters whose
    concatenation is ``text``; cuts prefer the later half of a window."""
    if limit < 1:
        raise ValueError("limit must be positive")
    parts: list[str] = []
    start = 0
    while len(text) - start > limit:
        window = text[start : start + limit]
        cut = 0
        for boundary in _BOUNDARIES:
            ends = [m.end() for m in boundary.finditer(window) if m.end() >= limit // 2]
            if ends:
                cut = ends[-1]
                break
        if cut <= 0:
            cut = limit  # one word longer than a chunk: cut it
        parts.append(text[start : start + cut])
        start += cut
    parts.append(text[start:])
    return parts


def header_of(text: str, limit: int = HEADER_MAX) -> str:
    """The first line, as a label for later chunks (shortened with an ellipsis:
    the line itself is whole in the first chunk)."""
    first = text.strip().split("\n", 1)[0].strip()
    return first if len(first) <= limit else first[: limit - 1] + "…"


def rows_for(draft: Draft, max_chars: int, max_chunks: int = 64) -> list[Row]:
    """The rows of one memory; [] when there is nothing to remember.

    Past ``max_chunks`` chunks the rest is not stored, and every row says so
    in its metadata (``truncated``) so that the caller can warn: a cap that is
    visible, never a silent truncation.
    """
    text = draft.text.strip()
    if not normalise(text):
        return []
    if max_chars < 64:
        raise ValueError("max_chars must be at least 64")
    parent = parent_hash(draft.kind, draft.agent, draft.req_number, text)
    if len(text) <= max_chars:
        return [_row(draft, text, parent, parent, 0, 1, draft.metadata)]
    header = header_of(text, min(HEADER_MAX, max_chars // 4))
    # Room for "<header> (part 12/34)\n" on every chunk after the first.
    reserve = len(header) + 24
    parts = split(text, max_chars - reserve)
    total = len(parts)
    metadata = dict(draft.metadata)
    if total > max_chunks:
        kept = sum(len(p) for p in parts[:max_chunks])
        metadata["truncated"] = {"kept_chars": kept, "total_chars": len(text), "chunks": total}
        parts = parts[:max_chunks]
    count = len(parts)
    rows = []
    for index, part in enumerate(parts):
        content = part if index == 0 else f"{header} (part {index + 1}/{count})\n{part}"
        digest = hashlib.sha256(f"{parent}:{index}/{count}".encode()).hexdigest()
        rows.append(_row(draft, content, digest, parent, index, count, metadata))
    return rows


def _row(
    draft: Draft,
    content: str,
    digest: str,
    parent: str,
    index: int,
    count: int,
    metadata: dict[str, object],
) -> Row:
    return Row(
        kind=draft.kind,
        agent=draft.agent,
        req_number=draft.req_number,
        stage=draft.stage,
        content=content,
        content_hash=digest,
        parent_hash=parent,
        chunk_index=index,
        chunk_count=count,
        metadata=dict(metadata),
    )


def pieces_for_provider(content: str, max_chars: int) -> list[str]:
    """A stored row longer than the provider takes (the provider changed after
    it was stored): embedded as pieces whose vectors are averaged, not cut."""
    return split(content, max_chars) if len(content) > max_chars else [content]
