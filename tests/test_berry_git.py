"""Berry's git on real repositories: nothing an agent writes into the workspace
configures git or runs as a hook, and only listed regular files are staged.

Driven like tests/test_berry.py (NativeBerry.run on real Postgres and NATS),
with no container engine: Berry commits, then says it did not deploy."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from orchestrator.runtime import migrate
from tests.agents import runtime_of, settings_for
from tests.test_berry import git, git_init, previous_stages
from workers.release.berry import NativeBerry

HOOKS = ("pre-commit", "prepare-commit-msg", "commit-msg", "post-commit")


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(pg_dsn)
    await migrate.apply(conn, None)
    await conn.close()
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    yield pool
    await pool.close()


def script(path: Path, marker: Path) -> Path:
    """An executable that leaves ``marker`` behind when anything runs it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$0 $*" >> {marker}\nexit 0\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A working tree with one commit, an agent's hostile git files in it, and
    hooks in .git/hooks, each leaving a marker in tmp_path/markers if run."""
    root, markers = tmp_path / "ws", tmp_path / "markers"
    markers.mkdir()
    git_init(root, "-b", "main")
    (root / "app").mkdir()
    (root / "app" / "README").write_text("the app\n")
    (root / "old").mkdir()
    (root / "old" / "a.txt").write_text("a\n")
    git(root, "add", ".")
    git(root, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-qm", "v1")
    # What an agent can write into the workspace: a .gitconfig (git's global
    # config when HOME is the workspace) naming its own programs.
    monitor = script(root / "tools" / "fsmonitor", markers / "fsmonitor-global")
    hooks_dir = root / "tools" / "hooks"
    for hook in HOOKS:
        script(hooks_dir / hook, markers / f"global-{hook}")
    (root / ".gitconfig").write_text(
        f"[core]\n\tfsmonitor = {monitor}\n\thooksPath = {hooks_dir}\n[commit]\n\tgpgSign = false\n"
    )
    # Hooks already in the repository, and a repository-level fsmonitor.
    for hook in HOOKS:
        script(root / ".git" / "hooks" / hook, markers / f"repo-{hook}")
    repo_monitor = script(tmp_path / "repo-fsmonitor", markers / "fsmonitor-repo")
    git(root, "config", "core.fsmonitor", str(repo_monitor))
    return root


def markers(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo.parent / "markers").iterdir())


async def run_berry(
    repo: Path, pool: asyncpg.Pool, nc: NATS, nats_url: str, dsn: str, files: list[str], **kw: Any
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "berry_mode": "native",
        "berry_workspace": repo,
        "docker_url": "none",
        "data_dir": repo.parent / "agogd-data",
    }
    settings = settings_for(nats_url, dsn, **{**values, **kw})
    rt = runtime_of(settings, pool, nc)
    berry = NativeBerry(rt)
    previous = previous_stages("REQ-GIT-1", files)
    assignment = {"req_number": "REQ-GIT-1", "agent": "berry", "attempt": 1}
    return await berry.run(assignment, previous)


def committed(repo: Path) -> list[str]:
    return sorted(git(repo, "show", "--name-only", "--format=", "HEAD").split())


@pytest.mark.parametrize("home", ["unset", "workspace"])
async def test_nothing_in_the_workspace_configures_git_or_runs_as_a_hook(
    home: str,
    repo: Path,
    pool: asyncpg.Pool,
    nc: NATS,
    nats_server: NatsServer,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    git(repo, "config", "--unset", "core.fsmonitor")  # the workspace's .gitconfig sets one
    if home == "unset":  # as in a container with no HOME: git's HOME was the workspace
        monkeypatch.delenv("HOME", raising=False)
    else:
        monkeypatch.setenv("HOME", str(repo))
    (repo / "app" / "feature.txt").write_text("x\n")
    before = git(repo, "rev-parse", "HEAD").strip()
    result = await run_berry(repo, pool, nc, nats_server.url, pg_dsn, ["app/feature.txt"])
    assert result["status"] == "COMPLETE", result
    assert result["commit_sha"] != before and committed(repo) == ["app/feature.txt"]
    ran = markers(repo)
    assert ran == [], ran  # no fsmonitor, no hook, from the workspace or .git/hooks


async def test_hooks_run_only_when_the_operator_opts_in(
    repo: Path, pool: asyncpg.Pool, nc: NATS, nats_server: NatsServer, pg_dsn: str
) -> None:
    (repo / "app" / "feature.txt").write_text("x\n")
    result = await run_berry(
        repo, pool, nc, nats_server.url, pg_dsn, ["app/feature.txt"], berry_git_hooks=True
    )
    assert result["status"] == "COMPLETE", result
    # The repository's own hooks ran; its fsmonitor did not, and the agent's
    # .gitconfig still configures nothing.
    assert markers(repo) == sorted(f"repo-{hook}" for hook in HOOKS)


async def test_the_operators_git_config_is_read_and_must_be_outside_the_workspace(
    repo: Path, pool: asyncpg.Pool, nc: NATS, nats_server: NatsServer, pg_dsn: str
) -> None:
    config = repo.parent / "berry.gitconfig"
    config.write_text("[i18n]\n\tcommitEncoding = ISO-8859-1\n")
    (repo / "app" / "feature.txt").write_text("x\n")
    result = await run_berry(
        repo, pool, nc, nats_server.url, pg_dsn, ["app/feature.txt"], berry_git_config=config
    )
    assert result["status"] == "COMPLETE", result
    assert "encoding ISO-8859-1" in git(repo, "cat-file", "-p", "HEAD")
    assert markers(repo) == []
    with pytest.raises(ValueError, match="AGOG_BERRY_GIT_CONFIG must be outside"):
        await run_berry(
            repo, pool, nc, nats_server.url, pg_dsn, [], berry_git_config=repo / ".gitconfig"
        )


async def test_a_directory_or_the_whole_workspace_is_refused_and_only_files_are_staged(
    repo: Path, pool: asyncpg.Pool, nc: NATS, nats_server: NatsServer, pg_dsn: str
) -> None:
    # Untracked files and links the per-file checks refuse, in the same places.
    (repo / "app" / "feature.txt").write_text("x\n")
    (repo / "app" / "untracked-secret.env").write_text("TOKEN=1\n")
    (repo / "app" / "link").symlink_to(repo.parent / "markers")
    (repo / "lnk").symlink_to(repo / "app")
    (repo / "old" / "a.txt").unlink()
    (repo / "old").rmdir()
    head = git(repo, "rev-parse", "HEAD").strip()
    for bad, why in (
        ("./", "the whole workspace"),
        (".", "the whole workspace"),
        ("app", "a directory"),
        ("app/", "a directory"),
        ("lnk/feature.txt", "symbolic link lnk"),
        ("lnk", "a symbolic link"),
        ("old", "a tracked directory"),
    ):
        result = await run_berry(repo, pool, nc, nats_server.url, pg_dsn, ["app/feature.txt", bad])
        assert result["status"] == "BLOCKED", (bad, result)
        assert [r["path"] for r in result["refused_paths"]] == [bad]
        assert why in result["refused_paths"][0]["reason"], result["refused_paths"]
    assert git(repo, "rev-parse", "HEAD").strip() == head  # nothing committed
    assert git(repo, "diff", "--cached", "--name-only") == ""  # nothing staged
    # The listed regular files, however spelled, and a tracked file deleted.
    (repo / "app" / "new.txt").write_text("new\n")
    listed = ["./app/feature.txt", "app//new.txt", "app/README", "old/a.txt"]
    (repo / "app" / "README").write_text("the app, changed\n")
    result = await run_berry(repo, pool, nc, nats_server.url, pg_dsn, listed)
    assert result["status"] == "COMPLETE", result
    assert committed(repo) == ["app/README", "app/feature.txt", "app/new.txt", "old/a.txt"]
    assert sorted(result["files_committed"]) == committed(repo)
    untracked = git(repo, "status", "--porcelain", "--", "app")
    assert "?? app/untracked-secret.env" in untracked and "?? app/link" in untracked
    assert (repo / "app" / "link").is_symlink()
