"""Completion notices: every shape seen in the wild parses, every refusal has a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core import registry
from orchestrator.inbound.messages import completed_event
from orchestrator.inbound.notices import (
    REQ_ID_MAX,
    CompletionNotice,
    InvalidReqId,
    NoticeError,
    extract_json,
    parse_deliverable_subject,
    parse_notice,
    validate_req_id,
)

AGENTS = ("cynthia", "sylvia", "roy", "jen", "billy", "priya", "berry", "tim", "miki")

PIPELINE = registry.load()


def parse(data: bytes | str, **kwargs: Any) -> CompletionNotice:
    return parse_notice(data, known_agents=AGENTS, **kwargs)


def refused(data: bytes | str, **kwargs: Any) -> NoticeError:
    with pytest.raises(NoticeError) as info:
        parse(data, **kwargs)
    return info.value


# --- REQ ids --------------------------------------------------------------------
@pytest.mark.parametrize(
    "req",
    ["REQ-ITEM-001", "REQ-1767924916115-9l233", "REQ-PO-12_b", "REQ-1", "REQ-" + "a" * 60],
)
def test_valid_req_ids(req: str) -> None:
    assert validate_req_id(req) == req


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("REQ-BAD.1", "'.'"),
        ("REQ-*", "'*'"),
        ("REQ-A>", "'>'"),
        ("REQ-A B", "whitespace"),
        ("REQ-A\tB", "whitespace"),
        ("REQ-A\n", "whitespace"),
        ("REQ-../x", "'.'"),
        ("REQ-a/b", "path separator"),
        ("REQ-a\\b", "path separator"),
        ("", "empty"),
        ("REQ-" + "a" * 61, "limit is 64"),
        ("req-item-001", "must start with 'REQ-'"),
        ("ITEM-001", "must start with 'REQ-'"),
        ("REQ-", "must continue"),
        ("REQ--x", "must continue"),
        ("REQ-é", "must continue"),
        (None, "must be a string"),
        (42, "must be a string"),
        (["REQ-1"], "must be a string"),
    ],
)
def test_invalid_req_ids_say_why(value: object, why: str) -> None:
    with pytest.raises(InvalidReqId, match=None) as info:
        validate_req_id(value)
    assert why in str(info.value)
    assert isinstance(info.value, ValueError)


def test_req_id_limit_is_inclusive() -> None:
    exact = "REQ-" + "x" * (REQ_ID_MAX - 4)
    assert validate_req_id(exact) == exact


# --- NoticeError ----------------------------------------------------------------
def test_notice_error_str_and_attributes() -> None:
    err = NoticeError("no_json", "nothing here")
    assert (err.reason, err.message, str(err)) == (
        "no_json",
        "nothing here",
        "no_json: nothing here",
    )
    assert isinstance(err, ValueError)


# --- shapes from the reference --------------------------------------------------
SEED_MIKI = """### Output 1: Completion Notice

```json
{
  "agent": "miki",
  "req_number": "REQ-XXX-YYY",
  "status": "COMPLETE",
  "deliverable": "nats://agog.features.devops.REQ-XXX-YYY",
  "summary": "Fixed NATS healthcheck. All containers healthy.",
  "files_modified": ["docker-compose.yml"],
  "containers_affected": ["agogsaas-nats", "agogsaas-frontend"],
  "next_agent": "billy"
}
```

