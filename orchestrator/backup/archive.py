"""The backup archive: one plain tar holding ``manifest.json`` and the parts it
lists, each with its sha256 and size.

The parts are made in a work directory beside the destination, then tarred
into ``NAME.partial`` and renamed: a crash never leaves half an archive under
the real name. Reading checks every part against the manifest while it is
extracted; a missing, extra, resized or altered part is refused before
anything is restored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from orchestrator.backup.errors import Refused
from orchestrator.runtime import failpoints
from orchestrator.runtime.pg_tools import sha256_of

FORMAT = 1
MANIFEST = "manifest.json"
PREFIX = "agogd-backup-"
SUFFIX = ".tar"
UNPACKED = ".agogd-unpack-"  # where a restore or a verify unpacks an archive
DUMP = "postgres/agent_memory.dump"
OWNER_REQUESTS = "owner/OWNER_REQUESTS.md"
# The only names a part may have: a manifest cannot make extraction write
# anywhere else (``../``, absolute paths, odd stream names).
PART_NAME = re.compile(
    r"(postgres/agent_memory\.dump|owner/OWNER_REQUESTS\.md|nats/[A-Za-z0-9_-]+\.snapshot)"
)


def stream_part(stream: str) -> str:
    return f"nats/{stream}.snapshot"


def archive_name(at: datetime) -> str:
    return f"{PREFIX}{at:%Y%m%dT%H%M%SZ}{SUFFIX}"


def archives_in(directory: Path) -> list[Path]:
    """The finished archives in a directory, oldest first (by name: its time)."""
    if not directory.is_dir():
        return []
    found = [
        p for p in directory.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX)
    ]
    return sorted(found, key=_order)


def _order(path: Path) -> tuple[str, int]:
    """``agogd-backup-<time>[-n].tar``: by time, then n (a second one that second)."""
    stem = path.name.removeprefix(PREFIX).removesuffix(SUFFIX)
    time_part, _, n = stem.partition("-")
    return time_part, int(n) if n.isdecimal() else 1


def write(work: Path, manifest: dict[str, Any], directory: Path, name: str) -> Path:
    """Tar every file under ``work`` with the manifest (which gains their
    checksums) into ``directory/name``; returns the archive's path."""
    parts = sorted(p for p in work.rglob("*") if p.is_file())
    manifest["files"] = {
        p.relative_to(work).as_posix(): {"sha256": sha256_of(p), "bytes": p.stat().st_size}
        for p in parts
    }
    final, handle = _claim(directory, name)
    partial = final.with_name(final.name + ".partial")
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    try:
        with handle, tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(body), 0o600, int(datetime.now().timestamp())
            tar.addfile(info, io.BytesIO(body))
            for part in parts:
                tar.add(part, arcname=part.relative_to(work).as_posix(), recursive=False)
            tar.close()
            handle.flush()
            os.fsync(handle.fileno())
        failpoints.hit("backup.archive_written")
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return final


def _claim(directory: Path, name: str) -> tuple[Path, BinaryIO]:
    """A free archive name and its ``.partial`` file, created exclusively: two
    backups in the same second never write over each other."""
    stem, n = name.removesuffix(SUFFIX), 1
    while True:
        final = directory / (name if n == 1 else f"{stem}-{n}{SUFFIX}")
        n += 1
        if final.exists():
            continue
        partial = final.with_name(final.name + ".partial")
        try:  # readable by its owner only: it holds every REQ's data
            fd = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            continue
        return final, os.fdopen(fd, "wb")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(archive: Path) -> dict[str, Any]:
    """The archive's manifest, without extracting anything else."""
    try:
        with tarfile.open(archive, "r:") as tar:
            member = tar.getmember(MANIFEST)
            handle = tar.extractfile(member)
            manifest = json.loads(handle.read()) if handle else None
    except FileNotFoundError:
        raise Refused(f"no such archive: {archive}") from None
    except KeyError:
        raise Refused(f"{archive} has no {MANIFEST}: not an agogd backup") from None
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise Refused(f"{archive} is not a readable agogd backup: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise Refused(f"{archive}: backup format {found!r}, this agogd reads format {FORMAT}")
    if not isinstance(manifest.get("files"), dict):
        raise Refused(f"{archive}: its manifest lists no files")
    nats, postgres = manifest.get("nats"), manifest.get("postgres")
    if not (
        isinstance(postgres, dict)
        and isinstance(postgres.get("schema"), str)
        and isinstance(nats, dict)
        and isinstance(nats.get("streams"), dict)
        and all(
            isinstance(spec, dict) and {"file", "config", "state"} <= spec.keys()
            for spec in nats["streams"].values()
        )
    ):
        raise Refused(f"{archive}: its manifest is incomplete (postgres, nats.streams)")
    odd = [name for name in manifest["files"] if not PART_NAME.fullmatch(str(name))]
    if odd:
        raise Refused(f"{archive}: its manifest names parts agogd never writes: {odd[:3]}")
    return manifest


def extract(archive: Path, into: Path) -> dict[str, Any]:
    """Extract every part listed in the manifest into ``into``, checking each
    one's size and sha256 as it is written; returns the manifest."""
    manifest = read_manifest(archive)
    files: dict[str, dict[str, Any]] = manifest["files"]
    seen: set[str] = set()
    problems: list[str] = []
    try:
        with tarfile.open(archive, "r:") as tar:
            for member in tar:
                if member.name == MANIFEST:
                    continue
                expected = files.get(member.name)
                if expected is None or not member.isreg():
                    problems.append(f"{member.name}: not in the manifest")
                    continue
                seen.add(member.name)
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file
                digest, size = _copy(handle, into / member.name)
                if size != expected["bytes"] or digest != expected["sha256"]:
                    problems.append(
                        f"{member.name}: sha256 {digest[:12]}… ({size} bytes), the manifest"
                        f" says {str(expected['sha256'])[:12]}… ({expected['bytes']} bytes)"
                    )
    except (tarfile.TarError, OSError) as exc:
        raise Refused(f"{archive} cannot be read: {exc}") from None
    problems += [f"{name}: missing from the archive" for name in sorted(set(files) - seen)]
    if problems:
        raise Refused(f"{archive} fails its checksums: " + "; ".join(problems))
    return manifest


def _copy(source: io.BufferedReader | Any, dest: Path) -> tuple[str, int]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with dest.open("wb") as out:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
            out.write(block)
    return digest.hexdigest(), size
