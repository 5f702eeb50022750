"""Reconcile JetStream streams and durable consumers with the pipeline registry.

Idempotent and safe when several replicas start at once: creation races are
resolved by re-reading, and an existing stream with another config is updated
in place. JetStream's refusals, foreign streams on our subjects, and updates
that would drop stored messages fail loudly with what differs. Data is never
deleted silently.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError, ServiceUnavailableError

from orchestrator.core.registry import ConsumerSpec, Pipeline, StreamSpec
from orchestrator.runtime.logs import get_logger

log = get_logger(__name__)

STREAM_NAME_IN_USE = 10058
# JetStream busy rather than refusing: a request timed out (R3 streams being
# placed while replicas start together on a loaded cluster, a leader
# election), or it is not up yet. The whole pass is idempotent: try it again.
BUSY = (TimeoutError, NoRespondersError, ServiceUnavailableError)
BUSY_TRIES = 5
# The stream settings agogd owns (besides subjects); others are left as they are.
LIMIT_FIELDS = (
    "storage",
    "retention",
    "discard",
    "max_age",
    "max_msgs",
    "max_bytes",
    "max_msg_size",
    "duplicate_window",
    "num_replicas",
)


class TopologyError(RuntimeError):
    """The JetStream topology cannot be made to match the registry."""


@dataclass(frozen=True)
class Difference:
    field: str
    current: object
    desired: object

    def __str__(self) -> str:
        return f"{self.field}: {self.current!r} -> {self.desired!r}"


def desired_stream_config(spec: StreamSpec) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        storage=StorageType(spec.storage),
        retention=RetentionPolicy(spec.retention),
        discard=DiscardPolicy(spec.discard),
        max_age=spec.max_age,
        max_msgs=spec.max_msgs,
        max_bytes=spec.max_bytes,
        max_msg_size=spec.max_msg_size,
        duplicate_window=spec.duplicate_window,
        num_replicas=spec.num_replicas,
    )


def _norm(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if hasattr(value, "value"):
        return value.value  # enums
    return value


def stream_differences(current: StreamConfig, spec: StreamSpec) -> list[Difference]:
    """Fields of a live stream config that differ from the registry (pure)."""
    desired = desired_stream_config(spec)
    out: list[Difference] = []
    if sorted(current.subjects or []) != sorted(desired.subjects or []):
        out.append(Difference("subjects", sorted(current.subjects or []), sorted(desired.subjects)))
    for name in LIMIT_FIELDS:
        a, b = _norm(getattr(current, name)), _norm(getattr(desired, name))
        if isinstance(a, int | float) and isinstance(b, int | float):
            if abs(float(a) - float(b)) > 1e-3:
                out.append(Difference(name, a, b))
        elif a != b:
            out.append(Difference(name, a, b))
    return out


def parse_nats_time(text: str) -> datetime:
    """Parse JetStream's RFC 3339 time (nanoseconds, Z) into an aware datetime."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    return datetime.fromisoformat(text)


def _shrinks(limit_now: float, limit_new: float) -> bool:
    """Whether a new limit (-1 or 0 meaning unlimited) is tighter than the old."""
    unlimited_new = limit_new <= 0
    unlimited_now = limit_now <= 0
    return not unlimited_new and (unlimited_now or limit_new < limit_now)


