"""OWNER_REQUESTS.md parsing and locked, atomic status write-back (pure + file tests)."""

from __future__ import annotations

import multiprocessing
import os
import re
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.inbound import owner_requests
from orchestrator.inbound.owner_requests import (
    KNOWN_STATUSES,
    OwnerRequest,
    OwnerRequestsFile,
    changed_entries,
    parse,
    parse_report,
    set_status,
    set_statuses,
)

REFERENCE = """\
# Owner Requests

### REQ-XXX-YYY: Title

**Status**: NEW
**Owner**: marcus
**Priority**: P1
**Requirements**:
- first requirement
- second requirement
---

### REQ-1767924916115-9l233: Inventory export

**Status**: IN_PROGRESS
**Owner**: todd
**Priority**: P0
**Requirements**:
- export CSV
- export XLSX
---

### REQ-SALES-002: Quotes

**Status**: BLOCKED
**Owner**: marcus
**Priority**: P2
**Requirements**:
- quote builder
---
"""

SEED_DEPLOYED = """\
### REQ-XXX-YYY: [Feature Title]
**Status**: DEPLOYED  # Changed from IN_PROGRESS
**Deployed At**: 2025-12-23T22:45:00Z
**Commit**: abc1234
**Deployed By**: berry
"""

AGOGD_LINE = re.compile(r"^\*\*(Status|Deployed At|Commit|Deployed By|Blocked Reason)(\*\*:|:\*\*)")


def _without_agogd_lines(text: str, req: str) -> list[str]:
    """The file's lines (endings kept) minus agogd's field lines in req's entry."""
    out: list[str] = []
    inside = False
    for line in text.split("\n"):
        if line.startswith("### "):
            inside = line.split()[1].rstrip(":") == req
        elif line.rstrip("\r") == "---":
            inside = False
        elif inside and AGOGD_LINE.match(line):
            continue
        out.append(line)
    return out


def _by_id(text: str) -> dict[str, OwnerRequest]:
    return {r.req_number: r for r in parse(text)}


# ------------------------------------------------------------------------ parsing


def test_reference_format() -> None:
    reqs = parse(REFERENCE)
    assert [r.req_number for r in reqs] == [
        "REQ-XXX-YYY",
        "REQ-1767924916115-9l233",
        "REQ-SALES-002",
    ]
    first = reqs[0]
    assert first.title == "Title"
    assert first.status == "NEW"
    assert first.owner == "marcus"
    assert first.priority == 1
    assert first.requirements == ("first requirement", "second requirement")
    assert dict(first.fields) == {
        "Status": "NEW",
        "Owner": "marcus",
        "Priority": "P1",
        "Requirements": "",
    }
    assert [r.status for r in reqs] == ["NEW", "IN_PROGRESS", "BLOCKED"]
    assert [r.priority for r in reqs] == [1, 0, 2]
    assert len({r.content_hash for r in reqs}) == 3
    assert parse_report(REFERENCE)[1] == []


def test_owner_request_is_frozen_and_hashable() -> None:
    r = parse(REFERENCE)[0]
    with pytest.raises(AttributeError):
        r.status = "DEPLOYED"  # type: ignore[misc]
    with pytest.raises(TypeError):
        r.fields["Status"] = "X"  # type: ignore[index]
    assert hash(r) == hash(parse(REFERENCE)[0])


def test_seed_deployed_block() -> None:
    (r,) = parse(SEED_DEPLOYED)
    assert r.req_number == "REQ-XXX-YYY"
    assert r.title == "[Feature Title]"
    assert r.status == "DEPLOYED"
    assert r.fields["Deployed At"] == "2025-12-23T22:45:00Z"
    assert r.fields["Commit"] == "abc1234"
    assert r.fields["Deployed By"] == "berry"
    assert r.priority == 2 and r.owner is None and r.requirements == ()


def test_crlf_parses_like_lf() -> None:
    crlf = REFERENCE.replace("\n", "\r\n")
    assert parse(crlf) == parse(REFERENCE)


