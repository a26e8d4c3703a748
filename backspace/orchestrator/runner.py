"""The runner: this process's worker slots, taking runs from the queue in the store.

A run's row is its job (store/base.py). Any process may `submit`; a worker with a free slot
claims the oldest run it may start, holds it with a lease its heartbeat renews, and writes every
event through its claim, so a worker that lost its lease (paused, cut off from the database) stops
at once and changes nothing. The reaper, in every process, ends the runs whose owner's lease
expired as `interrupted`: a run that may already have pushed is never run again.

Every run ends with exactly one `complete`; a failed or timed-out run has exactly one `error`
right before it, made from the BackspaceError that ended it (errors.py), or `internal_error` for
anything else. Nothing a run does can raise out of its task: one run's failure never reaches
another run or the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from backspace.logs import run_id_var
from backspace.orchestrator.errors import BackspaceError, RunFailure, StoreError
from backspace.orchestrator.errors import NotAccepting as NotAccepting
from backspace.orchestrator.events import Event, EventType, RunStatus, Stage, now_iso
from backspace.orchestrator.hub import EventHub
from backspace.orchestrator.inbox import Steer
from backspace.orchestrator.redact import Redactor
from backspace.orchestrator.run import Continuation, EarlierRun, Outcome, RunContext, RunRequest
from backspace.orchestrator.sink import EventSink
from backspace.orchestrator.store import (
    CancelOutcome,
    Claim,
    LeaseLost,
    NewEvent,
    Run,
    RunEnd,
    RunError,
    RunStore,
    final_events,
)

log = logging.getLogger(__name__)


class PipelineRunner(Protocol):
    async def run(self, ctx: RunContext) -> Outcome: ...


class SandboxJanitor(Protocol):
    async def cleanup_orphans(self, live_run_ids: set[str]) -> int: ...


class RunObserver(Protocol):
    """Sees the runs this process submits and executes (telemetry): every event it stores,
    and each claim with how long the run waited in the queue."""

    def on_event(self, source: str, event: Event) -> None: ...

    def on_claimed(self, source: str, run_id: str, waited: float) -> None: ...

    def on_reaped(self, count: int) -> None: ...

    def on_lease_lost(self) -> None: ...


@dataclass(frozen=True)
class RunnerLimits:
    max_concurrent: int = 4  # this process's slots; the queue is shared
    max_duration: float = 600.0
    shutdown_grace: float = 20.0
    lease_seconds: float = 30.0  # a run whose owner stops renewing is reaped after this
    poll_seconds: float = 2.0  # how often an idle worker looks at the queue without a bell


STEER_WAIT = 3.0  # seconds a steer waits for the worker running its run to take it


def worker_name() -> str:
    """This process's name as an owner of runs: its host, its pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _Execution:
    ctx: RunContext
    sink: EventSink
    claim: Claim
    task: asyncio.Task[None] | None = None


