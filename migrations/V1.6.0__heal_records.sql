-- Miki's restart history per container: the crash-loop budget and back-off
-- survive an agogd restart, and replicas watching one engine share them (a
-- row lock per container, so one death is healed once). Times are epoch
-- seconds, as workers/heal_policy computes with them.
CREATE TABLE heal_records (
    container_id text             PRIMARY KEY,
    container    text             NOT NULL,
    restarts     double precision[] NOT NULL DEFAULT '{}',
    escalated_at double precision,
    next_allowed double precision NOT NULL DEFAULT 0,
    updated_at   timestamptz      NOT NULL DEFAULT now()
);
