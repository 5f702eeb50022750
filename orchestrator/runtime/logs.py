"""structlog set-up: JSON lines on stdout by default, a console format on request.

Context (``req_number``, ``stage``, ``agent``, ``msg_subject``) is bound with
``bound_context`` and rides on every line logged inside it. A redaction
processor keeps anything that looks like a secret out of the output. The
console format escapes control characters in every value (agents' output
and text are logged), so a log line can never drive the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

import structlog

from orchestrator.core import json_text
from orchestrator.core.safe_text import neutralise

CONTEXT_KEYS = ("req_number", "stage", "agent", "msg_subject")
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|creds|authorization|api_key", re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)


# Whether a key looks secret, decided once per key: log keys are a small set
# that the code names, and the regex per key per line was most of a line's cost.
_SECRET_KEYS: dict[str, bool] = {}
_SECRET_KEYS_MAX = 4096  # keys from elsewhere (stdlib extras) are tested, not kept


def _learn_secret_key(key: object) -> bool:
    hit = bool(_SECRET_KEY.search(str(key)))
    if isinstance(key, str) and len(_SECRET_KEYS) < _SECRET_KEYS_MAX:
        _SECRET_KEYS[key] = hit
    return hit


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask values under secret-looking keys and passwords inside URLs."""
    known = _SECRET_KEYS
    for key, value in list(event_dict.items()):
        if value is None:
            continue
        secret = known.get(key)
        if secret is None:
            secret = _learn_secret_key(key)
        if secret:
            event_dict[key] = "***"
        elif isinstance(value, str) and "://" in value:
            event_dict[key] = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", value)
    return event_dict


# The context ``bound_context`` binds: one variable holding a read-only
# mapping, so merging it is one lookup (structlog's merge_contextvars walks
# every context variable of the context on every line).
_NO_CONTEXT: Mapping[str, Any] = MappingProxyType({})
_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar("agogd_log_context", default=_NO_CONTEXT)


def merge_context(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Put the bound context first on the line; the call's own keys win."""
    context = _CONTEXT.get()
    if not context:
        return event_dict
    merged = dict(context)
    merged.update(event_dict)
    return merged


class UtcTimestamp:
    """``timestamp``: ISO 8601 in UTC with microseconds and a ``Z``, as
    structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it, with the date
    and time of day formatted once a second instead of on every line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


_LAYOUT_KEYS = frozenset({"exception", "stack"})  # multi-line by the renderer's own layout
_COLUMNS = frozenset({"event", "timestamp", "level", "logger", "logger_name"})
_QUOTED = frozenset(" \t=\r\n\"'")  # the console renderer quotes (reprs) such strings


class _Shown(str):
    """A value already quoted and made safe: the renderer prints it as it is."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str.__str__(self)


def neutralise_console(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Escape control characters and bidi overrides in every key and value,
    for the console renderer, which prints strings as they are: an agent's
    output line with ESC ] 0; would retitle the operator's terminal, and one
    with a newline would forge a log line. (JSON lines escape them already.)"""
    items = list(event_dict.items())
    event_dict.clear()
    for key, value in items:
        if key in _LAYOUT_KEYS and isinstance(value, str):
            value = neutralise(value, keep_newlines=True)
        elif key in _COLUMNS and isinstance(value, str):
            value = neutralise(value)
        elif isinstance(value, str) and not _QUOTED.intersection(value):
            value = neutralise(value)
        elif not (value is None or type(value) in (bool, int, float)):
            value = _Shown(neutralise(repr(value)))  # what the renderer shows, escaped
        event_dict[neutralise(key) if isinstance(key, str) else key] = value
    return event_dict


def json_line(event: dict[str, Any], **_: Any) -> str:
    """One log line as JSON, by orjson (several times stdlib json's speed on
    the hot path), so a log call never fails (``json_text``)."""
    return json_text.dumps(event, default=repr)


def configure(level: str = "info", fmt: str = "json", *, once: bool = False) -> None:
    """Configure structlog and route stdlib logging (asyncio, nats) through it.

    ``once``: the process configures logging this one time (the daemon), so
    each logger is built on its first call and reused, instead of being
    rebuilt on every call in case the configuration changed."""
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    shared: list[Any] = [
        merge_context,
        structlog.processors.add_log_level,
        UtcTimestamp(),
        redact_secrets,
    ]
    renderer: Any
    last: list[Any] = []
    if fmt == "console":
        # colours (the renderer's own) only on a terminal; agents' text never
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        last = [neutralise_console]
    else:
        renderer = structlog.processors.JSONRenderer(serializer=json_line)
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, *last, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(),  # follows sys.stdout; one write a line
        cache_logger_on_first_use=once,
    )
    handler = _StdoutHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                *last,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO) if numeric < logging.INFO else numeric)


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to whatever sys.stdout is now."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def get_logger(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name) if name else structlog.get_logger()


@contextlib.contextmanager
def bound_context(**context: Any) -> Iterator[None]:
    """Bind REQ/stage/agent/subject context to every log line in the block."""
    known = {k: v for k, v in context.items() if v is not None}
    token = _CONTEXT.set(MappingProxyType({**_CONTEXT.get(), **known}))
    try:
        yield
    finally:
        _CONTEXT.reset(token)
