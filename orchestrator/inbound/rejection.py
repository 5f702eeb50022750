"""The one shape of a ``message.rejected`` event, whoever rejects the message.

The engine, the agent runner and the infra report each refuse bad input
once, term the message and publish why on the rejection subject. They used
to build the event three times, with drifting fields (one had no excerpt,
one no REQ, one kept a NUL that jsonb refuses). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg

EXCERPT_BYTES = 2048


@dataclass(frozen=True)
class Rejection:
    """Why one stored message was refused, and where it was stored."""

    reason_code: str
    reason: str
    subject: str
    stream: str
    seq: int
    by: str  # the service that refused it: engine, runner, infra-report
    req: str | None = None
    excerpt: str = ""

    @classmethod
    def of(
        cls, msg: Msg, reason_code: str, reason: str, *, by: str, req: str | None = None
    ) -> Rejection:
        meta = msg.metadata
        # jsonb cannot hold NUL: one in a bad payload failed the rejection's own
        # write, and the message was redelivered in a loop instead.
        excerpt = msg.data[:EXCERPT_BYTES].decode("utf-8", "replace").replace("\x00", "\ufffd")
        return cls(
            reason_code=reason_code,
            reason=reason,
            subject=msg.subject.replace("\x00", "\ufffd"),
            stream=meta.stream,
            seq=meta.sequence.stream,
            by=by,
            req=req,
            excerpt=excerpt,
        )

    @property
    def msg_id(self) -> str:
        """The publish's ``Nats-Msg-Id``: a stored message is rejected once."""
        return f"reject:{self.stream}:{self.seq}"

    @property
    def detail(self) -> str:
        return f"{self.reason_code}: {self.reason}"

    def event(self, timestamp: str | None = None) -> dict[str, Any]:
        """The event published on the pipeline's ``rejection`` subject."""
        return {
            "eventType": "message.rejected",
            "reason_code": self.reason_code,
            "reason": self.reason,
            "subject": self.subject,
            "stream": self.stream,
            "stream_seq": self.seq,
            "req_number": self.req,
            "by": self.by,
            "timestamp": timestamp or datetime.now(UTC).isoformat(),
            "payload_excerpt": self.excerpt,
        }
