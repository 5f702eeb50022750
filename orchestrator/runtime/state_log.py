"""Log a component's state only when it changes, never in a loop."""

from __future__ import annotations

from typing import Any

from orchestrator.core.redact import redact_value
from orchestrator.runtime.logs import get_logger

log = get_logger("agogd.state")


class StateLog:
    """Remembers each component's last state; logs transitions once."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def set(
        self, component: str, state: str, level: str = "info", cause: str = "", **detail: Any
    ) -> bool:
        """Record a state; returns True (and logs) only if it, or its cause, changed."""
        key = f"{state}:{cause}"
        if self._last.get(component) == key:
            return False
        previous = self._last.get(component, "").split(":", 1)[0] or None
        self._last[component] = key
        # Details carry server lists and error texts: never a URL's password.
        detail = {k: redact_value(v) for k, v in detail.items()}
        getattr(log, level)(f"{component}.{state}", previous=previous, **detail)
        return True

    def get(self, component: str) -> str | None:
        last = self._last.get(component)
        return last.split(":", 1)[0] if last else None
