"""Berry's deploy environments, their env files and ``${VAR}`` in their URLs.

With ``AGOG_BERRY_STAGING`` off there is one environment, production,
deployed from the workspace with its ``.env`` exactly as before. On, staging
comes first: a compose project of its own (default: production's name plus
``-staging``) with an env file of its own, hence its own ports. The two
stacks share nothing but the images promoted from one to the other, and
neither depends on the agents stack (seed 002's dual-stack rule).

Smoke tests and health URLs are configured once and run against each
environment: ``${WEB_PORT}`` in a URL is read from that environment's env
file. Everything here is pure (text in, values out), so it is tested alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.runtime.settings import Settings

STAGING, PRODUCTION = "staging", "production"
PRODUCTION_ENV_FILE = ".env"
MASK = "***"

# Names whose values are never shown in a recorded URL (the log processor's rule).
SECRET_NAME = re.compile(r"pass(word)?|secret|token|creds|authorization|api_?key", re.I)
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# $$ | ${NAME} | ${NAME:-default} | ${NAME-default} | $NAME
_REF = re.compile(
    r"\$(?:(?P<dollar>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class EnvError(ValueError):
    """An env file or a ``${VAR}`` reference that cannot be read; says which and why."""


@dataclass(frozen=True)
class Environment:
    """One deploy environment: its name, its env file, its compose project
    (None: the name Compose resolves, for production without
    AGOG_BERRY_COMPOSE_PROJECT)."""

    name: str
    env_file: Path
    project: str | None


def environments_of(settings: Settings, workspace: Path) -> list[Environment]:
    """The environments a deploy goes through, in order (staging's project is
    filled in once production's name is known: see ``staging_project``)."""
    production = Environment(
        PRODUCTION, workspace / PRODUCTION_ENV_FILE, settings.berry_compose_project
    )
    if not settings.berry_staging:
        return [production]
    staging = Environment(
        STAGING, workspace / settings.berry_staging_env_file, settings.berry_staging_project
    )
    return [staging, production]


def staging_project(configured: str | None, production: str) -> str:
    """Staging's compose project: the configured one, else production's + '-staging'."""
    name = configured or f"{production}-staging"
    if name == production:
        raise EnvError(
            f"AGOG_BERRY_STAGING_PROJECT is production's project ({production}):"
            " staging needs a project of its own"
        )
    return name


def parse_env_file(text: str, fallback: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of a Compose-style env file: ``KEY=value`` lines, ``#``
    comments, an optional ``export``, single quotes literal, double quotes
    with ``\\n``/``\\"`` escapes, ``${VAR}`` from earlier lines (then
    ``fallback``) in unquoted and double-quoted values. A line without ``=``
    names a variable taken from the environment: Compose's rule, skipped here."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):  # only \n ends a line
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export") :].lstrip()
        key, sep, rest = line.partition("=")
        key = key.strip()
        if not _KEY.fullmatch(key):
            raise EnvError(f"line {number}: {key[:40]!r} is not a variable name")
        if sep:
            values[key] = _value(rest.strip(), number, {**(fallback or {}), **values})
    return values


def _value(rest: str, number: int, known: Mapping[str, str]) -> str:
    if rest[:1] in ("'", '"'):
        quote = rest[0]
        end = _closing(rest, quote)
        if end < 0:
            raise EnvError(f"line {number}: the {quote} quote is not closed")
        body = rest[1:end]
        if quote == "'":
            return body
        body = (
            body.replace("\\\\", "\0").replace("\\n", "\n").replace('\\"', '"').replace("\0", "\\")
        )
        return _resolve(body, known, number)
    # Unquoted: an inline comment starts at a '#' after whitespace.
    comment = re.search(r"\s#", rest)
    if comment:
        rest = rest[: comment.start()]
    return _resolve(rest.strip(), known, number)


def _closing(text: str, quote: str) -> int:
    i = 1
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i
        i += 1
    return -1


def _resolve(text: str, known: Mapping[str, str], number: int) -> str:
    try:
        return interpolate(text, known)
    except EnvError as exc:
        raise EnvError(f"line {number}: {exc}") from None


def interpolate(text: str, values: Mapping[str, str], *, masked: bool = False) -> str:
    """``text`` with ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``$VAR`` and ``$$`` resolved from ``values``. An unknown variable without
    a default, or a ``$`` that starts nothing, is an EnvError naming it.
    ``masked``: values of secret-looking names show as ``***`` (for records)."""
    out: list[str] = []
    pos = 0
    for match in _REF.finditer(text):
        out.append(_no_stray_dollar(text[pos : match.start()]))
        pos = match.end()
        if match.group("dollar"):
            out.append("$")
            continue
        name = match.group("braced") or match.group("bare")
        op, default = match.group("op"), match.group("default")
        value = values.get(name)
        if op == ":-" and not value:
            value = default
        elif op == "-" and value is None:
            value = default
        if value is None:
            raise EnvError(f"unknown variable ${{{name}}}")
        out.append(MASK if masked and SECRET_NAME.search(name) else value)
    out.append(_no_stray_dollar(text[pos:]))
    return "".join(out)


class _AnyValue(dict[str, str]):
    """Every variable is set: to check a template's syntax before its values are known."""

    def get(self, key: str, default: object = None) -> str:  # type: ignore[override]
        return "x"


def check_template(text: str) -> None:
    """An EnvError if ``text``'s ``$`` references are malformed (values aside)."""
    interpolate(text, _AnyValue())


def _no_stray_dollar(chunk: str) -> str:
    if "$" in chunk:
        at = chunk.index("$")
        raise EnvError(f"invalid interpolation {chunk[at : at + 12]!r} (write $$ for a '$')")
    return chunk


def read_env_file(path: Path, fallback: Mapping[str, str] | None = None) -> dict[str, str]:
    """``parse_env_file`` of a file; a missing file is no variables (Compose's
    rule too: without it the stack uses its defaults)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvError(f"cannot read {path}: {exc}") from None
    try:
        return parse_env_file(text, fallback)
    except EnvError as exc:
        raise EnvError(f"{path.name}: {exc}") from None
