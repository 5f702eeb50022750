"""Miki's infrastructure report, the pure part: compose model, per-container
checks, streams, disks, the verdict, the deliverable and the requests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.core import registry
from orchestrator.inbound.notices import parse_deliverable_subject, parse_notice
from workers.infra.compose import compose_entry, compose_project, container_entry
from workers.infra.entries import (
    DISK_DEGRADED,
    deliverable,
    disk_entry,
    disk_error,
    encode_within,
    registry_problems,
    report_req_number,
    sanitize_feature,
    stream_entry,
    summarize,
    worst,
)
from workers.infra.render import render_text
from workers.infra.report import reporter_of
from workers.infra.request import BadRequest, parse_request

PIPELINE = registry.load()
TEMPLATE = PIPELINE.subjects["infra_report_request"]

# The shape `docker-compose config --format json` prints (v2.40).
MODEL: dict[str, Any] = {
    "name": "shop",
    "networks": {
        "back": {"name": "shop_back", "ipam": {}},
        "front": {"name": "shop_front", "ipam": {}},
        "shared": {"name": "corp_shared", "external": True},
    },
    "volumes": {"data": {"name": "shop_data"}},
    "secrets": {"db_pw": {"name": "shop_db_pw", "file": "/srv/shop/db_pw.txt"}},
    "services": {
        "web": {
            "image": "web:1",
            "networks": {"back": None, "front": {"aliases": ["w"]}, "shared": None},
            "volumes": [
                {"type": "volume", "source": "data", "target": "/data", "volume": {}},
                {
                    "type": "bind",
                    "source": "/srv/shop/conf",
                    "target": "/conf",
                    "read_only": True,
                    "bind": {"create_host_path": True},
                },
                {"type": "tmpfs", "target": "/run/cache"},
                {"type": "volume", "target": "/scratch", "volume": {}},
            ],
            "secrets": [{"source": "db_pw"}],
            "restart": "always",
        },
        "job": {"image": "job:1", "networks": {"default": None}},
        "metrics": {"image": "m:1", "network_mode": "host"},
        "off": {"image": "off:1", "deploy": {"replicas": 0}},
    },
}
PROJECT = compose_project(MODEL, ["/srv/shop/docker-compose.yml"])


def inspect(
    name: str,
    service: str | None = "web",
    *,
    status: str = "running",
    exit_code: int = 0,
    restarts: int = 0,
    health: str = "",
    mounts: list[dict[str, Any]] | None = None,
    networks: list[str] | None = None,
    policy: str = "always",
    project: str = "shop",
) -> dict[str, Any]:
    """A container's inspect output in the Docker API's shape."""
    labels = {"com.docker.compose.project": project, "com.docker.compose.oneoff": "False"}
    if service:
        labels["com.docker.compose.service"] = service
    return {
        "Id": "f" * 64,
        "Name": f"/{name}",
        "RestartCount": restarts,
        "State": {
            "Status": status,
            "Running": status == "running",
            "ExitCode": exit_code,
            "OOMKilled": False,
            "Error": "",
            "StartedAt": "2026-11-23T10:00:00Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
            "Health": {"Status": health},
        },
        "Config": {"Image": "web:1", "Labels": labels},
        "HostConfig": {"RestartPolicy": {"Name": policy}},
        "Mounts": mounts if mounts is not None else GOOD_MOUNTS,
        "NetworkSettings": {
            "Networks": {
                n: {"IPAddress": "10.0.0.2"}
                for n in (networks if networks is not None else GOOD_NETWORKS)
            }
        },
    }


GOOD_MOUNTS: list[dict[str, Any]] = [
    {
        "Type": "volume",
        "Name": "shop_data",
        "Source": "/var/lib/docker/volumes/shop_data/_data",
        "Destination": "/data",
        "RW": True,
    },
    {"Type": "bind", "Source": "/srv/shop/conf", "Destination": "/conf", "RW": False},
    {"Type": "volume", "Name": "a" * 64, "Source": "/x", "Destination": "/scratch", "RW": True},
    {"Type": "bind", "Source": "/srv/shop/db_pw.txt", "Destination": "/run/secrets/db_pw"},
    {"Type": "tmpfs", "Source": "", "Destination": "/run/cache", "RW": True},
]
GOOD_NETWORKS = ["shop_back", "shop_front", "corp_shared"]


# --- the compose model ------------------------------------------------------------
def test_compose_model_resolves_engine_names() -> None:
    web = PROJECT.services["web"]
    assert PROJECT.name == "shop" and PROJECT.files == ("/srv/shop/docker-compose.yml",)
    assert [(m.type, m.source, m.target, m.read_only) for m in web.mounts] == [
        ("volume", "shop_data", "/data", False),
        ("bind", "/srv/shop/conf", "/conf", True),
        ("volume", None, "/scratch", False),  # anonymous; the tmpfs is not compared
    ]
    assert web.networks == ("corp_shared", "shop_back", "shop_front")  # external by its name
    assert web.tolerated_targets == ("/run/secrets/db_pw",)
    assert PROJECT.services["job"].networks == ("shop_default",)
    metrics = PROJECT.services["metrics"]
    assert metrics.networks is None and metrics.network_mode == "host"
    assert PROJECT.services["off"].replicas == 0


def test_a_model_without_a_name_is_refused() -> None:
    with pytest.raises(ValueError, match="no project name"):
        compose_project({"services": {}})


# --- one container ---------------------------------------------------------------------
def test_a_container_as_the_compose_file_says_is_ok() -> None:
    entry = container_entry(inspect("shop-web-1", restarts=2, health="healthy"), PROJECT)
    assert {k: entry[k] for k in ("name", "service", "project", "status", "health")} == {
        "name": "shop-web-1",
        "service": "web",
        "project": "shop",
        "status": "running",
        "health": "healthy",
    }
    assert (entry["exit_code"], entry["restart_count"], entry["health_source"]) == (0, 2, "engine")
    assert entry["compose_checked"] is True
    assert entry["mount_problems"] == [] and entry["network_problems"] == []
    assert entry["state_problems"] == [] and entry["compose_problems"] == []
    assert entry["verdict"] == "ok"
    by_target = {m["target"]: m for m in entry["mounts"]}
    assert by_target["/data"] == {
        "type": "volume",
        "source": "shop_data",
        "target": "/data",
        "read_only": False,
        "anonymous": False,
        "expected": True,
    }
    assert by_target["/conf"]["read_only"] is True and by_target["/scratch"]["anonymous"]
    assert [(n["name"], n["expected"]) for n in entry["networks"]] == [
        ("corp_shared", True),
        ("shop_back", True),
        ("shop_front", True),
    ]
    assert entry["finished_at"] is None and entry["started_at"] == "2026-11-23T10:00:00Z"


def test_mount_and_network_mismatches_are_reported() -> None:
    mounts = [
        # /data: a bind where the compose file has the named volume
        {"Type": "bind", "Source": "/tmp/data", "Destination": "/data", "RW": True},
        # /conf: another host path, and writable
        {"Type": "bind", "Source": "/etc/shop", "Destination": "/conf", "RW": True},
        # not in the compose file at all
        {"Type": "volume", "Name": "stray", "Source": "/v", "Destination": "/stray", "RW": True},
    ]
    entry = container_entry(
        inspect("shop-web-1", mounts=mounts, networks=["shop_back", "bridge"]), PROJECT
    )
    assert entry["mount_problems"] == [
        "/data: a bind mount, the compose file says volume",
        "/conf: mounts /etc/shop, the compose file says /srv/shop/conf",
        "/conf: read-write, the compose file says read-only",
        "missing anonymous volume mount at /scratch",
        "unexpected volume mount stray at /stray (not in the compose file)",
    ]
    assert entry["network_problems"] == [
        "not on network corp_shared (the compose file says so)",
        "not on network shop_front (the compose file says so)",
        "on network bridge, which the compose file does not give it",
    ]
    assert [(n["name"], n["expected"]) for n in entry["networks"]] == [
        ("bridge", False),
        ("shop_back", True),
    ]
    assert {m["target"]: m["expected"] for m in entry["mounts"]}["/stray"] is False
    assert entry["verdict"] == "degraded"


def test_a_missing_volume_is_reported() -> None:
    entry = container_entry(inspect("shop-web-2", mounts=GOOD_MOUNTS[1:]), PROJECT)
    assert entry["mount_problems"] == ["missing volume shop_data mount at /data"]


@pytest.mark.parametrize(
    ("status", "exit_code", "health", "policy", "verdict", "problem"),
    [
        ("exited", 3, "", "on-failure", "failed", "exited with code 3"),
        ("running", 0, "unhealthy", "always", "failed", "unhealthy"),
        ("running", 0, "starting", "always", "degraded", "its health check has not passed yet"),
        ("exited", 0, "", "no", "ok", None),  # a one-shot job that finished
        ("exited", 0, "", "always", "degraded", "stopped (exit 0)"),
        ("created", 0, "", "no", "degraded", "created but never started"),
        ("restarting", 1, "", "always", "degraded", "restarting"),
        ("dead", 137, "", "always", "failed", "dead"),
    ],
)
def test_state_verdicts(
    status: str, exit_code: int, health: str, policy: str, verdict: str, problem: str | None
) -> None:
    entry = container_entry(
        inspect("c", status=status, exit_code=exit_code, health=health, policy=policy), PROJECT
    )
    assert entry["verdict"] == verdict
    assert entry["exit_code"] == exit_code and entry["status"] == status
    if problem is None:
        assert entry["state_problems"] == []
    else:
        assert any(problem in p for p in entry["state_problems"]), entry["state_problems"]


def test_a_probed_health_stands_in_for_an_engine_without_a_timer() -> None:
    entry = container_entry(inspect("c", health="starting"), PROJECT, probed_health="unhealthy")
    assert (entry["health"], entry["health_source"], entry["verdict"]) == (
        "unhealthy",
        "exec",
        "failed",
    )
    # The engine's own verdict wins when it has one.
    entry = container_entry(inspect("c", health="healthy"), PROJECT, probed_health="unhealthy")
    assert (entry["health"], entry["health_source"]) == ("healthy", "engine")


def test_without_a_compose_model_nothing_is_compared() -> None:
    entry = container_entry(inspect("c", mounts=[], networks=["whatever"]), None)
    assert entry["compose_checked"] is False
    assert entry["mount_problems"] == [] and entry["network_problems"] == []
    assert "expected" not in entry["networks"][0]
    assert entry["verdict"] == "ok"


def test_a_service_missing_from_the_compose_file_is_reported() -> None:
    entry = container_entry(inspect("shop-ghost-1", service="ghost"), PROJECT)
    assert entry["compose_problems"] == ["service 'ghost' is not in the compose file"]
    assert entry["compose_checked"] is False and entry["verdict"] == "degraded"


def test_network_mode_is_not_compared_and_stopped_containers_may_lose_endpoints() -> None:
    entry = container_entry(inspect("m", service="metrics", mounts=[], networks=[]), PROJECT)
    assert entry["network_mode"] == "host" and entry["network_problems"] == []
    job = container_entry(
        inspect("j", service="job", status="exited", mounts=[], networks=[], policy="no"), PROJECT
    )
    assert job["network_problems"] == [] and job["verdict"] == "ok"


def test_compose_entry_lists_services_without_a_container() -> None:
    containers = [container_entry(inspect("shop-web-1"), PROJECT)]
    entry = compose_entry("/srv/shop/docker-compose.yml", PROJECT, None, containers)
    # "off" has 0 replicas: not missing.
    assert entry["missing_services"] == ["job", "metrics"]
    assert entry["verdict"] == "degraded"
    assert entry["problems"][0] == "project shop: service job has no container"
    broken = compose_entry("/nope.yml", None, "not found")
    assert broken["error"] == "not found" and broken["problems"] == [
        "compose file /nope.yml: not found"
    ]


# --- streams, disks --------------------------------------------------------------------
def test_stream_entry_counts_lag_per_consumer() -> None:
    entry = stream_entry(
        {
            "config": {"name": "agog_features_qa", "subjects": ["agog.deliverables.billy.>"]},
            "state": {"messages": 12, "bytes": 3400, "first_seq": 1, "last_seq": 12},
        },
        [
            {"name": "b", "num_pending": 3, "num_ack_pending": 2, "num_redelivered": 1},
            {"name": "a", "num_pending": 0, "num_ack_pending": 0, "config": {}},
        ],
    )
    assert (entry["stream"], entry["messages"], entry["bytes"]) == ("agog_features_qa", 12, 3400)
    assert entry["consumers"] == [
        {
            "name": "a",
            "filter_subject": None,
            "pending": 0,
            "ack_pending": 0,
            "redelivered": 0,
            "lag": 0,
        },
        {
            "name": "b",
            "filter_subject": None,
            "pending": 3,
            "ack_pending": 2,
            "redelivered": 1,
            "lag": 5,
        },
    ]
    assert entry["lag"] == 5 and entry["verdict"] == "ok"


def test_a_stream_near_its_limit_is_flagged() -> None:
    entry = stream_entry(
        {"config": {"name": "s", "max_msgs": 100, "max_bytes": -1}, "state": {"messages": 95}}, []
    )
    assert entry["verdict"] == "degraded" and "95% of its max_msgs" in entry["problems"][0]


def test_registry_streams_and_consumers_missing_on_the_server() -> None:
    present = [
        {"stream": s.name, "consumers": [{"name": "agogd_deliverables"}]} for s in PIPELINE.streams
    ][1:]
    problems = registry_problems(PIPELINE, present)
    assert f"stream {PIPELINE.streams[0].name} is missing" in problems
    assert "consumer agogd_infra_reports on agog_orchestration_events is missing" in problems
    assert not any("agogd_deliverables" in p for p in problems)


def test_disk_thresholds() -> None:
    gib = 1 << 30
    assert disk_entry("/d", 100 * gib, 50 * gib, 50 * gib, 123)["verdict"] == "ok"
    high = disk_entry("/d", 100 * gib, int(DISK_DEGRADED) * gib, 8 * gib)
    assert (high["percent"], high["verdict"]) == (90.0, "degraded")
    full = disk_entry("/d", 100, 97, 3)
    assert full["verdict"] == "failed" and full["problems"] == ["/d: its filesystem is 97.0% full"]
    missing = disk_error("/gone", "no such directory")
    assert missing["exists"] is False and missing["verdict"] == "degraded"


# --- the whole report -------------------------------------------------------------------
def _report() -> dict[str, Any]:
    containers = [
        container_entry(inspect("shop-web-1"), PROJECT),
        container_entry(
            inspect("shop-job-1", service="job", status="exited", exit_code=2), PROJECT
        ),
    ]
    return summarize(
        {
            "feature": "nats-fix",
            "reason": "request",
            "generated_at": "2026-11-23T10:00:00+00:00",
            "projects": ["shop"],
            "engine": {"url": "unix:///s", "reachable": True, "verdict": "ok", "problems": []},
            "compose": [compose_entry("/c.yml", PROJECT, None, containers)],
            "containers": containers,
            "nats": {"reachable": True, "verdict": "ok", "problems": []},
            "streams": [stream_entry({"config": {"name": "agog_x"}, "state": {"messages": 1}}, [])],
            "postgres": {"reachable": True, "version": "16.4", "verdict": "ok", "problems": []},
            "disks": [disk_entry("/d", 100, 10, 90, 5)],
        }
    )


def test_summarize_takes_the_worst_verdict_and_every_problem() -> None:
    report = _report()
    assert report["verdict"] == "failed"
    assert "container shop-job-1: exited with code 2" in report["problems"]
    assert "project shop: service metrics has no container" in report["problems"]
    assert report["summary"].startswith("Infrastructure failed: 2 containers (1 ok)")
    assert worst([]) == "ok" and worst(["ok", "degraded"]) == "degraded"


@pytest.mark.parametrize(
    ("given", "feature", "req"),
    [
        ("nats-fix", "nats-fix", "REQ-INFRA-nats-fix"),
        ("REQ-SHOP-7", "REQ-SHOP-7", "REQ-SHOP-7"),  # a deploy's report keeps its REQ
        ("a.b >c*", "a_b__c_", "REQ-INFRA-a_b__c_"),
        ("", "infra", "REQ-INFRA-infra"),
        ("...", "infra", "REQ-INFRA-infra"),
        ("x" * 100, "x" * 64, ("REQ-INFRA-" + "x" * 64)[:64]),
    ],
)
def test_features_become_one_safe_token(given: str, feature: str, req: str) -> None:
    assert sanitize_feature(given) == feature
    assert report_req_number(sanitize_feature(given)) == req


def test_the_deliverable_is_a_notice_the_engine_accepts() -> None:
    reporter = reporter_of(PIPELINE)
    subject = PIPELINE.deliverable_subject(reporter, "nats-fix")
    assert subject == "agog.deliverables.miki.devops.nats-fix"
    payload = deliverable(reporter, "nats-fix", subject, _report())
    agent, _role, token = parse_deliverable_subject(subject)  # type: ignore[misc]
    notice = parse_notice(
        encode_within(payload, 1 << 20),
        known_agents=PIPELINE.agents,
        subject_agent=agent,
        subject_req=token,
    )
    assert (notice.agent, notice.req_number, notice.status) == (
        "miki",
        "REQ-INFRA-nats-fix",
        "COMPLETE",
    )
    assert notice.containers_affected == ["shop-job-1"]
    assert notice.model_extra["report"]["verdict"] == "failed"  # type: ignore[index]
    assert notice.summary.startswith("Infrastructure failed")


def test_a_report_too_big_for_a_message_is_slimmed() -> None:
    report = _report()
    report["containers"] = report["containers"] * 200
    payload = deliverable(reporter_of(PIPELINE), "big", "agog.deliverables.miki.devops.big", report)
    full = len(json.dumps(payload).encode())
    slim = json.loads(encode_within(payload, full - 1))
    assert "mounts, networks" in slim["report"]["truncated"]
    assert slim["report"]["containers"][0]["mounts"] == len(GOOD_MOUNTS)
    tiny = json.loads(encode_within(payload, 4096))
    assert (
        tiny["report"]["verdict"] == "failed" and "only the verdict" in tiny["report"]["truncated"]
    )


# --- requests ---------------------------------------------------------------------------
def test_a_request_takes_its_feature_from_the_subject() -> None:
    subject = PIPELINE.subject("infra_report_request", feature="nats-fix")
    assert subject == "agog.orchestration.events.infra_report.requested.nats-fix"
    assert parse_request(subject, b"", TEMPLATE).feature == "nats-fix"
    request = parse_request(
        subject,
        json.dumps(
            {"feature": "nats-fix", "reason": "after deploy", "requested_by": "ops"}
        ).encode(),
        TEMPLATE,
    )
    assert (request.reason, request.requested_by) == ("after_deploy", "ops")


@pytest.mark.parametrize(
    ("subject", "data", "code"),
    [
        ("agog.orchestration.events.infra_report.requested.x", b"{not json", "invalid_json"),
        ("agog.orchestration.events.infra_report.requested.x", b"[1, 2]", "wrong_schema"),
        ("agog.orchestration.events.infra_report.requested.x", b'{"feature": "y"}', "wrong_schema"),
        ("agog.orchestration.events.infra_report.requested.x", b'{"reason": 5}', "wrong_schema"),
        ("agog.orchestration.events.infra_report.requested.a.b", b"", "wrong_subject"),
        ("agog.orchestration.events.infra_report.requested.x", b" " * 2048, "too_large"),
    ],
)
def test_malformed_requests_are_refused(subject: str, data: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_request(subject, data, TEMPLATE, max_bytes=1024)
    assert err.value.reason == code


def test_the_request_subject_is_bound_once_and_has_its_consumer() -> None:
    subject = PIPELINE.subject("infra_report_request", feature="infra")
    assert subject in PIPELINE.sample_subjects()
    assert PIPELINE.streams_binding(subject) == ["agog_orchestration_events"]
    consumer = next(c for c in PIPELINE.consumers if c.name == "agogd_infra_reports")
    assert registry.subject_matches(consumer.filter_subject or "", subject)
    # The health watch's infra.<event>.<target> events are not requests.
    assert not registry.subject_matches(
        consumer.filter_subject or "", "agog.orchestration.events.infra.restarted.web"
    )


def test_render_text_shows_every_part() -> None:
    text = render_text(
        {"subject": "agog.deliverables.miki.devops.x", "published": True, **{"report": _report()}}
    )
    for needle in (
        "verdict=FAILED",
        "published on agog.deliverables.miki.devops.x",
        "shop-web-1",
        "exited with code 2",
        "agog_x",
        "postgres  reachable  version 16.4",
        "/d",
        "problems (",
    ):
        assert needle in text, needle


def test_settings_take_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.runtime.settings import load_settings

    monkeypatch.setenv("AGOG_INFRA_COMPOSE_FILES", "docker-compose.agents.yml, app.yml")
    monkeypatch.setenv("AGOG_INFRA_DATA_DIRS", "/data/pg,/data/nats")
    monkeypatch.setenv("AGOG_INFRA_REPORT_TIMEOUT", "12")
    settings = load_settings()
    assert settings.infra_compose_files == ["docker-compose.agents.yml", "app.yml"]
    assert settings.infra_data_dirs == ["/data/pg", "/data/nats"]
    assert settings.infra_report_timeout == 12
