"""Time from a container's death to the restart call, beside its floors.

Run: .venv/bin/python bench/heal_bench.py [--rounds 20]

It starts podman's Docker-API service (orchestrator.embedded.engine), runs a
labelled busybox container and kills it ``--rounds`` times while the health
watcher runs. For each death it measures the time from the die event (as a bare
subscriber sees it) to the watcher's restart call having returned.
Beside it, in the same run: the floor (die event to a bare loop's start
call having returned) and autoheal's anchor, its 5 s polling
interval (2.5 s mean wait).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiodocker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.embedded.engine import BUSYBOX_IMAGE, ContainerEngine  # noqa: E402
from workers.adapters.engine_api import PROJECT_LABEL  # noqa: E402
from workers.infra.heal_policy import HealPolicy  # noqa: E402
from workers.infra.health import HealthWatcher  # noqa: E402

AUTOHEAL_INTERVAL = 5.0


async def running(docker: aiodocker.Docker, name: str) -> None:
    while not (await docker.containers.container(name).show())["State"]["Running"]:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def floor_restart(docker: aiodocker.Docker, name: str, rounds: int) -> list[float]:
    """The floor: a bare loop that starts the container the moment its die
    event arrives (no inspect, no policy, no lock)."""
    out: list[float] = []
    events = docker.events.subscribe(filters={"type": ["container"]})
    container = docker.containers.container(name)
    await container.start()
    for _ in range(rounds):
        await running(docker, name)
        killer = asyncio.ensure_future(container.kill())
        while True:
            event = await events.get()
            if event and event.get("Action") == "die":
                died = time.perf_counter()
                break
        await container.start()
        out.append(time.perf_counter() - died)
        await killer
    await docker.events.stop()
    return out


async def watcher_restart(
    url: str, docker: aiodocker.Docker, name: str, rounds: int
) -> list[float]:
    """The die event (as a bare subscriber sees it) → the watcher's restart
    call having returned. From the death, not from the kill call: podman
    sometimes answers a kill only after 20 s, long after the container died."""
    restarted_at: list[float] = []
    restarted = asyncio.Event()

    async def emit(event: str, _details: dict[str, Any]) -> None:
        if event == "container.restarted":
            restarted_at.append(time.perf_counter())
            restarted.set()

    policy = HealPolicy(budget=rounds + 1, backoff_base=0.0, backoff_max=0.0)
    watcher = HealthWatcher(url, ["bench"], policy, emit, reconcile_interval=30)
    stopping = asyncio.Event()
    task = asyncio.ensure_future(watcher.run(stopping))
    while not watcher.connected:  # noqa: ASYNC110 - a flag, polled
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the event stream is subscribed
    events = docker.events.subscribe(filters={"type": ["container"]})
    container = docker.containers.container(name)
    out: list[float] = []
    for _ in range(rounds):
        await running(docker, name)
        restarted.clear()
        killer = asyncio.ensure_future(container.kill())
        while True:
            event = await events.get()
            if event and event.get("Action") == "die":
                died = time.perf_counter()
                break
        await asyncio.wait_for(restarted.wait(), 60)
        out.append(restarted_at[-1] - died)
        await killer
    await docker.events.stop()
    stopping.set()
    await task
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agogd-heal-bench-") as tmp:
        engine = ContainerEngine(Path(tmp) / "engine").start()
        try:
            engine.ensure_busybox_image()
            docker = aiodocker.Docker(url=engine.url)
            try:
                name = "heal-bench"
                await docker.containers.create_or_replace(
                    name=name,
                    config={
                        "Image": BUSYBOX_IMAGE,
                        "Cmd": ["sleep", "600"],
                        "Labels": {PROJECT_LABEL: "bench"},
                    },
                )
                floor = await floor_restart(docker, name, args.rounds)
                heal = await watcher_restart(engine.url, docker, name, args.rounds)
                await docker.containers.container(name).delete(force=True)
            finally:
                await docker.close()
        finally:
            engine.stop()
    p50 = statistics.median(heal)
    print(f"rounds: {args.rounds}")
    print(
        f"floor: die -> bare start     p50 {statistics.median(floor) * 1000:7.1f} ms"
        f"  max {max(floor) * 1000:7.1f} ms"
    )
    print(
        f"watcher: die -> restart      p50 {p50 * 1000:7.1f} ms  max {max(heal) * 1000:7.1f} ms"
        f"  = {p50 / statistics.median(floor):.1f} x floor"
    )
    print(
        f"autoheal anchor: {AUTOHEAL_INTERVAL:.0f} s polling (mean wait 2.5 s)"
        f" = {2.5 / p50:.0f} x slower than the watcher's p50"
    )


if __name__ == "__main__":
    asyncio.run(main())
