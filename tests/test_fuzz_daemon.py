"""Fuzzing through one running agogd: thousands of bad messages on the real
subjects, and the engine's promise about bad input checked end to end.

tests/test_fuzz_parsers.py fuzzes each parser alone. What it cannot show is
what the engine does with the parser's verdict: a rejection written once,
term'd, never redelivered; or an exception after the parser said yes that
rolls the batch back and redelivers the message in a loop. So here every
input goes over NATS into a real agogd, and each one's expected outcome comes
from the real parsers (``parse_notice``, ``parse_requirement``,
``parse_decision``) and the pure state machine (``workflow.apply``), never
from a guess. The inputs are hypothesis-generated and the same on every run
(derandomized). One daemon serves the whole test: starting one per example
would cost seconds each.

Phases, each settled and checked before the next (their order matters: the
expected outcome of a notice or a decision depends on which REQs exist):

A. no REQ exists: notices (garbage, wrong schema, unknown agents, unsafe or
   unknown REQs, oversize, deep nesting, agent-style free text), decisions
   and heartbeats;
B. intake messages: the ones the parser refuses are rejected, the others
   each create exactly their REQ;
C. hostile notices, then decisions, aimed at the REQs B created (live);
D. a good REQ still goes from intake to DEPLOYED with scripted agents; then
   decisions for it, now finished.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import asyncpg
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from structlog.testing import capture_logs

from orchestrator.core.workflow import DecisionRejected, Workflow, apply
from orchestrator.embedded import NatsServer
from orchestrator.inbound import intake
from orchestrator.inbound.messages import Rejected, parse_decision
from orchestrator.inbound.notices import (
    NoticeError,
    parse_deliverable_subject,
    parse_notice,
    validate_req_id,
)
from orchestrator.runtime.daemon import Daemon
from tests.agents import (
    PIPELINE,
    ScriptedAgents,
    happy,
    notice,
    running_agogd,
    settings_for,
    wait_status,
)
from tests.test_fuzz_parsers import JSON_VALUES, MAX, inputs, near_valid

T = TypeVar("T")
P = PIPELINE
LIMIT = MAX  # AGOG_MAX_MESSAGE_BYTES here; inputs() makes payloads just past it
REJECTED = "agog.orchestration.events.message.rejected"
# Any of these in the daemon's log is an exception that escaped a handler.
CRASH_EVENTS = {
    "message.failed",
    "batch.split",
    "service.crashed",
    "agogd.crashed",
    "api.internal_error",
    "readiness.probe_failed",
}
ROLES = {s.agent: s.role for s in (*P.stages, *P.followups, *P.reporters)}
# Beyond hypothesis's own values: what Postgres cannot hold (NUL, lone surrogates,
# integers past bigint) and text that tricks readers (bidi override, CRLF).
NASTY = st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfff", "\u202e", "\r\n", 2**70, -(2**63)])
VALUES = st.one_of(JSON_VALUES, NASTY)

# --- subjects --------------------------------------------------------------------------
# One subject token: no whitespace, no '.', never a wildcard (a publish to one is
# refused). nats-server does take control characters, NUL included.
TOKEN = st.one_of(
    st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=".*>"),
        min_size=1,
        max_size=24,
    ),
    st.sampled_from(
        [
            "req-1",
            "REQ-",
            "REQ-_x",
            "REQ--1",
            "REQ-" + "A" * 61,
            "REQ-1;DROP",
            "REQ-$(id)",
            "REQ-ä",
            "REQ-日本",
            "null",
            "%00",
            "%2e%2e%2f",
            "REQ-1\x00",
            "\x00",
            "REQ-\x01\x7f",
        ]
    ),
)
REQ_IDS = st.from_regex(r"REQ-[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
REQ_TOKEN = st.one_of(REQ_IDS, TOKEN)
# Agents whose deliverables a stream binds (any other agent has no stream to publish to).
STREAM_AGENTS = st.sampled_from(P.agents)
SUBJECT_AGENT = st.one_of(STREAM_AGENTS, st.sampled_from(["bob", "ROY", "miki", "tim"]), TOKEN)
ANY_AGENT = st.one_of(SUBJECT_AGENT, st.sampled_from([" roy", "", "roy\n"]))

# Free text as language models write it around (or instead of) a notice.
FENCES = [
    "{doc}",
    "Done.\n```json\n{doc}\n```\n",
    "Thinking...\r\n```json\r\n{doc}\r\n```\r\n",
    '```json\n{doc}\n```\nOn second thought:\n```json\n{{"status": "MAYBE"}}\n```',
    "```json\n{doc}",
    "Here is my notice: {doc} and a trailing {{",
    "```\n{doc}\n```",
    "<notice>{doc}</notice>\n\n{doc}",
]


def agent_text(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A near-valid notice inside the prose an agent wraps it in, or just prose."""
    wrapped = st.builds(
        lambda fence, doc: fence.format(doc=doc).encode(),
        st.sampled_from(FENCES),
        near_valid(base).map(bytes.decode),
    )
    return st.one_of(wrapped, st.text(max_size=300).map(str.encode))


