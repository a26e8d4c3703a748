"""The benchmark suite runs (at a tiny size); the figures themselves are not checked here.

Each benchmark runs as its own `python -m bench --quick --only NAME`, three at a time: they
spend most of their time waiting (scripted model latencies, sleeps between rounds), so the
suite's wall time is what the longest ones take, not their sum.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.__main__ import SUITE

ROOT = Path(__file__).resolve().parent.parent
TABLES = {
    "overhead": "orchestration overhead",
    "first_event": "time to first event",
    "concurrent": "concurrent runs",
    "fanout": "SSE fan-out",
    "slack_ack": "Slack ack",
    "store": "store (append and replay",
    "startup": "start-up (",
    "egress": "egress download",
    "layers": "layer",
    "clone": "big repositories",
}


@pytest.mark.e2e  # its benchmarks start the real server
@pytest.mark.timeout(120)
def test_the_benchmark_suite_runs() -> None:
    assert sorted(TABLES) == sorted(SUITE), "a benchmark is missing from TABLES"
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip(SUITE, pool.map(_quick, SUITE), strict=True))
    for name, result in done.items():
        assert result.returncode == 0, (name, result.stderr[-3000:])
        assert TABLES[name] in result.stdout, (name, result.stdout[-3000:])
        assert "summary" in result.stdout, (name, result.stdout[-3000:])


def _quick(name: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**env, "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
