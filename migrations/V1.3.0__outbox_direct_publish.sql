-- The engine publishes the outbox rows of its own transactions right after
-- commit. Such rows carry claimed_until: the relay leaves them alone until
-- then, and publishes them itself only if the engine died before it could.
ALTER TABLE outbox ADD COLUMN claimed_until timestamptz;
