"""A real Prometheus (Debian's, as scripts/prometheus installs it) scraping a
real agogd process on real NATS and Postgres, with scripted agents, and
evaluating the shipped alert rules: with REQs flowing the agogd_* series are
in Prometheus, a stage stuck past its deadline fires the stalled-stage alerts,
and agogd killed with SIGKILL fires AgogdDown."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.embedded import NatsServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from orchestrator.embedded.procs import (
    free_port,
    parent_death_signal,
    stop_process,
    tail,
    wait_until,
)
from tests.agents import PIPELINE, ScriptedAgents, happy, submit, wait_status
from tests.test_branches_faults import until
from tests.test_prometheus_rules import RULES, prometheus_tool, seconds

INTERVAL = "2s"  # scrape and evaluation: a scrape may take a while on a loaded machine
FOR = "6s"  # the rules' `for:` in the test's copy: three failed scrapes, not one slow one
STUCK_AGENT = PIPELINE.stages[0].agent
STUCK_TIMEOUT = 3.0


def shortened_rules(dest: Path) -> Path:
    """A copy of the shipped rules whose non-zero `for:` durations are FOR, so
    that the test waits seconds instead of minutes. Everything else, and every
    expression byte for byte, is the shipped file's."""
    shipped = yaml.safe_load(RULES.read_text())
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if seconds(rule.get("for", "0s")) > 0:
                rule["for"] = FOR
    dest.write_text(yaml.safe_dump(rules))
    copied = yaml.safe_load(dest.read_text())
    exprs = [[r["expr"] for r in g["rules"]] for g in copied["groups"]]
    assert exprs == [[r["expr"] for r in g["rules"]] for g in shipped["groups"]]
    return dest


class Prometheus:
    """One Prometheus server on a free loopback port, its data and log under ``root``."""

    def __init__(self, root: Path, target: str) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "prometheus.log"
        self.config = root / "prometheus.yml"
        config = {
            "global": {
                "scrape_interval": INTERVAL,
                "scrape_timeout": INTERVAL,
                "evaluation_interval": INTERVAL,
            },
            "rule_files": [str(shortened_rules(root / "agogd-alerts.yml"))],
            # The job's name is the one the README's scrape config and AgogdDown use.
            "scrape_configs": [{"job_name": "agogd", "static_configs": [{"targets": [target]}]}],
        }
        self.config.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    prometheus_tool("prometheus"),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=parent_death_signal,
            )
        wait_until(self._ready, 60, "prometheus", self.proc, self.log)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc)

    async def api(self, path: str, **params: str) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/{path}", params=params) as resp,
        ):
            body = await resp.json()
        assert body["status"] == "success", f"{path} {params}: {body}\n{tail(self.log)}"
        return body["data"]

    async def query(self, promql: str) -> dict[frozenset[tuple[str, str]], float]:
        """An instant query's vector, by label set."""
        result = (await self.api("query", query=promql))["result"]
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in result}

    async def value(self, promql: str) -> float | None:
        """The single value of an instant query; None while it has none."""
        found = await self.query(promql)
        assert len(found) <= 1, found
        return next(iter(found.values()), None)

    async def firing(self) -> dict[str, dict[str, str]]:
        """The firing alerts' labels, by alert name."""
        alerts = (await self.api("alerts"))["alerts"]
        return {a["labels"]["alertname"]: a["labels"] for a in alerts if a["state"] == "firing"}


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Start Prometheus scraping a target; stopped after the test, whatever happens."""
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        root = tmp_path / f"prometheus-{len(started)}"
        root.mkdir()
        started.append(Prometheus(root, target))
        return started[-1].start()

    yield start
    for server in started:
        server.stop()


def script(assignment: dict[str, Any]) -> dict[str, Any] | None:
    """The stuck REQ's first stage is never answered; everything else is."""
    if assignment["req_number"] == "REQ-PROM-STUCK" and assignment["agent"] == STUCK_AGENT:
        return None
    return happy(assignment)


