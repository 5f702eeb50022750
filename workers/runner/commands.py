"""Which agents the runner spawns, and the argv and environment of each.

Templates come from configuration only. They are split like a shell would
split them, then each token is filled with {agent}, {model} and {role}: no
field of a message ever reaches an argv, and no shell ever runs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from orchestrator.core.registry import Pipeline, Stage
from orchestrator.runtime.settings import Settings
from workers.release.smoke import parse_checks
from workers.runner.profiles.base import Profile, ProfileError, parse_version
from workers.runner.profiles.generic import GenericProfile
from workers.runner.profiles.registry import builtin

# Passed to every agent; anything else only when named in AGOG_RUNNER_ENV.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "TERM")


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


def cli_of(settings: Settings, agent: str) -> str:
    """The CLI profile an agent runs: AGOG_RUNNER_CLIS, else generic for an
    agent with its own AGOG_RUNNER_COMMANDS template (or when only
    AGOG_RUNNER_COMMAND was set, as before profiles), else AGOG_RUNNER_CLI."""
    if settings.demo:
        return "generic"
    if agent in settings.runner_clis:
        return settings.runner_clis[agent]
    if agent in settings.runner_commands:
        return "generic"
    chosen = settings.model_fields_set
    if "runner_command" in chosen and "runner_cli" not in chosen:
        return "generic"
    return settings.runner_cli


def profile_for(settings: Settings, stage: Stage) -> tuple[Profile, str]:
    """The agent's profile and the executable it runs (argv[0])."""
    cli = cli_of(settings, stage.agent)
    if cli == "generic":
        if settings.demo:
            template = f"{shlex.quote(sys.executable)} -m workers.runner.demo_agent"
        else:
            template = settings.runner_commands.get(stage.agent, settings.runner_command)
        profile: Profile = GenericProfile(template)
        try:
            argv0 = profile.argv(stage.agent, model_of(settings, stage.agent), stage.role)[0]
        except ProfileError as exc:
            raise CommandError(str(exc)) from None
        return profile, argv0
    profile = builtin(cli)
    return profile, settings.runner_cli_paths.get(cli, profile.binary)


def model_of(settings: Settings, agent: str) -> str | None:
    return settings.runner_models.get(agent, settings.runner_default_model)


def check_versions(settings: Settings, stages: list[Stage]) -> dict[str, str]:
    """Run each configured CLI's ``--version`` once; CommandError, in one line,
    when one is missing or older than its profile is tested with."""
    found: dict[str, str] = {}
    for stage in stages:
        profile, binary = profile_for(settings, stage)
        if profile.name == "generic" or profile.name in found:
            continue
        argv = profile.version_argv(binary)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except FileNotFoundError:
            raise CommandError(
                f"the {profile.name} CLI ({binary!r}) is not installed or not on PATH:"
                f' install it, or set AGOG_RUNNER_CLI_PATHS=\'{{"{profile.name}": "/path"}}\''
            ) from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CommandError(f"the {profile.name} CLI ({binary!r}) did not run: {exc}") from None
        text = (done.stdout or done.stderr).strip()
        version = parse_version(text)
        if done.returncode != 0 or version is None:
            last = text.splitlines()[-1] if text else f"exit code {done.returncode}"
            raise CommandError(f"{' '.join(argv)} failed: {last[:200]}")
        if version < profile.min_version:
            wanted = ".".join(map(str, profile.min_version))
            raise CommandError(
                f"the {profile.name} CLI is {'.'.join(map(str, version))}; agogd's profile needs"
                f" {wanted} or newer ({binary})"
            )
        found[profile.name] = ".".join(map(str, version))
    return found


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
            profile_for(settings, stage)
    if native and settings.berry_workspace is None and settings.repo is None:
        raise CommandError(
            "AGOG_BERRY_MODE=native needs AGOG_REPO or AGOG_BERRY_WORKSPACE (a git working tree)"
        )
    if native:
        try:  # the smoke tests are parsed now, not at the first deploy
            parse_checks(settings.berry_smoke_tests, settings.berry_smoke_timeout)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    check_versions(settings, [s for s in stages if s.agent not in native])
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
