"""A REQ's branch through the API and agogctl: a real agogd with its DEMO
agents (each writes a file per stage into the REQ's worktree) on a real git
repository, real nats-server and PostgreSQL. The diff of the REQ and of one
stage, the branch and each attempt's commit in the REQ's history, a
too-big diff cut short, and the reasons when there is no diff to give."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from orchestrator.api.diffs import BRANCHES_OFF, MAX_DIFF_BYTES, capped
from orchestrator.ctl.render import Painter, diff_lines, req_detail
from orchestrator.embedded import NatsServer
from tests.agents import running_agogd, settings_for, submit, wait_status
from tests.test_branches import git, make_repo

AGOGCTL = str(Path(sys.executable).parent / "agogctl")
# The stages whose DEMO agent writes a file: all but Berry (who deploys), and Tim after.
WRITERS = ["cynthia", "sylvia", "roy", "jen", "billy", "priya", "tim"]


async def get(url: str, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}{path}") as resp:
        return resp.status, await resp.json()


def _ctl(args: list[str], extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGOG_")}
    env.pop("FORCE_COLOR", None)
    env.pop("NO_COLOR", None)
    env["AGOG_DATA_DIR"] = "/nonexistent-agogd-data-dir"  # no endpoints.json to fall back on
    env["AGOG_API_TOKEN"] = "test-token"
    return subprocess.run(
        [AGOGCTL, *args],
        capture_output=True,
        text=True,
        env={**env, **extra},
        timeout=60,
        check=False,
    )


async def ctl(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_ctl, ["--url", url, *args], env)


def changed_paths(diff: str) -> list[str]:
    """The paths a unified diff adds or changes (its ``+++ b/...`` lines)."""
    return sorted(line[6:] for line in diff.splitlines() if line.startswith("+++ b/"))


async def wait_committed(url: str, req: str, agent: str, timeout: float = 60) -> dict[str, Any]:
    """The REQ's history once ``agent``'s latest attempt has its commit row
    closed (Tim's follow-up runs on after DEPLOYED)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = await get(url, f"/api/reqs/{req}")
        mine = [a for a in body.get("attempts", []) if a["agent"] == agent]
        if status == 200 and mine and (mine[-1]["commit"] or {}).get("committed_at"):
            return body
        assert time.monotonic() < deadline, f"{agent}'s attempt of {req} was never committed"
        await asyncio.sleep(0.1)


def branch_section(lines: list[str]) -> list[str]:
    """`req show`'s lines from "branch ..." to the next blank line."""
    [start] = [i for i, x in enumerate(lines) if x.startswith("branch ")]
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def attempt_of(history: dict[str, Any], agent: str) -> dict[str, Any]:
    [found] = [a for a in history["attempts"] if a["agent"] == agent]
    return found


async def test_the_diff_of_a_req_and_of_a_stage_through_the_api_and_agogctl(
    nats_server: NatsServer, nc: NATS, pg_dsn: str, tmp_path: Path
) -> None:
    req = "REQ-DIFF-1"
    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "main").strip()
    settings = settings_for(
        nats_server.url, pg_dsn, demo=True, demo_delay=0.05, repo=repo, data_dir=tmp_path / "data"
    )
    async with running_agogd(settings) as daemon:
        url = daemon.http.url
        await submit(nc, req, title="Inventory API")
        await wait_status(pg_dsn, req, "DEPLOYED", timeout=120)
        history = await wait_committed(url, req, "tim")
        head = git(repo, "rev-parse", f"agog/{req}").strip()
        demo_files = sorted(f"agog-demo/{req}/{agent}.md" for agent in WRITERS)

        # The whole REQ: from where its branch left main to the branch's head.
        status, whole = await get(url, f"/api/reqs/{req}/diff")
        assert status == 200, whole
        assert changed_paths(whole["diff"]) == demo_files
        assert "+# [DEMO] roy, attempt 1" in whole["diff"]
        assert {k: whole[k] for k in ("req_number", "branch", "stage", "from", "to")} == {
            "req_number": req,
            "branch": f"agog/{req}",
            "stage": None,
            "from": base,
            "to": head,
        }
        assert whole["truncated"] is False and whole["bytes"] == len(whole["diff"].encode())

        # One stage, named by its agent, its index or its name: only its files.
        roy = attempt_of(history, "roy")
        for stage in ("roy", "2", "Backend"):
            status, body = await get(url, f"/api/reqs/{req}/diff?stage={stage}")
            assert status == 200, body
            assert changed_paths(body["diff"]) == [f"agog-demo/{req}/roy.md"], stage
            assert (body["stage"], body["stage_name"], body["agent"]) == (2, "Backend", "roy")
            assert (body["from"], body["to"]) == (roy["commit"]["start"], roy["commit"]["sha"])
        # Berry's stage changed nothing: an empty diff, not an error.
        status, body = await get(url, f"/api/reqs/{req}/diff?stage=berry")
        assert status == 200 and body["diff"] == "" and body["from"] == body["to"]

        # What it cannot answer, and why.
        status, body = await get(url, f"/api/reqs/{req}/diff?stage=nobody")
        assert status == 400 and body["code"] == "bad_request"
        assert "'nobody' is not a stage" in body["error"]
        status, body = await get(url, "/api/reqs/REQ-a.b/diff")
        assert status == 400 and body["code"] == "bad_request" and "REQ id" in body["error"]
        status, body = await get(url, "/api/reqs/REQ-NOPE-1/diff")
        assert status == 404 and body["error"] == "no workflow for REQ-NOPE-1"

        # The REQ's history: its branch, and each attempt's commit on it.
        branch = history["branch"]
        assert branch["name"] == f"agog/{req}" and branch["base"] == base
        assert branch["worktree"] == str((tmp_path / "data" / "worktrees" / req).resolve())
        assert "removed_at" in branch
        assert [a["agent"] for a in history["attempts"]] == [
            "cynthia", "sylvia", "roy", "jen", "billy", "priya", "berry", "tim",
        ]  # fmt: skip
        for a in history["attempts"]:
            commit = a["commit"]
            assert set(commit) >= {"sha", "files", "unlisted", "missing"}, a
            assert commit["unlisted"] == [] and commit["missing"] == [], a
            if a["agent"] == "berry":
                assert commit["sha"] is None and commit["files"] == []
                continue
            assert commit["files"] == [
                {"path": f"agog-demo/{req}/{a['agent']}.md", "status": "added"}
            ]
            # The sha is the runner's commit on the branch, by the agent.
            author = git(repo, "log", "-1", "--format=%ae", commit["sha"]).strip()
            assert author == f"{a['agent']}@agogsaas.ai"
        assert roy["commit"]["sha"] in git(repo, "rev-list", f"agog/{req}").split()

        # agogctl req diff: the diff alone on stdout (no colour: not a terminal).
        done = await ctl(url, "req", "diff", req)
        assert done.returncode == 0, done.stderr
        assert done.stdout == whole["diff"]
        assert f"agog/{req} {base[:7]}..{head[:7]} (the whole REQ)" in done.stderr
        done = await ctl(url, "req", "diff", req, "--stage", "roy")
        assert done.returncode == 0, done.stderr
        assert changed_paths(done.stdout) == [f"agog-demo/{req}/roy.md"]
        assert "(stage 2 Backend (roy))" in done.stderr and "\x1b[" not in done.stdout
        painted = await ctl(url, "req", "diff", req, "--stage", "roy", FORCE_COLOR="1")
        assert painted.returncode == 0, painted.stderr
        assert f"\x1b[1mdiff --git a/agog-demo/{req}/roy.md" in painted.stdout
        assert "\x1b[32m+# [DEMO] roy, attempt 1\x1b[0m" in painted.stdout
        raw = await ctl(url, "req", "diff", req, "--raw")
        assert raw.returncode == 0 and raw.stdout == whole["diff"]
        done = await ctl(url, "req", "diff", req, "--stage", "jen", "--json")
        assert done.returncode == 0 and json.loads(done.stdout)["agent"] == "jen"
        done = await ctl(url, "req", "diff", req, "--stage", "berry")
        assert done.returncode == 0 and done.stdout == "" and "no changes" in done.stderr
        done = await ctl(url, "req", "diff", req, "--stage", "nobody")
        assert done.returncode == 1 and "'nobody' is not a stage" in done.stderr
        done = await ctl(url, "req", "diff", "REQ-NOPE-1")
        assert done.returncode == 4 and "no workflow for REQ-NOPE-1" in done.stderr

        # agogctl req show: the branch, and each attempt's commit.
        shown = await ctl(url, "req", "show", req)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        section = branch_section(lines)
        assert section[0].startswith(f"branch agog/{req}  from {base[:7]}  worktree ")
        assert section[1].split() == ["#", "AGENT", "TRY", "COMMIT", "FILES"]
        commits = {x.split()[1]: x.split()[2:] for x in section[2:]}
        assert list(commits) == [a["agent"] for a in history["attempts"]]
        assert commits["roy"] == ["1", roy["commit"]["sha"][:7], "1", "file"]
        assert commits["berry"] == ["1", "-", "no", "changes"]
        assert "changed but not listed" not in shown.stdout