async def exposed_agogd_names(url: str) -> set[str]:
    """The agogd_* sample names in agogd's own /metrics answer."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    return {n for n in names if n.startswith("agogd_")}


async def test_prometheus_scrapes_agogd_and_fires_the_stalled_and_down_alerts(
    nats_server: NatsServer,
    nc: NATS,
    pg_dsn: str,
    daemons: list[DaemonProcess],
    prometheus: Any,
) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    env = {
        "AGOG_NATS_URL": nats_server.url,
        "AGOG_POSTGRES_DSN": pg_dsn,
        "AGOG_HTTP_PORT": str(port),
        "AGOG_DISPATCH_INTERVAL": "0.2",
        "AGOG_OUTBOX_POLL_INTERVAL": "0.2",
        "AGOG_STAGE_TIMEOUTS": json.dumps({STUCK_AGENT: STUCK_TIMEOUT}),
        # The deadline scanner makes its first pass at start and, within the
        # test, no other: a stuck scanner, the fault the stalled alerts are for
        # (a working one retries the attempt within a second of its deadline).
        "AGOG_TIMEOUT_SCAN_INTERVAL": "3600",
    }
    agents = await ScriptedAgents(nc, script).start()
    daemon = DaemonProcess(env).start()
    daemons.append(daemon)
    daemon.wait_ready(90)
    prom = prometheus(target)

    # REQs flowing: the agogd_* series are in Prometheus, with agogd's values.
    await submit(nc, "REQ-PROM-1")
    await wait_status(pg_dsn, "REQ-PROM-1", "DEPLOYED", timeout=90)
    exposed = await exposed_agogd_names(f"http://{target}")
    assert {"agogd_reqs", "agogd_transitions_total", "agogd_stage_timeout_seconds"} <= exposed

    async def all_series_scraped() -> bool:
        stored = await prom.query('group by (__name__) ({__name__=~"agogd_.+"})')
        names = {dict(labels)["__name__"] for labels in stored}
        return exposed <= names and await prom.value('sum(agogd_reqs{status="DEPLOYED"})') == 1

    await until(all_series_scraped, 90, "every agogd_* series and the DEPLOYED REQ in Prometheus")
    assert await prom.value(f'up{{job="agogd",instance="{target}"}}') == 1
    completed = 'sum(agogd_transitions_total{event="workflow.completed"})'
    assert await prom.value(completed) == 1
    timeout = f'agogd_stage_timeout_seconds{{agent="{STUCK_AGENT}"}}'
    assert await prom.value(timeout) == STUCK_TIMEOUT
    assert await prom.firing() == {}

    # A stage stuck past its deadline: both stalled-stage alerts fire for its agent.
    await submit(nc, "REQ-PROM-STUCK")

    async def stalled() -> dict[str, dict[str, str]] | None:
        firing = await prom.firing()
        names = {"AgogdStageStalled", "AgogdDeadlinesNotEnforced"}
        return firing if names <= set(firing) else None

    firing = await until(stalled, 120, "AgogdStageStalled and AgogdDeadlinesNotEnforced")
    assert isinstance(firing, dict)
    assert set(firing) == {"AgogdStageStalled", "AgogdDeadlinesNotEnforced"}
    for labels in firing.values():
        assert labels["agent"] == STUCK_AGENT, labels
    assert firing["AgogdStageStalled"]["severity"] == "warning"
    assert firing["AgogdDeadlinesNotEnforced"]["severity"] == "critical"
    overdue = f'max(agogd_stage_overdue{{agent="{STUCK_AGENT}"}})'
    assert await prom.value(overdue) == 1
    idle = await prom.value(f'max(agogd_stage_idle_seconds{{agent="{STUCK_AGENT}"}})')
    assert idle is not None and idle > STUCK_TIMEOUT

    # agogd killed: `up` is 0 and AgogdDown fires; its stages' series went stale
    # with it, so the alerts read from them are gone.
    daemon.signal(signal.SIGKILL)
    assert daemon.wait_exit(10) == -signal.SIGKILL

    async def down() -> dict[str, dict[str, str]] | None:
        firing = await prom.firing()
        return firing if "AgogdDown" in firing else None

    firing = await until(down, 120, "AgogdDown")
    assert isinstance(firing, dict)
    assert firing == {
        "AgogdDown": {
            "alertname": "AgogdDown",
            "job": "agogd",
            "instance": target,
            "severity": "critical",
        }
    }
    assert await prom.value(f'up{{job="agogd",instance="{target}"}}') == 0
    await agents.stop()
