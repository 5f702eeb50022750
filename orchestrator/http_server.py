"""agogd's HTTP endpoint: /healthz (alive), /readyz (dependencies OK),
/metrics (Prometheus) and the pipeline board (``/``, assets under ``/board/``).

The status API (orchestrator.api) adds its routes to the same app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.metrics import REGISTRY
from orchestrator.readiness import Readiness

READINESS_KEY = web.AppKey("readiness", Readiness)
REFRESH_KEY = web.AppKey("metrics_refresh", object)
# The board's assets ship in the package (no CDN): plain HTML, CSS and JS.
BOARD_DIR = Path(__file__).with_name("board")
BOARD_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}


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


def _board_file(name: str) -> web.Response:
    path = BOARD_DIR / name
    kind = BOARD_TYPES.get(path.suffix)
    if kind is None or path.parent != BOARD_DIR or not path.is_file():
        raise web.HTTPNotFound(text=f"no board asset {name!r}")
    return web.Response(
        body=path.read_bytes(),
        content_type=kind,
        charset="utf-8" if kind.startswith("text/") else None,
        headers={"Cache-Control": "no-cache"},  # an upgraded agogd serves its own
    )


async def board_page(_request: web.Request) -> web.Response:
    return _board_file("index.html")


async def board_asset(request: web.Request) -> web.Response:
    return _board_file(request.match_info["name"])


def add_board(app: web.Application) -> None:
    """The pipeline board: ``/`` and its assets under ``/board/`` (see board/board.js)."""
    app.router.add_get("/", board_page)
    app.router.add_get("/board/{name}", board_asset)


class HttpServer:
    """Runs the aiohttp app on host:port (port 0 picks a free one)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> str:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.url

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        await self._runner.cleanup()
