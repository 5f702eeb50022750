"""Fuzzing every entry point that reads outside input, through the real parsers.

Each parser either returns a value or raises its one declared error type;
nothing else ever escapes. Thousands of cases per run: raw bytes, random
JSON, and near-valid documents with fields replaced by hostile values
(subject and path injection, huge numbers, NaN, deep nesting, control
characters).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.core import registry
from orchestrator.inbound import intake
from orchestrator.inbound.messages import Rejected, parse_decision
from orchestrator.inbound.notice_extract import NoNotice, extract_notice
from orchestrator.inbound.notices import NoticeError, parse_notice, validate_req_id
from orchestrator.inbound.owner_requests import parse_report
from workers.release.plan import listed_files, path_problem
from workers.runner.service import BadAssignment, parse_assignment

P = registry.load()
AGENTS = P.agents
MAX = 64 * 1024
MANY = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))

HOSTILE_TEXT = st.sampled_from(
    [
        "REQ-1.>",
        "REQ-*",
        "REQ 1",
        "../../etc/passwd",
        "/etc/passwd",
        "REQ-1\nREQ-2",
        "agog.>",
        "",
        " ",
        "\x00",
        "😀" * 50,
        "a" * 5000,
        "$(rm -rf /)",
        "`id`",
        "REQ-1; DROP TABLE workflow_state",
        "C:\\windows",
        "null",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    HOSTILE_TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True, default=str).encode()


def near_valid(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """The base document with some fields replaced, removed or added."""
    keys = st.sampled_from([*sorted(base), "extra", "__proto__", "reqNumber", "agent_id"])
    edits = st.lists(st.tuples(keys, st.one_of(JSON_VALUES, st.just(KeyError))), max_size=4)

    def apply(changes: list[tuple[str, Any]]) -> bytes:
        doc = dict(base)
        for key, value in changes:
            if value is KeyError:
                doc.pop(key, None)
            else:
                doc[key] = value
        return _dumps(doc)

    return edits.map(apply)


def inputs(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200),
        JSON_VALUES.map(_dumps),
        near_valid(base),
        near_valid(base).map(lambda b: b[: len(b) // 2]),  # truncated
        st.just(b"[" * 5000 + b"]" * 5000),  # deep nesting
        st.just(b'{"a": "' + b"x" * (MAX + 10) + b'"}'),  # oversize
    )


NOTICE = {
    "agent": "roy",
    "req_number": "REQ-FUZZ-1",
    "status": "COMPLETE",
    "summary": "done",
    "files_modified": ["a.py"],
}
INTAKE = {"req_number": "REQ-FUZZ-1", "title": "t", "priority": "P1", "requirements": ["r"]}
DECISION = {"req_number": "REQ-FUZZ-1", "decision": "RETRY", "reasoning": "why"}
ASSIGNMENT = {"req_number": "REQ-FUZZ-1", "agent": "roy", "attempt": 1}


@MANY
@given(inputs(NOTICE), st.sampled_from([None, "roy", "sylvia"]), HOSTILE_TEXT | st.just("REQ-1"))
def test_notices(data: bytes, subject_agent: str | None, subject_req: str) -> None:
    try:
        notice = parse_notice(
            data,
            known_agents=AGENTS,
            max_bytes=MAX,
            subject_agent=subject_agent,
            subject_req=subject_req,
        )
    except NoticeError as exc:
        assert exc.reason and exc.message
        return
    assert notice.agent in AGENTS
    validate_req_id(notice.req_number)  # only ever a safe id


@MANY
@given(inputs(INTAKE))
def test_intake(data: bytes) -> None:
    try:
        req = intake.parse_requirement(data, MAX)
    except intake.IntakeError as exc:
        assert exc.reason and exc.message
        return
    validate_req_id(req.req_number)


@MANY
@given(inputs(DECISION), HOSTILE_TEXT | st.just("REQ-FUZZ-1"))
def test_decisions(data: bytes, subject_req: str) -> None:
    try:
        decision = parse_decision(data, subject_req, P, MAX)
    except Rejected as exc:
        assert exc.reason and exc.message
        return
    validate_req_id(decision.req_number)


@MANY
@given(inputs(ASSIGNMENT))
def test_assignments(data: bytes) -> None:
    stage = P.stage_for_agent("roy")
    assert stage is not None
    try:
        value = parse_assignment(data, stage)
    except BadAssignment as exc:
        assert str(exc)
        return
    validate_req_id(value["req_number"])
    assert value["agent"] == "roy" and value["attempt"] >= 1


@MANY
@given(
    st.one_of(
        st.text(max_size=400),
        JSON_VALUES.map(lambda v: "noise\n```json\n" + json.dumps(v, default=str) + "\n```\n"),
        near_valid(NOTICE).map(lambda b: "thinking...\n" + b.decode() + "\ntrailing {"),
    )
)
def test_agent_output(text: str) -> None:
    try:
        found = extract_notice(text)
    except NoNotice as exc:
        assert exc.reason
        return
    assert isinstance(found, dict)


ENTRY = "### {req}: {title}\n**Status**: {status}\n**Priority**: {prio}\n**Owner**: o\n\n---\n"


@MANY
@given(
    st.lists(
        st.tuples(HOSTILE_TEXT | st.just("REQ-OK-1"), st.text(max_size=30), SCALARS, SCALARS),
        max_size=6,
    ),
    st.text(max_size=200),
)
def test_owner_requests_markdown(entries: list[tuple[str, str, Any, Any]], noise: str) -> None:
    text = noise + "\n".join(
        ENTRY.format(req=r, title=t, status=s, prio=p) for r, t, s, p in entries
    )
    parsed, problems = parse_report(text)
    for entry in parsed:
        validate_req_id(entry.req_number)
    assert all(isinstance(p, str) for p in problems)


@MANY
@given(st.one_of(HOSTILE_TEXT, st.text(max_size=80)))
def test_req_ids_never_carry_subject_or_path_syntax(value: str) -> None:
    try:
        req = validate_req_id(value)
    except ValueError:
        return
    assert not set(req) & set(".*> /\\\x00\n\t") and ".." not in req


@MANY
@given(st.lists(JSON_VALUES, max_size=6))
def test_file_lists_never_admit_an_escaping_path(values: list[Any]) -> None:
    listed = listed_files([_Deliverable({"files_modified": values})])
    for value in listed:
        if path_problem(value) is None:
            assert isinstance(value, str) and not value.startswith("/")
            assert ".." not in value.split("/") and not value.startswith(".git")


class _Deliverable:
    stage, agent = 2, "roy"

    def __init__(self, deliverable: dict[str, Any]) -> None:
        self.deliverable = deliverable
