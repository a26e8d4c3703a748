"""What the store keeps: a run, its error, a local pull request, and the queue's small records.

Both backends (sqlite.py, postgres.py) read and write these; the API shows `Run.to_json()`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, TypeAdapter, field_serializer
from pydantic.dataclasses import dataclass as pydantic_dataclass

from backspace.orchestrator.events import EventType, RunStatus, Stage, now_iso


@pydantic_dataclass(frozen=True, kw_only=True)
class RunError:
    """Why a run failed: a code to act on and a sentence for a person."""

    code: str
    message: str


@pydantic_dataclass(frozen=True, kw_only=True)
class Run:
    """A run: the one definition of its fields, for the `runs` table and for the API.

    The fields are in the order the API shows them (`to_json`); `meta` (a front end's own notes,
    such as a Slack thread) is stored but never shown. The OpenAPI component is generated from
    this class (`backspace.http.openapi`), and the table's columns from its fields (`COLUMNS`).
    The queue's own columns (the request, the owner and its lease) are not fields: no viewer
    sees them (the request holds the prompt as it was typed, before redaction).
    """

    id: str
    status: RunStatus
    stage: Stage
    repo_url: str
    prompt: str
    source: str = "api"
    requester: str | None = None
    base_branch: str | None = None
    family_id: str | None = None  # the first run's id: every run of a PR's conversation shares it
    parent_id: str | None = None  # the run this follow-up continues
    base_sha: str | None = None  # the commit its branch started from, once it pushed one
    branch: str | None = None
    pr_url: str | None = None
    pr_number: int | None = None
    error: RunError | None = None
    summary: str | None = None  # the agent's title and summary, for the family's later runs
    created_at: str
    updated_at: str = dataclasses.field(default_factory=now_iso)
    finished_at: str | None = None
    duration_ms: int | None = None
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    meta: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @field_serializer("cost_usd")
    def _rounded(self, cost_usd: float) -> float:
        return round(cost_usd, 6)

    def to_json(self) -> dict[str, Any]:
        """The run as the API shows it."""
        shown: dict[str, Any] = _RUN.dump_python(self, mode="json")
        return shown


_RUN = TypeAdapter(Run)
FIELDS = tuple(f.name for f in dataclasses.fields(Run))
COLUMNS = tuple(
    column
    for name in FIELDS
    for column in (("error_code", "error_message") if name == "error" else (name,))
)
"""The `runs` table's columns a Run is read from: its fields, with its error in two."""


def stored(values: dict[str, Any]) -> dict[str, Any]:
    """A run's fields (all or some) as the columns that hold them."""
    columns = dict(values)
    if "error" in columns:
        error: RunError | None = columns.pop("error")
        columns["error_code"] = error.code if error else None
        columns["error_message"] = error.message if error else None
    if "meta" in columns:
        columns["meta"] = json.dumps(columns["meta"])
    for name in ("status", "stage"):
        if name in columns and columns[name] is not None:
            columns[name] = str(columns[name])
    return columns


