"""Warn once per outage of the embedding provider, not once per row (pure).

The old daemon logged (and stored a zero vector) for every memory while
Ollama was down. Here the first failure opens an outage, later failures only
count, and the first success closes it with its length and count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Opened:
    reason: str


@dataclass(frozen=True)
class Closed:
    seconds: float
    failures: int
    reason: str


class Outage:
    def __init__(self) -> None:
        self.since: float | None = None
        self.failures = 0
        self.reason = ""

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, reason: str, now: float) -> Opened | None:
        """A failed call; an Opened (log it) only for the first of an outage."""
        self.failures += 1
        if self.since is None:
            self.since, self.reason = now, reason
            return Opened(reason)
        return None

    def succeeded(self, now: float) -> Closed | None:
        """A successful call; a Closed (log it) only when it ends an outage."""
        if self.since is None:
            return None
        closed = Closed(now - self.since, self.failures, self.reason)
        self.since, self.failures, self.reason = None, 0, ""
        return closed

    def retry_delay(self, base: float, maximum: float) -> float:
        """Seconds until the next try: doubling with the failures, capped."""
        if self.since is None:
            return base
        return min(maximum, base * 2 ** min(self.failures - 1, 16))