### Output 2: Full Report (NATS)
"""

SEED_BERRY = {
    "agent": "berry",
    "req_number": "REQ-XXX-YYY",
    "status": "COMPLETE",
    "commit_sha": "abc1234567890",
    "files_changed": 42,
    "tests_passed": True,
    "deployed_at": "2025-12-23T22:45:00Z",
    "next_agent": "tim",
}


def test_seed_notice_in_markdown() -> None:
    n = parse(SEED_MIKI)
    assert (n.agent, n.req_number, n.status) == ("miki", "REQ-XXX-YYY", "COMPLETE")
    assert n.deliverable == "nats://agog.features.devops.REQ-XXX-YYY"
    assert n.files_modified == ["docker-compose.yml"]
    assert n.containers_affected == ["agogsaas-nats", "agogsaas-frontend"]
    assert n.next_agent == "billy"
    # Names only: which one a gate may send work back to is the registry's word.
    assert n.rework_agents == ["billy"]


def test_seed_notice_as_bare_json() -> None:
    body = {
        "agent": "roy",
        "req_number": "REQ-ITEM-001",
        "status": "BLOCKED",
        "deliverable": "nats://agog.deliverables.roy.backend.REQ-ITEM-001",
        "summary": "waiting for a schema decision",
        "files_modified": ["a.ts", "b.ts"],
        "containers_affected": [],
        "next_agent": "jen",
    }
    n = parse(json.dumps(body).encode())
    assert n.status == "BLOCKED"
    assert n.summary == "waiting for a schema decision"
    assert n.files_modified == ["a.ts", "b.ts"]


def test_host_listener_nested_changes_are_merged() -> None:
    body = {
        "agent": "roy",
        "req_number": "REQ-PO-12_b",
        "status": "COMPLETE",
        "deliverable": "nats://x",
        "summary": "backend",
        "files_modified": ["top.ts"],
        "changes": {
            "files_created": ["new.ts"],
            "files_modified": ["top.ts", "nested.ts"],
            "files_deleted": ["old.ts"],
            "tables_created": ["po_lines"],
            "migrations_added": ["V1.2.0__po.sql"],
            "key_changes": ["PO resolver"],
        },
    }
    n = parse(json.dumps(body))
    assert n.files_created == ["new.ts"]
    assert n.files_modified == ["top.ts", "nested.ts"]
    assert n.files_deleted == ["old.ts"]
    assert n.tables_created == ["po_lines"]
    assert n.migrations_added == ["V1.2.0__po.sql"]
    assert n.key_changes == ["PO resolver"]
    assert "changes" not in n.model_dump()


def test_unknown_keys_are_kept_including_unknown_changes() -> None:
    body = {
        "agent": "roy",
        "req_number": "REQ-1",
        "status": "COMPLETE",
        "confidence": 0.9,
        "changes": {"files_created": ["a"], "lines_added": 10},
    }
    dumped = parse(json.dumps(body)).model_dump(mode="json")
    assert dumped["confidence"] == 0.9
    assert dumped["changes"] == {"lines_added": 10}
    assert dumped["files_created"] == ["a"]


def sylvia(**extra: Any) -> str:
    return json.dumps({"agent": "sylvia", "req_number": "REQ-1", "status": "COMPLETE", **extra})


@pytest.mark.parametrize(
    ("fields", "verdict"),
    [
        ({"critique_verdict": "APPROVED"}, "APPROVED"),
        ({"critique_verdict": "APPROVED_WITH_CONDITIONS"}, "APPROVED_WITH_CONDITIONS"),
        ({"critique_verdict": "approved with conditions"}, "APPROVED_WITH_CONDITIONS"),
        ({"critique_verdict": "REJECTED"}, "REJECTED"),
        ({"decision": "REJECT"}, "REJECTED"),
        ({"decision": "approved"}, "APPROVED"),
        ({"decision": "APPROVED WITH CONDITIONS"}, "APPROVED_WITH_CONDITIONS"),
        ({"verdict": "rejected"}, "REJECTED"),
        ({"critique_verdict": "REJECTED", "decision": "APPROVED"}, "REJECTED"),
        ({}, None),
    ],
)
def test_sylvia_verdicts(fields: dict[str, Any], verdict: str | None) -> None:
    n = parse(sylvia(**fields))
    assert n.critique_verdict == verdict
    assert n.approved is (verdict in ("APPROVED", "APPROVED_WITH_CONDITIONS"))


def test_status_approved_implies_the_verdict() -> None:
    n = parse(sylvia(status="APPROVED"))
    assert (n.status, n.critique_verdict) == ("COMPLETE", "APPROVED")


def test_unrecognised_decision_is_kept_but_sets_no_verdict() -> None:
    n = parse(sylvia(decision="NEEDS_THOUGHT"))
    assert n.critique_verdict is None
    assert n.model_dump()["decision"] == "NEEDS_THOUGHT"


def test_bad_explicit_verdict_is_refused() -> None:
    err = refused(sylvia(critique_verdict="MAYBE"))
    assert err.reason == "wrong_schema"
    assert "critique_verdict" in err.message


def test_sylvia_fix_lists_accept_strings_objects_and_single_strings() -> None:
    n = parse(
        sylvia(
            critique_verdict="APPROVED_WITH_CONDITIONS",
            required_fixes="add an index on po_lines",
            issues_found=[{"issue": "N+1 query", "severity": "high"}, "no tests"],
            blockers=[
                {"description": "tenant leak"},
                {"title": "missing RLS"},
                {"severity": "low"},
            ],
        )
    )
    assert n.required_fixes == ["add an index on po_lines"]
    assert n.issues_found == ["N+1 query", "no tests"]
    assert n.blockers == ["tenant leak", "missing RLS", '{"severity": "low"}']


def test_berry_seed() -> None:
    n = parse(json.dumps(SEED_BERRY))
    assert n.commit_sha == "abc1234567890"
    assert n.files_changed_count == 42
    assert n.files_modified == []
    assert n.tests_passed is True
    assert n.deployed_at == "2025-12-23T22:45:00Z"
    assert n.next_agent == "tim"
    assert n.deployed_by is None
    assert "files_changed" not in n.model_dump()


def test_berry_files_changed_as_list_and_deployed_by() -> None:
    n = parse(json.dumps({**SEED_BERRY, "files_changed": ["a", "b"], "deployed_by": "berry"}))
    assert n.files_modified == ["a", "b"]
    assert n.files_changed_count is None
    assert n.deployed_by == "berry"


def test_files_modified_as_a_number() -> None:
    n = parse(
        json.dumps(
            {"agent": "jen", "req_number": "REQ-1", "status": "COMPLETE", "files_modified": 7}
        )
    )
    assert (n.files_modified, n.files_changed_count) == ([], 7)


@pytest.mark.parametrize("key", ["req_number", "reqId", "reqNumber", "req_id", "req"])
def test_req_aliases(key: str) -> None:
    n = parse(json.dumps({"agent": "roy", key: "REQ-1767924916115-9l233", "status": "done"}))
    assert n.req_number == "REQ-1767924916115-9l233"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        *[
            (s, "COMPLETE")
            for s in (
                "COMPLETE",
                "COMPLETED",
                "complete",
                "done",
                "Success",
                "succeeded",
                "APPROVED",
                " completed ",
            )
        ],
        *[(s, "BLOCKED") for s in ("BLOCKED", "blocked")],
        *[(s, "FAILED") for s in ("FAILED", "FAIL", "FAILURE", "ERROR", "error", "failed")],
        *[
            (s, "IN_PROGRESS")
            for s in ("IN_PROGRESS", "in-progress", "in progress", "running", "heartbeat")
        ],
    ],
)
def test_status_variants(raw: str, status: str) -> None:
    n = parse(json.dumps({"agent": "roy", "req_number": "REQ-1", "status": raw}))
    assert n.status == status


@pytest.mark.parametrize("raw", ["MAYBE", "", "REJECTED", 1, None, ["COMPLETE"]])
def test_unknown_status_is_wrong_schema(raw: object) -> None:
    err = refused(json.dumps({"agent": "roy", "req_number": "REQ-1", "status": raw}))
    assert err.reason == "wrong_schema"
    assert err.message.startswith("status:")


def test_agent_and_next_agent_are_lowercased() -> None:
    n = parse(
        json.dumps(
            {"agent": " Roy ", "req_number": "REQ-1", "status": "COMPLETE", "next_agent": "JEN"}
        )
    )
    assert (n.agent, n.next_agent) == ("roy", "jen")


def test_fenced_notice_in_free_text_with_crlf() -> None:
    text = (
        "I finished the backend.\r\n\r\nHere is my notice:\r\n```json\r\n"
        '{\r\n  "agent": "roy",\r\n  "req_number": "REQ-ITEM-001",\r\n'
        '  "status": "COMPLETED",\r\n  "summary": "done"\r\n}\r\n```\r\nThanks!\r\n'
    )
    n = parse(text.encode())
    assert (n.agent, n.req_number, n.status, n.summary) == (
        "roy",
        "REQ-ITEM-001",
        "COMPLETE",
        "done",
    )


def test_nested_objects_and_braces_in_strings() -> None:
    text = (
        "Notice follows {see below}\n"
        '{"agent": "roy", "req_number": "REQ-1", "status": "COMPLETE",'
        ' "summary": "wrote } and { and \\" inside strings",'
        ' "meta": {"inner": {"deep": [1, {"x": "}"}]}}}\n'
        "done."
    )
    n = parse(text)
    assert n.summary == 'wrote } and { and " inside strings'
    assert n.model_dump()["meta"] == {"inner": {"deep": [1, {"x": "}"}]}}


def test_several_fenced_blocks_the_last_wins() -> None:
    first = {
        "agent": "sylvia",
        "req_number": "REQ-1",
        "status": "COMPLETE",
        "critique_verdict": "REJECTED",
    }
    last = {**first, "critique_verdict": "APPROVED"}
    text = (
        f"Draft:\n```json\n{json.dumps(first)}\n```\nOn reflection:\n"
        f"```\n{json.dumps(last, indent=2)}\n```\n"
    )
    n = parse(text)
    assert n.critique_verdict == "APPROVED"


def test_last_notice_is_preferred_over_a_later_example_object() -> None:
    notice = {"agent": "berry", "req_number": "REQ-1", "status": "COMPLETE"}
    text = f'```json\n{json.dumps(notice)}\n```\nExample config:\n```json\n{{"family": 1}}\n```'
    assert parse(text).agent == "berry"


def test_notice_followed_by_trailing_prose() -> None:
    body = {"agent": "jen", "req_number": "REQ-1", "status": "COMPLETE", "summary": "UI"}
    n = parse(json.dumps(body) + "\n\nLet me know if you need anything {else}.")
    assert n.summary == "UI"


def test_stray_open_brace_in_prose_before_the_notice() -> None:
    body = {"agent": "jen", "req_number": "REQ-1", "status": "COMPLETE"}
    assert parse("Using the { operator. " + json.dumps(body)).agent == "jen"


def test_fence_with_unicode_line_separators_inside_strings() -> None:
    body = {"agent": "jen", "req_number": "REQ-1", "status": "COMPLETE", "summary": "a\u2028b\x85"}
    text = "x\n```json\n" + json.dumps(body, ensure_ascii=False) + "\n```\n"
    assert parse(text).summary == "a\u2028b\x85"


def test_utf8_bom_is_ignored() -> None:
    body = {"agent": "jen", "req_number": "REQ-1", "status": "COMPLETE"}
    assert parse(b"\xef\xbb\xbf" + json.dumps(body).encode()).agent == "jen"


# --- extract_json directly --------------------------------------------------------
def test_extract_json_whole_text() -> None:
    assert extract_json('  {"a": 1}  ') == {"a": 1}


def test_extract_json_fence_content_must_be_an_object() -> None:
    text = '```json\n[1, 2]\n```\nthen {"b": 2}'
    assert extract_json(text) == {"b": 2}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("no braces here", "no_json"),
        ("", "no_json"),
        ('{"agent": "roy", ', "invalid_json"),
        ("{not json} and {neither}", "invalid_json"),
        ("```json\n{broken\n```", "invalid_json"),
    ],
)
def test_extract_json_failures(text: str, reason: str) -> None:
    with pytest.raises(NoticeError) as info:
        extract_json(text)
    assert info.value.reason == reason


# --- Billy / QA -----------------------------------------------------------------------
def billy(**extra: Any) -> CompletionNotice:
    return parse(
        json.dumps({"agent": "billy", "req_number": "REQ-1", "status": "COMPLETE", **extra})
    )


@pytest.mark.parametrize(
    ("fields", "passed"),
    [
        ({"tests_passed": True}, True),
        ({"tests_passed": 120, "tests_failed": 0}, True),
        ({}, True),
        ({"tests_passed": False}, False),
        ({"tests_passed": 118, "tests_failed": 2}, False),
        ({"tests_passed": 0, "failures": ["login broken"]}, False),
        ({"status": "FAILED", "tests_passed": True}, False),
        ({"status": "BLOCKED"}, False),
        ({"qa_passed": False}, False),
        ({"tests_failed": ["test_a", "test_b"]}, False),
    ],
)
def test_qa_passed(fields: dict[str, Any], passed: bool) -> None:
    assert billy(**fields).qa_passed is passed


def test_qa_failures_are_merged_from_every_key() -> None:
    n = billy(
        status="FAILED",
        failures=["a"],
        test_failures="b",
        qa_failures=[{"title": "c"}, "a"],
        tests_failed=["d"],
    )
    assert n.qa_failures == [
        "c",
        "a",
        "b",
        "d",
    ]  # qa_failures, failures, test_failures, tests_failed
    assert n.tests_failed == 1


@pytest.mark.parametrize(
    ("fields", "agents"),
    [
        ({"rework_agents": ["Roy", "jen", "roy"]}, ["roy", "jen"]),
        ({"send_back_to": "jen"}, ["jen"]),
        ({"assign_to": ["roy", "cynthia"]}, ["roy"]),
        ({"next_agent": "Roy"}, ["roy"]),
        ({"next_agent": "berry"}, []),
        ({"send_back_to": "jen", "next_agent": "roy"}, ["jen", "roy"]),
        ({}, []),
    ],
)
def test_rework_agents(fields: dict[str, Any], agents: list[str]) -> None:
    """The names a notice gives, kept to those the registry lets QA send work
    back to (pipeline.toml: rework_to) when it meets Billy's stage."""
    notice = billy(status="FAILED", **fields)
    qa = PIPELINE.gate_stage("qa")
    assert qa is not None
    assert list(completed_event(qa, notice).rework_agents) == agents


