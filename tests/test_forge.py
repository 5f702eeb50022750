"""Berry's forge layer against a local forge: real clients, real git, real checks.

The clients (githubkit for GitHub, aiohttp for Gitea) talk HTTP to
``ForgeServer``; ``git push`` goes through the real ``git http-backend`` into
a bare repository. The GitHub flavour checks every request and response
against GitHub's official OpenAPI description, so each flow here also proves
the client's calls and the stand-in's answers are GitHub's shapes: every
test ends with no violation (the fixture checks), except those that make one
on purpose. Without the description (``scripts/github-openapi``) the GitHub
tests fail and say so; they are never skipped.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from orchestrator.embedded.forge import ForgeServer, SpecMissing
from tests.forge_helpers import BRANCH, TOKEN, Repos, config_for, make_repos
from workers.adapters.forge import (
    NO_TOKEN,
    Forge,
    ForgeConfig,
    ForgeError,
    derive_git_url,
    make_forge,
)
from workers.adapters.forge.base import status_state, summarise
from workers.adapters.forge.github import check_run_state

FLAVOURS = ["github", "gitea"]


@pytest.fixture
def repos(tmp_path: Path) -> Repos:
    return make_repos(tmp_path)


@pytest.fixture(params=FLAVOURS)
async def server(request: pytest.FixtureRequest, repos: Repos) -> AsyncIterator[ForgeServer]:
    forge = await ForgeServer(request.param, repos.bare, token=TOKEN).start()
    yield forge
    await forge.stop()
    assert forge.violations == [], "the forge saw calls or answers off GitHub's shapes"


@pytest.fixture
async def github(repos: Repos) -> AsyncIterator[ForgeServer]:
    forge = await ForgeServer("github", repos.bare, token=TOKEN).start()
    yield forge
    await forge.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[Forge]]:
    """Clients a test makes (append them): closed after it."""
    made: list[Forge] = []
    yield made
    for client in made:
        await client.aclose()


@pytest.fixture
def client(server: ForgeServer, clients: list[Forge]) -> Forge:
    forge = make_forge(config_for(server, labels=("agog", "berry"), reviewers=("alice",)))
    clients.append(forge)
    return forge


async def push(repos: Repos, forge: Forge, *refs: str) -> tuple[int, str, str]:
    argv = ["push", forge.git_url(), *refs]
    assert TOKEN not in " ".join(argv) and TOKEN not in forge.git_url()
    return await repos.git(*argv, env=forge.git_env())


# -- git over smart HTTP ---------------------------------------------------


async def test_a_real_push_lands_in_the_bare_repository(
    server: ForgeServer, client: Forge, repos: Repos
) -> None:
    assert client.git_url() == server.git_url
    code, _, err = await push(repos, client, "main", BRANCH)
    assert code == 0, err
    assert repos.bare_sha(f"refs/heads/{BRANCH}") == repos.git_sync("rev-parse", BRANCH)
    assert repos.bare_sha("refs/heads/main") == repos.git_sync("rev-parse", "main")
    pushes = [e for e in server.git_log if e["path"].endswith("git-receive-pack")]
    assert pushes and all(e["user"] == "x-access-token" and e["status"] == 200 for e in pushes)


async def test_a_push_with_a_wrong_token_is_refused(
    server: ForgeServer, repos: Repos, clients: list[Forge]
) -> None:
    wrong = make_forge(config_for(server, token="not-the-token"))
    clients.append(wrong)
    code, _, err = await push(repos, wrong, BRANCH)
    assert code != 0
    assert "Authentication failed" in err or "could not read Username" in err, err
    assert repos.bare_sha(f"refs/heads/{BRANCH}") is None
    assert server.git_log and all(e["status"] == 401 for e in server.git_log)


async def test_a_push_without_a_token_is_refused(
    server: ForgeServer, repos: Repos, clients: list[Forge]
) -> None:
    anonymous = make_forge(config_for(server, token=None))
    clients.append(anonymous)
    assert anonymous.git_env() == {}
    code, _, _ = await push(repos, anonymous, BRANCH)
    assert code != 0 and repos.bare_sha(f"refs/heads/{BRANCH}") is None


async def test_big_pushes_stream_and_gzipped_fetches_work(
    github: ForgeServer, repos: Repos, clients: list[Forge]
) -> None:
    """A pack over git's post buffer goes chunked; a fetch asking for many
    refs sends a gzipped request body, which http-backend itself undoes."""
    forge = make_forge(config_for(github))
    clients.append(forge)
    (repos.work / "big.bin").write_bytes(bytes(range(256)) * 8192 + b"x" * 1_500_000)
    repos.git_sync("add", "big.bin")
    repos.git_sync("commit", "-qm", "big")
    for i in range(40):
        repos.git_sync("commit", "-q", "--allow-empty", "-m", f"step {i}")
        repos.git_sync("branch", f"many/{i:02d}")
    code, _, err = await push(repos, forge, "main", BRANCH, "refs/heads/many/*:refs/heads/many/*")
    assert code == 0, err
    clone = repos.home / "clone"
    code, _, err = await repos.git("clone", "-q", forge.git_url(), str(clone), env=forge.git_env())
    assert code == 0, err
    assert (clone / "README.md").read_text() == "app\n"
    assert any(e["encoding"] == "gzip" for e in github.git_log), github.git_log
    assert github.violations == []


# -- pull requests ---------------------------------------------------------


async def test_a_pull_request_is_opened_once_then_updated(
    server: ForgeServer, client: Forge, repos: Repos
) -> None:
    assert (await push(repos, client, "main", BRANCH))[0] == 0
    first = await client.ensure_pull_request(head=BRANCH, base="main", title="REQ-1", body="b1")
    assert (first.created, first.updated, first.head, first.base) == (True, False, BRANCH, "main")
    again = await client.ensure_pull_request(head=BRANCH, base="main", title="REQ-1", body="b1")
    assert again.number == first.number and not again.created and not again.updated
    changed = await client.ensure_pull_request(
        head=BRANCH, base="main", title="REQ-1 v2", body="b2"
    )
    assert changed.number == first.number and changed.updated and not changed.created
    assert first.url.endswith(f"/{first.number}") and first.url.startswith(server.url)
    [pull] = server.pulls
    assert (pull.title, pull.body, pull.labels) == ("REQ-1 v2", "b2", ["agog", "berry"])
    assert pull.pull is not None and pull.pull.reviewers == ["alice"]
    assert pull.pull.head_sha == repos.git_sync("rev-parse", BRANCH)
    assert len(server.calls("pulls/create")) == 1 and len(server.calls("pulls/update")) == 1


async def test_no_labels_or_reviewers_means_no_such_calls(
    server: ForgeServer, repos: Repos, clients: list[Forge]
) -> None:
    plain = make_forge(config_for(server))
    clients.append(plain)
    assert (await push(repos, plain, "main", BRANCH))[0] == 0
    await plain.ensure_pull_request(head=BRANCH, base="main", title="t", body="b")
    assert not server.calls("issues/add-labels") and not server.calls("pulls/request-reviewers")


@pytest.mark.parametrize("step", ["pulls/create", "issues/add-labels", "pulls/request-reviewers"])
async def test_a_retry_after_a_lost_answer_never_opens_a_second_pull_request(
    server: ForgeServer, client: Forge, repos: Repos, step: str
) -> None:
    """The forge did the work but the answer never came (a crash, a cut
    connection): the retry finds the pull request and finishes the job."""
    assert (await push(repos, client, "main", BRANCH))[0] == 0
    server.fail_next(step, after=True)
    with pytest.raises(ForgeError) as failed:
        await client.ensure_pull_request(head=BRANCH, base="main", title="t", body="b")
    assert failed.value.status == 500 and not failed.value.auth
    assert "(HTTP 500)" in str(failed.value)
    retried = await client.ensure_pull_request(head=BRANCH, base="main", title="t", body="b")
    assert not retried.created
    [pull] = server.pulls
    assert pull.labels == ["agog", "berry"] and pull.pull and pull.pull.reviewers == ["alice"]


async def test_an_already_existing_pull_request_is_found_after_create_refuses(
    server: ForgeServer, client: Forge, repos: Repos
) -> None:
    """The list missed it (a lagging replica): create answers "already
    exists" and the client lists again instead of failing."""
    assert (await push(repos, client, "main", BRANCH))[0] == 0
    first = await client.ensure_pull_request(head=BRANCH, base="main", title="t", body="b")
    misses = iter([True])

    def hide_once(op: str, status: int, body: Any) -> tuple[int, Any]:
        return (200, []) if op == "pulls/list" and next(misses, False) else (status, body)

    server.response_hook = hide_once
    again = await client.ensure_pull_request(head=BRANCH, base="main", title="t", body="b")
    assert again.number == first.number and not again.created
    assert len(server.pulls) == 1
    exists = 422 if server.flavour == "github" else 409  # each forge's "already exists"
    assert [c["status"] for c in server.calls("pulls/create")] == [201, exists]


