"""The runner owns every run's task: start, queue, cancel, time limit, shutdown and recovery.

Every run ends with exactly one `complete`; a failed or timed-out run has exactly one `error`
right before it, made from the BackspaceError that ended it (errors.py), or `internal_error` for
anything else. Nothing a run does can raise out of its task: one run's failure never reaches
another run or the server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from backspace.logs import run_id_var
from backspace.orchestrator.errors import BackspaceError, RunFailure, StoreError
from backspace.orchestrator.errors import NotAccepting as NotAccepting
from backspace.orchestrator.events import Event, EventType, RunStatus, Stage, now_iso
from backspace.orchestrator.hub import EventHub
from backspace.orchestrator.inbox import Steer
from backspace.orchestrator.redact import Redactor
from backspace.orchestrator.run import Continuation, EarlierRun, Outcome, RunContext, RunRequest
from backspace.orchestrator.store import Run, RunError, Store

log = logging.getLogger(__name__)


class PipelineRunner(Protocol):
    async def run(self, ctx: RunContext) -> Outcome: ...


class SandboxJanitor(Protocol):
    async def cleanup_orphans(self, live_run_ids: set[str]) -> int: ...


@dataclass(frozen=True)
class RunnerLimits:
    max_concurrent: int = 4
    max_duration: float = 600.0
    shutdown_grace: float = 20.0


EventObserver = Callable[[str, Event], None]  # telemetry: (the run's source, an event)


class Runner:
    observer: EventObserver | None = None  # telemetry: sees every event stored

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        pipeline: PipelineRunner,
        *,
        redactor: Redactor,
        limits: RunnerLimits,
        public_url: str,
        janitor: SandboxJanitor | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.pipeline = pipeline
        self.redactor = redactor
        self.limits = limits
        self.public_url = public_url.rstrip("/")
        self.janitor = janitor
        self._waiting: deque[str] = deque()
        self._positions: dict[str, int] = {}
        self._contexts: dict[str, RunContext] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._families: dict[str, str] = {}  # family id -> its run executing now
        self._accepting = True

    # --- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Fail the runs a previous process left unfinished, and delete their sandboxes."""
        for run in self.store.runs_with_status(RunStatus.QUEUED, RunStatus.RUNNING):
            message = "the server stopped while this run was in progress; start it again"
            self._finish(
                run.id,
                RunStatus.FAILED,
                RunFailure("interrupted", message, retryable=True),
                started=None,
            )
        if self.janitor is not None:
            removed = await self.janitor.cleanup_orphans(set())
            if removed:
                log.info("deleted %d sandboxes left by a previous process", removed)

    async def shutdown(self) -> None:
        """Stop taking runs; give running ones the grace period; then cancel the rest."""
        self._accepting = False
        while self._waiting:
            run_id = self._waiting.popleft()
            self._positions.pop(run_id, None)
            self._finish(
                run_id,
                RunStatus.FAILED,
                RunFailure(
                    "interrupted",
                    "the server shut down before this run started; start it again",
                    retryable=True,
                ),
                started=None,
            )
        tasks = list(self._tasks.values())
        if tasks:
            log.info(
                "waiting up to %gs for %d running runs", self.limits.shutdown_grace, len(tasks)
            )
            _, pending = await asyncio.wait(tasks, timeout=self.limits.shutdown_grace)
            for run_id, task in list(self._tasks.items()):
                if task in pending:
                    self._contexts[run_id].cancel_reason = "shutdown"
                    task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=30)

    @property
    def accepting(self) -> bool:
        return self._accepting

    def active_count(self) -> int:
        return len(self._tasks)

    def queued_count(self) -> int:
        return len(self._waiting)

    def live_run_ids(self) -> set[str]:
        """Runs this process owns right now (queued or running): their sandboxes are in use."""
        return set(self._contexts)

    # --- runs ------------------------------------------------------------------------------------
    def submit(self, request: RunRequest) -> Run:
        if not self._accepting:
            raise NotAccepting("the server is shutting down and takes no new runs")
        now = now_iso()
        run_id = str(uuid.uuid4())
        run = Run(
            id=run_id,
            family_id=request.family_id or run_id,
            parent_id=request.parent_id,
            created_at=now,
            updated_at=now,
            status=RunStatus.QUEUED,
            stage=Stage.QUEUED,
            repo_url=self.redactor.text(request.repo_url),
            prompt=self.redactor.text(request.prompt),
            source=request.source,
            requester=request.requester,
            base_branch=request.base_branch,
            meta=dict(request.meta),
        )
        self.store.create_run(run)
        ctx = RunContext(
            run_id=run.id,
            request=request,
            emit=functools.partial(self._emit, run.id),
            deadline=0.0,
            run_url=f"{self.public_url}/api/runs/{run.id}",
        )
        self._contexts[run.id] = ctx
        start: dict[str, Any] = {
            "repo_url": request.repo_url,
            "prompt": request.prompt,
            "run_url": ctx.run_url,
        }
        if request.parent_id:
            start.update(family_id=run.family_id, parent_id=request.parent_id)
        ctx.emit(EventType.START, start)
        self._waiting.append(run.id)
        self._pump()
        return run

    def steer(self, family_id: str, message: Steer) -> str | None:
        """Deliver a follow-up into the family's run while its agent works; that run's id, or
        None when no agent of the family is listening (the caller queues it instead)."""
        run_id = self._families.get(family_id)
        ctx = self._contexts.get(run_id) if run_id else None
        if ctx is None or not ctx.inbox.put(message):
            return None
        ctx.emit(
            EventType.FOLLOWUP_RECEIVED,
            {
                "prompt": message.prompt,
                "requester": message.requester,
                "source": message.source,
                "mode": "steer",
            },
        )
        return ctx.run_id

    def note_queued_followup(self, run_id: str, followup: Run, request: RunRequest) -> None:
        """Tell the viewers of an executing run that a follow-up waits behind it."""
        if run_id in self._contexts:
            self._emit(
                run_id,
                EventType.FOLLOWUP_RECEIVED,
                {
                    "prompt": request.prompt,
                    "requester": request.requester,
                    "source": request.source,
                    "mode": "queue",
                    "followup_run_id": followup.id,
                },
            )

    def executing_in_family(self, family_id: str) -> str | None:
        """The family's run that executes now, if one does."""
        return self._families.get(family_id)

    async def cancel(self, run_id: str) -> bool:
        """Cancel a queued or running run; False when it is not live (unknown or finished)."""
        if run_id in self._positions:
            self._waiting.remove(run_id)
            self._positions.pop(run_id)
            self._finish(
                run_id,
                RunStatus.CANCELLED,
                None,
                started=None,
                message="Cancelled before it started",
            )
            self._announce_positions()
            return True
        task = self._tasks.get(run_id)
        if task is None or task.done():
            return False
        self._contexts[run_id].cancel_reason = "cancel"
        task.cancel()
        return True

    def _pump(self) -> None:
        """Start waiting runs, oldest first, while slots are free; a run whose family has a run
        executing waits for it (a family's runs build on each other's branch)."""
        for run_id in list(self._waiting):
            if len(self._tasks) >= self.limits.max_concurrent:
                break
            family = self._family_of(run_id)
            if family in self._families:
                continue
            self._waiting.remove(run_id)
            self._positions.pop(run_id, None)
            self._families[family] = run_id
            self._tasks[run_id] = asyncio.create_task(self._execute(run_id), name=f"run-{run_id}")
        self._announce_positions()

    def _family_of(self, run_id: str) -> str:
        request = self._contexts[run_id].request
        return request.family_id or run_id

    def _announce_positions(self) -> None:
        for position, run_id in enumerate(self._waiting, start=1):
            if self._positions.get(run_id) != position:
                self._positions[run_id] = position
                behind = self._families.get(self._family_of(run_id))
                message = (
                    f"Waiting for run {behind} of the same pull request to finish: "
                    f"position {position} in the queue"
                    if behind
                    else f"Waiting for a free slot: position {position} in the queue"
                )
                self._emit(
                    run_id,
                    EventType.PROGRESS,
                    {
                        "stage": str(Stage.QUEUED),
                        "message": message,
                        "percentage": 0,
                        "position": position,
                    },
                )

    async def _execute(self, run_id: str) -> None:
        ctx = self._contexts[run_id]
        token = run_id_var.set(run_id)
        started = time.monotonic()
        ctx.deadline = started + self.limits.max_duration
        status, outcome = RunStatus.FAILED, None
        failure: BackspaceError | None = None
        timer: asyncio.Timeout | None = None
        try:
            self.store.update_run(run_id, status=RunStatus.RUNNING)
            if ctx.request.family_id:
                ctx.continuation = self._continuation(ctx.request.family_id, run_id)
            async with asyncio.timeout(self.limits.max_duration) as timer:
                outcome = await self.pipeline.run(ctx)
            status = outcome.status
        except TimeoutError:
            if timer is not None and timer.expired():
                status = RunStatus.TIMED_OUT
                failure = RunFailure(
                    "wall_clock_limit",
                    f"The run took longer than MAX_SANDBOX_DURATION={self.limits.max_duration:g} s and was stopped.",
                    retryable=True,
                )
            else:
                failure = RunFailure("timeout", "an operation timed out", retryable=True)
        except asyncio.CancelledError:
            if ctx.cancel_reason == "shutdown":
                failure = RunFailure(
                    "interrupted",
                    "the server shut down while this run was in progress; start it again",
                    retryable=True,
                )
            else:
                status = RunStatus.CANCELLED
                outcome = Outcome(RunStatus.CANCELLED, "The run was cancelled.")
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except BackspaceError as exc:
            failure = exc
            if isinstance(exc, StoreError):
                log.error("run %s could not be recorded: %s", run_id, exc)
        except Exception as exc:
            log.exception("run failed unexpectedly")
            failure = BackspaceError(f"backspace failed unexpectedly: {type(exc).__name__}: {exc}")
        finally:
            self._tasks.pop(run_id, None)
            family = self._family_of(run_id)
            if self._families.get(family) == run_id:
                del self._families[family]
            try:
                self._finish(
                    run_id, status, failure, started=started, outcome=outcome, stage=ctx.stage
                )
            finally:
                self._contexts.pop(run_id, None)
                run_id_var.reset(token)
                self._pump()

    def _finish(
        self,
        run_id: str,
        status: RunStatus,
        failure: BackspaceError | None,
        *,
        started: float | None,
        outcome: Outcome | None = None,
        stage: Stage | None = None,
        message: str | None = None,
    ) -> None:
        """Record the final state, then the one `error` (if failed) and the one `complete`."""
        duration_ms = int((time.monotonic() - started) * 1000) if started is not None else 0
        pr_url = outcome.pr_url if outcome else None
        stage = stage or Stage.QUEUED
        reason = failure.describe(stage) if failure is not None else None
        final: dict[str, Any] = {
            "status": str(status),
            "duration_ms": duration_ms,
            "message": message
            or (reason if reason is not None else (outcome.message if outcome else "")),
        }
        if pr_url:
            final["pr_url"] = pr_url
        summary = self.redactor.text(outcome.summary) if outcome and outcome.summary else None
        try:
            if failure is not None:
                self._emit(
                    run_id,
                    EventType.ERROR,
                    {
                        "code": failure.code,
                        "message": reason,
                        "stage": str(stage),
                        "retryable": failure.retryable,
                    },
                )
            self.store.update_run(
                run_id,
                status=str(status),
                stage=str(Stage.COMPLETE),
                finished_at=now_iso(),
                duration_ms=duration_ms,
                pr_url=pr_url,
                **({"summary": summary} if summary else {}),
                error=(
                    RunError(code=failure.code, message=self.redactor.text(reason))
                    if failure is not None and reason is not None
                    else None
                ),
            )
            self._emit(run_id, EventType.COMPLETE, final)
        except StoreError as exc:
            log.error("could not record the end of run %s: %s", run_id, exc)
            self._announce_unrecorded_end(run_id, final)
        finally:
            self.store.forget_seq(run_id)

    def _continuation(self, family_id: str, run_id: str) -> Continuation:
        """What the family's earlier runs left: their requests and summaries, and the newest
        branch and PR one of them published (read now: it may have been opened while we waited)."""
        earlier = []
        published: Run | None = None
        for run in self.store.family_runs(family_id):
            if run.id == run_id:
                break
            earlier.append(
                EarlierRun(prompt=run.prompt, status=str(run.status), summary=run.summary)
            )
            if run.branch and run.pr_url:
                published = run
        first_base = next(
            (r.base_sha for r in self.store.family_runs(family_id) if r.base_sha), None
        )
        if published is None:
            return Continuation(earlier=earlier)
        return Continuation(
            earlier=earlier,
            branch=published.branch,
            pr_number=published.pr_number,
            pr_url=published.pr_url,
            base_sha=first_base,
        )

    def _announce_unrecorded_end(self, run_id: str, final: dict[str, Any]) -> None:
        """The store failed: live viewers still get the `complete` (it is not stored)."""
        try:
            seq = self.store.next_seq(run_id)
        except StoreError:
            return
        final = {**final, "recorded": False}
        self.hub.publish(
            Event(run_id, seq, EventType.COMPLETE, now_iso(), self.redactor.data(final))
        )

    def _source(self, run_id: str) -> str:  # telemetry
        ctx = self._contexts.get(run_id)
        return ctx.request.source if ctx is not None else "unknown"

    def _emit(self, run_id: str, type_: str, data: dict[str, Any]) -> None:
        clean = self.redactor.data(data) if self.redactor else data
        event = self.store.append_event(run_id, type_, clean)
        self.observer and self.observer(self._source(run_id), event)  # telemetry
        if type_ == EventType.USAGE:
            self.store.update_run(
                run_id,
                cost_usd=clean.get("cost_usd", 0.0),
                input_tokens=clean.get("input_tokens", 0),
                output_tokens=clean.get("output_tokens", 0),
            )
        elif type_ in (EventType.PR_CREATED, EventType.PR_UPDATED):
            self.store.update_run(
                run_id,
                branch=clean.get("branch"),
                pr_url=clean.get("pr_url"),
                pr_number=clean.get("pr_number"),
                base_sha=clean.get("base_sha"),
            )
        elif type_ == EventType.PROGRESS and clean.get("stage"):
            self.store.update_run(run_id, stage=clean["stage"])
        self.hub.publish(event)
