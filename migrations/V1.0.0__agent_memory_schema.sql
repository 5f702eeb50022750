-- agent_memory: the schema agogd needs. Postgres is the single source of truth
-- for workflow state; JetStream only carries messages.

CREATE EXTENSION IF NOT EXISTS vector;

-- Compatible with the old daemon (Berry reads it to verify Billy's approval).
-- req_number widened from 50 to 64 characters: valid REQ ids go up to 64.
CREATE TABLE nats_deliverable_cache (
    req_number  varchar(64) NOT NULL,
    agent       varchar(50) NOT NULL,
    stage       integer     NOT NULL,
    deliverable jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (req_number, agent, stage)
);

-- One row per requirement: where it stands. `version` serializes replicas.
CREATE TABLE workflow_state (
    req_number     varchar(64) PRIMARY KEY,
    title          text        NOT NULL DEFAULT '',
    priority       smallint    NOT NULL DEFAULT 2 CHECK (priority BETWEEN 0 AND 3),
    status         text        NOT NULL DEFAULT 'NEW' CHECK (status IN (
                       'NEW', 'PENDING', 'IN_PROGRESS', 'BLOCKED', 'ESCALATED',
                       'COMPLETE', 'DEPLOYED', 'FAILED', 'CANCELLED', 'DEFERRED')),
    current_stage  integer,
    source         text        NOT NULL DEFAULT 'nats',
    owner          text,
    requirement    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    budgets        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    commit_sha     text,
    deployed_at    timestamptz,
    deployed_by    text,
    version        bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflow_state_dispatch_idx ON workflow_state (status, priority, created_at);

-- Every attempt of every stage, never overwritten: the full history.
CREATE TABLE stage_attempts (
    id                bigserial   PRIMARY KEY,
    req_number        varchar(64) NOT NULL REFERENCES workflow_state (req_number) ON DELETE CASCADE,
    stage             integer     NOT NULL,
    agent             varchar(50) NOT NULL,
    attempt           integer     NOT NULL CHECK (attempt >= 1),
    status            text        NOT NULL DEFAULT 'RUNNING' CHECK (status IN (
                          'RUNNING', 'COMPLETE', 'BLOCKED', 'FAILED', 'REJECTED',
                          'TIMED_OUT', 'SUPERSEDED', 'CANCELLED')),
    reason            text,
    instructions      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    deliverable       jsonb,
    started_at        timestamptz NOT NULL DEFAULT now(),
    deadline          timestamptz NOT NULL,
    last_heartbeat_at timestamptz,
    finished_at       timestamptz,
    UNIQUE (req_number, stage, attempt)
);
CREATE INDEX stage_attempts_deadline_idx ON stage_attempts (deadline) WHERE status = 'RUNNING';

-- Every deliverable message accepted, with where it came from.
CREATE TABLE deliverable_history (
    id          bigserial   PRIMARY KEY,
    req_number  varchar(64) NOT NULL,
    agent       varchar(50) NOT NULL,
    stage       integer     NOT NULL,
    attempt     integer,
    subject     text        NOT NULL,
    stream      text,
    stream_seq  bigint,
    deliverable jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliverable_history_req_idx ON deliverable_history (req_number, stage);

-- Transactional outbox: a row written in the same transaction as the state
-- change; a relay publishes it with Nats-Msg-Id = msg_id, so a retried
-- publish is deduplicated by JetStream.
CREATE TABLE outbox (
    id           bigserial   PRIMARY KEY,
    msg_id       text        NOT NULL UNIQUE,
    subject      text        NOT NULL,
    payload      jsonb       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text
);
CREATE INDEX outbox_pending_idx ON outbox (id) WHERE published_at IS NULL;

-- Idempotency: a message (by stream sequence) or an effect (by key) is
-- processed once.
CREATE TABLE processed_messages (
    stream       text        NOT NULL,
    stream_seq   bigint      NOT NULL,
    consumer     text        NOT NULL,
    subject      text        NOT NULL,
    outcome      text        NOT NULL,
    detail       text,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, stream_seq)
);

CREATE TABLE idempotency_keys (
    key        text        PRIMARY KEY,
    outcome    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Audit trail: every transition, rejection and action, for history views.
CREATE TABLE workflow_events (
    id         bigserial   PRIMARY KEY,
    req_number varchar(64),
    kind       text        NOT NULL,
    stage      integer,
    agent      varchar(50),
    attempt    integer,
    reason     text,
    detail     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflow_events_req_idx ON workflow_events (req_number, id);

CREATE TABLE strategic_decisions (
    id          bigserial   PRIMARY KEY,
    req_number  varchar(64) NOT NULL,
    decision    text        NOT NULL,
    reasoning   text,
    payload     jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    applied_at  timestamptz
);
CREATE INDEX strategic_decisions_req_idx ON strategic_decisions (req_number);

-- An escalation is sent once per key (e.g. REQ + stage + attempt + cause).
CREATE TABLE escalations (
    id          bigserial   PRIMARY KEY,
    dedup_key   text        NOT NULL UNIQUE,
    req_number  varchar(64),
    priority    text        NOT NULL,
    reason      text        NOT NULL,
    payload     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolution  text
);

-- Memory: the embedding provider and dimension in use are recorded, so a
-- start with a different dimension is refused instead of mixing vectors.
CREATE TABLE embedding_config (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    provider   text        NOT NULL,
    model      text        NOT NULL,
    dimension  integer     NOT NULL CHECK (dimension > 0),
    recorded_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO embedding_config (provider, model, dimension) VALUES ('ollama', 'nomic-embed-text', 768);

CREATE TABLE memories (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id         varchar(50) NOT NULL,
    memory_type      text        NOT NULL,
    req_number       varchar(64),
    stage            integer,
    content          text        NOT NULL,
    content_hash     text        NOT NULL UNIQUE,
    embedding        vector(768),
    embedding_status text        NOT NULL DEFAULT 'pending'
                         CHECK (embedding_status IN ('pending', 'done', 'none')),
    content_tsv      tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    metadata         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    accessed_at      timestamptz,
    access_count     integer     NOT NULL DEFAULT 0,
    relevance_score  double precision
);
CREATE INDEX memories_embedding_hnsw ON memories USING hnsw (embedding vector_cosine_ops);
CREATE INDEX memories_tsv_idx ON memories USING gin (content_tsv);
CREATE INDEX memories_filter_idx ON memories (agent_id, memory_type, created_at);
CREATE INDEX memories_req_idx ON memories (req_number);
CREATE INDEX memories_pending_idx ON memories (created_at) WHERE embedding_status = 'pending';
