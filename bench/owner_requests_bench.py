"""OWNER_REQUESTS.md at thousands of entries: the watcher's pass and the mirror's batch.

The watcher reads the file every ``AGOG_OWNER_REQUESTS_INTERVAL`` (2 s) and
the mirror writes statuses back in batches of up to 100. Measured here, on
a file of N entries shaped like the reference's, each against its baseline
in the same run:

* a pass over an unchanged file (read + digest) against a full parse;
* a batch of 100 status updates, parsed once (``set_statuses``), against
  the same updates applied one by one (``set_status``, a parse each), which
  is what a batch cost before.

    .venv/bin/python bench/owner_requests_bench.py [--entries 5000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.inbound.owner_requests import (
    OwnerRequestsFile,
    parse_report,
    set_status,
    set_statuses,
)


def owner_file(entries: int) -> str:
    return "# Owner Requests\n\n" + "".join(
        f"### REQ-BENCH-{i}: Feature {i}\n\n**Status**: NEW\n**Owner**: marcus\n"
        f"**Priority**: P{i % 4}\n**Requirements**:\n- first need of {i}\n"
        f"- second need of {i}\n---\n\n"
        for i in range(entries)
    )


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=5000)
    args = parser.parse_args()
    text = owner_file(args.entries)
    updates = [(f"REQ-BENCH-{i * 37 % args.entries}", "IN_PROGRESS", None) for i in range(100)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "OWNER_REQUESTS.md"
        path.write_text(text)
        file = OwnerRequestsFile(path)
        file.read_report()  # the first pass parses
        parse = timed(lambda: parse_report(path.read_text()), 5)
        cached = timed(file.read_report, 20)

    def one_by_one() -> None:
        current = text
        for req, status, extra in updates:
            current = set_status(current, req, status, extra)

    batch = timed(lambda: set_statuses(text, updates), 5)
    single = timed(one_by_one, 1)
    size = len(text.encode()) // 1024
    print(f"OWNER_REQUESTS.md: {args.entries} entries, {size} KiB")
    rows = [
        ("unchanged file, a watcher pass", cached, ""),
        ("full parse (baseline)", parse, f"ratio {parse / cached:.0f}x"),
        ("100 updates, parsed once", batch, ""),
        ("100 updates one by one (before)", single, f"ratio {single / batch:.0f}x"),
    ]
    for label, seconds, note in rows:
        print(f"  {label:<33}{seconds * 1000:9.2f} ms   {note}")


if __name__ == "__main__":
    main()
