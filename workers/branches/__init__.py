"""A branch and a git worktree per REQ: where its agents work, what it changed."""
