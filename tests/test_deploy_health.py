"""Berry's health verdict when the engine misbehaves during the wait."""

from __future__ import annotations

import time
from pathlib import Path

from workers.release.deploy import ComposeDeployer, ComposeTarget


async def test_an_engine_that_stays_away_fails_the_verdict_with_its_reason(
    tmp_path: Path,
) -> None:
    """No engine answers on the socket for the whole health wait: the verdict
    is unhealthy and says why, at the deadline, instead of an exception that
    would leave Berry's deploy without a verdict (and so without a rollback)."""
    socket = tmp_path / "no-engine.sock"
    deployer = ComposeDeployer(
        f"unix://{socket}", ComposeTarget(files=("docker-compose.yml",)), health_timeout=1.5
    )
    started = time.monotonic()
    verdict = await deployer.wait_healthy("shop", ["web"])
    waited = time.monotonic() - started
    assert not verdict.healthy and not verdict.final
    assert len(verdict.problems) == 1 and "container engine error" in verdict.problems[0]
    assert "no-engine.sock" in verdict.problems[0]
    assert waited >= 1.5  # it kept trying until the deadline
