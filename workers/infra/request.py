"""Report requests on NATS: the feature from the subject, the optional body
checked; a request that will stay wrong is a BadRequest, rejected once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from workers.infra.entries import sanitize_feature


# --- requests on NATS ---------------------------------------------------------------
class BadRequest(ValueError):
    """A report request that will stay wrong: rejected once and term'd."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class ReportRequest:
    feature: str
    reason: str = "request"
    requested_by: str | None = None


def parse_request(
    subject: str, data: bytes, template: str, max_bytes: int = 1_048_576
) -> ReportRequest:
    """A request on ``template`` (``...requested.{feature}``): the feature comes from
    the subject; the optional JSON body may carry ``feature`` (must agree),
    ``reason`` and ``requested_by``."""
    prefix = template.split("{feature}", 1)[0]
    token = subject[len(prefix) :] if subject.startswith(prefix) else ""
    if not token or "." in token:
        raise BadRequest("wrong_subject", f"{subject} does not name one feature after {prefix}")
    feature = sanitize_feature(token)
    if len(data) > max_bytes:
        raise BadRequest("too_large", f"{len(data)} bytes; the limit is {max_bytes}")
    body: Any = {}
    if data.strip():
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest("invalid_json", f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("wrong_schema", "a report request is a JSON object (or empty)")
    given = body.get("feature")
    if given is not None and (not isinstance(given, str) or sanitize_feature(given) != feature):
        raise BadRequest(
            "wrong_schema", f"feature mismatch: subject says {feature}, payload says {given!r}"
        )
    reason, who = body.get("reason", "request"), body.get("requested_by")
    if not isinstance(reason, str) or (who is not None and not isinstance(who, str)):
        raise BadRequest("wrong_schema", "reason and requested_by must be strings")
    return ReportRequest(feature, sanitize_feature(reason or "request")[:40], who)
