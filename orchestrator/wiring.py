"""The composition root: which parts of agogd run, and what each is handed.

This is the one module that knows every part. ``Daemon`` (the lifecycle)
calls ``add_routes`` before it listens and ``build`` once Postgres and NATS
are connected; ``build`` makes each part with the runtime and the other
parts it needs, as constructor arguments, the way ``HealthWatcher`` takes
its dependencies. Nothing reaches back through the daemon.

Two shapes: the whole agogd (the engine, its API and the board, the memory,
the infra report requests, plus the agent runner and the health watch when
configured), and ``agogd runner`` (only the runner, the health watch and
/metrics, beside an engine that runs elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from orchestrator.api import observe
from orchestrator.api import routes as api_routes
from orchestrator.api.common import ApiContext
from orchestrator.api.observe import Observer
from orchestrator.backup import schedule as backup_schedule
from orchestrator.core.registry import Pipeline
from orchestrator.engine import service as engine_service
from orchestrator.memory import service as memory_service
from orchestrator.memory.service import Memory
from orchestrator.runtime.context import Late, Runtime
from orchestrator.runtime.daemon import Assembly, Check, Daemon, StartupError
from orchestrator.runtime.services import Service
from orchestrator.runtime.settings import Settings
from workers.adapters.forge import Forge, ForgeConfig, make_forge
from workers.branches.janitor import WorktreeJanitor
from workers.branches.worktrees import WorktreeError, Worktrees, worktrees_of
from workers.infra import health
from workers.infra import report as infra_report
from workers.infra.health import HealthWatcher
from workers.infra.report import ReportRequests
from workers.runner import service as runner_service
from workers.runner.service import Runner


@dataclass(frozen=True)
class Parts:
    """What one agogd built; a part that does not run here is None."""

    engine: engine_service.Engine | None
    memory: Memory | None
    runner: Runner | None
    health: HealthWatcher | None
    infra_reports: ReportRequests | None
    observer: Observer
    worktrees: Worktrees | None = None


class Agogd:
    """The wiring of one agogd process (``engine=False``: ``agogd runner``)."""

    def __init__(self, settings: Settings, pipeline: Pipeline, *, engine: bool = True) -> None:
        self.settings, self.pipeline, self.with_engine = settings, pipeline, engine
        self._api: Late[ApiContext] = Late("the API")
        self._observer: Late[Observer] = Late("the metrics")
        self.parts: Parts | None = None  # set by build

    def add_routes(self, app: web.Application) -> None:
        observe.install(app, self.pipeline, self._observer, board=self.with_engine)
        if self.with_engine:
            api_routes.install(app, self.settings, self.pipeline, self._api)

    def build(self, rt: Runtime) -> Assembly:
        settings, pipeline = rt.settings, rt.pipeline
        memory = (
            memory_service.build(settings, pipeline)
            if self.with_engine and settings.memory_enabled
            else None
        )
        engine = engine_service.build(rt, memory) if self.with_engine else None
        reports = infra_report.build(rt) if self.with_engine else None
        worktrees = worktrees_of(settings, rt.pool)
        runner = runner_service.build(rt, worktrees=worktrees, forge=forge_of(settings))
        watcher = health.build(rt)
        observer = Observer(
            pool=rt.pool, nc=rt.nc, pipeline=pipeline, database_gauges=self.with_engine
        )
        services: dict[str, Service] = {}
        checks = []
        if memory is not None:
            services.update(memory.services(rt))

            async def memory_check(memory: Memory = memory) -> None:
                await memory.check(rt.pool)

            checks.append(memory_check)
        if engine is not None:
            services.update(engine.services)
            read = {*engine.consumers, *([reports.consumer.name] if reports else [])}
            _every_consumer_has_a_reader(pipeline, read)
            self._api.bind(
                ApiContext(rt=rt, memory=memory, wake_dispatcher=engine.wake, worktrees=worktrees)
            )
        if reports is not None:
            services["infra-report-requests"] = reports.run
        if self.with_engine:  # the last good backup's gauge; the schedule, when set
            services["backup-schedule"] = backup_schedule.build(rt).run
        if runner is not None:
            services.update(runner.services())
        if watcher is not None:
            services["health-watch"] = lambda: watcher.run(rt.stopping)
        if worktrees is not None:
            checks.append(_repo_check(worktrees))
            services["worktree-janitor"] = WorktreeJanitor(worktrees=worktrees, rt=rt).run
        services["metrics"] = lambda: observer.run(rt.stopping)
        self._observer.bind(observer)
        self.parts = Parts(engine, memory, runner, watcher, reports, observer, worktrees)
        return Assembly(services=services, checks=checks)


def forge_of(settings: Settings) -> Forge | None:
    """The forge client Berry pushes to (AGOG_FORGE), or None."""
    if not settings.forge:
        return None
    return make_forge(
        ForgeConfig(
            kind=settings.forge,
            api_url=settings.forge_url or "https://api.github.com",
            repo=settings.forge_repo,
            token=settings.forge_token,
            git_url=settings.forge_git_url or None,
            labels=tuple(settings.forge_labels),
            reviewers=tuple(settings.forge_reviewers),
        )
    )


def _repo_check(worktrees: Worktrees) -> Check:
    async def check() -> None:
        try:
            await worktrees.check()
        except WorktreeError as exc:
            raise StartupError(str(exc)) from None

    return check


def _every_consumer_has_a_reader(pipeline: Pipeline, read: set[str]) -> None:
    """A consumer in pipeline.toml that no service reads would fill up
    unread: refuse to start, in one line, instead of skipping it."""
    unread = [c.name for c in pipeline.consumers if c.name not in read]
    if unread:
        raise StartupError(
            f"pipeline consumer(s) {', '.join(unread)} have no handler in agogd: remove them"
            " from the pipeline file or name a consumer agogd reads"
        )


def make_daemon(
    settings: Settings,
    pipeline: Pipeline | None = None,
    *,
    engine: bool = True,
    any_http_port: bool = False,
) -> Daemon:
    """An agogd process, wired: the one way the CLI, ``agogd dev`` and the
    tests make one."""
    pipeline = pipeline or settings.load_pipeline()
    wiring = Agogd(settings, pipeline, engine=engine)
    return Daemon(settings, pipeline, wiring, any_http_port=any_http_port)
