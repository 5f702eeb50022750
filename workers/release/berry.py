"""Berry's stage done natively: approve-check, commit, test, deploy, roll back.

Runs inside the agent runner in place of an agent process when
``AGOG_BERRY_MODE=native``; the runner keeps doing the claiming, the
heart-beating and the publishing of the notice this returns. Every step is
safe to repeat after a crash: the commit carries an ``Agog-Req`` trailer
(a re-run finds it instead of committing twice), ``compose up`` converges,
and each deployment is a row of ``berry_deployments`` keyed by (REQ,
attempt, environment). The deploy itself (staging, smoke tests, pre-flight,
backup, production, rollback) is ``promotion.Promotion``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import stat
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.runtime.context import Runtime
from orchestrator.runtime.db import advisory_lock
from orchestrator.runtime.logs import get_logger
from orchestrator.runtime.metrics import BERRY_DEPLOYS
from orchestrator.runtime.settings import Settings
from workers.adapters.forge import Forge, ForgeError
from workers.adapters.git_repo import Author, GitError, GitRepo
from workers.adapters.supervise import run_process
from workers.branches.worktrees import WorktreeError, Worktrees
from workers.infra.report import publish_report
from workers.release.backups import Backups
from workers.release.deploy import ComposeDeployer, ComposeTarget
from workers.release.environments import environments_of
from workers.release.forge_steps import ForgeSteps, ForgeStop, describe_checks, failing_checks
from workers.release.integrate import Conflict, Integrator
from workers.release.plan import (
    StageDeliverable,
    commit_message,
    listed_files,
    path_problem,
    pull_request_body,
    pull_request_title,
    qa_refusal,
)
from workers.release.promotion import Promotion
from workers.release.rollout import Rollout
from workers.release.smoke import parse_checks, run_failure

log = get_logger("agogd.berry")

TAIL = 2000


class BerryStop(Exception):
    """Ends the run early with a BLOCKED or FAILED notice."""

    def __init__(self, status: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status, self.reason, self.extra = status, reason, extra


def inside_workspace(root: Path, path: str) -> str | None:
    """Why ``path`` (already lexically checked) escapes ``root``, or None.

    Resolves symlinks in every component, so a link that points out of the
    workspace (or a directory link on the way) is refused.
    """
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(root / path))
    if real != real_root and real_root not in real.parents:
        return f"resolves outside the workspace (to {real})"
    if ".git" in real.relative_to(real_root).parts[:1]:
        return "resolves into .git"
    return None


def file_problem(root: Path, path: str) -> str | None:
    """Why ``path`` (inside ``root``) is not a regular file Berry may stage,
    or None; a missing path is for the caller (a deletion, if tracked).

    Only regular files: a directory's pathspec would stage everything in it
    (untracked files, links the per-file checks refuse), and a symbolic link,
    or one on the way, is not the file it names."""
    parts = PurePosixPath(path).parts
    if not parts or parts == (".",):
        return "names the whole workspace: list the files"
    for depth in range(1, len(parts)):
        try:
            if stat.S_ISLNK(os.lstat(root.joinpath(*parts[:depth])).st_mode):
                return f"goes through the symbolic link {'/'.join(parts[:depth])}"
        except FileNotFoundError:
            return None  # a directory that is gone: a deletion, if tracked
    try:
        mode = os.lstat(root / path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(mode):
        return "a directory: only files are committed (list each file)"
    if stat.S_ISLNK(mode):
        return "a symbolic link: only regular files are committed"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


class NativeBerry:
    """One agogd's native Berry: settings in, a notice out."""

    def __init__(
        self, rt: Runtime, *, worktrees: Worktrees | None = None, forge: Forge | None = None
    ) -> None:
        self.rt, self.settings, self.pipeline = rt, rt.settings, rt.pipeline
        settings = self.settings
        deploy = self.pipeline.gate_stage("deploy")
        # Its own corner of the data dir, named after the deploy gate's agent.
        self.state_dir = settings.data_dir.resolve() / (deploy.agent if deploy else "deploy")
        workspace = settings.berry_workspace or (worktrees.repo.root if worktrees else None)
        if workspace is None:
            raise ValueError(
                "AGOG_BERRY_MODE=native needs AGOG_REPO or AGOG_BERRY_WORKSPACE (a git tree)"
            )
        self.workspace = workspace.resolve()
        git_config = settings.berry_git_config
        if git_config is not None:
            git_config = git_config.resolve()
            if git_config == self.workspace or self.workspace in git_config.parents:
                raise ValueError(
                    "AGOG_BERRY_GIT_CONFIG must be outside AGOG_BERRY_WORKSPACE"
                    " (agents write the workspace)"
                )
        self.repo = GitRepo(
            self.workspace,
            Author(settings.berry_author_name, settings.berry_author_email),
            global_config=git_config,
            hooks=settings.berry_git_hooks,
            home=self.state_dir / "home",  # when HOME is unusable
        )
        self.worktrees = worktrees
        self.promotion = self._promotion(settings)
        # With AGOG_REPO, Berry integrates the REQ's branch (never a list of files).
        self.integrator = (
            Integrator(
                worktrees=worktrees,
                workspace=self.repo,
                mode=settings.berry_integrate,
                pipeline=self.pipeline,
            )
            if worktrees is not None
            else None
        )
        self.forge = ForgeSteps(forge=forge, repo=self.repo, settings=settings) if forge else None
        self._local_lock = asyncio.Lock()
        self.test_argv = (
            shlex.split(settings.berry_test_command) if settings.berry_test_command else []
        )

    def _promotion(self, settings: Settings) -> Promotion:
        """Staging (when on), smoke tests, pre-flight, backup, production."""
        checks = parse_checks(settings.berry_smoke_tests, settings.berry_smoke_timeout)
        pool = self.rt.pool
        return Promotion(
            repo=self.repo,
            workspace=self.workspace,
            deployer=deployer_for(settings),
            environments=environments_of(settings, self.workspace),
            health_urls=tuple(settings.berry_health_urls),
            rollout=Rollout(
                pool,
                self.repo,
                workspace=self.workspace,
                state_dir=self.state_dir,
                checks=checks,
                kill_grace=settings.runner_kill_grace,
            ),
            backups=Backups(
                pool,
                dsn=settings.berry_app_db_dsn,
                directory=self.state_dir / "backups",
                keep=settings.berry_backup_keep,
                timeout=settings.berry_backup_timeout,
                bin_dir=settings.pg_bin_dir,
            ),
            migrations_glob=settings.berry_migrations_glob,
            after_deploy=self._infra_report,
        )

    # --- the run ---------------------------------------------------------------
    async def run(
        self, assignment: dict[str, Any], previous: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Take the REQ from Billy's approval to a deployment; the notice says what happened."""
        req, attempt = assignment["req_number"], assignment["attempt"]
        me = assignment["agent"]  # the deploy gate's agent, as the registry names it
        notice: dict[str, Any] = {
            "agent": me,
            "req_number": req,
            "attempt": attempt,
            "deployed_by": me,
            "deployed": False,
        }
        try:
            async with self._workspace_lock():
                result = await self._steps(req, attempt, assignment, previous, notice)
        except BerryStop as stop:
            notice.update(status=stop.status, summary=stop.reason, reason=stop.reason, **stop.extra)
            level = log.warning if stop.status == "BLOCKED" else log.error
            level("berry.stopped", status=stop.status, reason=stop.reason)
            return notice
        notice.update(result)
        return notice

    async def _steps(
        self,
        req: str,
        attempt: int,
        assignment: dict[str, Any],
        previous: list[dict[str, Any]],
        notice: dict[str, Any],
    ) -> dict[str, Any]:
        items = [
            StageDeliverable(p["stage"], p["agent"], p["deliverable"])
            for p in previous
            if isinstance(p.get("deliverable"), dict)
        ]
        # 1. Billy's approval (the QA gate's agent), as cached.
        qa = self.pipeline.gate_stage("qa")
        approval = next(
            (i.deliverable for i in reversed(items) if qa is not None and i.agent == qa.agent),
            None,
        )
        if (why := qa_refusal(approval, qa.agent if qa else "the QA gate")) is not None:
            raise BerryStop("BLOCKED", why)
        title = (assignment.get("contextData") or {}).get("featureTitle")
        message = commit_message(
            req, title, items, self.pipeline, self.settings.berry_coauthor_domain
        )
        if self.integrator is None:
            sha = await self._commit_listed(req, items, message, notice)
        else:
            sha = await self._integrate(req, title, items, message, notice)
        # 5-6. The deployment (staging first, when on), rolled back if it fails.
        deploy = await self.promotion.run(
            req, attempt, sha, tests=notice.get("tests"), ci=notice.get("ci")
        )
        BERRY_DEPLOYS.labels(outcome=deploy["outcome"]).inc()
        notice["deploy"] = deploy
        notice.update({k: deploy[k] for k in ("staging", "preflight") if k in deploy})
        if deploy["outcome"] == "failed":
            raise BerryStop("FAILED", deploy["reason"], deploy=deploy)
        if deploy["outcome"] == "blocked":
            raise BerryStop("BLOCKED", deploy["reason"], deploy=deploy)
        deployed = deploy["outcome"] == "deployed"
        result: dict[str, Any] = {"status": "COMPLETE", "deployed": deployed}
        after = self.pipeline.followups_after(assignment["agent"])
        if after:  # seed 002: Berry names Tim as the next agent
            result["next_agent"] = after[0].agent
        if deployed:
            result["deployed_at"] = deploy["deployed_at"]
            result["summary"] = f"{req} committed ({sha[:12]}), tested and deployed"
        else:
            result["summary"] = (
                f"{req} committed ({sha[:12]}) and tested; not deployed: {deploy['reason']}"
            )
        # 7. Push and tag, when configured; the REQ's open issue closed.
        result["release"] = await self._release(req, sha, deployed)
        if self.forge is not None:
            closed = await self.forge.resolved(req, f"{result['summary']}.")
            if closed is not None:
                result["issue"] = closed
        return result

    async def _commit_listed(
        self, req: str, items: list[StageDeliverable], message: str, notice: dict[str, Any]
    ) -> str:
        """Without AGOG_REPO: commit the files the deliverables list, in the
        shared workspace, then test there."""
        if not await self.repo.is_repo():
            raise BerryStop("BLOCKED", f"the workspace {self.workspace} is not a git working tree")
        paths = await self._checked_paths(listed_files(items))
        sha, files = await self._commit(req, paths, message)
        notice.update(commit_sha=sha, files_changed=len(files), files_committed=files)
        await self._tests_or_stop(req, self.workspace, notice)
        return sha

    async def _integrate(
        self,
        req: str,
        title: str | None,
        items: list[StageDeliverable],
        message: str,
        notice: dict[str, Any],
    ) -> str:
        """With AGOG_REPO: the REQ's branch onto the integration head (a
        conflict goes back as a rework), tested, pushed with its pull request
        and green CI when a forge is configured, then merged."""
        assert self.integrator is not None and self.worktrees is not None
        integration = self.worktrees.integration
        try:
            wt = await self.worktrees.ensure(req)
            updated = await self.integrator.update(wt)
        except Conflict as conflict:
            files = ", ".join(conflict.files[:10])
            raise BerryStop(
                "FAILED",
                f"{req}'s branch conflicts with {integration} in {files}",
                conflict=conflict.as_dict(),
                rework_agents=conflict.owners[:1],
            ) from None
        except (GitError, WorktreeError) as exc:
            raise BerryStop("FAILED", f"integrating {req}'s branch failed: {exc}") from None
        notice.update(branch=wt.branch, branch_head=updated.head, integration=updated.how)
        await self._tests_or_stop(req, wt.path, notice)
        push_branch = self.settings.forge_push == "branch"
        if self.forge is not None and push_branch:
            await self._on_forge(req, title, items, updated.head, wt.branch, notice, force=True)
        try:
            sha = await self.integrator.land(wt, updated, message)
        except GitError as exc:
            raise BerryStop(
                "FAILED", f"merging {wt.branch} into {integration} failed: {exc}"
            ) from None
        if self.forge is not None and not push_branch:
            await self._on_forge(req, title, items, sha, integration, notice, force=False)
        out = await self.repo.run("diff", "--name-only", "-z", f"{sha}^1", sha)
        files = [p for p in out.split("\0") if p]
        notice.update(commit_sha=sha, files_changed=len(files), files_committed=files)
        return sha

    async def _on_forge(
        self,
        req: str,
        title: str | None,
        items: list[StageDeliverable],
        sha: str,
        branch: str,
        notice: dict[str, Any],
        *,
        force: bool,
    ) -> None:
        """Push, the pull request and CI; any failure BLOCKS the REQ with an issue."""
        assert self.forge is not None
        try:
            base = await self.forge.base()
            await self.forge.push(sha, branch, force=force)
            pr = await self.forge.pull_request(
                head=branch,
                base=base,
                title=pull_request_title(req, title),
                body=pull_request_body(req, items, self.pipeline),
            )
            if pr is not None:
                notice["pull_request"] = pr
            ci = await self.forge.wait_ci(sha)
        except ForgeStop as stop:
            issue = await self.forge.report(req, stop.reason, "", stop.extra.get("push_error", ""))
            raise BerryStop("BLOCKED", stop.reason, issue=issue, pushed=False) from None
        except ForgeError as exc:  # the token missing or refused, the forge away
            raise BerryStop("BLOCKED", f"the forge: {exc}", forge_error=str(exc)) from None
        notice["pushed"] = {"branch": branch, "commit": sha}
        if ci is None:
            return
        notice["ci"] = {"state": ci.state, "checks": [c.__dict__ for c in ci.checks][:50]}
        if ci.state == "success":
            return
        if ci.state == "failure":
            failing = failing_checks(ci)
            reason = f"CI failed on {sha[:12]}: {describe_checks(failing)}"
        else:
            reason = (
                f"CI did not finish within {self.settings.forge_ci_timeout:.0f}s on {sha[:12]}"
                f" (state {ci.state})"
            )
        detail = "\n".join(
            f"- {c.name}: {c.state}" + (f" ({c.url})" if c.url else "") for c in ci.checks
        )
        issue = await self.forge.report(req, reason, detail, "")
        raise BerryStop("BLOCKED", reason, issue=issue)

    async def _tests_or_stop(self, req: str, cwd: Path, notice: dict[str, Any]) -> None:
        """Run the tests; red tests end the run (BLOCKED with an issue when a
        forge is configured, as seed 002 asks; else FAILED, and retried)."""
        tests = await self._test(cwd)
        notice.update(tests_passed=tests["passed"], tests=tests)
        if tests["passed"] is not False:
            return
        reason = f"the tests failed: {tests['reason']}"
        if self.forge is not None:
            issue = await self.forge.report(req, reason, "", tests.get("output_tail", ""))
            raise BerryStop("BLOCKED", reason, tests=tests, tests_passed=False, issue=issue)
        raise BerryStop("FAILED", reason, tests=tests, tests_passed=False)

    @contextlib.asynccontextmanager
    async def _workspace_lock(self) -> AsyncIterator[None]:
        """One Berry run per workspace at a time, across every agogd replica:
        two runs would fight over git's index and the same compose project."""
        async with self._local_lock, advisory_lock(self.rt.pool, f"berry:{self.workspace}"):
            yield

    # --- steps -------------------------------------------------------------------
    async def _checked_paths(self, listed: list[object]) -> list[str]:
        refused: list[dict[str, str]] = []
        paths: list[str] = []
        for value in listed:
            why = path_problem(value)
            if why is None:
                assert isinstance(value, str)
                path = str(PurePosixPath(value.strip()))  # "./a//b" is "a/b"; "./" is "."
                why = inside_workspace(self.workspace, path) or file_problem(self.workspace, path)
                if (
                    why is None
                    and not (self.workspace / path).exists()  # links refused above
                    and not await self.repo.tracked_file(path)
                ):
                    why = (
                        "a tracked directory: list its files"
                        if await self.repo.tracked(path)
                        else "listed but neither in the workspace nor tracked by git"
                    )
                if why is None:
                    if path not in paths:
                        paths.append(path)
                    continue
            refused.append({"path": str(value)[:300], "reason": why})
        if refused:
            raise BerryStop(
                "BLOCKED",
                f"refused {len(refused)} listed file(s): "
                + "; ".join(f"{r['path']!r}: {r['reason']}" for r in refused[:5]),
                refused_paths=refused,
            )
        return paths

    async def _commit(self, req: str, paths: list[str], message: str) -> tuple[str, list[str]]:
        trailer = f"Agog-Req: {req}"
        try:
            await self.repo.stage(paths)
            staged = set(await self.repo.staged_files())
            mine = [p for p in paths if p in staged]
            if mine:
                sha = await self.repo.commit(message, mine)
                log.info("berry.committed", commit_sha=sha, files=len(mine))
                return sha, mine
            # Nothing new: a re-run after a crash, or a REQ without files.
            existing = await self.repo.find_commit(trailer)
            if existing is not None:
                log.info("berry.commit_found", commit_sha=existing, reason="already committed")
                return existing, await self.repo.files_in(existing)
            head = await self.repo.head()
        except GitError as exc:
            raise BerryStop("FAILED", f"the commit failed: {exc}") from None
        if head is None:
            raise BerryStop("BLOCKED", "nothing to commit and the repository has no commit yet")
        log.info("berry.nothing_to_commit", commit_sha=head)
        return head, []

    async def _test(self, cwd: Path) -> dict[str, Any]:
        if not self.test_argv:
            return {
                "passed": None,
                "reason": "no test command configured (AGOG_BERRY_TEST_COMMAND)",
            }
        result = await run_process(
            self.test_argv,
            stdin="",
            cwd=cwd,
            env={k: v for k, v in os.environ.items() if not k.startswith("AGOG_")},
            timeout=self.settings.berry_test_timeout,
            kill_grace=self.settings.runner_kill_grace,
            output_limit=256 * 1024,
            on_line=lambda stream, line: log.info("berry.test_output", stream=stream, line=line),
        )
        tail = (result.stdout[-TAIL:] + "\n" + result.stderr_tail[-TAIL:]).strip()
        reason = run_failure(result, self.settings.berry_test_timeout)
        if reason is None:
            log.info("berry.tests_passed", argv0=self.test_argv[0])
            return {"passed": True, "exit_code": 0, "command": self.test_argv}
        log.warning("berry.tests_failed", reason=reason)
        return {
            "passed": False,
            "reason": reason,
            "exit_code": result.exit_code,
            "command": self.test_argv,
            "output_tail": tail,
        }

    async def _release(self, req: str, sha: str, deployed: bool) -> dict[str, Any]:
        """Tag a deployed REQ and push, when configured; a failure is reported, not fatal."""
        settings, out = self.settings, {}
        try:
            if settings.berry_release_tag and deployed:
                tag = settings.berry_release_tag.format(req=req)
                code, _, err = await self.repo.call("tag", tag, sha)
                if (
                    code != 0
                    and sha
                    != (await self.repo.run("rev-parse", f"{tag}^{{commit}}", check=False)).strip()
                ):
                    raise GitError(f"git tag {tag} failed: {err.strip()[-300:]}")
                out["tag"] = tag
            if settings.berry_push_remote:
                branch = await self.repo.branch()
                refs = [f"{sha}:refs/heads/{branch}"] if branch else []
                refs += [f"refs/tags/{out['tag']}"] if "tag" in out else []
                if refs:
                    await self.repo.run("push", settings.berry_push_remote, *refs)
                out.update(pushed=True, remote=settings.berry_push_remote, branch=branch)
        except GitError as exc:
            log.warning("berry.release_failed", error=str(exc))
            out.update(pushed=False, error=str(exc))
        return out

    async def _infra_report(self, req: str) -> None:
        """Miki's infrastructure report after each deploy (never fails the stage)."""
        try:
            await publish_report(self.rt, req, reason="deploy")
        except Exception as exc:  # a report is a courtesy; the deploy stands
            log.warning("berry.infra_report_failed", error=repr(exc))


def deployer_for(settings: Settings) -> ComposeDeployer:
    target = ComposeTarget(
        files=tuple(settings.berry_compose_files),
        project=settings.berry_compose_project,
        services=tuple(settings.berry_services),
    )
    return ComposeDeployer(
        settings.docker_url,
        target,
        health_urls=tuple(settings.berry_health_urls),
        health_timeout=settings.berry_health_timeout,
        deploy_timeout=settings.berry_deploy_timeout,
    )
