"""agogd's image, built from the project's own Dockerfile and run.

`scripts/build-image` (as an operator runs it) makes the local Debian base with
mmdebstrap, cached across runs in /var/tmp/agogd-image-cache, and builds the
image on podman, with sentinel secrets in its environment. The image then
runs on the host network against a real nats-server and PostgreSQL: as its
non-root user, its HEALTHCHECK passing, ready, and draining on SIGTERM. Its
history, config and every layer's files are scanned for secrets, and the
scanner is shown to catch a secret planted in a throwaway layer.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import tarfile
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from orchestrator.embedded import NatsServer, PostgresServer
from orchestrator.embedded.daemon_proc import DaemonProcess
from orchestrator.embedded.engine import BUSYBOX_IMAGE, ContainerEngine
from orchestrator.embedded.procs import free_port

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
TAG = f"localhost/agogd-image-test:{VERSION}-{os.getpid()}"

# The first run makes the Debian base (about 2 minutes) and installs agogd's
# dependencies from PyPI; later runs reuse the base and podman's layer cache.
pytestmark = pytest.mark.timeout(1800)

# In the build's environment: none of them may reach the image.
SENTINELS = {
    "AGOG_API_TOKEN": f"sentinel-api-token-{secrets.token_hex(8)}",
    "AGOG_POSTGRES_PASSWORD": f"sentinel-pg-password-{secrets.token_hex(8)}",
    "AGOG_NATS_PASSWORD": f"sentinel-nats-password-{secrets.token_hex(8)}",
    "AGOG_GITHUB_TOKEN": f"ghp_{secrets.token_hex(18)}",
}

# Secret-looking contents: a private key with its body, forge and cloud tokens.
SECRET_CONTENT = re.compile(
    rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----\s*[A-Za-z0-9+/=\r\n]{64}"
    rb"|\bgh[pousr]_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{60,}"
    rb"|\bglpat-[A-Za-z0-9_-]{20,}|\bAKIA[0-9A-Z]{16}\b|\bxox[abposr]-[A-Za-z0-9-]{10,}"
)
# Literals one of which each SECRET_CONTENT match holds: a fast filter first.
SECRET_LITERALS = (
    *(b"PRIVATE KEY-----", b"github_pat_", b"glpat-", b"AKIA"),
    *(b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_", b"xoxa-", b"xoxb-", b"xoxp-", b"xoxo-"),
    *(b"xoxs-", b"xoxr-"),
)
# Files that hold secrets by their nature.
SECRET_FILE = re.compile(
    r"(?:^|/)(?:\.env(?:\.[^/]+)?|id_(?:rsa|dsa|ecdsa|ed25519)|\.git-credentials|\.netrc"
    r"|\.pypirc|\.pgpass|pgpass|nats-credentials\.json|[^/]+\.key)$"
)
# Debian's files that embed public test keys (not secrets), by path pattern.
PUBLIC_TEST_KEYS = {
    "usr/lib/*-linux-gnu/libgnutls.so.*": "GnuTLS's self-test (FIPS known-answer) keys",
}
# An AGOG_* secret setting given a value (history, config).
SECRET_SETTING = re.compile(r"AGOG_\w*(?:PASSWORD|TOKEN|SECRET)\w*=(?=[^\s\"'])")


def run(
    engine: ContainerEngine, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """One command with the engine's podman configuration; its output is kept."""
    return subprocess.run(
        list(args),
        env={**engine.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def inspect(engine: ContainerEngine, *args: str) -> dict:
    return json.loads(engine.podman(*args))[0]


# ---------------------------------------------------------------------------
# the secret scanner


def scan_image(
    engine: ContainerEngine, image: str, work: Path, sentinels: dict[str, str]
) -> list[str]:
    """Every secret-looking thing in the image's history, config and layers
    (files a later layer deletes included), named without its value."""
    found: list[str] = []
    values = {name: value.encode() for name, value in sentinels.items()}

    def check_text(where: str, text: str) -> None:
        for name, value in sentinels.items():
            if value in text:
                found.append(f"{where}: sentinel {name}")
        if SECRET_SETTING.search(text):
            found.append(f"{where}: an AGOG_* secret setting with a value")
        if SECRET_CONTENT.search(text.encode()):
            found.append(f"{where}: secret-looking content")

    history = json.loads(engine.podman("history", "--no-trunc", "--format", "json", image))
    for i, step in enumerate(history):
        check_text(f"history[{i}]", f"{step.get('CreatedBy', '')} {step.get('comment', '')}")
    config = inspect(engine, "image", "inspect", image)["Config"]
    for entry in config.get("Env") or []:
        check_text("config env", entry)
    check_text("config labels", json.dumps(config.get("Labels") or {}))

    archive = work / "image.tar"
    saved = run(engine, "podman", "save", "--format", "docker-archive", "-o", str(archive), image)
    assert saved.returncode == 0, saved.stderr
    try:
        with tarfile.open(archive) as outer:
            layers = [m for m in outer.getmembers() if m.isfile() and m.name.endswith(".tar")]
            assert layers, "podman save wrote no layer"
            for member in layers:
                layer = outer.extractfile(member)
                assert layer is not None
                with tarfile.open(fileobj=layer) as files:
                    for item in files:
                        where = f"layer {member.name[:12]}: /{item.name.lstrip('./')}"
                        if SECRET_FILE.search(item.name) and not item.isdir():
                            found.append(f"{where}: a secret file by its name")
                        if not item.isfile():
                            continue
                        body = files.extractfile(item)
                        data = body.read() if body is not None else b""
                        for name, value in values.items():
                            if value in data:
                                found.append(f"{where}: sentinel {name}")
                        path = item.name.lstrip("./")
                        public = any(fnmatch(path, known) for known in PUBLIC_TEST_KEYS)
                        suspect = any(literal in data for literal in SECRET_LITERALS)
                        if suspect and not public and SECRET_CONTENT.search(data):
                            found.append(f"{where}: secret-looking content")
    finally:
        archive.unlink(missing_ok=True)
    return found


# ---------------------------------------------------------------------------
# the image, built as an operator builds it


@pytest.fixture(scope="module")
def image(container_engine: ContainerEngine) -> Iterator[str]:
    """agogd's image from `scripts/build-image` on the local Debian base."""
    built = run(
        container_engine,
        str(REPO / "scripts" / "build-image"),
        "--base",
        "local",
        "--tag",
        TAG,
        timeout=1700,
        env=SENTINELS,
    )
    assert built.returncode == 0, f"scripts/build-image failed:\n{built.stderr[-4000:]}"
    assert built.stdout.strip().splitlines()[-1] == TAG, built.stdout
    yield TAG
    container_engine.podman("image", "rm", TAG, check=False)


def test_image_is_built_from_the_local_debian_base(
    image: str, container_engine: ContainerEngine
) -> None:
    history = json.loads(
        container_engine.podman("history", "--no-trunc", "--format", "json", image)
    )
    assert any("agogd base: mmdebstrap bookworm" in step.get("comment", "") for step in history)
    probe = run(
        container_engine,
        *("podman", "run", "--rm", image, "sh", "-c"),
        ". /etc/os-release && echo $VERSION_CODENAME && readlink -f /opt/agogd/bin/python"
        " && python -c 'import sys; print(sys.version_info[:2])' && git --version",
    )
    assert probe.returncode == 0, probe.stderr
    codename, interpreter, version, git = probe.stdout.split("\n")[:4]
    assert (codename, interpreter, version) == ("bookworm", "/usr/bin/python3.11", "(3, 11)")
    assert git.startswith("git version ")
    # Berry's and Miki's Compose binary runs in the image (of its architecture).
    compose = run(container_engine, "podman", "run", "--rm", image, "docker-compose", "version")
    assert compose.returncode == 0 and "Docker Compose version v2." in compose.stdout, compose


def test_image_runs_as_its_non_root_user(image: str, container_engine: ContainerEngine) -> None:
    config = inspect(container_engine, "image", "inspect", image)["Config"]
    assert config["User"] == "10001:10001"
    ids = run(container_engine, "podman", "run", "--rm", image, "id", "-u", "-n")
    assert ids.returncode == 0, ids.stderr
    assert ids.stdout.strip() == "agogd"
    uid = run(container_engine, "podman", "run", "--rm", image, "id", "-u")
    assert uid.stdout.strip() == "10001"


def test_image_reaches_ready_on_real_servers_passes_its_healthcheck_and_drains_on_sigterm(
    image: str,
    container_engine: ContainerEngine,
    nats_server: NatsServer,
    postgres_server: PostgresServer,
    pg_dsn: str,
    daemons: list[DaemonProcess],
) -> None:
    meta = inspect(container_engine, "image", "inspect", image)
    check = meta.get("Healthcheck") or meta["Config"].get("Healthcheck")  # podman, docker
    assert check and "/healthz" in " ".join(check["Test"]), meta
    dsn = urlsplit(pg_dsn)
    assert dsn.username is not None
    port = free_port()
    env = {
        "AGOG_NATS_URL": nats_server.url,
        # No passfile inside the container: the password comes by environment.
        "AGOG_POSTGRES_DSN": f"postgresql://{dsn.username}@{dsn.hostname}:{dsn.port}{dsn.path}",
        "AGOG_POSTGRES_PASSWORD": postgres_server.password(dsn.username),
        "AGOG_HTTP_PORT": str(port),
        "AGOG_HEALTH_INTERVAL": "0.2",
        "AGOG_BACKOFF_MAX": "1",
        "AGOG_LOG_FORMAT": "json",
        "AGOG_SHUTDOWN_GRACE": "10",
    }
    name = f"agogd-image-test-{os.getpid()}-{port}"
    # `--env NAME` passes the value from podman's environment: never in argv.
    passed = [f"--env={key}" for key in env]
    command = ("podman", "run", "--name", name, "--network", "host", *passed, image)
    d = DaemonProcess(
        {**env, "CONTAINERS_CONF": container_engine.env["CONTAINERS_CONF"]}, command=command
    )
    daemons.append(d.start())
    try:
        d.wait_ready(timeout=120)
        status, body = d.get("/readyz")
        assert status == 200, body
        assert set(body["checks"].values()) == {"ok"}, body
        assert d.get("/healthz") == (200, {"status": "alive"})
        assert run(container_engine, "podman", "exec", name, "id", "-u").stdout.strip() == "10001"
        health = run(container_engine, "podman", "healthcheck", "run", name)
        assert health.returncode == 0, health.stdout + health.stderr
        state = inspect(container_engine, "container", "inspect", name)["State"]
        assert (state.get("Health") or state.get("Healthcheck"))["Status"] == "healthy", state

        stopped = run(container_engine, "podman", "stop", "--time", "60", name, timeout=90)
        assert stopped.returncode == 0, stopped.stderr
        assert d.wait_exit(timeout=60) == 0
        events = [e["event"] for e in d.events]
        assert (
            events.index("agogd.stopping")
            < events.index("readiness.draining")
            < events.index("agogd.stopped")
        ), events
        assert inspect(container_engine, "container", "inspect", name)["State"]["ExitCode"] == 0
        # The password reached agogd by environment only: never in a log line.
        assert env["AGOG_POSTGRES_PASSWORD"] not in "\n".join(d.lines)
    finally:
        container_engine.podman("rm", "--force", name, check=False)


def test_no_secret_in_any_layer_of_the_image(
    image: str, container_engine: ContainerEngine, tmp_path: Path
) -> None:
    assert scan_image(container_engine, image, tmp_path, SENTINELS) == []


# ---------------------------------------------------------------------------
# each check can fail


def test_scanner_catches_secrets_planted_in_a_throwaway_layer(
    image: str, container_engine: ContainerEngine, tmp_path: Path
) -> None:
    """A secret written by one layer and deleted by the next is still caught,
    as are a private key file and a secret set as ENV."""
    context = tmp_path / "context"
    context.mkdir()
    body = secrets.token_bytes(240)
    key = b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + base64.encodebytes(body)
    (context / "deploy_key").write_bytes(key + b"-----END OPENSSH PRIVATE KEY-----\n")
    token, github = SENTINELS["AGOG_API_TOKEN"], SENTINELS["AGOG_GITHUB_TOKEN"]
    (context / "Dockerfile").write_text(
        f"FROM {image}\n"
        "USER 0\n"
        "COPY deploy_key /root/.ssh/id_ed25519\n"
        f"RUN printf 'AGOG_API_TOKEN=%s\\nGH=%s\\n' {token} {github} > /root/.env\n"
        "RUN rm /root/.env /root/.ssh/id_ed25519\n"
        f"ENV AGOG_NATS_PASSWORD={SENTINELS['AGOG_NATS_PASSWORD']}\n"
    )
    planted = f"localhost/agogd-image-test-planted:{os.getpid()}"
    built = run(
        container_engine,
        *("podman", "build", "--pull=never", "--format", "docker", "-t", planted, str(context)),
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    try:
        found = scan_image(container_engine, planted, tmp_path, SENTINELS)
    finally:
        container_engine.podman("image", "rm", planted, check=False)
    text = "\n".join(found)
    assert re.search(r"history\[\d+\]: sentinel AGOG_API_TOKEN", text), text
    assert "config env: sentinel AGOG_NATS_PASSWORD" in text, text
    assert "config env: an AGOG_* secret setting with a value" in text, text
    assert re.search(r"/root/\.env: a secret file by its name", text), text
    assert re.search(r"/root/\.env: sentinel AGOG_API_TOKEN", text), text
    assert re.search(r"/root/\.env: secret-looking content", text), text  # the ghp_ token
    assert re.search(r"/root/\.ssh/id_ed25519: a secret file by its name", text), text
    assert re.search(r"/root/\.ssh/id_ed25519: secret-looking content", text), text
    assert token not in text, "a finding names the secret, never its value"


def test_dockerignore_keeps_secrets_out_of_the_build_context(
    container_engine: ContainerEngine, tmp_path: Path
) -> None:
    """The project's .dockerignore, as the engine applies it: .env files and
    local credentials never reach the build, .env.example does."""
    context = tmp_path / "context"
    context.mkdir()
    (context / ".dockerignore").write_text((REPO / ".dockerignore").read_text())
    planted = {
        ".env": "AGOG_API_TOKEN=" + SENTINELS["AGOG_API_TOKEN"],
        ".env.production": "AGOG_POSTGRES_PASSWORD=" + SENTINELS["AGOG_POSTGRES_PASSWORD"],
        "nats-credentials.json": json.dumps({"agogd": SENTINELS["AGOG_NATS_PASSWORD"]}),
        ".git/config": "[credential]\n",
        ".venv/pyvenv.cfg": "home = /usr/bin\n",
    }
    for relative, text in planted.items():
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        (context / relative).write_text(text)
    (context / ".env.example").write_text("AGOG_API_TOKEN=\n")
    (context / "pyproject.toml").write_text("[project]\n")
    (context / "Dockerfile").write_text(f"FROM {BUSYBOX_IMAGE}\nCOPY . /ctx/\n")
    tag = f"localhost/agogd-image-test-context:{os.getpid()}"
    built = run(container_engine, "podman", "build", "--pull=never", "-t", tag, str(context))
    assert built.returncode == 0, built.stderr
    try:
        listing = run(container_engine, "podman", "run", "--rm", tag, "ls", "-a", "/ctx")
    finally:
        container_engine.podman("image", "rm", tag, check=False)
    assert listing.returncode == 0, listing.stderr
    names = set(listing.stdout.split())
    assert {".env.example", "pyproject.toml", "Dockerfile"} <= names, names
    assert not names & {".env", ".env.production", "nats-credentials.json", ".git", ".venv"}, names
