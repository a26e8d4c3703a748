"""Event types and their wire form.

Type names are those of the original Tiny Backspace clients (`Tool: Bash`, `AI Message`, ...), so
old clients keep working. On the wire every event is one JSON object with `type`, `run_id`,
`request_id` (= run_id, for those clients), `seq` and `timestamp`, plus the fields of its type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    START = "start"
    PROGRESS = "progress"
    AI_MESSAGE = "AI Message"
    TOOL_BASH = "Tool: Bash"
    OUTPUT = "output"  # a running command's output so far (Tool: Bash follows when it ends)
    TOOL_READ = "Tool: Read"
    TOOL_EDIT = "Tool: Edit"
    TOOL_WRITE = "Tool: Write"
    USAGE = "usage"
    NETWORK_BLOCKED = "network_blocked"  # a sandbox command tried to reach a host it may not
    VERIFICATION = "verification"  # the receipt of backspace's own run of the verify commands
    PR_CREATED = "pr_created"
    PR_UPDATED = "pr_updated"  # a follow-up pushed a new commit to its family's open PR
    FOLLOWUP_RECEIVED = "followup_received"  # a follow-up was steered into, or queued behind, a run
    ERROR = "error"
    COMPLETE = "complete"


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    NO_CHANGES = "no_changes"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class Stage(StrEnum):
    """Stages inside `running`; `percentage` is the progress they start at."""

    QUEUED = "queued"
    SANDBOX = "sandbox"
    CLONING = "cloning"
    SETUP = "setup"
    AGENT = "agent"
    VALIDATING = "validating"
    VERIFYING = "verifying"
    PUSHING = "pushing"
    PR = "pr"
    COMPLETE = "complete"

    @property
    def percentage(self) -> int:
        return _PERCENT[self]


_PERCENT = {
    Stage.QUEUED: 0,
    Stage.SANDBOX: 10,
    Stage.CLONING: 20,
    Stage.SETUP: 25,
    Stage.AGENT: 30,
    Stage.VALIDATING: 85,
    Stage.VERIFYING: 87,
    Stage.PUSHING: 90,
    Stage.PR: 95,
    Stage.COMPLETE: 100,
}
AGENT_PERCENT_END = 80


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Event:
    run_id: str
    seq: int
    type: str
    timestamp: str
    data: dict[str, Any] = field(default_factory=dict)
    _json: str = field(default="", init=False, repr=False, compare=False)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "run_id": self.run_id,
            "request_id": self.run_id,
            "seq": self.seq,
            "timestamp": self.timestamp,
            **self.data,
        }

    def to_json(self) -> str:
        """The wire form, encoded once: one event goes to every viewer of its run."""
        if not self._json:
            encoded = json.dumps(self.to_wire(), ensure_ascii=False, separators=(",", ":"))
            object.__setattr__(self, "_json", encoded)  # a cache; the event itself is frozen
        return self._json

    @property
    def is_terminal(self) -> bool:
        return self.type == EventType.COMPLETE
