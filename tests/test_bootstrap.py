"""scripts/bootstrap (run by scripts/dev and scripts/test): a second run with
nothing changed installs nothing and prints nothing. It used to re-run
`pip install -e` every time, with setuptools' warnings."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"


def _bootstrap() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / "bootstrap")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,  # a first run on a stale venv installs
        check=False,
    )


def _installed_marks() -> dict[str, int]:
    """What a `pip install -e` rewrites: agogd's dist-info, with mtimes."""
    [dist] = list(VENV.glob("lib/python*/site-packages/agogd-*.dist-info"))
    return {p.name: p.stat().st_mtime_ns for p in dist.iterdir()}


def test_second_bootstrap_installs_nothing_and_prints_nothing() -> None:
    # The first run brings the venv up to date (in CI, scripts/test just did).
    first = _bootstrap()
    assert first.returncode == 0, first.stderr
    stamp = VENV / ".bootstrap-stamp"
    assert stamp.read_text().strip(), "a successful run leaves its stamp"
    before = _installed_marks()

    second = _bootstrap()
    assert second.returncode == 0, second.stderr
    assert (second.stdout, second.stderr) == ("", "")
    assert _installed_marks() == before, "pip reinstalled agogd"
    assert stamp.read_text().strip()
