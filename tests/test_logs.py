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
