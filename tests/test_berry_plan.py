"""Berry's pure decisions: Billy's approval, the file list, path checks and
the seed 002 commit message."""

from __future__ import annotations

from pathlib import PurePosixPath

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.core import registry
from workers.release.plan import (
    StageDeliverable,
    commit_message,
    listed_files,
    path_problem,
    qa_refusal,
)

P = registry.load()


def billy(**kw: object) -> dict[str, object]:
    return {"agent": "billy", "req_number": "REQ-1", "status": "COMPLETE", **kw}


def test_billys_approval() -> None:
    assert qa_refusal(billy(tests_passed=True), "billy") is None
    assert qa_refusal(billy(tests_passed=12), "billy") is None
    assert "no QA deliverable" in (qa_refusal(None, "billy") or "")
    assert "did not approve" in (qa_refusal(billy(status="BLOCKED"), "billy") or "")
    assert "did not approve" in (qa_refusal(billy(tests_passed=False), "billy") or "")
    assert "did not approve" in (qa_refusal(billy(tests_failed=3), "billy") or "")
    failures = qa_refusal(billy(status="FAILED", qa_failures=["login 500"]), "billy")
    assert failures is not None and "login 500" in failures
    assert "cannot be read" in (qa_refusal({"agent": "billy", "status": "maybe"}, "billy") or "")


def test_listed_files_in_stage_order_once_each_malformed_kept() -> None:
    items = [
        StageDeliverable(2, "roy", {"files_created": ["a.py", "b.py"], "files_modified": "c.py"}),
        StageDeliverable(3, "jen", {"files_modified": ["b.py", 7], "files_deleted": ["old.py"]}),
    ]
    assert listed_files(items) == ["a.py", "b.py", "c.py", 7, "old.py"]


def test_path_problems() -> None:
    for good in ("a.py", "src/x/y.ts", "./a.py", "dir/.hidden", "a..b"):
        assert path_problem(good) is None, good
    for bad, says in (
        ("/etc/passwd", "absolute"),
        ("../x", ".."),
        ("a/../../x", ".."),
        (".git/config", ".git"),
        ("a\\b", "backslash"),
        ("a\nb", "control"),
        ("", "empty"),
        ("C:/x", "absolute"),
        (None, "not a string"),
        (["a"], "not a string"),
        ("x" * 2000, "longer"),
    ):
        why = path_problem(bad)
        assert why is not None and says in why, (bad, why)


@given(st.text(max_size=60))
def test_an_accepted_path_stays_inside_lexically(path: str) -> None:
    if path_problem(path) is None:
        pure = PurePosixPath(path)
        assert not pure.is_absolute() and ".." not in pure.parts
        assert "\x00" not in path and pure.parts[:1] != (".git",)


def test_commit_message_follows_seed_002() -> None:
    items = [
        StageDeliverable(0, "cynthia", {"status": "COMPLETE", "summary": "researched"}),
        StageDeliverable(1, "sylvia", {"status": "COMPLETE", "critique_verdict": "APPROVED"}),
        StageDeliverable(2, "roy", {"status": "COMPLETE", "summary": "API\nwith\x1bnewlines"}),
        StageDeliverable(
            4, "billy", {"status": "COMPLETE", "summary": "all green", "tests_passed": 9}
        ),
    ]
    message = commit_message("REQ-7", "Export\ninventory", items, P, "agogsaas.ai")
    lines = message.splitlines()
    assert lines[0] == "feat(REQ-7): Export inventory" and lines[1] == ""
    assert "- Backend: API with newlines" in lines  # one line, control characters gone
    assert "QA Status: APPROVED by Billy" in lines and "- Tests passed: 9" in lines
    assert "- Critique: Sylvia (APPROVED)" in lines
    trailers = lines[lines.index("Agog-Req: REQ-7") :]
    assert trailers == [
        "Agog-Req: REQ-7",
        "Co-Authored-By: Cynthia (Research) <cynthia@agogsaas.ai>",
        "Co-Authored-By: Sylvia (Critique) <sylvia@agogsaas.ai>",
        "Co-Authored-By: Roy (Backend) <roy@agogsaas.ai>",
        "Co-Authored-By: Billy (QA) <billy@agogsaas.ai>",
        "Co-Authored-By: Berry (DevOps) <berry@agogsaas.ai>",
    ]
    assert lines[lines.index("Agog-Req: REQ-7") - 1] == ""  # trailers are the last paragraph