@pytest.mark.parametrize(("key", "value"), [("attempt", 2), ("stage_attempt", 3), ("attempt", "4")])
def test_attempt_is_echoed(key: str, value: object) -> None:
    assert billy(**{key: value}).attempt == int(str(value))


def test_attempt_must_not_be_a_boolean() -> None:
    err = refused(
        json.dumps({"agent": "roy", "req_number": "REQ-1", "status": "COMPLETE", "attempt": True})
    )
    assert (err.reason, err.message.split(":")[0]) == ("wrong_schema", "attempt")


# --- the NATS subject ---------------------------------------------------------------
def test_agent_and_req_filled_from_the_subject() -> None:
    n = parse(b'{"status": "COMPLETE"}', subject_agent="roy", subject_req="REQ-ITEM-001")
    assert (n.agent, n.req_number) == ("roy", "REQ-ITEM-001")


def test_subject_and_payload_must_agree() -> None:
    body = json.dumps({"agent": "jen", "req_number": "REQ-1", "status": "COMPLETE"})
    err = refused(body, subject_agent="roy", subject_req="REQ-1")
    assert err.reason == "wrong_schema"
    assert "subject says 'roy', payload says 'jen'" in err.message
    err = refused(body, subject_agent="jen", subject_req="REQ-2")
    assert err.reason == "wrong_schema"
    assert "subject says REQ-2, payload says REQ-1" in err.message


