"""The generic profile: any command, from an argv template (AGOG_RUNNER_COMMAND).

The template is split like a shell would split it, then each token is
filled with {agent}, {model} and {role}: no field of a message ever reaches
an argv, and no shell ever runs. The prompt goes to stdin; the notice is
read from the plain output. Such a command reports no usage, resumes no
session and takes no permissions flags: it is the operator's to set.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from workers.runner.profiles.base import AgentOutput, Invocation, ProfileError, RunSpec

FIELDS = ("agent", "model", "role")


@dataclass(frozen=True)
class GenericProfile:
    """A command line from a template."""

    template: str
    name: str = "generic"
    binary: str = ""
    min_version: tuple[int, ...] = ()
    session_totals: bool = False

    def argv(self, agent: str, model: str | None, role: str) -> list[str]:
        values = {"agent": agent, "model": model or "", "role": role}
        try:
            argv = [token.format_map(values) for token in shlex.split(self.template)]
        except (ValueError, KeyError, IndexError) as exc:
            raise ProfileError(
                f"runner command for {agent} {self.template!r}: {exc!r}"
                f" (fields available: {', '.join('{' + f + '}' for f in FIELDS)})"
            ) from None
        if not argv:
            raise ProfileError(f"runner command for {agent} is empty")
        return argv

    def invocation(self, spec: RunSpec, binary: str = "") -> Invocation:
        return Invocation(argv=self.argv(spec.agent, spec.model, spec.role), stdin=spec.prompt)

    def parse(self, stdout: str, stderr: str) -> AgentOutput:
        return AgentOutput(text=stdout)

    def version_argv(self, binary: str) -> list[str]:
        return []
