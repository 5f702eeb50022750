"""All of agogd's configuration in one place (``AGOG_*`` environment, ``.env``).

Secrets are ``SecretStr`` so that they never reach a log line or a repr.
A bad value becomes one readable line naming the variable (see
``describe_error``), never a traceback.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator.core import registry
from orchestrator.core.hosts import BadHost, split_host
from orchestrator.core.memory_kinds import Rule as MemoryRetention
from orchestrator.core.memory_kinds import check_kinds
from orchestrator.core.redact import redact_text

ENV_PREFIX = "AGOG_"


class Settings(BaseSettings):
    """agogd settings; each field is read from ``AGOG_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        env_ignore_empty=True,
    )

    # --- NATS ------------------------------------------------------------
    nats_url: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"],
        description="Comma-separated NATS server URLs.",
    )
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None
    nats_creds_file: Path | None = None
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    nats_connect_timeout: float = Field(default=5.0, gt=0)

    # --- Postgres (agent_memory) ----------------------------------------
    postgres_dsn: SecretStr = SecretStr("postgresql://agent_user@127.0.0.1:5434/agent_memory")
    postgres_password: SecretStr | None = None
    postgres_pool_min: int = Field(default=1, ge=0)
    postgres_pool_max: int = Field(default=10, ge=1)
    pg_bin_dir: Path | None = Field(
        default=None,
        description="Where pg_dump and pg_restore are (unset: pgserver's PostgreSQL 16, else"
        " PATH); a server newer than 16 needs its own.",
    )

    # --- backups of agogd's own state (agogctl backup, scheduled) ----------
    backup_schedule: str = Field(
        default="",
        description="How often the daemon backs agogd up (an interval: 30m, 6h, 1d; slots"
        " aligned to UTC midnight); one replica at a time. Empty: no scheduled backups.",
    )
    backup_dir: Path | None = Field(
        default=None,
        description="Where archives are written (scheduled, and agogctl backup create's"
        " default; unset: AGOG_DATA_DIR/backups).",
    )
    backup_keep: int = Field(
        default=7,
        ge=1,
        description="Archives kept in AGOG_BACKUP_DIR: after each scheduled backup the older"
        " ones are deleted.",
    )
    backup_verify_dsn: SecretStr | None = Field(
        default=None,
        description="A Postgres role that may CREATE DATABASE, for agogctl backup verify's"
        " scratch database (unset: agogd's own when it may, else agogd dev's superuser). Secret.",
    )

    # --- other services --------------------------------------------------
    docker_url: str = "unix:///var/run/docker.sock"
    ollama_url: str = "http://127.0.0.1:11434"

    # --- embeddings (deliverable memory) -----------------------------------
    embedding_provider: Literal["ollama", "local", "none"] = Field(
        default="ollama",
        description="ollama (HTTP, AGOG_OLLAMA_URL), local (all-MiniLM-L6-v2 in-process, "
        "offline; the embeddings-local extra) or none (full-text recall only).",
    )
    embedding_model: str = Field(
        default="nomic-embed-text",
        min_length=1,
        description="Ollama embedding model; the local provider always runs all-MiniLM-L6-v2.",
    )
    embedding_timeout: float = Field(
        default=30.0, gt=0, description="Seconds per embedding request to Ollama."
    )
    embedding_retries: int = Field(
        default=2, ge=0, le=10, description="Retries after a connection error or 5xx answer."
    )

    # --- pipeline and schema ---------------------------------------------------
    pipeline_file: Path | None = None
    stream_replicas: int | None = Field(
        default=None,
        ge=1,
        le=5,
        description="Copies of every JetStream stream (3 on a NATS cluster: R3), over the"
        " pipeline file's num_replicas (unset: the file's).",
    )
    migrations_dir: Path | None = Field(
        default=None, description="Directory of V*.sql migrations (default: the packaged ones)."
    )
    topology_allow_data_loss: bool = Field(
        default=False,
        description="Allow stream updates whose tighter limits would drop stored messages.",
    )
    consumer_backfill: float = Field(
        default=900.0,
        ge=0,
        description="Seconds of history a newly created durable consumer starts from.",
    )
    stage_timeouts: dict[str, float] = Field(
        default_factory=dict,
        description='JSON object of agent -> seconds, e.g. {"roy": 7200}.',
    )

    # --- workflow engine -----------------------------------------------------
    max_in_flight: int = Field(default=20, ge=1, description="REQs IN_PROGRESS at once.")
    prune_interval: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds between passes that delete bookkeeping rows no redelivery can need"
        " (processed messages past their stream's max_age, old published outbox rows).",
    )
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    notice_clock_margin: float = Field(
        default=2.0,
        ge=0,
        le=300,
        description="Seconds the NATS server's clock may lag Postgres's: a notice without an"
        " attempt counts as published before its stage's current attempt only when JetStream"
        " stored it more than this before the attempt was assigned.",
    )
    intake_max_pending: int = Field(
        default=1000,
        ge=0,
        description="P2/P3 REQs that may wait (PENDING) before further P2/P3 intake on NATS is"
        " refused (a flood); P0 and P1 are always taken. 0: no limit.",
    )
    owner_requests_file: Path | None = Field(
        default=None, description="OWNER_REQUESTS.md to watch (intake) and mirror (status)."
    )
    owner_requests_interval: float = Field(default=2.0, gt=0)
    timeout_scan_interval: float = Field(default=1.0, gt=0)
    dispatch_interval: float = Field(default=1.0, gt=0)
    outbox_poll_interval: float = Field(default=1.0, gt=0)
    consumer_batch: int = Field(default=64, ge=1, le=1000)
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token required for API actions (submit, decide...)."
    )
    api_read_auth: bool | None = Field(
        default=None,
        description="GETs under /api/ need the token too (/healthz, /readyz, /metrics stay open);"
        " unset: true when AGOG_HTTP_HOST is beyond loopback (see reads_need_token).",
    )

    # --- agent runner (off unless agents are listed, or demo) -------------
    runner_agents: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Agents whose processes this agogd spawns ('all' for every stage agent).",
    )
    runner_cli: Literal["claude", "codex", "gemini", "generic"] = Field(
        default="claude",
        description="The agent CLI profile every agent runs (claude, codex, gemini, generic).",
    )
    runner_clis: dict[str, Literal["claude", "codex", "gemini", "generic"]] = Field(
        default_factory=dict,
        description='JSON of agent -> CLI profile over runner_cli, e.g. {"roy": "codex"}.',
    )
    runner_cli_paths: dict[str, str] = Field(
        default_factory=dict,
        description='JSON of CLI -> executable, e.g. {"claude": "/opt/bin/claude"} (else PATH).',
    )
    runner_resume: bool = Field(
        default=True,
        description="On a rework or retry, the agent resumes its previous session of the REQ.",
    )
    runner_bypass_permissions: bool = Field(
        default=False,
        description="Let the CLIs skip their permission checks (their bypass flag).",
    )
    runner_transcript_bytes: int = Field(
        default=1024 * 1024,
        ge=4096,
        description="Bytes of each attempt's agent output kept (the last) for agogctl req logs.",
    )
    runner_command: str = Field(
        default="{agent}",
        description="The generic profile's argv template (split like a shell, run without one):"
        " {agent} {model} {role}.",
    )
    runner_commands: dict[str, str] = Field(
        default_factory=dict,
        description="JSON of agent -> argv template; such an agent runs the generic profile.",
    )
    runner_models: dict[str, str] = Field(
        default_factory=dict, description="JSON of agent -> model for {model}."
    )
    runner_default_model: str | None = Field(
        default=None, description="The model every agent asks for (unset: the CLI's default)."
    )
    budget_usd_per_req: float | None = Field(
        default=None,
        gt=0,
        description="What one REQ's agents may spend (USD); no attempt starts over it.",
    )
    budget_usd_per_stage: float | None = Field(
        default=None, gt=0, description="What one stage attempt may spend (USD), given to the CLI."
    )
    budget_usd_per_agent: dict[str, float] = Field(
        default_factory=dict,
        description="JSON of agent -> per-attempt budget (USD) over budget_usd_per_stage.",
    )
    runner_workdir: Path = Field(default=Path("."), description="Agents' working directory.")
    runner_env: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Names of environment variables passed on to agents (plus PATH, HOME...).",
    )
    runner_concurrency: int = Field(default=4, ge=1, le=256)
    runner_per_agent: int = Field(default=2, ge=1, le=256)
    runner_heartbeat_interval: float = Field(default=15.0, gt=0)
    runner_kill_grace: float = Field(default=10.0, gt=0)
    runner_output_limit: int = Field(default=4 * 1024 * 1024, ge=4096)
    demo: bool = Field(default=False, description="Run the built-in demo agents (dev only).")
    demo_delay: float = Field(default=1.0, ge=0)
    demo_reject: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Demo agents that reject or fail their first attempt (sylvia, billy).",
    )

    # --- health watch and self-healing (off unless projects are listed) ---
    heal_projects: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Compose projects whose containers are watched and restarted.",
    )
    heal_unhealthy_probes: int = Field(default=3, ge=1)
    heal_budget: int = Field(default=5, ge=1, description="Restarts per window, then escalate.")
    heal_window: float = Field(default=600.0, gt=0)
    heal_backoff_max: float = Field(default=60.0, gt=0)
    heal_reconcile_interval: float = Field(default=10.0, gt=0)

    # --- infrastructure report (Miki) ---------------------------------------
    infra_compose_files: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Compose files (comma-separated, one project each; 'base.yml+override.yml'"
        " for one project of several files) that the infrastructure report checks containers'"
        " mounts and networks against.",
    )
    infra_data_dirs: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Data directories (comma-separated) whose disk use the infrastructure"
        " report shows (`agogd dev`: its own nats and postgres directories).",
    )
    infra_report_timeout: float = Field(
        default=30.0, gt=0, description="Seconds each part of the infrastructure report may take."
    )

    # --- Berry's stage done natively (commit, test, deploy, rollback) ------
    berry_mode: Literal["agent", "native"] = Field(
        default="agent",
        description="'native': agogd runs Berry's stage itself; 'agent': an agent process does.",
    )
    berry_workspace: Path | None = Field(
        default=None, description="The git working tree Berry commits in and deploys from."
    )
    berry_author_name: str = "Berry (DevOps)"
    berry_author_email: str = "berry@agogsaas.ai"
    berry_coauthor_domain: str = "agogsaas.ai"
    berry_test_command: str = Field(
        default="", description="argv run in the workspace after the commit (split, no shell)."
    )
    berry_test_timeout: float = Field(default=1800.0, gt=0)
    berry_compose_files: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["docker-compose.app.yml"],
        description="Compose files (relative to the workspace) of the stack Berry deploys.",
    )
    berry_compose_project: str | None = None
    berry_services: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Services to deploy and check (default: all)."
    )
    berry_health_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="URLs that must answer 200 after a deploy."
    )
    berry_health_timeout: float = Field(default=120.0, gt=0)
    berry_deploy_timeout: float = Field(default=600.0, gt=0)
    berry_push_remote: str = Field(default="", description="git remote to push to ('' = none).")
    berry_release_tag: str = Field(
        default="", description="Tag template for a deployed REQ, e.g. 'release-{req}' ('' = none)."
    )
    berry_git_hooks: bool = Field(
        default=False,
        description="Let the workspace repository's git hooks run on Berry's git commands"
        " (off: agents can write hooks, and a hook is a command).",
    )
    berry_app_db_dsn: SecretStr | None = Field(
        default=None,
        description="The app database Berry backs up (pg_dump) before a production deploy"
        " that adds migrations, and `agogctl deploy restore-db` restores (unset: none). Secret.",
    )
    berry_staging: bool = Field(
        default=False,
        description="Deploy to a staging stack first, smoke-test it, then promote the same"
        " images to production (off: one environment, production).",
    )
    berry_staging_project: str | None = Field(
        default=None,
        description="The staging stack's compose project (unset: production's + '-staging').",
    )
    berry_staging_env_file: Path = Field(
        default=Path(".env.staging"),
        description="The staging stack's env file, relative to the workspace (its ports;"
        " production's is .env).",
    )
    berry_smoke_tests: list[dict[str, Any]] = Field(
        default_factory=list,
        description="JSON list of smoke tests run after each healthy deploy: {name, command}"
        " or {name, url, status, contains}; ${VAR} comes from the environment's env file.",
    )
    berry_smoke_timeout: float = Field(
        default=60.0, gt=0, description="Seconds one smoke test may take (unless it says)."
    )
    berry_migrations_glob: str = Field(
        default="**/migrations/**/*.sql",
        description="git glob of migration files: a commit adding one gets a backup of the"
        " app database before production ('' = never).",
    )
    berry_backup_keep: int = Field(
        default=5, ge=1, description="Migration backups kept; older dump files are deleted."
    )
    berry_backup_timeout: float = Field(
        default=3600.0, gt=0, description="Seconds the app database's pg_dump may take."
    )
    berry_git_config: Path | None = Field(
        default=None,
        description="The only git config file outside the repository Berry's git reads"
        " (GIT_CONFIG_GLOBAL; unset: none). Keep it out of the workspace.",
    )

    # --- a branch and a git worktree per REQ (workers/branches) -----------
    repo: Path | None = Field(
        default=None,
        description="The git repository REQs branch from: each REQ gets a branch and a"
        " worktree of it, its agents run there and Berry integrates the branch (unset: every"
        " agent shares AGOG_RUNNER_WORKDIR, and Berry commits the files the deliverables list).",
    )
    integration_branch: str = Field(
        default="",
        description="The branch REQs start from and Berry integrates into ('' = the branch"
        " checked out in AGOG_REPO).",
    )
    branch_template: str = Field(
        default="agog/{req}", description="Each REQ's branch name; {req} is its number."
    )
    worktree_max_age_days: float = Field(
        default=14.0,
        gt=0,
        description="Days after its last stage commit a REQ's worktree is pruned, even if"
        " BLOCKED (the branch stays).",
    )
    worktree_prune_interval: float = Field(
        default=60.0, gt=0, description="Seconds between passes that remove finished worktrees."
    )
    berry_integrate: Literal["rebase", "merge"] = Field(
        default="rebase",
        description="How Berry brings a REQ's branch onto the integration branch's head:"
        " 'rebase' replays its commits, 'merge' merges the head into it.",
    )

    # --- the forge Berry pushes to (GitHub, Gitea/Forgejo) -----------------
    forge: Literal["", "github", "gitea"] = Field(
        default="", description="The forge: 'github' (or GitHub Enterprise), 'gitea' ('' = none)."
    )
    forge_url: str = Field(
        default="",
        description="The forge's API base ('' = https://api.github.com for github; Gitea:"
        " https://host/api/v1; GitHub Enterprise: https://host/api/v3).",
    )
    forge_git_url: str = Field(
        default="", description="The repository's clone URL over HTTPS ('' = from the API URL)."
    )
    forge_repo: str = Field(default="", description="owner/name of the repository on the forge.")
    forge_token: SecretStr | None = Field(
        default=None, description="The forge token (push, pull requests, statuses, issues)."
    )
    forge_push: Literal["branch", "integration"] = Field(
        default="branch",
        description="What Berry pushes: the REQ's branch (a pull request into the default"
        " branch) or the integration branch (a pull request only if it is not the default).",
    )
    forge_base: str = Field(
        default="", description="The pull requests' base branch ('' = the forge's default)."
    )
    forge_labels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Labels put on Berry's pull requests and issues."
    )
    forge_reviewers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Reviewers requested on Berry's pull requests."
    )
    forge_ci_timeout: float = Field(
        default=1800.0,
        ge=0,
        description="Seconds Berry waits for the pushed commit's CI to be green (0: no wait).",
    )
    forge_ci_poll: float = Field(default=15.0, gt=0, description="Seconds between CI polls.")

    # --- deliverable memory (recall for agents; see orchestrator/memory) ----
    memory_enabled: bool = Field(
        default=True,
        description="Remember deliverables and decisions, and give assignments their memories.",
    )
    memory_top_k: int = Field(
        default=5, ge=0, le=50, description="Memories in each stage assignment (0: none)."
    )
    memory_chunk_chars: int = Field(
        default=2000,
        ge=200,
        description="Longest memory row; longer texts are chunked (at most the provider's"
        " own limit).",
    )
    memory_max_chunks: int = Field(
        default=64, ge=1, description="Chunks kept of one memory (beyond: a warning and a mark)."
    )
    memory_embed_batch: int = Field(default=32, ge=1, le=1024, description="Rows per embed call.")
    memory_embed_interval: float = Field(
        default=5.0, gt=0, description="Seconds between backfill passes (NOTIFY wakes it sooner)."
    )
    memory_embed_retry_max: float = Field(
        default=300.0, gt=0, description="Longest back-off, in seconds, while the provider is down."
    )
    memory_context_ttl: float = Field(
        default=300.0, gt=0, description="Seconds before a live REQ's recalled memories are redone."
    )
    memory_context_interval: float = Field(
        default=2.0, gt=0, description="Seconds between checks for REQs whose recall is due."
    )
    memory_recall_candidates: int = Field(
        default=20, ge=10, le=1000, description="Candidates per method before fusion."
    )
    memory_exact_limit: int = Field(
        default=3000,
        ge=0,
        description="Filtered rows up to which vector recall scans exactly instead of HNSW.",
    )
    memory_ef_search: int = Field(
        default=100, ge=10, le=1000, description="HNSW ef_search for unfiltered recall."
    )
    memory_fulltext_cap: int = Field(
        default=500, ge=50, description="Most recent full-text matches that are ranked."
    )
    memory_min_similarity: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Cosine similarity below which a vector match is not recalled (unset: the"
        " provider's measured cut, 0.3 for the local model, else none).",
    )
    memory_retention: dict[str, MemoryRetention] = Field(
        default_factory=dict,
        description='JSON of kind -> {"max_age_days": N, "max_count": N}; "*" for every kind.',
    )
    memory_retention_interval: float = Field(
        default=3600.0, gt=0, description="Seconds between retention passes."
    )

    # --- HTTP, lifecycle, logging ----------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8090, ge=0, le=65535)
    shutdown_grace: float = Field(default=20.0, gt=0)
    health_interval: float = Field(default=2.0, gt=0)
    backoff_max: float = Field(default=30.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console", "auto"] = "json"
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop", description="The event loop: uvloop (libuv, faster) or asyncio's own."
    )

    # --- HTTP hardening (issue 15: rebinding, slow clients, live-event memory) ---
    http_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host headers accepted besides the loopback names and a non-wildcard"
        " AGOG_HTTP_HOST ('name' any port, 'name:port' that port; '*' any Host).",
    )
    http_header_timeout: float = Field(
        default=20.0,
        gt=0,
        description="Seconds a connection gets to send a whole request head (also the idle"
        " keep-alive limit between requests: above aiohttp clients' own 15 s, so that a"
        " client never reuses a connection the server is closing).",
    )
    http_body_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a request gets to send its whole body."
    )
    events_client_budget: int = Field(
        default=4 * 1024 * 1024,
        ge=64 * 1024,
        description="Bytes of live events (/api/events) one client may have waiting; past it"
        " the client is sent a final 'dropped' event and disconnected.",
    )

    # --- embedded default (agogd dev) ------------------------------------
    data_dir: Path = Path(".agogd")

    @field_validator(
        "runner_agents",
        "runner_env",
        "demo_reject",
        "heal_projects",
        "berry_compose_files",
        "berry_services",
        "berry_health_urls",
        "http_allowed_hosts",
        "forge_labels",
        "forge_reviewers",
        mode="before",
    )
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("infra_compose_files", "infra_data_dirs", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("http_allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry != "*":
                try:
                    split_host(entry)
                except BadHost as exc:
                    raise ValueError(f"{exc}: use host, host:port, [ipv6]:port or *") from None
        return value

    @field_validator("nats_url", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value

    @field_validator("nats_url")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one NATS URL is required")
        for url in value:
            if urlsplit(url).scheme not in ("nats", "tls", "ws", "wss"):
                raise ValueError(f"{redact_url(url)} is not a nats://, tls://, ws:// or wss:// URL")
        return value

    @field_validator("docker_url")
    @classmethod
    def _engine_off(cls, value: str) -> str:
        """'none' or 'off' means no container engine (Berry then does not deploy)."""
        return "" if value.strip().lower() in ("none", "off") else value.strip()

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("postgres_dsn", "backup_verify_dsn")
    @classmethod
    def _check_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in ("postgres", "postgresql"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("backup_schedule")
    @classmethod
    def _check_backup_schedule(cls, value: str) -> str:
        if value.strip():
            try:
                registry.parse_duration(value.strip())
            except registry.RegistryError as exc:
                raise ValueError(str(exc)) from None
        return value.strip()

    @field_validator("stage_timeouts")
    @classmethod
    def _check_timeouts(cls, value: dict[str, float]) -> dict[str, float]:
        for agent, seconds in value.items():
            if seconds <= 0:
                raise ValueError(f"timeout for {agent} must be positive")
        return value

    @field_validator("memory_retention")
    @classmethod
    def _check_retention(cls, value: dict[str, MemoryRetention]) -> dict[str, MemoryRetention]:
        check_kinds(value)
        return value

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if self.nats_password is not None and not self.nats_user:
            raise ValueError("AGOG_NATS_PASSWORD is set without AGOG_NATS_USER")
        if self.nats_creds_file is not None and not self.nats_creds_file.is_file():
            raise ValueError(f"AGOG_NATS_CREDS_FILE {self.nats_creds_file} does not exist")
        if bool(self.nats_tls_cert) != bool(self.nats_tls_key):
            raise ValueError("AGOG_NATS_TLS_CERT and AGOG_NATS_TLS_KEY go together")
        return self

    @field_validator("branch_template")
    @classmethod
    def _check_branch_template(cls, value: str) -> str:
        if "{req}" not in value:
            raise ValueError("must contain {req}: each REQ needs its own branch")
        try:
            value.format(req="REQ-1")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{req}} may be filled in ({exc})") from None
        return value

    @model_validator(mode="after")
    def _check_forge(self) -> Settings:
        if not self.forge:
            return self
        if self.repo is None:
            raise ValueError("AGOG_FORGE needs AGOG_REPO (Berry pushes the REQs' branches)")
        owner, _, name = self.forge_repo.partition("/")
        if not owner or not name or "/" in name:
            raise ValueError("AGOG_FORGE needs AGOG_FORGE_REPO as owner/name")
        if self.forge == "gitea" and not self.forge_url:
            raise ValueError("AGOG_FORGE=gitea needs AGOG_FORGE_URL (https://host/api/v1)")
        return self

    # --- derived ----------------------------------------------------------
    def load_pipeline(self) -> registry.Pipeline:
        """The canonical pipeline with this deployment's timeout and stream
        replica overrides."""
        pipeline = registry.load(self.pipeline_file, self.stage_timeouts)
        if self.stream_replicas is not None:
            pipeline = pipeline.with_stream_replicas(self.stream_replicas)
        return pipeline

    def dsn(self) -> str:
        """The Postgres DSN with the password filled in (never log this)."""
        raw = self.postgres_dsn.get_secret_value()
        if self.postgres_password is None:
            return raw
        parts = urlsplit(raw)
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{user}:{self.postgres_password.get_secret_value()}@{host}{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def public_dsn(self) -> str:
        """The Postgres DSN safe to print: no password."""
        return redact_url(self.postgres_dsn.get_secret_value())

    def backup_interval(self) -> float | None:
        """Seconds between scheduled backups (AGOG_BACKUP_SCHEDULE); None: off."""
        return registry.parse_duration(self.backup_schedule) if self.backup_schedule else None

    def backup_directory(self) -> Path:
        """Where archives go: AGOG_BACKUP_DIR, else AGOG_DATA_DIR/backups."""
        return self.backup_dir or self.data_dir / "backups"

    def public_nats_urls(self) -> str:
        """The NATS URLs safe to print: no password or token in any of them."""
        return ",".join(redact_url(u) for u in self.nats_url)

    def reads_need_token(self) -> bool:
        """Whether GETs under /api/ need the token: AGOG_API_READ_AUTH when set,
        else only when the API listens beyond loopback (anyone who can reach a
        wildcard or LAN address could read every REQ otherwise)."""
        if self.api_read_auth is not None:
            return self.api_read_auth
        return not is_loopback_host(self.http_host)


def is_loopback_host(host: str) -> bool:
    """Whether a listen address reaches this machine only (127.0.0.0/8, ::1,
    localhost); wildcards such as 0.0.0.0 and :: are not."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """Drop the password (and token-style user info) from a URL."""
    parts = urlsplit(url)
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    if parts.password is None and parts.scheme in ("nats", "tls", "ws", "wss"):
        user = "***"  # NATS takes a bare token in the user slot: a secret too
    netloc = f"{user}@{host}" if user else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def describe_error(exc: ValidationError | ValueError) -> str:
    """One line naming each offending variable, for the start-up error."""
    if not isinstance(exc, ValidationError):
        return redact_text(f"invalid settings: {exc}")
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "__root__"]
        message = err.get("msg", "invalid").removeprefix("Value error, ")
        if loc:
            name = ENV_PREFIX + loc[0].upper()
            parts.append(f"{name}: {message}")
        else:
            parts.append(message)
    return redact_text("invalid settings: " + "; ".join(parts))


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment and ``.env``; raises ValidationError."""
    return Settings(**overrides)