async def test_a_pull_request_of_an_unpushed_branch_is_refused(
    server: ForgeServer, client: Forge, repos: Repos
) -> None:
    assert (await push(repos, client, "main"))[0] == 0
    with pytest.raises(ForgeError) as refused:
        await client.ensure_pull_request(head="never-pushed", base="main", title="t", body="b")
    assert refused.value.status == 422 and "opening the pull request" in str(refused.value)
    assert server.pulls == []


async def test_the_default_branch(server: ForgeServer, client: Forge, repos: Repos) -> None:
    assert await client.default_branch() == "main"


# -- CI status -------------------------------------------------------------


async def test_ci_status_none_pending_failure_success(server: ForgeServer, client: Forge) -> None:
    sha = "a" * 40
    assert (await client.ci_status(sha)).state == "none"
    server.set_status(sha, "lint", "pending", url="https://ci.test/lint/1")
    pending = await client.ci_status(sha)
    assert pending.state == "pending"
    assert [(c.name, c.state, c.url) for c in pending.checks] == [
        ("lint", "pending", "https://ci.test/lint/1")
    ]
    server.set_status(sha, "lint", "success", url="https://ci.test/lint/1")
    server.set_status(sha, "build", "failure", url="https://ci.test/build/7")
    red = await client.ci_status(sha)
    assert red.state == "failure"
    assert {(c.name, c.state, c.url) for c in red.checks} == {
        ("lint", "success", "https://ci.test/lint/1"),
        ("build", "failure", "https://ci.test/build/7"),
    }
    server.set_status(sha, "build", "error")
    assert (await client.ci_status(sha)).state == "failure"
    server.set_status(sha, "build", "success")
    green = await client.ci_status(sha)
    assert green.state == "success" and len(green.checks) == 2
    assert (await client.ci_status("b" * 40)).state == "none"  # per sha


