"""Headless Chromium driven over the Chrome DevTools Protocol (test helper).

No Playwright, no browser download: Debian's ``chromium`` (``scripts/browser``
installs it) is started with ``--remote-debugging-port=0``; the port it
picked is read from ``DevToolsActivePort`` in its fresh profile, and the
page's DevTools websocket is spoken directly with aiohttp (already a
dependency): JSON commands with ids, and events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import aiohttp

# The flags these machines need (no GPU, no sandbox as root, no network
# beyond loopback: background fetches would only fail) and a fresh profile.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
)
INSTALL_HINT = (
    "Debian's chromium is needed for the board's browser test: as root, run "
    "`apt-get install -y chromium` (scripts/test does it through scripts/browser)"
)


def chromium_binary() -> str:
    """The Chromium executable, or a failure saying how to install it (never a skip)."""
    for name in (os.environ.get("AGOG_CHROMIUM", ""), "chromium", "chromium-browser"):
        found = shutil.which(name) if name else None
        if found:
            return found
    raise AssertionError(f"chromium not found. {INSTALL_HINT}")


class CdpError(RuntimeError):
    pass


class Page:
    """One page target: send commands, collect events, evaluate, click, screenshot."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            future = self._waiting.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                if "error" in data:
                    future.set_exception(CdpError(json.dumps(data["error"])))
                else:
                    future.set_result(data.get("result", {}))
            elif "method" in data:
                self.events.append(data)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(CdpError("the DevTools connection closed"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = future
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        return await asyncio.wait_for(future, 30)  # type: ignore[no-any-return]

    async def evaluate(self, expression: str) -> Any:
        """The expression's value (JSON-able), awaiting it if it is a promise."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20, what: str = "") -> Any:
        """Poll until the expression is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or expression} (last value: {value!r})")

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'", what=f"{url} to load")

    async def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the element's centre."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()"
        )
        if box is None:
            raise AssertionError(f"nothing to click at {selector}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box["x"],
                y=box["y"],
                button="left",
                clickCount=1,
            )

    async def screenshot(self, path: Path) -> Path:
        result = await self.send(
            "Page.captureScreenshot", format="png", captureBeyondViewport=False
        )
        await asyncio.to_thread(_write, path, base64.b64decode(result["data"]))
        return path

    def problems(self) -> list[str]:
        """JavaScript exceptions and console errors the page has had."""
        out = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append(str(details.get("exception", {}).get("description") or details))
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                out.append(" ".join(str(a.get("value", a)) for a in params.get("args", [])))
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                out.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}")
        return out

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _port(profile: Path) -> int | None:
    """The DevTools port Chromium picked, once it has written it down."""
    try:
        first = (profile / "DevToolsActivePort").read_text().split()
    except FileNotFoundError:
        return None
    return int(first[0]) if first else None


def _log_file(profile: Path) -> IO[bytes]:
    profile.mkdir(parents=True, exist_ok=True)
    return (profile.parent / "chromium.log").open("wb")


def _log_tail(profile: Path) -> str:
    return (profile.parent / "chromium.log").read_text(errors="replace")[-2000:]


@asynccontextmanager
async def chromium(profile: Path, width: int = 1560, height: int = 900) -> AsyncIterator[Page]:
    """A headless Chromium with one blank page, stopped (its process group) at the end."""
    binary = chromium_binary()
    log = await asyncio.to_thread(_log_file, profile)
    proc = await asyncio.create_subprocess_exec(
        binary,
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "about:blank",
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped whole at the end
    )
    session = aiohttp.ClientSession()
    page: Page | None = None
    try:
        deadline = time.monotonic() + 30
        while (port := await asyncio.to_thread(_port, profile)) is None:
            if proc.returncode is not None:
                tail = await asyncio.to_thread(_log_tail, profile)
                raise AssertionError(f"chromium exited with {proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise AssertionError("chromium did not open its DevTools port within 30 s")
            await asyncio.sleep(0.05)
        async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        target = next(t for t in targets if t.get("type") == "page")
        ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws)
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            await page.send(domain)
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        yield page
    finally:
        if page is not None:
            await page.close()
        await session.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 5)
        log.close()
