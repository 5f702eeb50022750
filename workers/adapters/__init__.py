"""Thin adapters to outside programs: the Docker API, compose, git and
supervised processes. Import only ``orchestrator.core`` and ``runtime``."""
