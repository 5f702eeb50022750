"""Which Postgres and NATS a backup talks to, and with what credentials.

agogd's own settings (``AGOG_POSTGRES_DSN``/``AGOG_POSTGRES_PASSWORD``,
``AGOG_NATS_URL`` and its credentials), read exactly as agogd reads them;
beside ``agogd dev``, what is not configured comes from its data dir: the
``endpoints.json`` it writes (the servers, the Postgres password file) and
agogd's NATS password in its credentials file. No secret is ever put on a
command line: the DSN's password reaches pg_dump through its environment.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from pydantic import SecretStr

from orchestrator.backup.errors import Unreachable
from orchestrator.runtime import nats_auth
from orchestrator.runtime.nats_conn import connect_options
from orchestrator.runtime.settings import Settings, redact_url


@dataclass(frozen=True)
class Servers:
    """Where agogd's state lives: agent_memory and the NATS holding its streams."""

    dsn: SecretStr
    nats_options: dict[str, Any] = field(repr=False)
    pg_bin_dir: Path | None = None
    # A role that may CREATE DATABASE, for verify's scratch database.
    admin_dsn: SecretStr | None = None

    @classmethod
    def of(cls, settings: Settings) -> Servers:
        options = {
            **connect_options(settings),
            "name": "agogd-backup",
            # One try (nats-py retries an unreachable server forever otherwise).
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0,
        }
        admin = settings.backup_verify_dsn
        return cls(SecretStr(settings.dsn()), options, settings.pg_bin_dir, admin)

    @property
    def public_dsn(self) -> str:
        return redact_url(self.dsn.get_secret_value())

    @property
    def public_nats(self) -> str:
        return ",".join(redact_url(u) for u in self.nats_options.get("servers", []))

    @contextlib.asynccontextmanager
    async def nats(self) -> AsyncIterator[NATS]:
        """A NATS connection of its own, or ``Unreachable`` naming the server."""

        async def quiet(_exc: Exception) -> None:
            """nats-py logs each failed try with a traceback otherwise; ours is one line."""

        try:
            nc = await nats.connect(**self.nats_options, error_cb=quiet)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise Unreachable(
                f"cannot reach NATS at {self.public_nats}: {str(exc) or type(exc).__name__}"
            ) from None
        try:
            yield nc
        finally:
            await nc.close()


def beside_dev(settings: Settings, data_dir: Path, *, prefer_dir: bool = False) -> Settings:
    """Fill in from ``agogd dev``'s data dir what the settings do not name: its
    NATS URL and Postgres DSN (endpoints.json) and agogd's NATS password.
    ``prefer_dir`` (``--data-dir`` given): the data dir's servers win."""
    try:
        endpoints = json.loads((data_dir / "endpoints.json").read_text())
    except (OSError, ValueError):
        return settings
    if not isinstance(endpoints, dict):
        return settings
    update: dict[str, Any] = {}
    chosen = settings.model_fields_set
    if endpoints.get("nats_url") and (prefer_dir or "nats_url" not in chosen):
        update["nats_url"] = [str(endpoints["nats_url"])]
    if endpoints.get("postgres_dsn") and (prefer_dir or "postgres_dsn" not in chosen):
        update["postgres_dsn"] = SecretStr(str(endpoints["postgres_dsn"]))
        update["postgres_password"] = None
    creds = Path(str(endpoints.get("nats_credentials_file") or data_dir / "nats-credentials.json"))
    given = settings.nats_user or settings.nats_token or settings.nats_creds_file
    try:
        password = json.loads(creds.read_text())[nats_auth.AGOGD]
    except (OSError, ValueError, KeyError, TypeError):
        password = None
    if password and (prefer_dir or not given):
        update.update(nats_user=nats_auth.AGOGD, nats_password=SecretStr(password))
        update.update(nats_token=None, nats_creds_file=None)
    return settings.model_copy(update=update) if update else settings
