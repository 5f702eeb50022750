"""A thin async adapter over the git CLI for Berry: argv only, never a shell.

Paths reach git as ``:(literal)`` pathspecs after ``--``, so a file named
like an option or a glob is only ever that file.

Agents write the workspace, so nothing in it may configure git: git reads
no system config and, as its global config, only the file the operator
names (``AGOG_BERRY_GIT_CONFIG``, else none); ``HOME`` is never the
workspace (a ``workspace/.gitconfig`` would be the global config, and
``workspace/.ssh/config`` ssh's); and every command runs with
``core.fsmonitor=false``, hooks off (``core.hooksPath`` at an empty place)
unless the operator opts in, the ``ext::`` transport refused and ssh
unconfigured by any repository.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT = 120.0
# Commands that git runs because a config file says so, overridden on every call.
SAFE_CONFIG = (
    "core.fsmonitor=false",
    "protocol.ext.allow=never",
    "protocol.file.allow=user",
    "core.sshCommand=ssh",
)


class GitError(RuntimeError):
    """A git command failed; the message carries its stderr tail."""


@dataclass(frozen=True)
class Author:
    name: str
    email: str


class GitRepo:
    """One working tree, driven through the git CLI, with git's configuration
    its own (see the module's docstring): ``global_config`` is the only config
    file outside the repository git reads (None: none at all), ``hooks``
    lets the repository's hooks run, ``home`` is HOME when the environment's
    is unset or inside the workspace."""

    def __init__(
        self,
        root: Path,
        author: Author,
        timeout: float = GIT_TIMEOUT,
        *,
        global_config: Path | None = None,
        hooks: bool = False,
        home: Path | None = None,
    ) -> None:
        self.root, self.author, self.timeout = root, author, timeout
        self.global_config, self.hooks, self.home = global_config, hooks, home

    def at(self, root: Path, author: Author | None = None) -> GitRepo:
        """The same git, configured the same way, in another working tree (a
        worktree of this repository) and, if given, as another author."""
        return GitRepo(
            root,
            author or self.author,
            self.timeout,
            global_config=self.global_config,
            hooks=self.hooks,
            home=self.home,
        )

    def _home(self) -> str:
        """HOME for git and ssh: the environment's, unless unset or in the workspace."""
        home = os.environ.get("HOME")
        if home and not _within(Path(home), self.root):
            return home
        if self.home is None:
            return os.devnull
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        return str(self.home)

    def config_args(self) -> list[str]:
        """The ``-c`` options every git command gets."""
        safe = list(SAFE_CONFIG)
        if not self.hooks:
            safe.append(f"core.hooksPath={os.devnull}")  # nothing there can be run
        return [arg for item in safe for arg in ("-c", item)]

    def _env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SSH_AUTH_SOCK", "GIT_SSH_COMMAND")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        return {
            **env,
            "HOME": self._home(),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": str(self.global_config) if self.global_config else os.devnull,
            "GIT_ATTR_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": self.author.name,
            "GIT_AUTHOR_EMAIL": self.author.email,
            "GIT_COMMITTER_NAME": self.author.name,
            "GIT_COMMITTER_EMAIL": self.author.email,
            "GIT_TERMINAL_PROMPT": "0",  # a push never waits for a password
        }

    async def run(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> str:
        """Run ``git -C root args``; returns stdout, raises GitError on failure."""
        code, out, err = await self.call(*args, stdin=stdin, env=env)
        if check and code != 0:
            raise GitError(f"git {args[0]} failed ({code}): {err.strip()[-800:]}")
        return out

    async def call(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        """Run git; ``env`` adds variables (a push's credentials: never in argv)."""
        proc = await asyncio.create_subprocess_exec(
            "git",
            "-C",
            str(self.root),
            *self.config_args(),
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**self._env(), **(env or {})},
        )
        try:
            async with asyncio.timeout(self.timeout):
                out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        except (TimeoutError, asyncio.CancelledError) as exc:
            proc.kill()  # a cancelled stage leaves no git behind
            await asyncio.shield(proc.wait())
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise GitError(f"git {args[0]} timed out after {self.timeout:.0f}s") from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def is_repo(self) -> bool:
        code, out, _ = await self.call("rev-parse", "--is-inside-work-tree")
        return code == 0 and out.strip() == "true"

    async def head(self) -> str | None:
        code, out, _ = await self.call("rev-parse", "--verify", "-q", "HEAD")
        return out.strip() if code == 0 else None

    async def tracked(self, path: str) -> bool:
        code, _, _ = await self.call("ls-files", "--error-unmatch", "--", literal(path))
        return code == 0

    async def tracked_file(self, path: str) -> bool:
        """Whether git tracks exactly this file (not a directory of files)."""
        code, out, _ = await self.call("ls-files", "-z", "--", literal(path))
        return code == 0 and out.split("\0")[:-1] == [path]

    async def stage(self, paths: list[str]) -> None:
        """Stage additions, changes and deletions of exactly these paths, one
        file at a time: each is a checked regular file or a tracked one that
        is gone, so a ``:(literal)`` pathspec matches it and nothing else."""
        for path in paths:
            await self.run("add", "--all", "--", literal(path))

    async def staged_files(self) -> list[str]:
        out = await self.run("diff", "--cached", "--name-only", "-z")
        return [p for p in out.split("\0") if p]

    async def commit(self, message: str, paths: list[str]) -> str:
        """Commit only these paths (anything else staged stays staged)."""
        await self.run(
            "commit", "--quiet", "--file=-", "--", *[literal(p) for p in paths], stdin=message
        )
        sha = await self.head()
        assert sha is not None
        return sha

    async def find_commit(self, line: str) -> str | None:
        """The newest commit whose message has exactly this line, if any."""
        out = await self.run(
            "log",
            "--format=%H%n%B%x00",
            "-n",
            "50",
            "--fixed-strings",
            f"--grep={line}",
            check=False,
        )
        for entry in out.split("\0"):
            sha, _, body = entry.strip().partition("\n")
            if sha and line in body.splitlines():
                return sha
        return None

    async def files_in(self, sha: str) -> list[str]:
        out = await self.run("show", "--name-only", "--format=", "-z", sha)
        return [p for p in out.split("\0") if p.strip()]

    async def parent(self, sha: str) -> str | None:
        code, out, _ = await self.call("rev-parse", "--verify", "-q", f"{sha}^")
        return out.strip() if code == 0 else None

    async def branch(self) -> str | None:
        code, out, _ = await self.call("symbolic-ref", "--short", "-q", "HEAD")
        return out.strip() if code == 0 and out.strip() else None


def literal(path: str) -> str:
    """A pathspec that matches this one path, with no glob or magic (a
    directory's pathspec still matches what is inside: list files only)."""
    return f":(literal){path}"


def _within(path: Path, root: Path) -> bool:
    real, real_root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return real == real_root or real_root in real.parents
