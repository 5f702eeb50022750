"""NatsCluster: three real nats-servers with clustered JetStream (R3 streams)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StreamConfig
from nats.js.errors import NoStreamResponseError

from orchestrator.embedded.nats_cluster import NatsCluster


async def test_r3_stream_survives_a_sigkilled_node_and_the_node_catches_up(
    tmp_path: Path,
) -> None:
    cluster = NatsCluster(tmp_path / "nats", size=3).start()
    try:
        assert len(set(cluster.urls)) == 3 and cluster.url == ",".join(cluster.urls)
        assert cluster.meta_leader() in {cluster.node_name(i) for i in range(3)}
        nc = await nats.connect(servers=cluster.urls, reconnect_time_wait=0.2)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="t", subjects=["t.>"], num_replicas=3))
        # An R3 stream answers once its replicas have elected a leader, which a
        # loaded machine may take a moment to do after add_stream returns: retry
        # (safe, the Nats-Msg-Id deduplicates).
        for i in range(10):
            for _ in range(100):
                try:
                    await js.publish("t.x", b"x", timeout=2, headers={"Nats-Msg-Id": f"m{i % 5}"})
                    break
                except (NoStreamResponseError, NatsTimeoutError):
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the R3 stream never answered a publish")
        cluster.kill(0)
        assert not cluster.running(0)
        for _ in range(50):  # a quorum of two keeps the stream writable
            try:
                ack = await js.publish("t.y", b"y", timeout=2, headers={"Nats-Msg-Id": "y"})
                break
            except Exception:
                await asyncio.sleep(0.2)
        assert not ack.duplicate
        cluster.restart(0)
        node0 = await nats.connect(cluster.urls[0])
        try:
            for _ in range(100):
                info = await node0.jetstream().stream_info("t")
                if info.state.messages == 6 and all(p.current for p in info.cluster.replicas):
                    break
                await asyncio.sleep(0.1)
            assert info.state.messages == 6  # 5 deduplicated + 1, on every replica
            assert info.config.num_replicas == 3
        finally:
            await node0.close()
        await nc.close()
    finally:
        cluster.stop()
