"""Staging, smoke tests, the pre-flight checklist, the backup, then production.

With ``AGOG_BERRY_STAGING`` on, a commit goes to staging first: built there,
health-checked, smoke-tested. Only if all of it passes, and seed 002's
pre-flight checklist holds (``preflight.checklist``), do the images built
at staging go to production, unchanged (never rebuilt), and the smoke tests
run there too. A staging failure rolls staging back and leaves production
untouched; a production failure rolls production back. Off, there is one
environment, production, deployed as before. Either way a commit adding
migrations gets a backup of the app database before production, or is
blocked. Each environment's row in ``berry_deployments`` says what happened.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from orchestrator.runtime.logs import get_logger
from workers.adapters.git_repo import GitError, GitRepo
from workers.release import preflight, records
from workers.release.backups import Backups, added_migrations
from workers.release.deploy import ComposeDeployer, DeployError
from workers.release.environments import (
    PRODUCTION,
    STAGING,
    EnvError,
    Environment,
    interpolate,
    read_env_file,
    staging_project,
)
from workers.release.rollout import Rollout, Target

log = get_logger("agogd.berry")


class Promotion:
    """Takes one tested commit through the configured environments."""

    def __init__(
        self,
        *,
        repo: GitRepo,
        workspace: Path,
        deployer: ComposeDeployer,
        environments: list[Environment],
        health_urls: tuple[str, ...],
        rollout: Rollout,
        backups: Backups,
        migrations_glob: str,
        after_deploy: Callable[[str], Awaitable[None]],
    ) -> None:
        self.repo, self.workspace, self.deployer = repo, workspace, deployer
        self.environments, self.health_urls = environments, health_urls
        self.rollout, self.backups = rollout, backups
        self.migrations_glob, self.after_deploy = migrations_glob, after_deploy

    async def run(
        self,
        req: str,
        attempt: int,
        sha: str,
        *,
        tests: dict[str, Any] | None,
        ci: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The deploy's outcome: 'deployed', 'failed', 'blocked' or 'skipped',
        with each environment's evidence."""
        if (why := await self.deployer.engine_problem()) is not None:
            log.warning("berry.not_deploying", reason=why)
            return {"outcome": "skipped", "reason": why}
        try:
            targets = await self.targets()
        except (DeployError, EnvError, ValueError) as exc:
            return {"outcome": "failed", "reason": f"the compose stack is invalid: {exc}"}
        if len(targets) == 1:
            result = await self._production(targets[0], req, attempt, sha, [])
        else:
            result = await self._through_staging(
                targets, req, attempt, sha, {"tests": tests, "ci": ci}
            )
        await self.after_deploy(req)
        return result

    async def targets(self) -> list[Target]:
        """Each environment as Compose resolves it; production first, since
        staging's default project is named after it."""
        production_env = next(e for e in self.environments if e.name == PRODUCTION)
        production = await self._target(production_env, production_env.project)
        if len(self.environments) == 1:
            return [production]
        staging_env = next(e for e in self.environments if e.name == STAGING)
        project = staging_project(staging_env.project, production.project)
        return [await self._target(staging_env, project), production]

    async def _target(self, env: Environment, project: str | None) -> Target:
        public = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
        variables = {**public, **read_env_file(env.env_file, public)}
        try:
            urls = tuple(interpolate(u, variables) for u in self.health_urls)
        except EnvError as exc:
            raise EnvError(f"AGOG_BERRY_HEALTH_URLS for {env.name}: {exc}") from None
        deployer = self.deployer.for_environment(project, urls)
        stack = await deployer.describe(self.workspace, env.env_file)
        return Target(env.name, stack, env.env_file, variables, deployer)

    # --- one environment ----------------------------------------------------------
    async def _production(
        self,
        target: Target,
        req: str,
        attempt: int,
        sha: str,
        items: list[dict[str, Any]],
        images: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The migrations' backup (or a block), then production."""
        key = records.Key(req, attempt, PRODUCTION)
        reused = await self.rollout.reusable(target, key, sha)
        if reused is not None:
            return reused
        plan = await self.rollout.plan(target, sha)
        migrations = await self._migrations(plan.commit, sha)
        backup = None
        if migrations:
            if preflight.blocking(items):
                error = "not taken: the pre-flight is blocked by the items above"
            else:
                existing = (await records.get(self.rollout.pool, key) or {}).get("backup")
                backup, error = await self.backups.take(key, existing)
            items = [*items, preflight.backup_item(migrations, backup, error)]
        extra: dict[str, Any] = {"preflight": items} if items else {}
        if migrations:
            extra["migrations"] = migrations
        if preflight.blocking(items):
            reason = preflight.reason(items)
            await records.write(
                self.rollout.pool,
                key,
                project=target.project,
                commit_sha=sha,
                status="blocked",
                detail={"reason": reason},
                preflight=items,
            )
            log.warning("berry.preflight_blocked", reason=reason)
            return {"outcome": "blocked", "reason": reason, **extra}
        start: dict[str, Any] = {"preflight": items or None}
        if backup is not None:
            start["backup"] = backup
        result = await self.rollout.deploy(target, key, sha, images=images, start=start)
        if backup is not None:
            await self.backups.prune()
            result["backup"] = backup
        return {**result, **extra}

    async def _migrations(self, base: str | None, sha: str) -> list[str]:
        try:
            return await added_migrations(self.repo, base, sha, self.migrations_glob)
        except GitError as exc:  # unreadable history: treat as adding, so a backup is taken
            log.warning("berry.migrations_unknown", error=str(exc))
            return [f"(unknown: {exc})"[:200]]

    # --- staging first ------------------------------------------------------------
    async def _through_staging(
        self,
        targets: list[Target],
        req: str,
        attempt: int,
        sha: str,
        checked: dict[str, Any],
    ) -> dict[str, Any]:
        """Staging, its evidence into the checklist (``checked``: the tests'
        and CI's results), then production with staging's images."""
        staging_target, production_target = targets
        key = records.Key(req, attempt, STAGING)
        staged = await self.rollout.reusable(staging_target, key, sha) or await self.rollout.deploy(
            staging_target, key, sha
        )
        plan = await self.rollout.plan(production_target, sha)
        items = preflight.checklist(
            tests=checked["tests"],
            ci=checked["ci"],
            staging_health=staged.get("health"),
            staging_smoke=staged.get("smoke"),
            rollback_target=plan.commit,
            migrations=[],  # the backup item comes with production, once the rest holds
            backup=None,
            backup_error=None,
        )
        if staged["outcome"] != "deployed":
            reason = f"staging failed, production untouched: {staged['reason']}"
            log.error("berry.staging_failed", reason=staged["reason"])
            return {"outcome": "failed", "reason": reason, "staging": staged, "preflight": items}
        result = await self._production(
            production_target, req, attempt, sha, items, images=staged["images"]
        )
        if result["outcome"] == "failed":
            result["reason"] = f"production failed: {result['reason']}"
        return {**result, "staging": staged}
