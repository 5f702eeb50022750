"""Which agents the runner spawns, and the argv and environment of each.

Templates come from configuration only. They are split like a shell would
split them, then each token is filled with {agent}, {model} and {role}: no
field of a message ever reaches an argv, and no shell ever runs.
"""

from __future__ import annotations

import os
import shlex
import sys

from orchestrator.core.registry import Pipeline, Stage
from orchestrator.runtime.settings import Settings

# Passed to every agent; anything else only when named in AGOG_RUNNER_ENV.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "TERM")
FIELDS = ("agent", "model", "role")


class CommandError(ValueError):
    """A runner setting that cannot work; said once at start-up."""


def native_agents(settings: Settings, pipeline: Pipeline) -> frozenset[str]:
    """Agents whose stage agogd does itself instead of spawning a process: the
    deploy gate's agent (Berry in pipeline.toml) with AGOG_BERRY_MODE=native."""
    deploy = pipeline.gate_stage("deploy")
    if settings.berry_mode != "native" or deploy is None:
        return frozenset()
    return frozenset({deploy.agent})


def runner_stages(settings: Settings, pipeline: Pipeline) -> list[Stage]:
    """The stages this process runs: spawned agents, plus the native ones
    (none unless configured)."""
    every = [*pipeline.stages, *pipeline.followups]
    wanted = {a.lower() for a in settings.runner_agents}
    if settings.demo and not wanted:
        wanted = {"all"}
    if "all" in wanted:
        return every
    unknown = wanted - {s.agent for s in every}
    if unknown:
        raise CommandError(f"AGOG_RUNNER_AGENTS: unknown agents {sorted(unknown)}")
    wanted |= native_agents(settings, pipeline)
    return [s for s in every if s.agent in wanted]


def agent_argv(settings: Settings, stage: Stage) -> list[str]:
    """The argv for one stage's agent (the demo agent in demo mode)."""
    if settings.demo:
        return [sys.executable, "-m", "workers.runner.demo_agent"]
    template = settings.runner_commands.get(stage.agent, settings.runner_command)
    values = {
        "agent": stage.agent,
        "model": settings.runner_models.get(stage.agent, settings.runner_default_model),
        "role": stage.role,
    }
    try:
        tokens = shlex.split(template)
        argv = [token.format_map(values) for token in tokens]
    except (ValueError, KeyError, IndexError) as exc:
        raise CommandError(
            f"runner command for {stage.agent} {template!r}: {exc!r}"
            f" (fields available: {', '.join('{' + f + '}' for f in FIELDS)})"
        ) from None
    if not argv:
        raise CommandError(f"runner command for {stage.agent} is empty")
    return argv


def agent_env(settings: Settings) -> dict[str, str]:
    """The agents' environment: the basics plus the named variables (secrets
    come from the environment, never from configuration files or messages)."""
    names = [*BASE_ENV, *settings.runner_env]
    env = {name: os.environ[name] for name in names if name in os.environ}
    if settings.demo:
        env["AGOG_DEMO_DELAY"] = str(settings.demo_delay)
        env["AGOG_DEMO_REJECT"] = ",".join(settings.demo_reject)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def check_runner(settings: Settings, pipeline: Pipeline) -> list[Stage]:
    """Validate the runner settings at start-up; CommandError says what is wrong."""
    stages = runner_stages(settings, pipeline)
    native = native_agents(settings, pipeline)
    _named_agents_are_known(settings, pipeline)
    for stage in stages:
        if stage.agent not in native:
            agent_argv(settings, stage)
    if native and settings.berry_workspace is None:
        raise CommandError("AGOG_BERRY_MODE=native needs AGOG_BERRY_WORKSPACE (a git working tree)")
    return stages


def _named_agents_are_known(settings: Settings, pipeline: Pipeline) -> None:
    """A setting keyed by an agent the registry does not know would be ignored
    in silence (a typo, or a pipeline file that renamed the stage): refuse it."""
    known = {s.agent for s in (*pipeline.stages, *pipeline.followups)}
    for name, agents in (
        ("AGOG_RUNNER_COMMANDS", settings.runner_commands),
        ("AGOG_RUNNER_MODELS", settings.runner_models),
        ("AGOG_DEMO_REJECT", settings.demo_reject),
    ):
        unknown = sorted(set(agents) - known)
        if unknown:
            raise CommandError(
                f"{name}: unknown agents {unknown}; the pipeline's agents are {sorted(known)}"
            )
