-- The deliverable cache is a contract with agents that read it with psql
-- (seed 002: deliverable->>'files_changed'). `deliverable` becomes the notice
-- object as the agent published it, every field under its own name; the
-- normalised notice agogd reads itself moves to its own column.
ALTER TABLE nats_deliverable_cache ADD COLUMN normalized jsonb;

-- Existing rows hold the normalised notice: keep it as such, and give the
-- agent back the one name normalisation renamed (files_changed: 42 became
-- files_changed_count); a count agogd added as null was never sent at all.
UPDATE nats_deliverable_cache SET
    normalized = deliverable,
    deliverable = CASE
        WHEN jsonb_typeof(deliverable -> 'files_changed_count') = 'number'
             AND NOT deliverable ? 'files_changed'
        THEN (deliverable - 'files_changed_count')
             || jsonb_build_object('files_changed', deliverable -> 'files_changed_count')
        ELSE deliverable - 'files_changed_count'
    END
WHERE normalized IS NULL;

-- The content digest of the notice that closed an attempt: a notice without
-- an `attempt` whose content was already applied is a late copy, not the
-- answer to a newer attempt.
ALTER TABLE stage_attempts ADD COLUMN notice_digest text;

-- Follow-ups (Tim) now live in the pure workflow: their state is in
-- budgets.followups, their attempts in budgets.attempts. Finished REQs whose
-- follow-ups ran before this version get both from their attempts (a
-- follow-up's index is past the last pipeline stage, which is the
-- current_stage of a finished REQ).
WITH latest AS (
    SELECT DISTINCT ON (a.req_number, a.stage) a.req_number, a.stage, a.attempt, a.status
    FROM stage_attempts a JOIN workflow_state w ON w.req_number = a.req_number
    WHERE w.status IN ('DEPLOYED', 'COMPLETE') AND a.stage > w.current_stage
    ORDER BY a.req_number, a.stage, a.attempt DESC
), agg AS (
    SELECT req_number,
           jsonb_object_agg(stage::text, CASE status
               WHEN 'RUNNING' THEN 'RUNNING' WHEN 'COMPLETE' THEN 'COMPLETE'
               WHEN 'BLOCKED' THEN 'BLOCKED' ELSE 'FAILED' END) AS followups,
           jsonb_object_agg(stage::text, attempt) AS attempts
    FROM latest GROUP BY req_number
)
UPDATE workflow_state w SET budgets = w.budgets || jsonb_build_object(
    'followups', agg.followups,
    'attempts', coalesce(w.budgets -> 'attempts', '{}'::jsonb) || agg.attempts)
FROM agg WHERE w.req_number = agg.req_number AND NOT w.budgets ? 'followups';