def test_subject_comparison_ignores_case_of_agent() -> None:
    body = json.dumps({"agent": "Roy", "reqId": "REQ-1", "status": "COMPLETE"})
    assert parse(body, subject_agent="ROY", subject_req="REQ-1").agent == "roy"


def test_a_subject_token_that_is_not_a_req_id_is_not_compared() -> None:
    body = json.dumps({"agent": "miki", "req_number": "REQ-1", "status": "COMPLETE"})
    assert parse(body, subject_agent="miki", subject_req="nats-healthcheck").req_number == "REQ-1"


def test_an_invalid_req_from_the_subject_is_invalid_req_id() -> None:
    err = refused(b'{"status": "COMPLETE"}', subject_agent="roy", subject_req="feature-x")
    assert err.reason == "invalid_req_id"


@pytest.mark.parametrize(
    ("subject", "parts"),
    [
        ("agog.deliverables.billy.qa.REQ-ITEM-001", ("billy", "qa", "REQ-ITEM-001")),
        ("agog.deliverables.miki.devops.nats-fix", ("miki", "devops", "nats-fix")),
        ("agog.deliverables.billy.qa", None),
        ("agog.deliverables.billy.qa.REQ-1.extra", None),
        ("agog.features.billy.qa.REQ-1", None),
        ("agog.deliverables..qa.REQ-1", None),
        ("agog.deliverables.billy.qa.*", None),
        ("agog.deliverables.billy.qa.>", None),
        ("", None),
    ],
)
def test_parse_deliverable_subject(subject: str, parts: tuple[str, str, str] | None) -> None:
    assert parse_deliverable_subject(subject) == parts


