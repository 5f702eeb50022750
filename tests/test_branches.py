"""A branch and a worktree per REQ, on real git and Postgres: made once
however often (or concurrently) it is asked for, a commit per stage attempt
with the agent as author, the diff compared with what the agent listed, and
parallel REQs whose agents (real processes) edit the same files ending with
every change on the integration branch and none in another REQ's commits."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from orchestrator.embedded import NatsServer
from orchestrator.runtime import migrate
from tests.agents import running_agogd, settings_for, submit
from workers.branches.worktrees import AttemptKey, WorktreeError, Worktrees, worktrees_of

AGENT = Path(__file__).resolve().parent / "branch_agent.py"
SECTIONS = 40  # lines in shared/sections.txt; REQs edit lines 10 apart


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True
    ).stdout


def make_repo(root: Path) -> Path:
    """The project's repository: main, one commit, the shared files."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / "shared").mkdir()
    (root / "shared" / "sections.txt").write_text("".join(f"line {i}\n" for i in range(SECTIONS)))
    (root / "shared" / "owner.txt").write_text("# who owns it\n")
    (root / "README.md").write_text("the app\n")
    git(root, "add", "-A")
    git(root, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-qm", "v1")
    return root


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(pg_dsn)
    await migrate.apply(conn, None)
    await conn.close()
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=8)
    yield pool
    await pool.close()


async def worktrees(tmp_path: Path, pool: asyncpg.Pool, nats_url: str, dsn: str) -> Worktrees:
    repo = make_repo(tmp_path / "repo")
    settings = settings_for(nats_url, dsn, repo=repo, data_dir=tmp_path / "data")
    found = worktrees_of(settings, pool)
    assert found is not None
    await found.check()
    return found


def registered(repo: Path) -> list[str]:
    out = git(repo, "worktree", "list", "--porcelain")
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]


async def test_a_reqs_worktree_is_made_once_however_often_and_however_it_was_left(
    tmp_path: Path, pool: asyncpg.Pool, nats_server: NatsServer, pg_dsn: str
) -> None:
    wts = await worktrees(tmp_path, pool, nats_server.url, pg_dsn)
    repo = wts.repo.root
    base = git(repo, "rev-parse", "main").strip()
    # Two replicas (here: coroutines on their own connections) race.
    first, second = await asyncio.gather(wts.ensure("REQ-WT-1"), wts.ensure("REQ-WT-1"))
    assert first == second and first.branch == "agog/REQ-WT-1" and first.base == base
    assert registered(repo) == [str(repo), str(first.path)]
    assert git(first.path, "symbolic-ref", "--short", "HEAD").strip() == "agog/REQ-WT-1"
    # Left half made: the files gone (registered), then a directory git does not know.
    shutil.rmtree(first.path)
    again = await wts.ensure("REQ-WT-1")
    assert (again.path / "README.md").is_file() and registered(repo).count(str(again.path)) == 1
    git(repo, "worktree", "remove", "--force", str(again.path))
    again.path.mkdir()
    (again.path / "half").write_text("a crash during worktree add\n")
    again = await wts.ensure("REQ-WT-1")
    assert not (again.path / "half").exists() and (again.path / ".git").is_file()
    # The main branch moved on: the REQ keeps the base it started from.
    (repo / "README.md").write_text("v2\n")
    git(repo, "-c", "user.name=D", "-c", "user.email=d@d", "commit", "-qam", "v2")
    assert (await wts.ensure("REQ-WT-1")).base == base
    rows = await pool.fetchval("SELECT count(*) FROM req_worktrees WHERE req_number = 'REQ-WT-1'")
    assert rows == 1
    assert git(repo, "branch", "--list", "agog/*").split() == ["+", "agog/REQ-WT-1"]


