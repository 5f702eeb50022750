"""Reading a requirement: NATS, OWNER_REQUESTS.md and the API all parse here.

Pure: no database. ``orchestrator.engine.requirements.submit`` stores one.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from orchestrator.core import strict_json
from orchestrator.inbound.notices import NoticeError, check_storable, validate_req_id

_PRIORITY = re.compile(r"^\s*[Pp]?([0-3])\s*$")
_PRIORITY_WORDS = {"critical": 0, "urgent": 0, "high": 1, "medium": 2, "normal": 2, "low": 3}


def parse_priority(value: object) -> int:
    """P0..P3 (or 0..3, or a word) to 0..3; P0 is the most urgent."""
    if value is None or value == "":
        return 2
    if isinstance(value, bool):
        raise ValueError("priority must be P0..P3")
    if isinstance(value, int):
        if 0 <= value <= 3:
            return value
        raise ValueError("priority must be P0..P3")
    text = str(value)
    match = _PRIORITY.match(text)
    if match:
        return int(match.group(1))
    if text.strip().lower() in _PRIORITY_WORDS:
        return _PRIORITY_WORDS[text.strip().lower()]
    raise ValueError(f"priority {text!r} is not P0..P3")


def priority_label(value: object) -> object:
    """0..3 as "P0".."P3", the one form agogd shows (Postgres keeps the number,
    which orders dispatch); anything else is returned as it is."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        return f"P{value}"
    return value


class Requirement(BaseModel):
    """A requirement as submitted (NATS intake message or API body)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    req_number: str
    title: str = ""
    priority: int = 2
    owner: str | None = None
    requirements: list[str] = Field(default_factory=list)
    parent: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for alias in ("reqNumber", "reqId", "req_id", "req"):
                if "req_number" not in data and alias in data:
                    data["req_number"] = data.pop(alias)
            if "parent" not in data:
                data["parent"] = data.get("parent_req") or data.get("parentReq")
        return data

    @field_validator("req_number", "parent", mode="before")
    @classmethod
    def _req(cls, value: Any) -> Any:
        return None if value is None else validate_req_id(value)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> int:
        return parse_priority(value)

    @field_serializer("priority")
    def _priority_out(self, value: int) -> str:
        # Stored as given back by the API: "P2", like every other output.
        return f"P{value}"

    @field_validator("requirements", mode="before")
    @classmethod
    def _requirements(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [line.strip("- ").strip() for line in value.splitlines() if line.strip()]
        return value


class IntakeError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


def json_object(data: bytes, max_bytes: int, what: str) -> dict[str, Any]:
    """The JSON object in a message, or IntakeError(too_large|invalid_json|wrong_schema)."""
    if len(data) > max_bytes:
        raise IntakeError("too_large", f"{len(data)} bytes > limit {max_bytes}")
    try:
        raw = strict_json.loads(data)
    except ValueError as exc:
        raise IntakeError("invalid_json", str(exc)) from None
    if not isinstance(raw, dict):
        raise IntakeError("wrong_schema", f"{what} is a JSON object")
    # Refuse here what Postgres (or the JSON dump) cannot hold: NUL, a lone
    # surrogate (not_utf8), nesting past 32. Found later, it failed the whole
    # batch and the message was redelivered in a loop instead of rejected once.
    try:
        check_storable(raw)
    except NoticeError as exc:
        raise IntakeError(exc.reason, exc.message) from None
    return raw


def parse_requirement(data: bytes, max_bytes: int) -> Requirement:
    """Validate an intake message; raises IntakeError with a reason code."""
    raw = json_object(data, max_bytes, "a requirement")
    try:
        return Requirement.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "body"
        reason = (
            "invalid_req_id"
            if where == "req_number"
            and raw.get("req_number", raw.get("reqNumber", raw.get("reqId"))) is not None
            else "wrong_schema"
        )
        raise IntakeError(reason, f"{where}: {first.get('msg', 'invalid')}") from None
