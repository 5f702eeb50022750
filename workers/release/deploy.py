"""Compose deploys and their health verdict, for Berry's native stage.

``docker compose up -d`` runs through the real Compose v2 binary against
the configured engine (``DOCKER_HOST``); health is then judged on the
engine itself: every expected service has a running container, each
container's own HEALTHCHECK passes (``State.Health``, or the check run
through exec where the engine has no timer, as podman without systemd),
and the configured HTTP URLs answer 200.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from orchestrator.runtime.logs import get_logger
from workers.adapters.compose_cli import ComposeError, compose_env, run_compose
from workers.adapters.engine_api import (
    ENGINE_ERRORS,
    PROJECT_LABEL,
    SERVICE_LABEL,
    connect,
    last_lines,
    probe_health,
    vanished,
)

log = get_logger("agogd.deploy")

POLL = 1.0


class DeployError(RuntimeError):
    """``compose up`` (or ``config``) failed; the message says why."""


@dataclass
class HealthVerdict:
    """Whether a compose project is healthy, and what is wrong if not."""

    healthy: bool = False
    containers: list[dict[str, Any]] = field(default_factory=list)
    urls: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    final: bool = False  # a failure that waiting cannot fix (exited, restart "no")

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "containers": self.containers,
            "urls": self.urls,
            "problems": self.problems,
        }

    def images(self) -> dict[str, str]:
        """Service -> the image id its containers run (what was deployed)."""
        return {c["service"]: c["image"] for c in self.containers if c.get("image")}


@dataclass(frozen=True)
class Stack:
    """A compose stack as Compose resolves it: its project name, the services
    to check, and the image name each service's containers are created from."""

    project: str
    services: list[str]
    image_names: dict[str, str]


@dataclass(frozen=True)
class ComposeTarget:
    """Which stack to deploy: compose files (relative to the project dir),
    an optional project name and an optional subset of services."""

    files: tuple[str, ...]
    project: str | None = None
    services: tuple[str, ...] = ()