# Agents that misreport: Roy writes a file his notice does not list and lists
# one he never wrote; Jen writes a file too big for one diff answer.
MISREPORTING = r"""
import json, os, re, sys
from datetime import datetime, timezone
from pathlib import Path
prompt = sys.stdin.read()
a = json.loads(re.search(r"```json\n(.*?)\n```", prompt.replace("\r\n", "\n"), re.S).group(1))
agent, req = a["agent"], a["req_number"]
root = Path(os.environ.get("AGOG_WORKTREE") or ".")
notice = {"agent": agent, "req_number": req, "attempt": a["attempt"], "status": "COMPLETE",
          "summary": f"{agent} worked on {req}"}
gate = a.get("gate")
if gate == "critique":
    notice["critique_verdict"] = "APPROVED"
elif gate == "qa":
    notice["tests_passed"] = True
elif gate == "deploy":
    notice.update(commit_sha="abc1234", deployed_by="berry (test)",
                  deployed_at=datetime.now(timezone.utc).isoformat())
elif agent == "roy":
    (root / "api.py").write_text("ROUTES = []\n")
    (root / "notes.txt").write_text("not listed\n")
    notice["files_created"] = ["api.py", "docs/never.md"]
elif agent == "jen":
    (root / "big.txt").write_text("".join("line %06d of a generated file\n" % i
                                          for i in range(int(os.environ["BIG_LINES"]))))
    notice["files_created"] = ["big.txt"]
print(json.dumps(notice))
"""
BIG_LINES = MAX_DIFF_BYTES * 3 // 2 // 32  # each line 32 bytes, one more with its "+"