def run_from_values(values: dict[str, Any]) -> Run:
    """A Run from a row's columns (COLUMNS, by name)."""
    fields = {name: values[name] for name in FIELDS if name != "error"}
    meta = fields["meta"]
    fields["meta"] = json.loads(meta or "{}") if isinstance(meta, str) else dict(meta or {})
    code = values["error_code"]
    error = RunError(code=code, message=values["error_message"] or "") if code else None
    return Run(**fields, error=error)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event before the store gives it its `seq`: what a run emits."""

    type: str
    data: dict[str, Any]
    timestamp: str = dataclasses.field(default_factory=now_iso)

    def encoded(self) -> str:
        return json.dumps(self.data, ensure_ascii=False)


def derived_changes(events: list[NewEvent]) -> dict[str, Any]:
    """The run's columns a batch of events changes (written in the same transaction): the
    spend from `usage`, the branch and PR from `pr_created`/`pr_updated`, the stage from
    `progress`. The last event of each kind wins."""
    changes: dict[str, Any] = {}
    for event in events:
        data = event.data
        if event.type == EventType.USAGE:
            changes.update(
                cost_usd=data.get("cost_usd", 0.0),
                input_tokens=data.get("input_tokens", 0),
                output_tokens=data.get("output_tokens", 0),
            )
        elif event.type in (EventType.PR_CREATED, EventType.PR_UPDATED):
            changes.update(
                branch=data.get("branch"),
                pr_url=data.get("pr_url"),
                pr_number=data.get("pr_number"),
                base_sha=data.get("base_sha"),
            )
        elif event.type == EventType.PROGRESS and data.get("stage"):
            changes["stage"] = str(data["stage"])
    return changes


@dataclass(frozen=True, slots=True)
class Fence:
    """A worker's claim on a run: every write it makes carries it, and a write whose claim is no
    longer the run's (the lease expired and the run was reaped, or claimed again) fails with
    `LeaseLost` and changes nothing."""

    run_id: str
    worker: str
    attempt: int


@dataclass(frozen=True)
class Claim:
    """A queued run a worker took: its claim and the request to execute (as submitted)."""

    fence: Fence
    request: dict[str, Any]
    created_at: str


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How a run ended: written with its last events in one transaction."""

    status: RunStatus
    duration_ms: int
    pr_url: str | None = None
    summary: str | None = None
    error: RunError | None = None


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # it was queued: it is cancelled now, its `complete` written
    SIGNALLED = "signalled"  # it is running: its owner was told to stop it
    NOT_LIVE = "not_live"  # unknown, or already finished


@dataclass(frozen=True)
class Cancel:
    outcome: CancelOutcome
    events: list[Any] = dataclasses.field(default_factory=list)  # written (a queued run's end)
    worker: str | None = None  # the owner of a running run


@dataclass(frozen=True, slots=True)
class Lease:
    """A held run, as a heartbeat found it: whether someone asked to cancel it."""

    run_id: str
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Duty:
    """A front end's duty to report one run (its Slack thread), held like a lease: `attempt`
    fences the holder (a holder that lost it can neither renew it nor end it), `cursor` is the
    last event seq already told."""

    run_id: str
    kind: str
    holder: str
    attempt: int
    cursor: int


CANCELLED_BEFORE_START = "Cancelled before it started"
INTERRUPTED = (
    "the worker running this run stopped (a crash, or a deploy that could not wait for it); "
    "start it again"
)


def final_events(
    end: RunEnd, stage: Stage | str, message: str, *, retryable: bool = True
) -> list[NewEvent]:
    """The `error` (when it failed) and the `complete` every run ends with, whoever ends it:
    its worker, a cancel of a queued run, the reaper (an interrupted run may be retried)."""
    events = []
    if end.error is not None:
        events.append(
            NewEvent(
                EventType.ERROR,
                {
                    "code": end.error.code,
                    "message": end.error.message,
                    "stage": str(stage),
                    "retryable": retryable,
                },
            )
        )
    final: dict[str, Any] = {
        "status": str(end.status),
        "duration_ms": end.duration_ms,
        "message": message,
    }
    if end.pr_url:
        final["pr_url"] = end.pr_url
    events.append(NewEvent(EventType.COMPLETE, final))
    return events


@dataclass
class PullRequestRecord:
    id: int
    run_id: str
    repo: str
    title: str
    body: str
    branch: str
    base: str
    base_sha: str
    head_sha: str
    files: list[dict[str, Any]]
    additions: int
    deletions: int
    diff: str
    created_at: str
    state: str = "open"  # open, closed or merged


PULL_REQUEST_UPDATABLE = frozenset(
    {"title", "body", "head_sha", "state", "files", "additions", "deletions", "diff"}
)


def waiting_event(position: int, behind: str | None) -> NewEvent:
    """A queued run's `progress`: its place in the queue, and the run it waits for."""
    message = (
        f"Waiting for run {behind} of the same pull request to finish: "
        f"position {position} in the queue"
        if behind
        else f"Waiting for a free slot: position {position} in the queue"
    )
    return NewEvent(
        EventType.PROGRESS,
        {"stage": str(Stage.QUEUED), "message": message, "percentage": 0, "position": position},
    )


def ms_since(started_at: str | None) -> int:
    if not started_at:
        return 0
    start = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    return max(0, int((datetime.now(UTC) - start).total_seconds() * 1000))
