"""Named crash points for fault-injection tests: ``AGOG_FAILPOINTS=a,b``
makes the process SIGKILL itself when it reaches one of them, and
``name=pause:SECONDS`` holds it there that long (a window a test needs open,
such as the one between a backup's stream snapshot and its Postgres dump,
made wide on purpose instead of hoped for).

A crash is what durability has to survive, so the tests put one between
every two steps of an effect (a worktree, a stage commit, a rebase, a push,
a pull request) and restart. Unset, ``hit`` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

from orchestrator.runtime.logs import get_logger

log = get_logger("agogd.failpoints")


def armed() -> frozenset[str]:
    return frozenset(p.strip() for p in os.environ.get("AGOG_FAILPOINTS", "").split(",") if p)


def hit(name: str) -> None:
    """Die here, as kill -9 would, if this point is armed."""
    if name in armed():
        log.warning("failpoint.hit", failpoint=name)
        os.kill(os.getpid(), signal.SIGKILL)


def pause_seconds(name: str) -> float:
    """How long to hold at this point (``name=pause:SECONDS``), else 0."""
    for entry in armed():
        point, _, how = entry.partition("=")
        if point == name and how.startswith("pause:"):
            try:
                return max(0.0, float(how.removeprefix("pause:")))
            except ValueError:
                log.warning("failpoint.bad_pause", failpoint=entry)
    return 0.0
