"""agogd's HTTP endpoint: /healthz (alive), /readyz (dependencies OK) and
/metrics (Prometheus).

The API, the live events and the board (``orchestrator.api``) add their
routes to the same app, before it listens.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.runtime.metrics import REGISTRY
from orchestrator.runtime.readiness import Readiness

READINESS_KEY = web.AppKey("readiness", Readiness)
REFRESH_KEY = web.AppKey("metrics_refresh", object)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    readiness = request.app[READINESS_KEY]
    return web.json_response(readiness.as_dict(), status=200 if readiness.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus text exposition of agogd's private registry."""
    refresh = request.app.get(REFRESH_KEY)
    if refresh is not None:
        await refresh()  # type: ignore[operator]
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def build_app(readiness: Readiness) -> web.Application:
    app = web.Application()
    app[READINESS_KEY] = readiness
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def add_metrics(app: web.Application, refresh: Callable[[], Awaitable[None]] | None) -> None:
    """``GET /metrics``; ``refresh`` brings the scrape-time gauges up to date first."""
    app[REFRESH_KEY] = refresh
    app.router.add_get("/metrics", metrics)


class HttpBindError(RuntimeError):
    """The HTTP endpoint cannot listen; the message is one line naming the
    setting to change (AGOG_HTTP_PORT or AGOG_HTTP_HOST)."""


def bind_problem(host: str, port: int, exc: OSError) -> str:
    """Why host:port cannot be listened on, as one line naming the setting."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"AGOG_HTTP_PORT: {where} is already in use (by another agogd, such as"
            " `agogd dev`?); stop it, or set AGOG_HTTP_PORT to a free port (0 picks one)"
        )
    if exc.errno == errno.EACCES:
        return (
            f"AGOG_HTTP_PORT: binding {where} is not permitted; set AGOG_HTTP_PORT to a port"
            " above 1023 (0 picks a free one)"
        )
    reason = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"AGOG_HTTP_HOST: cannot listen on {where}: {reason}; set AGOG_HTTP_HOST to an"
            " address of this host (127.0.0.1, or 0.0.0.0 for all)"
        )
    return f"AGOG_HTTP_HOST/AGOG_HTTP_PORT: cannot listen on {where}: {reason}"


class HttpServer:
    """Runs the aiohttp app on host:port (port 0 picks a free one).

    With ``any_port`` a port found in use is not an error: a free one is taken
    instead, and ``wanted_port`` keeps the one asked for (``agogd runner``,
    whose port nobody chose, beside an ``agogd dev`` that holds the default).
    """

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        any_port: bool = False,
        header_timeout: float = 20.0,
    ) -> None:
        """``header_timeout``: seconds a connection has, from when it opens or
        its last response ends, to send a complete request head; aiohttp's
        keep-alive timer enforces it (its default, an hour, let slow-header
        clients hold connections open)."""
        self.app, self.host, self.port = app, host, port
        self.any_port = any_port
        self.wanted_port: int | None = None
        # lingering_time: after answering a request whose body did not all come
        # (a 408, a 413), aiohttp reads on for this long so the client sees the
        # answer; its default (10 s) let a trickling body hold on that long too.
        self._runner = web.AppRunner(
            app, access_log=None, keepalive_timeout=header_timeout, lingering_time=2.0
        )

    async def start(self) -> str:
        """Listen; raises HttpBindError (one line, no traceback) if it cannot."""
        await self._runner.setup()
        try:
            try:
                await self._listen(self.port)
            except OSError as exc:
                if not (self.any_port and self.port and exc.errno == errno.EADDRINUSE):
                    raise
                self.wanted_port = self.port
                await self._listen(0)
        except OSError as exc:
            await self._runner.cleanup()
            raise HttpBindError(bind_problem(self.host, self.port, exc)) from None
        return self.url

    async def _listen(self, port: int) -> None:
        site = web.TCPSite(self._runner, self.host, port)
        try:
            await site.start()
        except OSError:
            await site.stop()  # a site that never listened must not stay in the runner
            raise
        server = site._server
        self.port = port
        if server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        await self._runner.cleanup()
