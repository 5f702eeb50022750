-- Deployment records (issue 20): one row per (REQ, attempt, environment).
-- With staging on, an attempt deploys to 'staging' first and, only when its
-- smoke tests pass, to 'production'; with it off there is one environment,
-- 'production', as before. Each row is what an operator asks of a deploy:
-- which commit and images, when, the health verdict, the smoke results, the
-- pre-flight checklist, the rollback and how long it took, the database
-- backup taken before migrations. `agogctl deploys` lists them and
-- `/metrics` derives the success rate and the rollback time from them.
ALTER TABLE berry_deployments
    ADD COLUMN environment text NOT NULL DEFAULT 'production'
        CHECK (environment ~ '^[a-z][a-z0-9_-]{0,31}$'),
    ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY,
    ADD COLUMN images jsonb NOT NULL DEFAULT '{}'::jsonb,      -- service -> image id
    ADD COLUMN health jsonb,                                   -- the verdict, as_dict()
    ADD COLUMN smoke jsonb,                                    -- [{name, kind, passed, ...}]
    ADD COLUMN preflight jsonb,                                -- [{item, ok, detail}]
    ADD COLUMN rollback jsonb,                                 -- {to, healthy, ...}
    ADD COLUMN rollback_seconds double precision,              -- failed verdict -> healthy again
    ADD COLUMN backup jsonb;                                   -- {path, database, bytes, sha256, ...}

ALTER TABLE berry_deployments DROP CONSTRAINT berry_deployments_pkey;
ALTER TABLE berry_deployments ADD PRIMARY KEY (req_number, attempt, environment);
ALTER TABLE berry_deployments ADD CONSTRAINT berry_deployments_id_key UNIQUE (id);

ALTER TABLE berry_deployments DROP CONSTRAINT berry_deployments_status_check;
ALTER TABLE berry_deployments ADD CONSTRAINT berry_deployments_status_check CHECK (status IN
    ('deploying', 'healthy', 'rolled_back', 'rollback_failed', 'failed', 'blocked'));

-- `agogctl deploys --env E`, newest first.
CREATE INDEX berry_deployments_by_env ON berry_deployments (environment, started_at DESC);
