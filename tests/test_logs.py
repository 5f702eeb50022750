"""Logging: JSON lines with bound context, secrets redacted."""

from __future__ import annotations

import json

import pytest

from orchestrator.runtime import logs


def test_json_lines_carry_bound_context(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    log = logs.get_logger("t")
    with logs.bound_context(
        req_number="REQ-1", stage=4, agent="billy", msg_subject="agog.deliverables.billy.qa.REQ-1"
    ):
        log.info("stage.completed", attempt=1)
    log.info("outside")
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    first, second = lines[-2], lines[-1]
    assert first["event"] == "stage.completed"
    assert first["req_number"] == "REQ-1" and first["stage"] == 4 and first["agent"] == "billy"
    assert first["msg_subject"] == "agog.deliverables.billy.qa.REQ-1"
    assert first["level"] == "info" and "timestamp" in first
    assert "req_number" not in second


def test_secrets_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    logs.get_logger("t").info(
        "connect",
        password="hunter2",
        dsn="postgresql://u:hunter2@db/agent_memory",
        nats_token="tok",
    )
    out = capsys.readouterr().out
    assert "hunter2" not in out and 'tok"' not in out
    assert "postgresql://u:***@db/agent_memory" in out


def test_console_format_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "console")
    logs.get_logger("t").info("hello", req_number="REQ-2")
    out = capsys.readouterr().out
    assert "hello" in out and "req_number" in out and not out.lstrip().startswith("{")


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("warning", "json")
    logs.get_logger("t").info("quiet")
    logs.get_logger("t").warning("loud")
    out = capsys.readouterr().out
    assert "loud" in out and "quiet" not in out


def test_timestamps_are_iso_utc_with_microseconds(capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import UTC, datetime, timedelta

    logs.configure("info", "json")
    before = datetime.now(UTC)
    for _ in range(3):
        logs.get_logger("t").info("tick")
    after = datetime.now(UTC)
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    for line in lines[-3:]:
        stamp = line["timestamp"]
        assert stamp.endswith("Z") and len(stamp) == len("2026-12-02T23:15:08.553123Z"), stamp
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert before - timedelta(milliseconds=1) <= when <= after + timedelta(milliseconds=1)


def test_nested_context_is_restored_and_the_call_wins(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("info", "json")
    log = logs.get_logger("t")
    with logs.bound_context(req_number="REQ-1", stage=1):
        with logs.bound_context(stage=2, agent=None):
            log.info("inner")
        log.info("outer", stage=9)
    log.info("none")
    inner, outer, none = (json.loads(x) for x in capsys.readouterr().out.splitlines()[-3:])
    assert inner["req_number"] == "REQ-1" and inner["stage"] == 2 and "agent" not in inner
    assert outer["stage"] == 9 and outer["req_number"] == "REQ-1"
    assert "req_number" not in none and "stage" not in none


def test_a_secret_key_is_masked_every_time_not_only_the_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("info", "json")
    log = logs.get_logger("t")
    for i in range(3):  # the key's verdict is remembered after the first line
        log.info("login", db_password=f"pw-{i}-x", user_name="u")
    out = capsys.readouterr().out
    assert "pw-" not in out and out.count('"db_password":"***"') == 3
    assert out.count('"user_name":"u"') == 3
