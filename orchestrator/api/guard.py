"""Guards in front of agogd's HTTP endpoint: the Host check and the body timeout.

DNS rebinding: a web page on ``evil.example`` whose name the attacker
re-points at 127.0.0.1 is, to the browser, same-origin with agogd, so it can
read open endpoints (every REQ, the live event stream). The browser still
sends ``Host: evil.example``, so agogd answers only Hosts it knows: the
loopback names, the address it listens on (when not a wildcard) and
``AGOG_HTTP_ALLOWED_HOSTS``. ``*`` there turns the check off.

Slow clients: aiohttp's keep-alive timer (armed when a connection opens and
after each response) closes a connection whose request head has not arrived
in time; ``AGOG_HTTP_HEADER_TIMEOUT`` sets it. A body that trickles in is cut
by ``body_timeout_middleware`` (``AGOG_HTTP_BODY_TIMEOUT``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from orchestrator.api.common import error_response
from orchestrator.core.hosts import BadHost, split_host

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARDS = frozenset({"0.0.0.0", "[::]"})
# Exempt from the Host check: Kubernetes probes and Prometheus scrapes name the
# pod or service by its IP or service name, which nobody lists in advance.
# These answer only "alive", the readiness checks and counters: no REQ, title
# or event, so a rebinding page learns nothing it could not guess.
HOST_EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass(frozen=True)
class AllowedHosts:
    """The Host headers agogd answers: names (any port) and exact name:ports."""

    names: frozenset[str]
    pairs: frozenset[tuple[str, int]]
    any_host: bool = False

    @classmethod
    def build(cls, bind_host: str, extra: Iterable[str]) -> AllowedHosts:
        """Loopback names, the bind host when it is not a wildcard, and ``extra``."""
        entries = list(extra)
        if "*" in (e.strip() for e in entries):
            return cls(frozenset(), frozenset(), any_host=True)
        names: set[str] = set(LOOPBACK_NAMES)
        pairs: set[tuple[str, int]] = set()
        try:
            bound = split_host(bind_host)[0]
        except BadHost:
            bound = "0.0.0.0"  # nothing to add: the bind itself will say what is wrong
        if bound not in WILDCARDS:
            names.add(bound)
        for entry in entries:
            name, port = split_host(entry)
            if port is None:
                names.add(name)
            else:
                pairs.add((name, port))
        return cls(frozenset(names), frozenset(pairs))

    def allows(self, header: str | None) -> bool:
        if self.any_host:
            return True
        if not header:
            return False  # HTTP/1.1 requires it, and every browser sends it
        try:
            name, port = split_host(header)
        except BadHost:
            return False
        return name in self.names or (port is not None and (name, port) in self.pairs)


def host_middleware(allowed: AllowedHosts) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Answer 421 to a request whose Host agogd does not know (DNS rebinding)."""

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in HOST_EXEMPT or allowed.allows(request.headers.get("Host")):
            return await handler(request)
        shown = (request.headers.get("Host") or "")[:100]
        return error_response(
            421,
            f"Host {shown!r} is not one agogd answers (DNS rebinding guard);"
            " add it to AGOG_HTTP_ALLOWED_HOSTS",
        )

    return check_host


class BodyTimeout(TimeoutError):
    """The request body did not arrive in time (set on the body stream). A
    TimeoutError, so that aiohttp's lingering read after the 408 stops on it
    quietly instead of logging it as an unhandled exception."""


def body_timeout_middleware(seconds: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Give a request's body ``seconds`` to arrive, else answer 408 and close:
    a body that trickles in must not hold a connection and a handler for ever.
    Nothing is read here (a handler still refuses a bad token before it reads
    a byte); a timer fails the body stream, and so the handler's read."""

    @web.middleware
    async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = request.content
        if not request.body_exists or body.is_eof():
            return await handler(request)

        def expire() -> None:
            if not body.is_eof():
                body.set_exception(BodyTimeout())

        timer = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            return await handler(request)
        except BodyTimeout:
            response = error_response(408, f"the request body did not arrive within {seconds:g} s")
            response.force_close()
            return response
        finally:
            timer.cancel()  # a body left unread after the answer is aiohttp's to drain

    return body_deadline