# --- every refusal reason ---------------------------------------------------------------
VALID = {"agent": "roy", "req_number": "REQ-1", "status": "COMPLETE"}


@pytest.mark.parametrize(
    ("data", "reason", "fragment"),
    [
        (json.dumps({**VALID, "summary": "x" * 200}).encode(), "too_large", "limit is 100"),
        (json.dumps({**VALID, "summary": "é" * 60}), "too_large", "limit is 100"),
        (b'{"agent": "roy", "summary": "\xff"}', "not_utf8", "byte 29"),
        (json.dumps({**VALID, "summary": "\ud800"}).encode(), "not_utf8", "surrogate"),
        (b'{"agent": "roy", ', "invalid_json", "never closed"),
        (b"{not: json}", "invalid_json", "valid JSON"),
        (json.dumps({**VALID, "x": float("nan")}).encode(), "invalid_json", ""),
        (b"", "no_json", "empty"),
        (b"   \r\n", "no_json", "empty"),
        (b"I am done, no JSON today.", "no_json", "no JSON"),
        (b"[1, 2]", "wrong_schema", "not an array"),
        (b'"COMPLETE"', "wrong_schema", "not a string"),
        (json.dumps({**VALID, "status": "MAYBE"}).encode(), "wrong_schema", "status"),
        (json.dumps({"agent": "roy", "req_number": "REQ-1"}).encode(), "wrong_schema", "status"),
        (json.dumps({"req_number": "REQ-1", "status": "done"}).encode(), "wrong_schema", "agent"),
        (json.dumps({"agent": "roy", "status": "done"}).encode(), "wrong_schema", "req_number"),
        (json.dumps({**VALID, "summary": "a\x00b"}).encode(), "wrong_schema", "NUL"),
        (
            json.dumps(
                {**VALID, "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}
            ).encode(),
            "wrong_schema",
            "nested",
        ),
        (
            json.dumps({**VALID, "files_created": {"a": 1}, "tests_passed": "many"}).encode(),
            "wrong_schema",
            "tests_passed",
        ),
        (json.dumps({**VALID, "agent": "bob"}).encode(), "unknown_agent", "'bob'"),
        (json.dumps({**VALID, "req_number": "REQ-BAD.1>"}).encode(), "invalid_req_id", "'.'"),
        (
            json.dumps({**VALID, "reqId": "REQ 1/../x", "req_number": None}).encode(),
            "invalid_req_id",
            "whitespace",
        ),
    ],
)
def test_refusals(data: bytes | str, reason: str, fragment: str) -> None:
    err = refused(data, max_bytes=100 if reason == "too_large" else 1_048_576)
    assert err.reason == reason, err
    assert fragment in err.message


def test_unknown_agent_wins_over_a_subject_mismatch() -> None:
    err = refused(json.dumps({**VALID, "agent": "bob"}), subject_agent="roy", subject_req="REQ-1")
    assert err.reason == "unknown_agent"


def test_invalid_req_id_wins_over_a_subject_mismatch() -> None:
    err = refused(
        json.dumps({**VALID, "req_number": "REQ-BAD.1>"}),
        subject_agent="roy",
        subject_req="REQ-BAD-1",
    )
    assert err.reason == "invalid_req_id"


def test_model_dump_round_trips() -> None:
    n = parse(SEED_MIKI)
    assert CompletionNotice.model_validate(n.model_dump()) == n


# --- properties ---------------------------------------------------------------------------
req_ids = st.from_regex(r"REQ-[A-Za-z0-9][A-Za-z0-9_-]{0,59}", fullmatch=True)
# Storable text: NUL and lone surrogates are refused (jsonb cannot hold them), tested above.
texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)
text_lists = st.lists(texts, max_size=4)
json_scalars = st.none() | st.booleans() | st.integers() | texts
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)


