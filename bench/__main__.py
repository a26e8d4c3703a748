"""Run every benchmark, print its table, then a summary of measured figures against targets.

    uv run python -m bench [--quick] [--only NAME ...]

`--quick` uses tiny sizes: it only checks that the suite runs (CI does this); its figures say
little. Each benchmark also runs alone: `uv run python -m bench.<name> --help`.
"""

from __future__ import annotations

import argparse
import operator
from collections.abc import Callable
from dataclasses import dataclass

from bench import (
    clone,
    concurrent,
    egress,
    fanout,
    first_event,
    followup,
    github_ack,
    layers,
    overhead,
    slack_ack,
    startup,
    store,
)
from bench.common import print_table


@dataclass(frozen=True)
class Target:
    what: str
    key: str
    limit: float
    unit: str
    higher_is_better: bool = False

    def met(self, value: float) -> bool:
        compare = operator.ge if self.higher_is_better else operator.le
        return bool(compare(value, self.limit))


Bench = Callable[[list[str]], dict[str, float]]
# name -> (main, full-size arguments, quick arguments, targets)
SUITE: dict[str, tuple[Bench, list[str], list[str], list[Target]]] = {
    "overhead": (
        overhead.main,
        ["--runs", "20"],
        ["--runs", "2"],
        [Target("orchestration overhead (p50 ratio)", "ratio", 1.10, "x")],
    ),
    "first_event": (
        first_event.main,
        ["--requests", "200"],
        ["--requests", "5"],
        [
            Target("time to first event p50", "p50_ms", 10, "ms"),
            Target("time to first event p99", "p99_ms", 50, "ms"),
        ],
    ),
    "concurrent": (
        concurrent.main,
        ["--runs", "200"],
        ["--runs", "4"],
        [
            Target("concurrent runs: wall / one run", "ratio", 1.2, "x"),
            Target("concurrent runs: memory per active run", "mb_per_run", 2, "MB"),
            Target("concurrent runs: event-loop lag p99", "lag_p99_ms", 20, "ms"),
        ],
    ),
    "fanout": (
        fanout.main,
        ["--viewers", "1000"],
        ["--viewers", "20", "--wait", "1"],
        [Target("SSE fan-out delivery p99", "p99_ms", 50, "ms")],
    ),
    "slack_ack": (
        slack_ack.main,
        ["--commands", "50"],
        ["--commands", "5"],
        [
            Target("Slack ack p99", "p99_ms", 100, "ms"),
            Target("Slack thread mention to its reaction p99", "mention_p99_ms", 1000, "ms"),
        ],
    ),
    "github_ack": (
        github_ack.main,
        ["--deliveries", "50"],
        ["--deliveries", "3"],
        [Target("GitHub webhook delivery to its reaction p99", "p99_ms", 1000, "ms")],
    ),
    "store": (
        store.main,
        ["--events", "10000"],
        ["--events", "1000"],
        [
            Target("store append", "append_per_s", 5000, "events/s", higher_is_better=True),
            Target("store full replay", "replay_ms", 200, "ms"),
        ],
    ),
    "startup": (
        startup.main,
        ["--starts", "10"],
        ["--starts", "2"],
        [
            Target("backspace serve to a healthy /health (p50)", "serve_p50_s", 1.5, "s"),
            Target("python -c 'import backspace.app' (p50)", "import_p50_s", 1.2, "s"),
        ],
    ),
    "egress": (
        egress.main,
        ["--rounds", "9"],
        ["--mb", "5", "--rounds", "1", "--tunnels", "10"],
        [
            Target("100 MB through the door (CONNECT) / direct", "tunnel_ratio", 1.2, "x"),
            Target("100 MB by curl: socat + door / direct", "curl_ratio", 1.2, "x"),
            Target("200 open tunnels: proxy RSS above idle", "tunnels_mb", 20, "MB"),
        ],
    ),
    "layers": (
        layers.main,
        ["--starts", "10"],
        ["--starts", "2", "--files", "200", "--layer-mb", "4", "--repo-mb", "0.5"],
        [
            Target("sandbox ready from a cached environment (p50)", "layer_p50_s", 1.0, "s"),
            Target("cached start / (empty start + clone)", "ratio", 1.5, "x"),
        ],
    ),
    "clone": (
        clone.main,
        ["--runs", "3"],
        ["--runs", "2", "--files", "200", "--commits", "20"],
        [
            Target("POST to `agent`, first run / git clone --depth 1", "first_ratio", 1.5, "x"),
            Target("POST to `agent`, same base again (p50)", "again_agent_s", 1.0, "s"),
            Target("peak RSS above idle during a run", "rss_mb", 50, "MB"),
            Target("validating stage, 3-file change (p50)", "validating_s", 0.5, "s"),
        ],
    ),
    "followup": (
        followup.main,
        ["--rounds", "5"],
        ["--rounds", "2", "--files", "200", "--commits", "20"],
        [Target("follow-up to a ready sandbox / first run (cached base)", "ratio_warm", 1.1, "x")],
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the suite runs")
    parser.add_argument("--only", nargs="+", choices=sorted(SUITE), help="run only these")
    args = parser.parse_args()
    rows: list[tuple[str, ...]] = []
    for name, (run, full, quick, targets) in SUITE.items():
        if args.only and name not in args.only:
            continue
        figures = run(quick if args.quick else full)
        for target in targets:
            value = figures[target.key]
            sign = ">=" if target.higher_is_better else "<="
            rows.append(
                (
                    target.what,
                    f"{value:,.2f} {target.unit}",
                    f"{sign} {target.limit:,g} {target.unit}",
                    "met" if target.met(value) else "MISSED",
                )
            )
    title = "summary (quick sizes: not meaningful)" if args.quick else "summary"
    print_table(title, rows, ("what", "measured", "target", ""))


if __name__ == "__main__":  # importable: tests read SUITE
    main()
