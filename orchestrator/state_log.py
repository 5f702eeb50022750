"""Log a component's state only when it changes, never in a loop."""

from __future__ import annotations

from typing import Any

from orchestrator.logs import get_logger

log = get_logger("agogd.state")


class StateLog:
    """Remembers each component's last state; logs transitions once."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def set(self, component: str, state: str, level: str = "info", **detail: Any) -> bool:
        """Record a state; returns True (and logs) only if it changed."""
        if self._last.get(component) == state:
            return False
        previous = self._last.get(component)
        self._last[component] = state
        getattr(log, level)(f"{component}.{state}", previous=previous, **detail)
        return True

    def get(self, component: str) -> str | None:
        return self._last.get(component)
