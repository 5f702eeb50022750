"""The durable workflow engine: the store (its SQL), the message handlers, the
scheduler, the effects, the outbox. Imports ``core``, ``runtime``, ``inbound``,
``memory``."""