@st.composite
def notices(draw: st.DrawFn) -> dict[str, Any]:
    """Notice dicts in the shapes agents use, with aliases and odd spellings."""
    body: dict[str, Any] = {
        "agent": draw(st.sampled_from((*AGENTS, "Roy", " BILLY "))),
        draw(st.sampled_from(["req_number", "reqId", "reqNumber", "req_id", "req"])): draw(req_ids),
        "status": draw(
            st.sampled_from(
                [
                    "COMPLETE",
                    "completed",
                    "done",
                    "BLOCKED",
                    "ERROR",
                    "in-progress",
                    "FAILED",
                    "APPROVED",
                ]
            )
        ),
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        "deliverable": texts,
        "summary": texts,
        "files_created": text_lists,
        "files_modified": text_lists | st.integers(0, 500),
        "files_changed": text_lists | st.integers(0, 500),
        "containers_affected": text_lists,
        "next_agent": st.sampled_from(AGENTS),
        "critique_verdict": st.sampled_from(["APPROVED", "approved with conditions", "REJECT"]),
        "decision": st.sampled_from(["APPROVED", "REJECTED", "whatever"]),
        "required_fixes": text_lists | texts,
        "blockers": st.lists(texts | st.fixed_dictionaries({"description": texts}), max_size=3),
        "tests_passed": st.booleans() | st.integers(0, 1000),
        "tests_failed": st.integers(0, 50),
        "failures": text_lists,
        "send_back_to": st.sampled_from(["roy", "jen", "Roy", "tim"]),
        "commit_sha": st.text("0123456789abcdef", min_size=7, max_size=40),
        "attempt": st.integers(1, 9),
        "changes": st.fixed_dictionaries(
            {},
            optional={
                k: text_lists
                for k in (
                    "files_created",
                    "files_modified",
                    "files_deleted",
                    "tables_created",
                    "key_changes",
                )
            },
        ),
        "extra_field": json_values,
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


prose = st.text(st.characters(blacklist_characters="`", blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=200)
@given(
    notices(),
    prose,
    prose,
    st.sampled_from(["\n", "\r\n"]),
    st.sampled_from(["json", ""]),
    st.sampled_from([None, 2]),
    st.booleans(),
)
def test_property_fenced_in_prose_equals_bare(
    body: dict[str, Any],
    before: str,
    after: str,
    eol: str,
    lang: str,
    indent: int | None,
    ascii_only: bool,
) -> None:
    dumped = json.dumps(body, indent=indent, ensure_ascii=ascii_only)
    direct = parse(dumped)
    fenced = eol.join([before, f"```{lang}", *dumped.split("\n"), "```", after])
    assert parse(fenced) == direct
    assert parse(fenced.encode()) == direct


@given(st.text(max_size=80), st.sampled_from(".*>/ \t\n\r\u00a0\u2003"), st.integers(0, 80))
def test_property_req_id_never_accepts_unsafe_characters(base: str, bad: str, at: int) -> None:
    value = "REQ-" + base[:at] + bad + base[at:]
    with pytest.raises(InvalidReqId):
        validate_req_id(value)


@given(req_ids, st.integers(1, 40))
def test_property_req_id_never_accepts_over_64(req: str, pad: int) -> None:
    long = req + "x" * (REQ_ID_MAX - len(req) + pad)
    with pytest.raises(InvalidReqId):
        validate_req_id(long)


@given(st.text(max_size=80))
def test_property_accepted_req_ids_are_safe(value: str) -> None:
    try:
        accepted = validate_req_id(value)
    except InvalidReqId:
        return
    assert len(accepted) <= REQ_ID_MAX
    assert not any(ch in accepted for ch in ".*>/\\") and not any(c.isspace() for c in accepted)


def only_notice_errors(data: bytes | str, **kwargs: Any) -> None:
    try:
        result = parse(data, **kwargs)
    except NoticeError as err:
        assert err.reason in (
            "too_large",
            "not_utf8",
            "invalid_json",
            "no_json",
            "wrong_schema",
            "unknown_agent",
            "invalid_req_id",
        )
    else:
        assert isinstance(result, CompletionNotice)
        json.dumps(result.model_dump(mode="json"))


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_property_arbitrary_bytes_only_raise_notice_error(data: bytes) -> None:
    only_notice_errors(data, max_bytes=200)


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_property_arbitrary_text_only_raises_notice_error(data: str) -> None:
    only_notice_errors(data, subject_agent="roy", subject_req="REQ-1")


JSON_TOKENS = [*'{}[]":,\\` \n\r\tab01.-', "```json\n", "REQ-1", '"status"', '"agent"', '"roy"']
JSONISH = st.lists(
    st.sampled_from([*JSON_TOKENS, '"done"', "\\u0000", "\\ud800"]), max_size=80
).map("".join)


@settings(max_examples=500)
@given(JSONISH)
def test_property_jsonish_text_only_raises_notice_error(data: str) -> None:
    only_notice_errors(data)
    only_notice_errors(data.encode(), subject_agent="roy", subject_req="REQ-1")


def test_many_objects_after_the_notice_stay_cheap() -> None:
    notice = json.dumps({"agent": "roy", "req_number": "REQ-1", "status": "COMPLETE"})
    assert parse("x " + notice + " {}" * 100 + " {oops").agent == "roy"
    assert refused("{}" * 200_000, max_bytes=1 << 20).reason == "wrong_schema"


FIELD_NAMES = sorted(
    {
        *CompletionNotice.model_fields,
        "reqId",
        "reqNumber",
        "req_id",
        "req",
        "stage_attempt",
        "changes",
        "files_changed",
        "decision",
        "verdict",
        "failures",
        "test_failures",
        "send_back_to",
        "assign_to",
        "qa_passed",
        "agent_id",
        "agentId",
    }
)


@settings(max_examples=300)
@given(notices(), st.dictionaries(st.sampled_from(FIELD_NAMES) | texts, json_values, max_size=6))
def test_property_odd_field_values_only_raise_notice_error(
    body: dict[str, Any], odd: dict[str, Any]
) -> None:
    only_notice_errors(json.dumps({**body, **odd}))
    only_notice_errors(json.dumps({**body, **odd}), subject_agent="sylvia", subject_req="REQ-9")
    only_notice_errors(json.dumps({**body, "changes": odd}))
