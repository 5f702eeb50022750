"""The kinds of memory, and the retention rule per kind (pure: no I/O).

Here, below both, because the settings check ``AGOG_MEMORY_RETENTION`` at
start and the memory (``orchestrator.memory``) applies it.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

# What a memory is about. `memory_type` in the table (the old daemon's name).
KINDS: tuple[str, ...] = (
    "requirement",  # the REQ's own text, at intake
    "deliverable",  # an accepted stage deliverable
    "rejection",  # a critique that sent the research back (Sylvia REJECTED)
    "qa_failure",  # Billy failed it
    "rollback",  # Berry's deploy was unhealthy and rolled back
    "decision",  # a strategic decision
    "escalation",  # the pipeline stopped and asked for help
    "resolution",  # the decision that resolved an escalation
)

ANY = "*"


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_age_days: float | None = Field(default=None, gt=0)
    max_count: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _something(self) -> Rule:
        if self.max_age_days is None and self.max_count is None:
            raise ValueError("a retention rule needs max_age_days, max_count or both")
        return self


def check_kinds(rules: Mapping[str, Rule]) -> None:
    unknown = sorted(k for k in rules if k != ANY and k not in KINDS)
    if unknown:
        raise ValueError(
            f"unknown memory kind {', '.join(unknown)}; kinds are {', '.join(KINDS)} or *"
        )
