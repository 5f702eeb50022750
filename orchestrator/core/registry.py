"""The canonical stage registry, loaded from ``pipeline.toml``.

The old daemon failed because components disagreed on subjects and stage
numbers. Here one data file describes the pipeline and every module asks this
module. Everything in it is pure: no I/O beyond reading the TOML file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

DEFAULT_PIPELINE_FILE = Path(__file__).with_name("pipeline.toml")

GateKind = Literal["none", "critique", "qa", "deploy"]
GATE_KINDS: tuple[str, ...] = ("none", "critique", "qa", "deploy")
# Where a new durable consumer starts: a bounded window before now (the
# engine's, so a new one does not replay a week), or every stored message
# (the runner's assignments: a stale one is skipped via Postgres).
DELIVER_POLICIES: tuple[str, ...] = ("backfill", "all")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


class RegistryError(ValueError):
    """The pipeline file is inconsistent; agogd refuses to start on it."""


def parse_duration(value: str | int | float) -> float:
    """Turn ``"90s"``, ``"2h"``, ``"7d"`` or a number of seconds into seconds."""
    if isinstance(value, bool):
        raise RegistryError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if not match:
            raise RegistryError(f"not a duration: {value!r} (use e.g. 90s, 30m, 2h, 7d)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise RegistryError(f"duration must be positive: {value!r}")
    return seconds


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` the rest (one or more)."""
    p_tokens = pattern.split(".")
    s_tokens = subject.split(".")
    for i, tok in enumerate(p_tokens):
        if tok == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens):
            return False
        if tok != "*" and tok != s_tokens[i]:
            return False
    return len(s_tokens) == len(p_tokens)


def patterns_overlap(a: str, b: str) -> bool:
    """Whether two subject patterns can match a common subject."""
    a_tokens, b_tokens = a.split("."), b.split(".")
    for i in range(max(len(a_tokens), len(b_tokens))):
        ta = a_tokens[i] if i < len(a_tokens) else None
        tb = b_tokens[i] if i < len(b_tokens) else None
        if ta == ">" and tb is not None:
            return True
        if tb == ">" and ta is not None:
            return True
        if ta is None or tb is None:
            return False
        if ta != tb and "*" not in (ta, tb):
            return False
    return True


