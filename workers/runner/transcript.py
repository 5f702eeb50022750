"""An attempt's agent output, as kept for ``agogctl req logs`` and the board.

Bounded: the last ``limit`` bytes are kept, and how many were written in
all, so a follower asks for what came after the bytes it has. Secrets are
taken out before a line is kept: the values of the environment variables
the agent was given beyond the basics (API keys), and credentials in URLs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from orchestrator.core.redact import redact_text

REDACTED = "[redacted]"
MIN_SECRET = 6  # shorter values would redact ordinary words
# Variables whose values are secrets whatever AGOG_RUNNER_ENV says.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


def secrets_of(env: Mapping[str, str], passed_on: Iterable[str]) -> list[str]:
    """The values to keep out of a transcript: every variable passed on by
    name (AGOG_RUNNER_ENV: where API keys come from) and any whose name says
    it is a secret; the longest first, so that one containing another goes whole."""
    names = set(passed_on) | {n for n in env if _SECRET_NAME.search(n)}
    values = {env[n] for n in names if n in env and len(env[n]) >= MIN_SECRET}
    return sorted(values, key=len, reverse=True)


class Transcript:
    """The output of one attempt, bounded and scrubbed."""

    def __init__(self, limit: int, secrets: Iterable[str] = ()) -> None:
        self.limit = limit
        self.secrets = [s for s in secrets if len(s) >= MIN_SECRET]
        self.total = 0  # bytes written in all (what a follower counts in)
        self._kept = bytearray()
        self.dirty = False

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return redact_text(text)

    def add(self, stream: str, line: str) -> None:
        text = self.scrub(line)
        data = (f"[stderr] {text}\n" if stream == "stderr" else f"{text}\n").encode()
        self.total += len(data)
        self._kept += data
        if len(self._kept) > 2 * self.limit:  # trim now and then, not on every line
            del self._kept[: len(self._kept) - self.limit]
        self.dirty = True

    def snapshot(self) -> tuple[str, int]:
        """The kept text (at most ``limit`` bytes, cut at a character) and the total."""
        kept = bytes(self._kept[-self.limit :])
        self.dirty = False
        return kept.decode("utf-8", "ignore"), self.total
