"""Agent and user text made safe for a terminal: control characters shown, not obeyed.

Titles, summaries, reasons and agent output come from agents (or whoever
can publish on NATS). A terminal obeys the escape sequences in them: an OSC
retitles the window or sets the clipboard, a CSI moves the cursor or
repaints lines, a bidi override reorders what the operator reads, and a
newline forges a line of its own. Every human view (agogctl, the console
log renderer) passes such strings through ``neutralise``, which writes each
of those characters as a visible escape (``\\x1b``, ``\\n``, ``\\u202e``).
JSON output is never touched: it is the data, and JSON escapes them anyway.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["UNSAFE", "excerpt", "neutralise", "neutralise_data", "one_line"]

UNSAFE = re.compile(
    "["
    "\x00-\x1f\x7f"  # C0 controls (ESC, BEL, CR, LF, TAB...) and DEL
    "\x80-\x9f"  # C1 controls (CSI and OSC as single characters)
    "\u061c\u200e\u200f"  # bidi marks
    "\u2028\u2029"  # line and paragraph separators
    "\u202a-\u202e"  # bidi embeddings and overrides
    "\u2066-\u2069"  # bidi isolates
    "]"
)
"""Characters a terminal (or a reader) may take for something else than text."""

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def neutralise(text: str, keep_newlines: bool = False) -> str:
    """text with every unsafe character written as a visible escape.

    ``keep_newlines`` leaves ``\\n`` alone, for text whose line breaks are the
    renderer's own layout (a traceback), never for a field of one line."""
    if keep_newlines:
        return "\n".join(UNSAFE.sub(_escape, part) for part in text.split("\n"))
    return UNSAFE.sub(_escape, text)


def neutralise_data(value: Any) -> Any:
    """A JSON-like value with every string in it (keys too) neutralised, for
    a human view that lays the API's answer out; the JSON view keeps the raw."""
    if isinstance(value, str):
        return neutralise(value)
    if isinstance(value, Mapping):
        return {neutralise_data(k): neutralise_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [neutralise_data(v) for v in value]
    return value


_FOLD = re.compile(r"(?:\s|\\[nrt])+")


def excerpt(safe: str, limit: int) -> str:
    """An excerpt of already neutralised text for a table cell: line breaks
    and tabs (escaped or not) fold into single spaces, as in prose."""
    line = _FOLD.sub(" ", safe).strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


def one_line(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters: whitespace runs (line breaks
    included) become one space, other unsafe characters are escaped."""
    line = neutralise(" ".join(text.split()))
    return line if len(line) <= limit else line[: limit - 1] + "…"
