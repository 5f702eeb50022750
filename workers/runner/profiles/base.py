"""The interface every agent CLI profile implements (pure: no I/O).

The runner builds a ``RunSpec`` per attempt, asks the profile for an
``Invocation`` (argv, stdin, extra environment, files to write first), runs
it supervised, and hands stdout/stderr back to the profile's ``parse``,
which returns an ``AgentOutput``: the final text (where the notice is found)
and the accounting (session, model, tokens, cost, turns).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class ProfileError(ValueError):
    """A profile setting that cannot work, or a CLI too old: said once at start."""


@dataclass(frozen=True)
class RunSpec:
    """What the runner knows about one attempt, for the CLI's argv."""

    agent: str
    role: str
    model: str | None
    # The REQ's working tree: the agent may edit inside it and nowhere else.
    workdir: Path
    # The whole prompt (assignment, deliverables, rework, memories, notice contract).
    prompt: str
    # The agent's role definition, as text (the profile decides how to pass it).
    role_text: str = ""
    # The CLI's session of this agent's previous attempt on this REQ, to resume.
    resume_session: str | None = None
    # What this attempt may spend (a CLI with a budget flag is given it).
    budget_usd: float | None = None
    # The operator's explicit choice to bypass the CLI's permission checks.
    bypass_permissions: bool = False
    # Where the profile may write files it needs (a prompt file, settings):
    # private to this attempt, outside the working tree.
    scratch: Path = Path("/tmp")


@dataclass(frozen=True)
class Invocation:
    """How to start the CLI for one attempt."""

    argv: list[str]
    stdin: str = ""
    # Added to the runner's agent environment (never secrets: those come
    # from the operator's environment through AGOG_RUNNER_ENV).
    env: dict[str, str] = field(default_factory=dict)
    # Files to write before the run (path -> text), e.g. a system prompt file.
    files: dict[Path, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """Tokens and cost of one attempt, as the CLI reported them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None  # None: the CLI does not report a cost
    turns: int | None = None


@dataclass(frozen=True)
class AgentOutput:
    """What a CLI's structured output says."""

    text: str  # the final answer, where the notice's JSON is looked for
    session_id: str | None = None
    model: str | None = None
    usage: Usage = Usage()
    # The CLI said the run failed (with ``error`` saying why, if it did).
    is_error: bool = False
    error: str | None = None


class Profile(Protocol):
    """One agent CLI."""

    name: str  # "claude", "codex", "gemini", "generic"
    binary: str  # the executable looked up on PATH unless configured
    min_version: tuple[int, ...]  # the oldest version this profile is tested with
    # True when a resumed run reports the whole session's tokens and cost (the
    # runner then subtracts what the earlier attempts of the session reported).
    session_totals: bool

    def invocation(self, spec: RunSpec, binary: str) -> Invocation:
        """The argv (with ``binary`` as argv[0]) and input for one attempt."""

    def parse(self, stdout: str, stderr: str) -> AgentOutput:
        """Read the CLI's output; never raises (an unreadable one is is_error)."""

    def version_argv(self, binary: str) -> list[str]:
        """The argv that prints the CLI's version."""


_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, ...] | None:
    """The first x.y.z in a ``--version`` output."""
    match = _VERSION.search(text)
    return tuple(int(g) for g in match.groups()) if match else None


def per_attempt(total: Usage, before: Usage | None) -> Usage:
    """One attempt's usage, from the session's totals after it and before it."""
    if before is None:
        return total

    def less(now: int, then: int) -> int:
        return max(0, now - then)

    cost = total.cost_usd
    if cost is not None and before.cost_usd is not None:
        cost = max(0.0, round(cost - before.cost_usd, 6))
    return Usage(
        input_tokens=less(total.input_tokens, before.input_tokens),
        output_tokens=less(total.output_tokens, before.output_tokens),
        cache_read_tokens=less(total.cache_read_tokens, before.cache_read_tokens),
        cache_write_tokens=less(total.cache_write_tokens, before.cache_write_tokens),
        cost_usd=cost,
        turns=total.turns,
    )
