-- Two statements scanned a whole table, so that their cost grew with history
-- (issue 19; found with log_min_duration_statement on 100,000 finished REQs):
--
-- * the memory dimension check at every start asks whether any memory has an
--   embedding: with none embedded (no provider, or not yet) that read every
--   row (0.24 s at 800,000 memories, seconds at millions). A partial index of
--   the embedded rows answers it at once; rows without an embedding are not
--   in it, so writing a memory costs nothing more.
-- * pruning looks for published outbox rows older than the retention window:
--   with no index on the times, every pass (the first at start) read the
--   whole outbox (0.7 s at 100,000 REQs). A BRIN index on created_at (rows
--   come in time order; 64 kB for 1.4 GB of outbox, and cheap to keep up) lets
--   the pass skip every recent block. The pass bounds created_at too, which
--   changes nothing it deletes: a row is published after it was created.
CREATE INDEX memories_embedded_idx ON memories (created_at) WHERE embedding IS NOT NULL;
CREATE INDEX outbox_created_brin ON outbox USING brin (created_at);
