"""``agogctl backup create/restore/verify``: agogd's own state in one archive.

Unlike the rest of agogctl these talk to Postgres and NATS directly, not to
agogd's API, so that they work with agogd stopped (a restore needs it
stopped). They find the servers as agogd does (its ``AGOG_*`` settings),
completed from ``agogd dev``'s data dir (``--data-dir``, ``AGOG_DATA_DIR``).

Exit codes: 0 done (verify: everything matched); 1 refused or failed (a
checksum, the schema version, a target that is not empty, verify found a
difference); 2 bad settings; 3 Postgres or NATS unreachable.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from orchestrator.backup import BackupError, Refused, Unreachable, restore_backup, verify_backup
from orchestrator.backup.setup import (
    ConfigError,
    Setup,
    create_and_record,
    load,
    log_to_stderr,
    servers_up,
)
from orchestrator.core.redact import redact_text
from orchestrator.core.safe_text import neutralise
from orchestrator.ctl.client import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE

F = TypeVar("F", bound=Callable[..., Any])


def _options(func: F) -> F:
    func = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="agogd dev's data dir: its servers and credentials (default: agogctl's"
        " --data-dir, else AGOG_DATA_DIR, else ./.agogd); AGOG_* settings win unless given.",
    )(func)


@click.group()
def backup() -> None:
    """Back up and restore agogd's own state: agent_memory, every agog_* stream
    with its consumers, and OWNER_REQUESTS.md. Talks to Postgres and NATS
    directly: works with agogd stopped. Exit 0 done, 1 refused or failed,
    2 bad settings, 3 a server unreachable."""


def _setup(ctx: click.Context, data_dir: Path | None) -> Setup:
    log_to_stderr()
    chosen = data_dir or (ctx.find_root().obj or {}).get("data_dir")
    return load(chosen)


def _run(setup: Setup, work: Any, as_json: bool) -> Any:
    """Run the command's coroutine with the servers up; a failure is one line
    (and a JSON object with --json) and its exit code, never a traceback."""
    try:
        with servers_up(setup):
            return asyncio.run(work())
    except BackupError as exc:
        _fail(exc, as_json)
    except Exception as exc:  # a server going away mid-way: one line, not a traceback
        _fail(BackupError(f"{type(exc).__name__}: {exc}"), as_json)


def _fail(exc: BackupError, as_json: bool) -> NoReturn:
    if isinstance(exc, ConfigError):
        code, kind = EXIT_USAGE, "config"
    elif isinstance(exc, Unreachable):
        code, kind = EXIT_UNREACHABLE, "unreachable"
    elif isinstance(exc, Refused):
        code, kind = EXIT_FAILED, "refused"
    else:
        code, kind = EXIT_FAILED, "failed"
    message = neutralise(redact_text(str(exc)))
    if as_json:
        click.echo(json.dumps({"ok": False, "error": message, "code": kind}, indent=2))
    click.echo(f"agogctl: {message}", err=True)
    sys.exit(code)


@backup.command("create")
@click.option(
    "--to",
    "to_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory to write the archive into (default: AGOG_BACKUP_DIR, else DATA_DIR/backups).",
)
@_options
@click.pass_context
def create(ctx: click.Context, to_dir: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Write one archive (agogd-backup-<UTC time>.tar) and print its path.
    agogd may keep running: the streams are snapshotted first, then Postgres
    is dumped (see docs/runbook.md, "Restore from backup")."""
    try:
        setup = _setup(ctx, data_dir)
    except BackupError as exc:
        _fail(exc, as_json)
    created = _run(setup, lambda: create_and_record(setup, to_dir), as_json)
    manifest = created.manifest
    if as_json:
        click.echo(json.dumps({"archive": str(created.archive), "manifest": manifest}, indent=2))
        return
    rows = sum(manifest["postgres"]["row_counts"].values())
    streams = manifest["nats"]["streams"]
    messages = sum(s["messages"] for s in streams.values())
    click.echo(str(created.archive))
    click.echo(
        f"agogctl: {created.bytes} bytes: {rows} rows (schema"
        f" {manifest['postgres']['schema_version']}), {len(streams)} streams with {messages}"
        f" messages, in {created.seconds:.1f}s",
        err=True,
    )


@backup.command("restore")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--force",
    is_flag=True,
    help="Replace what the servers hold (its streams and agogd's tables are deleted first).",
)
@_options
@click.pass_context
def restore(
    ctx: click.Context, archive: Path, force: bool, data_dir: Path | None, as_json: bool
) -> None:
    """Restore ARCHIVE onto empty servers, with agogd stopped. Checksums and
    the schema version are checked before anything is touched; servers that
    hold data are refused unless --force. Start agogd afterwards: it
    publishes again what the archive's streams lack."""
    try:
        setup = _setup(ctx, data_dir)
    except BackupError as exc:
        _fail(exc, as_json)
    settings = setup.settings
    done = _run(
        setup,
        lambda: restore_backup(
            setup.servers,
            archive,
            force=force,
            owner_requests_file=settings.owner_requests_file,
            migrations_dir=settings.migrations_dir,
        ),
        as_json,
    )
    if as_json:
        click.echo(json.dumps({"ok": True, **done.as_json()}, indent=2))
        return
    rows = sum(done.row_counts.values())
    messages = sum(s["messages"] for s in done.streams.values())
    lines = [f"restored {archive}: {rows} rows, {len(done.streams)} streams, {messages} messages"]
    if done.replaced:
        lines += [f"replaced (--force): {what}" for what in done.replaced]
    lines.append(
        f"outbox: {done.outbox.get('pending', 0)} message(s) agogd publishes when it starts"
        f" ({done.outbox.get('reset', 0)} published after the streams' snapshot)"
    )
    if done.owner_requests:
        lines.append(f"wrote {done.owner_requests}")
    lines += [f"note: {n}" for n in done.notes]
    click.echo("\n".join(neutralise(line) for line in lines))


@backup.command("verify")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@_options
@click.pass_context
def verify(ctx: click.Context, archive: Path, data_dir: Path | None, as_json: bool) -> None:
    """Restore ARCHIVE into a scratch database and scratch streams, compare
    the counts with its manifest (rows per table, messages per stream), drop
    them. Exit 0 when everything matches, 1 otherwise. agogd may keep running."""
    try:
        setup = _setup(ctx, data_dir)
    except BackupError as exc:
        _fail(exc, as_json)
    done = _run(
        setup,
        lambda: verify_backup(setup.servers, archive, migrations_dir=setup.settings.migrations_dir),
        as_json,
    )
    if as_json:
        click.echo(json.dumps(done.as_json(), indent=2))
    else:
        for check in done.failed:
            click.echo(
                neutralise(f"FAIL {check.what}: expected {check.expected}, found {check.found}")
            )
        verdict = "ok" if done.ok else "FAILED"
        click.echo(f"{verdict}: {len(done.checks) - len(done.failed)} of {len(done.checks)} checks")
    sys.exit(EXIT_OK if done.ok else EXIT_FAILED)