async def test_each_attempt_is_a_commit_by_its_agent_compared_with_what_it_listed(
    tmp_path: Path, pool: asyncpg.Pool, nats_server: NatsServer, pg_dsn: str
) -> None:
    wts = await worktrees(tmp_path, pool, nats_server.url, pg_dsn)
    wt = await wts.ensure("REQ-WT-2")
    key = AttemptKey("REQ-WT-2", 2, 1)
    start = await wts.begin(wt, key, "roy")
    (wt.path / "api.py").write_text("x = 1\n")
    (wt.path / "README.md").write_text("changed, not listed\n")
    notice = {"summary": "the API", "files_created": ["./api.py", "docs/never.md"]}
    found = await wts.finish(wt, key, agent="roy", stage_name="Backend", notice=notice)
    assert found["commit"] and found["commit"] != start
    assert found["files"] == [
        {"path": "README.md", "status": "modified"},
        {"path": "api.py", "status": "added"},
    ]
    assert found["unlisted"] == ["README.md"] and found["missing"] == ["docs/never.md"]
    head = found["commit"]
    assert git(wt.path, "log", "-1", "--format=%an <%ae>", head).strip() == (
        "Roy (Backend) <roy@agogsaas.ai>"
    )
    trailers = git(wt.path, "log", "-1", "--format=%(trailers:only,unfold)", head).split("\n")
    assert [t for t in trailers if t] == [
        "Agog-Req: REQ-WT-2",
        "Agog-Stage: 2",
        "Agog-Attempt: 1",
        "Agog-Agent: roy",
    ]
    row = await pool.fetchrow("SELECT * FROM stage_commits WHERE req_number = 'REQ-WT-2'")
    assert row["end_sha"] == head and json.loads(row["unlisted"]) == ["README.md"]

    # The same attempt run again (a crash before its notice was kept): it starts
    # over from where it began, and still makes one commit.
    await wts.begin(wt, key, "roy")
    assert git(wt.path, "rev-parse", "HEAD").strip() == start
    (wt.path / "api.py").write_text("x = 2\n")
    again = await wts.finish(wt, key, agent="roy", stage_name="Backend", notice=notice)
    assert git(wt.path, "rev-list", "--count", f"{start}..HEAD").strip() == "1"

    # The next attempt starts from the branch as this one left it, without the
    # leftovers of a failed run; a decision's reset takes it back to the start.
    (wt.path / "junk.tmp").write_text("a failed attempt's leftovers\n")
    key2 = AttemptKey("REQ-WT-2", 2, 2)
    assert await wts.begin(wt, key2, "roy") == again["commit"]
    assert not (wt.path / "junk.tmp").exists() and (wt.path / "api.py").read_text() == "x = 2\n"
    key3 = AttemptKey("REQ-WT-2", 2, 3)
    assert await wts.begin(wt, key3, "roy", reset=True) == start
    assert not (wt.path / "api.py").exists()
    # Nothing changed: no commit, and what it listed is all "missing".
    empty = await wts.finish(
        wt, key3, agent="roy", stage_name="Backend", notice={"files_modified": ["api.py"]}
    )
    assert empty["commit"] is None and empty["files"] == [] and empty["missing"] == ["api.py"]
    # The stage's diff: from where it first started to its last commit.
    diff = await wts.diff("REQ-WT-2", stage=2)
    assert diff is not None and "+x = 2" in diff.text and diff.start == start


async def test_finished_reqs_lose_their_worktree_and_keep_their_branch(
    tmp_path: Path, pool: asyncpg.Pool, nats_server: NatsServer, pg_dsn: str
) -> None:
    wts = await worktrees(tmp_path, pool, nats_server.url, pg_dsn)
    for req, status in (
        ("REQ-WT-D", "DEPLOYED"),
        ("REQ-WT-B", "BLOCKED"),
        ("REQ-WT-C", "CANCELLED"),
    ):
        await pool.execute(
            "INSERT INTO workflow_state (req_number, status) VALUES ($1, $2)", req, status
        )
        await wts.ensure(req)
    assert await wts.prune() == 2
    left = registered(wts.repo.root)
    assert [Path(p).name for p in left[1:]] == ["REQ-WT-B"], "a BLOCKED REQ's tree is kept"
    assert "agog/REQ-WT-D" in git(wts.repo.root, "branch", "--list", "agog/*")
    # Too old: pruned even though BLOCKED.
    await pool.execute(
        "UPDATE req_worktrees SET touched_at = now() - interval '30 days'"
        " WHERE req_number = 'REQ-WT-B'"
    )
    assert await wts.prune() == 1 and registered(wts.repo.root) == [str(wts.repo.root)]
    reasons = dict(
        await pool.fetch("SELECT req_number, removed_reason FROM req_worktrees ORDER BY 1")
    )
    assert reasons == {
        "REQ-WT-B": "not touched for 14 days",
        "REQ-WT-C": "cancelled",
        "REQ-WT-D": "deployed",
    }


