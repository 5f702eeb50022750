"""SQL migrations for the agent_memory database (applied by orchestrator.runtime.migrate)."""
