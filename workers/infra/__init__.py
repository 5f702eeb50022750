"""The infrastructure workers: container health and self-healing, and the
infrastructure report. Import the engine's store and ``workers.adapters``."""