@pytest.mark.parametrize(
    ("runs", "statuses", "expected"),
    [
        ([("tests", "success")], [], "success"),
        ([("tests", "neutral"), ("docs", "skipped")], [("lint", "success")], "success"),
        ([("tests", "in_progress")], [("lint", "success")], "pending"),
        ([("tests", "queued")], [], "pending"),
        ([("tests", "success")], [("lint", "pending")], "pending"),
        ([("tests", "failure"), ("e2e", "in_progress")], [], "failure"),
        ([("tests", "timed_out")], [], "failure"),
        ([("tests", "cancelled")], [], "failure"),
        ([("tests", "action_required")], [], "failure"),
        ([("tests", "success")], [("lint", "error")], "failure"),
    ],
)
async def test_github_ci_counts_check_runs_and_commit_statuses(
    github: ForgeServer,
    clients: list[Forge],
    runs: list[tuple[str, str]],
    statuses: list[tuple[str, str]],
    expected: str,
) -> None:
    forge = make_forge(config_for(github))
    clients.append(forge)
    sha = "c" * 40
    for name, state in runs:
        github.set_check(sha, name, state, url=f"https://ci.test/{name}")
    for context, state in statuses:
        github.set_status(sha, context, state, url=f"https://ci.test/{context}")
    status = await forge.ci_status(sha)
    assert status.state == expected
    names = {c.name for c in status.checks}
    assert names == {n for n, _ in runs} | {c for c, _ in statuses}
    for check in status.checks:
        assert check.url  # a link to each: the check run's page, or the status's target
    assert github.violations == []


# -- issues ----------------------------------------------------------------


