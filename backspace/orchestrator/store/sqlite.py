"""The embedded default: runs, events and the queue in one SQLite file (WAL), for one process.

One connection, used from the event loop's thread only: a statement takes microseconds in WAL
mode with `synchronous=NORMAL`, cheaper than a thread hop, so the `async` methods run their SQL
inline. One process holds the file, so its clock is the lease clock and the bell rings within
the process.

An owner's append is one fenced `INSERT ... SELECT` numbered after the log's `MAX(seq)`: SQLite
has one writer at a time, so that is gapless without a counter, and a commit writes the events'
page alone. The run columns its events change (stage, spend, PR) are set first, in a statement
of their own, as the runner always did: a crash between the two leaves the run's columns one
event ahead of its log, and the run is then ended as interrupted anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import time
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backspace.orchestrator.errors import StoreError as StoreError
from backspace.orchestrator.errors import StoreFull as StoreFull
from backspace.orchestrator.events import Event, RunStatus, Stage, now_iso
from backspace.orchestrator.store.base import LeaseLost, OnControl, OnEvents, OnReconnect
from backspace.orchestrator.store.migrations import migrations
from backspace.orchestrator.store.records import (
    CANCELLED_BEFORE_START,
    COLUMNS,
    FIELDS,
    INTERRUPTED,
    PULL_REQUEST_UPDATABLE,
    Cancel,
    CancelOutcome,
    Claim,
    Duty,
    Fence,
    Lease,
    NewEvent,
    PullRequestRecord,
    Run,
    RunEnd,
    RunError,
    derived_changes,
    final_events,
    ms_since,
    run_from_values,
    stored,
    waiting_event,
)

# Columns added after a table was first made, before migrations were versioned: a database
# from then gains them when it is adopted (see `_adopt`).
LEGACY_COLUMNS = (
    ("runs", "family_id", "TEXT"),
    ("runs", "parent_id", "TEXT"),
    ("runs", "base_sha", "TEXT"),
    ("runs", "pr_number", "INTEGER"),
    ("runs", "summary", "TEXT"),
    ("pull_requests", "state", "TEXT NOT NULL DEFAULT 'open'"),
)
DELIVERY_DAYS = 7  # a webhook's deliveries are remembered this long (GitHub redelivers for 3)
SELECT_RUNS = f"SELECT {', '.join(COLUMNS)} FROM runs"  # noqa: S608 (names, not values)


def _run(row: sqlite3.Row) -> Run:
    return run_from_values({name: row[name] for name in COLUMNS})


class SqliteStore:
    kind = "sqlite"
    shared = False

    def __init__(
        self, path: Path | str, *, max_bytes: int | None = None, headroom_bytes: int = 0
    ) -> None:
        self.path = Path(path)
        memory = str(path) == ":memory:"
        self.headroom_bytes = 0 if memory else headroom_bytes
        if not memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self.migrate()
        if max_bytes is not None:  # a size cap: past it, writes fail as on a full disk
            page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            self._db.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page)}")
        self._on_control: list[OnControl] = []

    # --- life cycle ----------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply the pending migrations in one transaction; the versions applied."""
        with self._transaction():
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            self._adopt()
            done = {r[0] for r in self._db.execute("SELECT version FROM schema_migrations")}
            applied = []
            for migration in migrations("sqlite"):
                if migration.version in done:
                    continue
                for statement in _statements(migration.sql):
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (migration.version, now_iso()),
                )
                applied.append(migration.version)
        return applied

    def _adopt(self) -> None:
        """A database made before migrations were versioned: bring it to migration 1."""
        if self._db.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]:
            return
        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
            return
        for table, column, definition in LEGACY_COLUMNS:
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if have and column not in have:  # (a table it lacks is made whole below)
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        for statement in _statements(migrations("sqlite")[0].sql):
            self._db.execute(statement)  # CREATE ... IF NOT EXISTS: the tables it lacks
        self._db.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (1, ?)", (now_iso(),)
        )

    async def open(self) -> None:
        """Nothing to do: the file was opened and migrated when the store was made."""

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def describe(self) -> str:
        return f"SQLite at {self.path}"

    def headroom(self) -> tuple[bool, str]:
        """Whether the database's disk has BACKSPACE_DB_HEADROOM_MB free, and a sentence."""
        if not self.headroom_bytes:
            return True, "no headroom kept (BACKSPACE_DB_HEADROOM_MB=0)"
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError as exc:
            return False, f"the database's disk cannot be measured ({exc.strerror})"
        mb = 1024 * 1024
        if free < self.headroom_bytes:
            return False, (
                f"the disk holding the database has {free // mb} MB free, less than "
                f"BACKSPACE_DB_HEADROOM_MB={self.headroom_bytes // mb}: new runs are refused so "
                "that running ones can still record their events; free space on that disk"
            )
        return True, f"{free // mb} MB free on the database's disk"

    async def ping(self) -> bool:
        try:
            self._db.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    # --- runs ----------------------------------------------------------------------------------
    async def submit(self, run: Run, request: dict[str, Any], start: NewEvent) -> Event:
        room, message = self.headroom()
        if not room:
            raise StoreFull(message)
        values = stored({name: getattr(run, name) for name in FIELDS})
        values.update(request=json.dumps(request))
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._transaction():
            self._db.execute(
                f"INSERT INTO runs ({columns}) VALUES ({marks})",  # noqa: S608
                tuple(values.values()),
            )
            self._insert_events(run.id, 1, [start])
        self._ring_local("queued")
        return _event(run.id, 1, start)

    async def get_run(self, run_id: str) -> Run | None:
        row = self._read(f"{SELECT_RUNS} WHERE id = ?", (run_id,)).fetchone()
        return _run(row) if row else None

    async def list_runs(self, limit: int = 50, before: str | None = None) -> list[Run]:
        if before:
            rows = self._read(
                f"{SELECT_RUNS} WHERE created_at < ? ORDER BY created_at DESC LIMIT ?",
                (before, limit),
            )
        else:
            rows = self._read(f"{SELECT_RUNS} ORDER BY created_at DESC LIMIT ?", (limit,))
        return [_run(r) for r in rows]

    async def runs_with_meta(self, key: str, value: str, limit: int = 10) -> list[Run]:
        rows = self._read(
            f"{SELECT_RUNS} WHERE json_extract(meta, ?) = ? ORDER BY created_at DESC LIMIT ?",
            (f"$.{key}", value, limit),
        )
        return [_run(r) for r in rows]

    async def family_runs(self, family_id: str) -> list[Run]:
        rows = self._read(
            f"{SELECT_RUNS} WHERE family_id = ? ORDER BY created_at, rowid", (family_id,)
        )
        return [_run(r) for r in rows]

    async def run_for_pull_request(self, pr_url: str) -> Run | None:
        row = self._read(
            f"{SELECT_RUNS} WHERE pr_url = ? ORDER BY created_at DESC LIMIT 1", (pr_url,)
        ).fetchone()
        return _run(row) if row else None

    async def running_in_family(self, family_id: str) -> str | None:
        row = self._read(
            "SELECT id FROM runs WHERE family_id = ? AND status = 'running' LIMIT 1", (family_id,)
        ).fetchone()
        return str(row[0]) if row else None

    async def set_meta(self, run_id: str, **values: Any) -> None:
        self._write(
            "UPDATE runs SET meta = json_patch(meta, ?), updated_at = ? WHERE id = ?",
            (json.dumps(values), now_iso(), run_id),
        )

    async def counts(self) -> dict[str, int]:
        rows = self._read(
            "SELECT status, count(*) FROM runs WHERE status IN ('queued', 'running') "
            "GROUP BY status",
            (),
        )
        found = {"queued": 0, "running": 0}
        found.update({str(r[0]): int(r[1]) for r in rows})
        return found

    # --- the queue -----------------------------------------------------------------------------
    async def claim(
        self, worker: str, lease_seconds: float, among: Collection[str] | None = None
    ) -> Claim | None:
        # The oldest queued run whose family has no run executing and no older run waiting: a
        # family's runs build on each other's branch, one at a time, in order.
        if among is not None and not among:
            return None
        only = json.dumps(list(among)) if among is not None else None
        with self._transaction():
            row = self._db.execute(
                "UPDATE runs SET status = 'running', worker_id = ?, attempt = attempt + 1, "
                "started_at = ?, lease_expires_at = ?, updated_at = ?, queue_position = NULL "
                "WHERE id = (SELECT q.id FROM runs q WHERE q.status = 'queued' "
                "  AND q.request IS NOT NULL AND NOT EXISTS (SELECT 1 FROM runs o "
                "    WHERE o.family_id = q.family_id AND o.id != q.id AND (o.status = 'running' "
                "      OR (o.status = 'queued' AND (o.created_at, o.id) < (q.created_at, q.id)))) "
                "  AND (? IS NULL OR q.id IN (SELECT value FROM json_each(?))) "
                "  ORDER BY q.created_at, q.id LIMIT 1) "
                "RETURNING id, attempt, request, created_at",
                (worker, now_iso(), time.time() + lease_seconds, now_iso(), only, only),
            ).fetchone()
        if row is None:
            return None
        return Claim(
            Fence(row["id"], worker, int(row["attempt"])),
            json.loads(row["request"]),
            row["created_at"],
        )

    async def heartbeat(
        self, worker: str, run_ids: Collection[str], lease_seconds: float
    ) -> list[Lease]:
        if not run_ids:
            return []
        marks = ", ".join("?" for _ in run_ids)
        rows = self._write(
            f"UPDATE runs SET lease_expires_at = ? WHERE worker_id = ? AND status = 'running' "  # noqa: S608
            f"AND id IN ({marks}) RETURNING id, cancel_requested_at",
            (time.time() + lease_seconds, worker, *run_ids),
        ).fetchall()
        return [Lease(r[0], r[1] is not None) for r in rows]

    async def reap(self, worker: str, *, every_other_worker: bool = False) -> list[Event]:
        if every_other_worker:
            condition, params = "(worker_id IS NULL OR worker_id != ?)", (worker,)
        else:
            condition, params = "lease_expires_at < ?", (time.time(),)  # type: ignore[assignment]
        written: list[Event] = []
        with self._transaction():
            rows = self._db.execute(
                f"SELECT id, stage, started_at FROM runs WHERE status = 'running' AND {condition}",  # noqa: S608
                params,
            ).fetchall()
            for row in rows:
                end = RunEnd(
                    status=RunStatus.FAILED,
                    duration_ms=ms_since(row["started_at"]),
                    error=RunError(code="interrupted", message=INTERRUPTED),
                )
                written += self._end(row["id"], end, final_events(end, row["stage"], INTERRUPTED))
        return written

    async def hand_back(self, fence: Fence) -> bool:
        cursor = self._write(
            "UPDATE runs SET status = 'queued', worker_id = NULL, lease_expires_at = NULL, "
            "started_at = NULL, updated_at = ? WHERE id = ? AND worker_id = ? AND attempt = ? "
            "AND status = 'running'",
            (now_iso(), fence.run_id, fence.worker, fence.attempt),
        )
        if cursor.rowcount:
            self._ring_local("queued")
        return cursor.rowcount == 1

    async def request_cancel(self, run_id: str) -> Cancel:
        with self._transaction():
            row = self._db.execute(
                "UPDATE runs SET cancel_requested_at = ? WHERE id = ? "
                "AND status IN ('queued', 'running') RETURNING status, worker_id, stage",
                (now_iso(), run_id),
            ).fetchone()
            if row is None:
                return Cancel(CancelOutcome.NOT_LIVE)
            if row["status"] == "running":
                outcome = Cancel(CancelOutcome.SIGNALLED, worker=row["worker_id"])
            else:
                end = RunEnd(status=RunStatus.CANCELLED, duration_ms=0)
                events = final_events(end, Stage.QUEUED, CANCELLED_BEFORE_START)
                return Cancel(CancelOutcome.CANCELLED, self._end(run_id, end, events))
        self._ring_local(f"cancel:{run_id}")
        return outcome

    async def live_run_ids(self) -> set[str]:
        rows = self._read(
            "SELECT id FROM runs WHERE status = 'queued' "
            "OR (status = 'running' AND lease_expires_at >= ?)",
            (time.time(),),
        )
        return {str(r[0]) for r in rows}

    async def announce_positions(self) -> list[Event]:
        written: list[Event] = []
        with self._transaction():
            rows = self._db.execute(
                "SELECT q.id, q.family_id, q.queue_position, "
                "(SELECT o.id FROM runs o WHERE o.family_id = q.family_id "
                "  AND o.status = 'running' AND o.id != q.id LIMIT 1) AS behind "
                "FROM runs q WHERE q.status = 'queued' ORDER BY q.created_at, q.id"
            ).fetchall()
            for position, row in enumerate(rows, start=1):
                if row["queue_position"] == position:
                    continue
                self._db.execute(
                    "UPDATE runs SET queue_position = ? WHERE id = ?", (position, row["id"])
                )
                seq = self._next_seq(row["id"])
                written += self._insert_events(
                    row["id"], seq, [waiting_event(position, row["behind"])]
                )
        return written

    async def queue_position(self, run_id: str) -> int | None:
        row = self._read(
            "SELECT count(*) FROM runs q, runs r WHERE r.id = ? AND r.status = 'queued' "
            "AND q.status = 'queued' AND (q.created_at, q.id) <= (r.created_at, r.id)",
            (run_id,),
        ).fetchone()
        return int(row[0]) or None

    # --- events --------------------------------------------------------------------------------
    async def append(self, fence: Fence, events: Sequence[NewEvent]) -> list[Event]:
        if not events:
            return []
        changes = stored(derived_changes(list(events)))
        if changes:  # the columns its events change (the run's stage, spend, PR): set first
            try:
                self._hold(fence, changes)
            except sqlite3.Error as exc:
                raise StoreError(f"the run store could not be written: {exc}") from exc
        # One statement, atomic alone (the common case): numbered after the log's last event,
        # only while `fence` holds the run. One writer at a time (SQLite's lock) keeps the seqs
        # gapless; the run's row is only read, so a commit writes the events' page alone.
        if len(events) == 1:  # an idle run's event: the cheapest form
            (event,) = events
            row = self._write(
                "INSERT INTO events (run_id, seq, type, ts, data) SELECT r.id, "
                "(SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = r.id) + 1, ?, ?, ? "
                "FROM runs r WHERE r.id = ? AND r.worker_id = ? AND r.attempt = ? "
                "AND r.status = 'running' RETURNING seq",
                (event.type, event.timestamp, event.encoded(), *_fenced(fence)),
            ).fetchone()
            if row is None:
                raise LeaseLost(f"run {fence.run_id} is no longer held by {fence.worker}")
            return [_event(fence.run_id, int(row[0]), event)]
        marks = ", ".join("(?, ?, ?, ?)" for _ in events)
        values = [v for i, e in enumerate(events, 1) for v in (i, e.type, e.timestamp, e.encoded())]
        rows = self._write(
            "WITH head (n) AS MATERIALIZED "  # noqa: S608 (`marks` holds placeholders)
            "(SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?), "
            f"batch (i, type, ts, data) AS (VALUES {marks}) "
            "INSERT INTO events (run_id, seq, type, ts, data) "
            "SELECT r.id, head.n + b.i, b.type, b.ts, b.data FROM runs r, head, batch b "
            "WHERE r.id = ? AND r.worker_id = ? AND r.attempt = ? AND r.status = 'running' "
            "ORDER BY b.i RETURNING seq",
            (fence.run_id, *values, *_fenced(fence)),
        ).fetchall()
        if not rows:
            raise LeaseLost(f"run {fence.run_id} is no longer held by {fence.worker}")
        first = min(int(r[0]) for r in rows)
        return [_event(fence.run_id, first + i, e) for i, e in enumerate(events)]

    async def finish(self, fence: Fence, end: RunEnd, events: Sequence[NewEvent]) -> list[Event]:
        with self._transaction():
            self._hold(fence, {})
            return self._end(fence.run_id, end, events)

    async def events_after(
        self, run_id: str, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        sql = "SELECT seq, type, ts, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq"
        params: tuple[Any, ...] = (run_id, after)
        if limit is not None:
            sql += " LIMIT ?"
            params = (*params, limit)
        return [
            Event(run_id=run_id, seq=r[0], type=r[1], timestamp=r[2], data=json.loads(r[3]))
            for r in self._read(sql, params)
        ]

    async def last_seq(self, run_id: str) -> int:
        row = self._read(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?", (run_id,)
        ).fetchone()
        return int(row[0])

    # --- the bell: one process, so it rings within it ------------------------------------------
    async def listen(
        self, on_events: OnEvents, on_control: OnControl, on_reconnect: OnReconnect | None = None
    ) -> None:
        self._on_control.append(on_control)

    async def ring(self, message: str) -> None:
        self._ring_local(message)

    def _ring_local(self, message: str) -> None:
        if not self._on_control:
            return
        loop = asyncio.get_running_loop()
        for callback in self._on_control:
            loop.call_soon(callback, message)

    # --- a follow-up steered into a run executing elsewhere --------------------------------------
    async def send_steer(self, run_id: str, message: dict[str, Any]) -> int:
        cursor = self._write(
            "INSERT INTO steers (run_id, message, created_at) VALUES (?, ?, ?)",
            (run_id, json.dumps(message), now_iso()),
        )
        self._ring_local(f"steer:{run_id}")
        return int(cursor.lastrowid or 0)

    async def take_steers(self, run_id: str) -> list[tuple[int, dict[str, Any]]]:
        rows = self._write(
            "UPDATE steers SET state = 'taken' WHERE run_id = ? AND state = 'pending' "
            "RETURNING id, message",
            (run_id,),
        ).fetchall()
        return sorted((int(r[0]), json.loads(r[1])) for r in rows)

    async def settle_steer(self, steer_id: int, delivered: bool) -> None:
        self._write(
            "UPDATE steers SET state = ? WHERE id = ? AND state = 'taken'",
            ("delivered" if delivered else "refused", steer_id),
        )

    async def steer_state(self, steer_id: int, *, withdraw: bool = False) -> str:
        if withdraw:
            self._write(
                "UPDATE steers SET state = 'withdrawn' WHERE id = ? AND state = 'pending'",
                (steer_id,),
            )
        row = self._read("SELECT state FROM steers WHERE id = ?", (steer_id,)).fetchone()
        return str(row[0]) if row else "withdrawn"

    # --- a webhook's deliveries, a channel's repository, rate limits -----------------------------
    async def claim_delivery(self, source: str, delivery_id: str) -> bool:
        cutoff = datetime.now(UTC) - timedelta(days=DELIVERY_DAYS)
        with self._transaction():
            self._db.execute(
                "DELETE FROM deliveries WHERE received_at < ?",
                (cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z"),),
            )
            cursor = self._db.execute(
                "INSERT INTO deliveries (source, id, received_at) VALUES (?, ?, ?) "
                "ON CONFLICT (source, id) DO NOTHING",
                (source, delivery_id, now_iso()),
            )
        return cursor.rowcount == 1

    async def set_channel_repo(self, team_id: str, channel_id: str, repo: str, set_by: str) -> None:
        self._write(
            "INSERT INTO channel_repos (team_id, channel_id, repo, set_by, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (team_id, channel_id) DO UPDATE SET "
            "repo = excluded.repo, set_by = excluded.set_by, updated_at = excluded.updated_at",
            (team_id, channel_id, repo, set_by, now_iso()),
        )

    async def channel_repo(self, team_id: str, channel_id: str) -> str | None:
        row = self._read(
            "SELECT repo FROM channel_repos WHERE team_id = ? AND channel_id = ?",
            (team_id, channel_id),
        ).fetchone()
        return str(row[0]) if row else None

    async def take_tokens(self, keys: Sequence[str], per_second: float, burst: float) -> float:
        now = time.time()
        with self._transaction():
            levels = {}
            for key in keys:
                row = self._db.execute(
                    "SELECT tokens, updated FROM rate_buckets WHERE key = ?", (key,)
                ).fetchone()
                tokens = burst if row is None else min(burst, row[0] + (now - row[1]) * per_second)
                levels[key] = tokens
            short = [tokens for tokens in levels.values() if tokens < 1]
            if short:
                return float("inf") if per_second <= 0 else max((1 - t) / per_second for t in short)
            for key, tokens in levels.items():
                self._db.execute(
                    "INSERT INTO rate_buckets (key, tokens, updated, per_second, burst) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                    "tokens = excluded.tokens, updated = excluded.updated, "
                    "per_second = excluded.per_second, burst = excluded.burst",
                    (key, tokens - 1, now, per_second, burst),
                )
            # Full buckets carry no state: forget those, so the table stays small. Each by its
            # own rate: another limiter's buckets refill at theirs.
            self._db.execute(
                "DELETE FROM rate_buckets WHERE tokens + (? - updated) * per_second >= burst",
                (now,),
            )
        return 0.0

    # --- a front end's duty to report a run ------------------------------------------------------
    async def take_duty(
        self, kind: str, run_id: str, holder: str, lease_seconds: float
    ) -> Duty | None:
        now = time.time()
        row = self._write(
            "INSERT INTO duties (run_id, kind, holder, attempt, lease_expires_at) "
            "VALUES (?, ?, ?, 1, ?) ON CONFLICT (run_id, kind) DO UPDATE SET "
            "holder = excluded.holder, attempt = duties.attempt + 1, "
            "lease_expires_at = excluded.lease_expires_at "
            "WHERE duties.done = 0 AND duties.lease_expires_at <= ? "
            "RETURNING run_id, kind, holder, attempt, cursor",
            (run_id, kind, holder, now + lease_seconds, now),
        ).fetchone()
        return _duty(row) if row else None

    async def adopt_duties(
        self, kind: str, holder: str, lease_seconds: float, limit: int = 20
    ) -> list[Duty]:
        now = time.time()
        with self._transaction():
            rows = self._db.execute(
                "UPDATE duties SET holder = ?, attempt = attempt + 1, lease_expires_at = ? "
                "WHERE kind = ? AND run_id IN (SELECT run_id FROM duties WHERE kind = ? "
                "  AND done = 0 AND lease_expires_at <= ? ORDER BY lease_expires_at LIMIT ?) "
                "RETURNING run_id, kind, holder, attempt, cursor",
                (holder, now + lease_seconds, kind, kind, now, limit),
            ).fetchall()
        return [_duty(row) for row in rows]

    async def keep_duty(self, duty: Duty, cursor: int, lease_seconds: float) -> bool:
        cursor_row = self._write(
            "UPDATE duties SET lease_expires_at = ?, cursor = max(cursor, ?) "
            "WHERE run_id = ? AND kind = ? AND holder = ? AND attempt = ? AND done = 0",
            (
                time.time() + lease_seconds,
                cursor,
                duty.run_id,
                duty.kind,
                duty.holder,
                duty.attempt,
            ),
        )
        return cursor_row.rowcount == 1

    async def end_duty(self, duty: Duty) -> bool:
        cursor = self._write(
            "UPDATE duties SET done = 1 "
            "WHERE run_id = ? AND kind = ? AND holder = ? AND attempt = ? AND done = 0",
            (duty.run_id, duty.kind, duty.holder, duty.attempt),
        )
        return cursor.rowcount == 1

    # --- pull requests (the local git host's records) ------------------------------------------
    async def create_pull_request(self, **fields: Any) -> int:
        fields["files"] = json.dumps(fields["files"])
        fields.setdefault("created_at", now_iso())
        columns = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        cursor = self._write(
            f"INSERT INTO pull_requests ({columns}) VALUES ({marks})",  # noqa: S608
            tuple(fields.values()),
        )
        return int(cursor.lastrowid or 0)

    async def get_pull_request(self, pr_id: int) -> PullRequestRecord | None:
        row = self._read("SELECT * FROM pull_requests WHERE id = ?", (pr_id,)).fetchone()
        if row is None:
            return None
        values = dict(row)
        values["files"] = json.loads(values["files"])
        return PullRequestRecord(**values)

    async def update_pull_request(self, pr_id: int, **fields: Any) -> None:
        unknown = set(fields) - PULL_REQUEST_UPDATABLE
        if unknown:
            raise ValueError(f"unknown pull request fields: {sorted(unknown)}")
        if "files" in fields:
            fields["files"] = json.dumps(fields["files"])
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._write(
            f"UPDATE pull_requests SET {assignments} WHERE id = ?",  # noqa: S608
            (*fields.values(), pr_id),
        )

    async def add_pull_request_comment(self, pr_id: int, body: str) -> int:
        cursor = self._write(
            "INSERT INTO pull_request_comments (pr_id, body, created_at) VALUES (?, ?, ?)",
            (pr_id, body, now_iso()),
        )
        return int(cursor.lastrowid or 0)

    async def pull_request_comments(self, pr_id: int) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT id, body, created_at FROM pull_request_comments WHERE pr_id = ? ORDER BY id",
            (pr_id,),
        )
        return [dict(row) for row in rows]

    # --- inside a transaction ------------------------------------------------------------------
    def _hold(self, fence: Fence, changes: dict[str, Any]) -> None:
        """Raise LeaseLost unless `fence` still holds the run; set `changes` on it if it does."""
        assignments = ", ".join(f"{name} = ?" for name in {**changes, "updated_at": ""})
        row = self._db.execute(
            f"UPDATE runs SET {assignments} WHERE id = ? "  # noqa: S608 (names, not values)
            "AND worker_id = ? AND attempt = ? AND status = 'running' RETURNING id",
            (*changes.values(), now_iso(), fence.run_id, fence.worker, fence.attempt),
        ).fetchone()
        if row is None:
            raise LeaseLost(f"run {fence.run_id} is no longer held by {fence.worker}")

    def _next_seq(self, run_id: str) -> int:
        row = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?", (run_id,)
        ).fetchone()
        return int(row[0]) + 1

    def _end(self, run_id: str, end: RunEnd, events: Sequence[NewEvent]) -> list[Event]:
        """The run's final columns and its last events (whoever ends it: its owner, a cancel
        of a queued run, the reaper). The prompt as typed is dropped with the request."""
        changes: dict[str, Any] = {
            "status": str(end.status),
            "stage": str(Stage.COMPLETE),
            "finished_at": now_iso(),
            "duration_ms": end.duration_ms,
            "pr_url": end.pr_url,
            "error": end.error,
        }
        if end.summary:
            changes["summary"] = end.summary
        self._update(run_id, changes, "worker_id = NULL, lease_expires_at = NULL, request = NULL")
        return self._insert_events(run_id, self._next_seq(run_id), events)

    def _update(self, run_id: str, changes: dict[str, Any], extra: str = "") -> None:
        columns = stored({**changes, "updated_at": now_iso()})
        assignments = ", ".join([f"{name} = ?" for name in columns] + ([extra] if extra else []))
        self._db.execute(
            f"UPDATE runs SET {assignments} WHERE id = ?",  # noqa: S608
            (*columns.values(), run_id),
        )

    def _insert_events(self, run_id: str, first: int, events: Sequence[NewEvent]) -> list[Event]:
        rows = [(run_id, first + i, e.type, e.timestamp, e.encoded()) for i, e in enumerate(events)]
        self._db.executemany(
            "INSERT INTO events (run_id, seq, type, ts, data) VALUES (?, ?, ?, ?, ?)", rows
        )
        return [_event(run_id, first + i, e) for i, e in enumerate(events)]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"the run store could not be written: {exc}") from exc
        try:
            yield
        except BaseException as exc:
            if self._db.in_transaction:  # SQLite itself rolls back on a full disk
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"the run store could not be written: {exc}") from exc
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise StoreError(f"the run store could not be written: {exc}") from exc

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"the run store could not be written: {exc}") from exc

    def _read(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"the run store could not be read: {exc}") from exc


def _duty(row: sqlite3.Row) -> Duty:
    return Duty(row[0], row[1], row[2], int(row[3]), int(row[4]))


def _event(run_id: str, seq: int, event: NewEvent) -> Event:
    return Event(
        run_id=run_id, seq=seq, type=event.type, timestamp=event.timestamp, data=event.data
    )


def _statements(sql: str) -> list[str]:
    """A migration file's statements, as SQLite parses them (a trigger's body holds `;`)."""
    found, pending = [], ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            found.append(pending.strip())
            pending = ""
    if pending.strip():
        found.append(pending.strip())
    return [statement for statement in found if statement.rstrip(";").strip()]


def _fenced(fence: Fence) -> tuple[str, str, int]:
    return (fence.run_id, fence.worker, fence.attempt)
