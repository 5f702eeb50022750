"""Completion notices in the seeds' shape, for scripted agents: the tests'
and the chaos soak's (shared, so that ``bench/`` never imports ``tests/``)."""

from __future__ import annotations

from typing import Any

from orchestrator.core.registry import Pipeline


def notice(
    pipeline: Pipeline, agent: str, req: str, status: str = "COMPLETE", **extra: Any
) -> dict[str, Any]:
    """A notice with the fields its stage's gate looks at (the registry says
    which gate): a critique's verdict, QA's tests, the deployment's commit."""
    body: dict[str, Any] = {
        "agent": agent,
        "req_number": req,
        "status": status,
        "deliverable": f"nats://agog.deliverables.{agent}/{req}",
        "summary": f"{agent} did the work",
        "files_modified": [],
    }
    stage = pipeline.stage_for_agent(agent)
    gate = stage.gate if stage is not None else "none"
    if status == "COMPLETE" and gate == "critique":
        body["critique_verdict"] = "APPROVED"
    if status == "COMPLETE" and gate == "qa":
        body["tests_passed"] = True
    if status == "COMPLETE" and gate == "deploy":
        body.update(commit_sha="abc1234", deployed_at="2026-11-23T10:00:00Z")
        after = pipeline.followups_after(agent)
        if after:
            body["next_agent"] = after[0].agent
    return {**body, **extra}
