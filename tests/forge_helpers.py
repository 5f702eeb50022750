"""Shared parts of the forge tests: a bare repository with a work tree, git
run as a child process with none of the machine's configuration, and the
client configuration for a running local forge."""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from orchestrator.embedded.forge import ForgeServer
from workers.adapters.forge import ForgeConfig

TOKEN = "agog-test-token-7f3a9c1e5b"
BRANCH = "agog/REQ-1"


def git_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """git with no system or global config and no prompt: only what a test gives it."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Berry",
        "GIT_AUTHOR_EMAIL": "berry@agog.test",
        "GIT_COMMITTER_NAME": "Berry",
        "GIT_COMMITTER_EMAIL": "berry@agog.test",
        **(extra or {}),
    }


@dataclass
class Repos:
    bare: Path
    work: Path
    home: Path

    def git_sync(self, *args: str) -> str:
        """git in the work tree, before any server runs (blocking is fine then)."""
        done = subprocess.run(
            ["git", "-C", str(self.work), *args],
            env=git_env(self.home),
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    async def git(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """git in the work tree while the forge runs in this event loop."""
        proc = await asyncio.create_subprocess_exec(
            "git",
            "-C",
            str(self.work),
            *args,
            env=git_env(self.home, env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode or 0, out.decode(), err.decode()

    def bare_sha(self, ref: str) -> str | None:
        done = subprocess.run(
            ["git", "--git-dir", str(self.bare), "rev-parse", "--verify", "--quiet", ref],
            env=git_env(self.home),
            capture_output=True,
            text=True,
        )
        return done.stdout.strip() or None


def make_repos(root: Path) -> Repos:
    """An empty bare repository (the forge's) and a work tree with ``main``
    and the feature branch ``BRANCH``, one commit ahead."""
    home = root / "home"
    home.mkdir(parents=True)
    bare, work = root / "remote" / "app.git", root / "work"
    subprocess.run(
        ["git", "init", "-q", "--bare", "-b", "main", str(bare)], env=git_env(home), check=True
    )
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], env=git_env(home), check=True)
    repos = Repos(bare, work, home)
    (work / "README.md").write_text("app\n")
    repos.git_sync("add", "README.md")
    repos.git_sync("commit", "-qm", "initial")
    repos.git_sync("checkout", "-qb", BRANCH)
    (work / "feature.py").write_text("print('REQ-1')\n")
    repos.git_sync("add", "feature.py")
    repos.git_sync("commit", "-qm", "feat(REQ-1): the feature")
    return repos


def config_for(
    server: ForgeServer,
    *,
    token: str | None = TOKEN,
    labels: tuple[str, ...] = (),
    reviewers: tuple[str, ...] = (),
) -> ForgeConfig:
    """The client configuration for a running local forge (git_url derived)."""
    return ForgeConfig(
        kind=server.flavour,
        api_url=server.api_url,
        repo=f"{server.owner}/{server.name}",
        token=SecretStr(token) if token is not None else None,
        labels=labels,
        reviewers=reviewers,
        timeout=10.0,
    )
