"""Miki's report, the pure part: the compose model (as the real Compose
binary resolves it) and each container and project checked against it."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.adapters.engine_api import PROJECT_LABEL, SERVICE_LABEL
from workers.infra.entries import Verdict, worst

ONEOFF_LABEL = "com.docker.compose.oneoff"
CHECKED_MOUNT_TYPES = ("volume", "bind")  # tmpfs, npipe, image... are not compared
_ANONYMOUS = re.compile(r"^[0-9a-f]{64}$")  # a volume compose did not name
_ZERO_TIME = "0001-01-01T00:00:00Z"  # the engine's "never"


# --- the compose model ---------------------------------------------------------
@dataclass(frozen=True)
class ExpectedMount:
    """A volume or bind mount the compose file declares for a service."""

    type: str
    target: str
    source: str | None  # engine volume name, host path, or None (anonymous / not compared)
    read_only: bool = False


@dataclass(frozen=True)
class ExpectedService:
    """What a service's containers should look like, as compose resolved it."""

    name: str
    mounts: tuple[ExpectedMount, ...] = ()
    networks: tuple[str, ...] | None = ()  # engine network names; None: network_mode
    network_mode: str | None = None
    tolerated_targets: tuple[str, ...] = ()  # secrets and configs: allowed, not required
    replicas: int = 1


@dataclass(frozen=True)
class ComposeProject:
    """One compose project (one file) resolved by ``docker-compose config``."""

    name: str
    services: Mapping[str, ExpectedService] = field(default_factory=dict)
    files: tuple[str, ...] = ()


def _names(section: Any, project: str) -> dict[str, str]:
    """Top-level volumes/networks: compose key -> engine name."""
    out: dict[str, str] = {}
    for key, spec in (section or {}).items():
        spec = spec or {}
        out[key] = str(spec.get("name") or f"{project}_{key}")
    return out


def compose_project(model: Mapping[str, Any], files: Sequence[str] = ()) -> ComposeProject:
    """The expectations of one ``docker-compose config --format json`` output."""
    project = str(model.get("name") or "")
    if not project:
        raise ValueError("the compose model has no project name")
    volumes = _names(model.get("volumes"), project)
    networks = _names(model.get("networks"), project)
    services: dict[str, ExpectedService] = {}
    for name, svc in (model.get("services") or {}).items():
        svc = svc or {}
        mounts = []
        for vol in svc.get("volumes") or []:
            if not isinstance(vol, Mapping) or vol.get("type", "volume") not in CHECKED_MOUNT_TYPES:
                continue
            kind, source = vol.get("type", "volume"), vol.get("source")
            if kind == "volume" and source:
                source = volumes.get(source, source)
            mounts.append(
                ExpectedMount(kind, str(vol["target"]), source, bool(vol.get("read_only")))
            )
        tolerated = []
        for key, default_dir in (("secrets", "/run/secrets/"), ("configs", "/")):
            for ref in svc.get(key) or []:
                ref = {"source": ref} if isinstance(ref, str) else ref
                target = str(ref.get("target") or ref.get("source") or "")
                tolerated.append(target if target.startswith("/") else default_dir + target)
        mode = svc.get("network_mode")
        if mode:
            nets: tuple[str, ...] | None = None
        else:
            keys = list(svc.get("networks") or {}) or ["default"]
            nets = tuple(sorted(networks.get(k, f"{project}_{k}") for k in keys))
        replicas = svc.get("scale", (svc.get("deploy") or {}).get("replicas", 1))
        services[name] = ExpectedService(
            name=name,
            mounts=tuple(mounts),
            networks=nets,
            network_mode=mode,
            tolerated_targets=tuple(tolerated),
            replicas=int(replicas if replicas is not None else 1),
        )
    return ComposeProject(project, services, tuple(files))


# --- one container -------------------------------------------------------------
def _time(value: Any) -> str | None:
    return value if isinstance(value, str) and value and value != _ZERO_TIME else None


def _state_problems(
    status: str, health: str | None, exit_code: Any, policy: str, oom: bool, error: str | None
) -> list[tuple[Verdict, str]]:
    out: list[tuple[Verdict, str]] = []
    if status == "running":
        if health == "unhealthy":
            out.append(("failed", "unhealthy"))
        elif health == "starting":
            out.append(("degraded", "its health check has not passed yet"))
    elif status == "exited":
        if exit_code not in (0, None):
            out.append(("failed", f"exited with code {exit_code}"))
        elif policy in ("always", "unless-stopped"):
            out.append(("degraded", f"stopped (exit 0) although its restart policy is {policy}"))
    elif status == "dead":
        out.append(("failed", "dead"))
    elif status == "created":
        out.append(("degraded", "created but never started"))
    else:  # restarting, paused, removing, anything new
        out.append(("degraded", status))
    if oom and status != "running":
        out.append(("failed", "killed by the OOM killer"))
    if error:
        out.append(("failed", f"engine error: {error}"))
    return out


def _mount_view(mount: Mapping[str, Any]) -> dict[str, Any]:
    kind = mount.get("Type") or ""
    name = mount.get("Name") or ""
    return {
        "type": kind,
        "source": name if kind == "volume" and name else mount.get("Source"),
        "target": mount.get("Destination"),
        "read_only": not mount.get("RW", True),
        "anonymous": bool(kind == "volume" and _ANONYMOUS.match(name)),
    }


