"""The deliverable memory's pure logic: chunks and hashes, what is captured,
fusion, stage policies, retention rules, outages, SQL shapes (no I/O)."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from orchestrator.core import registry
from orchestrator.core.workflow import CloseAttempt, Emit
from orchestrator.embeddings.base import EmbeddingUnavailable
from orchestrator.memory import capture, chunking, policy, retention, sql, vectors
from orchestrator.memory.fusion import rrf
from orchestrator.memory.model import Candidate, Draft, Filters
from orchestrator.memory.outage import Outage

texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=3000
)


# --- chunking --------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(text=texts, limit=st.integers(min_value=1, max_value=400))
def test_split_keeps_every_character_within_the_limit(text: str, limit: int) -> None:
    parts = chunking.split(text, limit)
    assert "".join(parts) == text  # nothing dropped, nothing added
    assert all(len(p) <= limit for p in parts)
    assert all(parts[:-1])  # no empty part but possibly the last


@settings(max_examples=200, deadline=None)
@given(text=texts, limit=st.integers(min_value=64, max_value=900))
@example(text="0" * 65, limit=64)  # a first line longer than a chunk
def test_rows_fit_the_provider_and_give_the_text_back(text: str, limit: int) -> None:
    draft = Draft("deliverable", "roy", text, "REQ-P-1", 2)
    rows = chunking.rows_for(draft, limit, max_chunks=10_000)
    if not chunking.normalise(text):
        assert rows == []
        return
    assert all(len(r.content) <= limit for r in rows)
    assert [r.chunk_index for r in rows] == list(range(len(rows)))
    assert {r.chunk_count for r in rows} == {len(rows)}
    assert len({r.parent_hash for r in rows}) == 1
    assert len({r.content_hash for r in rows}) == len(rows)
    # Strip the "<header> (part i/n)" line of later chunks: the text comes back whole.
    body = rows[0].content + "".join(r.content.split("\n", 1)[1] for r in rows[1:])
    assert body == text.strip()


REGISTRY = registry.load()


def test_long_text_is_chunked_at_sentence_ends_with_a_header() -> None:
    sentence = "The stock ledger keeps every movement of packaging material. "
    text = "REQ-X: inventory\n" + sentence * 60
    rows = chunking.rows_for(Draft("deliverable", "roy", text, "REQ-X"), 800)
    assert len(rows) > 3
    assert all(r.content.startswith("REQ-X: inventory") for r in rows)
    assert all(r.content.rstrip().endswith(".") for r in rows)
    assert rows[1].content.split("\n", 1)[0] == f"REQ-X: inventory (part 2/{len(rows)})"


def test_a_visible_cap_past_max_chunks() -> None:
    rows = chunking.rows_for(Draft("deliverable", "roy", "word " * 5000, "REQ-X"), 100, 3)
    assert len(rows) == 3
    assert rows[0].metadata["truncated"]["total_chars"] == len(("word " * 5000).strip())


def test_hash_ignores_whitespace_but_not_who_or_what() -> None:
    a = chunking.parent_hash("deliverable", "roy", "REQ-1", "Inventory  API\n done")
    assert a == chunking.parent_hash("deliverable", "roy", "REQ-1", " Inventory API done ")
    assert a != chunking.parent_hash("deliverable", "jen", "REQ-1", "Inventory API done")
    assert a != chunking.parent_hash("qa_failure", "roy", "REQ-1", "Inventory API done")
    assert a != chunking.parent_hash("deliverable", "roy", "REQ-2", "Inventory API done")


# --- what is captured ------------------------------------------------------------------
def test_notice_kinds_follow_the_attempts_outcome() -> None:
    rollback = {"deploy": {"outcome": "failed", "rollback": {"attempted": True, "to": "abc"}}}
    assert capture.notice_kind("deploy", rollback, "FAILED") == "rollback"
    assert capture.notice_kind("critique", {}, "REJECTED") == "rejection"
    assert capture.notice_kind("qa", {}, "FAILED") == "qa_failure"
    assert capture.notice_kind("qa", {}, "COMPLETE") == "deliverable"
    assert capture.notice_kind(None, {}, "COMPLETE") == "deliverable"
    assert capture.notice_kind(None, {}, "BLOCKED") is None  # the escalation is remembered
    assert capture.notice_kind(None, {}, None) is None


def test_closed_outcome_reads_the_effects() -> None:
    effects = [Emit("stage", "completed", 2, 1), CloseAttempt(4, 1, "FAILED", "QA failed")]
    assert capture.closed_outcome(effects, 4) == "FAILED"
    assert capture.closed_outcome(effects, 2) is None


def test_a_deliverable_keeps_its_substance() -> None:
    body = {
        "summary": "Inventory API with reorder points",
        "key_changes": ["stock table", "reorder job"],
        "files_created": ["api/stock.py"],
        "findings": "Warehouses share SKUs.",
        "deliverable": "nats://x",
    }
    draft = capture.notice("deliverable", "REQ-1", "Inventory", "roy", "Backend", 2, body)
    assert draft.text.splitlines()[0] == "Inventory API with reorder points"
    assert draft.metadata["title"] == "Inventory"
    assert draft.metadata["label"] == "Backend deliverable by roy"
    for part in ("reorder points", "- stock table", "api/stock.py", "Warehouses share SKUs."):
        assert part in draft.text
    assert (draft.kind, draft.agent, draft.req_number, draft.stage) == (
        "deliverable",
        "roy",
        "REQ-1",
        2,
    )


def test_rollback_and_qa_failure_texts() -> None:
    berry = {
        "summary": "deploy failed",
        "deploy": {
            "reason": "the deployment is not healthy: api exited 1",
            "rollback": {"attempted": True, "to": "abc123", "healthy": True},
            "health": {"problems": ["api: exit code 1"]},
        },
    }
    text = capture.notice("rollback", "REQ-1", "", "berry", "DevOps", 6, berry).text
    assert "Rollback: to abc123, healthy" in text and "api: exit code 1" in text
    billy = {"summary": "2 failing", "qa_failures": ["login loses input"], "tests_failed": 2}
    text = capture.notice("qa_failure", "REQ-1", "", "billy", "QA", 4, billy).text
    assert text.startswith("2 failing\n") and "- login loses input" in text


def test_decision_on_a_blocked_req_is_also_its_resolution() -> None:
    drafts = capture.decision("REQ-1", "T", "RETRY", "owner fixed it", {}, "BLOCKED", 2)
    assert [d.kind for d in drafts] == ["decision", "resolution"]
    assert drafts[1].text.startswith("Resolved the escalation: RETRY\nReasoning: owner fixed")
    assert [
        d.kind for d in capture.decision("REQ-1", "T", "APPROVE", "", {}, "IN_PROGRESS", 2)
    ] == ["decision"]


def test_requirement_without_text_is_not_remembered() -> None:
    assert capture.requirement("REQ-1", "", []) is None
    draft = capture.requirement("REQ-1", "Inventory", ["track stock"])
    assert draft is not None and draft.text == "Inventory\n- track stock"
    assert capture.query_text("Inventory", {"requirements": ["track stock"]}) == (
        "Inventory\ntrack stock"
    )


def test_long_lists_say_how_much_was_left_out() -> None:
    body = {"files_modified": [f"f{i}.py" for i in range(130)]}
    text = capture.notice("deliverable", "REQ-1", "", "jen", "Frontend", 3, body).text
    assert "- f99.py" in text and "f100.py" not in text and "(+30 more not kept)" in text


# --- fusion ------------------------------------------------------------------------------
def _c(ident: str, rank: int) -> Candidate:
    return Candidate(ident, rank, 1.0 / rank, {"id": ident})


def test_rrf_rewards_agreement() -> None:
    hits = rrf([_c("a", 1), _c("b", 2), _c("c", 3)], [_c("c", 1), _c("d", 2)])
    assert hits[0].id == "c"  # found by both
    assert hits[0].vector_rank == 3 and hits[0].fulltext_rank == 1
    assert {h.id for h in hits} == {"a", "b", "c", "d"}
    assert math.isclose(hits[0].score, 1 / 63 + 1 / 61)


@given(
    st.lists(st.sampled_from("abcdefghij"), unique=True, max_size=10),
    st.lists(st.sampled_from("abcdefghij"), unique=True, max_size=10),
)
def test_rrf_is_a_sorted_union(left: list[str], right: list[str]) -> None:
    hits = rrf(
        [_c(x, i + 1) for i, x in enumerate(left)], [_c(x, i + 1) for i, x in enumerate(right)]
    )
    assert {h.id for h in hits} == set(left) | set(right)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


# --- policies --------------------------------------------------------------------------
def _item(kind: str, agent: str, parent: str, score: float) -> dict[str, object]:
    return {
        "id": parent + kind,
        "kind": kind,
        "agent": agent,
        "parent_hash": parent,
        "score": score,
    }


def test_roy_gets_backend_work_and_qa_failures_sylvia_rejections() -> None:
    items = [
        _item("deliverable", "cynthia", "p1", 0.9),
        _item("deliverable", "roy", "p2", 0.8),
        _item("qa_failure", "billy", "p3", 0.7),
        _item("rejection", "sylvia", "p4", 0.6),
        _item("deliverable", "roy", "p2", 0.5),  # another chunk of p2
    ]
    # The policies are the registry's (pipeline.toml: recall).
    recall = {s.agent: s.recall for s in (*REGISTRY.stages, *REGISTRY.followups)}
    roy = policy.pick(items, "roy", 5, recall["roy"])
    assert [i["id"] for i in roy] == ["p2deliverable", "p3qa_failure"]
    assert [i["id"] for i in policy.pick(items, "sylvia", 5, recall["sylvia"])] == [
        "p1deliverable",
        "p4rejection",
    ]
    assert len(policy.pick(items, "roy", 1, recall["roy"])) == 1
    assert "parent_hash" not in policy.pick(items, "roy", 1, recall["roy"])[0]
    stages = [(0, "cynthia", recall["cynthia"]), (2, "roy", recall["roy"])]
    by_stage = policy.picks_by_stage(items, stages, 5)
    assert set(by_stage) == {"0", "2"}


def test_an_unknown_agent_gets_the_default_policy() -> None:
    items = [_item("deliverable", "liz", "p1", 1), _item("deliverable", "roy", "p2", 1)]
    assert [i["agent"] for i in policy.pick(items, "liz", 5)] == ["liz"]


# --- retention rules ---------------------------------------------------------------------
def test_retention_rules() -> None:
    rules = {"*": retention.Rule(max_age_days=30), "qa_failure": retention.Rule(max_count=10)}
    eff = retention.effective(rules)
    assert eff["qa_failure"].max_count == 10 and eff["qa_failure"].max_age_days is None
    assert eff["deliverable"].max_age_days == 30
    assert [s[1][1] for s in retention.statements("deliverable", eff["deliverable"])] == [
        30 * 86400.0
    ]
    with pytest.raises(ValueError, match="needs max_age_days"):
        retention.Rule()
    with pytest.raises(ValueError, match="unknown memory kind bogus"):
        retention.check_kinds({"bogus": retention.Rule(max_count=1)})


# --- outages -------------------------------------------------------------------------------
def test_one_warning_per_outage() -> None:
    outage = Outage()
    assert outage.succeeded(0.0) is None
    assert outage.failed("down", 1.0) is not None
    assert all(outage.failed("down", t) is None for t in (2.0, 3.0, 4.0))
    assert outage.retry_delay(5, 300) == 5 * 2**3
    closed = outage.succeeded(10.0)
    assert closed is not None and closed.seconds == 9.0 and closed.failures == 4
    assert outage.failed("down again", 11.0) is not None  # a new outage warns again


# --- SQL shapes and vectors ------------------------------------------------------------------
def test_only_the_filters_asked_for_are_in_the_statement() -> None:
    statement, args = sql.candidates(Filters(), 10, vector=[1.0], text=None)
    assert "m.agent_id = " not in statement and "UNION ALL" not in statement and args == [10, [1.0]]
    statement, args = sql.candidates(
        Filters(agents=("roy",), kinds=("deliverable",), max_age_days=2), 5, vector=[1.0], text="x"
    )
    assert statement.count("m.agent_id = ANY") == 2 and "UNION ALL" in statement
    assert args[0] == 5 and ["roy"] in args and 2 * 86400.0 in args
    exact, _ = sql.candidates(Filters(agents=("roy",)), 5, vector=[1.0], text=None, exact=True)
    assert "+ 0" in exact
    with pytest.raises(ValueError):
        sql.candidates(Filters(), 5, vector=None, text=None)


def test_ef_search_grows_as_the_filter_narrows() -> None:
    assert sql.ef_search(50, 100_000, 100_000) == 101
    assert sql.ef_search(50, 100_000, 10_000) == 1000  # capped
    assert sql.ef_search(10, 100_000, 50_000) == 41
    assert sql.ef_search(10, 100, 100) == 40  # the floor


def test_vectors_are_checked_and_pooled() -> None:
    vectors.check([[1.0, 0.0]], 1, 2)
    for bad, why in (
        ([[1.0, 0.0]], "1 vectors for 2"),
        ([[1.0]], "dimensions"),
        ([[float("nan"), 1.0]], "non-finite"),
        ([[0.0, 0.0]], "all zeros"),
    ):
        with pytest.raises(EmbeddingUnavailable, match=why):
            vectors.check(bad, 2 if why == "1 vectors for 2" else 1, 2)
    mean = vectors.mean_unit([[1.0, 0.0], [0.0, 1.0]], [1, 3])
    assert math.isclose(math.hypot(*mean), 1.0) and mean[1] > mean[0]
    with pytest.raises(EmbeddingUnavailable):
        vectors.mean_unit([[1.0, 0.0], [-1.0, 0.0]], [1, 1])
