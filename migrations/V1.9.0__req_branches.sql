-- A branch and a git worktree per REQ (AGOG_REPO): the branch it started
-- from, where its worktree is, and when the worktree was removed (the branch
-- stays). One row per REQ: replicas racing to create it agree on one base.
CREATE TABLE req_worktrees (
    req_number     varchar(64) PRIMARY KEY,
    branch         text        NOT NULL,
    base_sha       text        NOT NULL,
    path           text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    touched_at     timestamptz NOT NULL DEFAULT now(),
    removed_at     timestamptz,
    removed_reason text
);

-- Each stage attempt's commit on the REQ's branch: where the attempt started,
-- the commit the runner made of what the agent left (NULL: nothing changed,
-- or not yet), the files it changed, and how they compare with what the
-- agent's notice listed.
CREATE TABLE stage_commits (
    req_number   varchar(64) NOT NULL,
    stage        integer     NOT NULL,
    attempt      integer     NOT NULL,
    agent        text        NOT NULL,
    start_sha    text        NOT NULL,
    end_sha      text,
    files        jsonb       NOT NULL DEFAULT '[]',
    unlisted     jsonb       NOT NULL DEFAULT '[]',
    missing      jsonb       NOT NULL DEFAULT '[]',
    started_at   timestamptz NOT NULL DEFAULT now(),
    committed_at timestamptz,
    PRIMARY KEY (req_number, stage, attempt)
);
