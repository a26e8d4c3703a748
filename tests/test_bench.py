"""The benchmark suite runs (at a tiny size); the figures themselves are not checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TABLES = (
    "orchestration overhead",
    "time to first event",
    "concurrent runs",
    "SSE fan-out",
    "Slack ack",
    "store (append and replay",
    "start-up (",
    "summary",
)


@pytest.mark.e2e  # its benchmarks start the real server
@pytest.mark.timeout(120)
def test_the_benchmark_suite_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", **_python_env()},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    missing = [title for title in TABLES if title not in done.stdout]
    assert not missing, f"tables missing from the output: {missing}\n{done.stdout[-3000:]}"


def _python_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
