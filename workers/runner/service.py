"""The agent runner: turns stage assignments into supervised agent processes.

One durable consumer per agent (the registry's ``[runner_consumer]``,
``agogd_runner_<agent>``) reads that agent's assignments. For each one the
runner checks that the attempt is still the running one, claims (REQ, stage,
attempt) in Postgres, spawns the agent with the prompt on stdin, heart-beats
while it runs, parses its notice (or makes a FAILED one that says why),
stores it, publishes it with a ``Nats-Msg-Id`` of (REQ, stage, attempt) until
JetStream acks it, and only then acks the assignment. A redelivered
assignment starts nothing new: its claim shows the process running
elsewhere, or its stored notice is re-published.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from orchestrator.core import strict_json
from orchestrator.core.backoff import delays
from orchestrator.core.registry import ConsumerSpec, Stage
from orchestrator.core.roles import role_text
from orchestrator.engine import store
from orchestrator.inbound.notices import NoticeError, extract_json, parse_notice, validate_req_id
from orchestrator.inbound.rejection import Rejection
from orchestrator.runtime import services
from orchestrator.runtime.context import Runtime
from orchestrator.runtime.db import DB_ERRORS
from orchestrator.runtime.logs import bound_context, get_logger
from orchestrator.runtime.pull import PullFeed
from orchestrator.runtime.services import Outcome, Service, sleep_unless_stopped
from orchestrator.runtime.topology import Reconciler, TopologyError
from workers.adapters.forge import Forge
from workers.adapters.git_repo import GitError
from workers.adapters.supervise import ProcessResult, run_process
from workers.branches.worktrees import AttemptKey, Worktree, WorktreeError, Worktrees
from workers.release.berry import NativeBerry
from workers.runner import store as runner_store
from workers.runner.commands import (
    agent_env,
    model_of,
    native_agents,
    profile_for,
    runner_stages,
)
from workers.runner.profiles.base import AgentOutput, RunSpec, Usage, per_attempt
from workers.runner.prompt import build_prompt
from workers.runner.transcript import Transcript, secrets_of

log = get_logger("agogd.runner")

TAIL = 2000  # characters of output a FAILED notice carries
TRANSCRIPT_EVERY = 1.0  # seconds between saves of a running attempt's transcript


class BadAssignment(ValueError):
    """An assignment the runner cannot act on; it is term'd with a rejection event."""


