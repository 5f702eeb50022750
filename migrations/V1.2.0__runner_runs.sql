-- The agent runner's claims: one row per (REQ, stage, attempt) it spawned.
-- A redelivered assignment finds its row: a live lease means the process is
-- running somewhere, 'published' means the outcome is already out; either
-- way nothing new starts. A lease that ran out (a runner died) may be taken
-- over.
CREATE TABLE runner_runs (
    req_number   varchar(64) NOT NULL,
    stage        integer     NOT NULL,
    attempt      integer     NOT NULL,
    agent        text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('running', 'published')),
    runner       text        NOT NULL,
    lease_until  timestamptz NOT NULL,
    runs         integer     NOT NULL DEFAULT 1,
    exit_code    integer,
    outcome      text,
    reason       text,
    notice       jsonb,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    PRIMARY KEY (req_number, stage, attempt)
);
