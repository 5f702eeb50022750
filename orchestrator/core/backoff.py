"""Exponential backoff with jitter for reconnect loops."""

from __future__ import annotations

import random
from collections.abc import Iterator


def delays(initial: float = 0.2, maximum: float = 30.0, factor: float = 2.0) -> Iterator[float]:
    """Endless delays: initial, doubling up to maximum, with +-20% jitter."""
    delay = initial
    while True:
        yield delay * random.uniform(0.8, 1.2)
        delay = min(delay * factor, maximum)
