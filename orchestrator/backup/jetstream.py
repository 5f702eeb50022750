"""JetStream's own stream snapshot and restore, driven through nats-py.

nats-py has no helper for them, but the server's API is plain requests:

- ``$JS.API.STREAM.SNAPSHOT.<stream>`` with a deliver subject: the server
  answers with the stream's config and state, then streams the snapshot (an
  S2-compressed tar of the stream's store and its consumers) to that subject
  in chunks. Each chunk carries a reply subject: answering it is the flow
  control (the server stops sending past its window). An empty message with
  ``Status: 204`` ends it; another status is an error.
- ``$JS.API.STREAM.RESTORE.<stream>`` with a config and state: the server
  answers with a subject to send the chunks to, each acknowledged; an empty
  message ends it, and the answer is the new stream's info. Messages, their
  sequences and the durable consumers with their ack floors come back. The
  config in the request is the new stream's identity: another name and other
  subjects restore it beside the original (``verify``).

Each helper raises ``JetStreamBackupError`` with the server's description.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from orchestrator.backup.errors import BackupError

CHUNK = 128 * 1024  # bytes per chunk, well under any server's max_payload
IDLE = 30.0  # seconds without a chunk before a snapshot is given up
API_TIMEOUT = 10.0
FINISH_TIMEOUT = 300.0  # the server rebuilds the stream from the chunks


class JetStreamBackupError(BackupError):
    """A snapshot, restore or stream lookup was refused or broke off."""


async def api(
    nc: NATS, subject: str, body: dict[str, Any] | None = None, timeout: float = API_TIMEOUT
) -> dict[str, Any]:
    """One JetStream API request; its error answer becomes the exception."""
    payload = json.dumps(body).encode() if body is not None else b""
    try:
        reply = await nc.request(subject, payload, timeout=timeout)
    except TimeoutError:
        raise JetStreamBackupError(
            f"{subject}: no answer from JetStream in {timeout:.0f}s"
        ) from None
    except NoRespondersError:
        raise JetStreamBackupError(f"{subject}: no JetStream on this NATS server") from None
    return _checked(subject, reply.data)


def _checked(subject: str, data: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(data) if data else {}
    except ValueError:
        raise JetStreamBackupError(f"{subject}: not a JSON answer: {data[:200]!r}") from None
    error = answer.get("error") if isinstance(answer, dict) else None
    if error:
        raise JetStreamBackupError(
            f"{subject}: {error.get('description', 'refused')} (JetStream error"
            f" {error.get('err_code', error.get('code'))})"
        )
    return answer if isinstance(answer, dict) else {}


async def stream_names(nc: NATS, prefix: str = "agog_") -> list[str]:
    """Every stream whose name starts with ``prefix``, sorted."""
    names: list[str] = []
    offset = 0
    while True:
        page = await api(nc, "$JS.API.STREAM.NAMES", {"offset": offset})
        found = page.get("streams") or []
        names += found
        offset += len(found)
        if not found or offset >= int(page.get("total", 0)):
            break
    return sorted(n for n in names if n.startswith(prefix))


async def stream_info(nc: NATS, stream: str) -> dict[str, Any] | None:
    """The stream's info (config and state), or None when there is no such stream."""
    try:
        return await api(nc, f"$JS.API.STREAM.INFO.{stream}")
    except JetStreamBackupError as exc:
        if "10059" in str(exc):  # stream not found
            return None
        raise


async def consumers(nc: NATS, stream: str) -> list[dict[str, Any]]:
    """The stream's consumers: name, delivered, ack floor, pending."""
    out: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = await api(nc, f"$JS.API.CONSUMER.LIST.{stream}", {"offset": offset})
        found = page.get("consumers") or []
        out += found
        offset += len(found)
        if not found or offset >= int(page.get("total", 0)):
            break
    return sorted(
        (
            {
                "name": c["name"],
                "delivered": c.get("delivered", {}).get("stream_seq", 0),
                "ack_floor": c.get("ack_floor", {}).get("stream_seq", 0),
                "num_pending": c.get("num_pending", 0),
                "num_ack_pending": c.get("num_ack_pending", 0),
            }
            for c in out
        ),
        key=lambda c: str(c["name"]),
    )


async def delete_stream(nc: NATS, stream: str) -> None:
    """Delete a stream with its consumers and messages (no such stream: nothing)."""
    try:
        await api(nc, f"$JS.API.STREAM.DELETE.{stream}")
    except JetStreamBackupError as exc:
        if "10059" not in str(exc):
            raise


