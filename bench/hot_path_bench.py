"""What agogd's own Python costs per message, against the bare work in the same run.

Run:  .venv/bin/python bench/hot_path_bench.py [--rounds 5]

Two pieces of every transition, each timed over many calls, best of
``--rounds``, and each against a baseline measured alternately with it:

- a log line (an info line with bound context, as the engine writes one per
  transition) against ``orjson.dumps`` of the same event written to the same
  sink: what the processors add to rendering;
- ``parse_notice`` of a bench notice against ``orjson.loads`` of the same
  bytes: what the lenient parse and the schema add to decoding.

No servers: pure CPU, so the figures are steady enough to compare levers.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.workflow_bench import answer  # noqa: E402
from orchestrator.core import registry  # noqa: E402
from orchestrator.inbound.notices import parse_notice  # noqa: E402
from orchestrator.runtime import logs  # noqa: E402

REQ = "REQ-SAT-00001"


def per_call(fn: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n


def best(fn: Callable[[], object], n: int, rounds: int) -> float:
    return min(per_call(fn, n) for _ in range(rounds))


def log_line(rounds: int) -> tuple[float, float]:
    sink = open(os.devnull, "w")
    real, sys.stdout = sys.stdout, sink
    try:
        logs.configure("info", "json", once=True)
        log = logs.get_logger("agogd.engine")
        event = {"req_number": REQ, "stage": 3, "attempt": 1, "reason": None}

        def agogd() -> None:
            with logs.bound_context(req_number=REQ, msg_subject="agog.deliverables.roy"):
                log.info("stage.completed", **event)

        def bare() -> None:
            line = {"msg_subject": "agog.deliverables.roy", "event": "stage.completed", **event}
            sink.write(orjson.dumps({**line, "level": "info"}).decode() + "\n")
            sink.flush()

        pairs = [(best(agogd, 20000, 1), best(bare, 20000, 1)) for _ in range(rounds)]
    finally:
        sys.stdout = real
    return min(p[0] for p in pairs), min(p[1] for p in pairs)


def notice_parse(rounds: int) -> tuple[float, float]:
    pipeline = registry.load()
    data = answer("roy", REQ)

    def agogd() -> None:
        parse_notice(data, known_agents=pipeline.agents, subject_agent="roy", subject_req=REQ)

    def bare() -> None:
        orjson.loads(data)

    pairs = [(best(agogd, 10000, 1), best(bare, 10000, 1)) for _ in range(rounds)]
    return min(p[0] for p in pairs), min(p[1] for p in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    out = io.StringIO()
    for name, (ours, bare), baseline in (
        ("log line", log_line(args.rounds), "orjson.dumps + write"),
        ("parse_notice", notice_parse(args.rounds), "orjson.loads"),
    ):
        print(
            f"{name:<13} {ours * 1e6:7.2f} us; {baseline} {bare * 1e6:6.2f} us;"
            f" {ours / bare:5.1f}x the bare work",
            file=out,
        )
    print(out.getvalue(), end="")


if __name__ == "__main__":
    main()
