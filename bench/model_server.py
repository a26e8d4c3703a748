"""The scripted fake model (tests/fakes/anthropic.py) in its own process.

A benchmark that measures the event loop or the memory of the process it runs in should not
also host the fake model's threads (they take the GIL and their memory counts). This starts
`FakeAnthropic` with the benchmark scenarios in a child process and hands back its URL.

    uv run python -m bench.model_server   # prints the URL, serves until stdin closes
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes.anthropic import FakeAnthropic, Reply, Step, Text, ToolCall

ROOT = Path(__file__).resolve().parent.parent
EDIT = {
    "command": "str_replace",
    "path": "app.py",
    "old_str": "    return name\n",
    "new_str": "    if not name:\n        raise ValueError('name is required')\n    return name\n",
}
THREE_FILES = (
    "set -e; files=$(git ls-files | grep -v -e '^[.]' -e '/[.]' -e ' ' | head -n 2);"
    ' set -- $files; printf \'\\n# bench\\n\' >> "$1"; rm -f "$2";'
    " printf 'bench\\n' > BENCH_NEW.txt"
)
TURN = 0.2  # seconds per model turn in the concurrency benchmark


def _finish(delay: float = 0.0) -> Reply:
    return Reply(
        [ToolCall("finish", {"title": "Validate the name", "body": "Adds a check."})], delay=delay
    )


def scenarios() -> dict[str, Sequence[Step]]:
    """Every benchmark scenario, keyed by the prompt prefix that selects it."""
    wait = float(os.environ.get("BENCH_FANOUT_WAIT", "5"))
    return {
        # five turns of 200 ms each, four of them using the sandbox
        "concurrent-bench": [
            Reply([Text("Looking."), ToolCall("bash", {"command": "cat app.py"})], delay=TURN),
            Reply([ToolCall("str_replace_based_edit_tool", EDIT)], delay=TURN),
            Reply([ToolCall("bash", {"command": "git status --short"})], delay=TURN),
            Reply([ToolCall("bash", {"command": "grep -n name app.py"})], delay=TURN),
            _finish(TURN),
        ],
        # a quiet start (viewers connect), then a burst of events, 100 ms apart
        "fanout-bench": [
            Reply(
                [Text("Waiting for the viewers."), ToolCall("bash", {"command": "true"})],
                delay=wait,
            ),
            *(
                Reply(
                    [Text(f"Step {i}."), ToolCall("bash", {"command": f"echo step {i}"})], delay=0.1
                )
                for i in range(12)
            ),
            _finish(0.1),
        ],
        "slack-bench": [_finish()],
        # a whole run at zero latency: one command, one edit, finish
        # a 3-file change in any repository: one file edited, one deleted, one added
        "clone-bench": [
            Reply([ToolCall("bash", {"command": THREE_FILES})]),
            _finish(),
        ],
        # the same change again, on the branch a first run made: a follow-up
        "followup-bench": [
            Reply([ToolCall("bash", {"command": THREE_FILES})]),
            _finish(),
        ],
        # one streamed answer of about 100 tokens, no delay: the gateway's own cost per call
        "gateway-bench": [Reply([Text("The gateway forwards this answer. " * 12)])],
        "overhead-bench": [
            Reply([Text("Looking."), ToolCall("bash", {"command": "cat app.py"})]),
            Reply([ToolCall("str_replace_based_edit_tool", EDIT)]),
            _finish(),
        ],
    }


@dataclass
class ModelProcess:
    url: str
    process: subprocess.Popen[str]

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_model(env: dict[str, str] | None = None) -> ModelProcess:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.model_server"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http"):
        process.kill()
        raise RuntimeError(f"the fake model did not start: {url!r}")
    return ModelProcess(url, process)


def main() -> None:
    with FakeAnthropic(scenarios=scenarios()) as fake:
        fake.requests = _Forgetful()  # no growing request log
        print(fake.url, flush=True)
        sys.stdin.read()


class _Forgetful(list[dict[str, Any]]):
    def append(self, item: dict[str, Any]) -> None:
        pass


if __name__ == "__main__":
    main()
