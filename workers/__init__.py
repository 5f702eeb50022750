"""Workers that agogd runs beside the orchestrator: the agent runner and DevOps workers."""
