"""The HTTP API, the live events, /metrics and the board, on the runtime's
HTTP endpoint. Imports the engine, memory and the infra workers' readers."""
