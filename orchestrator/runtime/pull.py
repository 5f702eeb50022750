"""A continuous pull from one durable JetStream consumer.

nats-py's ``fetch`` sends a pull request per call and, after a request ends,
can mistake a late status reply for the next request's and then wait out the
whole timeout for a full batch: a lone notice sat for up to a second. A
``PullFeed`` instead keeps one pull request open at all times, each on a
reply subject of its own (so a status is matched to its request), and hands
out whatever has arrived. Messages arrive while the previous batch commits.

Flow is bounded: a new request is only sent while fewer than ``batch``
messages wait here, so unacked messages never pile up past two batches.
Idle heartbeats tell a live request from one lost to a server restart; a
lost request is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.state_log import StateLog

log = get_logger(__name__)

API_PREFIX = "$JS.API"
# A request that ends with one of these without delivering anything is not
# retried at once (the consumer is gone, or the server is busy).
_SLOW_STATUSES = {"409", "503"}


class PullFeed:
    """Messages of one durable pull consumer, as they are stored."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        batch: int,
        *,
        expires: float = 20.0,
        heartbeat: float = 2.0,
        retry_delay: float = 1.0,
    ) -> None:
        self._nc = nc
        self.stream, self.durable = stream, durable
        self._next_subject = f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._batch = batch
        self._expires, self._heartbeat, self._retry_delay = expires, heartbeat, retry_delay
        self._prefix = nc.new_inbox()
        self._sub: Subscription | None = None
        self._queue: deque[Msg] = deque()
        self._arrived = asyncio.Event()
        self._seq = 0
        self._current: str | None = None  # reply subject of the open request
        self._remaining = 0  # messages the open request may still bring
        self._heard = 0.0  # when the server last spoke to the open request
        self._not_before = 0.0  # no new request before this (after a refusal)
        self.last_status: str | None = None  # why the last request ended early

    async def start(self) -> PullFeed:
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_msg)
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    @property
    def stale(self) -> bool:
        """True when the open request has gone silent (no message, no heartbeat)."""
        return (
            self._current is not None and time.monotonic() - self._heard > 2 * self._heartbeat + 0.5
        )

    def report(self, states: StateLog, name: str) -> None:
        """Put a lost pull request (a server restart) or a status (the consumer
        is gone with a wiped server) in the daemon's state log. The feed
        re-requests by itself; the topology reconcile recreates a consumer."""
        if self.stale or self.last_status:
            states.set(name, "waiting", "warning", cause=self.last_status or "no heartbeat")
            self.last_status = None

    async def keep_alive(self) -> None:
        """Tell JetStream the messages waiting here are still being worked on
        (in progress), so none comes back or spends a delivery meanwhile."""
        for msg in list(self._queue):
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def next_batch(self, timeout: float) -> list[Msg]:
        """Up to ``batch`` arrived messages, waiting up to ``timeout`` for the first."""
        deadline = time.monotonic() + timeout
        while True:
            await self._keep_requesting()
            if self._queue:
                return [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            self._arrived.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, self._heartbeat)):
                    await self._arrived.wait()

    async def _keep_requesting(self) -> None:
        if len(self._queue) >= self._batch or time.monotonic() < self._not_before:
            return
        if self._current is not None and not self.stale:
            return
        if self._current is not None:
            log.warning("pull.request_lost", stream=self.stream, consumer=self.durable)
        self._seq += 1
        reply = f"{self._prefix}.{self._seq}"
        body = {
            "batch": self._batch,
            "expires": int(self._expires * 1e9),
            "idle_heartbeat": int(self._heartbeat * 1e9),
        }
        self._current, self._remaining, self._heard = reply, self._batch, time.monotonic()
        try:
            await self._nc.publish(self._next_subject, json.dumps(body).encode(), reply=reply)
        except (NatsError, OSError) as exc:  # closed or draining: try again later
            self._current = None
            self._not_before = time.monotonic() + self._retry_delay
            self.last_status = f"publish failed: {exc!r}"

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:  # a message of the stream
            self._queue.append(msg)
            self._arrived.set()
            self._heard = time.monotonic()
            self._remaining -= 1
            if self._remaining <= 0:
                self._current = None  # used up: the next call sends a new one
            return
        if msg.subject != self._current:
            return  # about an earlier request, already replaced
        self._heard = time.monotonic()
        if status == "100":
            return  # idle heartbeat: the request is alive
        # 404/408: expired or nothing left; 409/503: refused (consumer deleted,
        # too many waiting requests...). Either way this request is over.
        self._current = None
        if status in _SLOW_STATUSES:
            self.last_status = f"{status} {msg.headers.get('Description', '')}".strip()
            self._not_before = time.monotonic() + self._retry_delay
            self._arrived.set()  # let next_batch notice
