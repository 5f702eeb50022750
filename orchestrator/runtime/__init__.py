"""The runtime: settings, logs, metrics, Postgres and NATS connections, the
JetStream topology, the HTTP endpoint, the service helpers and the daemon
lifecycle. Imports only ``orchestrator.core``."""