def test_colon_inside_bold_lowercase_and_spacing() -> None:
    text = (
        "### REQ-1: One\n**Status:** in progress\n**Owner:**   @ana  \n"
        "**Priority** :  p3\n\n### REQ-2: Two\n**status**:complete\n"
        "### REQ-3: Three\n**Status**: `blocked`\n"
        "### REQ-4: Four\n**Status**: Complete - shipped last week\n"
    )
    r1, r2, r3, r4 = parse(text)
    assert (r1.status, r1.owner, r1.priority) == ("IN_PROGRESS", "ana", 3)
    assert r2.status == "COMPLETE"
    assert r3.status == "BLOCKED"
    assert r4.status == "COMPLETE"


def test_missing_status_defaults_to_new_and_is_reported() -> None:
    text = "### REQ-7: No status\n\n**Owner**: marcus\n"
    reqs, problems = parse_report(text)
    assert reqs[0].status == "NEW"
    assert any("REQ-7 has no **Status**" in p for p in problems)


def test_heading_without_title_and_entry_boundaries() -> None:
    text = (
        "### REQ-1\n**Status**: NEW\n---\n**Status**: DEPLOYED\n"  # after --- : prose
        "## Archive\n### REQ-2: Two\n**Status**: DEFERRED\n#### Details\n**Owner**: x\n"
        "# Top\n**Owner**: y\n"
    )
    r1, r2 = parse(text)
    assert (r1.title, r1.status) == ("", "NEW")
    assert (r2.status, r2.owner) == ("DEFERRED", "x")  # #### does not end an entry


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("P0", 0),
        ("P1", 1),
        ("p2", 2),
        ("P3", 3),
        ("**P1**", 1),
        ("P1 - high", 1),
        ("1", 1),
        ("High", 1),
        ("critical", 0),
        ("low", 3),
        ("P7", 2),
        ("soon", 2),
        ("", 2),
    ],
)
def test_priority_parsing(value: str, expected: int) -> None:
    text = f"### REQ-1: x\n**Status**: NEW\n**Priority**: {value}\n"
    reqs, problems = parse_report(text)
    assert reqs[0].priority == expected
    if value in ("P7", "soon", ""):
        assert any("unparseable priority" in p for p in problems)


def test_priority_missing_defaults_to_two() -> None:
    assert parse("### REQ-1: x\n**Status**: NEW\n")[0].priority == 2


def test_invalid_and_duplicate_ids_are_reported() -> None:
    long_id = "REQ-" + "a" * 61
    text = (
        "### REQ-1: first\n**Status**: NEW\n---\n"
        "### REQ-A.B: dotted\n**Status**: NEW\n---\n"
        "### req-2: lowercase\n---\n"
        f"### {long_id}: too long\n---\n"
        "### Notes\nsome section that is not a REQ\n"
        "### REQ-1: second copy\n**Status**: DEPLOYED\n---\n"
    )
    reqs, problems = parse_report(text)
    assert [(r.req_number, r.title, r.status) for r in reqs] == [("REQ-1", "first", "NEW")]
    assert "line 4: 'REQ-A.B' is not a valid REQ id; entry ignored" in problems
    assert any("'req-2' is not a valid REQ id" in p for p in problems)
    assert any(long_id in p for p in problems)
    assert "line 13: duplicate entry REQ-1 (first at line 1); first one wins" in problems
    assert not any("Notes" in p for p in problems)


def test_templates_in_code_fences_are_not_entries() -> None:
    text = "How to add one:\n```markdown\n### REQ-XXX-YYY: Title\n**Status**: NEW\n```\n"
    assert parse(text) == []
    fenced = "### REQ-1: x\n**Status**: NEW\n```\n---\n**Status**: DEPLOYED\n```\n**Owner**: o\n"
    (r,) = parse(fenced)
    assert (r.status, r.owner) == ("NEW", "o")


def test_requirements_stop_at_next_field_and_keep_bold_bullets() -> None:
    text = (
        "### REQ-1: x\n**Status**: NEW\n**Requirements**:\n\n- a\n  continued\n"
        "* **Latency**: < 200ms\n1. numbered\n**Acceptance Criteria**:\n- not a requirement\n"
    )
    (r,) = parse(text)
    assert r.requirements == ("a continued", "**Latency**: < 200ms", "numbered")
    assert "Acceptance Criteria" in r.fields


