"""The agogd lifecycle: listen, connect, migrate, wire, reconcile, serve; drain on SIGTERM.

Modelled on arq's worker: one object owns the connections, the services and
a stop event. It knows nothing of what the services are: a ``Wiring`` (the
composition root, ``orchestrator.wiring``) adds its HTTP routes before agogd
listens and builds the services from the ``Runtime`` once the connections
are up. Services are coroutines that run until the stop event is set and
then finish their in-flight work; the daemon gives them ``shutdown_grace``
seconds before cancelling what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS

from orchestrator.core.registry import Pipeline
from orchestrator.runtime import db, migrate, nats_conn
from orchestrator.runtime.context import Runtime
from orchestrator.runtime.http_server import HttpServer, build_app
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.readiness import Readiness
from orchestrator.runtime.services import Service, sleep_unless_stopped
from orchestrator.runtime.settings import Settings
from orchestrator.runtime.state_log import StateLog
from orchestrator.runtime.topology import Reconciler, TopologyError

log = get_logger("agogd")

ReadyHook = Callable[["Daemon"], Awaitable[None]]
Check = Callable[[], Awaitable[None]]

EXIT_OK = 0
EXIT_FAILED = 1


class StartupError(RuntimeError):
    """agogd cannot start (a migration, the topology or a start-up check failed)."""


@dataclass
class Assembly:
    """What a wiring built from the runtime: the services to run, and the checks
    that must pass (after the migrations, before /readyz turns 200)."""

    services: dict[str, Service] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)


class Wiring(Protocol):
    """The composition root, as the lifecycle sees it."""

    def add_routes(self, app: web.Application) -> None:
        """Register HTTP routes (before agogd listens; they answer 503 until built)."""

    def build(self, runtime: Runtime) -> Assembly:
        """Make every service from the live runtime (no I/O; may raise StartupError)."""


class Daemon:
    """One agogd process: owns NATS, Postgres, the HTTP endpoint and the services."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        wiring: Wiring,
        *,
        any_http_port: bool = False,
    ) -> None:
        """``any_http_port``: if AGOG_HTTP_PORT is taken, listen on a free port
        instead of failing (for a runner whose port nobody chose)."""
        self.settings = settings
        self.pipeline = pipeline
        self.wiring = wiring
        self.readiness = Readiness()
        self.states = StateLog()
        self.stopping = asyncio.Event()
        self.http = HttpServer(
            build_app(self.readiness),
            settings.http_host,
            settings.http_port,
            any_port=any_http_port,
            header_timeout=settings.http_header_timeout,
        )
        wiring.add_routes(self.http.app)
        self.ready_hooks: list[ReadyHook] = []
        # Set once connected: the runtime every service was built from.
        self.runtime: Runtime | None = None
        self._services: dict[str, Service] = {}
        self._pool: asyncpg.Pool | None = None
        self._nc: NATS | None = None
        self._topology_dirty = asyncio.Event()

    # --- public API --------------------------------------------------------
    def request_stop(self, reason: str = "requested") -> None:
        if not self.stopping.is_set():
            log.info("agogd.stopping", reason=reason)
            self.stopping.set()

    async def run(self, handle_signals: bool = True) -> int:
        """Run until SIGTERM/SIGINT (or request_stop); returns the exit code.

        Raises HttpBindError, before anything else starts, when the HTTP port
        cannot be listened on: the caller reports it in one line.
        """
        loop = asyncio.get_running_loop()
        await self.http.start()
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        if self.http.wanted_port is not None:
            log.warning(
                "http.port_in_use",
                port=self.http.wanted_port,
                http=self.http.url,
                hint="AGOG_HTTP_PORT is not set, so a free port was taken; set it to choose one",
            )
        log.info(
            "agogd.starting", http=self.http.url, stages=[s.agent for s in self.pipeline.stages]
        )
        try:
            if not await self._until_stopped(self._startup()):
                return EXIT_OK
            for hook in self.ready_hooks:
                await hook(self)
            return await self._serve()
        except StartupError as exc:
            log.error("agogd.startup_failed", error=str(exc))
            return EXIT_FAILED
        except Exception:
            log.exception("agogd.crashed")
            return EXIT_FAILED
        finally:
            await self._close()
            for sig in signals:
                loop.remove_signal_handler(sig)

    # --- phases --------------------------------------------------------------
    async def _until_stopped(self, work: Awaitable[None]) -> bool:
        """Run work unless a stop comes first; returns False if stopped."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return False
        task.result()
        return True

    async def _startup(self) -> None:
        """Connect to Postgres, migrate, connect to NATS, build the services,
        run their checks, reconcile the topology."""
        conn = await db.wait_for_connection(self.settings, self.states)
        try:
            applied = await migrate.apply(conn, self.settings.migrations_dir)
        except migrate.MigrationError as exc:
            raise StartupError(str(exc)) from exc
        finally:
            await conn.close()
        self.readiness.migrations = True
        log.info("migrations.current", applied_now=applied)
        self._pool = await db.create_pool(self.settings)
        self.readiness.postgres = True
        self._nc = await nats_conn.connect(
            self.settings,
            self.states,
            on_disconnect=self._on_nats_disconnect,
            on_reconnect=self._on_nats_reconnect,
            stopping=lambda: self.readiness.draining,
        )
        self.readiness.nats = True
        self.runtime = Runtime(
            settings=self.settings,
            pipeline=self.pipeline,
            states=self.states,
            stopping=self.stopping,
            pool=self._pool,
            nc=self._nc,
        )
        assembly = self.wiring.build(self.runtime)
        self._services = {"health-monitor": self._health_monitor, **assembly.services}
        for check in assembly.checks:
            await check()
        try:
            await self._reconciler(self._nc).reconcile()
        except TopologyError as exc:
            raise StartupError(str(exc)) from exc
        self.readiness.topology = True
        self.states.set("readiness", "ready", http=self.http.url)

    async def _serve(self) -> int:
        tasks = {
            asyncio.create_task(svc(), name=name): name for name, svc in self._services.items()
        }
        stopper = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
        code = EXIT_OK
        for task in done - {stopper}:
            exc = task.exception()
            if exc is None and self.stopping.is_set():
                continue  # finished because we are stopping
            log.error(
                "service.crashed",
                service=tasks[task],
                error=repr(exc) if exc else "returned before the daemon stopped",
            )
            code = EXIT_FAILED
            self.request_stop(f"service {tasks[task]} crashed")
        await self._drain(set(tasks) - done)
        stopper.cancel()
        return code

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        """Let services finish in-flight work within the grace period."""
        self.readiness.draining = True
        self.states.set("readiness", "draining")
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace)
            for task in pending:
                log.warning("service.cancelled_at_grace", service=task.get_name())
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._nc.drain()
        if self._pool is not None:
            try:
                async with asyncio.timeout(5):
                    await self._pool.close()
            except TimeoutError:
                self._pool.terminate()
        await self.http.stop()
        log.info("agogd.stopped")

    # --- topology & readiness ------------------------------------------------
    def _reconciler(self, nc: NATS) -> Reconciler:
        return Reconciler(
            nc,
            self.pipeline,
            allow_data_loss=self.settings.topology_allow_data_loss,
            consumer_backfill=self.settings.consumer_backfill,
        )

    async def _health_monitor(self) -> None:
        """Keep /readyz truthful until the daemon stops."""
        while not self.stopping.is_set():
            try:
                await self.refresh_readiness()
            except Exception as exc:  # a probe must never take the daemon down
                log.warning("readiness.probe_failed", error=repr(exc))
            await sleep_unless_stopped(self.stopping, self.settings.health_interval)

    async def _on_nats_disconnect(self) -> None:
        self.readiness.nats = False

    async def _on_nats_reconnect(self) -> None:
        # The server may have come back without our streams (new storage).
        self._topology_dirty.set()

    async def refresh_readiness(self) -> None:
        """Re-check every dependency; re-reconcile after a NATS reconnect."""
        nc = self._nc
        nc_ok = nc is not None and nc.is_connected
        self.readiness.nats = nc_ok
        if nc is not None and nc_ok and self._topology_dirty.is_set():
            self._topology_dirty.clear()
            self.readiness.topology = False
            try:
                await self._reconciler(nc).reconcile()
                self.readiness.topology = True
            except (TopologyError, TimeoutError, OSError) as exc:
                self._topology_dirty.set()
                self.states.set("topology", "failing", "error", error=str(exc))
        if self.readiness.topology:
            self.states.set("topology", "ok")
        self.readiness.postgres = self._pool is not None and await db.ping(self._pool)
        self.states.set(
            "postgres",
            "connected" if self.readiness.postgres else "unreachable",
            "info" if self.readiness.postgres else "warning",
        )
        if self.readiness.ready:
            self.states.set("readiness", "ready")
        elif not self.readiness.draining:
            self.states.set("readiness", "not_ready", "warning", failing=self.readiness.failing())
