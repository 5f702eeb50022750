"""The shipped alert rules, checked and evaluated by Prometheus's own promtool
(Debian's `prometheus` package; scripts/prometheus installs it): the file
loads, and its unit tests in docs/prometheus/tests/ pass, cover every alert
with a case that fires it and one that does not, and really evaluate them
(rules whose expressions are swapped for ones that never, or always, fire
make exactly those cases fail)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "docs" / "prometheus" / "agogd-alerts.yml"
UNIT_TESTS = ROOT / "docs" / "prometheus" / "tests" / "agogd-alerts.test.yml"
NEVER = "vector(1) < 0"
ALWAYS = "vector(1)"
# How promtool reports a failed alert_rule_test (on stderr): the alert, the eval time and
# what was expected ("exp:[]" for a case that should not fire).
FAILURE = re.compile(r"alertname: (\S+), time: (\S+), \n\s+exp:\[(\]?)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def prometheus_tool(name: str) -> str:
    """promtool or prometheus from PATH; a test that needs it fails saying how to get it."""
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run scripts/prometheus (Debian's prometheus)")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prometheus_tool("promtool"), *args], capture_output=True, text=True, timeout=120
    )


def seconds(duration: str) -> float:
    """A Prometheus duration ("2h40m", "75m") in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * _UNITS[u] for n, u in parts)


def alert_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def cases() -> Iterator[tuple[str, float, bool]]:
    """(alert, eval time in seconds, fires) for every alert_rule_test in the unit tests."""
    for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            yield case["alertname"], seconds(case["eval_time"]), bool(case["exp_alerts"])


def test_promtool_checks_the_shipped_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout, result.stdout


def test_the_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """A new alert without unit tests fails here, naming it; so does a test of
    an alert that no longer exists."""
    alerts = set(alert_rules())
    spec = yaml.safe_load(UNIT_TESTS.read_text())
    assert spec["rule_files"] == ["../agogd-alerts.yml"]
    found = list(cases())
    firing = {a for a, _, fires in found if fires}
    quiet = {a for a, _, fires in found if not fires}
    assert not alerts - firing, f"no unit test fires {sorted(alerts - firing)}"
    assert not alerts - quiet, f"no unit test keeps {sorted(alerts - quiet)} quiet"
    assert not {a for a, _, _ in found} - alerts, "unit tests of alerts that do not exist"


@pytest.mark.parametrize(("expr", "broken"), [(NEVER, True), (ALWAYS, False)])
def test_the_unit_tests_fail_when_the_rules_are_wrong(
    tmp_path: Path, expr: str, broken: bool
) -> None:
    """Every expression swapped for one that never fires: each firing case
    fails. For one that always fires: each quiet case fails (so none passes
    vacuously, say by a misspelt alert name or an eval time before the data)."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = expr
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    spec = yaml.safe_load(UNIT_TESTS.read_text())
    spec["rule_files"] = ["rules.yml"]
    (tmp_path / "unit.yml").write_text(yaml.safe_dump(spec))
    result = run_promtool("test", "rules", str(tmp_path / "unit.yml"))
    assert result.returncode == 1, result.stdout + result.stderr
    failed = {(a, seconds(t), not quiet) for a, t, quiet in FAILURE.findall(result.stderr)}
    expected = {c for c in cases() if c[2] == broken}
    assert expected and expected <= failed, sorted(expected - failed)


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_runbook_urls_point_at_runbook_sections() -> None:
    runbook = ROOT / "docs" / "runbook.md"
    anchors = {
        _slug(line.lstrip("#")) for line in runbook.read_text().splitlines() if line[:3] == "## "
    }
    urls = {a: r["annotations"].get("runbook_url") for a, r in alert_rules().items()}
    assert urls["AgogdDown"] == "docs/runbook.md#agogddown"
    for alert, url in urls.items():
        if url is not None:
            path, _, anchor = url.partition("#")
            assert path == "docs/runbook.md" and anchor in anchors, f"{alert}: {url}"
