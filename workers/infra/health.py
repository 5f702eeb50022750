"""Miki's health watch and self-healing, on any Docker-API engine.

Only containers of the configured compose projects (the
``com.docker.compose.project`` label) are looked at, never any others. The
engine's event stream gives immediate word of a death; a periodic reconcile
is the safety net, and probes health: from ``State.Health`` when the engine
runs the check itself, else by running the container's own HEALTHCHECK
command through exec (podman without systemd never runs it on a timer).
Restarts follow ``heal_policy``; past the budget, one escalation with the
exit code and the last log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiodocker
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from orchestrator.core.registry import Pipeline
from orchestrator.engine import store
from orchestrator.runtime.context import Runtime
from orchestrator.runtime.db import DB_ERRORS
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.metrics import CONTAINER_RESTARTS
from workers.adapters.engine_api import (
    CALL_TIMEOUT,
    ENGINE_ERRORS,
    PROJECT_LABEL,
    connect,
    last_lines,
    probe_health,
    refused,
    restart,
    vanished,
)
from workers.infra.heal_policy import ContainerRecord, HealPolicy, decide, on_probe
from workers.infra.heal_store import HealStore

log = get_logger("agogd.health")

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]  # (event name, details)
PUBLISH_ERRORS = (NatsError, OSError, TimeoutError)
REMOVED = ("destroy", "remove")  # Docker's word for a removed container, and podman's
PRUNE_EVERY = 60.0  # seconds between sweeps of quiet restart histories
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Failure:
    """A watched container found dead or unhealthy."""

    container_id: str
    name: str
    reason: str  # died, not running, unhealthy
    exit_code: int | None


class HealthWatcher:
    """Watches and heals the containers of some compose projects."""

    def __init__(
        self,
        docker_url: str,
        projects: list[str],
        policy: HealPolicy,
        emit: Emit,
        *,
        reconcile_interval: float = 10.0,
        probe_timeout: float = 10.0,
        store: HealStore | None = None,
        call_timeout: float = CALL_TIMEOUT,
    ) -> None:
        self.docker_url, self.projects, self.policy = docker_url, set(projects), policy
        self.emit = emit
        self.reconcile_interval, self.probe_timeout = reconcile_interval, probe_timeout
        # The restart history lives in Postgres (``store``); these records hold
        # the probe counts, and the history while Postgres cannot be reached.
        self.store = store
        self.call_timeout = call_timeout
        self.records: dict[str, ContainerRecord] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.connected = False

    def watched(self, labels: dict[str, str] | None) -> bool:
        return (labels or {}).get(PROJECT_LABEL) in self.projects

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping``: connect, follow events and reconcile; reconnect
        with backoff whenever the engine goes away."""
        delay = 1.0
        while not stopping.is_set():
            docker = connect(self.docker_url, self.call_timeout)
            try:
                await docker.version()
                if not self.connected:
                    log.info("health.engine_connected", url=self.docker_url)
                self.connected, delay = True, 1.0
                await self._follow(docker, stopping)
            except ENGINE_ERRORS as exc:
                if self.connected:
                    log.warning("health.engine_lost", error=repr(exc))
                self.connected = False
            finally:
                await docker.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stopping.wait()
            delay = min(delay * 2, 30.0)

    async def _follow(self, docker: aiodocker.Docker, stopping: asyncio.Event) -> None:
        events = docker.events.subscribe(filters={"type": ["container"]})
        reconciler = asyncio.ensure_future(self._reconcile_forever(docker))
        stopper = asyncio.ensure_future(stopping.wait())
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait(
                    {getter, stopper, reconciler}, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    if reconciler in done:
                        reconciler.result()  # the engine went away: raise it
                    return
                event = getter.result()
                if event is None:  # the stream ended: the engine went away
                    raise aiodocker.DockerError(503, {"message": "event stream ended"})
                await self._on_event(docker, event)
        finally:
            stopper.cancel()
            reconciler.cancel()
            with contextlib.suppress(Exception):
                await docker.events.stop()

    async def _on_event(self, docker: aiodocker.Docker, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        action = event.get("Action")
        if action not in ("die", *REMOVED) or not self.watched(actor.get("Attributes")):
            return
        attributes = actor.get("Attributes") or {}
        if action in REMOVED:
            await self._forget(actor.get("ID", ""), attributes.get("name", ""))
            return
        await self._failed(
            docker,
            actor.get("ID", ""),
            attributes.get("name", ""),
            "died",
            _int(attributes.get("exitCode")),
        )

    async def _reconcile_forever(self, docker: aiodocker.Docker) -> None:
        pruned = float("-inf")  # the first pass prunes
        while True:
            await self.reconcile(docker)
            if self.store is not None and time.monotonic() - pruned > PRUNE_EVERY:
                pruned = time.monotonic()
                await self._prune()
            await asyncio.sleep(self.reconcile_interval)

    async def _prune(self) -> None:
        """Drop histories nothing has touched for a window: they decide as a
        fresh record would, and their containers may be long gone (a destroy
        event missed while the engine was away)."""
        assert self.store is not None
        quiet = max(self.policy.window, self.policy.backoff_max)
        try:
            dropped = await self.store.prune(quiet)
        except DB_ERRORS as exc:
            log.warning("health.prune_failed", error=repr(exc))
            return
        if dropped:
            log.info("health.pruned", records=dropped, quiet_seconds=quiet)

    async def reconcile(self, docker: aiodocker.Docker) -> None:
        """Look at every watched container: dead ones and failed probes heal."""
        for summary in await docker.containers.list(all=True):
            if not self.watched(summary._container.get("Labels")):
                continue
            try:
                await self._reconcile_one(docker, summary)
            except aiodocker.DockerError as exc:
                if not vanished(exc):
                    raise
                log.debug("health.container_vanished", container_id=summary.id[:12])

    async def _reconcile_one(
        self, docker: aiodocker.Docker, summary: aiodocker.containers.DockerContainer
    ) -> None:
        info = await summary.show()
        name = info.get("Name", "").lstrip("/")
        state = info.get("State") or {}
        if state.get("Status") in ("exited", "dead"):
            await self._failed(docker, info["Id"], name, "not running", state.get("ExitCode"))
            return
        if state.get("Status") != "running":
            return
        healthy = await self._probe(docker, info)
        if healthy is None:
            return
        record = self.records.setdefault(info["Id"], ContainerRecord())
        if on_probe(self.policy, record, healthy):
            await self._failed(docker, info["Id"], name, "unhealthy", None)

    async def _probe(self, docker: aiodocker.Docker, info: dict[str, Any]) -> bool | None:
        return await probe_health(docker, info, self.probe_timeout)

    async def _failed(
        self,
        docker: aiodocker.Docker,
        container_id: str,
        name: str,
        reason: str,
        exit_code: int | None,
    ) -> None:
        failure = Failure(container_id, name, reason, exit_code)
        # The event and the reconcile may both see one death, and so may
        # another replica: one at a time (a lock here, the record's row lock in
        # Postgres), and a container that is running again by now needs nothing.
        try:
            async with self.locks.setdefault(container_id, asyncio.Lock()):
                await self._heal_recorded(docker, failure)
        except aiodocker.DockerError as exc:
            if vanished(exc):
                # Removed while we looked: nothing to heal, and no history kept.
                log.info("health.container_vanished", container=name, reason=reason)
                self._drop_local(container_id)
            elif refused(exc):
                # The attempt counts against the budget: a container that
                # cannot start is escalated like a crash loop.
                log.warning(
                    "health.heal_failed", container=name, reason=reason, error=str(exc)[:500]
                )
            else:
                raise

    async def _heal_recorded(self, docker: aiodocker.Docker, failure: Failure) -> None:
        """Heal under the shared history in Postgres, or under this process's
        own when Postgres cannot be reached."""
        container_id, name = failure.container_id, failure.name
        if self.store is not None:
            acted = False
            engine_error: BaseException | None = None
            try:
                async with self.store.locked(container_id, name) as record:
                    acted = True
                    try:
                        await self._heal(docker, failure, record)
                    except ENGINE_ERRORS as exc:
                        if vanished(exc):
                            raise  # roll back: a removed container keeps no row
                        # The engine's failure, not the history's (both can be
                        # OSErrors): keep the history, then let run() reconnect.
                        engine_error = exc
            except DB_ERRORS as exc:
                if not acted:
                    log.warning(
                        "health.history_unavailable",
                        container=name,
                        error=repr(exc),
                        note="healing with this process's own restart history",
                    )
                else:  # healed; only the history's save failed
                    log.warning("health.history_not_saved", container=name, error=repr(exc))
            if engine_error is not None:
                raise engine_error
            if acted:
                return
        record = self.records.setdefault(container_id, ContainerRecord())
        await self._heal(docker, failure, record)

    async def _forget(self, container_id: str, name: str) -> None:
        """A watched container was removed: its restart history goes with it
        (a recreated container gets a new id and a fresh budget)."""
        async with self.locks.setdefault(container_id, asyncio.Lock()):
            if self.store is not None:
                try:
                    await self.store.forget(container_id)
                except DB_ERRORS as exc:
                    log.warning("health.history_not_forgotten", container=name, error=repr(exc))
        self._drop_local(container_id)
        log.debug("health.forgot", container=name)

    def _drop_local(self, container_id: str) -> None:
        self.records.pop(container_id, None)
        lock = self.locks.get(container_id)
        if lock is not None and not lock.locked():
            del self.locks[container_id]

    async def _heal(
        self, docker: aiodocker.Docker, failure: Failure, record: ContainerRecord
    ) -> None:
        if failure.reason != "unhealthy":
            info = await docker.containers.container(failure.container_id).show()
            if (info.get("State") or {}).get("Running"):
                return
        if await self._act(docker, failure, record) == "restart":
            self.records.setdefault(failure.container_id, ContainerRecord()).failed_probes = 0

    async def _act(
        self, docker: aiodocker.Docker, failure: Failure, record: ContainerRecord
    ) -> str:
        container_id, name, reason, exit_code = (
            failure.container_id,
            failure.name,
            failure.reason,
            failure.exit_code,
        )
        # Wall-clock time: the history is shared by processes and restarts.
        decision = decide(self.policy, record, time.time())
        details = {
            "container": name,
            "container_id": container_id[:12],
            "reason": reason,
            "exit_code": exit_code,
            "attempt": len(record.restarts),
        }
        if decision == "restart":
            container = docker.containers.container(container_id)
            if reason == "unhealthy":
                await restart(container)
            else:
                # A dead container only needs starting; a restart would first
                # "stop" it, which can wait out the stop timeout while the
                # engine is still cleaning up after the death.
                await container.start()
            CONTAINER_RESTARTS.labels(container=name).inc()
            log.warning("health.restarted", **details)
            await self.emit("container.restarted", details)
        elif decision == "escalate":
            logs = await last_lines(docker, container_id)
            log.error("health.escalated", **details, budget=self.policy.budget)
            await self.emit(
                "container.escalated",
                {**details, "budget": self.policy.budget, "last_log_lines": logs},
            )
        elif decision == "wait":
            log.info("health.backing_off", **details)
        return decision


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def build(rt: Runtime) -> HealthWatcher | None:
    """The health watch when compose projects are configured, else None. Its
    service is ``lambda: watcher.run(rt.stopping)`` (the composition root
    makes it: ``run`` takes the stop event, so tests can drive it alone)."""
    settings = rt.settings
    if not settings.heal_projects:
        return None
    policy = HealPolicy(
        unhealthy_probes=settings.heal_unhealthy_probes,
        budget=settings.heal_budget,
        window=settings.heal_window,
        backoff_max=settings.heal_backoff_max,
    )
    return HealthWatcher(
        settings.docker_url,
        settings.heal_projects,
        policy,
        event_emitter(rt.nc, rt.pipeline, policy),
        reconcile_interval=settings.heal_reconcile_interval,
        store=HealStore(rt.pool),
    )


def event_emitter(nc: NATS, pipeline: Pipeline, policy: HealPolicy) -> Emit:
    """Publish an orchestration event per action, and an escalation (once per
    policy window) when a container's budget is spent; never raises."""

    async def emit(name: str, details: dict[str, Any]) -> None:
        js = nc.jetstream()
        target = _SAFE.sub("_", details["container"]) or "unknown"
        payload = {"eventType": name, **details, "timestamp": store.now_iso()}
        data = json.dumps(payload, default=str).encode()
        event = name.split(".", 1)[1]
        with contextlib.suppress(*PUBLISH_ERRORS):
            await js.publish(pipeline.subject("infra_event", event=event, target=target), data)
        if name == "container.escalated":
            period = int(time.time() // policy.window)  # once per window, like the policy
            key = f"escalation:container:{details['container_id']}:{period}"
            with contextlib.suppress(*PUBLISH_ERRORS):
                await js.publish(
                    pipeline.subject("escalation", target="infra"),
                    data,
                    headers={"Nats-Msg-Id": key},
                )

    return emit
