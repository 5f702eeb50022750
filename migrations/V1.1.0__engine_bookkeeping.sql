-- Engine bookkeeping: what the OWNER_REQUESTS.md mirror last wrote, and what
-- the watcher last read, so that neither lives only in memory.
ALTER TABLE workflow_state ADD COLUMN mirrored_status text;

CREATE TABLE owner_requests_seen (
    req_number   varchar(64) PRIMARY KEY,
    content_hash text        NOT NULL,
    seen_at      timestamptz NOT NULL DEFAULT now()
);

-- Stage attempts of follow-ups (Tim) live beside the pipeline's; the status
-- list gains nothing, but dispatch order needs the priority at hand.
CREATE INDEX stage_attempts_running_idx ON stage_attempts (req_number, stage) WHERE status = 'RUNNING';
