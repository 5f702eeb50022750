"""Notice extraction: the last fenced object wins, else the last top-level object; never a crash."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from orchestrator.inbound.notice_extract import NoNotice, extract_notice

NOTICE = {"status": "COMPLETE", "agent": "roy", "changes": {"files": ["a.py"], "n": 2}}
NOTICE_JSON = json.dumps(NOTICE)


def refused(output: str) -> str:
    with pytest.raises(NoNotice) as info:
        extract_notice(output)
    return info.value.reason


def fenced(obj: Any, tag: str = "json") -> str:
    return f"```{tag}\n{json.dumps(obj, indent=2)}\n```"


# --- fenced blocks ------------------------------------------------------------
def test_fenced_block_in_prose() -> None:
    output = f"I changed a.py.\n\n{fenced(NOTICE)}\n\nAll done, {{bye}}.\n"
    assert extract_notice(output) == NOTICE


def test_last_of_several_fenced_blocks_wins() -> None:
    output = "\n".join(
        ["Draft:", fenced({"status": "IN_PROGRESS"}), "Final:", fenced(NOTICE), "end"]
    )
    assert extract_notice(output) == NOTICE


def test_invalid_fenced_block_after_a_valid_one_is_skipped() -> None:
    output = f"{fenced(NOTICE)}\nOops:\n```json\n{{'status': 'FAILED',}}\n```\n"
    assert extract_notice(output) == NOTICE


def test_fenced_block_that_is_not_an_object_is_skipped() -> None:
    output = f"{fenced(NOTICE)}\n{fenced([1, 2, 3])}\n{fenced('text')}\n"
    assert extract_notice(output) == NOTICE


@pytest.mark.parametrize("tag", ["JSON", "", "  json  "])
def test_uppercase_and_bare_fences(tag: str) -> None:
    output = f'Here you go:\n{fenced(NOTICE, tag)}\nAn example object: {{"x": 1}}.'
    assert extract_notice(output) == NOTICE


def test_other_languages_are_not_notices_but_the_scan_can_still_find_them() -> None:
    output = f"{fenced({'a': 1}, 'python')}\n{fenced(NOTICE)}\n{fenced({'b': 2}, 'yaml')}"
    assert extract_notice(output) == NOTICE
    # With no json/bare fence at all, the bare scan sees inside any fence.
    assert extract_notice(fenced(NOTICE, "python")) == NOTICE


def test_fenced_block_beats_a_later_bare_object() -> None:
    output = f'{fenced(NOTICE)}\nFor example a config looks like {{"x": 1}}.\n'
    assert extract_notice(output) == NOTICE


def test_unparsable_fenced_blocks_fall_back_to_the_scan() -> None:
    output = f'{NOTICE_JSON}\n```json\n{{"status": "COMPLETE",\n```\n'
    assert extract_notice(output) == NOTICE


def test_stray_fence_lines_do_not_hide_the_notice() -> None:
    output = (
        f"{fenced({'status': 'DRAFT'})}\n```\nan unclosed fence\n{{ and a brace\n{fenced(NOTICE)}\n"
    )
    assert extract_notice(output) == NOTICE


def test_unclosed_final_json_fence_runs_to_the_end() -> None:
    output = f"{fenced({'status': 'DRAFT'})}\n```json\n{NOTICE_JSON}\n"
    assert extract_notice(output) == NOTICE


def test_indented_fence() -> None:
    output = "1. Result:\n   ```json\n   " + NOTICE_JSON + "\n   ```\n"
    assert extract_notice(output) == NOTICE


# --- line endings -------------------------------------------------------------
def test_crlf_fenced_and_bare() -> None:
    body = json.dumps(NOTICE, indent=2).replace("\n", "\r\n")
    assert extract_notice(f"done\r\n```json\r\n{body}\r\n```\r\n") == NOTICE
    assert extract_notice(f"done\r\n{body}\r\n") == NOTICE


def test_lone_cr_line_endings() -> None:
    body = json.dumps(NOTICE, indent=2).replace("\n", "\r")
    # The fence is only seen if CR ends lines: otherwise the later bare object would win.
    assert extract_notice(f'old mac\r```json\r{body}\r```\rsee {{"x": 1}}\r') == NOTICE


@pytest.mark.parametrize("eol", ["\r", "\r\n"])
def test_cr_ends_a_stray_string(eol: str) -> None:
    assert extract_notice(f'a lone {{ with a "stray quote{eol}{NOTICE_JSON}') == NOTICE


# --- the bare scan ------------------------------------------------------------
def test_nested_objects_return_the_outer_one() -> None:
    notice = {"a": {"b": {"c": [1, {"d": None}]}}, "e": []}
    assert extract_notice(f"result: {json.dumps(notice)} ok") == notice


def test_braces_inside_strings_do_not_count() -> None:
    notice = {"msg": 'unbalanced } and { and "quoted {" and \\ backslash', "x": "}}}"}
    assert extract_notice(f"Notice: {json.dumps(notice)}\nbye") == notice


def test_noise_before_and_after() -> None:
    output = f"Running tests...\n3 passed; {{coverage}} 91%\n{NOTICE_JSON}\nexit 0 }}\n"
    assert extract_notice(output) == NOTICE


def test_last_of_several_bare_objects_wins() -> None:
    output = f'{{"status": "IN_PROGRESS"}}\nworking...\n{NOTICE_JSON}\n'
    assert extract_notice(output) == NOTICE


def test_invalid_json_before_a_valid_object() -> None:
    output = f"{{'status': 'FAILED'}}\n{{\"status\": \"x\",}}\n{{not json}}\n{NOTICE_JSON}"
    assert extract_notice(output) == NOTICE


def test_valid_object_before_an_invalid_one_is_still_found() -> None:
    output = f'{NOTICE_JSON}\nthen a broken one: {{"a": 1,}}\n'
    assert extract_notice(output) == NOTICE


@pytest.mark.parametrize(
    "noise",
    [
        "a lone } in prose",
        "a lone { in prose",
        'a lone { with a "stray quote',
        "{{{ three opens",
        "}}} three closes",
        "set {a} and {b",
    ],
)
def test_unbalanced_stray_braces_before_the_notice(noise: str) -> None:
    assert extract_notice(f"{noise}\n{NOTICE_JSON}\n") == NOTICE


def test_unclosed_brace_after_the_notice() -> None:
    assert extract_notice(f"{NOTICE_JSON}\nnext time use {{ and") == NOTICE


def test_malformed_notice_is_not_mistaken_for_its_nested_object() -> None:
    output = '{"status": "COMPLETE", "notes": None, "checks": {"status": "FAILED"}}'
    assert "valid JSON" in refused(output)


def test_whole_output_is_the_notice() -> None:
    assert extract_notice(json.dumps(NOTICE, indent=4)) == NOTICE


# --- refusals -----------------------------------------------------------------
@pytest.mark.parametrize("output", ["", "   ", "\n\r\n\t"])
def test_empty_output(output: str) -> None:
    assert refused(output) == "no output"


@pytest.mark.parametrize("output", ["all done", "[1, 2, 3]", "a } b"])
def test_no_object(output: str) -> None:
    assert refused(output) == "no JSON object in the output"


@pytest.mark.parametrize("output", ['"{"', "just { open", '{"agent": "roy", '])
def test_a_brace_that_never_closes(output: str) -> None:
    assert refused(output) == "a '{' is never closed: truncated or malformed JSON"


def test_a_notice_beats_an_example_object_printed_after_it() -> None:
    output = f'```json\n{json.dumps(NOTICE)}\n```\nExample:\n```json\n{{"family": 1}}\n```'
    assert extract_notice(output) == NOTICE


@pytest.mark.parametrize("output", ["{not json}", "```json\n{'a': 1}\n```", "{x}}{y}"])
def test_only_invalid_objects(output: str) -> None:
    assert refused(output) == "no {...} block in the output is valid JSON"


def test_no_notice_is_a_value_error_with_a_reason() -> None:
    with pytest.raises(ValueError, match="no output") as info:
        extract_notice("")
    assert isinstance(info.value, NoNotice)
    assert info.value.reason == "no output"


def test_too_deep_or_too_long_numbers_are_refused_not_crashes() -> None:
    deep = '{"a":' * 100_000 + "1" + "}" * 100_000
    assert refused(deep) == "no {...} block in the output is valid JSON"
    assert refused('{"n": 1' + "0" * 5000 + "}") == "no {...} block in the output is valid JSON"


# --- size ---------------------------------------------------------------------
def test_huge_output_with_the_notice_at_the_end() -> None:
    line = 'INFO worker {id} said "hi {" } and { unbalanced [1, {"a": 2}]\n'
    noise = line * (5_000_000 // len(line))
    assert extract_notice(f"{noise}{fenced(NOTICE)}\n") == NOTICE
    assert extract_notice(f"{noise}{NOTICE_JSON}\n") == NOTICE


@pytest.mark.parametrize(
    "output",
    ["{" * 200_000, '{"{"' * 100_000, '"{\\"' * 100_000, "```json\n{\n" * 100_000],
)
def test_pathological_braces_finish(output: str) -> None:
    refused(output)


def test_pathological_braces_then_a_notice() -> None:
    assert extract_notice("{" * 200_000 + "\n" + NOTICE_JSON) == NOTICE


# --- properties ---------------------------------------------------------------
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
notices = st.dictionaries(st.text(), json_values, max_size=6)
dumps_options = st.sampled_from(
    [{}, {"indent": 2}, {"ensure_ascii": False}, {"indent": 1, "ensure_ascii": False}]
)


def noisy_text(exclude: str = "") -> st.SearchStrategy[str]:
    """Arbitrary text, heavy in the characters the extractor cares about."""
    special = [c for c in '{}[]":,\\`\n\r \tjson' if c not in exclude]
    return st.text(st.sampled_from(special) | st.characters(exclude_characters=exclude))


def dumped(notice: dict[str, Any], options: dict[str, Any]) -> str:
    return json.dumps(notice, **options)


drafts = st.builds(dumped, notices, dumps_options)
# A notice proper carries a status: of the objects in an output, the last one
# with a status wins over later ones without (an example printed after it).
status_notices = st.builds(lambda d, status: {**d, "status": status}, notices, json_values)


@given(
    notice=notices,
    options=dumps_options,
    prefix=noisy_text(exclude="{"),
    suffix=noisy_text(exclude="{"),
)
def test_notice_in_brace_free_text_is_recovered(
    notice: dict[str, Any], options: dict[str, Any], prefix: str, suffix: str
) -> None:
    assert extract_notice(prefix + dumped(notice, options) + suffix) == notice


@example(
    notice={"status": "COMPLETE"},
    options={},
    pieces=['```JSON\n{"status":null}\n```'],
    trailer="",
)
@given(
    notice=status_notices,
    options=dumps_options,
    pieces=st.lists(
        noisy_text()
        | drafts
        | drafts.map(lambda d: f"```json\n{d}\n```")
        | st.sampled_from(["```", "```json", "```JSON", "{", "}", '"', "\\"]),
        max_size=6,
    ),
    trailer=st.sampled_from(["", "\n", "\n\n", "  \n"]),
)
def test_fenced_notice_at_the_end_of_any_text_is_recovered(
    notice: dict[str, Any], options: dict[str, Any], pieces: list[str], trailer: str
) -> None:
    prefix = "\n".join(pieces)
    output = f"{prefix}\n```json\n{dumped(notice, options)}\n```{trailer}"
    assert extract_notice(output) == notice


@given(
    notice=status_notices,
    options=dumps_options,
    pieces=st.lists(noisy_text(exclude="`") | drafts, max_size=6),
    suffix=noisy_text(exclude="{}`"),
)
def test_last_bare_notice_survives_drafts_stray_braces_and_quotes(
    notice: dict[str, Any], options: dict[str, Any], pieces: list[str], suffix: str
) -> None:
    prefix = "\n".join(pieces)
    assert extract_notice(f"{prefix}\n{dumped(notice, options)}{suffix}") == notice


@given(
    notice=notices,
    lines=st.lists(noisy_text(exclude="{\r\n"), max_size=5),
    fence=st.booleans(),
)
def test_crlf_notice_is_recovered(notice: dict[str, Any], lines: list[str], fence: bool) -> None:
    body = json.dumps(notice, indent=2)
    if fence:
        body = f"```json\n{body}\n```"
    output = "\r\n".join([*lines, body.replace("\n", "\r\n"), *lines])
    assert extract_notice(output) == notice


@settings(max_examples=300)
@given(output=noisy_text())
def test_any_output_gives_an_object_or_no_notice(output: str) -> None:
    try:
        notice = extract_notice(output)
    except NoNotice as exc:
        assert exc.reason
    else:
        assert isinstance(notice, dict)
        assert "{" in output
