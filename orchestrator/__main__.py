"""``python -m orchestrator`` starts the daemon, like ``agogd``."""

from orchestrator.cli import main

main()
