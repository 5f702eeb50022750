"""One environment's deploy: compose up, health, smoke tests, and the rollback.

A deploy either builds the commit (``up --build``) or runs images it is
handed (promoted from staging: tagged with the names this environment's
compose file expects, then ``up --no-build``, and the running image ids
checked against them). It is healthy when the health verdict is and every
smoke test passes; otherwise the environment goes back to its last healthy
deployment: that deployment's images again when the engine still has them
(no rebuild: seconds), else a rebuild of its commit from a git worktree.
``rollback_seconds`` runs from the failed verdict to the healthy stack.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from orchestrator.runtime.logs import get_logger
from workers.adapters.git_repo import GitError, GitRepo
from workers.release import records
from workers.release.deploy import ComposeDeployer, DeployError, HealthVerdict, Stack
from workers.release.smoke import Place, SmokeCheck, all_passed, failures, run_checks

log = get_logger("agogd.berry")


@dataclass(frozen=True)
class Target:
    """One environment, resolved: Compose's view of its stack, its env file
    and variables, and a deployer bound to its project and health URLs."""

    environment: str
    stack: Stack
    env_file: Path
    variables: dict[str, str]
    deployer: ComposeDeployer

    @property
    def project(self) -> str:
        return self.stack.project


@dataclass(frozen=True)
class RollbackPlan:
    """Where a failed deploy goes back to: a commit, and the images that
    commit ran when it was last healthy here (None: rebuild it)."""

    commit: str | None
    images: dict[str, str] | None


class Rollout:
    """Deploys one commit to one environment and rolls it back when it fails."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        repo: GitRepo,
        *,
        workspace: Path,
        state_dir: Path,
        checks: list[SmokeCheck],
        kill_grace: float,
    ) -> None:
        self.pool, self.repo, self.workspace = pool, repo, workspace
        self.state_dir, self.checks, self.kill_grace = state_dir, checks, kill_grace

    async def plan(self, target: Target, sha: str) -> RollbackPlan:
        """The last healthy deployment of another commit here, else the parent."""
        row = await records.last_healthy(self.pool, target.project, other_than=sha)
        if row is not None:
            return RollbackPlan(row["commit_sha"], row["images"] or None)
        return RollbackPlan(await self.repo.parent(sha), None)

    async def reusable(self, target: Target, key: records.Key, sha: str) -> dict[str, Any] | None:
        """This attempt's deployment of the same commit when it is still what
        runs there, healthy (a re-run after a crash): nothing to redo."""
        row = await records.get(self.pool, key)
        if row is None or row["status"] != "healthy" or row["commit_sha"] != sha:
            return None
        verdict = await target.deployer.look(target.project, target.stack.services)
        if not verdict.healthy or verdict.images() != row["images"]:
            return None
        log.info("berry.deploy_reused", environment=key.environment, project=target.project)
        return {
            "outcome": "deployed",
            "environment": key.environment,
            "project": target.project,
            "deployed_at": row["finished_at"].isoformat(),
            "health": row["health"],
            "smoke": row["smoke"],
            "images": row["images"],
            "reused": True,
            **{k: row[k] for k in ("preflight", "backup") if row[k] is not None},
        }

    async def deploy(
        self,
        target: Target,
        key: records.Key,
        sha: str,
        *,
        images: dict[str, str] | None = None,
        start: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Deploy ``sha`` (or run ``images``), judge it, roll back on failure."""
        plan = await self.plan(target, sha)
        record = {"project": target.project, "commit_sha": sha}
        await records.write(
            self.pool,
            key,
            **record,
            status="deploying",
            detail={"previous": plan.commit},
            **(start or {}),
        )
        verdict = await self._up(target, self.workspace, images)
        smoke: list[dict[str, Any]] | None = None
        if verdict.healthy:
            smoke = await self._smoke(target)
        failed_at = time.monotonic()
        out: dict[str, Any] = {
            "environment": key.environment,
            "project": target.project,
            "health": verdict.as_dict(),
            "smoke": smoke,
            "images": verdict.images(),
        }
        if verdict.healthy and smoke is not None and all_passed(smoke):
            await records.write(
                self.pool,
                key,
                **record,
                status="healthy",
                images=out["images"],
                health=out["health"],
                smoke=smoke,
            )
            log.info(
                "berry.deployed", environment=key.environment, project=target.project, commit=sha
            )
            return {"outcome": "deployed", **out, "deployed_at": datetime.now(UTC).isoformat()}
        if not verdict.healthy:
            reason = "the deployment is not healthy: " + "; ".join(verdict.problems[:5])
            log.error(
                "berry.deploy_unhealthy",
                environment=key.environment,
                project=target.project,
                problems=verdict.problems[:10],
            )
        else:
            reason = "the smoke tests failed: " + failures(smoke or [])
        rollback = await self.rollback(target, plan)
        seconds = round(time.monotonic() - failed_at, 3) if rollback["healthy"] else None
        rollback["seconds"] = seconds
        if not rollback["attempted"]:
            status, reason = "failed", f"{reason}; no earlier deployment to roll back to"
        elif rollback["healthy"]:
            status, reason = "rolled_back", f"{reason}; rolled back to {plan.commit[:12]}"
        else:
            status, reason = "rollback_failed", f"{reason}; the rollback did not restore health"
        await records.write(
            self.pool,
            key,
            **record,
            status=status,
            images=out["images"],
            health=out["health"],
            smoke=smoke,
            rollback=rollback,
            rollback_seconds=seconds,
        )
        return {"outcome": "failed", "reason": reason, **out, "rollback": rollback}

    async def _up(self, target: Target, tree: Path, images: dict[str, str] | None) -> HealthVerdict:
        """Start the stack (the images given, else built) and wait for its verdict."""
        try:
            await self._start(target, tree, images, target.stack)
        except DeployError as exc:
            return HealthVerdict(problems=[str(exc)])
        return await self._verdict(target, images, target.stack)

    async def _start(
        self, target: Target, tree: Path, images: dict[str, str] | None, stack: Stack
    ) -> None:
        if images:
            await target.deployer.tag_images(images, stack.image_names)
            await target.deployer.up(tree, target.env_file, build=False)
        else:
            await target.deployer.up(tree, target.env_file, build=True)

    async def _verdict(
        self, target: Target, images: dict[str, str] | None, stack: Stack
    ) -> HealthVerdict:
        """Health, and with images given, that each service runs exactly its image."""
        try:
            verdict = await target.deployer.wait_healthy(target.project, stack.services)
        except DeployError as exc:
            return HealthVerdict(problems=[str(exc)])
        if images:
            running = verdict.images()
            for service in stack.services:
                want = images.get(service)
                if want is not None and running.get(service) != want:
                    verdict.problems.append(
                        f"service {service}: runs image {running.get(service)}, not {want}"
                    )
            verdict.healthy = verdict.healthy and not verdict.problems
        return verdict

    async def _smoke(self, target: Target) -> list[dict[str, Any]]:
        place = Place(target.environment, target.project, target.variables, self.workspace)
        return await run_checks(self.checks, place, kill_grace=self.kill_grace)

    async def rollback(self, target: Target, plan: RollbackPlan) -> dict[str, Any]:
        """Redeploy the plan's commit from a worktree of it: its recorded
        images when the engine has them, else rebuilt; health checked again."""
        if plan.commit is None:
            return {"attempted": False, "healthy": False, "reason": "no earlier commit"}
        out: dict[str, Any] = {"attempted": True, "to": plan.commit}
        tree = self.state_dir / "rollback" / target.project / plan.commit
        try:
            if not tree.exists():
                tree.parent.mkdir(parents=True, exist_ok=True)
                await self.repo.run("worktree", "add", "--detach", str(tree), plan.commit)
            stack = await target.deployer.describe(tree, target.env_file)
        except (GitError, DeployError) as exc:
            log.error("berry.rollback_failed", to=plan.commit, error=str(exc))
            return {**out, "healthy": False, "reason": str(exc)}
        images = plan.images
        if images:
            try:
                await self._start(target, tree, images, stack)
                out["how"] = "images"
            except DeployError as exc:  # an image the engine no longer has: rebuild
                log.warning("berry.rollback_rebuild", to=plan.commit, error=str(exc)[:300])
                images = None
        if not images:
            out["how"] = "rebuilt"
            try:
                await self._start(target, tree, None, stack)
            except DeployError as exc:
                log.error("berry.rollback_failed", to=plan.commit, error=str(exc))
                return {**out, "healthy": False, "reason": str(exc)}
        verdict = await self._verdict(target, images, stack)
        level = log.warning if verdict.healthy else log.error
        level("berry.rolled_back", to=plan.commit, healthy=verdict.healthy, how=out["how"])
        return {
            **out,
            "healthy": verdict.healthy,
            "health": verdict.as_dict(),
            "images": verdict.images(),
        }
