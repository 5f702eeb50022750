"""The runner's own overhead per stage, with a real agent CLI, against the bare CLI.

Run: .venv/bin/python bench/runner_overhead.py [--runs 10] [--cli claude]

It starts a real nats-server and PostgreSQL (orchestrator.embedded), a
scripted model server that answers at once, and agogd as a separate process
whose runner runs one agent (Roy) with the real CLI; the bench answers the
other stages. Per REQ it measures Roy's stage as the pipeline sees it: from
his assignment reaching NATS to his notice reaching NATS (the runner's
claim, prompt, spawn, the CLI's run, parse, store, publish). Alternately, in
the same run, it runs the same CLI by hand with the same argv and prompt
(spawn to exit). The difference is what agogd adds. Target: under 10% of the
bare run or under 100 ms, whichever is larger.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.core import registry  # noqa: E402
from orchestrator.embedded import NatsServer, PostgresServer  # noqa: E402
from orchestrator.embedded.daemon_proc import DaemonProcess  # noqa: E402
from orchestrator.embedded.models import Script  # noqa: E402
from orchestrator.embedded.models.anthropic import AnthropicServer  # noqa: E402
from orchestrator.embedded.models.pipeline_script import PipelineResponder  # noqa: E402
from orchestrator.embedded.seed_notices import notice  # noqa: E402
from workers.runner.profiles.base import RunSpec  # noqa: E402
from workers.runner.profiles.registry import builtin  # noqa: E402
from workers.runner.prompt import build_prompt  # noqa: E402

PIPELINE = registry.load()
AGENT = "roy"
CLIS = ROOT / ".agent-clis" / "node_modules" / ".bin"


async def bare_run(argv: list[str], stdin: str, cwd: Path, env: dict[str, str]) -> float:
    """The CLI by hand: spawn, prompt on stdin, wait for it to exit."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode())
    elapsed = time.perf_counter() - started
    if proc.returncode != 0 or b"```json" not in out:
        raise RuntimeError(f"the bare CLI run failed: {err.decode()[-500:]}")
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--cli", default="claude", choices=["claude"])
    args = parser.parse_args()
    binary = str(CLIS / args.cli)
    profile = builtin(args.cli)
    with tempfile.TemporaryDirectory(prefix="agogd-runner-bench-") as tmp:
        base = Path(tmp)
        tree, home, scratch = base / "tree", base / "home", base / "scratch"
        for path in (tree, home, scratch):
            path.mkdir()
        server = await AnthropicServer(Script(responder=PipelineResponder())).start()
        env = server.cli_env(home, api_key="bench-key")
        nats_server = NatsServer(base / "nats").start()
        pg = PostgresServer(base / "pg").start()
        daemon = DaemonProcess(
            {
                "AGOG_NATS_URL": nats_server.url,
                "AGOG_POSTGRES_DSN": pg.dsn(),
                "AGOG_RUNNER_AGENTS": AGENT,
                "AGOG_RUNNER_CLI": args.cli,
                "AGOG_RUNNER_CLI_PATHS": json.dumps({args.cli: binary}),
                "AGOG_RUNNER_WORKDIR": str(tree),
                "AGOG_RUNNER_ENV": ",".join(sorted(env)),
                "AGOG_RUNNER_DEFAULT_MODEL": "claude-sonnet-4-5",
                "AGOG_DISPATCH_INTERVAL": "0.05",
                "AGOG_MEMORY_ENABLED": "false",
                **env,
            }
        ).start()
        nc = await nats.connect(nats_server.url)
        try:
            daemon.wait_ready(90)
            piped, bare = await measure(nc, args.runs, profile, binary, tree, scratch, env)
        finally:
            await nc.close()
            daemon.stop()
            await server.stop()
            nats_server.stop()
            pg.stop()
    report(piped, bare, daemon)


async def measure(
    nc: Any,
    runs: int,
    profile: Any,
    binary: str,
    tree: Path,
    scratch: Path,
    env: dict[str, str],
) -> tuple[list[float], list[float]]:
    js = nc.jetstream()
    assigned: dict[str, float] = {}
    published: dict[str, asyncio.Future[float]] = {}
    first: list[dict[str, Any]] = []

    async def on_assignment(msg: Any) -> None:
        assignment = json.loads(msg.data)
        agent, req = assignment["agent"], assignment["req_number"]
        if agent == AGENT:
            assigned[req] = time.perf_counter()
            first.append(assignment)
            return
        reply = notice(PIPELINE, agent, req)  # the other stages answer at once
        stage = PIPELINE.stage_for_agent(agent)
        assert stage is not None
        await js.publish(PIPELINE.deliverable_subject(stage, req), json.dumps(reply).encode())

    async def on_notice(msg: Any) -> None:
        req = msg.subject.rsplit(".", 1)[-1]
        future = published.get(req)
        if future is not None and not future.done():
            future.set_result(time.perf_counter())

    await nc.subscribe("agog.orchestration.events.stage.started.>", cb=on_assignment)
    stage = PIPELINE.stage_for_agent(AGENT)
    assert stage is not None
    pattern = PIPELINE.deliverable_subject(stage, "REQ-RB-0").rsplit(".", 1)[0] + ".*"
    await nc.subscribe(pattern, cb=on_notice)
    piped: list[float] = []
    bare: list[float] = []
    for i in range(runs + 1):  # the first of each is a warm-up
        req = f"REQ-RB-{i}"
        published[req] = asyncio.get_running_loop().create_future()
        await js.publish(
            "agog.requirements.new", json.dumps({"req_number": req, "title": "Bench"}).encode()
        )
        done = await asyncio.wait_for(published[req], 180)
        if i:
            piped.append(done - assigned[req])
        spec = RunSpec(
            agent=AGENT,
            role=stage.role,
            model="claude-sonnet-4-5",
            workdir=tree,
            prompt=build_prompt(first[-1], []),
            scratch=scratch,
        )
        invocation = profile.invocation(spec, binary)
        for path, text in invocation.files.items():
            path.write_text(text)
        base_env = {k: os.environ[k] for k in ("PATH", "LANG") if k in os.environ}
        elapsed = await bare_run(
            invocation.argv, invocation.stdin, tree, {**base_env, **env, **invocation.env}
        )
        if i:
            bare.append(elapsed)
    return piped, bare


def report(piped: list[float], bare: list[float], daemon: DaemonProcess) -> None:
    p50_piped, p50_bare = statistics.median(piped), statistics.median(bare)
    added = p50_piped - p50_bare
    allowed = max(0.10 * p50_bare, 0.100)
    troubles = [e for e in daemon.events if e.get("level") in ("warning", "error")]
    troubles = [e for e in troubles if e.get("event") not in ("runner.demo_mode",)]
    print(f"runs: {len(piped)} (after one warm-up each)")
    print(f"bare CLI run, p50:               {p50_bare * 1000:8.0f} ms")
    print(f"through agogd's runner, p50:     {p50_piped * 1000:8.0f} ms")
    print(
        f"added by agogd, p50:             {added * 1000:8.0f} ms"
        f"  ({added / p50_bare:+.1%} of the bare run)"
    )
    print(
        f"allowed (max of 10%, 100 ms):    {allowed * 1000:8.0f} ms ->"
        f" {'met' if added <= allowed else 'NOT met'}"
    )
    print(f"agogd warnings/errors during the run: {len(troubles)}")
    for event in troubles[:5]:
        print(f"  {event.get('event')}: {event.get('error') or event.get('reason') or ''}")


if __name__ == "__main__":
    asyncio.run(main())