async def test_an_issue_is_opened_once_then_commented_on(
    server: ForgeServer, client: Forge
) -> None:
    first = await client.ensure_issue(key="[REQ-1]", title="[REQ-1] deploy failed", body="log 1")
    assert first.created and first.url.endswith(f"/{first.number}")
    again = await client.ensure_issue(key="[REQ-1]", title="[REQ-1] deploy failed", body="log 2")
    assert again.number == first.number and not again.created
    other = await client.ensure_issue(key="[REQ-12]", title="tests red", body="x")
    assert other.created and other.number != first.number
    issues = {t.number: t for t in server.issues}
    assert issues[first.number].title == "[REQ-1] deploy failed"
    assert issues[first.number].body == "log 1" and issues[first.number].labels == ["agog", "berry"]
    assert [c.body for c in issues[first.number].comments] == ["log 2"]
    assert issues[other.number].title == "[REQ-12] tests red"  # the key goes in front


async def test_a_pull_request_is_never_taken_for_the_issue(
    server: ForgeServer, client: Forge, repos: Repos
) -> None:
    """GitHub lists pull requests among the issues: one titled with the key
    must not swallow the failure report."""
    assert (await push(repos, client, "main", BRANCH))[0] == 0
    pull = await client.ensure_pull_request(
        head=BRANCH, base="main", title="[REQ-1] the feature", body="b"
    )
    issue = await client.ensure_issue(key="[REQ-1]", title="[REQ-1] failed", body="why")
    assert issue.created and issue.number != pull.number
    assert [t.number for t in server.issues] == [issue.number]


async def test_a_retry_after_a_lost_answer_never_opens_a_second_issue(
    server: ForgeServer, client: Forge
) -> None:
    server.fail_next("issues/create", after=True)
    with pytest.raises(ForgeError):
        await client.ensure_issue(key="[REQ-3]", title="[REQ-3] failed", body="first")
    retried = await client.ensure_issue(key="[REQ-3]", title="[REQ-3] failed", body="first")
    assert not retried.created
    [issue] = server.issues
    assert issue.labels == ["agog", "berry"] and [c.body for c in issue.comments] == ["first"]


async def test_close_issue_comments_then_closes(server: ForgeServer, client: Forge) -> None:
    assert await client.close_issue(key="[REQ-4]", comment="none open") is None
    opened = await client.ensure_issue(key="[REQ-4]", title="[REQ-4] failed", body="x")
    closed = await client.close_issue(key="[REQ-4]", comment="fixed by the redeploy")
    assert closed is not None and closed.number == opened.number and not closed.created
    [issue] = server.issues
    assert issue.state == "closed" and issue.closed_at
    assert [c.body for c in issue.comments] == ["fixed by the redeploy"]
    assert await client.close_issue(key="[REQ-4]", comment="again") is None
    reopened = await client.ensure_issue(key="[REQ-4]", title="[REQ-4] failed again", body="y")
    assert reopened.created and reopened.number != opened.number


# -- tokens ----------------------------------------------------------------


async def _every_call(forge: Forge) -> list[ForgeError]:
    errors = []
    for call in (
        forge.default_branch(),
        forge.ensure_pull_request(head=BRANCH, base="main", title="t", body="b"),
        forge.ci_status("d" * 40),
        forge.ensure_issue(key="[REQ-9]", title="[REQ-9] x", body="b"),
        forge.close_issue(key="[REQ-9]", comment="c"),
    ):
        with pytest.raises(ForgeError) as failed:
            await call
        errors.append(failed.value)
    return errors


async def test_without_a_token_every_call_says_so(
    server: ForgeServer, clients: list[Forge]
) -> None:
    forge = make_forge(config_for(server, token=None))
    clients.append(forge)
    for error in await _every_call(forge):
        assert error.auth and error.status is None and str(error) == NO_TOKEN
    assert server.requests == []  # nothing was sent