def poisoned(base: dict[str, Any], keys: Collection[str]) -> st.SearchStrategy[bytes]:
    """The base document with one to three of ``keys`` set to hostile values."""
    edits = st.dictionaries(st.sampled_from(sorted(keys)), VALUES, min_size=1, max_size=3)
    return edits.map(lambda edit: json.dumps({**base, **edit}).encode())


def hostile(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Everything test_fuzz_parsers throws, plus fields set to what Postgres refuses."""
    keys = st.sampled_from(sorted(base))

    def poison(pair: tuple[str, Any]) -> bytes:
        return json.dumps({**base, pair[0]: pair[1]}).encode()

    deep = st.integers(min_value=33, max_value=400).map(
        lambda n: json.dumps({**base, "extra": json.loads("[" * n + "]" * n)}).encode()
    )
    raw = st.builds(
        lambda doc, at, junk: doc[:at] + junk + doc[at:],
        near_valid(base),
        st.integers(0, 300),
        st.sampled_from([b"\x00", b"\xff", b"\xed\xa0\x80", b"\x1b[31m", b"\r\n\x00\x00"]),
    )  # raw bytes spliced in: Postgres takes neither NUL nor broken UTF-8
    return st.one_of(
        inputs(base),  # garbage, any JSON, truncated, too deep, oversize
        near_valid(base),  # fields replaced, dropped or added
        st.tuples(keys, VALUES).map(poison),  # one field hostile
        st.tuples(keys, NASTY).map(poison),  # ... with what Postgres cannot hold
        deep,
        raw,
    )


@st.composite
def deliverables(draw: st.DrawFn, reqs: st.SearchStrategy[str] = REQ_TOKEN) -> tuple[str, bytes]:
    """A notice on a deliverable subject (any shape a stream binds) from an agent."""
    agent = draw(STREAM_AGENTS)
    req = draw(reqs)
    role = draw(st.one_of(st.just(ROLES[agent]), TOKEN))
    tokens = ["agog", "deliverables", agent, role, req]
    shape = draw(st.sampled_from(["exact"] * 6 + ["short", "long"]))
    if shape == "short":
        tokens = tokens[:4]
    elif shape == "long":
        tokens.append(draw(TOKEN))
    # Mostly the subject's own agent and REQ, so that many get past the parser.
    body_agent = agent if draw(st.integers(0, 3)) else draw(ANY_AGENT)
    body_req = req if draw(st.integers(0, 3)) else draw(st.one_of(reqs, REQ_TOKEN))
    base = notice(body_agent, body_req, attempt=1)
    # Fields the parser is lenient about: hostile values there get past it.
    lenient = [*base.keys() - {"agent", "req_number", "status"}, "notes", "changes", "attempt"]
    payload = draw(st.one_of(hostile(base), agent_text(base), poisoned(base, lenient)))
    return ".".join(tokens), payload


@st.composite
def intakes(draw: st.DrawFn) -> tuple[str, bytes]:
    """A requirement on agog.requirements.new or .sub.<token>, around five REQ ids."""
    subject = draw(
        st.one_of(
            st.just(P.subjects["intake"]),
            TOKEN.map(lambda t: f"agog.requirements.sub.{t}"),
        )
    )
    base = {
        "req_number": draw(st.sampled_from([f"REQ-FZ-{i}" for i in range(1, 6)])),
        "title": "a title",
        "priority": "P1",
        "requirements": ["one", "two"],
        "owner": "owner",
    }
    return subject, draw(hostile(base))


@st.composite
def decisions(draw: st.DrawFn, reqs: st.SearchStrategy[str] = REQ_TOKEN) -> tuple[str, bytes]:
    """A strategic decision; a tenth carry an extra subject token (the last one counts)."""
    req = draw(reqs)
    subject = f"agog.strategic.decisions.{req}"
    if draw(st.integers(0, 9)) == 0:
        subject += "." + draw(TOKEN)
    kinds = ["RETRY", "RETRY", "ESCALATE_HUMAN", "REQUEST_CHANGES", "APPROVE", "CANCEL", "PANIC"]
    base = {
        "req_number": req if draw(st.integers(0, 3)) else draw(REQ_TOKEN),
        "decision": draw(st.sampled_from(kinds)),
        "restart_stage": draw(st.sampled_from([0, "cynthia", "Backend", "nobody", 99, -1]))
        if not draw(st.integers(0, 3))
        else None,
        "reasoning": "why",
        "instructions": {"for_roy": "do it"},
    }
    # reasoning and instructions are free-form: hostile values there get past the parser.
    lenient = ["reasoning", "instructions", "instructions_for_roy", "deferred_items", "notes"]
    return subject, draw(st.one_of(hostile(base), poisoned(base, lenient)))


@st.composite
def heartbeats(draw: st.DrawFn, reqs: st.SearchStrategy[str] = REQ_TOKEN) -> tuple[str, bytes]:
    """A heartbeat: its subject names the agent and REQ; its payload is read leniently,
    so only the subject can make it a rejection (deep nesting once made it a loop)."""
    tokens = [draw(SUBJECT_AGENT), draw(reqs)]
    tokens = tokens[: draw(st.sampled_from([2, 2, 2, 1]))]
    subject = ".".join(["agog.orchestration.events.stage.heartbeat", *tokens])
    payload = draw(
        st.one_of(
            VALUES.map(lambda v: json.dumps({"attempt": v}).encode()),
            JSON_VALUES.map(lambda v: json.dumps(v).encode()),
            st.binary(max_size=64),
            st.just(b"[" * 100_000),
            st.just(b"[" * 3000 + b"]" * 3000),
        )
    )
    return subject, payload


def draw_many(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """``count`` examples of a strategy, the same ones on every run: the daemon
    starts once per test, so the examples are collected, then sent."""
    drawn: list[T] = []

    @settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: T) -> None:
        drawn.append(value)

    collect()
    return drawn


def odd_bytes(doc: dict[str, Any]) -> list[bytes]:
    """One document in the byte forms json.loads takes but a UTF-8 reader does not
    (BOM, UTF-16, UTF-32), and with a duplicate first key whose hidden value is a NUL."""
    text = json.dumps(doc)
    first = json.dumps(next(iter(doc)))
    hidden = "{" + first + ': "\\u0000", ' + text[1:]
    encodings = ("utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32")
    return [*(text.encode(e) for e in encodings), hidden.encode()]


# --- the verdicts, from the real parsers ------------------------------------------------
def notice_verdict(subject: str, data: bytes, live: Collection[str]) -> str | None:
    """The engine's reason code for a deliverable, or None when it takes it."""
    parts = parse_deliverable_subject(subject)
    agent, req = (parts[0], parts[2]) if parts else (None, None)
    try:
        found = parse_notice(
            data, known_agents=P.agents, max_bytes=LIMIT, subject_agent=agent, subject_req=req
        )
    except NoticeError as exc:
        return exc.reason
    if P.stage_for_agent(found.agent) is None:
        return None  # a reporter's (Miki's) report: history, no workflow
    return None if found.req_number in live else "unknown_req"


def intake_verdict(data: bytes) -> str | None:
    """The reason code for a requirement, or None when it creates (or repeats) its REQ."""
    try:
        intake.parse_requirement(data, LIMIT)
    except intake.IntakeError as exc:
        return exc.reason
    return None


def decision_verdict(subject: str, data: bytes, states: dict[str, Workflow]) -> str | None:
    """Parse, then apply to the simulated state (updated: decisions go in order)."""
    try:
        decision = parse_decision(data, subject.rsplit(".", 1)[-1], P, LIMIT)
    except Rejected as exc:
        return exc.reason
    wf = states.get(decision.req_number)
    if wf is None:
        return "unknown_req"
    try:
        states[wf.req], _ = apply(P, wf, decision.to_event())
    except DecisionRejected:
        return "decision_not_applicable"
    return None


def heartbeat_verdict(subject: str) -> str | None:
    """The engine's own two checks on a heartbeat's subject (its payload is optional)."""
    agent, req = subject.split(".")[-2:]
    if P.stage_for_agent(agent) is None:
        return "unknown_agent"
    try:
        validate_req_id(req)
    except ValueError:
        return "invalid_req_id"
    return None


# --- publishing and settling ------------------------------------------------------------
@dataclass
class Ledger:
    """What was published, where JetStream stored it, and what the engine owes it."""

    js: JetStreamContext
    expected: dict[tuple[str, int], str | None] = field(default_factory=dict)
    subjects: dict[tuple[str, int], str] = field(default_factory=dict)
    by_consumer: Counter[tuple[str, str]] = field(default_factory=Counter)
    rejections: list[dict[str, Any]] = field(default_factory=list)

    async def on_rejection(self, msg: Msg) -> None:
        self.rejections.append(json.loads(msg.data))

    async def send(self, subject: str, data: bytes, expected: str | None) -> None:
        ack = await self.js.publish(subject, data, timeout=10)
        key = (ack.stream, ack.seq)
        assert key not in self.expected
        self.expected[key], self.subjects[key] = expected, subject
        self.by_consumer[(ack.stream, consumer_of(subject))] += 1

    @property
    def bad(self) -> dict[tuple[str, int], str]:
        return {k: r for k, r in self.expected.items() if r is not None}

    def summary(self, phase: str) -> tuple[str, int, Counter[str | None]]:
        """Messages and outcomes so far (None: taken), for the report at the end."""
        return phase, len(self.expected), Counter(self.expected.values())


def consumer_of(subject: str) -> str:
    """agogd's durable consumer for a subject this test publishes on."""
    if subject.startswith("agog.deliverables."):
        return "agogd_deliverables"
    if subject.startswith("agog.requirements."):
        return "agogd_intake"
    if subject.startswith("agog.strategic.decisions."):
        return "agogd_decisions"
    assert subject.startswith("agog.orchestration.events.stage.heartbeat.")
    return "agogd_heartbeats"


async def settle(ledger: Ledger, nc: NATS, logs: list[dict[str, Any]], timeout: float = 60) -> None:
    """Wait until every consumer has taken everything and every rejection is out."""
    jsm = nc.jetstream()
    deadline = time.monotonic() + timeout
    while True:
        infos = [await jsm.consumer_info(s, c) for s, c in ledger.by_consumer]
        done = all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)
        if done and len(ledger.rejections) >= len(ledger.bad):
            break
        assert time.monotonic() < deadline, (
            f"not settled: {len(ledger.rejections)}/{len(ledger.bad)} rejections;"
            f" {[(i.stream_name, i.num_pending, i.num_ack_pending) for i in infos]};"
            f" failures: {failures(logs)}"
        )
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # a redelivery loop or a second rejection would show by now
    for (stream, consumer), sent in ledger.by_consumer.items():
        info = await jsm.consumer_info(stream, consumer)
        # Delivered once each: a nak'd or redelivered message would count twice.
        counts = (info.num_redelivered, info.num_ack_pending, info.num_pending)
        assert counts == (0, 0, 0), f"{stream}/{consumer} {counts}: {failures(logs)}"
        # Heartbeats come only from here; the scripted agents add deliverables.
        stored = (await jsm.stream_info(stream)).state.messages
        count = sent if info.config.filter_subject else stored
        assert info.delivered.consumer_seq == count, (stream, consumer, info.delivered, count)


