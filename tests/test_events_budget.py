"""Live events under pressure (issue 15, item 3): slow SSE clients and huge
messages must not grow agogd's memory. A real agogd subprocess, real TCP
clients that connect to /api/events and never read, and 9 MiB messages on a
real nats-server; agogd's RSS is read from /proc/<pid>/status."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from nats.aio.client import Client as NATS

from orchestrator.api.events import EVENT_MAX, FIELD_MAX, Prefixes, cut, to_event
from orchestrator.core import registry
from orchestrator.embedded import NatsServer
from orchestrator.embedded.daemon_proc import DaemonProcess

MIB = 1024 * 1024
BUDGET = 64 * 1024
MESSAGES = 40
SLOW_CLIENTS = 3
# Before the fix each slow client queued every 9 MiB event: three clients and
# forty messages are over 1 GiB. Bounded events and the byte budget leave the
# transient cost of parsing one message at a time (and what the allocator keeps).
RSS_GROWTH_BOUND = 160 * MIB
FLOOD_REQ = "REQ-FLOOD-1"
FIELD = 230 * 1024
SUBJECT = f"agog.orchestration.events.stage.completed.roy.{FLOOD_REQ}"
OTHER_SUBJECT = "agog.orchestration.events.stage.progress.roy.REQ-FLOOD-2"


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def huge_message(n: int) -> bytes:
    """About 9 MiB of JSON: forty 230 KiB fields (the reason among them)."""
    fields = {f"note_{i}": chr(ord("a") + i % 26) * FIELD for i in range(39)}
    body = {
        "eventType": "stage.completed",
        "req_number": FLOOD_REQ,
        "agent": "roy",
        "attempt": n,
        "reason": "r" * FIELD,
        **fields,
    }
    return json.dumps(body).encode()


def medium_message(n: int) -> bytes:
    """An event that is just under the bound: 14 fields of 1 KiB."""
    body = {"eventType": "stage.progress", "req_number": "REQ-FLOOD-2", "attempt": n}
    body.update({f"note_{i}": "m" * 1000 for i in range(14)})
    return json.dumps(body).encode()


def slow_client(host: str, port: int) -> socket.socket:
    """A client that asks for the live events and then never reads (a tiny
    receive buffer, so the kernel cannot soak the stream up for it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, port))
    sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    # MSG_PEEK: the answer has begun (so agogd counts this client) and stays unread.
    assert sock.recv(1, socket.MSG_PEEK) == b"H"
    return sock