@pytest.mark.parametrize("how", ["revoked", "wrong"])
async def test_a_refused_token_is_an_auth_error_that_never_shows_the_token(
    server: ForgeServer, clients: list[Forge], caplog: pytest.LogCaptureFixture, how: str
) -> None:
    token = TOKEN if how == "revoked" else "wrong-token-5d8e2a"
    forge = make_forge(config_for(server, token=token))
    clients.append(forge)
    if how == "revoked":
        server.revoke_token()
    caplog.set_level(logging.DEBUG)
    with capture_logs() as structured:
        errors = await _every_call(forge)
    for error in errors:
        assert error.auth and error.status == 401
        assert "the forge refused the token (HTTP 401)" in str(error)
    assert server.requests and all(r["status"] == 401 for r in server.requests)
    texts = [str(e) for e in errors] + [repr(e.args) for e in errors]
    texts += [repr(entry) for entry in structured]
    texts += [record.getMessage() for record in caplog.records]
    assert any("forge.call_failed" in t for t in texts)
    assert not [t for t in texts if token in t]


async def test_the_token_is_absent_from_logs_and_errors_end_to_end(
    server: ForgeServer, client: Forge, repos: Repos, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with capture_logs() as structured:
        assert (await push(repos, client, "main", BRANCH))[0] == 0
        await client.ensure_pull_request(head=BRANCH, base="main", title="t", body="b")
        await client.ensure_issue(key="[REQ-5]", title="[REQ-5] x", body="b")
        server.fail_next("repos/get-combined-status-for-ref")
        with pytest.raises(ForgeError) as failed:
            await client.ci_status("e" * 40)
        server.revoke_token()
        with pytest.raises(ForgeError) as refused:
            await client.ci_status("e" * 40)
    texts = [repr(e) for e in structured] + [r.getMessage() for r in caplog.records]
    texts += [str(failed.value), str(refused.value), repr(failed.value), repr(refused.value)]
    assert any("forge.pull_request" in t for t in texts)
    assert not [t for t in texts if TOKEN in t]
    assert refused.value.auth and not failed.value.auth and failed.value.status == 500


def test_the_token_stays_out_of_the_config_repr() -> None:
    config = ForgeConfig("github", "https://api.github.com", "agog/app", SecretStr(TOKEN))
    assert TOKEN not in repr(config) and TOKEN not in str(config)


# -- the checker catches bad shapes ----------------------------------------


async def _raw(
    server: ForgeServer, method: str, path: str, body: Any = None, **params: str
) -> tuple[int, Any]:
    headers = {"Authorization": f"token {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, server.api_url + path, json=body, params=params, headers=headers
        ) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


@pytest.mark.parametrize(
    ("body", "wrong"),
    [
        ({"titel": "t", "head": BRANCH, "base": "main"}, "'titel' was unexpected"),
        ({"title": "t", "head": 7, "base": "main"}, "7 is not of type 'string'"),
        ({"title": "t", "head": BRANCH}, "'base' is a required property"),
    ],
)
async def test_github_a_malformed_request_is_caught(
    github: ForgeServer, body: dict[str, Any], wrong: str
) -> None:
    status, answer = await _raw(github, "POST", "/repos/agog/app/pulls", body)
    assert status == 599 and wrong in answer["message"]
    [violation] = github.violations
    assert violation.startswith("pulls/create request:") and wrong in violation
    assert github.pulls == []


async def test_github_unknown_query_parameters_and_operations_are_caught(
    github: ForgeServer,
) -> None:
    status, _ = await _raw(github, "GET", "/repos/agog/app/pulls", state="open", heads="x")
    assert status == 599 and "'heads' is not defined" in github.violations[0]
    status, _ = await _raw(github, "GET", "/repos/agog/app/pulls", state="opened")
    assert status == 599 and "'opened' is not one of" in github.violations[1]
    status, _ = await _raw(github, "GET", "/repos/agog/app/pull-requests")
    assert status == 599 and "no operation of GitHub's API" in github.violations[2]
    status, _ = await _raw(github, "GET", "/repos/agog/app/releases")  # real, not served
    assert status == 501 and len(github.violations) == 3


async def test_github_a_malformed_response_is_caught(
    github: ForgeServer, repos: Repos, clients: list[Forge]
) -> None:
    forge = make_forge(config_for(github))
    clients.append(forge)
    assert (await push(repos, forge, "main", BRANCH))[0] == 0

    def misname(op: str, status: int, body: Any) -> tuple[int, Any]:
        if op == "pulls/create":
            body = dict(body)
            body["nummer"] = body.pop("number")
        return status, body

    github.response_hook = misname
    with pytest.raises(ForgeError) as failed:
        await forge.ensure_pull_request(head=BRANCH, base="main", title="t", body="b")
    assert failed.value.status == 599
    assert "'number' is a required property" in str(failed.value)
    [violation] = github.violations
    assert violation.startswith("pulls/create response:")

    def wrong_type(op: str, status: int, body: Any) -> tuple[int, Any]:
        if op == "repos/get-combined-status-for-ref":
            body = {**body, "total_count": "none"}
        return status, body

    github.response_hook = wrong_type
    with pytest.raises(ForgeError, match="599"):
        await forge.ci_status("f" * 40)
    assert "repos/get-combined-status-for-ref response" in github.violations[1]
    assert "'none' is not of type 'integer'" in github.violations[1]


@pytest.mark.parametrize(
    ("body", "wrong"),
    [
        ({"head": BRANCH, "base": "main"}, "'title' is required"),
        ({"titel": "t", "title": "t", "head": BRANCH, "base": "main"}, "'titel' is not a field"),
        ({"title": "t", "head": 7, "base": "main"}, "'head' must be str"),
    ],
)
async def test_gitea_a_malformed_request_is_caught(
    repos: Repos, body: dict[str, Any], wrong: str
) -> None:
    async with ForgeServer("gitea", repos.bare, token=TOKEN) as gitea:
        status, answer = await _raw(gitea, "POST", "/repos/agog/app/pulls", body)
        assert status == 599 and wrong in answer["message"]
        assert gitea.violations == [f"pulls/create request: request body: {wrong}"]


async def test_github_bad_credentials_have_githubs_error_body(github: ForgeServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(github.api_url + "/repos/agog/app") as resp,
    ):
        assert resp.status == 401
        body = await resp.json()
    assert body["message"] == "Bad credentials" and body["documentation_url"].startswith("https")


async def test_a_missing_description_fails_saying_how_to_install(repos: Repos) -> None:
    with pytest.raises(SpecMissing, match="run scripts/github-openapi"):
        await ForgeServer("github", repos.bare, token=TOKEN, spec=repos.home / "no.json").start()


# -- the pure parts --------------------------------------------------------


def test_git_urls_derive_from_the_api_url() -> None:
    assert derive_git_url("https://api.github.com", "o/r") == "https://github.com/o/r.git"
    assert derive_git_url("https://api.github.com/", "o/r") == "https://github.com/o/r.git"
    assert derive_git_url("https://ghe.test/api/v3", "o/r") == "https://ghe.test/o/r.git"
    assert derive_git_url("https://gitea.test/api/v1/", "o/r") == "https://gitea.test/o/r.git"
    config = ForgeConfig("gitea", "https://g.test/api/v1", "o/r", None, git_url="ssh://x/o/r")
    assert make_forge(config).git_url() == "ssh://x/o/r"


def test_git_env_sends_the_token_as_a_header_for_that_url_only() -> None:
    config = ForgeConfig("github", "https://api.github.com", "o/r", SecretStr(TOKEN))
    env = make_forge(config).git_env()
    assert env["GIT_CONFIG_COUNT"] == "1"
    assert env["GIT_CONFIG_KEY_0"] == "http.https://github.com/o/r.git.extraHeader"
    scheme, _, value = env["GIT_CONFIG_VALUE_0"].removeprefix("Authorization: ").partition(" ")
    assert scheme == "Basic" and base64.b64decode(value).decode() == f"x-access-token:{TOKEN}"


def test_a_config_names_a_known_forge_and_an_owner_name_repo() -> None:
    for kind, repo in (("gitlab", "o/r"), ("github", "o"), ("github", "o/r/x"), ("gitea", "../r")):
        with pytest.raises(ValueError):
            ForgeConfig(kind, "https://api.github.com", repo, None)  # type: ignore[arg-type]


def test_the_verdict_of_checks_and_states() -> None:
    assert check_run_state("completed", "success") == "success"
    assert check_run_state("completed", "skipped") == "success"
    assert check_run_state("completed", "stale") == "pending"
    assert check_run_state("queued", None) == "pending"
    assert check_run_state("completed", "startup_failure") == "failure"
    assert [status_state(s) for s in ("success", "pending", "failure", "error", "warning")] == [
        "success",
        "pending",
        "failure",
        "failure",
        "failure",
    ]
    assert summarise(()).state == "none"
