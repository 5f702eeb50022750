"""What every scripted model server shares: the script, the recording, the server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Turn:
    """What the scripted model answers to one request: text, or a tool call."""

    text: str = ""
    # A tool call: the tool's name as the CLI offered it, and its arguments.
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    # What the server reports as this turn's usage.
    input_tokens: int = 100
    output_tokens: int = 20
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


async def json_body(request: web.Request) -> Any:
    """The request's body as JSON, or None when it is not JSON (each server
    answers that with its API's own error; aiohttp has undone any gzip)."""
    try:
        return json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError):
        return None


# Given the request's JSON body, the turn to answer with.
Responder = Callable[[dict[str, Any]], Turn]


class Script:
    """The model's answers, in order; then ``responder`` (if any) answers each
    further request, else the last turn repeats."""

    def __init__(self, turns: Iterable[Turn] = (), responder: Responder | None = None) -> None:
        self._turns = list(turns)
        self._responder = responder
        self._last = Turn(text="ok")
        self.used = 0

    def next(self, request: dict[str, Any]) -> Turn:
        self.used += 1
        if self._turns:
            self._last = self._turns.pop(0)
            return self._last
        if self._responder is not None:
            return self._responder(request)
        return self._last


class ScriptedModelServer:
    """A local HTTP server speaking one model API; subclasses add its routes.

    ``requests`` keeps every request body the CLI sent, in order (with
    ``path`` and ``headers`` beside it), for tests to inspect.
    """

    def __init__(self, script: Script | None = None, host: str = "127.0.0.1") -> None:
        self.script = script or Script()
        self.host = host
        self.port = 0
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def record(self, request: web.Request, body: dict[str, Any]) -> None:
        self.requests.append({"path": request.path_qs, "headers": dict(request.headers), **body})

    async def start(self) -> ScriptedModelServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedModelServer:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
