"""The Helm chart (deploy/helm/agogd): linted and rendered by the real Helm v4
SDK (helm-python-sdk, no helm binary), every manifest validated strictly
against the Kubernetes schemas of pinned versions (kubernetes-validate) and
the Prometheus Operator's models, then the project's own checks: pinned
images, probes and resources, non-root read-only pods, selectors that select,
no secret in any manifest, the alert rules of docs/prometheus, a kubelet
grace longer than agogd's drain. Each check is shown to catch its fault; bad
values are refused with a message that names the value and never echoes a
secret. Last, agogd itself runs on the environment the chart gives its pod,
against a real three-node NATS cluster (R3 streams) and a real Postgres.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import os
import re
import secrets
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import helm_python as helm
import kubernetes_validate
import nats
import pytest
import yaml
from pydantic import SecretStr

from orchestrator.core import registry
from orchestrator.embedded import PostgresServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from orchestrator.embedded.nats_cluster import NatsCluster
from orchestrator.runtime.settings import Settings
from tests.agents import AGENT_CLIS

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "deploy" / "helm" / "agogd"
ALERTS = REPO / "docs" / "prometheus" / "agogd-alerts.yml"
CHART_ALERTS = CHART / "files" / "agogd-alerts.yml"
RELEASE = NAMESPACE = "agogd"
# The chart's kubeVersion floor and a current release.
KUBE_VERSIONS = ("1.25.0", "1.33.0")
LINT_KUBE_VERSION = "v1.33.0"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")

# The values files the chart is rendered with: its defaults and those in ci/.
CASES: dict[str, dict[str, Any]] = {"defaults": {}} | {
    path.name.removesuffix("-values.yaml"): yaml.safe_load(path.read_text())
    for path in sorted((CHART / "ci").glob("*-values.yaml"))
}


def secret_settings() -> set[str]:
    """agogd's secret settings: its SecretStr fields, as variables."""
    return {
        "AGOG_" + name.upper()
        for name, field in Settings.model_fields.items()
        if SecretStr in getattr(field.annotation, "__args__", (field.annotation,))
    }


def sentinel() -> str:
    return f"SENTINEL-{secrets.token_hex(8)}"


# --- rendering ------------------------------------------------------------------
def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart's manifests for these values, as `helm template` makes them."""
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if not path.endswith("NOTES.txt"):
            docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


@functools.cache
def rendered(case: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(CASES[case]))


def fresh(case: str) -> list[dict[str, Any]]:
    """A copy of a case's manifests that a test may change."""
    return copy.deepcopy(list(rendered(case)))


