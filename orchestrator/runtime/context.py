"""What every service is handed: the runtime, built once the connections are up.

The daemon connects to Postgres and NATS first, then builds one ``Runtime``
and gives it to the composition root (``orchestrator.wiring``), which makes
each service with the parts it needs. Nothing in it is optional: a service
that holds a runtime holds live connections.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg
from nats.aio.client import Client as NATS

from orchestrator.core.registry import Pipeline
from orchestrator.runtime.settings import Settings
from orchestrator.runtime.state_log import StateLog

T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    """Settings, the registry, the state log, the stop event and the connections."""

    settings: Settings
    pipeline: Pipeline
    states: StateLog
    stopping: asyncio.Event
    pool: asyncpg.Pool
    nc: NATS


class NotBound(RuntimeError):
    """A late-bound part was asked for before the daemon bound it."""


class Late(Generic[T]):
    """A part the HTTP routes need but that exists only after start-up.

    agogd listens before it connects (so /healthz and /readyz answer while
    Postgres is still coming up), and aiohttp fixes its routes when it starts
    listening. Routes that need the connections are registered at once and
    read their part from here; until it is bound they answer 503.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._value: T | None = None

    def bind(self, value: T) -> None:
        self._value = value

    @property
    def bound(self) -> bool:
        return self._value is not None

    def get(self) -> T:
        if self._value is None:
            raise NotBound(f"{self.what} is not up yet (agogd is starting)")
        return self._value
