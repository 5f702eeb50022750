"""agogctl: the operator's client of the HTTP API. Imports only ``core`` and the
infra report's renderer; never the daemon."""
