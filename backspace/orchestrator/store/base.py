"""The `RunStore` protocol: runs, their event log, the queue and the bell, in one database.

Two backends keep it: `SqliteStore` (one process, the embedded default) and `PostgresStore`
(several replicas on one PostgreSQL: BACKSPACE_DATABASE_URL). The orchestrator sees only this.

- **The queue.** A run's row is its job. `submit` records it `queued` with its request and its
  `start` event; a worker with a free slot `claim`s the oldest it may run (a family's runs one at
  a time, oldest first) and holds it by a lease it renews with `heartbeat`. Every write the owner
  makes carries its `Fence` (worker and attempt) and fails with `LeaseLost` once the claim is no
  longer the run's; `reap` ends the runs whose lease expired (`interrupted`: a run that may have
  pushed is never run again).
- **The event log.** `seq` is 1, 2, 3... per run with no gap, under any number of writers: the
  run's row holds the last one, bumped in the append's own transaction (a row lock, not a
  sequence: a rolled-back sequence value leaves a hole, and a reader could see 5 before 4).
- **The bell.** `listen` calls back with `(run_id, last_seq)` after another process appended, and
  with control messages (`queued`, `cancel:<run id>`): PostgreSQL's LISTEN/NOTIFY, fired only by
  commits. A process never needs it for what it wrote itself.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

from backspace.orchestrator.errors import LeaseLost as LeaseLost
from backspace.orchestrator.events import Event
from backspace.orchestrator.store.records import (
    Cancel,
    Claim,
    Fence,
    Lease,
    NewEvent,
    PullRequestRecord,
    Run,
    RunEnd,
)

OnEvents = Callable[[str, int], None]
OnControl = Callable[[str], None]
OnReconnect = Callable[[], None]


class RunStore(Protocol):
    kind: str  # "sqlite" or "postgresql"
    shared: bool  # other processes use it too: only an expired lease may be reaped

    async def open(self) -> None:
        """Connect, and apply the pending migrations (once, however many replicas start)."""

    async def aclose(self) -> None: ...

    async def ping(self) -> bool: ...

    def headroom(self) -> tuple[bool, str]:
        """Whether new runs may be recorded (SQLite: the disk's free space), and a sentence."""

    def describe(self) -> str:
        """Where the store is, for an operator (a path, or host and database, no password)."""

    # --- runs ----------------------------------------------------------------------------------
    async def submit(self, run: Run, request: dict[str, Any], start: NewEvent) -> Event:
        """Record a queued run, its request and its `start` event (seq 1) at once, and ring."""

    async def get_run(self, run_id: str) -> Run | None: ...

    async def list_runs(self, limit: int = 50, before: str | None = None) -> list[Run]: ...

    async def runs_with_meta(self, key: str, value: str, limit: int = 10) -> list[Run]: ...

    async def family_runs(self, family_id: str) -> list[Run]:
        """Every run of a family, oldest first."""

    async def run_for_pull_request(self, pr_url: str) -> Run | None: ...

    async def running_in_family(self, family_id: str) -> str | None:
        """The family's run that executes now, anywhere."""

    async def set_meta(self, run_id: str, **values: Any) -> None:
        """Merge `values` into the run's meta (a front end's notes: a Slack thread, a status
        message's id), whoever runs it."""

    async def counts(self) -> dict[str, int]:
        """How many runs are queued and running, across every worker."""

    # --- the queue -----------------------------------------------------------------------------
    async def claim(
        self, worker: str, lease_seconds: float, among: Collection[str] | None = None
    ) -> Claim | None:
        """Take the oldest queued run this worker may start (one of `among`, when given: a
        one-shot process takes only its own), or None."""

    async def heartbeat(
        self, worker: str, run_ids: Collection[str], lease_seconds: float
    ) -> list[Lease]:
        """Renew the leases of the runs this worker still holds; a run missing from the answer
        was taken from it."""

    async def reap(self, worker: str, *, every_other_worker: bool = False) -> list[Event]:
        """End the runs whose owner's lease expired as `interrupted` (`every_other_worker`: all
        runs no longer owned by `worker`, for a lone process at start); the events written."""

    async def hand_back(self, fence: Fence) -> bool:
        """Return a claimed run that has not started work to the queue (a draining worker)."""

    async def request_cancel(self, run_id: str) -> Cancel:
        """Cancel a queued run now, or ask a running run's owner to stop it."""

    async def live_run_ids(self) -> set[str]:
        """Runs queued or running under a lease that has not expired: their sandboxes are in
        use, wherever they run."""

    async def announce_positions(self) -> list[Event]:
        """Tell each queued run whose place in the queue changed where it is now (a `progress`
        event); the events written."""

    async def queue_position(self, run_id: str) -> int | None: ...

    # --- events --------------------------------------------------------------------------------
    async def append(self, fence: Fence, events: Sequence[NewEvent]) -> list[Event]:
        """Append a run's events (next seqs, one transaction), with the columns they change;
        `LeaseLost` when `fence` no longer holds the run."""

    async def finish(self, fence: Fence, end: RunEnd, events: Sequence[NewEvent]) -> list[Event]:
        """Record the run's end and its last events at once (`LeaseLost`: someone ended it)."""

    async def events_after(
        self, run_id: str, after: int = 0, limit: int | None = None
    ) -> list[Event]: ...

    async def last_seq(self, run_id: str) -> int: ...

    # --- the bell ------------------------------------------------------------------------------
    async def listen(
        self, on_events: OnEvents, on_control: OnControl, on_reconnect: OnReconnect | None = None
    ) -> None:
        """Call back on other processes' appends and control messages, until `aclose`.
        `on_reconnect` is called after the bell's connection dropped and came back: what was
        rung meanwhile is lost, so the caller reads what it follows again (SQLite never
        calls it: its bell cannot drop)."""

    async def ring(self, message: str) -> None:
        """Send a control message to every process (`cancel:<run id>`, `queued`)."""

    # --- a follow-up steered into a run executing elsewhere --------------------------------------
    async def send_steer(self, run_id: str, message: dict[str, Any]) -> int:
        """Record a steer for the run's owner and ring `steer:<run id>`; its id."""

    async def take_steers(self, run_id: str) -> list[tuple[int, dict[str, Any]]]:
        """The owner takes the run's pending steers (each once)."""

    async def settle_steer(self, steer_id: int, delivered: bool) -> None:
        """The owner says whether its agent got the steer (`delivered`) or not (`refused`)."""

    async def steer_state(self, steer_id: int, *, withdraw: bool = False) -> str:
        """`pending`, `taken`, `delivered`, `refused` or `withdrawn`; `withdraw`: a pending
        steer becomes `withdrawn` (the sender gives up on it) and can no longer be taken."""

    # --- a webhook's deliveries, a channel's repository ------------------------------------------
    async def claim_delivery(self, source: str, delivery_id: str) -> bool:
        """True the first time `(source, delivery_id)` is seen; False for a repeat."""

    async def set_channel_repo(
        self, team_id: str, channel_id: str, repo: str, set_by: str
    ) -> None: ...

    async def channel_repo(self, team_id: str, channel_id: str) -> str | None: ...

    async def take_tokens(self, keys: Sequence[str], per_second: float, burst: float) -> float:
        """Token buckets shared by every process: one token from each of `keys` when all have
        one (0 then), else nothing is taken and the answer is the seconds until they will."""

    # --- pull requests (the local git host's records) ------------------------------------------
    async def create_pull_request(self, **fields: Any) -> int: ...

    async def get_pull_request(self, pr_id: int) -> PullRequestRecord | None: ...

    async def update_pull_request(self, pr_id: int, **fields: Any) -> None: ...

    async def add_pull_request_comment(self, pr_id: int, body: str) -> int: ...

    async def pull_request_comments(self, pr_id: int) -> list[dict[str, Any]]: ...


__all__ = ["Fence", "LeaseLost", "OnControl", "OnEvents", "OnReconnect", "RunStore"]
