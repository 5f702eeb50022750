-- Each backup of agogd's own state (agogctl backup create, and the daemon's
-- scheduled ones): when, how it ended, what it wrote, and which replica took
-- it. A scheduled run names its slot (the schedule's interval, aligned to UTC
-- midnight): a slot with an 'ok' row is done, on every replica. The last good
-- backup's time (/metrics) is read from here, so every replica reports it.
CREATE TABLE backup_runs (
    id          bigserial   PRIMARY KEY,
    trigger     text        NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    slot        timestamptz,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    outcome     text        NOT NULL CHECK (outcome IN ('ok', 'failed')),
    archive     text,
    bytes       bigint,
    seconds     double precision,
    error       text,
    replica     text        NOT NULL
);
CREATE INDEX backup_runs_slot_idx ON backup_runs (slot) WHERE slot IS NOT NULL;
CREATE INDEX backup_runs_ok_idx ON backup_runs (finished_at) WHERE outcome = 'ok';
