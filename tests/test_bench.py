"""The benchmark suite runs (at a tiny size); the figures themselves are not checked here.

The benchmarks run as three `python -m bench --quick --only ...` processes at once, in groups of
about equal length: they spend most of their time waiting (scripted model latencies, sleeps
between rounds), so the suite's wall time is what the longest group takes, not the sum, and
each process imports the benchmarks once.
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
    "followup": "follow-ups: submission to a ready sandbox",
    "github_ack": "GitHub ack",
}
# About 12 s each at quick sizes on 2 cores.
GROUPS = (
    ("concurrent", "store", "layers", "egress", "github_ack"),
    ("overhead", "fanout", "followup"),
    ("first_event", "slack_ack", "startup", "clone"),
)


@pytest.mark.e2e  # its benchmarks start the real server
@pytest.mark.timeout(120)
def test_the_benchmark_suite_runs() -> None:
    assert sorted(TABLES) == sorted(SUITE), "a benchmark is missing from TABLES"
    grouped = [name for group in GROUPS for name in group]
    assert sorted(grouped) == sorted(SUITE), "a benchmark is missing from GROUPS"
    with ThreadPoolExecutor(max_workers=len(GROUPS)) as pool:
        done = dict(zip(GROUPS, pool.map(_quick, GROUPS), strict=True))
    for group, result in done.items():
        assert result.returncode == 0, (group, result.stderr[-3000:])
        assert "summary" in result.stdout, (group, result.stdout[-3000:])
        for name in group:
            assert TABLES[name] in result.stdout, (name, result.stdout[-3000:])


def _quick(group: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", *group],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**env, "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
