"""The chaos soak's scripted agents, some of which misbehave on a seeded schedule.

They take stage assignments from a JetStream durable pull consumer
(``chaos_agents`` on ``agog.orchestration.events.stage.started.>``), not a
core subscription: an outbox row published again after a crash is dropped by
JetStream's ``Nats-Msg-Id`` deduplication, which core subscribers do not get.
Each answer is a notice in the seeds' shape (``tests.agents.notice``) that
names its attempt, published with ``Nats-Msg-Id: notice:<REQ>:<stage>:<attempt>``
and retried until JetStream acks it. Sylvia approves, Billy approves and
Berry reports ``deployed_at`` with a commit derived from the REQ.

Misbehaviour, decided per (REQ, stage) from the seed, on the first attempt:

* ``hang``: take the assignment and never answer: the stage times out and is
  retried;
* ``crash_nak``: answer nothing and nak (the assignment comes back);
* ``crash_term``: answer nothing and term (it never comes back: timeout);
* duplicates of an answer: the same payload again with the same
  ``Nats-Msg-Id`` (JetStream drops it), without one (a second stream
  message), or without one a moment later (after the stage moved on).

Every delivery is recorded per (REQ, stage, attempt): its stream sequence
and ``num_delivered``, so that an assignment started twice shows up as a key
with two stream messages or two first deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError

from orchestrator.core import registry
from orchestrator.embedded.seed_notices import notice
from orchestrator.runtime.pull import PullFeed

PIPELINE = registry.load()
STREAM = "agog_orchestration_events"
ASSIGNMENTS = "agog.orchestration.events.stage.started.>"
CONSUMER = "chaos_agents"

Key = tuple[str, int, int]  # (REQ, stage index, attempt)


def commit_for(req: str) -> str:
    """The commit Berry reports for a REQ (so the checks know what to expect)."""
    return hashlib.sha1(req.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Plan:
    """Seeded misbehaviour rates (each a probability per REQ and stage)."""

    seed: int
    hang: float = 0.02
    crash_nak: float = 0.02
    crash_term: float = 0.01
    dup_same_id: float = 0.03
    dup_no_id: float = 0.03
    dup_late: float = 0.02

    def behaviour(self, req: str, stage: int, attempt: int) -> str:
        """answer, hang, crash_nak or crash_term; retries always answer, so that a
        stage never misbehaves twice because of the agents alone."""
        if attempt > 1:
            return "answer"
        roll = random.Random(f"{self.seed}:{req}:{stage}:behaviour").random()
        for name, p in (
            ("hang", self.hang),
            ("crash_nak", self.crash_nak),
            ("crash_term", self.crash_term),
        ):
            if roll < p:
                return name
            roll -= p
        return "answer"

    def duplicates(self, req: str, stage: int, attempt: int) -> str | None:
        roll = random.Random(f"{self.seed}:{req}:{stage}:{attempt}:dup").random()
        for name, p in (
            ("same_id", self.dup_same_id),
            ("no_id", self.dup_no_id),
            ("late", self.dup_late),
        ):
            if roll < p:
                return name
            roll -= p
        return None


@dataclass
class Record:
    """What the agents saw and did, for the checks and the report."""

    seqs: dict[Key, set[int]] = field(default_factory=lambda: defaultdict(set))
    first_deliveries: Counter[Key] = field(default_factory=Counter)
    arrived: dict[Key, float] = field(default_factory=dict)  # first arrival (monotonic)
    published: dict[Key, float] = field(default_factory=dict)  # notice acked by JetStream
    behaviour: dict[Key, str] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)


class Agents:
    """All stage agents in one process, on one durable pull consumer."""

    def __init__(self, nc: NATS, plan: Plan, think: tuple[float, float] = (0.05, 0.5)) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.plan, self.think = plan, think
        self.rng = random.Random(plan.seed)
        self.record = Record()
        self._handled: set[Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.feed: PullFeed | None = None

    async def start(self) -> Agents:
        config = ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=ASSIGNMENTS,
            ack_wait=30,
            max_deliver=-1,
            max_ack_pending=-1,
        )
        for attempt in range(20):
            try:
                await self.js.add_consumer(STREAM, config)
                break
            except (nats.errors.Error, BadRequestError, TimeoutError):
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)
        self.feed = await PullFeed(self.nc, STREAM, CONSUMER, 128).start()
        self._loop = asyncio.create_task(self._consume())
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._loop is not None:
            await self._loop
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.feed is not None:
            await self.feed.stop()

    async def _consume(self) -> None:
        assert self.feed is not None
        while not self._stopping.is_set():
            try:
                msgs = await self.feed.next_batch(timeout=0.5)
            except Exception:  # a reconnect; the feed re-requests
                self.record.stats["feed_errors"] += 1
                await asyncio.sleep(0.2)
                continue
            for msg in msgs:
                task = asyncio.create_task(self._on_assignment(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _on_assignment(self, msg: Msg) -> None:
        rec = self.record
        meta = msg.metadata
        try:
            body = json.loads(msg.data)
            key: Key = (body["req_number"], int(body["stageIndex"]), int(body["attempt"]))
        except (ValueError, KeyError, TypeError):
            rec.stats["unreadable_assignments"] += 1
            await _quietly(msg.term())
            return
        rec.seqs[key].add(meta.sequence.stream)
        rec.stats["deliveries"] += 1
        if meta.num_delivered == 1:
            rec.first_deliveries[key] += 1
        else:
            rec.stats["redeliveries"] += 1
        rec.arrived.setdefault(key, time.monotonic())
        if key in self._handled:  # a redelivery of what was already dealt with
            await _quietly(msg.ack())
            return
        req, stage, attempt = key
        behaviour = self.plan.behaviour(req, stage, attempt)
        if behaviour == "crash_nak" and meta.num_delivered > 1:
            behaviour = "answer"  # the agent came back up
        rec.behaviour[key] = behaviour
        if behaviour == "crash_nak":
            rec.stats["crashed_nak"] += 1
            await _quietly(msg.nak(delay=0.5))
            return
        self._handled.add(key)
        if behaviour == "crash_term":
            rec.stats["crashed_term"] += 1
            await _quietly(msg.term())
            return
        if behaviour == "hang":
            rec.stats["hung"] += 1
            await _quietly(msg.ack())
            return
        await asyncio.sleep(self.rng.uniform(*self.think))
        await self._answer(body, key)
        await _quietly(msg.ack())

    async def _answer(self, assignment: dict[str, Any], key: Key) -> None:
        req, stage, attempt = key
        agent = assignment["agent"]
        extra: dict[str, Any] = {"attempt": attempt}
        if agent == "berry":
            extra.update(
                commit_sha=commit_for(req),
                deployed_at=datetime.now(UTC).isoformat(timespec="seconds"),
                deployed_by="berry",
            )
        data = json.dumps(notice(PIPELINE, agent, req, **extra)).encode()
        subject = assignment["deliverableSubject"]
        msg_id = f"notice:{req}:{stage}:{attempt}"
        await self._publish(subject, data, msg_id)
        self.record.published[key] = time.monotonic()
        self.record.stats["answered"] += 1
        dup = self.plan.duplicates(req, stage, attempt)
        if dup == "same_id":
            ack = await self._publish(subject, data, msg_id)
            self.record.stats["dup_same_id"] += 1
            if ack is not None and ack.duplicate:
                self.record.stats["dup_same_id_dropped_by_jetstream"] += 1
        elif dup == "no_id":
            await self._publish(subject, data, None)
            self.record.stats["dup_no_id"] += 1
        elif dup == "late":
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            await self._publish(subject, data, None)
            self.record.stats["dup_late"] += 1

    async def _publish(self, subject: str, data: bytes, msg_id: str | None) -> Any:
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        delay = 0.1
        while True:
            try:
                return await self.js.publish(subject, data, timeout=3, headers=headers)
            except (nats.errors.Error, TimeoutError, OSError):
                self.record.stats["publish_retries"] += 1
                if self._stopping.is_set():
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


async def _quietly(awaitable: Any) -> None:
    """Acks and naks are best effort: a lost ack only means a redelivery."""
    with contextlib.suppress(Exception):
        await awaitable