def check_mounts(
    actual: Sequence[Mapping[str, Any]], expected: ExpectedService | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The container's mounts, each marked as expected or not, and what differs."""
    mounts = [_mount_view(m) for m in actual or []]
    if expected is None:
        return mounts, []
    problems: list[str] = []
    by_target = {m["target"]: m for m in mounts}
    declared = {e.target for e in expected.mounts}
    for want in expected.mounts:
        have = by_target.get(want.target)
        what = f"{want.type} {want.source}" if want.source else f"anonymous {want.type}"
        if have is None:
            problems.append(f"missing {what} mount at {want.target}")
            continue
        if have["type"] != want.type:
            problems.append(
                f"{want.target}: a {have['type']} mount, the compose file says {want.type}"
            )
        elif want.source is not None and _norm(have["source"], want.type) != _norm(
            want.source, want.type
        ):
            problems.append(
                f"{want.target}: mounts {have['source']}, the compose file says {want.source}"
            )
        if have["read_only"] != want.read_only:
            problems.append(
                f"{want.target}: {'read-only' if have['read_only'] else 'read-write'},"
                f" the compose file says {'read-only' if want.read_only else 'read-write'}"
            )
    for mount in mounts:
        known = mount["target"] in declared or mount["target"] in expected.tolerated_targets
        mount["expected"] = known
        if known or mount["anonymous"] or mount["type"] not in CHECKED_MOUNT_TYPES:
            continue
        problems.append(
            f"unexpected {mount['type']} mount {mount['source']} at {mount['target']}"
            " (not in the compose file)"
        )
    return mounts, problems


def _norm(source: Any, kind: str) -> str:
    text = str(source or "")
    return os.path.normpath(text) if kind == "bind" and text else text


def check_networks(
    actual: Mapping[str, Any] | None, expected: ExpectedService | None, running: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    """The container's networks, each marked as expected or not, and what differs."""
    networks = [
        {"name": name, "ip": (spec or {}).get("IPAddress") or None}
        for name, spec in sorted((actual or {}).items())
    ]
    if expected is None or expected.networks is None:
        return networks, []
    if not networks and not running:
        return networks, []  # some engines drop a stopped container's endpoints
    want = set(expected.networks)
    have = {n["name"] for n in networks}
    problems = [f"not on network {n} (the compose file says so)" for n in sorted(want - have)]
    problems += [
        f"on network {n}, which the compose file does not give it" for n in sorted(have - want)
    ]
    for net in networks:
        net["expected"] = net["name"] in want
    return networks, problems


def container_entry(
    info: Mapping[str, Any],
    project: ComposeProject | None = None,
    *,
    probed_health: str | None = None,
) -> dict[str, Any]:
    """One container's part of the report, from its inspect output.

    ``project`` is its compose project's model (None: not compared);
    ``probed_health`` the result of running its health check through exec,
    for engines that do not run the check themselves (podman without systemd).
    """
    config = info.get("Config") or {}
    labels = config.get("Labels") or {}
    state = info.get("State") or {}
    host = info.get("HostConfig") or {}
    status = str(state.get("Status") or "unknown")
    health = (state.get("Health") or {}).get("Status") or None
    health_source = "engine" if health else None
    if probed_health is not None and health in (None, "starting"):
        health, health_source = probed_health, "exec"
    policy = (host.get("RestartPolicy") or {}).get("Name") or "no"
    service_name = labels.get(SERVICE_LABEL)
    expected = project.services.get(service_name or "") if project else None
    compose_problems: list[str] = []
    if project is not None and expected is None:
        compose_problems.append(
            f"service {service_name!r} is not in the compose file"
            if service_name
            else "no compose service label"
        )
    mounts, mount_problems = check_mounts(info.get("Mounts") or [], expected)
    networks, network_problems = check_networks(
        (info.get("NetworkSettings") or {}).get("Networks"), expected, status == "running"
    )
    state_problems = _state_problems(
        status,
        health,
        state.get("ExitCode"),
        policy,
        bool(state.get("OOMKilled")),
        state.get("Error") or None,
    )
    drift = mount_problems + network_problems + compose_problems
    verdict = worst([v for v, _ in state_problems] + ["degraded" for _ in drift])
    return {
        "name": str(info.get("Name") or "").lstrip("/"),
        "id": str(info.get("Id") or "")[:12],
        "image": config.get("Image"),
        "project": labels.get(PROJECT_LABEL),
        "service": service_name,
        "oneoff": labels.get(ONEOFF_LABEL) == "True",
        "status": status,
        "health": health,
        "health_source": health_source,
        "exit_code": state.get("ExitCode"),
        "restart_count": int(info.get("RestartCount") or 0),
        "restart_policy": policy,
        "started_at": _time(state.get("StartedAt")),
        "finished_at": _time(state.get("FinishedAt")),
        "compose_checked": expected is not None,
        "network_mode": expected.network_mode if expected else None,
        "mounts": mounts,
        "networks": networks,
        "state_problems": [text for _, text in state_problems],
        "mount_problems": mount_problems,
        "network_problems": network_problems,
        "compose_problems": compose_problems,
        "verdict": verdict,
    }


def compose_entry(
    file: str,
    project: ComposeProject | None,
    error: str | None,
    containers: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """One compose file: the project it declares, and its services without a container."""
    if project is None:
        return {
            "file": file,
            "project": None,
            "services": [],
            "missing_services": [],
            "error": error,
            "verdict": "degraded",
            "problems": [f"compose file {file}: {error}"],
        }
    present = {
        c.get("service")
        for c in containers
        if c.get("project") == project.name and not c.get("oneoff")
    }
    missing = sorted(
        name for name, svc in project.services.items() if svc.replicas > 0 and name not in present
    )
    return {
        "file": file,
        "project": project.name,
        "services": sorted(project.services),
        "missing_services": missing,
        "error": None,
        "verdict": "degraded" if missing else "ok",
        "problems": [f"project {project.name}: service {m} has no container" for m in missing],
    }
