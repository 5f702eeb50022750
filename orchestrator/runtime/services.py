"""The two shapes every agogd service takes: a periodic pass and a consumer loop.

Written once here, so each service states only its work. Both run until the
stop event is set, record their state in the state log (logged on a change,
never in a loop) and never let an exception end them: a failing pass is
recorded and tried again at the next interval; a failing message is kept
(nak'd) for a later redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Literal

from nats.aio.msg import Msg

from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.pull import PullFeed
from orchestrator.runtime.state_log import StateLog

log = get_logger("agogd.services")

# A service the daemon runs: a coroutine that returns when the daemon stops.
Service = Callable[[], Awaitable[None]]
# What becomes of a message: acked (done), term'd (rejected for good), nak'd (retry).
Outcome = Literal["ack", "term", "nak"]
NAK_DELAY = 2.0  # seconds before a nak'd message comes back


async def sleep_unless_stopped(
    stopping: asyncio.Event, seconds: float, wake: asyncio.Event | None = None
) -> None:
    """Wait ``seconds``, or less if the daemon stops or ``wake`` is set."""
    waiters = [asyncio.ensure_future(stopping.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=max(seconds, 0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiters:
            task.cancel()


async def periodic(
    work: Callable[[], Awaitable[object]],
    *,
    name: str,
    interval: float | Callable[[], float],
    stopping: asyncio.Event,
    states: StateLog,
    wake: asyncio.Event | None = None,
    drain: bool = False,
    first_delay: float = 0.0,
) -> None:
    """Run ``work`` every ``interval`` seconds (or when ``wake`` is set) until
    the daemon stops; ``drain``: repeat it at once while it returns something
    truthy (a pass that hit its batch limit). ``interval`` may be a callable,
    read after each pass (a back-off the work itself sets)."""
    if first_delay:
        await sleep_unless_stopped(stopping, first_delay)
    while not stopping.is_set():
        if wake is not None:
            wake.clear()  # before the work, so a wake-up during it is not lost
        try:
            while await work() and drain and not stopping.is_set():
                pass
            states.set(name, "ok", "debug")
        except Exception as exc:  # keep going: one bad row must not stop the service
            states.set(name, "failing", "warning", cause=type(exc).__name__, error=repr(exc))
        await sleep_unless_stopped(stopping, interval() if callable(interval) else interval, wake)


async def settle(msg: Msg, outcome: Outcome, nak_delay: float = NAK_DELAY) -> None:
    """Ack, term or nak one message; a lost connection only means a redelivery."""
    with contextlib.suppress(Exception):
        if outcome == "term":
            await msg.term()
        elif outcome == "nak":
            await msg.nak(delay=nak_delay)
        else:
            await msg.ack()


async def consume(
    feed: PullFeed,
    handle: Callable[[list[Msg]], Awaitable[list[Outcome]]],
    *,
    name: str,
    stopping: asyncio.Event,
    states: StateLog,
    concurrency: int = 1,
    nak_delay: float = NAK_DELAY,
) -> None:
    """Read one durable consumer until the daemon stops: fetch a batch, let
    ``handle`` decide each message's outcome (after its work has committed),
    then settle them. ``handle`` raising keeps the batch for a redelivery.

    With ``concurrency`` above one, up to that many batches are handled at
    once (the runner's agent processes); the loop waits for them to finish
    when the daemon stops, within the daemon's grace period.
    """
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    async def one(msgs: list[Msg]) -> None:
        try:
            outcomes = await handle(msgs)
        except Exception as exc:  # a bug, Postgres away: keep the messages
            log.error("consumer.batch_failed", consumer=name, error=repr(exc), size=len(msgs))
            states.set(name, "failing", "warning", error=repr(exc))
            outcomes = ["nak"] * len(msgs)
        for msg, outcome in zip(msgs, outcomes, strict=True):
            await settle(msg, outcome, nak_delay)

    try:
        while not stopping.is_set():
            await slots.acquire()
            msgs = await feed.next_batch(timeout=1)
            feed.report(states, name)
            if not msgs:
                slots.release()
                continue
            states.set(name, "consuming", "debug")
            if concurrency == 1:
                try:
                    await one(msgs)
                finally:
                    slots.release()
                continue
            task = asyncio.ensure_future(one(msgs))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _t: slots.release())
        if running:  # let in-flight work finish within the grace period
            await asyncio.gather(*running, return_exceptions=True)
    finally:
        for task in running:
            task.cancel()
        await feed.stop()
