"""The built-in profiles by name (AGOG_RUNNER_CLI, AGOG_RUNNER_CLIS)."""

from __future__ import annotations

from workers.runner.profiles.base import Profile, ProfileError

BUILTIN = ("claude", "codex", "gemini")


def builtin(name: str) -> Profile:
    """The profile of one real CLI."""
    if name == "claude":
        from workers.runner.profiles.claude import PROFILE as claude

        return claude
    if name == "codex":
        from workers.runner.profiles.codex import PROFILE as codex

        return codex
    if name == "gemini":
        from workers.runner.profiles.gemini import profile as gemini

        return gemini
    raise ProfileError(f"no CLI profile {name!r}: use one of {', '.join(BUILTIN)} or generic")