def test_bom_is_tolerated_and_kept() -> None:
    text = "\ufeff" + REFERENCE
    assert parse(text) == parse(REFERENCE)
    out = set_status(text, "REQ-XXX-YYY", "PENDING")
    assert out == "\ufeff" + set_status(REFERENCE, "REQ-XXX-YYY", "PENDING")


# ------------------------------------------------------------------------ set_status


def test_set_status_touches_only_that_entrys_status_lines() -> None:
    extra = {"Deployed At": "2025-12-23T22:45:00Z", "Commit": "abc1234", "Deployed By": "berry"}
    out = set_status(REFERENCE, "REQ-1767924916115-9l233", "DEPLOYED", extra)
    assert _without_agogd_lines(out, "REQ-1767924916115-9l233") == _without_agogd_lines(
        REFERENCE, "REQ-1767924916115-9l233"
    )
    old, new = REFERENCE.split("\n"), out.split("\n")
    assert len(new) == len(old) + 3
    i = old.index("**Status**: IN_PROGRESS")
    assert old[:i] == new[:i] and old[i + 1 :] == new[i + 4 :]
    assert new[i : i + 4] == [
        "**Status**: DEPLOYED",
        "**Deployed At**: 2025-12-23T22:45:00Z",
        "**Commit**: abc1234",
        "**Deployed By**: berry",
    ]
    r = _by_id(out)["REQ-1767924916115-9l233"]
    assert r.status == "DEPLOYED" and r.fields["Commit"] == "abc1234"


def test_set_status_replaces_existing_extra_lines() -> None:
    out = set_status(SEED_DEPLOYED, "REQ-XXX-YYY", "DEPLOYED", {"Commit": "def5678"})
    assert out == SEED_DEPLOYED.replace("abc1234", "def5678")
    out = set_status(SEED_DEPLOYED, "REQ-XXX-YYY", "BLOCKED", {"Blocked Reason": "CI red"})
    assert out.splitlines()[1:3] == ["**Status**: BLOCKED", "**Deployed At**: 2025-12-23T22:45:00Z"]
    assert "**Blocked Reason**: CI red\n" in out
    assert out.splitlines()[-1] == "**Blocked Reason**: CI red"


def test_set_status_keeps_colon_inside_bold_style() -> None:
    text = "### REQ-1: x\n\n**Status:**  new\n**Owner:** m\n"
    out = set_status(text, "REQ-1", "IN_PROGRESS", {"Commit": "abc"})
    assert out == "### REQ-1: x\n\n**Status:**  IN_PROGRESS\n**Commit**: abc\n**Owner:** m\n"


def test_set_status_inserts_missing_status_after_heading_blank_line() -> None:
    text = "### REQ-1: x\n\n**Owner**: m\n---\n### REQ-2: y\n**Owner**: n\n"
    out = set_status(text, "REQ-1", "PENDING")
    assert (
        out
        == "### REQ-1: x\n\n**Status**: PENDING\n**Owner**: m\n---\n### REQ-2: y\n**Owner**: n\n"
    )
    out = set_status(text, "REQ-2", "PENDING")
    assert out.endswith("### REQ-2: y\n**Status**: PENDING\n**Owner**: n\n")
    assert set_status("### REQ-3", "REQ-3", "NEW") == "### REQ-3\n**Status**: NEW"


def test_set_status_keeps_crlf() -> None:
    crlf = REFERENCE.replace("\n", "\r\n")
    out = set_status(crlf, "REQ-SALES-002", "DEPLOYED", {"Commit": "c0ffee"})
    assert "\n" not in out.replace("\r\n", "")
    assert out == set_status(REFERENCE, "REQ-SALES-002", "DEPLOYED", {"Commit": "c0ffee"}).replace(
        "\n", "\r\n"
    )


def test_set_status_leaves_other_entries_and_duplicates_alone() -> None:
    text = "### REQ-1: a\n**Status**: NEW\n---\n### REQ-1: copy\n**Status**: NEW\n"
    out = set_status(text, "REQ-1", "BLOCKED")
    assert out == "### REQ-1: a\n**Status**: BLOCKED\n---\n### REQ-1: copy\n**Status**: NEW\n"