def name_of(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def only(docs: list[dict[str, Any]], kind: str, name: str = RELEASE) -> dict[str, Any]:
    [doc] = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in workloads(docs):
        spec = workload["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield workload, container


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions) against labels."""
    if not selector:
        return False  # an empty selector selects everything: never wanted here
    wanted = selector.get("matchLabels", {})
    if any(labels.get(k) != v for k, v in wanted.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        present = key in labels
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and present and labels[key] in values)
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


# --- schemas --------------------------------------------------------------------
@functools.cache
def monitoring_models() -> dict[str, Any]:
    """The Prometheus Operator's CRDs as models (imported once: it is large)."""
    from cloudcoil.models.prometheus_operator import v1

    return {"ServiceMonitor": v1.ServiceMonitor, "PrometheusRule": v1.PrometheusRule}


def differences(given: Any, kept: Any, path: str = "") -> list[str]:
    """Where ``kept`` (a model's dump) lost or changed what ``given`` had."""
    if isinstance(given, dict) and isinstance(kept, dict):
        out = []
        for key, value in given.items():
            where = f"{path}.{key}" if path else key
            if key not in kept:
                out.append(f"{where}: unknown field")
            else:
                out += differences(value, kept[key], where)
        return out
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        return [
            p
            for i, (g, k) in enumerate(zip(given, kept, strict=True))
            for p in differences(g, k, f"{path}[{i}]")
        ]
    return [] if given == kept else [f"{path}: {given!r} became {kept!r}"]


def schema_problems(doc: dict[str, Any], version: str) -> list[str]:
    """Strict validation: Kubernetes' own kinds against its JSON schemas of
    ``version``; the operator's kinds against its models, where an unknown or
    retyped field is whatever the model's dump lost or changed."""
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        import pydantic

        model = monitoring_models().get(doc["kind"])
        if model is None:
            return [f"{name_of(doc)}: no model for this kind"]
        try:
            parsed = model.model_validate(doc)
        except pydantic.ValidationError as exc:
            return [f"{name_of(doc)}: {exc}"]
        dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
        return [f"{name_of(doc)}: {p}" for p in differences(doc, dumped)]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [f"{name_of(doc)} (Kubernetes {exc.version}): {where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{name_of(doc)}: {exc.message}"]
    return []


# --- the project's checks ---------------------------------------------------------
def check_images(docs: list[dict[str, Any]]) -> list[str]:
    """Every image names its version: a tag, never `latest`."""
    problems = []
    for workload, c in containers(docs):
        ref = c.get("image", "").split("@")[0]
        last = ref.rsplit("/", 1)[-1]
        tag = last.rsplit(":", 1)[1] if ":" in last else ""
        if tag in ("", "latest"):
            problems.append(f"{name_of(workload)} {c['name']}: image {ref!r} is not pinned")
        if c.get("imagePullPolicy") not in ("IfNotPresent", "Always", "Never"):
            problems.append(f"{name_of(workload)} {c['name']}: no imagePullPolicy")
    return problems


def check_probes_and_resources(docs: list[dict[str, Any]]) -> list[str]:
    """Liveness on /healthz, readiness on /readyz, on a declared port; CPU and
    memory requested and limited."""
    problems = []
    for workload, c in containers(docs):
        where = f"{name_of(workload)} {c['name']}"
        ports = {p.get("name") for p in c.get("ports", [])} | {
            p["containerPort"] for p in c.get("ports", [])
        }
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet", {})
            if get.get("path") != path or get.get("port") not in ports:
                problems.append(f"{where}: {probe} is not GET {path} on a container port")
        for kind in ("requests", "limits"):
            got = c.get("resources", {}).get(kind, {})
            for what in ("cpu", "memory"):
                if not got.get(what):
                    problems.append(f"{where}: no {what} in resources.{kind}")
    return problems


def check_security(docs: list[dict[str, Any]]) -> list[str]:
    """Non-root, read-only root, no privilege escalation, no capability, no
    service account token; writable /tmp and home from emptyDirs."""
    problems = []
    for workload in workloads(docs):
        spec = workload["spec"]["template"]["spec"]
        pod = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name_of(workload)}: the service account token is mounted")
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name_of(workload)} {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if not sc.get("runAsUser", pod.get("runAsUser", 0)) > 0:
                problems.append(f"{where}: runs as uid 0")
            if sc.get("allowPrivilegeEscalation") is not False or sc.get("privileged"):
                problems.append(f"{where}: may escalate privileges")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: the root filesystem is writable")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities are not all dropped")
            if sc.get("capabilities", {}).get("add"):
                problems.append(f"{where}: adds capabilities")
            mounted = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if "/tmp" not in mounted:
                problems.append(f"{where}: no writable /tmp on a read-only root")
    return problems