class Reconciler:
    """Brings the server's streams and consumers in line with the registry."""

    def __init__(
        self,
        nc: NATS,
        pipeline: Pipeline,
        *,
        allow_data_loss: bool = False,
        consumer_backfill: float = 900.0,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.pipeline = pipeline
        self.allow_data_loss = allow_data_loss
        self.consumer_backfill = consumer_backfill

    async def reconcile(self) -> dict[str, str]:
        """Reconcile everything; returns what happened to each stream. A busy
        JetStream is given a few tries, then it is a TopologyError."""
        for attempt in range(1, BUSY_TRIES + 1):
            try:
                return await self._reconcile_once()
            except BUSY as exc:
                if attempt == BUSY_TRIES:
                    raise TopologyError(
                        f"JetStream did not answer the topology reconcile ({attempt} tries,"
                        f" last: {type(exc).__name__} {exc})"
                    ) from exc
                log.warning("topology.busy", attempt=attempt, error=repr(exc))
                await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    async def _reconcile_once(self) -> dict[str, str]:
        started = time.perf_counter()
        outcome = {spec.name: await self.reconcile_stream(spec) for spec in self.pipeline.streams}
        for consumer in self.pipeline.consumers:
            for stream in consumer.streams:
                await self.reconcile_consumer(stream, consumer)
        await self.verify_bindings()
        log.info(
            "topology.reconciled", streams=outcome, seconds=round(time.perf_counter() - started, 3)
        )
        return outcome

    # --- streams ---------------------------------------------------------
    async def reconcile_stream(self, spec: StreamSpec) -> str:
        for _ in range(5):
            try:
                info = await self.js.stream_info(spec.name)
            except NotFoundError:
                try:
                    await self.js.add_stream(desired_stream_config(spec))
                    log.info("topology.stream_created", stream=spec.name, subjects=spec.subjects)
                    return "created"
                except BadRequestError as exc:
                    if exc.err_code == STREAM_NAME_IN_USE:
                        continue  # another replica won the race; compare with its config
                    raise TopologyError(
                        f"JetStream refused to create stream {spec.name} "
                        f"(subjects {list(spec.subjects)}): {exc.description}"
                    ) from exc
            return await self._update_if_drifted(info, spec)
        raise TopologyError(f"stream {spec.name} kept changing while it was reconciled")

    async def _update_if_drifted(self, info: StreamInfo, spec: StreamSpec) -> str:
        diffs = stream_differences(info.config, spec)
        if not diffs:
            return "unchanged"
        described = "; ".join(str(d) for d in diffs)
        losses = await self._would_drop(info, spec)
        if losses and not self.allow_data_loss:
            raise TopologyError(
                f"stream {spec.name} differs ({described}) and the update would drop stored "
                f"messages ({'; '.join(losses)}); refusing. Set AGOG_TOPOLOGY_ALLOW_DATA_LOSS=true "
                "to accept, or change the pipeline limits"
            )
        desired = desired_stream_config(spec)
        updated = info.config.evolve(
            **{name: getattr(desired, name) for name in ("subjects", *LIMIT_FIELDS)}
        )
        try:
            await self.js.update_stream(updated)
        except APIError as exc:
            raise TopologyError(
                f"stream {spec.name} differs from the registry ({described}) and JetStream "
                f"refused the update: {exc.description}. Nothing was deleted; migrate the "
                "stream by hand (e.g. nats stream backup, then recreate)"
            ) from exc
        log.warning(
            "topology.stream_updated", stream=spec.name, changes=described, dropped=losses or None
        )
        return "updated"

    async def _would_drop(self, info: StreamInfo, spec: StreamSpec) -> list[str]:
        """Messages the new limits would discard from the stream as it is now."""
        state, cfg = info.state, info.config
        out = []
        if _shrinks(cfg.max_msgs or -1, spec.max_msgs) and state.messages > spec.max_msgs:
            out.append(f"{state.messages} messages > max_msgs {spec.max_msgs}")
        if _shrinks(cfg.max_bytes or -1, spec.max_bytes) and state.bytes > spec.max_bytes:
            out.append(f"{state.bytes} bytes > max_bytes {spec.max_bytes}")
        if _shrinks(cfg.max_age or 0, spec.max_age) and state.messages:
            first = await self._first_message_time(spec.name)
            if first and datetime.now(UTC) - first > timedelta(seconds=spec.max_age):
                out.append(f"messages since {first.isoformat()} are older than max_age")
        return out

    async def _first_message_time(self, stream: str) -> datetime | None:
        reply = await self.nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
        first = json.loads(reply.data).get("state", {}).get("first_ts")
        if not first or first.startswith("0001"):
            return None
        return parse_nats_time(first)

    # --- consumers -------------------------------------------------------
    def desired_consumer_config(self, consumer: ConsumerSpec) -> ConsumerConfig:
        deliver_policy, opt_start_time = self._start_of(consumer)
        return ConsumerConfig(
            name=consumer.name,
            durable_name=consumer.name,
            description=consumer.description,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=consumer.ack_wait,
            max_deliver=consumer.max_deliver,
            max_ack_pending=consumer.max_ack_pending,
            filter_subject=consumer.filter_subject,
            deliver_policy=deliver_policy,
            opt_start_time=opt_start_time,
        )

    def _start_of(self, consumer: ConsumerSpec) -> tuple[DeliverPolicy, str | None]:
        """Where a new durable starts. JetStream cannot change it later, so a
        live consumer's is never compared."""
        if consumer.deliver == "all":
            return DeliverPolicy.ALL, None
        # A new durable must not replay a week of history (the old daemon's
        # failure); it starts a bounded backfill window before now. Whole
        # seconds, so replicas starting together ask for the same config.
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=self.consumer_backfill)
        return DeliverPolicy.BY_START_TIME, start.strftime("%Y-%m-%dT%H:%M:%SZ")

    async def reconcile_consumer(self, stream: str, consumer: ConsumerSpec) -> str:
        for _ in range(5):
            try:
                info = await self.js.consumer_info(stream, consumer.name)
            except NotFoundError:
                try:
                    await self.js.add_consumer(stream, self.desired_consumer_config(consumer))
                except APIError:
                    continue  # another replica created it meanwhile; compare with its config
                log.info("topology.consumer_created", stream=stream, consumer=consumer.name)
                return "created"
            return await self._update_consumer_if_drifted(stream, consumer, info.config)
        raise TopologyError(f"consumer {consumer.name} on {stream} kept changing while reconciled")

    async def _update_consumer_if_drifted(
        self, stream: str, consumer: ConsumerSpec, cfg: ConsumerConfig
    ) -> str:
        wanted = {
            "ack_wait": consumer.ack_wait,
            "max_deliver": consumer.max_deliver,
            "max_ack_pending": consumer.max_ack_pending,
            "filter_subject": consumer.filter_subject,
        }
        diffs = [
            Difference(k, getattr(cfg, k), v)
            for k, v in wanted.items()
            if _norm(getattr(cfg, k)) != _norm(v)
            and not (k == "filter_subject" and not v and not cfg.filter_subject)
        ]
        if not diffs:
            return "unchanged"
        try:
            await self.js.add_consumer(stream, cfg.evolve(name=consumer.name, **wanted))
        except APIError as exc:
            raise TopologyError(
                f"consumer {consumer.name} on {stream} differs "
                f"({'; '.join(map(str, diffs))}) and JetStream refused the update: "
                f"{exc.description}"
            ) from exc
        log.warning(
            "topology.consumer_updated",
            stream=stream,
            consumer=consumer.name,
            changes="; ".join(map(str, diffs)),
        )
        return "updated"

    # --- verification ----------------------------------------------------
    async def verify_bindings(self) -> None:
        """Every subject agogd uses is bound by exactly one stream, the intended one."""
        problems = []
        for subject in self.pipeline.sample_subjects():
            reply = await self.nc.request(
                "$JS.API.STREAM.NAMES", json.dumps({"subject": subject}).encode(), timeout=5
            )
            names = json.loads(reply.data).get("streams") or []
            expected = self.pipeline.streams_binding(subject)
            if names != expected:
                problems.append(
                    f"{subject} is bound by {names or 'no stream'}, expected {expected}"
                )
        if problems:
            raise TopologyError("subject bindings are wrong: " + "; ".join(problems))
