"""A local forge for Berry's tests: GitHub's or Gitea's REST API and real git.

``ForgeServer`` serves the endpoints Berry's forge clients use, with state in
memory, and a bare repository over smart HTTP through ``git http-backend``.
The GitHub flavour checks every request and response against GitHub's
official OpenAPI description (``scripts/github-openapi`` installs it).
"""

from orchestrator.embedded.forge.openapi import SpecMissing, default_spec
from orchestrator.embedded.forge.server import ForgeServer
from orchestrator.embedded.forge.state import Thread

__all__ = ["ForgeServer", "SpecMissing", "Thread", "default_spec"]