def test_set_status_errors() -> None:
    with pytest.raises(KeyError):
        set_status(REFERENCE, "REQ-NOPE", "NEW")
    with pytest.raises(KeyError):
        set_status("```\n### REQ-1: x\n```\n", "REQ-1", "NEW")
    for bad in ("abc\n### REQ-EVIL: x", "abc\rdef", "a\u2028b"):
        with pytest.raises(ValueError):
            set_status(REFERENCE, "REQ-XXX-YYY", "DEPLOYED", {"Commit": bad})
    with pytest.raises(ValueError):
        set_status(REFERENCE, "REQ-XXX-YYY", "NEW\n---")
    with pytest.raises(ValueError):
        set_status(REFERENCE, "REQ-XXX-YYY", "**bold**")
    with pytest.raises(ValueError):  # not agogd's field: writing it would look like a human edit
        set_status(REFERENCE, "REQ-XXX-YYY", "NEW", {"Owner": "mallory"})


def test_set_status_is_a_noop_when_already_so() -> None:
    assert set_status(REFERENCE, "REQ-XXX-YYY", "new") == REFERENCE
    assert set_status(SEED_DEPLOYED, "REQ-XXX-YYY", "DEPLOYED", {"Commit": "abc1234"}) == (
        SEED_DEPLOYED
    )


# ------------------------------------------------------------------------ hashes


def test_content_hash_ignores_agogd_writes_but_sees_human_edits() -> None:
    before = _by_id(REFERENCE)
    out = set_status(REFERENCE, "REQ-XXX-YYY", "DEPLOYED", {"Commit": "a", "Deployed By": "b"})
    out = set_status(out, "REQ-SALES-002", "PENDING")
    after = _by_id(out)
    assert {k: r.content_hash for k, r in after.items()} == {
        k: r.content_hash for k, r in before.items()
    }
    edited = out.replace("- quote builder\n", "- quote builder\n- quote PDF\n")
    assert _by_id(edited)["REQ-SALES-002"].content_hash != before["REQ-SALES-002"].content_hash
    assert _by_id(edited)["REQ-XXX-YYY"].content_hash == before["REQ-XXX-YYY"].content_hash
    # trailing spaces and CRLF are not edits
    assert (
        parse(REFERENCE.replace("\n", "  \r\n"))[0].content_hash
        == before["REQ-XXX-YYY"].content_hash
    )


def test_changed_entries() -> None:
    seen: dict[str, str] = {}
    first = parse(REFERENCE)
    assert changed_entries(seen, first) == first
    seen = {r.req_number: r.content_hash for r in first}
    text = set_status(REFERENCE, "REQ-XXX-YYY", "COMPLETE", {"Commit": "x"})
    assert changed_entries(seen, parse(text)) == []
    text = text.replace("**Owner**: todd", "**Owner**: marcus")
    text += "\n### REQ-NEW-1: New one\n\n**Status**: NEW\n"
    assert [r.req_number for r in changed_entries(seen, parse(text))] == [
        "REQ-1767924916115-9l233",
        "REQ-NEW-1",
    ]


# ------------------------------------------------------------------------ property

_TEXT = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="#*`[]:-"
    ),
    min_size=1,
    max_size=20,
).map(str.strip)
_REQ_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=25
).map(lambda s: s.strip(" \t"))
_STATUSES = sorted(KNOWN_STATUSES)


@st.composite
def _entry(draw: st.DrawFn, req: str) -> str:
    title = draw(_TEXT)
    lines = [f"### {req}: {title}" if title else f"### {req}"]
    if draw(st.booleans()):
        lines.append("")
    status = draw(st.sampled_from([*_STATUSES, None]))
    if status is not None:
        style = draw(st.sampled_from(["**Status**: {}", "**Status:** {}", "**Status** :  {}"]))
        lines.append(style.format(status if draw(st.booleans()) else status.lower()))
    if draw(st.booleans()):
        lines.append(f"**Owner**: {draw(_TEXT)}")
    if draw(st.booleans()):
        lines.append(f"**Priority**: P{draw(st.integers(0, 3))}")
    if draw(st.booleans()):
        lines.append(f"Some prose: {draw(_TEXT)}")
    lines.append("**Requirements**:")
    lines += [f"- {t}" for t in draw(st.lists(_REQ_TEXT, max_size=4)) if t]
    if draw(st.booleans()):
        lines.append("---")
    lines.append("")
    return "\n".join(lines)


