"""``agogd``: run the daemon (default), or ``agogd dev`` on embedded servers."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError

from orchestrator.core.registry import RegistryError
from orchestrator.runtime import event_loop, logs, nats_auth
from orchestrator.runtime.settings import ENV_PREFIX, Settings, describe_error, load_settings

EXIT_BAD_CONFIG = 2


def fail_config(message: str) -> NoReturn:
    click.echo(f"agogd: {message}", err=True)
    sys.exit(EXIT_BAD_CONFIG)


def settings_or_exit(**overrides: Any) -> Settings:
    """Settings and pipeline, or one clear line on stderr and exit code 2."""
    try:
        settings = load_settings(**overrides)
        settings.load_pipeline()
    except ValidationError as exc:
        fail_config(describe_error(exc))
    except SettingsError as exc:
        match = re.search(r'field "(\w+)"', str(exc))
        name = ENV_PREFIX + match.group(1).upper() if match else "a setting"
        fail_config(f"invalid settings: {name}: not valid JSON")
    except RegistryError as exc:
        fail_config(f"invalid pipeline: {exc}")
    from workers.runner.commands import CommandError, check_runner

    try:
        check_runner(settings, settings.load_pipeline())
    except CommandError as exc:
        fail_config(str(exc))
    return settings


def run_daemon(settings: Settings, *, engine: bool = True, any_http_port: bool = False) -> int:
    from orchestrator.runtime.http_server import HttpBindError
    from orchestrator.wiring import make_daemon

    logs.configure(settings.log_level, settings.log_format, once=True)
    try:
        daemon = make_daemon(settings, engine=engine, any_http_port=any_http_port)
        # Everything imported and built so far lives as long as the process:
        # out of the collector's reach, a full collection walks only what the
        # work allocates (without this, one took about 50 ms, a stall that
        # showed as the paced stage advance's p99).
        gc.freeze()
        return event_loop.run(daemon.run(), settings.event_loop)
    except HttpBindError as exc:  # e.g. the port is taken: one line, not a traceback
        fail_config(str(exc))


@click.group(invoke_without_command=True)
@click.version_option(package_name="agogd")
@click.pass_context
def main(ctx: click.Context) -> None:
    """agogd, the AgogSaaS orchestration daemon.

    With no command it runs the daemon against the configured NATS and Postgres
    (AGOG_* environment variables or .env; see .env.example).
    """
    if ctx.invoked_subcommand is None:
        sys.exit(run_daemon(settings_or_exit()))


@main.command()
def run() -> None:
    """Run the daemon against the configured NATS and Postgres."""
    sys.exit(run_daemon(settings_or_exit()))


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the embedded servers keep their data (default ./.agogd, or AGOG_DATA_DIR).",
)
@click.option(
    "--demo",
    is_flag=True,
    help="Built-in DEMO agents answer every stage, so a REQ flows with no real agent.",
)
def dev(data_dir: Path | None, demo: bool) -> None:
    """Run agogd on its own embedded nats-server and PostgreSQL (no Docker needed).

    Without --demo it spawns no agent and waits for agents that publish their
    notices to NATS (or for AGOG_RUNNER_AGENTS).
    """
    from orchestrator.dev import run_dev
    from orchestrator.embeddings import local

    overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir else {}
    if demo:
        overrides["demo"] = True
    settings = settings_or_exit(**overrides)
    if "embedding_provider" not in settings.model_fields_set and local.available():
        # No external service in dev: the offline model, when installed, embeds
        # the memories (the daemon's default, Ollama, is not running here).
        settings = settings.model_copy(update={"embedding_provider": "local"})
    from orchestrator.runtime.http_server import HttpBindError

    try:
        sys.exit(run_dev(settings))
    except HttpBindError as exc:  # run_dev has stopped its servers by now
        fail_config(str(exc))


@main.command()
@click.option("--agents", default=None, help="Comma-separated agents to run (default: all).")
@click.option("--demo", is_flag=True, help="Use the built-in DEMO agents.")
def runner(agents: str | None, demo: bool) -> None:
    """Run only the agent runner, on the host that has the agent CLIs.

    It takes stage assignments from NATS, spawns each agent with the prompt on
    stdin and publishes its notice; the workflow engine runs elsewhere. Its
    HTTP port (health and metrics) is AGOG_HTTP_PORT; when that is not set and
    the default is taken (e.g. by `agogd dev` on the same host), it listens on
    a free port and logs which (http.port_in_use).
    """
    overrides: dict[str, Any] = {"runner_agents": agents or "all"}
    if demo:
        overrides["demo"] = True
    settings = _same_host_dev(settings_or_exit(**overrides))
    chosen = "http_port" in settings.model_fields_set  # AGOG_HTTP_PORT, or in .env
    sys.exit(run_daemon(settings, engine=False, any_http_port=not chosen))


@main.group()
def memory() -> None:
    """The deliverable memory: embeddings and recall."""


@memory.command("reembed")
@click.option("--yes", is_flag=True, help="Do it without asking.")
def memory_reembed(yes: bool) -> None:
    """Re-embed every memory with the configured provider.

    Stop agogd first. It clears the stored embeddings, marks every memory
    pending, re-types the vector column to the provider's dimension and
    records the provider; agogd then embeds the memories again in the
    background (recall is full text until they are done). Needed after a
    change of embedding model or dimension: agogd refuses to start otherwise.
    """
    from orchestrator.embeddings.base import EmbeddingUnavailable
    from orchestrator.memory import admin
    from orchestrator.memory.service import make_provider

    settings = settings_or_exit()
    try:
        provider = make_provider(settings)
    except Exception as exc:  # e.g. the local model is not installed
        fail_config(f"embedding provider: {exc}")
    if provider is None:
        fail_config("AGOG_EMBEDDING_PROVIDER is none: there is nothing to embed with")
    if not yes:
        click.confirm(
            f"Clear every stored embedding and re-embed with {provider.name}?", abort=True
        )
    logs.configure(settings.log_level, settings.log_format)
    try:
        done = asyncio.run(admin.reembed(settings, provider))
    except EmbeddingUnavailable as exc:
        click.echo(f"agogd: cannot learn the provider's dimension: {exc.reason}", err=True)
        sys.exit(1)
    finally:
        asyncio.run(provider.close())
    click.echo(
        f"{done.pending} memories are pending; the vector column is now vector({done.dimension})"
        f" for {done.provider}. Start agogd: it embeds them in the background."
    )


def _same_host_dev(settings: Settings) -> Settings:
    """Beside `agogd dev` on this machine, with nothing else configured: use
    its servers, agogd's NATS credentials and its Postgres password file, from
    its data dir (readable by its owner only), as agogctl uses its API token:
    no set-up on the same machine. What was configured is kept."""
    from orchestrator.dev import nats_credentials_file

    data_dir = settings.data_dir.resolve()
    update: dict[str, Any] = {}
    try:
        endpoints = json.loads((data_dir / "endpoints.json").read_text())
    except (OSError, ValueError):
        endpoints = {}
    if "nats_url" not in settings.model_fields_set and endpoints.get("nats_url"):
        update["nats_url"] = [endpoints["nats_url"]]
    if "postgres_dsn" not in settings.model_fields_set and endpoints.get("postgres_dsn"):
        update["postgres_dsn"] = SecretStr(endpoints["postgres_dsn"])
    given = settings.nats_user or settings.nats_token or settings.nats_creds_file
    try:
        password = json.loads(nats_credentials_file(data_dir).read_text())[nats_auth.AGOGD]
    except (OSError, ValueError, KeyError):
        password = None
    if not given and password:
        update.update(nats_user=nats_auth.AGOGD, nats_password=SecretStr(password))
    return settings.model_copy(update=update) if update else settings


@main.command("nats-creds")
@click.argument("name")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The `agogd dev` data dir whose credentials to read (default ./.agogd, AGOG_DATA_DIR).",
)
@click.option("--url", default=None, help="The NATS URL to write (default: agogd dev's).")
def nats_creds(name: str, data_dir: Path | None, url: str | None) -> None:
    """Print the NATS credentials of one identity (an agent such as cynthia,
    strategic or operator), with what it may publish and subscribe to.

    Secret: redirect it to a file only its user can read, e.g.
    `agogd nats-creds roy > roy.env && chmod 600 roy.env`.
    """
    from orchestrator.dev import nats_credentials_file

    settings = settings_or_exit(**({"data_dir": data_dir} if data_dir else {}))
    found = {ident.name: ident for ident in nats_auth.identities(settings.load_pipeline())}
    if name not in found:
        fail_config(f"no NATS identity {name!r}; known: {', '.join(found)}")
    path = nats_credentials_file(settings.data_dir.resolve())
    try:
        passwords = json.loads(path.read_text())
    except (OSError, ValueError):
        fail_config(f"no credentials in {path}: run `agogd dev` (with that --data-dir) first")
    if name not in passwords:
        fail_config(f"{path} has no password for {name}: restart `agogd dev` to make one")
    if url is None:
        try:
            url = json.loads((path.parent / "endpoints.json").read_text())["nats_url"]
        except (OSError, ValueError, KeyError):
            url = settings.nats_url[0]
    click.echo(nats_auth.creds_text(found[name], passwords[name], url), nl=False)


@main.command("nats-auth-config")
@click.option(
    "--credentials",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="JSON file of identity -> password; made (0600) when missing, completed when short.",
)
@click.option(
    "--agogd-password-env",
    default="NATS_AGOGD_PASSWORD",
    show_default=True,
    help="agogd's password is read by nats-server from this environment variable.",
)
def nats_auth_config(credentials: Path, agogd_password_env: str) -> None:
    """Print the nats-server authorization block for this pipeline (the compose
    stack's NATS includes it): every identity, its password and allow lists."""
    if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", agogd_password_env):
        fail_config("--agogd-password-env must be an environment variable name")
    settings = settings_or_exit()
    found = nats_auth.identities(settings.load_pipeline())
    passwords = nats_auth.load_or_create(credentials, [i.name for i in found])
    passwords[nats_auth.AGOGD] = f"${agogd_password_env}"
    click.echo(nats_auth.authorization_block(found, passwords), nl=False)


@main.command("check-config")
def check_config() -> None:
    """Validate settings and the pipeline file, then exit."""
    settings = settings_or_exit()
    pipeline = settings.load_pipeline()
    click.echo(
        f"ok: {len(pipeline.stages)} stages, {len(pipeline.streams)} streams, "
        f"nats={settings.public_nats_urls()} postgres={settings.public_dsn()}"
    )


if __name__ == "__main__":
    main()