def check_selectors(docs: list[dict[str, Any]]) -> list[str]:
    """Each workload selects its own pods and no other's; PDBs and Services
    select pods, Services' target ports are ports of those pods; the
    ServiceMonitor selects Services that have its port."""
    problems = []
    pods = {name_of(w): w for w in workloads(docs)}
    for name, w in pods.items():
        selector = w["spec"]["selector"]
        if not matches(selector, pod_labels(w)):
            problems.append(f"{name}: its selector does not match its pod template's labels")
        for other, o in pods.items():
            if other != name and matches(selector, pod_labels(o)):
                problems.append(f"{name}: its selector also matches {other}'s pods")
        anti = w["spec"]["template"]["spec"].get("affinity", {}).get("podAntiAffinity", {})
        terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
            t["podAffinityTerm"]
            for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
        ]
        for term in terms:
            if not matches(term["labelSelector"], pod_labels(w)):
                problems.append(f"{name}: its anti-affinity does not select its own pods")
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        if not any(matches(pdb["spec"]["selector"], pod_labels(w)) for w in pods.values()):
            problems.append(f"{name_of(pdb)}: selects no pods")
    for svc in of_kind(docs, "Service"):
        chosen = [
            w
            for w in pods.values()
            if matches({"matchLabels": svc["spec"]["selector"]}, pod_labels(w))
        ]
        if not chosen:
            problems.append(f"{name_of(svc)}: selects no pods")
        for port in svc["spec"]["ports"]:
            for w in chosen:
                declared = {
                    key
                    for c in w["spec"]["template"]["spec"]["containers"]
                    for p in c.get("ports", [])
                    for key in (p.get("name"), p["containerPort"])
                }
                if port.get("targetPort", port["port"]) not in declared:
                    problems.append(
                        f"{name_of(svc)}: port {port['name']} targets no port of {name_of(w)}"
                    )
    for sm in of_kind(docs, "ServiceMonitor"):
        selected = [
            s
            for s in of_kind(docs, "Service")
            if matches(sm["spec"]["selector"], s["metadata"]["labels"])
        ]
        if not selected:
            problems.append(f"{name_of(sm)}: selects no Service")
        for endpoint in sm["spec"]["endpoints"]:
            for s in selected:
                if endpoint["port"] not in {p["name"] for p in s["spec"]["ports"]}:
                    problems.append(f"{name_of(sm)}: {name_of(s)} has no port {endpoint['port']}")
    return problems