@st.composite
def _files(draw: st.DrawFn) -> tuple[str, list[str]]:
    ids = draw(
        st.lists(
            st.from_regex(r"\AREQ-[A-Za-z0-9][A-Za-z0-9_-]{0,20}\Z"),
            min_size=1,
            max_size=5,
            unique=True,
        )
    )
    text = "# Owner Requests\n\n" + "\n".join(draw(_entry(req)) for req in ids)
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    return text, ids


_EXTRAS = st.dictionaries(
    st.sampled_from(["Deployed At", "Commit", "Deployed By", "Blocked Reason"]),
    st.text(alphabet="abcdef0123456789:TZ-. ", max_size=20),
    max_size=3,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _files(),
    st.lists(st.tuples(st.integers(0, 4), st.sampled_from(_STATUSES), _EXTRAS), max_size=6),
)
def test_property_set_status_changes_only_the_target(
    file: tuple[str, list[str]], updates: list[tuple[int, str, dict[str, str]]]
) -> None:
    text, ids = file
    original = parse(text)
    assert [r.req_number for r in original] == ids
    for index, status, extra in updates:
        req = ids[index % len(ids)]
        before = parse(text)
        text = set_status(text, req, status, extra)
        after, problems = parse_report(text)
        assert not any("not a valid" in p or "duplicate" in p for p in problems)
        assert [r.req_number for r in after] == ids
        for old, new in zip(before, after, strict=True):
            assert new.title == old.title
            assert new.requirements == old.requirements
            assert new.owner == old.owner
            assert new.priority == old.priority
            assert new.content_hash == old.content_hash
            if new.req_number == req:
                assert new.status == status
                for name, value in extra.items():
                    assert new.fields[name] == value.strip()
            else:
                assert new == old
    final = parse(text)
    assert [(r.title, r.requirements) for r in final] == [
        (r.title, r.requirements) for r in original
    ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _files(),
    st.lists(st.tuples(st.integers(0, 4), st.sampled_from(_STATUSES), _EXTRAS), max_size=8),
)
def test_property_one_batch_equals_the_updates_one_by_one(
    file: tuple[str, list[str]], updates: list[tuple[int, str, dict[str, str]]]
) -> None:
    text, ids = file
    batch = [(ids[i % len(ids)], status, extra) for i, status, extra in updates]
    batch.append(("REQ-NOT-IN-FILE", "BLOCKED", None))
    together, changed = set_statuses(text, batch)
    one_by_one = text
    for req, status, extra in batch[:-1]:
        one_by_one = set_status(one_by_one, req, status, extra)
    if len({req for req, _, _ in batch}) == len(batch):  # each REQ once: the same bytes
        assert together == one_by_one
    else:  # a REQ twice: the same entries (inserted lines may come in another order,
        # and a status already so in another case is left as the human wrote it)

        def seen(text: str) -> list[tuple[str, str, dict[str, str], str]]:
            return [
                (
                    r.req_number,
                    r.status,
                    {k: v for k, v in r.fields.items() if k != "Status"},
                    r.content_hash,
                )
                for r in parse(text)
            ]

        assert seen(together) == seen(one_by_one)
    assert (together == text) == (not changed)
    assert changed <= {req for req, _, _ in batch[:-1]}  # never the REQ not in the file


# ------------------------------------------------------------------------ the file


def test_file_read_missing_and_present(tmp_path: Path) -> None:
    f = OwnerRequestsFile(tmp_path / "OWNER_REQUESTS.md")
    assert f.read() == []
    assert f.update_status("REQ-XXX-YYY", "NEW") is False
    assert not f.path.exists()
    f.path.write_text(REFERENCE)
    assert f.read() == parse(REFERENCE)


def test_a_reread_sees_every_change_even_of_the_same_size_at_once(tmp_path: Path) -> None:
    f = OwnerRequestsFile(tmp_path / "OWNER_REQUESTS.md")
    f.path.write_text(REFERENCE)
    first = f.read()
    first.clear()  # the caller's list, not the cache
    assert f.read() == parse(REFERENCE)
    edited = REFERENCE.replace("**Priority**: P1", "**Priority**: P3", 1)
    assert len(edited) == len(REFERENCE) and edited != REFERENCE
    f.path.write_text(edited)  # same size, same inode, within the same clock tick
    assert f.read() == parse(edited)
    f.path.unlink()
    assert f.read() == []


