-- Berry's native deployments: one row per (REQ, attempt). The last healthy
-- row of a compose project is what a failed deploy rolls back to, and a
-- re-run after a crash finds its own row instead of starting over.
CREATE TABLE berry_deployments (
    req_number  varchar(64) NOT NULL,
    attempt     integer     NOT NULL CHECK (attempt >= 1),
    project     text        NOT NULL,
    commit_sha  text        NOT NULL,
    status      text        NOT NULL CHECK (status IN
                    ('deploying', 'healthy', 'rolled_back', 'rollback_failed')),
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (req_number, attempt)
);

CREATE INDEX berry_deployments_last_healthy
    ON berry_deployments (project, finished_at DESC) WHERE status = 'healthy';
