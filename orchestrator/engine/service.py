"""The engine, assembled from a runtime: its consumers, the outbox relay, the
dispatcher, the deadlines and the OWNER_REQUESTS.md sync, as named services.

The composition root (``orchestrator.wiring``) calls ``build`` once the
connections are up; everything the parts need is handed to them here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from orchestrator.engine.handlers import Handlers
from orchestrator.engine.outbox import OutboxRelay, Publisher
from orchestrator.engine.owner_sync import OwnerRequestsSync
from orchestrator.engine.pruning import Pruner
from orchestrator.engine.scheduler import Scheduler
from orchestrator.engine.transactions import AfterCommitted, BatchApplier, Handler
from orchestrator.engine.transition import Transitions
from orchestrator.engine.unacked import UnackedSweep
from orchestrator.inbound.owner_requests import OwnerRequestsFile
from orchestrator.runtime.context import Runtime
from orchestrator.runtime.pull import PullFeed
from orchestrator.runtime.services import Outcome, Service, consume, periodic

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from orchestrator.memory.service import Memory


@dataclass(frozen=True)
class Engine:
    """The built engine: what the API and the lifecycle need of it."""

    services: dict[str, Service]
    # The registry's consumers this engine reads (the rest are other services').
    consumers: tuple[str, ...]
    wake_dispatcher: asyncio.Event
    applier: BatchApplier
    scheduler: Scheduler

    def wake(self) -> None:
        """A REQ may be admitted now (a new intake, a slot freed elsewhere)."""
        self.wake_dispatcher.set()


def build(rt: Runtime, memory: Memory | None) -> Engine:
    settings, pipeline = rt.settings, rt.pipeline
    wake = asyncio.Event()
    publisher = Publisher(rt.pool, rt.nc.jetstream())
    after = AfterCommitted(
        publisher=publisher,
        wake_dispatcher=wake,
        local_channels=memory.local_channels if memory is not None else frozenset(),
        wake_local=memory.wake if memory is not None else None,
    )
    transitions = Transitions(pipeline, memory)
    applier = BatchApplier(
        pool=rt.pool,
        pipeline=pipeline,
        after=after,
        stopping=rt.stopping,
        # Tries a quarter of the shortest ack wait apart at most, so the
        # in-progress sent with each keeps the messages ours.
        backoff_max=min(settings.backoff_max, *(c.ack_wait / 4 for c in pipeline.consumers)),
    )
    handlers = Handlers(
        settings=settings, pipeline=pipeline, transitions=transitions, memory=memory
    )
    scheduler = Scheduler(
        pool=rt.pool,
        settings=settings,
        pipeline=pipeline,
        transitions=transitions,
        after=after,
    )
    sweep = UnackedSweep(
        nc=rt.nc, js=rt.nc.jetstream(), applier=applier, batch=settings.consumer_batch
    )
    services: dict[str, Service] = {}
    table = handlers.table()
    read = []
    for spec in pipeline.consumers:
        handler = table.get(spec.name)
        if handler is None:
            continue  # another service's (the wiring refuses a consumer nobody reads)
        read.append(spec.name)
        for stream in spec.streams:
            unacked = partial(sweep.run, stream, handler, spec.filter_subject)
            services[f"consume:{stream}:{spec.name}"] = _consumer(
                rt, applier, stream, handler, unacked
            )
    relay = OutboxRelay(
        publisher,
        dsn=settings.dsn(),
        poll_interval=settings.outbox_poll_interval,
        stopping=rt.stopping,
        states=rt.states,
    )
    services["outbox-relay"] = relay.run
    if settings.owner_requests_file is not None:
        sync = OwnerRequestsSync(
            OwnerRequestsFile(settings.owner_requests_file),
            pool=rt.pool,
            states=rt.states,
            memory=memory,
            wake_dispatcher=wake.set,
        )
        services["owner-requests"] = lambda: sync.run(
            interval=settings.owner_requests_interval, stopping=rt.stopping
        )
    services["dispatcher"] = lambda: periodic(
        scheduler.dispatch_pending,
        name="dispatcher",
        interval=settings.dispatch_interval,
        stopping=rt.stopping,
        states=rt.states,
        wake=wake,
        drain=True,
    )
    services["deadlines"] = lambda: periodic(
        scheduler.expire_deadlines,
        name="deadlines",
        interval=settings.timeout_scan_interval,
        stopping=rt.stopping,
        states=rt.states,
        drain=True,
    )
    pruner = Pruner(pool=rt.pool, pipeline=rt.pipeline)
    services["pruning"] = lambda: periodic(
        pruner.pass_,
        name="pruning",
        interval=settings.prune_interval,
        stopping=rt.stopping,
        states=rt.states,
        drain=True,
    )
    return Engine(
        services=services,
        consumers=tuple(read),
        wake_dispatcher=wake,
        applier=applier,
        scheduler=scheduler,
    )


def _consumer(
    rt: Runtime,
    applier: BatchApplier,
    stream: str,
    handler: Handler,
    sweep: Callable[[], Awaitable[int]],
) -> Service:
    """One durable consumer on one stream: each batch is acked (or term'd) only
    after its transaction has committed. ``sweep`` first applies what a killed
    predecessor was handed and never acked."""

    async def run() -> None:
        feed = PullFeed(rt.nc, stream, handler.consumer, rt.settings.consumer_batch)

        async def handle(msgs: list[Msg]) -> list[Outcome]:
            # While a batch waits for Postgres, what the feed holds waits too.
            return await applier.handle_batch(msgs, handler, waiting=feed.keep_alive)

        # Before the first pull, so that what it reads is only what earlier
        # processes were handed (and a live replica's batches), not this feed's.
        await sweep()
        await consume(
            await feed.start(),
            handle,
            name=f"consumer.{stream}",
            stopping=rt.stopping,
            states=rt.states,
        )

    return run
