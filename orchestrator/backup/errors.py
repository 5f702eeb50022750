"""What a backup, restore or verify can fail with: each says why, in one line,
and its kind is the exit code of ``agogctl backup`` (see ``orchestrator.ctl.backup``)."""

from __future__ import annotations


class BackupError(RuntimeError):
    """A backup, restore or verify failed; the message says why."""


class Refused(BackupError):
    """Refused before anything was touched: a checksum, the schema version, a
    target that is not empty, agogd still running."""


class Unreachable(BackupError):
    """Postgres or NATS did not answer."""
