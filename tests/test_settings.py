"""Settings: AGOG_* variables, secrets kept secret, one-line errors with exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.core import registry
from orchestrator.runtime.settings import Settings, describe_error, redact_url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("AGOG_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_and_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGOG_NATS_URL", "nats://a:4222, nats://b:4222")
    monkeypatch.setenv("AGOG_STAGE_TIMEOUTS", '{"roy": 7200}')
    monkeypatch.setenv("AGOG_LOG_FORMAT", "CONSOLE")
    s = Settings()
    assert s.nats_url == ["nats://a:4222", "nats://b:4222"]
    assert s.stage_timeouts == {"roy": 7200}
    assert s.log_format == "console"
    assert s.load_pipeline().stage_for_agent("roy").timeout == 7200


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("AGOG_HTTP_PORT=9999\nAGOG_OLLAMA_URL=http://ollama:11434\n")
    s = Settings()
    assert s.http_port == 9999 and s.ollama_url == "http://ollama:11434"


def test_the_example_env_file_is_a_valid_configuration(tmp_path: Path) -> None:
    """`cp .env.example .env` gives settings agogd accepts, as documented."""
    example = Path(__file__).resolve().parent.parent / ".env.example"
    (tmp_path / ".env").write_text(example.read_text())
    s = Settings()
    assert s.nats_url == ["nats://127.0.0.1:4223"] and s.max_in_flight == 20
    assert s.load_pipeline().stages  # the stage timeouts and pipeline resolve too


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGOG_NATS_USER", "agogd")
    monkeypatch.setenv("AGOG_NATS_PASSWORD", "hunter2-nats")
    monkeypatch.setenv("AGOG_POSTGRES_DSN", "postgresql://agent_user@db:5432/agent_memory")
    monkeypatch.setenv("AGOG_POSTGRES_PASSWORD", "hunter2-pg")
    s = Settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert s.dsn() == "postgresql://agent_user:hunter2-pg@db:5432/agent_memory"
    assert "hunter2" not in s.public_dsn()


def test_redact_url() -> None:
    assert redact_url("postgresql://u:secret@h:1/db") == "postgresql://u@h:1/db"
    assert redact_url("nats://sometoken@h:4222") == "nats://***@h:4222"
    assert redact_url("nats://h:4222") == "nats://h:4222"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"AGOG_HTTP_PORT": "eighty"}, ["AGOG_HTTP_PORT"]),
        ({"AGOG_HTTP_PORT": "70000"}, ["AGOG_HTTP_PORT"]),
        ({"AGOG_NATS_URL": "http://nats:4222"}, ["AGOG_NATS_URL"]),
        ({"AGOG_POSTGRES_DSN": "mysql://x"}, ["AGOG_POSTGRES_DSN"]),
        (
            {"AGOG_LOG_LEVEL": "chatty", "AGOG_SHUTDOWN_GRACE": "-1"},
            ["AGOG_LOG_LEVEL", "AGOG_SHUTDOWN_GRACE"],
        ),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: list[str]
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError) as info:
        Settings()
    line = describe_error(info.value)
    assert "\n" not in line
    for name in names:
        assert name in line


def _agogd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AGOG_HTTP_PORT": "eighty"}, "AGOG_HTTP_PORT"),
        ({"AGOG_STAGE_TIMEOUTS": "{not json"}, "AGOG_STAGE_TIMEOUTS"),
        ({"AGOG_STAGE_TIMEOUTS": '{"bob": 5}'}, "unknown agent"),
        ({"AGOG_NATS_PASSWORD": "pw-only"}, "AGOG_NATS_USER"),
        ({"AGOG_PIPELINE_FILE": "/nonexistent/pipeline.toml"}, "cannot read pipeline file"),
        # A setting keyed by an agent the registry does not know is refused,
        # not ignored in silence.
        ({"AGOG_RUNNER_COMMANDS": '{"bob": "bob-cli"}'}, "AGOG_RUNNER_COMMANDS: unknown agents"),
        ({"AGOG_RUNNER_MODELS": '{"Roy": "m"}'}, "AGOG_RUNNER_MODELS: unknown agents ['Roy']"),
        ({"AGOG_DEMO_REJECT": "nobody"}, "AGOG_DEMO_REJECT: unknown agents"),
        # A configured agent CLI that is not there stops the start in one line.
        (
            {
                "AGOG_RUNNER_AGENTS": "roy",
                "AGOG_RUNNER_CLI_PATHS": '{"claude": "/nonexistent/claude"}',
            },
            "the claude CLI ('/nonexistent/claude') is not installed",
        ),
        (
            {"AGOG_RUNNER_AGENTS": "roy", "AGOG_RUNNER_CLI_PATHS": '{"claude": "/bin/false"}'},
            "/bin/false --version failed",
        ),
    ],
)
def test_cli_bad_settings_exit_2_with_one_line(env: dict[str, str], expected: str) -> None:
    result = _agogd(env)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert "pw-only" not in result.stderr + result.stdout


def test_check_config_ok() -> None:
    result = _agogd({}, "check-config")
    assert result.returncode == 0, result.stderr
    assert "7 stages" in result.stdout


def test_a_configured_cli_is_version_checked_at_start() -> None:
    """The real claude CLI passes its profile's version check; one made to look
    older is refused, naming the versions."""
    from tests.agents import agent_cli
    from workers.runner.commands import CommandError, check_versions
    from workers.runner.profiles import claude

    settings = Settings(runner_agents=["roy"], runner_cli_paths={"claude": agent_cli("claude")})
    stages = [registry.load().stage(2)]
    assert check_versions(settings, stages)["claude"] >= "2.1.332"
    newer = (*claude.PROFILE.min_version[:-1], claude.PROFILE.min_version[-1] + 1000)
    old, claude.ClaudeProfile.min_version = claude.ClaudeProfile.min_version, newer
    try:
        with pytest.raises(CommandError, match="agogd's profile needs"):
            check_versions(settings, stages)
    finally:
        claude.ClaudeProfile.min_version = old


def test_entry_points_answer_help() -> None:
    bindir = Path(sys.executable).parent
    for tool in ("agogd", "agogctl"):
        result = subprocess.run(
            [str(bindir / tool), "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout


def test_every_setting_is_documented_and_every_documented_one_exists() -> None:
    """.env.example and the README's table name every AGOG_* setting, and only those
    (AGOG_URL is agogctl's own, AGOG_COMPOSE_BINARY the Compose adapter's), so
    neither drifts from the code."""
    repo = Path(__file__).resolve().parent.parent
    fields = {f"AGOG_{name}".upper() for name in Settings.model_fields}
    readme_own = {"AGOG_URL", "AGOG_WORKTREE", "AGOG_COMPOSE_BINARY"}
    for doc, own in ((".env.example", set()), ("README.md", readme_own)):
        named = set(re.findall(r"\bAGOG_[A-Z0-9_]*[A-Z0-9]\b", (repo / doc).read_text()))
        assert fields - named == set(), f"{doc} does not document {sorted(fields - named)}"
        assert named - fields - own == set(), f"{doc} names unknown {sorted(named - fields)}"
