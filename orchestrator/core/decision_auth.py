"""Decisions published by agogd's own API are signed, so that nobody else on
NATS can pass for it.

A decision's ``source: api`` and its ``decision_id`` (the operator's
idempotency key) were taken from the payload as sent: any publisher could
claim them, and an operator's later call with that key was then answered
"duplicate" and did nothing. Now the API signs each decision it publishes
(an HMAC of the body in the ``Agog-Signature`` header) and derives its
``Nats-Msg-Id`` from the key with the same secret, so that no one can take
the key ahead of it either. The secret is derived from the API token, which
every replica that serves actions already shares: no new secret to keep.
The engine keeps ``source`` and ``decision_id`` only on a signed decision;
elsewhere they are recorded as what the publisher claimed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from pydantic import SecretStr

HEADER = "Agog-Signature"
_CONTEXT = b"agogd decision signing v1\0"


def signing_key(api_token: SecretStr | None) -> bytes | None:
    """The signing secret, or None when no API token is set (no API actions then)."""
    if api_token is None:
        return None
    return hashlib.sha256(_CONTEXT + api_token.get_secret_value().encode()).digest()


def sign(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def is_signed(key: bytes | None, headers: dict[str, str] | None, data: bytes) -> bool:
    """True when the decision carries agogd's own signature of these bytes."""
    given = (headers or {}).get(HEADER)
    if key is None or not given:
        return False
    return hmac.compare_digest(given, sign(key, data))


def msg_id(key: bytes, req: str, decision_id: str) -> str:
    """The API's Nats-Msg-Id for a decision: unguessable without the secret, so
    a publisher cannot use up the operator's key in JetStream's duplicate window."""
    tag = hmac.new(key, f"{req}\0{decision_id}".encode(), hashlib.sha256).hexdigest()[:20]
    return f"api-decision:{req}:{decision_id}:{tag}"


def unclaimed(payload: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """An unsigned decision's payload with what only agogd may say moved aside:
    ``source`` becomes ``nats``, ``decision_id`` becomes ``claimed_decision_id``."""
    out = dict(payload)
    moved = []
    for key in ("source", "decision_id"):
        if key in out:
            out[f"claimed_{key}"] = out.pop(key)
            moved.append(key)
    out["source"] = "nats"
    return out, moved
