"""What ``agogctl backup`` needs before it starts: agogd's settings from the
environment (and ``.env``), read exactly as agogd reads them, completed from
``agogd dev``'s data dir; and its log lines on stderr, so that stdout is the
command's own output (``--json`` stays parseable)."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from pydantic import ValidationError
from pydantic_settings import SettingsError

from orchestrator.backup import embedded
from orchestrator.backup.create import Created, create_backup
from orchestrator.backup.errors import BackupError
from orchestrator.backup.schedule import record_manual
from orchestrator.backup.servers import Servers, beside_dev
from orchestrator.core.registry import RegistryError
from orchestrator.runtime.logs import redact_secrets
from orchestrator.runtime.settings import ENV_PREFIX, Settings, describe_error


class ConfigError(BackupError):
    """The settings are invalid, or name nothing to back up."""


@dataclass(frozen=True)
class Setup:
    settings: Settings
    servers: Servers
    data_dir: Path

    @property
    def backup_dir(self) -> Path:
        return self.settings.backup_directory()


def load(data_dir: Path | None) -> Setup:
    """The settings, the servers and the data dir (``--data-dir``, else
    AGOG_DATA_DIR, else ./.agogd) for one command."""
    try:
        settings = Settings()
        settings.load_pipeline()
    except ValidationError as exc:
        raise ConfigError(describe_error(exc)) from None
    except SettingsError as exc:
        match = re.search(r'field "(\w+)"', str(exc))
        name = ENV_PREFIX + match.group(1).upper() if match else "a setting"
        raise ConfigError(f"invalid settings: {name}: not valid JSON") from None
    except RegistryError as exc:
        raise ConfigError(f"invalid pipeline: {exc}") from None
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    settings = beside_dev(settings, settings.data_dir, prefer_dir=data_dir is not None)
    return Setup(settings, Servers.of(settings), settings.data_dir)


@contextlib.contextmanager
def servers_up(setup: Setup, announce: bool = True) -> Iterator[None]:
    """The servers, started for the command when they are agogd dev's and it
    is stopped (``orchestrator.backup.embedded``)."""
    with embedded.stopped_dev_servers(setup.data_dir, setup.settings.load_pipeline()) as started:
        if started and announce:
            print(
                f"agogctl: agogd dev in {setup.data_dir} is stopped: its servers run for this"
                " command only",
                file=sys.stderr,
            )
        yield


async def create_and_record(setup: Setup, to_dir: Path | None) -> Created:
    """``agogctl backup create``: the archive, and its row in backup_runs
    (when the schema has the table), failed or not."""
    started = datetime.now(UTC)
    dsn = setup.servers.dsn.get_secret_value()
    try:
        created = await create_backup(
            setup.servers,
            to_dir or setup.backup_dir,
            owner_requests_file=setup.settings.owner_requests_file,
        )
    except BackupError as exc:
        await record_manual(dsn, started, None, str(exc))
        raise
    await record_manual(dsn, started, created)
    return created


def log_to_stderr() -> None:
    """Warnings and errors only, on stderr, secrets masked."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr, force=True)