def read_to_eof(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes (bounded by ``deadline``)."""
    chunks: list[bytes] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            chunks.append(b"<reset>")
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def sse_events(raw: bytes) -> list[tuple[str, str]]:
    """(event, data) pairs of an SSE body, chunked transfer framing and all:
    only lines that start with ``event: `` or ``data: `` matter."""
    events: list[tuple[str, str]] = []
    name = "message"
    for line in raw.decode("utf-8", "replace").split("\n"):
        line = line.rstrip("\r")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, line.removeprefix("data: ")))
            name = "message"
    return events


def test_a_huge_field_is_cut_with_a_visible_marker() -> None:
    event = to_event(SUBJECT, huge_message(1), Prefixes.of(registry.load()))
    wire = json.dumps(event)
    assert len(wire) <= EVENT_MAX
    assert event["reason"].startswith("rrr") and event["reason"].endswith(
        f"…[cut: {FIELD - len(event['reason'].split('…')[0])} bytes]"
    )
    assert len(json.dumps(event["reason"])) <= FIELD_MAX + 2
    assert event["fields_cut"] >= 1 and event["req_number"] == FLOOD_REQ
    # Short text is left alone; non-ASCII is measured in bytes of JSON, not characters.
    assert cut("a short reason") == "a short reason"
    assert len(json.dumps(cut("é" * 10_000))) <= FIELD_MAX + 2


class Reader:
    """A client that does read: collects (event, data) pairs in a task."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        name = "message"
        async for raw in self.resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                self.events.append((name, json.loads(line.removeprefix("data: "))))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [d for e, d in self.events if e == name]


async def test_slow_clients_and_huge_messages_keep_rss_bounded(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    daemon = DaemonProcess(
        {
            "AGOG_NATS_URL": nats_server.url,
            "AGOG_POSTGRES_DSN": pg_dsn,
            "AGOG_EMBEDDING_PROVIDER": "none",
            "AGOG_EVENTS_CLIENT_BUDGET": str(BUDGET),
        }
    ).start()
    slow: list[socket.socket] = []
    try:
        await asyncio.to_thread(daemon.wait_ready, 60)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        url = daemon.http_url
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        # The stream is read for as long as the test runs: aiohttp's default
        # 5-minute total would end it on a loaded machine.
        forever = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with aiohttp.ClientSession(timeout=forever) as session:
            resp = await session.get(f"{url}/api/events?req={FLOOD_REQ}")
            assert resp.status == 200
            reader = Reader(resp)
            for _ in range(SLOW_CLIENTS):
                slow.append(await asyncio.to_thread(slow_client, host, port))
            deadline = time.monotonic() + 30
            while not reader.named("ready"):
                assert time.monotonic() < deadline and not reader.task.done(), reader.events
                await asyncio.sleep(0.05)

            # Each slow client, once agogd says it dropped it, reads what it was sent.
            received: dict[int, bytes] = {}

            def follow(sock: socket.socket) -> None:
                me = f"127.0.0.1:{sock.getsockname()[1]}"
                until = time.monotonic() + 300
                while time.monotonic() < until:
                    if any(e.get("peer") == me for e in daemon.named("events.client_dropped")):
                        received[sock.getsockname()[1]] = read_to_eof(sock, time.monotonic() + 30)
                        return
                    time.sleep(0.05)

            followers = [threading.Thread(target=follow, args=(s,), daemon=True) for s in slow]
            for t in followers:
                t.start()

            baseline = max(rss_bytes(pid) for _ in range(5))
            peak = baseline
            for n in range(1, MESSAGES + 1):
                await nc.publish(SUBJECT, huge_message(n))
                await nc.flush(timeout=30)
                peak = max(peak, rss_bytes(pid))
                assert peak - baseline < RSS_GROWTH_BOUND, (
                    f"agogd's RSS grew {(peak - baseline) / MIB:.0f} MiB after {n} messages"
                    f" of 9 MiB (bound {RSS_GROWTH_BOUND / MIB:.0f} MiB)"
                )
            deadline = time.monotonic() + 300
            while len(reader.named("stage.completed")) < MESSAGES:
                assert time.monotonic() < deadline, f"{len(reader.events)} events"
                assert not reader.task.done(), reader.events[-3:]
                peak = max(peak, rss_bytes(pid))
                await asyncio.sleep(0.05)
            # Then many ordinary (16 KiB) events, until agogd has let go of every
            # slow client: the kernel's socket buffers on loopback soak up a few
            # MiB first, and the budget counts only what agogd itself holds.
            sent = 0
            while len(daemon.named("events.client_dropped")) < SLOW_CLIENTS:
                assert sent < 4000, f"slow clients not dropped: {daemon.lines[-5:]}"
                for _ in range(25):
                    sent += 1
                    await nc.publish(OTHER_SUBJECT, medium_message(sent))
                await nc.flush(timeout=30)
                peak = max(peak, rss_bytes(pid))
                assert peak - baseline < RSS_GROWTH_BOUND, f"grew {(peak - baseline) / MIB:.0f} MiB"
            peak = max(peak, rss_bytes(pid))
            assert peak - baseline < RSS_GROWTH_BOUND, f"grew {(peak - baseline) / MIB:.0f} MiB"
            print(
                f"RSS {baseline / MIB:.0f} MiB -> peak {peak / MIB:.0f} MiB"
                f" (bound +{RSS_GROWTH_BOUND / MIB:.0f} MiB)"
            )

            # The reading client got every event, bounded, its huge fields marked.
            flood = reader.named("stage.completed")
            assert [d["attempt"] for d in flood] == list(range(1, MESSAGES + 1))
            for data in flood:
                assert len(json.dumps(data)) <= EVENT_MAX
                assert "…[cut: " in data["reason"] and data["fields_cut"] >= 1
            assert not reader.named("dropped")

            # Every slow client was dropped, and told why as its last event.
            await asyncio.to_thread(lambda: [t.join(60) for t in followers])
            assert len(received) == SLOW_CLIENTS, daemon.named("events.client_dropped")
            for got in received.values():
                events = sse_events(got)
                assert events and events[-1][0] == "dropped", events[-3:]
                final = json.loads(events[-1][1])
                assert final["budget"] == BUDGET
                assert "AGOG_EVENTS_CLIENT_BUDGET" in final["reason"]
            # agogd carries on: new clients are served, /readyz is still 200.
            assert daemon.readyz() == 200
            again = await session.get(f"{url}/api/events?ping=1")
            assert again.status == 200
            again.close()
            resp.close()
    finally:
        for sock in slow:
            sock.close()
        daemon.stop()