class Runner:
    """Runs the configured agents' processes for one agogd."""

    def __init__(
        self,
        rt: Runtime,
        stages: list[Stage],
        *,
        worktrees: Worktrees | None = None,
        forge: Forge | None = None,
    ) -> None:
        self.rt, self.settings, self.pipeline = rt, rt.settings, rt.pipeline
        self.stages = stages
        self.worktrees = worktrees  # None: every agent shares AGOG_RUNNER_WORKDIR
        native = native_agents(self.settings, self.pipeline)
        deploy = self.pipeline.gate_stage("deploy")
        # Both fail early on a setting that cannot work.
        self.profiles = {
            s.agent: profile_for(self.settings, s) for s in stages if s.agent not in native
        }
        self.berry = (
            NativeBerry(rt, worktrees=worktrees, forge=forge)
            if deploy is not None and deploy.agent in native
            else None
        )
        self.env = agent_env(self.settings)
        self.secrets = secrets_of(self.env, self.settings.runner_env)
        self.slots = asyncio.Semaphore(self.settings.runner_concurrency)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.cancels: dict[str, set[asyncio.Event]] = {}

    def services(self) -> dict[str, Service]:
        """The daemon's services: one consumer per agent, and the cancel watch."""
        out: dict[str, Service] = {
            f"runner:{stage.agent}": (lambda s=stage: self.consume(s)) for stage in self.stages
        }
        out["runner-cancels"] = self.watch_cancels
        return out

    # --- consumers -----------------------------------------------------------
    def consumer_of(self, stage: Stage) -> ConsumerSpec:
        """The registry's consumer of this agent's assignments, as many
        unacked as its processes may hold (a few batches each)."""
        spec = self.pipeline.runner_consumer(stage.agent)
        return dataclasses.replace(
            spec, max_ack_pending=max(self.settings.runner_per_agent * 4, 16)
        )

    async def consume(self, stage: Stage) -> None:
        """Take this agent's assignments while a per-agent slot is free."""
        spec = self.consumer_of(stage)
        stream = spec.streams[0]
        if not await self._ensure_consumer(stream, spec):
            return  # stopped before the consumer could be made
        feed = await PullFeed(self.rt.nc, stream, spec.name, batch=1).start()
        log.info(
            "runner.consuming",
            agent=stage.agent,
            cli=self.profiles[stage.agent][0].name if stage.agent in self.profiles else "(native)",
            demo=self.settings.demo or None,
        )

        async def handle(msgs: list[Msg]) -> list[Outcome]:
            return [await self._handle(msg, stage, spec.ack_wait) for msg in msgs]

        await services.consume(
            feed,
            handle,
            name=f"consumer.{stream}.{spec.name}",
            stopping=self.rt.stopping,
            states=self.rt.states,
            concurrency=self.settings.runner_per_agent,
            nak_delay=self.settings.runner_heartbeat_interval,
        )

    async def _ensure_consumer(self, stream: str, spec: ConsumerSpec) -> bool:
        """Create or update the consumer, retrying with backoff while NATS is
        away; False when the daemon stopped first."""
        reconciler = Reconciler(
            self.rt.nc, self.pipeline, consumer_backfill=self.settings.consumer_backfill
        )
        for delay in delays(maximum=self.settings.backoff_max):
            if self.rt.stopping.is_set():
                return False
            try:
                await reconciler.reconcile_consumer(stream, spec)
                return True
            except (NatsError, OSError, TimeoutError, TopologyError) as exc:
                log.warning("runner.consumer_unavailable", consumer=spec.name, error=str(exc))
                await sleep_unless_stopped(self.rt.stopping, delay)
        raise AssertionError("unreachable: delays() never ends")

    async def watch_cancels(self) -> None:
        """Stop the processes of a REQ that was cancelled."""
        subject = self.pipeline.subjects["workflow_event"].format(event="cancelled", req="*")

        async def on_cancel(msg: Msg) -> None:
            req = msg.subject.rsplit(".", 1)[-1]
            for event in self.cancels.get(req, ()):
                event.set()

        sub = await self.rt.nc.subscribe(subject, cb=on_cancel)
        try:
            await self.rt.stopping.wait()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # --- one assignment ----------------------------------------------------------
    async def _handle(self, msg: Msg, stage: Stage, ack_wait: float) -> Outcome:
        """What becomes of one assignment, once its notice is published (ack),
        when it must come back later (nak) or is malformed (term)."""
        keepalive = asyncio.ensure_future(_keep_in_progress(msg, ack_wait / 3))
        try:
            try:
                assignment = parse_assignment(msg.data, stage)
            except BadAssignment as exc:
                await self._reject(msg, str(exc))
                return "term"
            with bound_context(
                req_number=assignment["req_number"],
                agent=stage.agent,
                stage=stage.index,
                attempt=assignment["attempt"],
            ):
                return await self._run(msg, stage, assignment)
        except Exception as exc:  # Postgres away, a bug: keep it for a redelivery
            log.error("runner.failed", error=repr(exc), msg_subject=msg.subject)
            return "nak"
        finally:
            keepalive.cancel()

    async def _run(self, msg: Msg, stage: Stage, assignment: dict[str, Any]) -> Outcome:
        pool = self.rt.pool
        run = runner_store.Run(assignment["req_number"], stage.index, assignment["attempt"])
        current = await runner_store.attempt_state(pool, run)
        if current is None or current[0] != "RUNNING":
            log.info("runner.assignment_stale", status=current[0] if current else None)
            return "ack"
        claim = await runner_store.claim(pool, run, stage.agent, self.name, self._lease_seconds())
        if claim == "running":
            log.info("runner.already_running", reason="a live claim holds this attempt")
            return "nak"
        if claim == "published":
            log.info("runner.already_published")
            return "ack"
        if claim == "taken_over":
            log.warning("runner.taking_over", reason="the lease ran out")
        # A notice made before a crash but not yet published: send it, don't re-run.
        notice = await runner_store.stored_notice(pool, run)
        if notice is None:
            notice = await self._spawn(stage, assignment, run, current[1])
            await runner_store.record_notice(pool, run, notice)
        await self._publish(stage, run.req, run.attempt, notice)
        await runner_store.mark_published(pool, run)
        return "ack"

    def _lease_seconds(self) -> float:
        return self.settings.runner_heartbeat_interval * 3 + self.settings.runner_kill_grace

    async def _spawn(
        self, stage: Stage, assignment: dict[str, Any], run: runner_store.Run, deadline: datetime
    ) -> dict[str, Any]:
        req, attempt = run.req, run.attempt
        pool = self.rt.pool
        previous = await runner_store.previous_deliverables(pool, run)
        cancel = asyncio.Event()
        self.cancels.setdefault(req, set()).add(cancel)

        async def heartbeat() -> None:
            await runner_store.renew(pool, run, self._lease_seconds())
            await self.rt.nc.publish(
                self.pipeline.subject("heartbeat", agent=stage.agent, req=req),
                json.dumps(
                    {
                        "req_number": req,
                        "agent": stage.agent,
                        "attempt": attempt,
                        "runner": self.name,
                        "timestamp": store.now_iso(),
                    }
                ).encode(),
            )

        timeout = max(1.0, (deadline - datetime.now(UTC)).total_seconds())
        try:
            if stage.agent not in self.profiles:
                return await self._native(stage, assignment, previous, heartbeat, cancel, timeout)
            return await self._run_cli(stage, assignment, previous, run, heartbeat, cancel, timeout)
        finally:
            self.cancels[req].discard(cancel)
            if not self.cancels[req]:
                del self.cancels[req]

    async def _run_cli(
        self,
        stage: Stage,
        assignment: dict[str, Any],
        previous: list[dict[str, Any]],
        run: runner_store.Run,
        heartbeat: Callable[[], Awaitable[None]],
        cancel: asyncio.Event,
        timeout: float,
    ) -> dict[str, Any]:
        """One attempt of a real (or generic) agent CLI, supervised, its output
        kept as the attempt's transcript."""
        profile, binary = self.profiles[stage.agent]
        resume, before = None, None
        if self.settings.runner_resume and run.attempt > 1 and profile.name != "generic":
            found = await runner_store.previous_session(self.rt.pool, run, profile.name)
            if found is not None:
                resume = found[0]
                if profile.session_totals:
                    before = usage_from(found[1])
        key = AttemptKey(run.req, run.stage, run.attempt)
        try:
            wt = await self._worktree_for(stage, assignment, key)
        except (WorktreeError, GitError) as exc:
            return failed_notice(stage, assignment, f"the REQ's worktree: {exc}")
        transcript = Transcript(self.settings.runner_transcript_bytes, self.secrets)
        with tempfile.TemporaryDirectory(prefix="agogd-attempt-") as scratch:
            spec = RunSpec(
                agent=stage.agent,
                role=stage.role,
                model=model_of(self.settings, stage.agent),
                workdir=wt.path if wt is not None else self.settings.runner_workdir.resolve(),
                prompt=build_prompt(assignment, previous),
                role_text=role_text(self.pipeline, stage),
                resume_session=resume,
                budget_usd=attempt_budget(self.settings, stage.agent, assignment),
                bypass_permissions=self.settings.runner_bypass_permissions,
                scratch=Path(scratch),
            )
            invocation = profile.invocation(spec, binary)
            for path, text in invocation.files.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)

            def on_line(stream: str, line: str) -> None:
                transcript.add(stream, line)
                log.info("agent.output", stream=stream, line=transcript.scrub(line))

            log.info(
                "agent.started",
                cli=profile.name,
                argv0=invocation.argv[0],
                resume=resume,
                timeout=round(timeout, 1),
            )
            flusher = asyncio.ensure_future(self._keep_transcript(run, stage.agent, transcript))
            started = time.monotonic()
            try:
                async with self.slots:
                    result = await run_process(
                        invocation.argv,
                        stdin=invocation.stdin,
                        cwd=spec.workdir,
                        # The CLI's temporary files (error reports...) go with the attempt.
                        env={
                            **self.env,
                            "TMPDIR": scratch,
                            **({"AGOG_WORKTREE": str(wt.path)} if wt is not None else {}),
                            **invocation.env,
                        },
                        timeout=timeout,
                        kill_grace=self.settings.runner_kill_grace,
                        output_limit=self.settings.runner_output_limit,
                        on_line=on_line,
                        heartbeat=heartbeat,
                        heartbeat_interval=self.settings.runner_heartbeat_interval,
                        cancel=cancel,
                    )
            finally:
                flusher.cancel()
                text, total = transcript.snapshot()
                with contextlib.suppress(*DB_ERRORS):
                    await runner_store.save_transcript(
                        self.rt.pool, run, stage.agent, text, total, running=False
                    )
        output = profile.parse(result.stdout, result.stderr_tail)
        notice = outcome_notice(
            result,
            stage,
            assignment,
            self.pipeline.agents,
            self.settings.max_message_bytes,
            output=output,
        )
        # What the CLI reported wins; what the agent itself said fills the rest.
        own = notice.get("usage") if isinstance(notice.get("usage"), dict) else {}
        if output.model is None and spec.model:  # a CLI that does not say (codex)
            output = dataclasses.replace(output, model=spec.model)
        reported = usage_of(profile.name, output, time.monotonic() - started, before)
        notice["usage"] = {**own, **reported}
        if wt is not None and notice["status"] != "FAILED":
            notice = await self._commit_attempt(wt, key, stage, notice)
        level = log.info if notice["status"] != "FAILED" else log.warning
        level(
            "agent.finished",
            exit_code=result.exit_code,
            status=notice["status"],
            reason=notice.get("reason"),
            killed=result.killed or None,
            stragglers_killed=result.stragglers_killed or None,
            cost_usd=output.usage.cost_usd,
            session=output.session_id,
        )
        return notice

    async def _worktree_for(
        self, stage: Stage, assignment: dict[str, Any], key: AttemptKey
    ) -> Worktree | None:
        """The REQ's worktree, ready for this attempt (None: no AGOG_REPO).

        A decision with ``reset_branch`` starts the stage over from where it
        first began; a rework for a merge conflict starts with the
        integration branch's head merged in, conflicts left to resolve."""
        if self.worktrees is None:
            return None
        reset, conflict = branch_wishes(assignment)
        wt = await self.worktrees.ensure(key.req)
        merge = await self.worktrees.integration_head() if conflict else None
        await self.worktrees.begin(wt, key, stage.agent, reset=reset, merge=merge)
        return wt

    async def _commit_attempt(
        self, wt: Worktree, key: AttemptKey, stage: Stage, notice: dict[str, Any]
    ) -> dict[str, Any]:
        """Commit what the agent left on the REQ's branch; the notice carries
        the commit and how its files compare with what the agent listed."""
        assert self.worktrees is not None
        try:
            found = await self.worktrees.finish(
                wt, key, agent=stage.agent, stage_name=stage.name, notice=notice
            )
        except (WorktreeError, GitError) as exc:
            return {**notice, **failed_notice_fields(f"the stage's commit failed: {exc}")}
        if found.get("unresolved"):
            files = ", ".join(found["unresolved"][:10])
            reason = f"the merge conflict is not resolved: conflict markers remain in {files}"
            return {**notice, **failed_notice_fields(reason), "branch": found}
        return {**notice, "branch": found}

    async def _keep_transcript(
        self, run: runner_store.Run, agent: str, transcript: Transcript
    ) -> None:
        """Save the transcript about every second while the agent runs (for
        ``agogctl req logs --follow`` and the board)."""
        while True:
            await asyncio.sleep(TRANSCRIPT_EVERY)
            if not transcript.dirty:
                continue
            text, total = transcript.snapshot()
            try:
                await runner_store.save_transcript(self.rt.pool, run, agent, text, total, True)
            except DB_ERRORS as exc:  # the next save or the last one catches up
                log.debug("runner.transcript_save_failed", error=repr(exc))

    async def _native(
        self,
        stage: Stage,
        assignment: dict[str, Any],
        previous: list[dict[str, Any]],
        heartbeat: Callable[[], Awaitable[None]],
        cancel: asyncio.Event,
        timeout: float,
    ) -> dict[str, Any]:
        """A stage agogd does itself (Berry): heart-beat while it runs, stop it
        at the deadline or on cancel, and always come back with a notice."""
        assert self.berry is not None
        log.info("agent.started", argv0="(native)", timeout=round(timeout, 1))

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.settings.runner_heartbeat_interval)
                with contextlib.suppress(Exception):
                    await heartbeat()

        work = asyncio.ensure_future(self.berry.run(assignment, previous))
        beater = asyncio.ensure_future(beat())
        stopper = asyncio.ensure_future(cancel.wait())
        reason: str | None = None
        try:
            async with self.slots:
                done, _ = await asyncio.wait(
                    {work, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            if work in done:
                notice = work.result()
            else:
                reason = (
                    "cancelled: the REQ was cancelled while berry ran"
                    if stopper in done
                    else f"deadline passed: berry's native stage ran over {timeout:.0f}s"
                )
        finally:
            for task in (work, beater, stopper):
                task.cancel()
        if reason is not None:
            notice = failed_notice(stage, assignment, reason)
        log.info("agent.finished", status=notice["status"], reason=notice.get("reason"))
        return notice

    async def _publish(self, stage: Stage, req: str, attempt: int, notice: dict[str, Any]) -> None:
        """Publish until JetStream acks it: a notice is never dropped."""
        js = self.rt.nc.jetstream()
        subject = self.pipeline.deliverable_subject(stage, req)
        headers = {"Nats-Msg-Id": f"runner:{req}:{stage.index}:{attempt}"}
        data = json.dumps(notice).encode()
        for delay in delays(maximum=self.settings.backoff_max):
            try:
                await js.publish(subject, data, headers=headers, timeout=5)
                log.info("runner.notice_published", msg_subject=subject, status=notice["status"])
                return
            except (NatsError, OSError, TimeoutError) as exc:
                log.warning("runner.publish_retry", msg_subject=subject, error=repr(exc))
                await asyncio.sleep(delay)

    async def _reject(self, msg: Msg, reason: str) -> None:
        """Say why on the rejection subject (once per stored assignment)."""
        log.warning("runner.assignment_rejected", msg_subject=msg.subject, reason=reason)
        rejection = Rejection.of(msg, "bad_assignment", reason, by="runner")
        with contextlib.suppress(Exception):
            await self.rt.nc.jetstream().publish(
                self.pipeline.subjects["rejection"],
                json.dumps(rejection.event()).encode(),
                headers={"Nats-Msg-Id": rejection.msg_id},
            )


# --- pure helpers -----------------------------------------------------------------
def parse_assignment(data: bytes, stage: Stage) -> dict[str, Any]:
    """The assignment as a dict, checked; BadAssignment says what is wrong."""
    try:
        value = strict_json.loads(data)
    except ValueError as exc:
        raise BadAssignment(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadAssignment("not a JSON object")
    try:
        validate_req_id(value.get("req_number"))
    except ValueError as exc:
        raise BadAssignment(f"req_number: {exc}") from None
    if value.get("agent") != stage.agent:
        raise BadAssignment(f"agent {value.get('agent')!r} is not {stage.agent!r}")
    attempt = value.get("attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise BadAssignment(f"attempt {attempt!r} is not a positive integer")
    return value


def branch_wishes(assignment: dict[str, Any]) -> tuple[bool, bool]:
    """(reset the stage's branch to where it first began, merge the
    integration head in to resolve a conflict), from the assignment's
    instructions: a decision's ``reset_branch`` (at its top or inside its
    ``instructions``, as ``agogctl req decide --reset-branch`` sends it), or
    a rework carrying Berry's ``conflict``."""
    instructions = assignment.get("instructions")
    if not isinstance(instructions, dict):
        return False, False
    decision, rework = instructions.get("decision"), instructions.get("rework")
    reset = False
    if isinstance(decision, dict):
        nested = decision.get("instructions")
        reset = decision.get("reset_branch") is True or (
            isinstance(nested, dict) and nested.get("reset_branch") is True
        )
    conflict = isinstance(rework, dict) and isinstance(rework.get("conflict"), dict)
    return reset, conflict


def failed_notice_fields(reason: str) -> dict[str, Any]:
    return {"status": "FAILED", "summary": reason, "reason": reason}


def failed_notice(stage: Stage, assignment: dict[str, Any], reason: str) -> dict[str, Any]:
    """A FAILED notice for an attempt that could not run or finish."""
    return {
        "agent": stage.agent,
        "req_number": assignment["req_number"],
        "attempt": assignment["attempt"],
        **failed_notice_fields(reason),
    }


def last_lines(text: str, count: int = 3, width: int = 300) -> str:
    """The last non-empty lines of an output, on one line (for a reason)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:])[-width:]


def outcome_notice(
    result: ProcessResult,
    stage: Stage,
    assignment: dict[str, Any],
    known_agents: Any,
    max_bytes: int,
    output: AgentOutput | None = None,
) -> dict[str, Any]:
    """The notice to publish: the agent's own, normalised, or a FAILED one
    saying why (with the exit code and the last lines of stderr, which
    ``agogctl req show`` prints in full)."""
    req, attempt = assignment["req_number"], assignment["attempt"]
    output = output or AgentOutput(text=result.stdout)
    stderr = last_lines(result.stderr_tail)
    reason: str | None = None
    if result.error:
        reason = result.error
    elif result.cancelled:
        reason = "cancelled: the REQ was cancelled while the agent ran"
    elif result.timed_out:
        reason = f"deadline passed: the agent was stopped ({', '.join(result.killed)})"
    elif result.exit_code != 0:
        said = output.error or stderr or last_lines(result.stdout)
        reason = f"the agent exited with code {result.exit_code}" + (f": {said}" if said else "")
    elif output.is_error:
        reason = f"the agent CLI reported an error: {output.error or stderr or 'no detail'}"
    else:
        try:
            found = extract_json(output.text)
            notice = parse_notice(
                json.dumps(found).encode(),
                known_agents=known_agents,
                max_bytes=max_bytes,
                subject_agent=stage.agent,
                subject_req=req,
            )
        except NoticeError as exc:
            reason = f"no valid notice in the output ({exc.reason}: {exc.message})"
            if stderr:
                reason += f"; stderr: {stderr}"
        else:
            if notice.attempt not in (None, attempt):
                reason = f"the notice is for attempt {notice.attempt}, not {attempt}"
            else:
                # The agent's own object, every field under its own name (the
                # deliverable cache is read with psql), with its attempt.
                return {**notice.published, "attempt": attempt}
    tail = output.text[-TAIL:] + (
        "\n[stderr]\n" + result.stderr_tail[-TAIL:] if result.stderr_tail else ""
    )
    return {
        "agent": stage.agent,
        "req_number": req,
        "attempt": attempt,
        "status": "FAILED",
        "summary": reason,
        "reason": reason,
        "exit_code": result.exit_code,
        "output_tail": tail,
        "output_truncated": result.stdout_truncated,
    }


def usage_of(
    cli: str, output: AgentOutput, seconds: float, before: Usage | None = None
) -> dict[str, Any]:
    """The notice's ``usage``: what the CLI said the attempt used. A CLI that
    reports a resumed session's totals (``before``: the totals after the
    previous attempt) is counted for this attempt alone; the totals are kept
    under ``session_totals`` for the next one."""
    usage = per_attempt(output.usage, before)
    found: dict[str, Any] = {
        "cli": cli,
        "model": output.model,
        "session_id": output.session_id,
        "duration_s": round(seconds, 3),
    }
    if usage != Usage():  # the CLI reported its usage (a generic command does not)
        found |= {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "cost_usd": usage.cost_usd,
            "turns": usage.turns,
            "session_totals": dataclasses.asdict(output.usage),
        }
    return {k: v for k, v in found.items() if v is not None}


def usage_from(totals: dict[str, Any]) -> Usage | None:
    """A stored ``session_totals`` back as a Usage (None if unreadable)."""
    fields = {f.name for f in dataclasses.fields(Usage)}
    try:
        return Usage(**{k: v for k, v in totals.items() if k in fields}) if totals else None
    except TypeError:
        return None


def attempt_budget(settings: Any, agent: str, assignment: dict[str, Any]) -> float | None:
    """What this attempt may spend: its agent's or every stage's budget, and
    no more than the REQ has left (the assignment's budget_left_usd)."""
    limits = [settings.budget_usd_per_agent.get(agent, settings.budget_usd_per_stage)]
    left = assignment.get("budget_left_usd")
    if isinstance(left, int | float) and not isinstance(left, bool):
        limits.append(float(left))
    found = [x for x in limits if x is not None]
    return min(found) if found else None


async def _keep_in_progress(msg: Msg, interval: float) -> None:
    """Keep the assignment's ack deadline moving while it is worked on."""
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(Exception):
            await msg.in_progress()


def build(
    rt: Runtime, *, worktrees: Worktrees | None = None, forge: Forge | None = None
) -> Runner | None:
    """The runner when agents are configured (or demo), else None; its
    services are ``runner.services()``."""
    stages = runner_stages(rt.settings, rt.pipeline)
    if not stages:
        return None
    runner = Runner(rt, stages, worktrees=worktrees, forge=forge)
    if worktrees is None and rt.settings.max_in_flight > 1:
        log.warning(
            "runner.shared_workdir",
            workdir=str(rt.settings.runner_workdir.resolve()),
            max_in_flight=rt.settings.max_in_flight,
            note="the agents of REQs in flight at once share this directory;"
            " set AGOG_REPO for a branch and a worktree per REQ",
        )
    if rt.settings.demo:
        log.warning(
            "runner.demo_mode",
            note="DEMO agents answer every assignment with canned notices; not for real work",
        )
    return runner