def test_update_statuses_is_one_rewrite_equal_to_one_by_one(tmp_path: Path) -> None:
    """A burst of status changes is one atomic replace of the file (one new
    inode), with the same text as the updates applied one at a time."""
    updates = [
        ("REQ-SALES-002", "IN_PROGRESS", None),
        ("REQ-ABSENT", "DEPLOYED", None),
        ("REQ-SALES-002", "DEPLOYED", {"Commit": "abc1234", "Deployed By": "berry"}),
    ]
    ids = [e.req_number for e in parse(REFERENCE)]
    updates += [(req, "COMPLETE", {"Commit": "f00"}) for req in ids if req != "REQ-SALES-002"]
    one_by_one = OwnerRequestsFile(tmp_path / "a.md")
    one_by_one.path.write_text(REFERENCE)
    for req, status, extra in updates:
        one_by_one.update_status(req, status, extra)
    batch = OwnerRequestsFile(tmp_path / "b.md")
    batch.path.write_text(REFERENCE)
    inode = batch.path.stat().st_ino
    changed = batch.update_statuses(updates)
    assert changed == set(ids)
    assert batch.path.read_text() == one_by_one.path.read_text()
    assert batch.path.stat().st_ino != inode  # replaced, once: nothing left to change
    assert batch.update_statuses(updates[2:]) == set()


def test_update_status_writes_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "OWNER_REQUESTS.md"
    path.write_bytes(REFERENCE.replace("\n", "\r\n").encode())
    path.chmod(0o640)
    f = OwnerRequestsFile(path)
    extra = {"Deployed At": "2025-12-23T22:45:00Z", "Commit": "abc1234", "Deployed By": "berry"}
    assert f.update_status("REQ-SALES-002", "DEPLOYED", extra) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    data = path.read_bytes()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert _by_id(data.decode())["REQ-SALES-002"].status == "DEPLOYED"
    st_before = path.stat()
    assert f.update_status("REQ-SALES-002", "DEPLOYED", extra) is False
    assert f.update_status("REQ-SALES-002", "deployed", {"Commit": "abc1234"}) is False
    assert f.update_status("REQ-ABSENT", "DEPLOYED") is False
    st_after = path.stat()
    assert (st_after.st_ino, st_after.st_mtime_ns) == (st_before.st_ino, st_before.st_mtime_ns)
    assert path.read_bytes() == data
    with pytest.raises(ValueError):
        f.update_status("REQ-SALES-002", "DEPLOYED", {"Commit": "x\ny"})


def test_atomic_write_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "OWNER_REQUESTS.md"
    path.write_text(REFERENCE)
    f = OwnerRequestsFile(path)
    for status in ("PENDING", "IN_PROGRESS", "COMPLETE"):
        assert f.update_status("REQ-XXX-YYY", status) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "OWNER_REQUESTS.md",
        "OWNER_REQUESTS.md.lock",
    ]

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    before = path.read_bytes()
    monkeypatch.setattr(owner_requests.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        f.update_status("REQ-XXX-YYY", "BLOCKED")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "OWNER_REQUESTS.md",
        "OWNER_REQUESTS.md.lock",
    ]


def test_symlinked_file_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.md"
    real.write_text(REFERENCE)
    link = tmp_path / "OWNER_REQUESTS.md"
    link.symlink_to(real)
    assert OwnerRequestsFile(link).update_status("REQ-XXX-YYY", "PENDING") is True
    assert link.is_symlink()
    assert _by_id(real.read_text())["REQ-XXX-YYY"].status == "PENDING"


def test_human_edit_between_updates_survives(tmp_path: Path) -> None:
    path = tmp_path / "OWNER_REQUESTS.md"
    path.write_text(REFERENCE)
    f = OwnerRequestsFile(path)
    assert f.update_status("REQ-XXX-YYY", "IN_PROGRESS") is True
    with path.open("a") as human:
        human.write("\n### REQ-HUMAN-1: Added by hand\n\n**Status**: NEW\n**Priority**: P0\n---\n")
    assert f.update_status("REQ-SALES-002", "COMPLETE") is True
    reqs = _by_id(path.read_text())
    assert reqs["REQ-HUMAN-1"].priority == 0
    assert reqs["REQ-XXX-YYY"].status == "IN_PROGRESS"
    assert reqs["REQ-SALES-002"].status == "COMPLETE"
    assert f.update_status("REQ-HUMAN-1", "PENDING") is True
    assert path.read_text().endswith("**Status**: PENDING\n**Priority**: P0\n---\n")