def failures(logs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The first few messages that made a handler raise (each is logged once a try)."""
    failed = {(e["msg_subject"], e["error"][:300]) for e in logs if e["event"] == "message.failed"}
    return sorted(failed)[:6]


def _mismatch(got: dict[Any, list[str]], want: dict[Any, list[str]], ledger: Ledger) -> str:
    keys = sorted(set(got) ^ set(want) | {k for k in got if got[k] != want.get(k)})
    lines = [f"{len(keys)} mismatches, first ones:"]
    for key in keys[:8]:
        lines.append(
            f"  {key} {ledger.subjects.get(key)!r}: got {got.get(key)}, want {want.get(key)}"
        )
    return "\n".join(lines)


async def check(ledger: Ledger, dsn: str, daemon: Daemon, logs: list[dict[str, Any]]) -> None:
    """Exactly one rejection per bad message (with the parser's reason), on NATS, in
    the audit trail and in the log; none for the rest; the daemon healthy."""
    want = {key: [reason] for key, reason in ledger.bad.items()}
    got: dict[tuple[str, int], list[str]] = {}
    for event in ledger.rejections:
        assert event["reason_code"] and event["reason"], event
        key = (event["stream"], event["stream_seq"])
        # A NUL in a subject comes back as U+FFFD (Postgres text cannot hold one).
        assert event["subject"] == ledger.subjects.get(key, "").replace("\x00", "\ufffd")
        got.setdefault(key, []).append(event["reason_code"])
    assert got == want, _mismatch(got, want, ledger)

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT detail->>'stream' AS stream, (detail->>'seq')::bigint AS seq, reason"
            " FROM workflow_events WHERE kind = 'message.rejected'"
        )
        stuck = await conn.fetchval(
            "SELECT count(*) FROM processed_messages WHERE outcome = 'processing'"
        )
    finally:
        await conn.close()
    recorded: dict[tuple[str, int], list[str]] = {}
    for row in rows:
        code, _, text = row["reason"].partition(": ")
        assert text, row
        recorded.setdefault((row["stream"], row["seq"]), []).append(code)
    assert recorded == want, _mismatch(recorded, want, ledger)
    assert stuck == 0

    stored = await ledger.js.stream_info("agog_orchestration_events", subjects_filter=REJECTED)
    assert (stored.state.subjects or {}).get(REJECTED, 0) == len(want)
    logged = [e for e in logs if e["event"] == "message.rejected"]
    assert len(logged) == len(want)
    crashes = [e for e in logs if e["event"] in CRASH_EVENTS or e["log_level"] == "error"]
    assert not crashes, crashes[:3]
    assert daemon.readiness.ready and not daemon.stopping.is_set()
    assert not [c for c in ("dispatcher", "deadlines") if daemon.states.get(c) == "failing"]


async def live_states(dsn: str) -> dict[str, Workflow]:
    """Every workflow as the engine will load it, to simulate decisions on."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT req_number, status, current_stage, budgets FROM workflow_state"
        )
    finally:
        await conn.close()
    return {
        r["req_number"]: Workflow.from_row(
            r["req_number"], r["status"], r["current_stage"], json.loads(r["budgets"])
        )
        for r in rows
    }


async def followup_status(dsn: str, req: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(  # type: ignore[no-any-return]
            "SELECT status FROM stage_attempts WHERE req_number = $1 AND stage = $2"
            " ORDER BY attempt DESC LIMIT 1",
            req,
            len(P.stages),
        )
    finally:
        await conn.close()


async def until_followup_done(dsn: str, req: str, timeout: float = 20) -> None:
    """Tim's documentation, after the deploy: done before the next phase is counted."""
    deadline = time.monotonic() + timeout
    while await followup_status(dsn, req) != "COMPLETE":
        assert time.monotonic() < deadline, f"{req}: Tim never finished"
        await asyncio.sleep(0.05)


async def poll_ready(url: str, seen: list[int], stop: asyncio.Event) -> None:
    """/readyz, every 200 ms while the fuzz runs."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            try:
                async with session.get(url + "/readyz") as resp:
                    seen.append(resp.status)
            except aiohttp.ClientError:
                seen.append(-1)  # not even an answer
            await asyncio.sleep(0.2)


async def watch_events(url: str, seen: Counter[str]) -> None:
    """A board's live view (``/api/events``) while the fuzz runs: every SSE
    event by name. Its NATS callbacks parse the same garbage the engine does."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/api/events?heartbeats=1&ping=1") as resp:
            assert resp.status == 200
            buffer = b""
            async for chunk in resp.content.iter_any():
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in lines:
                    if line.startswith(b"event: "):
                        seen[line[len(b"event: ") :].decode()] += 1


# --- the test ----------------------------------------------------------------------------
async def test_bad_input_through_the_daemon_is_rejected_once_each(
    nats_server: NatsServer, nc: NATS, pg_dsn: str
) -> None:
    roy = P.deliverable_subject(P.stages[2], "REQ-FZ-1")
    phase_a = (
        [("notice", roy, data) for data in odd_bytes(notice("roy", "REQ-FZ-1"))]
        + [("notice", *x) for x in draw_many(deliverables(), 1200)]
        + [("decision", *x) for x in draw_many(decisions(), 400)]
        + [("heartbeat", *x) for x in draw_many(heartbeats(), 300)]
    )
    phase_b = [(P.subjects["intake"], d) for d in odd_bytes({"req_number": "REQ-FZ-1"})]
    phase_b += draw_many(intakes(), 600)

    def good(a: dict[str, Any]) -> dict[str, Any] | None:
        return happy(a) if a["req_number"].startswith("REQ-GOOD-") else None

    await ScriptedAgents(nc, good).start()
    ledger = Ledger(nc.jetstream())
    await nc.subscribe(REJECTED, cb=ledger.on_rejection)
    settings_ = settings_for(
        nats_server.url,
        pg_dsn,
        max_message_bytes=LIMIT,
        max_in_flight=10_000,
        embedding_provider="none",
    )
    ready: list[int] = []
    summary: list[tuple[str, int, Counter[str | None]]] = []
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with running_agogd(settings_) as daemon:
            poller = asyncio.create_task(poll_ready(daemon.http.url, ready, stop))
            sse: Counter[str] = Counter()
            watcher = asyncio.create_task(watch_events(daemon.http.url, sse))
            try:
                # A: nothing exists yet, so a notice the parser takes is for an unknown REQ.
                for kind, subject, data in phase_a:
                    if kind == "notice":
                        verdict = notice_verdict(subject, data, ())
                    elif kind == "decision":
                        verdict = decision_verdict(subject, data, {})
                    else:
                        verdict = heartbeat_verdict(subject)
                    await ledger.send(subject, data, verdict)
                await settle(ledger, nc, logs)
                await check(ledger, pg_dsn, daemon, logs)
                summary.append(ledger.summary("A"))

                # B: intake; each message the parser takes creates its REQ, once.
                accepted: set[str] = set()
                for subject, data in phase_b:
                    verdict = intake_verdict(data)
                    if verdict is None:
                        accepted.add(intake.parse_requirement(data, LIMIT).req_number)
                    await ledger.send(subject, data, verdict)
                await settle(ledger, nc, logs)
                await check(ledger, pg_dsn, daemon, logs)
                summary.append(ledger.summary("B"))
                for req in accepted:
                    await wait_status(pg_dsn, req, "IN_PROGRESS")
                states = await live_states(pg_dsn)
                assert set(states) == accepted and accepted

                # C: hostile notices, then decisions, at the live REQs.
                live = st.sampled_from(sorted(accepted))
                hit = sorted(accepted)[0]
                near = [
                    (P.deliverable_subject(P.stages[0], hit), d)
                    for d in odd_bytes(notice("cynthia", hit))
                ]
                for subject, data in near + draw_many(deliverables(live), 700):
                    await ledger.send(subject, data, notice_verdict(subject, data, accepted))
                for subject, data in draw_many(heartbeats(live), 100):
                    await ledger.send(subject, data, heartbeat_verdict(subject))
                await settle(ledger, nc, logs)
                await check(ledger, pg_dsn, daemon, logs)
                summary.append(ledger.summary("C notices"))
                states = await live_states(pg_dsn)  # notices moved some on
                odd = [
                    (P.subject("decision", req=req), data)
                    for req in sorted(accepted)
                    for data in odd_bytes({"req_number": req, "decision": "ESCALATE_HUMAN"})
                ]
                for subject, data in odd + draw_many(decisions(live), 300):
                    await ledger.send(subject, data, decision_verdict(subject, data, states))
                await settle(ledger, nc, logs)
                await check(ledger, pg_dsn, daemon, logs)
                summary.append(ledger.summary("C decisions"))
                after = await live_states(pg_dsn)
                assert {r: (w.status, w.stage) for r, w in after.items()} == {
                    r: (w.status, w.stage) for r, w in states.items()
                }  # the engine went where the pure state machine said

                # D: the pipeline still flows; then decisions for the finished REQ.
                good_intake = {
                    "req_number": "REQ-GOOD-1",
                    "title": "after the fuzz",
                    "priority": "P0",
                }
                await ledger.send(P.subjects["intake"], json.dumps(good_intake).encode(), None)
                await wait_status(pg_dsn, "REQ-GOOD-1", "DEPLOYED")
                await until_followup_done(pg_dsn, "REQ-GOOD-1")
                states = await live_states(pg_dsn)
                good_req = st.just("REQ-GOOD-1")
                for subject, data in draw_many(decisions(good_req), 150):
                    await ledger.send(subject, data, decision_verdict(subject, data, states))
                await settle(ledger, nc, logs)
                await check(ledger, pg_dsn, daemon, logs)
                summary.append(ledger.summary("D"))
                await wait_status(pg_dsn, "REQ-GOOD-1", "DEPLOYED")
                assert await followup_status(pg_dsn, "REQ-GOOD-1") == "COMPLETE"

                # The live view saw each rejection, and nothing it read broke it.
                assert not watcher.done() and sse["ready"] == 1
                assert sse["message.rejected"] == len(ledger.bad) and not sse["lagged"], sse
                assert not [e for e in logs if e["event"] == "nats.client.error"]
            finally:
                stop.set()
                await poller
                watcher.cancel()
    assert ready and set(ready) == {200}, Counter(ready)
    reasons = Counter(ledger.bad.values())
    assert len(ledger.expected) > 3000 and len(reasons) >= 7, reasons
    print(f"{len(ledger.expected)} messages, {len(ledger.bad)} rejected: {dict(reasons)}")
    before: Counter[str | None] = Counter()
    for phase, _, outcomes in summary:
        print(f"  {phase}: {dict(outcomes - before)}")
        before = outcomes
