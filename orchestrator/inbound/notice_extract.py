"""Recover the JSON completion notice an agent CLI prints at the end of its stdout.

Agents end their free text with a JSON object, usually in a ```json fence, sometimes
bare, often after drafts, code snippets, logs and stray braces. :func:`extract_notice`
returns the last fenced block that parses to an object, else the last top-level
``{...}`` span that does.

Design: two single passes, because outputs run to megabytes and may be hostile (100k
``{`` in a row must not cost 100k rescans).

* Fences: a block is the text between two consecutive fence lines, the first being
  ```json, ```JSON or a bare ```, the second a bare ```. No line of JSON starts with a
  backtick, so a stray fence line elsewhere cannot swallow or split a notice, and the
  blocks are disjoint, so each is parsed once. A last ```json fence that never closes
  (truncated output) runs to the end.
* Braces: one walk with a stack of open braces. At depth 0 only ``{`` matters (quotes in
  prose mean nothing); inside braces string literals are skipped, honouring backslash
  escapes, so braces in strings do not count. A string ends at its closing quote or at
  the end of its line (JSON strings never span lines), so a stray quote cannot hide the
  rest of the output. A ``{`` that never closes stays on the stack and is dropped at the
  end: the walk goes on past it rather than rescanning from the next character, which
  is what keeps it linear. A closed span swallows the spans inside it, which leaves the
  top-level spans; they are disjoint and are parsed from the last one backwards, so a
  malformed notice is rejected whole rather than mistaken for one of its nested objects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from itertools import islice, pairwise
from typing import Any

from orchestrator.core import strict_json

__all__ = ["NoNotice", "extract_notice"]


class NoNotice(ValueError):
    """No JSON object could be recovered from the output; ``reason`` says why and
    ``code`` is ``no_json`` (nothing like JSON) or ``invalid_json`` (broken JSON)."""

    def __init__(self, reason: str, code: str = "no_json") -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code


# Objects tried, from the end, before settling: a megabyte of ``{}`` stays cheap.
MAX_CANDIDATES = 256


# A fence line: optional indent, three or more backticks, then the info string.
_FENCE_LINE = re.compile(r"^[ \t]*`{3,}(.*)$", re.MULTILINE)
# Inside braces, the next character that matters.
_STRUCTURAL = re.compile(r'[{}"]')
# The rest of a string literal after its opening quote: through the closing quote, or up
# to the end of the line, honouring backslash escapes. Unrolled, so it never backtracks.
_STRING_REST = re.compile(r'[^"\\\n]*(?:\\.[^"\\\n]*)*"?')


def extract_notice(output: str) -> dict[str, Any]:
    """Return the agent's notice: the last fenced ```json block that parses to a JSON object;
    else the last balanced top-level JSON object in the text that parses; else raise NoNotice.
    """
    text = output.replace("\r\n", "\n").replace("\r", "\n")
    if not text or text.isspace():
        raise NoNotice("no output")
    fenced = reversed(list(_fenced_blocks(text)))
    if (notice := _pick(text, fenced)) is not None:
        return notice
    spans, unclosed = _top_level_spans(text)
    if (notice := _pick(text, reversed(spans))) is not None:
        return notice
    if spans:
        raise NoNotice("no {...} block in the output is valid JSON", "invalid_json")
    if unclosed:
        raise NoNotice("a '{' is never closed: truncated or malformed JSON", "invalid_json")
    raise NoNotice("no JSON object in the output")


def _pick(text: str, spans: Iterable[tuple[int, int]]) -> dict[str, Any] | None:
    """Of spans given last-first: the first object with a ``status`` (a notice beats
    an example object printed after it), else the first object at all."""
    fallback: dict[str, Any] | None = None
    for start, end in islice(spans, MAX_CANDIDATES):
        obj = _load_object(text[start:end])
        if obj is not None and "status" in obj:
            return obj
        if fallback is None:
            fallback = obj
    return fallback


def _fenced_blocks(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of the content of each ```json, ```JSON or bare ``` block, in order."""
    fences = [(m.start(), m.end(), m.group(1).strip()) for m in _FENCE_LINE.finditer(text)]
    for (_, content_start, info), (content_end, _, closing_info) in pairwise(fences):
        if info.lower() in ("", "json") and not closing_info:
            yield content_start, content_end
    if fences and fences[-1][2].lower() == "json":
        yield fences[-1][1], len(text)


def _top_level_spans(text: str) -> tuple[list[tuple[int, int]], bool]:
    """(start, end) of each balanced top-level ``{...}`` span, in order (see the module
    doc), and whether some ``{`` never closed."""
    spans: list[tuple[int, int]] = []
    open_braces: list[int] = []
    pos = 0
    while True:
        if not open_braces:
            pos = text.find("{", pos)
            if pos < 0:
                return spans, False
            open_braces.append(pos)
            pos += 1
            continue
        token = _STRUCTURAL.search(text, pos)
        if token is None:
            return spans, True
        at = token.start()
        char = text[at]
        if char == '"':
            pos = _string_end(text, at + 1)
        elif char == "{":
            open_braces.append(at)
            pos = at + 1
        else:
            start = open_braces.pop()
            while spans and spans[-1][0] > start:
                spans.pop()
            spans.append((start, at + 1))
            pos = at + 1


def _string_end(text: str, pos: int) -> int:
    """Where the string literal whose content starts at ``pos`` ends (see _STRING_REST)."""
    match = _STRING_REST.match(text, pos)
    return match.end() if match is not None else pos


def _load_object(text: str) -> dict[str, Any] | None:
    """``text`` parsed as a JSON object, or None if it is not one.

    ValueError covers malformed JSON, integers past Python's digit limit and
    NaN/Infinity (not JSON, and Postgres jsonb cannot store them);
    RecursionError covers absurdly deep nesting.
    """
    try:
        value = strict_json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
