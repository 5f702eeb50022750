"""The failpoints' parsing: a crash point, and a pause that holds a window open."""

from __future__ import annotations

import pytest

from orchestrator.runtime import failpoints


def test_a_pause_is_read_from_its_entry_and_never_kills(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGOG_FAILPOINTS", "a.crash,backup.streams_snapshotted=pause:2.5,b=pause:x")
    assert failpoints.pause_seconds("backup.streams_snapshotted") == 2.5
    assert failpoints.pause_seconds("a.crash") == 0.0  # a crash point is not a pause
    assert failpoints.pause_seconds("b") == 0.0  # a bad number: no pause, a warning
    assert failpoints.pause_seconds("elsewhere") == 0.0
    failpoints.hit("backup.streams_snapshotted")  # a pause entry never kills
    assert "a.crash" in failpoints.armed()
