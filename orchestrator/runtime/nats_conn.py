"""Connecting to NATS: credentials and TLS from settings, retry until reached.

After the first connection nats-py reconnects by itself; we only log each
state change once and tell the daemon, which re-checks the topology.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS

from orchestrator.core.backoff import delays
from orchestrator.core.redact import redact_text
from orchestrator.runtime import nats_auth
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.settings import Settings
from orchestrator.runtime.state_log import StateLog

log = get_logger(__name__)

Callback = Callable[[], Awaitable[None]]


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A TLS context when any TLS option or a tls:// URL is configured."""
    wants_tls = any(u.startswith("tls://") for u in settings.nats_url)
    if not (wants_tls or settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    ctx = ssl.create_default_context(
        cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
    )
    if settings.nats_tls_cert and settings.nats_tls_key:
        ctx.load_cert_chain(str(settings.nats_tls_cert), str(settings.nats_tls_key))
    return ctx


def connect_options(settings: Settings) -> dict[str, Any]:
    """nats.connect() keyword arguments for these settings (auth, TLS, timeouts)."""
    opts: dict[str, Any] = {
        "servers": settings.nats_url,
        "name": "agogd",
        "connect_timeout": settings.nats_connect_timeout,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        # Inboxes of agogd's own: the generated authorization lets nobody else
        # subscribe to them (pull deliveries and JetStream API answers).
        "inbox_prefix": nats_auth.AGOGD_INBOX,
    }
    if settings.nats_user:
        opts["user"] = settings.nats_user
        if settings.nats_password is not None:
            opts["password"] = settings.nats_password.get_secret_value()
    if settings.nats_token is not None:
        opts["token"] = settings.nats_token.get_secret_value()
    if settings.nats_creds_file is not None:
        opts["user_credentials"] = str(settings.nats_creds_file)
    ctx = tls_context(settings)
    if ctx is not None:
        opts["tls"] = ctx
    return opts


async def connect(
    settings: Settings,
    states: StateLog,
    *,
    on_disconnect: Callback | None = None,
    on_reconnect: Callback | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> NATS:
    """Connect, retrying with backoff until NATS answers; logs each change once."""
    servers = ", ".join(redact_text(u) for u in settings.nats_url)  # user:***@host

    async def disconnected() -> None:
        # Draining at shutdown disconnects too; that is no cause for a warning.
        states.set("nats", "disconnected", "info" if stopping() else "warning", servers=servers)
        if on_disconnect:
            await on_disconnect()

    async def reconnected() -> None:
        states.set("nats", "connected", servers=servers)
        if on_reconnect:
            await on_reconnect()

    async def error(exc: Exception) -> None:
        # nats-py reports every failed reconnect; keep only changes of error kind.
        states.set("nats.client", "error", "debug", cause=type(exc).__name__, error=str(exc))

    async def closed() -> None:
        states.set("nats", "closed")

    opts = connect_options(settings)
    for attempt, delay in enumerate(delays(maximum=settings.backoff_max), start=1):
        try:
            # nats-py retries an unreachable first server forever and silently
            # when reconnects are unlimited, so probe with a bounded client first.
            probe = await nats.connect(
                **{
                    **opts,
                    "allow_reconnect": False,
                    "max_reconnect_attempts": 1,
                    "reconnect_time_wait": 0,
                },
                error_cb=error,
            )
            await probe.close()
            nc = await nats.connect(
                **opts,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
                closed_cb=closed,
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            states.set(
                "nats",
                "unreachable",
                "warning",
                cause=type(exc).__name__,
                servers=servers,
                error=str(exc) or type(exc).__name__,
                retry="with backoff",
            )
            log.debug("nats.retry", attempt=attempt, delay=round(delay, 2))
            await asyncio.sleep(delay)
            continue
        states.set("nats", "connected", servers=servers)
        return nc
    raise AssertionError("unreachable")
