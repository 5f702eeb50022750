"""Run one agent process under supervision.

The old host listener ran agents with no timeout and no kill. Here every
process runs in its own process group with the prompt on stdin; its output
streams to the log line by line (bounded, keeping the tail); a callback
beats while it runs; and at the deadline, or on cancel, the whole group gets
SIGTERM, then SIGKILL after a grace period. Whatever of the group outlives
its leader (a background child, one that ignored SIGTERM) is killed when the
leader ends: a run leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

LINE_LIMIT = 4096  # characters of one output line kept for the log


@dataclass
class ProcessResult:
    """What a run came to; ``error`` is set when the process never started."""

    exit_code: int | None = None
    stdout: str = ""  # up to the output limit: the tail when it overflowed
    stdout_truncated: bool = False
    stderr_tail: str = ""
    timed_out: bool = False
    cancelled: bool = False
    error: str | None = None
    pid: int | None = None
    killed: list[str] = field(default_factory=list)  # signals sent, in order
    stragglers_killed: bool = False  # group members outlived the leader, and were killed


class _Tail:
    """Keeps the last ``limit`` characters of a stream."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size, self.truncated = limit, 0, False
        self.chunks: deque[str] = deque()

    def add(self, text: str) -> None:
        self.chunks.append(text)
        self.size += len(text)
        while self.size > self.limit and self.chunks:
            self.truncated = True
            head = self.chunks.popleft()
            self.size -= len(head)
            if self.size < self.limit:  # keep the part of head that still fits
                keep = head[len(head) - (self.limit - self.size) :]
                self.chunks.appendleft(keep)
                self.size += len(keep)

    def text(self) -> str:
        return "".join(self.chunks)


async def run_process(
    argv: list[str],
    *,
    stdin: str,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    kill_grace: float,
    output_limit: int,
    on_line: Callable[[str, str], None],
    heartbeat: Callable[[], Awaitable[None]] | None = None,
    heartbeat_interval: float = 15.0,
    cancel: asyncio.Event | None = None,
) -> ProcessResult:
    """Run ``argv`` (never through a shell) until it exits, times out or is cancelled."""
    result = ProcessResult()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group, killed as a whole
            limit=1024 * 1024,
        )
    except (OSError, ValueError) as exc:  # missing, not executable, bad cwd
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        result.error = f"cannot run {argv[0]!r}: {why}"
        return result
    result.pid = proc.pid
    out, err = _Tail(output_limit), _Tail(64 * 1024)
    readers = [
        asyncio.ensure_future(_pump(proc.stdout, "stdout", out, on_line)),
        asyncio.ensure_future(_pump(proc.stderr, "stderr", err, on_line)),
    ]
    feeder = asyncio.ensure_future(_feed(proc, stdin))
    beater = asyncio.ensure_future(_beat(heartbeat, heartbeat_interval)) if heartbeat else None
    waiter = asyncio.ensure_future(_exited(proc))
    stopper = asyncio.ensure_future(cancel.wait()) if cancel else None
    try:
        done, _ = await asyncio.wait(
            [w for w in (waiter, stopper) if w is not None],
            timeout=timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if waiter not in done:
            result.timed_out = stopper not in done
            result.cancelled = not result.timed_out
            await _kill_group(proc, kill_grace, result)
        result.exit_code = await waiter
        _kill_stragglers(proc, result)  # also closes the pipes they may hold
        await asyncio.wait(readers, timeout=kill_grace)
    finally:
        for task in (feeder, beater, stopper, *readers):
            if task is not None and not task.done():
                task.cancel()
        if proc.returncode is None:  # cancelled from outside: leave nothing behind
            await _kill_group(proc, kill_grace, result)
            _kill_stragglers(proc, result)
    result.stdout, result.stdout_truncated = out.text(), out.truncated
    result.stderr_tail = err.text()[-4096:]
    return result


async def _kill_group(
    proc: asyncio.subprocess.Process, grace: float, result: ProcessResult
) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
            result.killed.append(sig.name)
        try:
            async with asyncio.timeout(grace):
                await _exited(proc)
            return
        except TimeoutError:
            continue


async def _exited(proc: asyncio.subprocess.Process, poll: float = 0.05) -> int:
    """The leader's exit code, as soon as it has exited. Not ``proc.wait()``:
    on Python 3.11 that also waits for the pipes to close, so a background
    child holding stdout would keep a finished agent "running" until its
    deadline. The child watcher sets ``returncode`` at the exit itself."""
    while proc.returncode is None:  # noqa: ASYNC110 - asyncio offers no event for it
        await asyncio.sleep(poll)
    return proc.returncode


def _kill_stragglers(proc: asyncio.subprocess.Process, result: ProcessResult) -> None:
    """SIGKILL what is left of the group once its leader is gone. The group id
    stays taken while any member lives, so this reaches only those members;
    an empty group answers ProcessLookupError."""
    if "SIGKILL" in result.killed:
        return  # the whole group has had it already
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
        result.stragglers_killed = True


async def _feed(proc: asyncio.subprocess.Process, text: str) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(text.encode())
        await proc.stdin.drain()
        proc.stdin.close()


async def _pump(
    stream: asyncio.StreamReader | None,
    name: str,
    tail: _Tail,
    on_line: Callable[[str, str], None],
) -> None:
    assert stream is not None
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # a line over the reader's limit: take what is there
            raw = await stream.read(1024 * 1024)
        if not raw:
            return
        text = raw.decode("utf-8", "replace")
        tail.add(text)
        line = text.rstrip("\r\n")
        on_line(name, line if len(line) <= LINE_LIMIT else line[:LINE_LIMIT] + " …[truncated]")


async def _beat(heartbeat: Callable[[], Awaitable[None]], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(Exception):  # a missed beat is not the run's failure
            await heartbeat()
