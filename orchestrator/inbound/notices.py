"""Completion notices: read what agents publish, leniently, into one strict shape.

Agents are language models. The same notice arrives as bare JSON, as a ```json
fence inside free text (CRLF line ends included), with aliased keys, nested
``changes`` and a dozen spellings of a status. The old daemon matched notices
with regexes and took the first match, so nested JSON broke it and a rejection
followed by an approval read as a rejection. Here the last notice wins, every
variant seen in the wild is normalised, and every refusal carries a short
machine reason. Pure logic: no I/O (but the warning ``parse_notice`` logs for
a field it had to fix or drop).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.core import strict_json
from orchestrator.core.safe_text import one_line
from orchestrator.inbound.notice_extract import NoNotice, extract_notice
from orchestrator.runtime.logs import get_logger

__all__ = [
    "REQ_ID_MAX",
    "CompletionNotice",
    "InvalidReqId",
    "NoticeError",
    "NoticeReason",
    "NoticeStatus",
    "Verdict",
    "extract_json",
    "notice_digest",
    "parse_deliverable_subject",
    "parse_notice",
    "validate_req_id",
]

log = get_logger("agogd.notices")

# --- REQ ids ------------------------------------------------------------------
REQ_ID_MAX = 64
_REQ_ID = re.compile(r"REQ-[A-Za-z0-9][A-Za-z0-9_-]*")
_FORBIDDEN = (
    (".", "the NATS subject token separator"),
    ("*", "a NATS wildcard"),
    (">", "a NATS wildcard"),
    ("/", "a path separator"),
    ("\\", "a path separator"),
)


class InvalidReqId(ValueError):
    """A REQ id that is unsafe in a NATS subject or a file path."""


def validate_req_id(value: object) -> str:
    """Return ``value`` if it is a safe REQ id, else raise InvalidReqId saying why.

    The id becomes a NATS subject token and part of file paths, so dots,
    wildcards, separators and whitespace would route or write elsewhere.
    """
    if type(value) is str and len(value) <= REQ_ID_MAX and _REQ_ID.fullmatch(value):
        return value  # the usual case, in one match; the checks below say why not
    if not isinstance(value, str):
        raise InvalidReqId(f"REQ id must be a string, not {_json_type(value)}")
    if not value:
        raise InvalidReqId("REQ id is empty")
    if len(value) > REQ_ID_MAX:
        raise InvalidReqId(f"REQ id is {len(value)} characters long; the limit is {REQ_ID_MAX}")
    if any(ch.isspace() for ch in value):
        raise InvalidReqId(f"REQ id {_short(value)} contains whitespace")
    for ch, why in _FORBIDDEN:
        if ch in value:
            raise InvalidReqId(f"REQ id {_short(value)} contains {ch!r}, {why}")
    if not value.startswith("REQ-"):
        raise InvalidReqId(f"REQ id {_short(value)} must start with 'REQ-'")
    if _REQ_ID.fullmatch(value) is None:
        raise InvalidReqId(
            f"REQ id {_short(value)} must continue after 'REQ-' with an ASCII letter or digit,"
            " then only ASCII letters, digits, '_' and '-'"
        )
    return str(value)


def _is_req_id(value: str) -> bool:
    try:
        validate_req_id(value)
    except InvalidReqId:
        return False
    return True


# --- errors -------------------------------------------------------------------
NoticeReason = Literal[
    "too_large",
    "not_utf8",
    "invalid_json",
    "no_json",
    "wrong_schema",
    "unknown_agent",
    "invalid_req_id",
]


class NoticeError(ValueError):
    """A notice refused for good: ``reason`` is a short code for metrics and events."""

    def __init__(self, reason: NoticeReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: NoticeReason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


# --- finding the JSON in free text --------------------------------------------
_MAX_DEPTH = 32  # deeper payloads are refused rather than risk recursion later


_loads = strict_json.loads


def _load_object(text: str) -> dict[str, Any] | None:
    try:
        value = _loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def extract_json(text: str) -> dict[str, Any]:
    """Find the notice in free text: the last fenced JSON object, else the last bare
    top-level one (see orchestrator.inbound.notice_extract)."""
    try:
        return extract_notice(text)
    except NoNotice as exc:
        raise NoticeError(exc.code, exc.reason) from None


# --- normalisation tables -----------------------------------------------------
NoticeStatus = Literal["COMPLETE", "BLOCKED", "FAILED", "IN_PROGRESS"]
Verdict = Literal["APPROVED", "APPROVED_WITH_CONDITIONS", "REJECTED"]

_STATUSES: dict[str, NoticeStatus] = {
    **dict.fromkeys(
        ("COMPLETE", "COMPLETED", "DONE", "SUCCESS", "SUCCEEDED", "APPROVED"), "COMPLETE"
    ),
    "APPROVED_WITH_CONDITIONS": "COMPLETE",
    "BLOCKED": "BLOCKED",
    **dict.fromkeys(("FAILED", "FAIL", "FAILURE", "ERROR"), "FAILED"),
    **dict.fromkeys(("IN_PROGRESS", "INPROGRESS", "RUNNING", "HEARTBEAT"), "IN_PROGRESS"),
}
_VERDICTS: dict[str, Verdict] = {
    "APPROVED": "APPROVED",
    "APPROVE": "APPROVED",
    "APPROVED_WITH_CONDITIONS": "APPROVED_WITH_CONDITIONS",
    "APPROVE_WITH_CONDITIONS": "APPROVED_WITH_CONDITIONS",
    "REJECTED": "REJECTED",
    "REJECT": "REJECTED",
}
_AGENT_KEYS = ("agent", "agent_id", "agentId")
_REQ_KEYS = ("req_number", "reqNumber", "reqId", "req_id", "req")
_ATTEMPT_KEYS = ("attempt", "stage_attempt")
_FILE_KEYS = ("files_created", "files_modified", "files_deleted")
_CHANGE_KEYS = (*_FILE_KEYS, "tables_created", "migrations_added", "key_changes")
_TEXT_LIST_KEYS = ("containers_affected", "required_fixes", "issues_found", "blockers")
_QA_FAILURE_KEYS = ("qa_failures", "failures", "test_failures")
_REWORK_KEYS = ("rework_agents", "send_back_to", "assign_to")
_ITEM_TEXT_KEYS = ("description", "issue", "title")
_OPTIONAL_TEXT = ("deliverable", "commit_sha", "deployed_at", "deployed_by")
# Berry's fields go into workflow_state and onto OWNER_REQUESTS.md lines.
_COMMIT_SHA = re.compile(r"[0-9a-fA-F]{4,64}")
DEPLOYED_BY_MAX = 120
_DEPLOYED_AT_MAX = 64


def _token(value: str) -> str:
    """'approved with-conditions ' -> 'APPROVED_WITH_CONDITIONS'."""
    return re.sub(r"[\s-]+", "_", value.strip()).upper()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _item_text(item: object) -> str:
    """One list entry as text: objects give their description/issue/title or JSON."""
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        for key in _ITEM_TEXT_KEYS:
            if isinstance(item.get(key), str) and item[key].strip():
                return str(item[key])
    return json.dumps(item, sort_keys=True, ensure_ascii=False, default=str)


def _texts(value: object) -> list[str]:
    """A list of strings from a string, a list of strings/objects, or anything else."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, list | tuple) else [value]
    return [_item_text(item) for item in items if item is not None and item != ""]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _take(data: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """Pop and return the first alias in ``keys`` that has a value; others stay as extras."""
    for key in keys:
        value = data.get(key)
        if value is not None and value != "":
            return data.pop(key)
    return None


def _first_present(data: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = data.get(key)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value
    return None


def _lower_name(value: object) -> str | None:
    if isinstance(value, list):  # "next_agent": ["roy", "jen"]
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    if not isinstance(value, str):
        return None
    return value.strip().lower() or None


def _is_count(value: object) -> bool:
    """A whole number of files (``files_modified: 42``), not a list of them."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _as_text(value: object) -> object:
    """Numbers become text (a numeric commit sha or date); other values pass on."""
    return str(value) if _is_number(value) else value


class AgentUsage(BaseModel):
    """What an attempt's agent used, under a notice's ``usage`` (the runner
    writes it from the CLI's structured output; any agent may send it).

    Lenient: fields that are not what they should be are dropped, never the
    notice (an unreadable usage must not fail a stage whose work is done).
    """

    model_config = ConfigDict(extra="ignore")

    cli: str | None = Field(default=None, max_length=40)
    model: str | None = Field(default=None, max_length=200)
    session_id: str | None = Field(default=None, max_length=200)
    input_tokens: int | None = Field(default=None, ge=0, lt=2**62)
    output_tokens: int | None = Field(default=None, ge=0, lt=2**62)
    cache_read_tokens: int | None = Field(default=None, ge=0, lt=2**62)
    cache_write_tokens: int | None = Field(default=None, ge=0, lt=2**62)
    cost_usd: float | None = Field(default=None, ge=0, lt=1e6, allow_inf_nan=False)
    turns: int | None = Field(default=None, ge=0, lt=2**31)
    duration_s: float | None = Field(default=None, ge=0, lt=1e9, allow_inf_nan=False)

    @property
    def tokens(self) -> dict[str, int]:
        """Token counts by kind (input, output, cache_read, cache_write)."""
        counts = {
            "input": self.input_tokens,
            "output": self.output_tokens,
            "cache_read": self.cache_read_tokens,
            "cache_write": self.cache_write_tokens,
        }
        return {kind: n for kind, n in counts.items() if n}


class CompletionNotice(BaseModel):
    """A completion notice, normalised from every shape agents have used.

    Unknown fields are kept (``extra="allow"``) so history shows what the
    agent actually said.
    """

    model_config = ConfigDict(extra="allow")

    agent: str
    req_number: str
    status: NoticeStatus
    deliverable: str | None = None
    summary: str = ""
    files_created: list[str] = Field(default_factory=list)
    files_modified: list[str] = Field(default_factory=list)
    files_deleted: list[str] = Field(default_factory=list)
    files_changed_count: int | None = None
    tables_created: list[str] = Field(default_factory=list)
    migrations_added: list[str] = Field(default_factory=list)
    key_changes: list[str] = Field(default_factory=list)
    containers_affected: list[str] = Field(default_factory=list)
    next_agent: str | None = None
    # Sylvia (critique)
    critique_verdict: Verdict | None = None
    required_fixes: list[str] = Field(default_factory=list)
    issues_found: list[str] = Field(default_factory=list)
    blockers: list[str] = Field(default_factory=list)
    # Billy (QA)
    tests_passed: bool | int | None = None
    tests_failed: int | None = None
    qa_failures: list[str] = Field(default_factory=list)
    rework_agents: list[str] = Field(default_factory=list)
    # Berry (DevOps)
    commit_sha: str | None = None
    deployed_at: str | None = None
    deployed_by: str | None = None
    # False: Berry committed and tested but did not deploy (no engine, rollback).
    deployed: bool | None = None
    # Berry: the REQ's branch conflicts with the integration branch (files,
    # hunks, integration_head, stages): a rework, not a retry.
    conflict: dict[str, Any] | None = None
    attempt: int | None = None
    usage: AgentUsage | None = None
    # The object as the agent published it (after fence extraction), with the
    # agent and REQ filled from the subject where it left them out.
    _published: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def published(self) -> dict[str, Any]:
        """What the agent said, every field under its own name (the cache holds this)."""
        return self._published or self.model_dump(mode="json")

    def __eq__(self, other: object) -> bool:
        """Equal when they say the same, however each was spelled when published."""
        if not isinstance(other, CompletionNotice):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # mutable, as pydantic models are

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        """Fold aliases, nested ``changes`` and numeric counts into the canonical keys."""
        if not isinstance(data, Mapping):
            return data  # pydantic reports the wrong type
        d: dict[str, Any] = dict(data)
        for canonical, aliases in (
            ("agent", _AGENT_KEYS),
            ("req_number", _REQ_KEYS),
            ("attempt", _ATTEMPT_KEYS),
        ):
            if (value := _take(d, aliases)) is not None:
                d[canonical] = value
        _fold_changes(d)
        _fold_texts(d)
        _fold_verdict(d)
        _fold_qa(d)
        return d

    @field_validator("usage", mode="before")
    @classmethod
    def _usage(cls, value: Any) -> AgentUsage | None:
        """Keep what is readable of the usage; drop the rest, never the notice."""
        if not isinstance(value, Mapping):
            return None
        data = {
            k: v
            for k, v in value.items()
            if k in AgentUsage.model_fields and v is not None and not isinstance(v, bool)
        }
        while True:
            try:
                return AgentUsage.model_validate(data)
            except ValidationError as exc:
                bad = {str(err["loc"][0]) for err in exc.errors() if err.get("loc")}
                if not bad & set(data):
                    return None
                for key in bad:
                    data.pop(key, None)

    @field_validator("agent", mode="before")
    @classmethod
    def _agent(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("agent is empty")
            return value.strip().lower()
        return value

    @field_validator("req_number", mode="before")
    @classmethod
    def _req(cls, value: Any) -> str:
        return validate_req_id(value.strip() if isinstance(value, str) else value)

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> str:
        if not isinstance(value, str) or _token(value) not in _STATUSES:
            raise ValueError(
                f"unknown status {_short(value)}; expected COMPLETE, BLOCKED, FAILED or IN_PROGRESS"
            )
        return _STATUSES[_token(value)]

    @field_validator("critique_verdict", mode="before")
    @classmethod
    def _verdict(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if not isinstance(value, str) or _token(value) not in _VERDICTS:
            raise ValueError(
                f"unknown verdict {_short(value)}; expected APPROVED,"
                " APPROVED_WITH_CONDITIONS or REJECTED"
            )
        return _VERDICTS[_token(value)]

    @field_validator("next_agent", mode="before")
    @classmethod
    def _next_agent(cls, value: Any) -> Any:
        return _lower_name(value) if isinstance(value, str | list) else value

    @field_validator("attempt", "tests_failed", "files_changed_count", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number, not true/false")
        return value

    @field_validator("attempt")
    @classmethod
    def _attempt_fits(cls, value: int | None) -> int | None:
        # Stored in an int column: a bigger one failed the batch after the
        # parser took it, and the notice was redelivered in a loop.
        if value is not None and not -(2**31) <= value < 2**31:
            raise ValueError(f"attempt {value} is out of range")
        return value

    @model_validator(mode="after")
    def _deployment_fields(self) -> CompletionNotice:
        """Berry's commit, deployer and time end up in workflow_state and on
        OWNER_REQUESTS.md lines, where a second line (or an escape sequence)
        would forge an entry or break every mirror pass. A value that cannot
        stand there is fixed or dropped, and ``field_notes`` says so: refusing
        the notice would leave a REQ whose deploy is done to time out."""
        notes = _fix_deployment(self)
        if notes:
            assert self.__pydantic_extra__ is not None  # extra="allow"
            self.__pydantic_extra__["field_notes"] = notes
        return self

    @property
    def field_notes(self) -> dict[str, str]:
        """The fields the parser fixed or dropped, and why (empty: none)."""
        notes = (self.model_extra or {}).get("field_notes")
        return dict(notes) if isinstance(notes, Mapping) else {}

    @property
    def qa_passed(self) -> bool:
        """QA passed: COMPLETE, no failed tests, and tests_passed not false (nor 0 with failures).

        Spelled out because Billy reports in several ways: a boolean, counts,
        or a list of failures.
        """
        if self.status != "COMPLETE" or self.tests_failed or self.tests_passed is False:
            return False
        zero_passed = type(self.tests_passed) is int and self.tests_passed == 0
        return not (zero_passed and self.qa_failures)

    @property
    def approved(self) -> bool:
        """The critique let the work through (conditions are carried as fixes)."""
        return self.critique_verdict in ("APPROVED", "APPROVED_WITH_CONDITIONS")


def _fix_deployment(notice: CompletionNotice) -> dict[str, str]:
    """Make commit_sha a hex sha (or nothing), deployed_by one plain line of
    bounded length, deployed_at one short line; what changed, by field."""
    notes: dict[str, str] = {}
    if notice.commit_sha is not None:
        sha = notice.commit_sha.strip()
        if _COMMIT_SHA.fullmatch(sha):
            notice.commit_sha = sha
        else:
            notes["commit_sha"] = (
                f"dropped {_short(notice.commit_sha)}: not a hex commit sha of 4 to 64 characters"
            )
            notice.commit_sha = None
    if notice.deployed_by is not None:
        by = one_line(notice.deployed_by, DEPLOYED_BY_MAX)
        if by != notice.deployed_by.strip():
            notes["deployed_by"] = (
                f"{_short(notice.deployed_by)} made one line without control characters,"
                f" at most {DEPLOYED_BY_MAX} characters"
            )
        notice.deployed_by = by or None
    if notice.deployed_at is not None:
        at = notice.deployed_at.strip()
        try:
            datetime.fromisoformat(at)
        except ValueError:
            notes["deployed_at"] = (
                f"{_short(notice.deployed_at)} is not an ISO 8601 timestamp:"
                " the time agogd applies the notice is recorded"
            )
            at = one_line(at, _DEPLOYED_AT_MAX) or "unknown"  # still says it was deployed
        notice.deployed_at = at
    return notes


def _fold_changes(d: dict[str, Any]) -> None:
    """Merge top-level and ``changes.*`` lists; a number of files becomes a count."""
    changes = d.get("changes")
    sources = [d]
    if isinstance(changes, Mapping):
        changes = dict(changes)
        sources.append(changes)
    count = d.pop("files_changed_count", None)
    for key in (*_CHANGE_KEYS, "files_changed"):
        items: list[str] = []
        present = False
        for source in sources:
            if key not in source:
                continue
            present = True
            value = source.pop(key)
            if key in ("files_modified", "files_changed") and _is_count(value):
                count = value if count is None else count
            else:
                items.extend(_texts(value))
        if key == "files_changed":
            if items:
                d["files_modified"] = _unique([*d.get("files_modified", []), *items])
        elif present:
            d[key] = _unique(items)
    if count is not None:
        d["files_changed_count"] = int(count) if _is_count(count) else count
    if isinstance(changes, dict):
        if changes:
            d["changes"] = changes  # what we did not understand stays visible
        else:
            d.pop("changes")


def _fold_texts(d: dict[str, Any]) -> None:
    for key in _TEXT_LIST_KEYS:
        if key in d:
            d[key] = _texts(d[key])
    summary = d.get("summary")
    if summary is None:
        d.pop("summary", None)
    elif isinstance(summary, list):
        d["summary"] = "\n".join(_texts(summary))
    elif isinstance(summary, Mapping):
        d["summary"] = _item_text(summary)
    else:
        d["summary"] = _as_text(summary)
    for key in _OPTIONAL_TEXT:
        if key in d:
            d[key] = _as_text(d[key]) if d[key] != "" else None


def _fold_verdict(d: dict[str, Any]) -> None:
    """Sylvia's verdict may come as ``decision`` or ``verdict``; status APPROVED implies it.

    Unrecognised ``decision``/``verdict`` values stay as extras and leave the
    verdict unset (the workflow escalates); a bad ``critique_verdict`` is an error.
    """
    if d.get("critique_verdict") not in (None, ""):
        return
    for key in ("decision", "verdict"):
        value = d.get(key)
        if isinstance(value, str) and _token(value) in _VERDICTS:
            d["critique_verdict"] = _VERDICTS[_token(value)]
            d.pop(key)
            return
    status = d.get("status")
    if isinstance(status, str) and _token(status) in ("APPROVED", "APPROVED_WITH_CONDITIONS"):
        d["critique_verdict"] = _VERDICTS[_token(status)]


def _fold_qa(d: dict[str, Any]) -> None:
    """Billy's failures and send-back targets, from every key they were seen under."""
    reported = any(key in d for key in _QA_FAILURE_KEYS)
    failures = [text for key in _QA_FAILURE_KEYS for text in _texts(d.pop(key, None))]
    tests_failed = d.get("tests_failed")
    if isinstance(tests_failed, list):  # a list of failed tests rather than a count
        failures.extend(_texts(tests_failed))
        d["tests_failed"] = len(tests_failed)
        reported = True
    if reported:
        d["qa_failures"] = _unique(failures)
    if "tests_passed" not in d and isinstance(d.get("qa_passed"), bool):
        d["tests_passed"] = d["qa_passed"]
    names = [name for key in _REWORK_KEYS for name in _texts(d.pop(key, None))]
    names.extend(_texts(d.get("next_agent")))
    rework = [n.strip().lower() for n in names]
    # Every name it gives; which of them a gate may send work back to is the
    # registry's word (Stage.rework_to), applied where the notice meets its stage.
    d["rework_agents"] = _unique(n for n in rework if n)


# --- the entry points ---------------------------------------------------------
def _decode(data: bytes | bytearray | memoryview | str, max_bytes: int) -> str:
    if isinstance(data, str):
        size = len(data) if len(data) > max_bytes else len(data.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise NoticeError("too_large", f"{size} bytes or more; the limit is {max_bytes}")
        text = data
    else:
        raw = bytes(data)
        if len(raw) > max_bytes:
            raise NoticeError("too_large", f"{len(raw)} bytes; the limit is {max_bytes}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoticeError("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    return text.removeprefix("\ufeff")


def _load_payload(text: str) -> dict[str, Any]:
    """Bare JSON first (the common case); else dig the notice out of free text."""
    stripped = text.strip()
    if not stripped:
        raise NoticeError("no_json", "the payload is empty")
    try:
        value = _loads(stripped)
    except ValueError:
        return extract_json(text)
    if not isinstance(value, dict):
        raise NoticeError("wrong_schema", f"a notice is a JSON object, not {_json_type(value)}")
    return value


def check_storable(payload: dict[str, Any]) -> None:
    """Refuse what Postgres jsonb cannot hold (NUL, lone surrogates) or absurd nesting."""
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise NoticeError("wrong_schema", f"text {_short(value)} contains a NUL character")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise NoticeError(
                    "not_utf8", f"text {_short(value)} holds an unpaired surrogate"
                ) from None
        elif isinstance(value, dict | list):
            if depth > _MAX_DEPTH:
                raise NoticeError("wrong_schema", f"nested deeper than {_MAX_DEPTH} levels")
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)


def _schema_error(exc: ValidationError) -> NoticeError:
    """One concise line naming the fields; a bad REQ id gets its own reason."""
    errors = exc.errors(include_url=False)
    for err in errors:
        if isinstance(err.get("ctx", {}).get("error"), InvalidReqId):
            return NoticeError("invalid_req_id", str(err["ctx"]["error"]))
    parts = []
    for err in errors[:4]:
        where = ".".join(str(part) for part in err["loc"]) or "notice"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    more = f" (+{len(errors) - 4} more)" if len(errors) > 4 else ""
    return NoticeError("wrong_schema", "; ".join(parts) + more)


def parse_notice(
    data: bytes | str,
    *,
    known_agents: Collection[str],
    max_bytes: int = 1_048_576,
    subject_agent: str | None = None,
    subject_req: str | None = None,
) -> CompletionNotice:
    """Parse one published notice or raise NoticeError; never anything else.

    ``subject_agent``/``subject_req`` come from ``agog.deliverables.<agent>.<role>.<REQ>``:
    they fill an agent or REQ the payload omits, and must agree with it when both
    are given. A subject token that is not a REQ id (Miki's feature names) is
    only used to fill, never compared.
    """
    payload = _load_payload(_decode(data, max_bytes))
    check_storable(payload)
    if subject_agent and _first_present(payload, _AGENT_KEYS) is None:
        payload["agent"] = subject_agent
    if subject_req and _first_present(payload, _REQ_KEYS) is None:
        payload["req_number"] = subject_req
    try:
        notice = CompletionNotice.model_validate(payload)
    except ValidationError as exc:
        raise _schema_error(exc) from None
    notice._published = payload  # validation copies what it folds: payload is as sent
    known = {name.strip().lower() for name in known_agents}
    if notice.agent not in known:
        raise NoticeError(
            "unknown_agent",
            f"unknown agent {_short(notice.agent)}; known: {', '.join(sorted(known))}",
        )
    if subject_agent and subject_agent.strip().lower() != notice.agent:
        raise NoticeError(
            "wrong_schema",
            f"agent mismatch: subject says {_short(subject_agent)}, payload says"
            f" {_short(notice.agent)}",
        )
    if subject_req and _is_req_id(subject_req) and subject_req != notice.req_number:
        raise NoticeError(
            "wrong_schema",
            f"REQ mismatch: subject says {subject_req}, payload says {notice.req_number}",
        )
    if notice.field_notes:
        log.warning(
            "notice.fields_fixed",
            req_number=notice.req_number,
            agent=notice.agent,
            fields=notice.field_notes,
        )
    return notice


def notice_digest(normalized: Mapping[str, Any]) -> str:
    """A digest of a notice's normalised content, its attempt left out: two
    copies of one notice (a retried publish, a replay) have the same digest."""
    body = {k: v for k, v in normalized.items() if k != "attempt"}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def parse_deliverable_subject(subject: str) -> tuple[str, str, str] | None:
    """``agog.deliverables.<agent>.<role>.<REQ>`` -> (agent, role, req); None otherwise."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[:2] != ["agog", "deliverables"]:
        return None
    agent, role, req = parts[2:]
    if any(not token or token in ("*", ">") or token != token.strip() for token in parts[2:]):
        return None
    return agent, role, req


# --- small helpers ------------------------------------------------------------
def _short(value: object, limit: int = 60) -> str:
    """A repr short enough for a log line or an error event."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array"
    return names.get(type(value), type(value).__name__)
