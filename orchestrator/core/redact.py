"""Credentials out of any text that names URLs: log details, errors, printed lines.

``settings.redact_url`` cleans one URL it is given; ``redact_text`` finds every
URL inside a longer text (an error message, a comma-separated server list)
and masks the secret before its ``@``: ``user:password@`` becomes
``user:***@``, and in a NATS URL (nats, tls, ws, wss) a bare ``token@``
(NATS takes a token in the user slot) becomes ``***@``. Pure, so the log processor can call it too.
"""

from __future__ import annotations

import re
from typing import Any

# scheme://userinfo@ where userinfo has no '/', '@' or whitespace; the last '@'
# before the host ends it (a password may itself hold an unescaped '@').
_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<info>[^/\s@]+(?:@[^/\s@]+)*)@", re.I)
MASK = "***"


# Schemes whose bare user slot is a secret (a NATS token); elsewhere it is a name.
TOKEN_SCHEMES = frozenset({"nats://", "tls://", "ws://", "wss://"})


def _mask(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    user, sep, _secret = match.group("info").partition(":")
    if sep:
        return f"{scheme}{user}:{MASK}@"
    return f"{scheme}{MASK}@" if scheme.lower() in TOKEN_SCHEMES else match.group(0)


def redact_text(text: str) -> str:
    """``text`` with the credentials of every URL in it masked."""
    if "://" not in text or "@" not in text:
        return text
    return _USERINFO.sub(_mask, text)


def redact_value(value: Any) -> Any:
    """``redact_text`` over a value that may be a string or a list/tuple of them."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value