# --- four REQs at once, through agogd -----------------------------------------------
PLAN = {
    "REQ-PAR-1": {"section": 5, "owner": True},
    "REQ-PAR-2": {"section": 15, "owner": True},
    "REQ-PAR-3": {"section": 25},
    "REQ-PAR-4": {"section": 35, "unlisted_page": True},
}


def parallel_settings(tmp_path: Path, nats_url: str, dsn: str, repo: Path, **kw: Any) -> Any:
    return settings_for(
        nats_url,
        dsn,
        repo=repo,
        data_dir=tmp_path / "data",
        runner_agents=["all"],
        runner_command=f"{sys.executable} {AGENT} {{agent}} {{role}}",
        runner_env=["BRANCH_AGENT_PLAN", "BRANCH_AGENT_SLEEP"],
        runner_per_agent=4,
        runner_concurrency=8,
        max_in_flight=4,
        berry_mode="native",
        docker_url="none",
        worktree_prune_interval=0.5,
        **kw,
    )


async def wait_all(dsn: str, reqs: list[str], statuses: set[str], timeout: float) -> dict:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = dict(
                await conn.fetch(
                    "SELECT req_number, status FROM workflow_state WHERE req_number = ANY($1)",
                    reqs,
                )
            )
            if len(rows) == len(reqs) and set(rows.values()) <= statuses:
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"not all {statuses}: {rows}")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def test_four_reqs_at_once_editing_the_same_files_all_land_and_never_mix(
    tmp_path: Path,
    nats_server: NatsServer,
    pg_dsn: str,
    nc: NATS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = make_repo(tmp_path / "repo")
    monkeypatch.setenv("BRANCH_AGENT_PLAN", json.dumps(PLAN))
    monkeypatch.setenv("BRANCH_AGENT_SLEEP", "0.3")  # every REQ's agents overlap
    reqs = list(PLAN)
    settings = parallel_settings(tmp_path, nats_server.url, pg_dsn, repo)
    async with running_agogd(settings):
        for req in reqs:
            await submit(nc, req)
        await wait_all(pg_dsn, reqs, {"COMPLETE"}, timeout=240)
        conn = await asyncpg.connect(pg_dsn)
        try:
            in_flight = await conn.fetchval(
                "SELECT count(DISTINCT req_number) FROM stage_attempts WHERE stage = 2"
                " AND attempt = 1 AND started_at < (SELECT min(finished_at) FROM stage_attempts"
                " WHERE stage = 2 AND attempt = 1)"
            )
            reworks = await conn.fetch(
                "SELECT req_number, reason FROM stage_attempts WHERE stage = 6"
                " AND status = 'FAILED' ORDER BY req_number"
            )
            shown = await conn.fetch(
                "SELECT req_number, unlisted FROM stage_commits WHERE unlisted <> '[]'"
            )
        finally:
            await conn.close()
        # Finished: their worktrees go, their branches stay.
        deadline = time.monotonic() + 30
        while len(registered(repo)) > 1:
            assert time.monotonic() < deadline, registered(repo)
            await asyncio.sleep(0.2)
    assert in_flight >= 2, "the REQs did not run at the same time"
    # The two REQs that claimed the owner line: the later one conflicted and
    # went back to its backend stage, which resolved the conflict.
    assert len(reworks) == 1 and "conflicts with main in shared/owner.txt" in reworks[0]["reason"]
    # Every REQ's changes are on main, in order, none overwritten.
    assert git(repo, "status", "--porcelain") == ""
    sections = (repo / "shared" / "sections.txt").read_text().splitlines()
    for req, plan in PLAN.items():
        assert sections[plan["section"]] == f"section of {req}"
        assert (repo / "src" / f"{req.lower()}.py").read_text() == f"FEATURE = {req!r}\n"
        assert (repo / "web" / f"{req.lower()}.html").exists()
    owners = (repo / "shared" / "owner.txt").read_text().splitlines()
    assert sorted(owners[1:]) == ["owner = REQ-PAR-1", "owner = REQ-PAR-2"]
    assert "<<<<<<<" not in (repo / "shared" / "owner.txt").read_text()
    # No edit of one REQ in another's commit: every line a stage commit adds
    # names its own REQ.
    log = git(repo, "log", "--no-merges", "--format=%H %(trailers:key=Agog-Req,valueonly)", "main")
    stage_commits = [line.split() for line in log.splitlines() if len(line.split()) == 2]
    assert len(stage_commits) >= 8  # a backend and a frontend commit per REQ
    for sha, req in stage_commits:
        patch = git(repo, "show", "--format=", "--unified=0", sha)
        added = [x for x in patch.splitlines() if x.startswith("+") and not x.startswith("+++")]
        assert added and all(req in x or req.lower() in x for x in added), (req, added)
    # Each REQ is one merge commit on main, its seed 002 message with its trailer.
    merges = git(
        repo,
        "log",
        "--merges",
        "--first-parent",
        "--format=%(trailers:key=Agog-Req,valueonly)",
        "main",
    )
    assert sorted(merges.split()) == reqs
    # The page REQ-PAR-4's frontend wrote but did not list is on record.
    assert [r["req_number"] for r in shown] == ["REQ-PAR-4"]
    assert json.loads(shown[0]["unlisted"]) == ["web/req-par-4.html"]


async def test_an_agent_pointing_its_worktree_at_a_repository_of_its_own_is_undone(
    tmp_path: Path, pool: asyncpg.Pool, nats_server: NatsServer, pg_dsn: str
) -> None:
    """The agent owns its worktree, ``.git`` included: a ``gitdir:`` of its
    own would give git that repository's config (a clean filter is a
    command). The runner's git puts git's own ``.git`` file back first."""
    wts = await worktrees(tmp_path, pool, nats_server.url, pg_dsn)
    wt = await wts.ensure("REQ-WT-G")
    key = AttemptKey("REQ-WT-G", 2, 1)
    await wts.begin(wt, key, "roy")
    original = (wt.path / ".git").read_text()
    evil, marker = tmp_path / "evil.git", tmp_path / "filter-ran"
    git(tmp_path, "init", "-q", "--bare", str(evil))
    git(evil, "config", "filter.own.clean", f"sh -c 'touch {marker}; cat'")
    (wt.path / ".gitattributes").write_text("*.py filter=own\n")
    (wt.path / "api.py").write_text("x = 1\n")
    (wt.path / ".git").write_text(f"gitdir: {evil}\n")
    found = await wts.finish(
        wt, key, agent="roy", stage_name="Backend", notice={"files_created": ["api.py"]}
    )
    assert (wt.path / ".git").read_text() == original
    assert not marker.exists(), "the agent's filter ran"
    assert found["commit"] and git(wt.path, "rev-parse", "HEAD").strip() == found["commit"]
    assert "api.py" in git(wts.repo.root, "show", "--name-only", "--format=", found["commit"])


async def test_an_agent_that_leaves_the_branch_fails_and_the_next_attempt_is_back_on_it(
    tmp_path: Path, pool: asyncpg.Pool, nats_server: NatsServer, pg_dsn: str
) -> None:
    wts = await worktrees(tmp_path, pool, nats_server.url, pg_dsn)
    wt = await wts.ensure("REQ-WT-S")
    key = AttemptKey("REQ-WT-S", 3, 1)
    await wts.begin(wt, key, "jen")
    git(wt.path, "checkout", "-q", "-b", "jens-own")
    (wt.path / "page.html").write_text("<p>on the wrong branch</p>\n")
    with pytest.raises(WorktreeError, match="left the worktree on jens-own"):
        await wts.finish(wt, key, agent="jen", stage_name="Frontend", notice={})
    await wts.begin(wt, AttemptKey("REQ-WT-S", 3, 2), "jen")
    assert git(wt.path, "symbolic-ref", "--short", "HEAD").strip() == "agog/REQ-WT-S"
    assert not (wt.path / "page.html").exists()