@dataclass(frozen=True)
class StreamSpec:
    """Desired configuration of one JetStream stream."""

    name: str
    subjects: tuple[str, ...]
    storage: str = "file"
    retention: str = "limits"
    discard: str = "old"
    max_age: float = 7 * 86400
    max_msgs: int = 10000
    max_bytes: int = 1 << 30
    max_msg_size: int = 10 << 20
    duplicate_window: float = 120
    num_replicas: int = 1


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline, or a follow-up such as Tim's documentation."""

    index: int
    name: str
    agent: str
    role: str
    stream: str
    timeout: float
    retries: int
    gate: str = "none"
    rework_budget: int = 0
    after: str | None = None
    # A gate's send-back targets: the earlier stages' agents it may return work
    # to, and the one it returns it to when it names none (QA: roy, jen; roy).
    rework_to: tuple[str, ...] = ()
    rework_default: str | None = None
    # Which memories its assignments recall: (kind, author) pairs, author an
    # agent, "self" or "*" (orchestrator.memory.policy); empty: the default.
    recall: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Reporter:
    """An agent that publishes deliverables outside the REQ pipeline (Miki)."""

    name: str
    agent: str
    role: str
    stream: str


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer that agogd creates on one or more streams."""

    name: str
    streams: tuple[str, ...]
    filter_subject: str | None = None
    ack_wait: float = 60
    max_deliver: int = 20  # -1: redelivered for as long as it is nak'd
    max_ack_pending: int = 1000
    deliver: str = "backfill"  # one of DELIVER_POLICIES
    description: str | None = None


@dataclass(frozen=True)
class Pipeline:
    """The whole registry: stages, follow-ups, reporters, streams, consumers."""

    stages: tuple[Stage, ...]
    followups: tuple[Stage, ...]
    reporters: tuple[Reporter, ...]
    streams: tuple[StreamSpec, ...]
    consumers: tuple[ConsumerSpec, ...]
    subjects: Mapping[str, str] = field(default_factory=dict)
    # [runner_consumer]: the agent runner's per-agent consumer, its name and
    # description templates with {agent}; see runner_consumer(). Not among
    # ``consumers``: those are the ones the engine reads.
    runner_template: ConsumerSpec | None = None

    # --- lookups -----------------------------------------------------------
    # Lookups made per message are worked out once (the registry never changes).
    @cached_property
    def agents(self) -> tuple[str, ...]:
        """Every agent agogd knows, pipeline first."""
        names = [s.agent for s in self.stages] + [s.agent for s in self.followups]
        names += [r.agent for r in self.reporters]
        return tuple(dict.fromkeys(names))

    @cached_property
    def _stage_by_agent(self) -> Mapping[str, Stage]:
        by_agent: dict[str, Stage] = {}
        for stage in (*self.stages, *self.followups):
            by_agent.setdefault(stage.agent, stage)
        return by_agent

    def stage(self, index: int) -> Stage:
        return self.stages[index]

    def stage_for_agent(self, agent: str) -> Stage | None:
        """The pipeline stage or follow-up an agent runs, or None."""
        return self._stage_by_agent.get(agent)

    def followup(self, index: int) -> Stage | None:
        """The follow-up numbered ``index`` (they come after the pipeline), or None."""
        return next((f for f in self.followups if f.index == index), None)

    def is_followup(self, index: int | None) -> bool:
        return index is not None and index >= len(self.stages)

    def stream_prefix(self, kind: str, **fields: str) -> str:
        """The subject prefix of the stream that binds ``kind``'s subjects, e.g.
        ``agog.strategic.escalations`` (its subjects pattern without ``.>``)."""
        subject = self.subject(kind, **fields)
        (name,) = self.streams_binding(subject)
        pattern = next(p for p in self.stream(name).subjects if subject_matches(p, subject))
        return pattern.removesuffix(".>")

    def gate_stage(self, gate: str) -> Stage | None:
        """The stage holding a gate (qa, critique, deploy), if the pipeline has one."""
        return next((s for s in self.stages if s.gate == gate), None)

    def rework_target(self, stage: Stage, named: tuple[str, ...] = ()) -> int:
        """Where a gate sends work back: the earliest earlier stage among those
        it names and may return work to, else its default, else the start."""
        allowed = [
            s.index
            for a in named
            if a in stage.rework_to
            and (s := self.stage_for_agent(a)) is not None
            and s.index < stage.index
        ]
        if allowed:
            return min(allowed)
        default = self.stage_for_agent(stage.rework_default) if stage.rework_default else None
        return default.index if default is not None else 0

    def default_restart(self) -> int:
        """Where REQUEST_CHANGES without a restart_stage goes: the QA gate's default."""
        qa = self.gate_stage("qa")
        return self.rework_target(qa) if qa is not None else 0

    def next_stage(self, index: int) -> Stage | None:
        return self.stages[index + 1] if index + 1 < len(self.stages) else None

    def followups_after(self, agent: str) -> tuple[Stage, ...]:
        return tuple(f for f in self.followups if f.after == agent)

    def stream(self, name: str) -> StreamSpec:
        for spec in self.streams:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def streams_binding(self, subject: str) -> list[str]:
        """Names of the streams whose subjects match a concrete subject."""
        return [
            s.name for s in self.streams if any(subject_matches(p, subject) for p in s.subjects)
        ]

    # --- subjects ----------------------------------------------------------
    def subject(self, kind: str, **fields: str) -> str:
        """Fill a subject template; every field must be a single safe token."""
        for key, value in fields.items():
            if not _TOKEN.match(value):
                raise ValueError(f"{key}={value!r} is not a single safe subject token")
        return self.subjects[kind].format(**fields)

    def deliverable_subject(self, stage: Stage | Reporter, req: str) -> str:
        return self.subject("deliverable", agent=stage.agent, role=stage.role, req=req)

    def sample_subjects(self) -> list[str]:
        """One concrete subject for everything agogd publishes or consumes."""
        req = "REQ-SAMPLE-1"
        out: list[str] = []
        for stage in (*self.stages, *self.followups):
            out.append(self.deliverable_subject(stage, req))
            out.append(self.subject("assignment", agent=stage.agent, req=req))
            out.append(self.subject("heartbeat", agent=stage.agent, req=req))
            for event in ("started", "completed", "blocked", "failed", "skipped"):
                out.append(self.subject("stage_event", event=event, agent=stage.agent, req=req))
        for reporter in self.reporters:
            out.append(self.deliverable_subject(reporter, "infra"))
        if "infra_report_request" in self.subjects:
            out.append(self.subject("infra_report_request", feature="infra"))
        for event in ("started", "resumed", "completed", "failed"):
            out.append(self.subject("workflow_event", event=event, req=req))
        out.append(self.subjects["rejection"])
        out.append(self.subject("decision", req=req))
        out.append(self.subject("escalation", target="human"))
        out.append(self.subject("escalation", target=req))
        out.append(self.subjects["intake"])
        out.append(self.subject("sub_intake", req=req))
        return out

    def runner_consumer(self, agent: str) -> ConsumerSpec:
        """The durable consumer the agent runner reads ``agent``'s assignments
        from: [runner_consumer] filled in, filtered on the assignment subject."""
        template = self.runner_template
        if template is None:
            raise RegistryError("the pipeline has no [runner_consumer] section")
        if not _TOKEN.match(agent):
            raise ValueError(f"agent={agent!r} is not a single safe subject token")
        return replace(
            template,
            name=template.name.format(agent=agent),
            filter_subject=self.subjects["assignment"].format(agent=agent, req=">"),
            description=template.description.format(agent=agent) if template.description else None,
        )

    def with_timeouts(self, overrides: Mapping[str, float]) -> Pipeline:
        """A copy with some stage timeouts replaced, keyed by agent."""
        unknown = set(overrides) - {s.agent for s in (*self.stages, *self.followups)}
        if unknown:
            raise RegistryError(f"stage timeout for unknown agent(s): {', '.join(sorted(unknown))}")
        return replace(
            self,
            stages=tuple(
                replace(s, timeout=overrides.get(s.agent, s.timeout)) for s in self.stages
            ),
            followups=tuple(
                replace(s, timeout=overrides.get(s.agent, s.timeout)) for s in self.followups
            ),
        )

    def with_stream_replicas(self, replicas: int) -> Pipeline:
        """A copy whose every stream has ``replicas`` copies (R3 on a NATS
        cluster); a deployment's choice, not the pipeline's."""
        if not 1 <= replicas <= 5:
            raise RegistryError(f"stream replicas must be 1 to 5, not {replicas}")
        return replace(self, streams=tuple(replace(s, num_replicas=replicas) for s in self.streams))


