"""Backup and restore of agogd's own state: agent_memory and its ``agog_*``
streams (with their consumers), and OWNER_REQUESTS.md, in one archive.

``create_backup``, ``restore_backup`` and ``verify_backup`` take the servers
(``Servers``) and paths explicitly; ``agogctl backup`` and the scheduled
backups in the daemon (``orchestrator.backup.schedule``) call them. Why the
two halves agree after a restore: ``orchestrator.backup.restore``.
"""

from orchestrator.backup.create import Created, create_backup
from orchestrator.backup.errors import BackupError, Refused, Unreachable
from orchestrator.backup.restore import Restored, restore_backup
from orchestrator.backup.servers import Servers
from orchestrator.backup.verify import Verified, verify_backup

__all__ = [
    "BackupError",
    "Created",
    "Refused",
    "Restored",
    "Servers",
    "Unreachable",
    "Verified",
    "create_backup",
    "restore_backup",
    "verify_backup",
]