async def snapshot(
    nc: NATS, stream: str, dest: Path, *, chunk_size: int = CHUNK, idle: float = IDLE
) -> dict[str, Any]:
    """Write the stream's snapshot, with its consumers, to ``dest``; returns the
    config and state it was taken at (what a restore sends back)."""
    inbox = nc.new_inbox()
    chunks: asyncio.Queue[Msg] = asyncio.Queue()

    async def take(msg: Msg) -> None:
        await chunks.put(msg)

    sub = await nc.subscribe(inbox, cb=take)
    subject = f"$JS.API.STREAM.SNAPSHOT.{stream}"
    try:
        info = await api(nc, subject, {"deliver_subject": inbox, "chunk_size": chunk_size})
        with dest.open("wb") as out:
            while True:
                try:
                    msg = await asyncio.wait_for(chunks.get(), idle)
                except TimeoutError:
                    raise JetStreamBackupError(
                        f"snapshot of {stream}: no chunk for {idle:.0f}s, given up"
                    ) from None
                if not msg.data:
                    status = (msg.headers or {}).get("Status", "204")
                    if status != "204":
                        reason = (msg.headers or {}).get("Description", "")
                        raise JetStreamBackupError(f"snapshot of {stream}: {status} {reason}")
                    break
                out.write(msg.data)
                if msg.reply:
                    await nc.publish(msg.reply, b"")  # the flow control: next chunks
            out.flush()
            os.fsync(out.fileno())
    finally:
        await sub.unsubscribe()
    return {"config": info["config"], "state": info["state"]}


async def restore(
    nc: NATS,
    config: dict[str, Any],
    state: dict[str, Any],
    source: Path,
    *,
    chunk_size: int = CHUNK,
) -> dict[str, Any]:
    """Create the stream ``config`` names from a snapshot file; returns its info."""
    name = config["name"]
    answer = await api(nc, f"$JS.API.STREAM.RESTORE.{name}", {"config": config, "state": state})
    target = answer.get("deliver_subject")
    if not target:
        raise JetStreamBackupError(f"restore of {name}: JetStream named no subject for the chunks")
    with source.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            try:
                ack = await nc.request(target, chunk, timeout=API_TIMEOUT * 3)
            except TimeoutError:
                raise JetStreamBackupError(
                    f"restore of {name}: a chunk was not acknowledged"
                ) from None
            _checked(f"restore of {name}", ack.data)
    try:
        done = await nc.request(target, b"", timeout=FINISH_TIMEOUT)
    except TimeoutError:
        raise JetStreamBackupError(f"restore of {name}: JetStream did not finish it") from None
    return _checked(f"restore of {name}", done.data)


async def msg_ids_since(nc: NATS, stream: str, since: datetime, *, idle: float = IDLE) -> set[str]:
    """The ``Nats-Msg-Id`` of every message stored in the stream at or after
    ``since``: headers only, pushed to an inbox by a short-lived ephemeral
    consumer (unacknowledged: several times faster than pulling)."""
    inbox = nc.new_inbox()
    ids: set[str] = set()
    seen = 0
    expected: int | None = None
    complete = asyncio.Event()

    async def take(msg: Msg) -> None:
        nonlocal seen
        seen += 1
        msg_id = (msg.headers or {}).get("Nats-Msg-Id")
        if msg_id:
            ids.add(msg_id)
        if expected is not None and seen >= expected:
            complete.set()

    sub = await nc.subscribe(
        inbox, cb=take, pending_msgs_limit=10_000_000, pending_bytes_limit=1 << 31
    )
    config = {
        "deliver_subject": inbox,
        "deliver_policy": "by_start_time",
        "opt_start_time": since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "ack_policy": "none",
        "headers_only": True,
        "max_deliver": 1,
        "mem_storage": True,
        "num_replicas": 1,
        "inactive_threshold": int(60e9),
    }
    name = None
    try:
        info = await api(
            nc, f"$JS.API.CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": config}
        )
        name, expected = info.get("name"), int(info.get("num_pending", 0))
        if seen >= expected:
            complete.set()
        while not complete.is_set():
            before = seen
            try:
                await asyncio.wait_for(complete.wait(), idle)
            except TimeoutError:
                if seen == before:
                    raise JetStreamBackupError(
                        f"reading {stream}'s message ids: {seen} of {expected} came, then"
                        f" nothing for {idle:.0f}s"
                    ) from None
    finally:
        await sub.unsubscribe()
        if name:
            with contextlib.suppress(JetStreamBackupError, TimeoutError):
                await api(nc, f"$JS.API.CONSUMER.DELETE.{stream}.{name}")
    return ids