def validate(pipeline: Pipeline) -> list[str]:
    """Every inconsistency in a pipeline, as readable lines (empty when fine)."""
    problems: list[str] = []
    stream_names = [s.name for s in pipeline.streams]
    if len(set(stream_names)) != len(stream_names):
        problems.append("duplicate stream names")
    if not pipeline.stages:
        problems.append("the pipeline has no stages")
    for pos, stage in enumerate(pipeline.stages):
        if stage.index != pos:
            problems.append(f"stage {stage.name!r} has index {stage.index}, expected {pos}")
    agents = [s.agent for s in (*pipeline.stages, *pipeline.followups)]
    if len(set(agents)) != len(agents):
        problems.append("an agent appears in more than one stage")
    for stage in (*pipeline.stages, *pipeline.followups, *pipeline.reporters):
        for token in (stage.agent, stage.role):
            if not _TOKEN.match(token):
                problems.append(f"{token!r} is not a safe subject token")
        if stage.stream not in stream_names:
            problems.append(f"{stage.name!r} names unknown stream {stage.stream!r}")
    for stage in (*pipeline.stages, *pipeline.followups):
        if stage.gate not in GATE_KINDS:
            problems.append(f"stage {stage.name!r} has unknown gate {stage.gate!r}")
        if stage.retries < 0 or stage.rework_budget < 0:
            problems.append(f"stage {stage.name!r} has a negative budget")
    for stage in pipeline.stages:
        earlier = {s.agent for s in pipeline.stages if s.index < stage.index}
        for agent in stage.rework_to:
            if agent not in earlier:
                problems.append(
                    f"stage {stage.name!r} sends work back to {agent!r}, not an earlier stage"
                )
        if stage.rework_default is not None and stage.rework_default not in stage.rework_to:
            problems.append(
                f"stage {stage.name!r}: rework_default {stage.rework_default!r} is not in rework_to"
            )
    known = {s.agent for s in (*pipeline.stages, *pipeline.followups, *pipeline.reporters)}
    for stage in (*pipeline.stages, *pipeline.followups):
        for kind, author in stage.recall:
            if author not in known | {"self", "*"}:
                problems.append(f"stage {stage.name!r} recalls {kind} of unknown agent {author!r}")
    for followup in pipeline.followups:
        if followup.after not in {s.agent for s in pipeline.stages}:
            problems.append(f"follow-up {followup.name!r} runs after unknown {followup.after!r}")
    for consumer in pipeline.consumers:
        for stream in consumer.streams:
            if stream not in stream_names:
                problems.append(f"consumer {consumer.name!r} names unknown stream {stream!r}")
    runner = (pipeline.runner_template,) if pipeline.runner_template is not None else ()
    for consumer in (*pipeline.consumers, *runner):
        if consumer.deliver not in DELIVER_POLICIES:
            problems.append(
                f"consumer {consumer.name!r} has deliver {consumer.deliver!r},"
                f" not one of {', '.join(DELIVER_POLICIES)}"
            )
        if consumer.max_deliver < 1 and consumer.max_deliver != -1:
            problems.append(f"consumer {consumer.name!r}: max_deliver must be -1 or positive")
    required = {
        "deliverable",
        "assignment",
        "heartbeat",
        "stage_event",
        "workflow_event",
        "rejection",
        "decision",
        "escalation",
        "intake",
        "sub_intake",
    }
    missing = required - set(pipeline.subjects)
    if missing:
        problems.append(f"subject templates missing: {', '.join(sorted(missing))}")
        return problems
    problems += _runner_problems(pipeline)
    for a in pipeline.streams:
        for b in pipeline.streams:
            if a.name < b.name and any(
                patterns_overlap(x, y) for x in a.subjects for y in b.subjects
            ):
                problems.append(f"streams {a.name} and {b.name} bind overlapping subjects")
    try:
        samples = pipeline.sample_subjects()
    except (ValueError, KeyError) as exc:
        problems.append(f"subject templates cannot be filled: {exc}")
        return problems
    for subject in samples:
        bound = pipeline.streams_binding(subject)
        if len(bound) != 1:
            problems.append(f"subject {subject} is bound by {len(bound)} streams {bound}, not 1")
    return problems


