"""PullFeed on a real nats-server: flow, bounded batches, expiry, restarts."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from orchestrator.embedded import NatsServer
from orchestrator.runtime.pull import PullFeed


async def _setup(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="feed", subjects=["feed.>"]))
    await js.add_consumer(
        "feed", ConsumerConfig(durable_name="worker", ack_policy=AckPolicy.EXPLICIT)
    )


async def _collect(feed: PullFeed, count: int, timeout: float = 20) -> list[Msg]:
    got: list[Msg] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            for msg in await feed.next_batch(timeout=1):
                # Acked synchronously: a fire-and-forget ack can die with a
                # server killed right after, and the message comes back.
                await msg.ack_sync()
                got.append(msg)
    return got


async def _publish_when_back(nc: NATS, subject: str, data: bytes) -> None:
    """Publish once the client has reconnected and JetStream answers again."""
    last: Exception | None = None
    for _ in range(40):
        try:
            await nc.jetstream().publish(subject, data, timeout=1)
            return
        except (nats.errors.Error, TimeoutError) as exc:
            last = exc
            await asyncio.sleep(0.25)
    raise AssertionError(f"JetStream did not come back after the restart: {last!r}")


async def test_messages_flow_in_order_in_bounded_batches(nc: NATS) -> None:
    await _setup(nc)
    js = nc.jetstream()
    for i in range(25):
        await js.publish(f"feed.{i}", str(i).encode())
    feed = await PullFeed(nc, "feed", "worker", batch=10).start()
    try:
        batches = []
        seen: list[int] = []
        while len(seen) < 25:
            batch = await feed.next_batch(timeout=5)
            assert batch, "the feed returned nothing although messages were stored"
            batches.append(len(batch))
            for msg in batch:
                seen.append(int(msg.data))
                await msg.ack()
        assert seen == list(range(25))
        assert max(batches) <= 10
    finally:
        await feed.stop()


async def test_a_lone_message_after_idle_comes_without_a_full_batch(nc: NATS) -> None:
    await _setup(nc)
    feed = await PullFeed(nc, "feed", "worker", batch=64, expires=0.6, heartbeat=0.2).start()
    try:
        assert await feed.next_batch(timeout=1.5) == []  # idle past several expiries
        await nc.jetstream().publish("feed.late", b"late")
        batch = await feed.next_batch(timeout=10)
        assert [m.data for m in batch] == [b"late"]
        assert not feed.stale
    finally:
        await feed.stop()


async def test_recovers_after_a_server_restart(nats_server: NatsServer, nc: NATS) -> None:
    await _setup(nc)
    feed = await PullFeed(nc, "feed", "worker", batch=8, heartbeat=0.2).start()
    try:
        await nc.jetstream().publish("feed.a", b"before")
        assert [m.data for m in await _collect(feed, 1)] == [b"before"]
        # The open pull request dies with the server; the feed must notice
        # (no heartbeat) and ask again once the client has reconnected.
        nats_server.kill()
        nats_server.restart()
        await _publish_when_back(nc, "feed.b", b"after")
        assert [m.data for m in await _collect(feed, 1)] == [b"after"]
    finally:
        await feed.stop()


async def test_a_deleted_consumer_is_reported_and_resumed_once_recreated(nc: NATS) -> None:
    await _setup(nc)
    js = nc.jetstream()
    feed = await PullFeed(nc, "feed", "worker", batch=8, heartbeat=0.2, retry_delay=0.2).start()
    try:
        assert await feed.next_batch(timeout=0.3) == []
        await js.delete_consumer("feed", "worker")
        async with asyncio.timeout(10):
            while feed.last_status is None and not feed.stale:
                await feed.next_batch(timeout=0.3)
        await js.add_consumer(
            "feed", ConsumerConfig(durable_name="worker", ack_policy=AckPolicy.EXPLICIT)
        )
        await js.publish("feed.c", b"again")
        assert [m.data for m in await _collect(feed, 1)] == [b"again"]
    finally:
        await feed.stop()
