"""The agent runner: stage assignments to supervised agent processes. Imports
``workers.release`` (the native deploy stage) and ``workers.adapters``."""