class Runner:
    def __init__(
        self,
        store: RunStore,
        hub: EventHub,
        pipeline: PipelineRunner,
        *,
        redactor: Redactor,
        limits: RunnerLimits,
        public_url: str,
        janitor: SandboxJanitor | None = None,
        worker: str | None = None,
        observer: RunObserver | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.pipeline = pipeline
        self.redactor = redactor
        self.limits = limits
        self.public_url = public_url.rstrip("/")
        self.janitor = janitor
        self.worker = worker or worker_name()
        self.observer = observer
        self._own: set[str] | None = None  # see `own_runs_only`
        self._runs: dict[str, _Execution] = {}
        self._accepting = True  # takes new runs (submit)
        self._claiming = True  # takes runs from the queue to execute
        self._drain_started: float | None = None  # when the grace period began
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._counts = {"queued": 0, "running": 0}
        self._chores: set[asyncio.Task[None]] = set()  # steers being taken

    # --- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen to the bell, end what a dead worker left, then take runs from the queue.

        A lone server (SQLite) ends every run it does not hold: nobody else can be running it.
        A replica of a fleet ends only runs whose lease expired: the others' runs are theirs.
        """
        await self.store.listen(self.hub.notified, self._control, self._reconnected)
        if self._own is None:
            await self._reap(every_other_worker=not self.store.shared)
        self._loops = [
            asyncio.create_task(self._work(), name="runner-claims"),
            asyncio.create_task(self._heartbeat(), name="runner-heartbeat"),
            asyncio.create_task(self._reaper(), name="runner-reaper"),
        ]

    def stop_claiming(self) -> None:
        """Take no new run from the queue (the process is told to stop); submitting still
        works, for the other workers to run."""
        self._claiming = False
        self._wake.set()

    async def drain(self) -> None:
        """Take no new run, neither from the queue nor submitted (the queued ones stay for
        the other workers, or for this server's next start), and give the running ones the
        grace period, while the server still answers: its /health says it is not accepting,
        its viewers keep their streams."""
        await self._wait_for_running()

    async def shutdown(self) -> None:
        """Drain (what is left of the grace period, when `drain` began it), then stop the rest."""
        pending = await self._wait_for_running()
        for execution in list(self._runs.values()):
            if execution.task in pending:
                self._stop(execution, "shutdown")
        if pending:
            await asyncio.wait(pending, timeout=30)
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(BaseException):
                await loop
        self._loops.clear()

    def own_runs_only(self) -> None:
        """Execute only the runs this process submits, and leave every other run alone (no
        recovery at start): a one-shot process (`backspace run`) beside a server."""
        self._own = set()

    async def _wait_for_running(self) -> set[asyncio.Task[None]]:
        """Stop taking runs, then wait for the running ones until the grace period (counted
        from the first call) is over; those still running."""
        if self._drain_started is None:
            self._drain_started = time.monotonic()
        self._accepting = False
        self.stop_claiming()
        tasks = [e.task for e in self._runs.values() if e.task is not None]
        if not tasks:
            return set()
        grace = max(0.0, self.limits.shutdown_grace - (time.monotonic() - self._drain_started))
        log.info("waiting up to %gs for %d running runs", round(grace, 1), len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=grace)
        return pending

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def claiming(self) -> bool:
        return self._claiming

    def active_count(self) -> int:
        """Runs this process executes now."""
        return len(self._runs)

    async def counts(self) -> dict[str, int]:
        """Runs queued and running across every worker (and remember them for `last_counts`)."""
        self._counts = await self.store.counts()
        return dict(self._counts)

    def last_counts(self) -> dict[str, int]:
        """`counts` as last read (the worker loop reads them at every look at the queue)."""
        return dict(self._counts)

    def local_run_ids(self) -> set[str]:
        return set(self._runs)

    async def live_run_ids(self) -> set[str]:
        """Runs queued or running anywhere, under a live lease: their sandboxes are in use."""
        return await self.store.live_run_ids() | set(self._runs)

    # --- runs ------------------------------------------------------------------------------------
    async def submit(self, request: RunRequest) -> Run:
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
        start: dict[str, Any] = {
            "repo_url": request.repo_url,
            "prompt": request.prompt,
            "run_url": self.run_url(run_id),
        }
        if request.parent_id:
            start.update(family_id=run.family_id, parent_id=request.parent_id)
        event = await self.store.submit(
            run, request.to_json(), NewEvent(EventType.START, self.redactor.data(start))
        )
        if self._own is not None:
            self._own.add(run.id)
        self._publish(request.source, [event])
        self._wake.set()
        return run

    def run_url(self, run_id: str) -> str:
        return f"{self.public_url}/api/runs/{run_id}"

    async def steer(self, family_id: str, message: Steer) -> str | None:
        """Deliver a follow-up into the family's executing run while its agent works, wherever
        it runs; that run's id, or None when no agent of the family listens (the caller queues
        the follow-up instead)."""
        for execution in self._runs.values():
            ctx = execution.ctx
            if (ctx.request.family_id or ctx.run_id) == family_id:
                return ctx.run_id if self._deliver(execution, message) else None
        run_id = await self.store.running_in_family(family_id)
        if run_id is None:
            return None
        return run_id if await self._steer_elsewhere(run_id, message) else None

    async def _steer_elsewhere(self, run_id: str, message: Steer) -> bool:
        """Hand a steer to the worker that runs `run_id` through the store and its bell, and
        wait (briefly) for its answer. A steer nobody took in time is withdrawn: it is then
        never delivered, so the caller may queue it as a run of its own."""
        steer_id = await self.store.send_steer(run_id, dataclasses.asdict(message))
        deadline = time.monotonic() + STEER_WAIT
        while True:
            late = time.monotonic() >= deadline
            state = await self.store.steer_state(steer_id, withdraw=late)
            if state in ("delivered", "refused", "withdrawn"):
                return state == "delivered"
            await asyncio.sleep(0.05)

    def _deliver(self, execution: _Execution, message: Steer) -> bool:
        ctx = execution.ctx
        if not ctx.inbox.put(message):
            return False
        ctx.emit(
            EventType.FOLLOWUP_RECEIVED,
            {
                "prompt": message.prompt,
                "requester": message.requester,
                "source": message.source,
                "mode": "steer",
            },
        )
        return True

    async def _take_steers(self, run_id: str) -> None:
        """Steers sent to a run this process executes, from another process."""
        try:
            for steer_id, message in await self.store.take_steers(run_id):
                execution = self._runs.get(run_id)
                delivered = execution is not None and self._deliver(execution, Steer(**message))
                await self.store.settle_steer(steer_id, delivered)
        except StoreError as exc:
            log.error("run %s: steers could not be read: %s", run_id, exc)

    def note_queued_followup(self, run_id: str, followup: Run, request: RunRequest) -> None:
        """Tell the viewers of a run executing here that a follow-up waits behind it."""
        execution = self._runs.get(run_id)
        if execution is not None:
            execution.ctx.emit(
                EventType.FOLLOWUP_RECEIVED,
                {
                    "prompt": request.prompt,
                    "requester": request.requester,
                    "source": request.source,
                    "mode": "queue",
                    "followup_run_id": followup.id,
                },
            )

    async def executing_in_family(self, family_id: str) -> str | None:
        """The family's run that executes now, on any worker."""
        return await self.store.running_in_family(family_id)

    async def cancel(self, run_id: str) -> bool:
        """Cancel a queued or running run, wherever it runs; False when it is not live."""
        result = await self.store.request_cancel(run_id)
        if result.outcome == CancelOutcome.NOT_LIVE:
            return False
        if result.outcome == CancelOutcome.CANCELLED:
            self.hub.publish(result.events)
            self._wake.set()  # the queue moved
            return True
        execution = self._runs.get(run_id)
        if execution is not None:
            self._stop(execution, "cancel")
        # Else its owner heard the bell (store.request_cancel rang it); its heartbeat is the
        # backstop when the bell was missed.
        return True

    def _stop(self, execution: _Execution, reason: str) -> None:
        """Cancel a run's task once: the first reason is the one its end reports."""
        if execution.ctx.cancel_reason is not None or execution.task is None:
            return
        execution.ctx.cancel_reason = reason
        execution.task.cancel()

    def _reconnected(self) -> None:
        """The bell was deaf for a while: what it missed is read (viewers' runs, the queue);
        a missed cancel is caught by the next heartbeat."""
        self.hub.catch_up()
        self._wake.set()
        for run_id in self._runs:
            self._spawn(self._take_steers(run_id))

    def _control(self, message: str) -> None:
        """The bell: `queued` (a run waits), `cancel:<run id>` (stop it, if it runs here)."""
        if message == "queued":
            self._wake.set()
        elif message.startswith("cancel:"):
            execution = self._runs.get(message.removeprefix("cancel:"))
            if execution is not None:
                self._stop(execution, "cancel")
        elif message.startswith("steer:"):
            run_id = message.removeprefix("steer:")
            if run_id in self._runs:
                self._spawn(self._take_steers(run_id))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    # --- the worker's loops ----------------------------------------------------------------------
    async def _work(self) -> None:
        """Claim runs while slots are free; then sleep until the bell, a run's end, or a poll."""
        while self._claiming:
            self._wake.clear()
            try:
                await self._claim_while_free()
                self._counts = await self.store.counts()
                if self._counts["queued"]:  # places in the queue to tell, if any moved
                    self.hub.publish(await self.store.announce_positions())
            except StoreError as exc:
                log.error("the queue could not be read: %s", exc)
            except Exception:
                log.exception("the worker loop failed; it goes on")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.limits.poll_seconds):
                    await self._wake.wait()

    async def _claim_while_free(self) -> None:
        while self._claiming and len(self._runs) < self.limits.max_concurrent:
            claim = await self.store.claim(self.worker, self.limits.lease_seconds, self._own)
            if claim is None:
                return
            if not self.claiming:  # told to stop while the claim was on its way
                await self.store.hand_back(claim.fence)
                return
            self._begin(claim)

    def _begin(self, claim: Claim) -> None:
        run_id = claim.fence.run_id
        request = RunRequest.from_json(claim.request)
        sink = EventSink(
            self.store,
            claim.fence,
            functools.partial(self._publish, request.source),
            self.redactor,
            lambda exc: self._store_failed(run_id, exc),
        )
        queued_at = _epoch(claim.created_at)
        ctx = RunContext(
            run_id=run_id,
            request=request,
            emit=sink.emit,
            deadline=0.0,
            run_url=self.run_url(run_id),
            created_at=queued_at,
            attempt=claim.fence.attempt,
        )
        if self.observer is not None:
            self.observer.on_claimed(request.source, run_id, max(0.0, time.time() - queued_at))
        execution = _Execution(ctx, sink, claim)
        self._runs[run_id] = execution
        execution.task = asyncio.create_task(self._execute(execution), name=f"run-{run_id}")

    def _publish(self, source: str, events: list[Event]) -> None:
        self.hub.publish(events)
        if self.observer is not None:
            for event in events:
                self.observer.on_event(source, event)

    def _store_failed(self, run_id: str, exc: StoreError) -> None:
        execution = self._runs.get(run_id)
        if execution is None:
            return
        if isinstance(exc, LeaseLost):
            log.warning("run %s: this worker lost its lease; it stops the run", run_id)
            self._lease_lost(execution)
        else:
            log.error("run %s could not be recorded: %s", run_id, exc)
            self._stop(execution, "store")

    def _lease_lost(self, execution: _Execution) -> None:
        if execution.ctx.cancel_reason is None and self.observer is not None:
            self.observer.on_lease_lost()
        self._stop(execution, "lease_lost")

    async def _heartbeat(self) -> None:
        """Renew this worker's leases; stop the runs it no longer holds (reaped), and the ones
        someone asked to cancel (a missed bell). A worker that cannot renew for a whole lease
        stops everything it runs: another worker may have reaped them already."""
        every = self.limits.lease_seconds / 3
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(every)
            held = {rid: e for rid, e in self._runs.items() if e.task is not None}
            if not held:
                renewed = time.monotonic()
                continue
            try:
                leases = await self.store.heartbeat(self.worker, held, self.limits.lease_seconds)
            except StoreError as exc:
                log.error("the leases could not be renewed: %s", exc)
                if time.monotonic() - renewed > self.limits.lease_seconds:
                    for execution in held.values():
                        self._lease_lost(execution)
                continue
            renewed = time.monotonic()
            kept = {lease.run_id: lease for lease in leases}
            for run_id, execution in held.items():
                lease = kept.get(run_id)
                if lease is None:
                    if run_id in self._runs:  # not finished meanwhile
                        log.warning("run %s was taken from this worker; it stops", run_id)
                        self._lease_lost(execution)
                elif lease.cancel_requested:
                    self._stop(execution, "cancel")

    async def _reaper(self) -> None:
        every = min(self.limits.poll_seconds, self.limits.lease_seconds / 3)
        while True:
            await asyncio.sleep(every)
            try:
                await self._reap(every_other_worker=False)
            except Exception:
                log.exception("the reaper failed; it goes on")

    async def _reap(self, *, every_other_worker: bool) -> None:
        events = await self.store.reap(self.worker, every_other_worker=every_other_worker)
        if not events:
            if every_other_worker:
                await self._sweep("left by a previous process")
            return
        ended = sorted({e.run_id for e in events if e.is_terminal})
        log.warning("ended %d runs whose worker stopped: %s", len(ended), ", ".join(ended))
        if self.observer is not None:
            self.observer.on_reaped(len(ended))
        self.hub.publish(events)
        self._wake.set()
        await self._sweep(
            "left by a previous process" if every_other_worker else "no live run owns"
        )

    async def _sweep(self, whose: str) -> None:
        """Delete the sandboxes no live run owns, anywhere (a dead worker's, say)."""
        if self.janitor is None:
            return
        try:
            removed = await self.janitor.cleanup_orphans(await self.live_run_ids())
        except Exception:
            log.exception("the sandbox janitor failed")
            return
        if removed:
            log.info("deleted %d sandboxes %s", removed, whose)

    # --- one run ---------------------------------------------------------------------------------
    async def _execute(self, execution: _Execution) -> None:
        ctx = execution.ctx
        run_id = ctx.run_id
        token = run_id_var.set(run_id)
        started = time.monotonic()
        ctx.deadline = started + self.limits.max_duration
        status, outcome = RunStatus.FAILED, None
        failure: BackspaceError | None = None
        timer: asyncio.Timeout | None = None
        try:
            if ctx.request.family_id:
                ctx.continuation = await self._continuation(ctx.request.family_id, run_id)
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
            failure, status, outcome = self._cancelled(ctx, execution)
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
            try:
                await self._finish(execution, status, failure, started, outcome)
            finally:
                self._runs.pop(run_id, None)
                run_id_var.reset(token)
                self._wake.set()

    def _cancelled(
        self, ctx: RunContext, execution: _Execution
    ) -> tuple[BackspaceError | None, RunStatus, Outcome | None]:
        if ctx.cancel_reason == "shutdown":
            failure: BackspaceError = RunFailure(
                "interrupted",
                "the server shut down while this run was in progress; start it again",
                retryable=True,
            )
            return failure, RunStatus.FAILED, None
        if ctx.cancel_reason in ("lease_lost", "store"):
            return execution.sink.failure or StoreError("lease lost"), RunStatus.FAILED, None
        return None, RunStatus.CANCELLED, Outcome(RunStatus.CANCELLED, "The run was cancelled.")

    async def _finish(
        self,
        execution: _Execution,
        status: RunStatus,
        failure: BackspaceError | None,
        started: float,
        outcome: Outcome | None,
    ) -> None:
        """Store the rest of the run's events, then its end: the one `error` (if it failed) and
        the one `complete`, with its final state, in one transaction."""
        ctx, sink = execution.ctx, execution.sink
        await sink.drain()
        if isinstance(sink.failure, LeaseLost):
            return  # whoever reaped it wrote its end
        if sink.failure is not None and failure is None:  # its events could not all be stored
            status, failure, outcome = RunStatus.FAILED, sink.failure, None
        duration_ms = int((time.monotonic() - started) * 1000)
        stage = ctx.stage
        reason = failure.describe(stage) if failure is not None else None
        end = RunEnd(
            status=status,
            duration_ms=duration_ms,
            pr_url=outcome.pr_url if outcome else None,
            summary=self.redactor.text(outcome.summary) if outcome and outcome.summary else None,
            error=(
                RunError(code=failure.code, message=self.redactor.text(reason))
                if failure is not None and reason is not None
                else None
            ),
        )
        message = reason if reason is not None else (outcome.message if outcome else "")
        events = final_events(
            end,
            stage,
            self.redactor.text(message),
            retryable=failure.retryable if failure is not None else False,
        )
        if sink.failure is None:
            try:
                stored = await self.store.finish(execution.claim.fence, end, events)
            except LeaseLost:
                return
            except StoreError as exc:
                log.error("could not record the end of run %s: %s", ctx.run_id, exc)
            else:
                self._publish(ctx.request.source, stored)
                return
        self._announce_unrecorded_end(ctx.run_id, sink.last_seq, events[-1])

    async def _continuation(self, family_id: str, run_id: str) -> Continuation:
        """What the family's earlier runs left: their requests and summaries, and the newest
        branch and PR one of them published (read now: it may have been opened while we waited)."""
        earlier = []
        published: Run | None = None
        family = await self.store.family_runs(family_id)
        for run in family:
            if run.id == run_id:
                break
            earlier.append(
                EarlierRun(prompt=run.prompt, status=str(run.status), summary=run.summary)
            )
            if run.branch and run.pr_url:
                published = run
        first_base = next((r.base_sha for r in family if r.base_sha), None)
        if published is None:
            return Continuation(earlier=earlier)
        return Continuation(
            earlier=earlier,
            branch=published.branch,
            pr_number=published.pr_number,
            pr_url=published.pr_url,
            base_sha=first_base,
        )

    def _announce_unrecorded_end(self, run_id: str, last_seq: int, complete: NewEvent) -> None:
        """The store failed: live viewers here still get the `complete` (it is not stored)."""
        data = {**complete.data, "recorded": False}
        self.hub.publish([Event(run_id, last_seq + 1, EventType.COMPLETE, now_iso(), data)])


def _epoch(iso: str) -> float:
    """An ISO timestamp (`...Z`) as Unix seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
