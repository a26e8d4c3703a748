"""A run's request, its context while it executes, and how it can end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backspace.orchestrator.errors import RunFailure as RunFailure
from backspace.orchestrator.events import EventType, RunStatus, Stage
from backspace.orchestrator.githosts.base import RepoRef
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


@dataclass
class Outcome:
    status: RunStatus
    message: str = ""
    pr_url: str | None = None


@dataclass
class RunContext:
    run_id: str
    request: RunRequest
    emit: Callable[[str, dict[str, Any]], None]
    deadline: float  # time.monotonic() by which the run must be over
    run_url: str
    stage: Stage = Stage.QUEUED
    cancel_reason: str | None = None  # "cancel" or "shutdown" once the runner stops the task

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