class ComposeDeployer:
    """Deploys one compose stack on one engine and judges its health."""

    def __init__(
        self,
        docker_url: str,
        target: ComposeTarget,
        *,
        health_urls: tuple[str, ...] = (),
        health_timeout: float = 120.0,
        deploy_timeout: float = 600.0,
        probe_timeout: float = 10.0,
    ) -> None:
        self.docker_url, self.target = docker_url, target
        self.health_urls, self.health_timeout = health_urls, health_timeout
        self.deploy_timeout, self.probe_timeout = deploy_timeout, probe_timeout

    def for_environment(self, project: str | None, health_urls: tuple[str, ...]) -> ComposeDeployer:
        """The same deployer for another compose project and its own health URLs."""
        return ComposeDeployer(
            self.docker_url,
            replace(self.target, project=project),
            health_urls=health_urls,
            health_timeout=self.health_timeout,
            deploy_timeout=self.deploy_timeout,
            probe_timeout=self.probe_timeout,
        )

    # --- engine --------------------------------------------------------------
    async def engine_problem(self) -> str | None:
        """Why no deploy can happen here (no engine configured or reachable)."""
        if not self.docker_url:
            return "no container engine is configured (AGOG_DOCKER_URL is empty)"
        try:
            async with connect(self.docker_url) as docker:
                async with asyncio.timeout(10):
                    await docker.version()
        except (*ENGINE_ERRORS, ValueError) as exc:
            return f"no container engine is reachable at {self.docker_url}: {exc!r}"
        return None

    async def _compose(self, args: list[str], cwd: Path, timeout: float) -> tuple[int, str, str]:
        try:
            return await run_compose(
                args, cwd=cwd, env=compose_env(self.docker_url), timeout=timeout
            )
        except ComposeError as exc:
            raise DeployError(str(exc)) from None
        except TimeoutError:
            raise DeployError(f"compose timed out after {timeout:.0f}s") from None

    def _base(self, project_dir: Path, env_file: Path | None) -> list[str]:
        args = ["--project-directory", str(project_dir)]
        for name in self.target.files:
            args += ["-f", str(project_dir / name)]
        if env_file is not None and env_file.is_file():
            args += ["--env-file", str(env_file)]
        if self.target.project:
            args += ["-p", self.target.project]
        return args

    # --- compose ---------------------------------------------------------------
    async def describe(self, project_dir: Path, env_file: Path | None) -> Stack:
        """The stack as Compose itself resolves it (``config``)."""
        code, out, err = await self._compose(
            [*self._base(project_dir, env_file), "config", "--format", "json"], project_dir, 60
        )
        if code != 0:
            raise DeployError(f"compose config failed ({code}): {err.strip()[-800:]}")
        model = json.loads(out)
        project = str(model.get("name") or self.target.project)
        defined = model.get("services") or {}
        services = list(self.target.services) or sorted(defined.keys())
        names = {
            # Compose names a built image without an ``image:`` "<project>-<service>".
            name: str(spec.get("image") or f"{project}-{name}")
            for name, spec in defined.items()
            if name in services and (spec.get("image") or spec.get("build"))
        }
        return Stack(project, services, names)

    async def up(
        self, project_dir: Path, env_file: Path | None, *, build: bool | None = None
    ) -> None:
        """``compose up -d`` of the target: ``build`` True rebuilds what has a
        build section (``--build``), False never builds (``--no-build``: the
        images are already there, promoted or rolled back to), None as Compose
        decides (builds what is missing)."""
        args = [*self._base(project_dir, env_file), "up", "-d", "--remove-orphans"]
        if build is not None:
            args.append("--build" if build else "--no-build")
        args += list(self.target.services)
        started = time.monotonic()
        code, _out, err = await self._compose(args, project_dir, self.deploy_timeout)
        log.info(
            "deploy.compose_up",
            project_dir=str(project_dir),
            exit_code=code,
            seconds=round(time.monotonic() - started, 2),
        )
        if code != 0:
            raise DeployError(f"compose up failed ({code}): {err.strip()[-800:]}")

    async def tag_images(self, images: dict[str, str], names: dict[str, str]) -> None:
        """Give each service's image id the name its compose service expects,
        so that ``up --no-build`` runs exactly those images. An image named by
        digest is pinned already; one the engine no longer has is a DeployError."""
        try:
            async with connect(self.docker_url) as docker:
                for service, image_id in images.items():
                    name = names.get(service)
                    if name is None or "@" in name:
                        continue
                    repo, tag = split_reference(name)
                    await docker.images.tag(image_id, repo, tag=tag)
        except (*ENGINE_ERRORS, ValueError) as exc:
            raise DeployError(f"tagging the images failed: {exc}") from None

    # --- health ------------------------------------------------------------------
    async def look(self, project: str, services: list[str]) -> HealthVerdict:
        """One look, no waiting: is the project healthy right now?"""
        try:
            async with connect(self.docker_url) as docker:
                return await self.check(docker, project, services)
        except ENGINE_ERRORS as exc:
            return HealthVerdict(problems=[f"container engine error: {exc!r}"[:500]])

    async def wait_healthy(self, project: str, services: list[str]) -> HealthVerdict:
        """Poll until healthy, a failure that cannot heal, or the health timeout."""
        deadline = time.monotonic() + self.health_timeout
        async with connect(self.docker_url) as docker:
            while True:
                try:
                    verdict = await self.check(docker, project, services)
                except ENGINE_ERRORS as exc:
                    # A hiccup of the engine is not the deploy's failure; one
                    # that lasts to the deadline is, and the verdict says so.
                    log.warning("deploy.engine_error", project=project, error=repr(exc))
                    verdict = HealthVerdict(problems=[f"container engine error: {exc!r}"[:500]])
                if verdict.healthy or verdict.final or time.monotonic() >= deadline:
                    return verdict
                await asyncio.sleep(POLL)

    async def check(
        self, docker: aiodocker.Docker, project: str, services: list[str]
    ) -> HealthVerdict:
        """One look at the project's containers and health URLs."""
        verdict = HealthVerdict()
        listed = await docker.containers.list(
            all=True, filters={"label": [f"{PROJECT_LABEL}={project}"]}
        )
        by_service: dict[str, list[dict[str, Any]]] = {}
        for summary in listed:
            try:
                info = await summary.show()
            except aiodocker.DockerError as exc:
                if not vanished(exc):
                    raise
                continue  # replaced meanwhile: the next look sees its successor
            service = ((info.get("Config") or {}).get("Labels") or {}).get(SERVICE_LABEL, "")
            by_service.setdefault(service, []).append(info)
        for service in services:
            infos = by_service.get(service, [])
            if not infos:
                verdict.problems.append(f"service {service}: no container")
            for info in infos:
                await self._judge(docker, service, info, verdict)
        await self._check_urls(verdict)
        verdict.healthy = not verdict.problems
        return verdict

    async def _judge(
        self,
        docker: aiodocker.Docker,
        service: str,
        info: dict[str, Any],
        verdict: HealthVerdict,
    ) -> None:
        state = info.get("State") or {}
        name = str(info.get("Name", "")).lstrip("/")
        entry: dict[str, Any] = {
            "name": name,
            "service": service,
            "status": state.get("Status"),
            "exit_code": state.get("ExitCode"),
            "restart_count": info.get("RestartCount", 0),
            "health": None,
            "image": info.get("Image"),
        }
        verdict.containers.append(entry)
        if state.get("Status") != "running":
            policy = ((info.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name")
            entry["last_log_lines"] = await last_lines(docker, info["Id"])
            verdict.problems.append(
                f"service {service}: container {name} is {state.get('Status')}"
                f" (exit code {state.get('ExitCode')})"
            )
            if state.get("Status") in ("exited", "dead") and policy in (None, "", "no"):
                verdict.final = True
            return
        healthy = await probe_health(docker, info, self.probe_timeout)
        entry["health"] = None if healthy is None else ("healthy" if healthy else "unhealthy")
        if healthy is False:
            verdict.problems.append(f"service {service}: container {name} fails its HEALTHCHECK")

    async def _check_urls(self, verdict: HealthVerdict) -> None:
        if not self.health_urls:
            return
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for url in self.health_urls:
                try:
                    async with session.get(url) as response:
                        status: int | None = response.status
                        error = None if status == 200 else f"answered {status}"
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    status, error = None, repr(exc)
                verdict.urls.append({"url": url, "status": status, "error": error})
                if error:
                    verdict.problems.append(f"health URL {url}: {error}")


def split_reference(name: str) -> tuple[str, str]:
    """``registry:5000/team/app:1.2`` -> (``registry:5000/team/app``, ``1.2``);
    no tag is ``latest``, as the engine reads it."""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, "latest"
