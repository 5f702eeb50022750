"""The chaos soak's CI variant: 200 REQs through three agogd replicas, a
three-node NATS cluster with R3 streams and one Postgres, while replicas,
NATS nodes and Postgres fail on a seeded schedule (bench/chaos_soak.py,
docs/chaos.md). It must pass: nothing lost, nothing doubled, all agree.

``CHAOS_SEED`` picks another schedule; the data directory and the replicas'
logs stay under pytest's tmp_path for a failed run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.chaos_soak import KINDS, SoakConfig, run

SEED = int(os.environ.get("CHAOS_SEED", "20261123"))


@pytest.mark.timeout(900)
async def test_chaos_soak_200_reqs(tmp_path: Path) -> None:
    cfg = SoakConfig(reqs=200, seed=SEED, duration=60.0, data_dir=tmp_path / "soak", keep=True)
    verdict = await run(cfg)
    report = verdict.report()
    print(report)
    assert verdict.ok, report
    assert {f.kind for f in verdict.faults} == set(KINDS)
    assert all(f.error is None and f.next_commit is not None for f in verdict.faults), report
    misbehaved = ("hung", "crashed_nak", "crashed_term", "dup_same_id", "dup_no_id", "dup_late")
    assert all(verdict.agents.get(kind) for kind in misbehaved), verdict.agents
