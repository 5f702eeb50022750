"""Least privilege on NATS, from the pipeline registry: who may publish and
subscribe to what. Pure: no I/O but for the credentials file helpers at the end.

Without authentication anyone on the bus was an operator: cancel any REQ,
spoof an API decision, purge a stream through ``$JS.API``. The identities:

- ``agogd``: the daemon, its runner, its API and so ``agogctl``: everything,
  and the JetStream API is its alone. Its request inboxes have their own
  prefix (``AGOGD_INBOX``), which nobody else may subscribe to: pull
  deliveries and API answers travel there.
- one identity per agent of the pipeline, follow-ups and reporters
  (``cynthia``...): publish its own deliverables and heartbeats, read its own
  assignments; JetStream acknowledgements come back on ``_INBOX.>``.
- ``strategic`` (the strategic agent) and ``operator`` (a human with the nats
  CLI): publish decisions and intake, read the events and escalations, and
  look at streams and consumers (read-only JetStream API).

A publisher that is not agogd can never claim a decision's ``source: api`` or
an operator's idempotency key either: the API signs what it publishes
(``orchestrator.core.decision_auth``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.registry import Pipeline
from orchestrator.runtime.private_file import write_private

AGOGD = "agogd"
STRATEGIC = "strategic"
OPERATOR = "operator"
AGOGD_INBOX = "AGOGD_INBOX"  # agogd's inbox prefix (nats-py's inbox_prefix)
CLIENT_INBOX = "_INBOX.>"  # where other clients' requests get their answers
# Looking at streams and consumers without changing them.
READ_ONLY_JS = (
    "$JS.API.INFO",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.STREAM.INFO.>",
    "$JS.API.CONSUMER.NAMES.>",
    "$JS.API.CONSUMER.LIST.>",
    "$JS.API.CONSUMER.INFO.>",
)


@dataclass(frozen=True)
class Identity:
    """One NATS user and the subjects it may publish and subscribe to."""

    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    about: str = ""


def _wild(subject: str) -> str:
    """A filled subject template, its trailing REQ (or target) as ``>``."""
    return subject.rsplit(".", 1)[0] + ".>"


def identities(pipeline: Pipeline) -> tuple[Identity, ...]:
    """Every identity the registry implies, agogd first."""
    subjects = pipeline.subjects
    found = [
        Identity(
            AGOGD,
            (">",),
            (">",),
            "agogd itself (daemon, runner, API, agogctl): everything",
        )
    ]
    for stage in (*pipeline.stages, *pipeline.followups, *pipeline.reporters):
        req = "REQ-X-1"
        publish = [_wild(pipeline.deliverable_subject(stage, req))]
        subscribe = [CLIENT_INBOX]
        if "heartbeat" in subjects and not _is_reporter(pipeline, stage.agent):
            publish.append(_wild(pipeline.subject("heartbeat", agent=stage.agent, req=req)))
            subscribe.append(_wild(pipeline.subject("assignment", agent=stage.agent, req=req)))
        found.append(
            Identity(
                stage.agent,
                tuple(dict.fromkeys(publish)),
                tuple(subscribe),
                f"agent {stage.agent}: its own deliverables and heartbeats, its own assignments",
            )
        )
    decisions = _wild(pipeline.subject("decision", req="REQ-X-1"))
    intake = [subjects["intake"], _wild(pipeline.subject("sub_intake", req="REQ-X-1"))]
    event_streams = pipeline.streams_binding(
        pipeline.subject("workflow_event", event="x", req="REQ-X-1")
    )
    events = [p for s in pipeline.streams if s.name in event_streams for p in s.subjects]
    readers = (
        *events,
        _wild(pipeline.subject("escalation", target="human")),
        CLIENT_INBOX,
    )
    for name, about in (
        (STRATEGIC, "the strategic agent: decisions and intake; reads events and escalations"),
        (OPERATOR, "a human operator on NATS: decisions and intake; reads events, streams"),
    ):
        found.append(Identity(name, (decisions, *intake, *READ_ONLY_JS), readers, about))
    return tuple(found)


def _is_reporter(pipeline: Pipeline, agent: str) -> bool:
    return any(r.agent == agent for r in pipeline.reporters) and (
        pipeline.stage_for_agent(agent) is None
    )


def authorization_block(found: Iterable[Identity], passwords: Mapping[str, str]) -> str:
    """The nats-server ``authorization`` block: each user, its password and its
    allow lists (anything not allowed is denied). ``passwords`` maps a name to
    its password, or to ``$VAR`` for nats-server to read from its environment."""
    users = []
    for ident in found:
        password = passwords[ident.name]
        quoted = password if password.startswith("$") else json.dumps(password)
        subscribe = list(ident.subscribe)
        deny_sub: list[str] = []
        if ident.name != AGOGD:
            deny_sub.append(f"{AGOGD_INBOX}.>")  # agogd's deliveries and API answers
        perms = {
            "publish": {"allow": list(ident.publish)},
            "subscribe": {"allow": subscribe, **({"deny": deny_sub} if deny_sub else {})},
        }
        users.append(
            f"    # {ident.about}\n"
            f"    {{user: {json.dumps(ident.name)}, password: {quoted},"
            f" permissions: {json.dumps(perms)}}}"
        )
    return "authorization {\n  users = [\n" + "\n".join(users) + "\n  ]\n}\n"


# --- the credentials of a data dir ------------------------------------------------
def load_or_create(path: Path, names: Iterable[str]) -> dict[str, str]:
    """Each identity's password, made once and kept in ``path`` (mode 0600).
    An identity added to the registry later gets one on the next start."""
    try:
        known: dict[str, str] = json.loads(path.read_text())
    except FileNotFoundError:
        known = {}
    wanted = {name: known.get(name) or secrets.token_urlsafe(24) for name in names}
    if wanted != known:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps(wanted, indent=2) + "\n")
    return wanted


def creds_text(ident: Identity, password: str, url: str) -> str:
    """What an agent needs to connect as ``ident``, as an env file (secret)."""
    return (
        f"# NATS credentials for {ident.name}, made by agogd. Secret: keep it 0600.\n"
        f"# May publish: {', '.join(ident.publish)}\n"
        f"# May subscribe: {', '.join(ident.subscribe)}\n"
        f"NATS_URL={url}\n"
        f"NATS_USER={ident.name}\n"
        f"NATS_PASSWORD={password}\n"
    )