def _runner_problems(pipeline: Pipeline) -> list[str]:
    """What is wrong with [runner_consumer]: each agent must get a consumer of
    its own, with a safe name, on the stream that stores its assignments."""
    template = pipeline.runner_template
    if template is None:
        return ["no [runner_consumer] section (the agent runner's per-agent consumer)"]
    if "{agent}" not in template.name:
        return [f"runner_consumer name {template.name!r} does not contain {{agent}}"]
    problems: list[str] = []
    engine_names = {c.name for c in pipeline.consumers}
    for stage in (*pipeline.stages, *pipeline.followups):
        try:
            spec = pipeline.runner_consumer(stage.agent)
        except (KeyError, IndexError, ValueError) as exc:
            return [f"runner_consumer templates cannot be filled: {exc!r}"]
        if not _TOKEN.match(spec.name):
            problems.append(f"runner_consumer name {spec.name!r} is not a safe consumer name")
        if spec.name in engine_names:
            problems.append(f"runner_consumer name {spec.name!r} is also one of [[consumers]]")
        sample = pipeline.subjects["assignment"].format(agent=stage.agent, req="REQ-SAMPLE-1")
        if pipeline.streams_binding(sample) != list(spec.streams):
            problems.append(
                f"runner_consumer stream {spec.streams[0]!r} does not store {stage.agent}'s"
                f" assignments ({sample})"
            )
    return problems


def _stream(raw: Mapping[str, Any], defaults: Mapping[str, Any]) -> StreamSpec:
    merged = {**defaults, **raw}
    return StreamSpec(
        name=merged["name"],
        subjects=tuple(merged["subjects"]),
        storage=merged.get("storage", "file"),
        retention=merged.get("retention", "limits"),
        discard=merged.get("discard", "old"),
        max_age=parse_duration(merged.get("max_age", "7d")),
        max_msgs=int(merged.get("max_msgs", -1)),
        max_bytes=int(merged.get("max_bytes", -1)),
        max_msg_size=int(merged.get("max_msg_size", -1)),
        duplicate_window=parse_duration(merged.get("duplicate_window", "2m")),
        num_replicas=int(merged.get("num_replicas", 1)),
    )


