"""A run's request, its context while it executes, and how it can end."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backspace.orchestrator.errors import RunFailure as RunFailure
from backspace.orchestrator.events import EventType, RunStatus, Stage
from backspace.orchestrator.githosts.base import RepoRef
from backspace.orchestrator.inbox import Inbox
from backspace.orchestrator.sandboxes.base import ExecResult


@dataclass(frozen=True)
class RunRequest:
    """What a front end asks for. `repo` is already parsed and allowed by the front end."""

    repo_url: str
    repo: RepoRef
    prompt: str
    base_branch: str | None = None
    source: str = "api"  # api, cli, slack, web
    requester: str | None = None  # a display name, for the PR body
    co_author: str | None = None  # "Name <email>" for Co-authored-by, when known
    meta: dict[str, Any] = field(default_factory=dict)
    # Text for the agent beside the request (an issue's body, a review comment's file and line),
    # shown to it apart from the request, as coming from the front end.
    context: str | None = None
    closes_issue: int | None = None  # the PR body says `Closes #N`
    parent_id: str | None = None  # a follow-up: the run it continues
    family_id: str | None = None  # a follow-up: the family it belongs to
    engine: str | None = None  # "backspace" or "claude-code"; None: the server's BACKSPACE_ENGINE

    def to_json(self) -> dict[str, Any]:
        """What the store keeps, so that any worker (another replica) can execute the run."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> RunRequest:
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {name: value for name, value in values.items() if name in known}
        return cls(**{**fields, "repo": RepoRef(**fields["repo"])})


@dataclass(frozen=True)
class EarlierRun:
    """What a follow-up's agent is told about one earlier run of its family."""

    prompt: str
    status: str
    summary: str | None


@dataclass(frozen=True)
class Continuation:
    """Where a follow-up starts: the family's branch and PR, read when the run starts (an
    earlier run may have opened them while this one waited)."""

    earlier: list[EarlierRun]
    branch: str | None = None  # the family's branch, when an earlier run pushed one
    pr_number: int | None = None
    pr_url: str | None = None
    base_sha: str | None = None  # where the family's first change started, for the PR's diff


@dataclass
class Outcome:
    status: RunStatus
    message: str = ""
    pr_url: str | None = None
    summary: str | None = None  # the agent's title and summary, for the family's later runs
    pr_number: int | None = None


@dataclass
class RunContext:
    run_id: str
    request: RunRequest
    emit: Callable[[str, dict[str, Any]], None]
    deadline: float  # time.monotonic() by which the run must be over
    run_url: str
    stage: Stage = Stage.QUEUED
    cancel_reason: str | None = None  # "cancel" or "shutdown" once the runner stops the task
    inbox: Inbox = field(default_factory=Inbox)  # follow-ups steered into the running agent
    continuation: Continuation | None = None  # set for a follow-up when it starts
    # When the run was queued (wall clock; the trace's queue wait starts here) and which
    # attempt at it this is: a queue that hands a run to another worker sets both.
    created_at: float = field(default_factory=time.time)
    attempt: int = 1

    def progress(self, stage: Stage, message: str, percentage: int | None = None) -> None:
        self.stage = stage
        self.emit(
            EventType.PROGRESS,
            {
                "stage": str(stage),
                "message": message,
                "percentage": percentage if percentage is not None else stage.percentage,
            },
        )

    def command_ran(self, command: str, result: ExecResult) -> None:
        """A `Tool: Bash` event for a command backspace ran itself (setup, verification)."""
        self.emit(
            EventType.TOOL_BASH,
            {
                "command": command,
                "output": result.output[-8000:],
                "exit_code": result.exit_code,
                "duration_ms": result.duration_ms,
            },
        )