def misreporting_settings(
    tmp_path: Path, nats_url: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """agogd on a fresh repository, every stage run by the MISREPORTING agents."""
    script = tmp_path / "agent.py"
    script.write_text(MISREPORTING)
    monkeypatch.setenv("BIG_LINES", str(BIG_LINES))
    return settings_for(
        nats_url,
        dsn,
        repo=make_repo(tmp_path / "repo"),
        data_dir=tmp_path / "data",
        runner_agents=["all"],
        runner_command=f"{sys.executable} {script}",
        runner_env=["BIG_LINES"],
    )


async def test_what_an_agent_did_not_list_and_a_diff_too_big_to_send(
    nats_server: NatsServer,
    nc: NATS,
    pg_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    req = "REQ-DIFF-2"
    settings = misreporting_settings(tmp_path, nats_server.url, pg_dsn, monkeypatch)
    async with running_agogd(settings) as daemon:
        url = daemon.http.url
        await submit(nc, req)
        await wait_status(pg_dsn, req, "DEPLOYED", timeout=120)
        history = await wait_committed(url, req, "jen")
        roy = attempt_of(history, "roy")["commit"]
        assert roy["files"] == [
            {"path": "api.py", "status": "added"},
            {"path": "notes.txt", "status": "added"},
        ]
        assert roy["unlisted"] == ["notes.txt"] and roy["missing"] == ["docs/never.md"]
        assert attempt_of(history, "cynthia")["commit"]["sha"] is None  # wrote nothing

        shown = await ctl(url, "req", "show", req)
        assert shown.returncode == 0, shown.stderr
        section = branch_section(shown.stdout.splitlines())
        [at] = [i for i, x in enumerate(section) if x.split()[1:2] == ["roy"]]
        assert section[at].split()[3:] == [roy["sha"][:7], "2", "files"]
        assert section[at + 1].strip() == "changed but not listed: notes.txt"
        assert section[at + 2].strip() == "listed but unchanged: docs/never.md"

        # Jen's diff is beyond the cap: cut at a line's end, and said so.
        status, body = await get(url, f"/api/reqs/{req}/diff?stage=jen")
        assert status == 200 and body["truncated"] is True
        sent = body["diff"].encode()
        assert MAX_DIFF_BYTES - 100 < len(sent) <= MAX_DIFF_BYTES < body["bytes"]
        assert body["diff"].endswith(" of a generated file\n")
        assert body["diff"].startswith("diff --git a/big.txt b/big.txt\n")
        done = await ctl(url, "req", "diff", req, "--stage", "jen")
        assert done.returncode == 0 and done.stdout == body["diff"]
        assert "(truncated)" in done.stderr


async def test_without_agog_repo_there_is_no_branch_and_the_diff_says_why(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    req = "REQ-DIFF-3"
    async with running_agogd(settings_for(nats_server.url, pg_dsn)) as daemon:
        url = daemon.http.url
        await submit(nc, req)  # no agents: it waits at Cynthia's stage
        deadline = time.monotonic() + 30
        while (await get(url, f"/api/reqs/{req}"))[0] != 200:
            assert time.monotonic() < deadline, f"{req} never arrived"
            await asyncio.sleep(0.05)
        for path in (f"/api/reqs/{req}/diff", f"/api/reqs/{req}/diff?stage=roy"):
            status, body = await get(url, path)
            assert status == 404 and body == {"error": BRANCHES_OFF, "code": "not_found"}
        assert BRANCHES_OFF == "branches are off: AGOG_REPO is not set"
        # A bad request is still told so first.
        status, body = await get(url, "/api/reqs/REQ-a.b/diff")
        assert status == 400
        status, body = await get(url, f"/api/reqs/{req}/diff?stage=nobody")
        assert status == 400
        _, history = await get(url, f"/api/reqs/{req}")
        assert history["branch"] is None
        assert all(a["commit"] is None for a in history["attempts"])
        done = await ctl(url, "req", "diff", req)
        assert done.returncode == 4 and BRANCHES_OFF in done.stderr and done.stdout == ""
        shown = await ctl(url, "req", "show", req)
        assert shown.returncode == 0 and "branch " not in shown.stdout


def test_a_diff_is_cut_at_a_lines_end_and_shown_escaped() -> None:
    text = "".join(f"+line {i}\n" for i in range(10))
    assert capped(text, 1000) == (text, len(text), False)
    cut, size, truncated = capped(text, 20)
    assert (cut, size, truncated) == ("+line 0\n+line 1\n", len(text), True)
    # No line's end within the cap: its bytes, and never half a character.
    assert capped("ééé", 3) == ("é", 6, True)
    # An agent's escape sequence is shown, not obeyed; tabs stay tabs.
    evil = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\tv\n+\x1b]0;pwned\x07new\n"
    plain = diff_lines(evil, Painter(False))
    assert plain[-2:] == ["-old\tv", "+\\x1b]0;pwned\\x07new"]
    painted = diff_lines(evil, Painter(True))
    assert painted[0] == "\x1b[1mdiff --git a/x b/x\x1b[0m"
    assert painted[2] == "\x1b[1m+++ b/x\x1b[0m"  # a file's header, not an addition
    assert painted[3].startswith("\x1b[36m@@") and painted[4].startswith("\x1b[31m-old")
    assert painted[5] == "\x1b[32m+\\x1b]0;pwned\\x07new\x1b[0m"


def test_show_says_where_the_worktree_went_and_what_is_not_committed() -> None:
    body = {
        "req_number": "REQ-X-1",
        "status": "IN_PROGRESS",
        "current_stage": 2,
        "branch": {
            "name": "agog/REQ-X-1",
            "base": "0123456789abcdef",
            "worktree": "/data/worktrees/REQ-X-1",
            "removed_at": "2026-01-02T03:04:05+00:00",
            "removed_reason": "not touched for 14 days",
        },
        "attempts": [
            {"stage": 0, "agent": "cynthia", "attempt": 1, "status": "COMPLETE", "commit": None},
            {
                "stage": 2,
                "agent": "roy",
                "attempt": 1,
                "status": "RUNNING",
                "commit": {"sha": None, "files": [], "committed_at": None},
            },
        ],
    }
    lines = branch_section(req_detail(body, Painter(False)))
    assert lines[0].startswith("branch agog/REQ-X-1  from 0123456  worktree removed 2026-01-0")
    assert lines[0].endswith(" (not touched for 14 days)")
    # An attempt from before AGOG_REPO has no row; a running one is not committed yet.
    assert [x.split() for x in lines[2:]] == [["2", "roy", "1", "-", "not", "committed"]]
