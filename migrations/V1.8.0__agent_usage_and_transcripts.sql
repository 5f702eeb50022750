-- What each stage attempt's agent used, as its notice's "usage" reported it
-- (the runner fills it in from the CLI's structured output; an outside agent
-- may send it too). Summed per REQ and per agent by the views and metrics.
ALTER TABLE stage_attempts
    ADD COLUMN cli                text,
    ADD COLUMN model              text,
    ADD COLUMN session_id         text,
    ADD COLUMN input_tokens       bigint,
    ADD COLUMN output_tokens      bigint,
    ADD COLUMN cache_read_tokens  bigint,
    ADD COLUMN cache_write_tokens bigint,
    ADD COLUMN cost_usd           numeric(12, 6),
    ADD COLUMN turns              integer,
    ADD COLUMN duration_s         double precision;

-- The last stretch of each attempt's agent output, as the runner ran it:
-- bounded (AGOG_RUNNER_TRANSCRIPT_BYTES), with how many bytes were written in
-- all, so a reader that follows it asks for what came after what it has.
CREATE TABLE agent_transcripts (
    req_number   varchar(64) NOT NULL,
    stage        integer     NOT NULL,
    attempt      integer     NOT NULL,
    agent        text        NOT NULL,
    text         text        NOT NULL DEFAULT '',
    total_bytes  bigint      NOT NULL DEFAULT 0,
    running      boolean     NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (req_number, stage, attempt)
);
