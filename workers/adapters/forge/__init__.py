"""Berry's forge layer: push access, pull requests, CI status and issues on
GitHub (githubkit) or Gitea/Forgejo (their REST API).

``make_forge`` picks the client for a ``ForgeConfig``; it lives here rather
than in ``base`` so that ``base`` (which both clients import) imports neither.
The clients are imported only when a forge is configured: githubkit and its
HTTP stack cost a tenth of a second of every start (a restart's recovery time).
"""

from workers.adapters.forge.base import (
    NO_TOKEN,
    Check,
    CiStatus,
    Forge,
    ForgeConfig,
    ForgeError,
    Issue,
    PullRequest,
    derive_git_url,
)


def make_forge(config: ForgeConfig) -> Forge:
    """The client for ``config.kind``."""
    if config.kind == "github":
        from workers.adapters.forge.github import GitHubForge

        return GitHubForge(config)
    if config.kind == "gitea":
        from workers.adapters.forge.gitea import GiteaForge

        return GiteaForge(config)
    raise ValueError(f"unknown forge kind {config.kind!r} (github or gitea)")


__all__ = [
    "NO_TOKEN",
    "Check",
    "CiStatus",
    "Forge",
    "ForgeConfig",
    "ForgeError",
    "Issue",
    "PullRequest",
    "derive_git_url",
    "make_forge",
]
