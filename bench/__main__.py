"""Run every benchmark and print its table: `uv run python -m bench [--quick]`."""

from __future__ import annotations

import argparse

from bench import first_event, overhead

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the suite runs")
args = parser.parse_args()
overhead.main(["--runs", "2" if args.quick else "20"])
first_event.main(["--requests", "5" if args.quick else "200"])
