"""The pure side of REQ branches: listed files against the diff, git's
name-status output, commit messages and who a conflict goes back to."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from workers.branches.changes import (
    Changed,
    attempt_message,
    branch_name,
    compare,
    conflict_owners,
    has_conflict_markers,
    listed_paths,
    normalise,
    parse_name_status,
)

PATHS = st.lists(
    st.from_regex(r"[a-z]{1,6}(/[a-z]{1,6}){0,2}\.(py|ts|md)", fullmatch=True), max_size=8
)


@given(PATHS, PATHS)
def test_compare_splits_exactly_the_two_differences(listed: list[str], changed: list[str]) -> None:
    unlisted, missing = compare(listed, [Changed(p, "modified") for p in changed])
    assert set(unlisted) == set(changed) - set(listed)
    assert set(missing) == set(listed) - set(changed)
    assert not set(unlisted) & set(listed) and not set(missing) & set(changed)
    assert unlisted == sorted(unlisted) and missing == sorted(missing)


@given(PATHS)
def test_listed_paths_reads_every_key_once_in_order(paths: list[str]) -> None:
    notice = {
        "files_created": paths[:2],
        "files_modified": [f"./{p}" for p in paths[2:4]],
        "files_deleted": paths[4:5],
        "changes": [{"file": p, "kind": "edit"} for p in paths[5:]] + ["./" + p for p in paths],
    }
    assert listed_paths(notice) == list(dict.fromkeys(paths))


def test_listed_paths_leaves_out_what_names_no_file() -> None:
    notice = {"files_modified": ["", "  ", 42, None, "a\x00b", "./", "a//b/"], "changes": "x"}
    assert listed_paths(notice) == ["a/b"]
    assert normalise("././x/./y") == "x/y"


def test_name_status_matches_what_git_prints(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True
        ).stdout

    git("init", "-q", "-b", "main")
    git("config", "user.email", "t@t"), git("config", "user.name", "t")
    for name in ("keep.txt", "old name.txt", "gone.txt"):
        (tmp_path / name).write_text(f"{name}\n" * 20)
    git("add", "-A"), git("commit", "-qm", "one")
    (tmp_path / "keep.txt").write_text("changed\n")
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "old name.txt").rename(tmp_path / "new\tname.txt")
    (tmp_path / "added.py").write_text("x = 1\n")
    git("add", "-A"), git("commit", "-qm", "two")
    found = parse_name_status(git("diff", "--name-status", "-z", "-M", "HEAD^", "HEAD"))
    assert sorted((c.path, c.status) for c in found) == [
        ("added.py", "added"),
        ("gone.txt", "deleted"),
        ("keep.txt", "modified"),
        ("new\tname.txt", "renamed"),
    ]


def test_attempt_message_carries_the_trailers_git_reads(tmp_path: Path) -> None:
    message = attempt_message(
        req="REQ-7", stage=2, stage_name="Backend", agent="roy", attempt=3, summary="x" * 200
    )
    assert message.splitlines()[0].startswith("backend(REQ-7): xxx")
    out = subprocess.run(
        ["git", "interpret-trailers", "--parse"], input=message, capture_output=True, text=True
    ).stdout
    assert out.splitlines() == [
        "Agog-Req: REQ-7",
        "Agog-Stage: 2",
        "Agog-Attempt: 3",
        "Agog-Agent: roy",
    ]


def test_conflicts_go_back_to_the_agents_whose_commits_touched_them() -> None:
    commits = [("roy", ["api.py", "db.sql"]), ("jen", ["app.ts"]), ("roy", ["api.py"])]
    order = ["cynthia", "sylvia", "roy", "jen", "billy"]
    assert conflict_owners(commits, ["app.ts"], order) == ["jen"]
    assert conflict_owners(commits, ["app.ts", "db.sql"], order) == ["roy", "jen"]
    assert conflict_owners(commits, ["README.md"], order) == []


def test_conflict_markers_are_seen_and_their_absence_too() -> None:
    assert has_conflict_markers("a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> main\n")
    assert not has_conflict_markers("a\n=======\nheading\n")
    assert not has_conflict_markers("<<<<<<< only the first half\n")


def test_branch_name_fills_the_req() -> None:
    assert branch_name("agog/{req}", "REQ-1") == "agog/REQ-1"


def test_a_reset_decision_reaches_the_runner_as_a_reset_and_a_conflict_as_a_merge() -> None:
    """What agogctl req decide --reset-branch publishes, through the pure
    workflow's dispatch, is what the runner reads; so is Berry's conflict."""
    import json

    from orchestrator.core import registry
    from orchestrator.core.workflow import Completed, Dispatch, Start, Workflow, apply
    from orchestrator.inbound.messages import parse_decision
    from workers.runner.service import branch_wishes

    pipeline = registry.load()
    wf, _ = apply(pipeline, Workflow("REQ-R-1"), Start())
    for index in range(3):
        wf, _ = apply(
            pipeline, wf, Completed(index, None, "COMPLETE", verdict="APPROVED" if index else None)
        )
    message = {
        "req_number": "REQ-R-1",
        "decision": "REQUEST_CHANGES",
        "restart_stage": 2,
        "instructions": {"reset_branch": True, "text": "start over"},
    }
    decision = parse_decision(json.dumps(message).encode(), "REQ-R-1", pipeline, 1 << 20)
    _, effects = apply(pipeline, wf, decision.to_event())
    (dispatch,) = [e for e in effects if isinstance(e, Dispatch)]
    assert branch_wishes({"instructions": dispatch.instructions}) == (True, False)
    rework = {"rework": {"from": "berry", "conflict": {"files": ["a.py"]}}}
    assert branch_wishes({"instructions": rework}) == (False, True)
    assert branch_wishes({"instructions": "free text"}) == (False, False)
    assert branch_wishes({}) == (False, False)
