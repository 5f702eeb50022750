"""agogd: the orchestration daemon (agent-backend) of AgogSaaS."""

__version__ = "0.1.0"