def _stage(raw: Mapping[str, Any], index: int) -> Stage:
    return Stage(
        index=int(raw.get("index", index)),
        name=raw["name"],
        agent=raw["agent"],
        role=raw["role"],
        stream=raw["stream"],
        timeout=parse_duration(raw.get("timeout", "1h")),
        retries=int(raw.get("retries", 0)),
        gate=raw.get("gate", "none"),
        rework_budget=int(raw.get("rework_budget", 0)),
        after=raw.get("after"),
        rework_to=tuple(str(a) for a in raw.get("rework_to", ())),
        rework_default=raw.get("rework_default"),
        recall=tuple(_recall_pair(str(p)) for p in raw.get("recall", ())),
    )


def _recall_pair(text: str) -> tuple[str, str]:
    """``"qa_failure:*"`` -> ("qa_failure", "*")."""
    kind, sep, author = text.partition(":")
    if not sep or not kind or not author:
        raise RegistryError(f"recall entry {text!r} is not kind:author (author: agent, self or *)")
    return kind.strip(), author.strip()


def _consumer(raw: Mapping[str, Any], defaults: Mapping[str, Any]) -> ConsumerSpec:
    merged = {**defaults, **raw}
    return ConsumerSpec(
        name=merged["name"],
        streams=tuple(merged["streams"]),
        filter_subject=merged.get("filter_subject"),
        ack_wait=parse_duration(merged.get("ack_wait", "60s")),
        max_deliver=int(merged.get("max_deliver", 20)),
        max_ack_pending=int(merged.get("max_ack_pending", 1000)),
        deliver=merged.get("deliver", "backfill"),
        description=merged.get("description"),
    )


def _runner_consumer(raw: Mapping[str, Any] | None) -> ConsumerSpec | None:
    """[runner_consumer]; its filter is the assignment subject, filled per agent."""
    if raw is None:
        return None
    return ConsumerSpec(
        name=raw["name"],
        streams=(raw["stream"],),
        ack_wait=parse_duration(raw.get("ack_wait", "60s")),
        max_deliver=int(raw.get("max_deliver", -1)),
        max_ack_pending=int(raw.get("max_ack_pending", 1000)),
        deliver=raw.get("deliver", "all"),
        description=raw.get("description"),
    )


def from_mapping(data: Mapping[str, Any]) -> Pipeline:
    """Build and validate a pipeline from parsed TOML."""
    try:
        stream_defaults = data.get("stream_defaults", {})
        consumer_defaults = data.get("consumer_defaults", {})
        pipeline = Pipeline(
            stages=tuple(_stage(s, i) for i, s in enumerate(data.get("stages", []))),
            # Follow-ups are numbered after the pipeline (Tim is 7 of a 7-stage pipeline).
            followups=tuple(
                _stage(s, len(data.get("stages", [])) + i)
                for i, s in enumerate(data.get("followups", []))
            ),
            reporters=tuple(
                Reporter(name=r["name"], agent=r["agent"], role=r["role"], stream=r["stream"])
                for r in data.get("reporters", [])
            ),
            streams=tuple(_stream(s, stream_defaults) for s in data.get("streams", [])),
            consumers=tuple(_consumer(c, consumer_defaults) for c in data.get("consumers", [])),
            subjects=dict(data.get("subjects", {})),
            runner_template=_runner_consumer(data.get("runner_consumer")),
        )
    except KeyError as exc:
        raise RegistryError(f"pipeline entry is missing the key {exc}") from None
    problems = validate(pipeline)
    if problems:
        raise RegistryError("; ".join(problems))
    return pipeline


def load(path: Path | None = None, timeouts: Mapping[str, float] | None = None) -> Pipeline:
    """Load the pipeline file (the packaged default unless a path is given)."""
    source = path or DEFAULT_PIPELINE_FILE
    try:
        data = tomllib.loads(source.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RegistryError(f"cannot read pipeline file {source}: {exc}") from None
    pipeline = from_mapping(data)
    return pipeline.with_timeouts(timeouts) if timeouts else pipeline
