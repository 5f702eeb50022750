"""``host[:port]`` as a Host header or an allow-list entry names it (pure).

Shared by the settings (AGOG_HTTP_ALLOWED_HOSTS is checked at start) and the
API's Host check (``orchestrator.api.guard``).
"""

from __future__ import annotations

import ipaddress


class BadHost(ValueError):
    """A Host header or an AGOG_HTTP_ALLOWED_HOSTS entry that is not host[:port]."""


def split_host(value: str) -> tuple[str, int | None]:
    """``name[:port]`` (``[v6][:port]`` for IPv6) as (lower-case name, port);
    an IPv6 name keeps its brackets, a trailing dot is dropped."""
    text = value.strip().lower()
    if not text or any(c.isspace() or c in "/\\@?#," for c in text):
        raise BadHost(f"{value!r} is not host[:port]")
    port: str | None = None
    if text.startswith("["):
        name, sep, rest = text.partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise BadHost(f"{value!r} is not [ipv6][:port]")
        try:
            ipaddress.IPv6Address(name[1:])
        except ValueError:
            raise BadHost(f"{value!r} is not [ipv6][:port]") from None
        name = f"[{ipaddress.IPv6Address(name[1:]).compressed}]"
        port = rest[1:] if rest else None
    elif text.count(":") > 1:  # a bare IPv6 address, as in AGOG_HTTP_HOST=::1
        try:
            name = f"[{ipaddress.IPv6Address(text).compressed}]"
        except ValueError:
            raise BadHost(f"{value!r} is not host[:port]") from None
    else:
        name, sep, rest = text.partition(":")
        port = rest if sep else None
    name = name.rstrip(".")
    if not name:
        raise BadHost(f"{value!r} has no host name")
    if port is None:
        return name, None
    if not port.isascii() or not port.isdecimal() or not 0 < int(port) < 65536:
        raise BadHost(f"{value!r} has no valid port")
    return name, int(port)
