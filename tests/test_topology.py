"""JetStream topology reconcile against a real nats-server."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from orchestrator.core import registry
from orchestrator.embedded import NatsServer
from orchestrator.runtime.topology import Reconciler, TopologyError

PIPELINE = registry.load()


async def _stream_subjects(nc: NATS) -> dict[str, list[str]]:
    js = nc.jetstream()
    return {s.config.name: sorted(s.config.subjects) for s in await js.streams_info()}


async def test_creates_every_stream_and_consumer(nc: NATS) -> None:
    outcome = await Reconciler(nc, PIPELINE).reconcile()
    assert set(outcome.values()) == {"created"}
    live = await _stream_subjects(nc)
    for spec in PIPELINE.streams:
        assert live[spec.name] == sorted(spec.subjects)
    js = nc.jetstream()
    for consumer in PIPELINE.consumers:
        for stream in consumer.streams:
            info = await js.consumer_info(stream, consumer.name)
            assert info.config.durable_name == consumer.name
    # A publish on a deliverable subject is stored, not a timeout or a 503.
    ack = await js.publish("agog.deliverables.berry.devops.REQ-1", b"{}")
    assert ack.stream == "agog_features_devops"


async def test_reconcile_is_idempotent(nc: NATS) -> None:
    await Reconciler(nc, PIPELINE).reconcile()
    assert set((await Reconciler(nc, PIPELINE).reconcile()).values()) == {"unchanged"}


async def test_drifted_stream_is_updated(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="agog_features_qa",
            subjects=["agog.deliverables.billy.qa.*"],
            max_age=3600,
            max_msgs=50,
        )
    )
    await js.publish("agog.deliverables.billy.qa.REQ-1", b'{"status":"COMPLETE"}')
    outcome = await Reconciler(nc, PIPELINE).reconcile()
    assert outcome["agog_features_qa"] == "updated"
    info = await js.stream_info("agog_features_qa")
    assert info.config.subjects == ["agog.deliverables.billy.>"]
    assert info.config.max_msgs == 10000 and info.config.max_age == 7 * 86400
    assert info.state.messages == 1  # nothing deleted


async def test_refused_change_fails_loudly_and_keeps_data(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="agog_features_qa",
            subjects=["agog.deliverables.billy.>"],
            storage=StorageType.MEMORY,
        )
    )
    await js.publish("agog.deliverables.billy.qa.REQ-1", b"{}")
    with pytest.raises(TopologyError) as info:
        await Reconciler(nc, PIPELINE).reconcile()
    message = str(info.value)
    assert "agog_features_qa" in message and "storage" in message and "refused" in message
    assert (await js.stream_info("agog_features_qa")).state.messages == 1


async def test_update_that_would_drop_messages_is_refused(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="agog_strategic_decisions", subjects=["agog.strategic.decisions.>"], max_msgs=-1
        )
    )
    tight = registry.from_mapping(
        {
            **_raw(),
            "streams": [
                {**s, "max_msgs": 2} if s["name"] == "agog_strategic_decisions" else s
                for s in _raw()["streams"]
            ],
        }
    )
    for i in range(3):
        await js.publish(f"agog.strategic.decisions.REQ-{i}", b"{}")
    with pytest.raises(TopologyError, match="would drop stored messages"):
        await Reconciler(nc, tight).reconcile()
    assert (await js.stream_info("agog_strategic_decisions")).state.messages == 3
    await Reconciler(nc, tight, allow_data_loss=True).reconcile()
    assert (await js.stream_info("agog_strategic_decisions")).config.max_msgs == 2


def _raw() -> dict:
    import tomllib

    return tomllib.loads(registry.DEFAULT_PIPELINE_FILE.read_text())


async def test_foreign_stream_on_our_subjects_fails_loudly(nc: NATS) -> None:
    await nc.jetstream().add_stream(
        StreamConfig(name="someone_else", subjects=["agog.deliverables.roy.backend.*"])
    )
    with pytest.raises(TopologyError, match="agog_features_backend"):
        await Reconciler(nc, PIPELINE).reconcile()


async def test_drifted_consumer_is_updated(nc: NATS) -> None:
    await Reconciler(nc, PIPELINE).reconcile()
    changed = registry.from_mapping(
        {
            **_raw(),
            "consumer_defaults": {"ack_wait": "45s", "max_deliver": 7, "max_ack_pending": 100},
        }
    )
    await Reconciler(nc, changed).reconcile()
    info = await nc.jetstream().consumer_info("agog_requirements", "agogd_intake")
    assert (info.config.ack_wait, info.config.max_deliver, info.config.max_ack_pending) == (
        45,
        7,
        100,
    )


async def test_new_durable_does_not_replay_old_history(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name="agog_requirements", subjects=["agog.requirements.>"], max_age=30 * 86400)
    )
    await js.publish("agog.requirements.new", b'{"req_number": "REQ-OLD"}')
    await asyncio.sleep(1.2)  # start times have whole-second resolution
    await Reconciler(nc, PIPELINE, consumer_backfill=0).reconcile()
    await js.publish("agog.requirements.new", b'{"req_number": "REQ-NEW"}')
    sub = await js.pull_subscribe_bind("agogd_intake", "agog_requirements")
    msgs = await sub.fetch(10, timeout=1)
    assert [json.loads(m.data)["req_number"] for m in msgs] == ["REQ-NEW"]


async def test_replicas_reconciling_at_once(nats_server: NatsServer) -> None:
    clients = [await nats.connect(nats_server.url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(Reconciler(c, PIPELINE).reconcile() for c in clients))
        for name in (s.name for s in PIPELINE.streams):
            assert {r[name] for r in results} <= {"created", "unchanged"}
        assert len(await _stream_subjects(clients[0])) == len(PIPELINE.streams)
    finally:
        for c in clients:
            await c.close()


async def test_the_runners_consumer_delivers_every_assignment_and_follows_the_registry(
    nc: NATS,
) -> None:
    await Reconciler(nc, PIPELINE).reconcile()
    js = nc.jetstream()
    agent = PIPELINE.stages[0].agent
    spec = replace(PIPELINE.runner_consumer(agent), max_ack_pending=16)
    (stream,) = spec.streams
    old = PIPELINE.subject("assignment", agent=agent, req="REQ-OLD")
    await js.publish(old, b"{}")
    await asyncio.sleep(1.2)  # older than a backfill window of 0
    reconciler = Reconciler(nc, PIPELINE, consumer_backfill=0)
    assert await reconciler.reconcile_consumer(stream, spec) == "created"
    cfg = (await js.consumer_info(stream, spec.name)).config
    assert cfg.deliver_policy == DeliverPolicy.ALL and cfg.durable_name == spec.name
    assert (cfg.filter_subject, cfg.ack_wait, cfg.max_deliver, cfg.max_ack_pending) == (
        spec.filter_subject,
        60,
        -1,
        16,
    )
    sub = await js.pull_subscribe_bind(spec.name, stream)
    (msg,) = await sub.fetch(1, timeout=2)  # stored before the consumer was made
    assert msg.subject == old
    await msg.ack()
    assert await reconciler.reconcile_consumer(stream, spec) == "unchanged"
    # More processes per agent: the same durable is updated, its position kept.
    wider = replace(spec, max_ack_pending=40)
    assert await reconciler.reconcile_consumer(stream, wider) == "updated"
    info = await js.consumer_info(stream, spec.name)
    assert info.config.max_ack_pending == 40 and info.config.deliver_policy == DeliverPolicy.ALL
    assert info.delivered.stream_seq == msg.metadata.sequence.stream


async def test_a_runner_consumer_made_before_the_registry_named_it_is_kept(nc: NATS) -> None:
    """Deployments have consumers the runner made by hand; they are neither
    recreated nor changed when the registry says the same."""
    await Reconciler(nc, PIPELINE).reconcile()
    js = nc.jetstream()
    agent = PIPELINE.stages[-1].agent
    spec = replace(PIPELINE.runner_consumer(agent), max_ack_pending=16)
    (stream,) = spec.streams
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=f"agogd_runner_{agent}",
            filter_subject=f"agog.orchestration.events.stage.started.{agent}.>",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=60.0,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=16,
            description=f"agogd runner: {agent}'s stage assignments",
        ),
    )
    assert await Reconciler(nc, PIPELINE).reconcile_consumer(stream, spec) == "unchanged"
    # The whole reconcile leaves it alone: it is the runner's, not the engine's.
    await Reconciler(nc, PIPELINE).reconcile()
    assert (await js.consumer_info(stream, spec.name)).config.max_ack_pending == 16
