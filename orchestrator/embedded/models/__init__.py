"""Scripted model servers: local stand-ins for the hosted model APIs that the
real agent CLIs talk to (Anthropic Messages, OpenAI Responses, Gemini).

Only the model is scripted: the CLI, its tools, the runner, NATS and
Postgres stay real. A ``Script`` says, per request, what the model answers:
plain text or a tool call, with the token counts to report. Every request is
recorded, so a test can see what the CLI sent (its tools, the earlier turns
of a resumed session).
"""

from orchestrator.embedded.models.base import Script, ScriptedModelServer, Turn

__all__ = ["Script", "ScriptedModelServer", "Turn"]
