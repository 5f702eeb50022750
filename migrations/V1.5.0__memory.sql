-- Deliverable memory (issue 6). V1.0.0 made `memories` in the old daemon's
-- shape (agent_id, memory_type, content, embedding vector(768), HNSW cosine,
-- content_tsv). This evolves it:
-- * filter columns: agent_id (the agent), memory_type (the kind: deliverable,
--   rejection, decision, escalation, resolution, qa_failure, rollback,
--   requirement), req_number, stage, created_at; B-tree indexes on them;
-- * dedup: content_hash stays UNIQUE; a long text becomes several rows that
--   share parent_hash, numbered by chunk_index of chunk_count;
-- * no fake vectors, ever: a memory whose embedding failed keeps a NULL
--   embedding and embedding_status 'pending' (the backfill retries it); a
--   'done' row must have a vector, and no stored vector may be all zeros;
-- * embedding_claimed_until lets replicas share the backfill (SKIP LOCKED).
-- The column's dimension is set at start by agogd from the provider (when no
-- row is embedded yet) or refused (`agogd memory reembed` re-types it).

ALTER TABLE memories
    ADD COLUMN parent_hash             text,
    ADD COLUMN chunk_index             integer     NOT NULL DEFAULT 0 CHECK (chunk_index >= 0),
    ADD COLUMN chunk_count             integer     NOT NULL DEFAULT 1 CHECK (chunk_count >= 1),
    ADD COLUMN embedded_at             timestamptz,
    ADD COLUMN embedding_attempts      integer     NOT NULL DEFAULT 0,
    ADD COLUMN embedding_error         text,
    ADD COLUMN embedding_claimed_until timestamptz;

UPDATE memories SET parent_hash = content_hash WHERE parent_hash IS NULL;
ALTER TABLE memories ALTER COLUMN parent_hash SET NOT NULL;
-- A row inserted in the old daemon's shape (no chunks) is its own parent.
CREATE FUNCTION memories_parent_default() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.parent_hash := coalesce(NEW.parent_hash, NEW.content_hash);
    RETURN NEW;
END
$$;
CREATE TRIGGER memories_parent_default BEFORE INSERT ON memories
    FOR EACH ROW EXECUTE FUNCTION memories_parent_default();

ALTER TABLE memories
    ADD CONSTRAINT memories_chunk_in_range CHECK (chunk_index < chunk_count),
    ADD CONSTRAINT memories_done_has_vector
        CHECK (embedding_status <> 'done' OR embedding IS NOT NULL),
    ADD CONSTRAINT memories_no_zero_vector
        CHECK (embedding IS NULL OR vector_norm(embedding) > 0);

-- Filters (agent, kind, REQ, age) and retention (per kind, by age).
CREATE INDEX memories_kind_created_idx ON memories (memory_type, created_at);
CREATE INDEX memories_created_idx ON memories (created_at);
CREATE INDEX memories_stage_idx ON memories (stage);
CREATE INDEX memories_parent_idx ON memories (parent_hash);
-- The backfill's queue: pending rows in arrival order (replaces V1.0.0's).
DROP INDEX IF EXISTS memories_pending_idx;
CREATE INDEX memories_pending_idx ON memories (created_at, id) WHERE embedding_status = 'pending';

-- The memories recalled for a REQ, computed off the engine's hot path (by the
-- memory service, or once at a dispatch that finds none): candidates fused
-- from vector and full-text search, then picked per stage. The engine reads
-- only the next stage's picks, with the workflow row it locks.
-- No foreign key: inserting a referencing row would take a KEY SHARE lock on
-- the workflow row and make the engine wait for the memory service.
CREATE TABLE memory_context (
    req_number  varchar(64) PRIMARY KEY,
    picks       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    mode        text        NOT NULL CHECK (mode IN ('hybrid', 'vector', 'fulltext', 'none')),
    candidates  integer     NOT NULL DEFAULT 0,
    computed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memory_context_computed_idx ON memory_context (computed_at);