def check_secrets(docs: list[dict[str, Any]]) -> list[str]:
    """The chart makes no Secret, and no secret setting is written in a
    manifest: none as an env `value`, none in a ConfigMap (the DSN only
    without its password)."""
    problems = [f"{name_of(d)}: the chart renders a Secret" for d in of_kind(docs, "Secret")]
    secret_names = secret_settings()
    for workload, c in containers(docs):
        for env in c.get("env", []):
            if env["name"] in secret_names and "value" in env:
                problems.append(f"{name_of(workload)} {c['name']}: {env['name']} is written in")
    for cm in of_kind(docs, "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            if key not in secret_names:
                continue
            parts = urlsplit(value)
            if key != "AGOG_POSTGRES_DSN" or parts.password or "password=" in value.lower():
                problems.append(f"{name_of(cm)}: holds the secret setting {key}")
    return problems


def check_rules(docs: list[dict[str, Any]]) -> list[str]:
    """Every PrometheusRule carries the rules of docs/prometheus/agogd-alerts.yml."""
    want = yaml.safe_load(ALERTS.read_text())["groups"]
    return [
        f"{name_of(rule)}: its groups differ from {ALERTS.relative_to(REPO)}"
        for rule in of_kind(docs, "PrometheusRule")
        if rule["spec"]["groups"] != want
    ]


# After its grace agogd drains NATS (at most 5 s) and closes its pool (5 s).
CLOSE_SECONDS = 10


def check_drain(docs: list[dict[str, Any]]) -> list[str]:
    """The kubelet waits for agogd's whole drain (AGOG_SHUTDOWN_GRACE, then
    closing NATS and Postgres) before its SIGKILL: a drain that keeps to its
    grace is never cut."""
    problems = []
    default = Settings.model_fields["shutdown_grace"].default
    for workload, c in containers(docs):
        env = container_env(docs, c, lambda _name, key: {} if key is None else "x")
        grace = float(env.get("AGOG_SHUTDOWN_GRACE", default))
        kubelet = workload["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        if kubelet < grace + CLOSE_SECONDS:
            problems.append(
                f"{name_of(workload)}: terminationGracePeriodSeconds {kubelet} is less than"
                f" AGOG_SHUTDOWN_GRACE {grace} + {CLOSE_SECONDS}"
            )
    return problems


CHECKS: tuple[Callable[[list[dict[str, Any]]], list[str]], ...] = (
    check_images,
    check_probes_and_resources,
    check_security,
    check_selectors,
    check_secrets,
    check_rules,
    check_drain,
)


def container_env(
    docs: list[dict[str, Any]], container: dict[str, Any], secret: Callable[[str, str], str]
) -> dict[str, str]:
    """A container's environment as the kubelet makes it: envFrom in order,
    then env; ``secret(name, key)`` gives a Secret's key (None for a whole
    Secret: its data as a dict)."""
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in of_kind(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        else:
            env.update(secret(source["secretRef"]["name"], None))  # type: ignore[arg-type]
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret(ref["name"], ref["key"])
    return env


# --- the chart as it ships --------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_strict_finds_nothing(case: str) -> None:
    report = helm.lint(CHART, CASES[case], strict=True, kube_version=LINT_KUBE_VERSION)
    assert report["total_charts_linted"] == 1
    found = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not found, found


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_manifest_validates_strictly(case: str, version: str) -> None:
    docs = fresh(case)
    assert docs
    problems = [p for doc in docs for p in schema_problems(doc, version)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_projects_checks_pass(case: str) -> None:
    docs = fresh(case)
    problems = [p for check in CHECKS for p in check(docs)]
    assert not problems, "\n".join(problems)


def test_each_values_file_renders_what_it_asks_for() -> None:
    kinds = {case: sorted(d["kind"] for d in rendered(case)) for case in CASES}
    assert kinds["defaults"] == sorted(
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    )
    assert {"PrometheusRule", "ServiceMonitor"} <= set(kinds["runner-monitoring"])
    for case in CASES:
        docs = list(rendered(case))
        engine = only(docs, "Deployment")
        values = CASES[case]
        assert engine["spec"]["replicas"] == values.get("replicaCount", 2)
        anti = engine["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        hard = values.get("podAntiAffinity") == "hard"
        assert ("requiredDuringSchedulingIgnoredDuringExecution" in anti) == hard
        runner = [d for d in of_kind(docs, "Deployment") if d is not engine]
        assert len(runner) == int(values.get("runner", {}).get("enabled", False))
        pdb = only(docs, "PodDisruptionBudget")["spec"]
        wanted = values.get("podDisruptionBudget", {})
        assert pdb.get("minAvailable") == wanted.get("minAvailable")
        config = only(docs, "ConfigMap")["data"]
        nats_values = values.get("nats", {})
        if "urls" in nats_values:
            assert config["AGOG_NATS_URL"] == ",".join(nats_values["urls"])
        assert config["AGOG_STREAM_REPLICAS"] == "3"  # R3 on the user's NATS cluster
    # The runner runs the agents asked for, from its own image.
    docs = list(rendered("runner-monitoring"))
    runner = only(docs, "Deployment", f"{RELEASE}-runner")["spec"]["template"]["spec"]
    [c] = runner["containers"]
    asked = CASES["runner-monitoring"]["runner"]
    assert c["command"] == ["agogd", "runner"]
    assert c["args"] == ["--agents", ",".join(asked["agents"])]
    assert c["image"] == f"{asked['image']['repository']}:{asked['image']['tag']}"


def test_the_packaged_chart_renders_the_same(tmp_path: Path) -> None:
    """`helm package` keeps what the chart needs (the rules' copy) and leaves
    out the test values (.helmignore); the archive renders as the directory."""
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load(archive) as chart:
        names = {f["name"] for f in chart.files}
        assert "files/agogd-alerts.yml" in names
        assert not any(n.startswith("ci/") for n in names)
        out = chart.render(CASES["runner-monitoring"], name=RELEASE, namespace=NAMESPACE)
    docs = [
        d
        for p, t in sorted(out.items())
        if not p.endswith("NOTES.txt")
        for d in yaml.safe_load_all(t)
        if d
    ]
    assert docs == list(rendered("runner-monitoring"))


def test_the_image_tag_defaults_to_the_charts_app_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version
    image = only(fresh("defaults"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert image["image"].endswith(f":{version}")


def test_the_chart_carries_the_alert_rules_of_docs_unchanged() -> None:
    assert CHART_ALERTS.read_bytes() == ALERTS.read_bytes(), (
        f"{CHART_ALERTS.relative_to(REPO)} drifted from {ALERTS.relative_to(REPO)}:"
        f" cp {ALERTS.relative_to(REPO)} {CHART_ALERTS.relative_to(REPO)}"
    )
    [rule] = of_kind(fresh("runner-monitoring"), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_the_service_monitors_job_is_the_one_the_down_alert_watches() -> None:
    """AgogdDown is `up{job="agogd"}`: the ServiceMonitor's job (the Services'
    jobLabel) must be that job, or the alert watches nothing."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    jobs = {
        m.group(1)
        for g in groups
        for r in g["rules"]
        for m in [re.search(r'\bup\{job="([^"]+)"\}', r["expr"])]
        if m
    }
    assert jobs, "no alert on Prometheus's up metric"
    docs = fresh("runner-monitoring")
    [sm] = of_kind(docs, "ServiceMonitor")
    for svc in of_kind(docs, "Service"):
        assert {svc["metadata"]["labels"][sm["spec"]["jobLabel"]]} == jobs


def test_the_charts_secret_settings_are_agogds_secret_fields() -> None:
    """The chart's list of secret settings (refused in values) is exactly
    agogd's SecretStr fields: a new secret setting cannot slip into a ConfigMap."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    listed = re.search(r'define "agogd\.secretSettings" -\}\}\n(.*)\n', helpers)
    assert listed is not None
    assert set(listed.group(1).split()) == secret_settings()
    assert {"AGOG_NATS_PASSWORD", "AGOG_POSTGRES_PASSWORD", "AGOG_API_TOKEN"} <= secret_settings()


# --- each check catches its fault -------------------------------------------------
def _engine(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "Deployment")


def _engine_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _engine(docs)["spec"]["template"]["spec"]["containers"][0]


def _runner_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "Deployment", f"{RELEASE}-runner")["spec"]["template"]["spec"]["containers"][
        0
    ]


FAULTS: dict[str, tuple[Callable[..., list[str]], Callable[[list[dict[str, Any]]], Any], str]] = {
    "latest tag": (
        check_images,
        lambda d: _engine_container(d).update(image="ghcr.io/agogsaas/agogd:latest"),
        "is not pinned",
    ),
    "no tag": (
        check_images,
        lambda d: _runner_container(d).update(image="ghcr.io/agogsaas/agogd"),
        "is not pinned",
    ),
    "no resources": (
        check_probes_and_resources,
        lambda d: _runner_container(d).pop("resources"),
        "no cpu in resources.requests",
    ),
    "no memory limit": (
        check_probes_and_resources,
        lambda d: _engine_container(d)["resources"]["limits"].pop("memory"),
        "no memory in resources.limits",
    ),
    "no readiness probe": (
        check_probes_and_resources,
        lambda d: _engine_container(d).pop("readinessProbe"),
        "readinessProbe is not GET /readyz",
    ),
    "liveness on the wrong port": (
        check_probes_and_resources,
        lambda d: _runner_container(d)["livenessProbe"]["httpGet"].update(port="metrics"),
        "livenessProbe is not GET /healthz",
    ),
    "root": (
        check_security,
        lambda d: _engine_container(d)["securityContext"].update(runAsNonRoot=False, runAsUser=0),
        "runAsNonRoot is not true",
    ),
    "writable root": (
        check_security,
        lambda d: _runner_container(d)["securityContext"].pop("readOnlyRootFilesystem"),
        "the root filesystem is writable",
    ),
    "privilege escalation": (
        check_security,
        lambda d: _engine_container(d)["securityContext"].update(allowPrivilegeEscalation=True),
        "may escalate privileges",
    ),
    "capabilities kept": (
        check_security,
        lambda d: _engine_container(d)["securityContext"]["capabilities"].update(drop=[]),
        "capabilities are not all dropped",
    ),
    "token mounted": (
        check_security,
        lambda d: _engine(d)["spec"]["template"]["spec"].pop("automountServiceAccountToken"),
        "the service account token is mounted",
    ),
    "selector off its pods": (
        check_selectors,
        lambda d: _engine(d)["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/component": "api"}
        ),
        "does not match its pod template's labels",
    ),
    "selector over another's pods": (
        check_selectors,
        lambda d: _engine(d)["spec"]["selector"]["matchLabels"].pop("app.kubernetes.io/component"),
        "also matches",
    ),
    "PDB selecting nothing": (
        check_selectors,
        lambda d: only(d, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/instance": "other"}
        ),
        "selects no pods",
    ),
    "Service on a port the pod lacks": (
        check_selectors,
        lambda d: only(d, "Service")["spec"]["ports"][1].update(targetPort="prom"),
        "targets no port",
    ),
    "ServiceMonitor on a port the Service lacks": (
        check_selectors,
        lambda d: only(d, "ServiceMonitor")["spec"]["endpoints"][0].update(port="web"),
        "has no port web",
    ),
    "secret written in": (
        check_secrets,
        lambda d: (
            _engine_container(d)
            .setdefault("env", [])
            .append({"name": "AGOG_API_TOKEN", "value": sentinel()})
        ),
        "AGOG_API_TOKEN is written in",
    ),
    "secret in the ConfigMap": (
        check_secrets,
        lambda d: only(d, "ConfigMap")["data"].update(AGOG_NATS_PASSWORD=sentinel()),
        "holds the secret setting AGOG_NATS_PASSWORD",
    ),
    "password in the DSN": (
        check_secrets,
        lambda d: only(d, "ConfigMap")["data"].update(
            AGOG_POSTGRES_DSN=f"postgresql://u:{sentinel()}@db/agent_memory"
        ),
        "holds the secret setting AGOG_POSTGRES_DSN",
    ),
    "a Secret": (
        check_secrets,
        lambda d: d.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "agogd"},
                "stringData": {"AGOG_API_TOKEN": sentinel()},
            }
        ),
        "renders a Secret",
    ),
    "rules drifted": (
        check_rules,
        lambda d: only(d, "PrometheusRule")["spec"]["groups"][0]["rules"][0].update({"for": "1h"}),
        "differ from docs/prometheus/agogd-alerts.yml",
    ),
    "kubelet grace shorter than the drain": (
        check_drain,
        lambda d: _engine(d)["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=25),
        "is less than AGOG_SHUTDOWN_GRACE 20.0 + 10",
    ),
    "an unknown field": (
        lambda d: [p for doc in d for p in schema_problems(doc, KUBE_VERSIONS[-1])],
        lambda d: _engine(d)["spec"].update(replica=3),
        "replica",
    ),
    "a field of the wrong type": (
        lambda d: [p for doc in d for p in schema_problems(doc, KUBE_VERSIONS[0])],
        lambda d: _engine_container(d)["ports"][0].update(containerPort="http"),
        "containerPort",
    ),
    "an unknown ServiceMonitor field": (
        lambda d: [p for doc in d for p in schema_problems(doc, KUBE_VERSIONS[-1])],
        lambda d: only(d, "ServiceMonitor")["spec"]["endpoints"][0].update(scrapeEvery="30s"),
        "endpoints[0].scrapeEvery: unknown field",
    ),
    "a PrometheusRule field of the wrong type": (
        lambda d: [p for doc in d for p in schema_problems(doc, KUBE_VERSIONS[-1])],
        lambda d: only(d, "PrometheusRule")["spec"]["groups"][0].update(rules="none"),
        "PrometheusRule",
    ),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_check_catches_its_fault(fault: str) -> None:
    check, spoil, expected = FAULTS[fault]
    docs = fresh("runner-monitoring")  # every kind the chart makes
    assert check(docs) == []
    spoil(docs)
    found = check(docs)
    assert any(expected in p for p in found), found


# --- bad values are refused, secrets never echoed ---------------------------------
def _broken_values() -> dict[str, tuple[dict[str, Any], str]]:
    """Values files that must be refused, and a piece of the message they get.
    SENTINEL marks a secret that the message must not echo."""
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "image tag latest": ({"image": {"tag": "latest"}}, 'image.tag "latest" is refused'),
        "runner image tag latest": (
            {"runner": {"enabled": True, "image": {"tag": "latest"}}},
            'runner.image.tag "latest" is refused',
        ),
        "no resources": ({"resources": None}, "missing property 'resources'"),
        "no memory limit": (
            {"runner": {"resources": {"limits": {"memory": None}}}},
            "/runner/resources/limits",
        ),
        "a typo": ({"replicaCout": 3}, "additional properties 'replicaCout' not allowed"),
        "root": ({"podSecurityContext": {"runAsUser": 0}}, "/podSecurityContext/runAsUser"),
        "a password in the DSN": (
            {"postgres": {"dsn": "postgresql://agent_user:SENTINEL@db:5432/agent_memory"}},
            "postgres.dsn carries a password",
        ),
        "a password in the DSN's query": (
            {"postgres": {"dsn": "postgresql://agent_user@db/agent_memory?password=SENTINEL"}},
            "postgres.dsn carries a password",
        ),
        "not a DSN": ({"postgres": {"dsn": "mysql://u:SENTINEL@db/x"}}, "not a postgresql://"),
        "credentials in a NATS URL": (
            {"nats": {"urls": ["nats://agogd:SENTINEL@nats:4222"]}},
            "a user, password or token in a NATS URL is refused",
        ),
        "a token in a NATS URL": (
            {"nats": {"urls": ["nats://SENTINEL@nats:4222"]}},
            "a user, password or token in a NATS URL is refused",
        ),
        "a setting the chart sets": (
            {"config": {"AGOG_HTTP_PORT": "9000"}},
            "config.AGOG_HTTP_PORT is set by the chart: use http.port",
        ),
        "not a setting": ({"config": {"PATH": "/x"}}, "config.PATH is not an agogd setting"),
        "a secret as a plain env value": (
            {"extraEnv": [{"name": "AGOG_FORGE_TOKEN", "value": "SENTINEL"}]},
            "extraEnv: AGOG_FORGE_TOKEN is a secret: use valueFrom.secretKeyRef",
        ),
        "a key ref for a setting that is no secret": (
            {"secrets": {"keyRefs": {"AGOG_LOG_LEVEL": {"name": "s", "key": "k"}}}},
            "secrets.keyRefs.AGOG_LOG_LEVEL is not one of agogd's secret settings",
        ),
        "a PDB of nothing": (
            {"podDisruptionBudget": {"maxUnavailable": None}},
            "podDisruptionBudget: maxUnavailable or minAvailable is required",
        ),
    }
    for name in sorted(secret_settings()):
        cases[f"{name} in config"] = (
            {"config": {name: "SENTINEL"}},
            f"config.{name} is a secret: put it in the Secret",
        )
        cases[f"{name} in runner.config"] = (
            {"runner": {"enabled": True, "config": {name: "SENTINEL"}}},
            f"runner.config.{name} is a secret",
        )
    return cases


BROKEN = _broken_values()


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_bad_values_are_refused_without_echoing_a_secret(case: str) -> None:
    values, expected = BROKEN[case]
    secret = sentinel()
    values = yaml.safe_load(yaml.safe_dump(values).replace("SENTINEL", secret))
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    message = str(caught.value)
    assert expected in message, message
    assert secret not in message
    if not isinstance(caught.value, helm.HelmValuesError):
        return  # the chart's own guard (`fail`): lint runs templates in lint mode, past it
    # A schema violation: `helm lint --strict` says the same, as an error.
    report = helm.lint(CHART, values, strict=True, kube_version=LINT_KUBE_VERSION)
    errors = [m["error"] for m in report["messages"] if m["severity"] == 3] + report["errors"]
    assert any(expected in e for e in errors), errors
    assert not any(secret in e for e in errors)


# --- agogd runs on what the chart gives its pod ----------------------------------
class FakeSecrets:
    """The Secrets the values files name, as an operator would create them,
    with random values: none of them may show in a manifest or a log line."""

    def __init__(self, postgres: PostgresServer, database_dsn: str) -> None:
        parts = urlsplit(database_dsn)
        bare = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self.password = postgres.password(parts.username or "")
        secret = quote(self.password, safe="")
        with_password = bare.replace(f"{parts.username}@", f"{parts.username}:{secret}@")
        self.values: list[str] = [self.password]  # every secret value, to look for
        self.data: dict[str, dict[str, str]] = {
            "agogd": {
                "AGOG_NATS_PASSWORD": self.make(),
                "AGOG_API_TOKEN": self.make(),
                "AGOG_POSTGRES_PASSWORD": self.password,
            },
            "agogd-nats": {"AGOG_NATS_PASSWORD": self.make()},
            "agogd-api": {"token": self.make()},
            "agogd-pg-app": {"uri": with_password, "password": self.password},
            "agogd-agent-keys": {"ANTHROPIC_API_KEY": self.make()},
        }
        self.bare_dsn = bare

    def make(self) -> str:
        value = sentinel()
        self.values.append(value)
        return value

    def __call__(self, name: str, key: str | None) -> Any:
        return self.data[name] if key is None else self.data[name][key]


@pytest.fixture
def fake_secrets(postgres_server: PostgresServer, pg_dsn: str) -> FakeSecrets:
    return FakeSecrets(postgres_server, pg_dsn)


def pod_env(
    docs: list[dict[str, Any]], container: dict[str, Any], fake: FakeSecrets
) -> dict[str, str]:
    """The container's environment, pointed at this machine's servers: the
    cluster's service names do not resolve here."""
    env = container_env(docs, container, fake)
    if not urlsplit(env["AGOG_POSTGRES_DSN"]).password:
        env["AGOG_POSTGRES_DSN"] = fake.bare_dsn
    else:
        env["AGOG_POSTGRES_DSN"] = fake.data["agogd-pg-app"]["uri"]
    return env


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_container_gets_settings_agogd_accepts(case: str, fake_secrets: FakeSecrets) -> None:
    """`agogd check-config` on each container's environment (the runner's
    with its --agents and its CLIs on PATH, as its image has them)."""
    docs = fresh(case)
    manifests = yaml.safe_dump_all(docs)
    assert not any(v in manifests for v in fake_secrets.values)
    for _workload, c in containers(docs):
        env = pod_env(docs, c, fake_secrets)
        args = c.get("args", [])
        if c.get("command") == ["agogd", "runner"]:
            env["AGOG_RUNNER_AGENTS"] = args[1] if args[:1] == ["--agents"] else "all"
        base = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
        base["PATH"] = f"{AGENT_CLIS}{os.pathsep}{base.get('PATH', '')}"
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", "check-config"],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO / "deploy",  # no stray .env
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("ok: "), result.stdout
        output = result.stdout + result.stderr
        assert not any(v in output for v in fake_secrets.values)


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats", size=3).start()
    yield cluster
    cluster.stop()


def _get(url: str, host: str, token: str) -> int:
    request = urllib.request.Request(
        url, headers={"Host": host, "Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_agogd_runs_on_the_pods_environment_with_r3_streams(
    nats_cluster: NatsCluster, fake_secrets: FakeSecrets, daemons: list[DaemonProcess]
) -> None:
    """The engine container's environment (ConfigMap, Secret) runs a real
    agogd against a three-node NATS cluster: ready with every stream at three
    replicas, answering its Service's names, never logging a secret, and
    drained on SIGTERM well within the pod's terminationGracePeriodSeconds."""
    docs = fresh("defaults")
    engine = _engine(docs)
    env = pod_env(docs, _engine_container(docs), fake_secrets)
    env["AGOG_NATS_URL"] = nats_cluster.url
    port = env.pop("AGOG_HTTP_PORT")  # a free port here; the pod's is its own
    assert port == str(
        engine["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    )
    daemon = DaemonProcess(env)
    daemons.append(daemon.start())
    await asyncio.to_thread(daemon.wait_ready, 180)

    assert env["AGOG_STREAM_REPLICAS"] == "3"
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        js = nc.jetstream()
        for spec in registry.load().streams:
            info = await js.stream_info(spec.name)
            assert info.config.num_replicas == 3, spec.name
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
    finally:
        await nc.close()

    # The Service's names get answers; any other Host is refused (421).
    token = fake_secrets.data["agogd"]["AGOG_API_TOKEN"]
    url = await asyncio.to_thread(lambda: daemon.http_url)
    service_port = only(docs, "Service")["spec"]["ports"][0]["port"]
    service_host = f"{RELEASE}.{NAMESPACE}.svc:{service_port}"
    assert await asyncio.to_thread(_get, f"{url}/api/reqs", service_host, token) == 200
    assert await asyncio.to_thread(_get, f"{url}/api/reqs", "evil.example", token) == 421

    grace = engine["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    daemon.signal()
    assert await asyncio.to_thread(daemon.wait_exit, grace) == 0
    logged = "\n".join(daemon.lines)
    assert not any(v in logged for v in fake_secrets.values)
