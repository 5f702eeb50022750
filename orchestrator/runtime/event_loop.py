"""Which event loop agogd runs on: uvloop (libuv) unless told otherwise.

agogd is socket-bound (NATS, Postgres, HTTP): the profile puts about 40% of
its samples in asyncio's own loop and transports, which uvloop replaces with
C. ``AGOG_EVENT_LOOP=asyncio`` keeps the standard loop (a platform without
uvloop falls back to it, saying so).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from orchestrator.runtime.logs import get_logger

T = TypeVar("T")
log = get_logger("agogd.loop")


def run(main: Coroutine[Any, Any, T], choice: str = "uvloop") -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("loop.uvloop_missing", note="running on asyncio's own loop")
        else:
            return uvloop.run(main)
    return asyncio.run(main)