def test_human_save_during_update_is_reread_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "OWNER_REQUESTS.md"
    path.write_text(REFERENCE)
    real_set_statuses = owner_requests.set_statuses
    calls: list[int] = []

    def set_statuses_while_human_saves(text: str, *args: object) -> tuple[str, set[str]]:
        calls.append(1)
        if len(calls) == 1:  # the human saves after agogd read the file
            path.write_text(REFERENCE + "\n### REQ-HUMAN-2: typed meanwhile\n")
        return real_set_statuses(text, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(owner_requests, "set_statuses", set_statuses_while_human_saves)
    assert OwnerRequestsFile(path).update_status("REQ-XXX-YYY", "BLOCKED") is True
    assert len(calls) == 2
    reqs = _by_id(path.read_text())
    assert reqs["REQ-XXX-YYY"].status == "BLOCKED"
    assert "REQ-HUMAN-2" in reqs


CYCLE = ["PENDING", "IN_PROGRESS", "BLOCKED", "COMPLETE", "DEPLOYED"]
MANY = [f"REQ-CONC-{i}" for i in range(8)]


def _many_file() -> str:
    return "# Owner Requests\n\n" + "".join(
        f"### {req}: Concurrent {req}\n\n**Status**: NEW\n**Owner**: marcus\n"
        f"**Requirements**:\n- survive {req}\n---\n\n"
        for req in MANY
    )


def _hammer(path: str, req: str, rounds: int) -> None:
    """One writer: cycle req's status, with a commit line that changes every time."""
    f = OwnerRequestsFile(Path(path))
    for i in range(rounds):
        assert f.update_status(req, CYCLE[i % len(CYCLE)], {"Commit": f"{req}-{i}"})


def _check_hammered(path: Path, reqs: list[str], rounds: int, original: str) -> None:
    text = path.read_text()
    parsed, problems = parse_report(text)
    assert problems == []
    assert [r.req_number for r in parsed] == MANY
    before = _by_id(original)
    for r in parsed:
        assert r.content_hash == before[r.req_number].content_hash
        if r.req_number in reqs:
            assert r.status == CYCLE[(rounds - 1) % len(CYCLE)]
            assert r.fields["Commit"] == f"{r.req_number}-{rounds - 1}"
        else:
            assert r == before[r.req_number]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".lock"]


@pytest.mark.timeout(120)
def test_concurrent_processes(tmp_path: Path) -> None:
    path = tmp_path / "OWNER_REQUESTS.md"
    path.write_text(_many_file())
    reqs, rounds = MANY[:4], 20
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(path), req, rounds)) for req in reqs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    _check_hammered(path, reqs, rounds, _many_file())


@pytest.mark.timeout(120)
def test_concurrent_threads(tmp_path: Path) -> None:
    path = tmp_path / "OWNER_REQUESTS.md"
    path.write_text(_many_file())
    errors: list[BaseException] = []

    def run(req: str) -> None:
        try:
            _hammer(str(path), req, 15)
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(req,)) for req in MANY]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    _check_hammered(path, MANY, 15, _many_file())


def test_lock_is_exclusive_across_open_file_descriptions(tmp_path: Path) -> None:
    """A second writer blocks while the first holds the lock (flock, not fcntl locks)."""
    path = tmp_path / "OWNER_REQUESTS.md"
    path.write_text(REFERENCE)
    f = OwnerRequestsFile(path)
    done = threading.Event()
    with f.locked():
        t = threading.Thread(target=lambda: (f.update_status("REQ-XXX-YYY", "PENDING"), done.set()))
        t.start()
        assert not done.wait(0.3)
        assert _by_id(path.read_text())["REQ-XXX-YYY"].status == "NEW"
    t.join(10)
    assert done.is_set()
    assert _by_id(path.read_text())["REQ-XXX-YYY"].status == "PENDING"
    assert os.path.exists(f.lock_path)
