"""Runs, events and the queue in PostgreSQL, shared by several replicas (BACKSPACE_DATABASE_URL).

The same semantics as `SqliteStore`, with what a shared database needs on top:

- every lease is compared with the database's clock (`now()`), so replicas' clocks may differ;
- a claim takes its row with `FOR UPDATE SKIP LOCKED` (claimers never wait on each other), then
  the family's advisory lock, and checks the family rule again in a fresh snapshot: two replicas
  claiming two runs of one family at once cannot both win;
- an append is ONE statement (one round trip): bump `runs.last_seq` under the fence (the row
  lock orders a run's writers, so seq order is commit order and has no gap), insert the events,
  and `pg_notify('backspace_events', '<run id>:<last seq>')`, delivered only if it commits;
- `listen` holds one dedicated autocommit connection (a pooled one would lose its LISTEN), and
  reconnects with backoff when it drops: notifications sent meanwhile are lost, so it calls
  `on_reconnect` for the caller to catch up by reading.

Errors become `StoreError` with the URL's password taken out of their message.
"""

# The SQL here is assembled from this module's constants (table, column and channel names); every
# value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from backspace.orchestrator.errors import StoreError
from backspace.orchestrator.events import Event, RunStatus, Stage, now_iso
from backspace.orchestrator.store.base import LeaseLost, OnControl, OnEvents, OnReconnect
from backspace.orchestrator.store.migrations import migrations, statements
from backspace.orchestrator.store.records import (
    CANCELLED_BEFORE_START,
    COLUMNS,
    FIELDS,
    INTERRUPTED,
    PULL_REQUEST_UPDATABLE,
    Cancel,
    CancelOutcome,
    Claim,
    Fence,
    Lease,
    NewEvent,
    PullRequestRecord,
    Run,
    RunEnd,
    RunError,
    derived_changes,
    final_events,
    run_from_values,
    stored,
    waiting_event,
)

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "backspace_events"
CONTROL_CHANNEL = "backspace_control"
MIGRATION_LOCK = 0x6261_636B_7370_6163  # "backspac": pg_advisory_xact_lock's key for migrating
POSITIONS_LOCK = 0x6261_636B_7370_0001  # one replica announces queue positions at a time
DELIVERY_DAYS = 7  # as in SQLite: a webhook's deliveries are remembered this long
TIMESTAMPS = frozenset({"created_at", "updated_at", "finished_at"})
LISTEN_PROBE = 10.0  # seconds between liveness probes of an idle listener connection
BACKOFF = (0.1, 5.0)  # the listener's reconnect delays: first, longest


def iso(column: str) -> str:
    """A timestamptz column as the API shows times: ISO 8601, UTC, milliseconds, `Z`."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


SELECT_RUNS = "SELECT " + ", ".join(
    f"{iso(c)} AS {c}" if c in TIMESTAMPS else c for c in COLUMNS
) + " FROM runs"  # fmt: skip
FENCED = "worker_id = %(worker)s AND attempt = %(attempt)s AND status = 'running'"
# A run's events after its head `h` was bumped by %(n)s: one INSERT for the batch.
INSERT_EVENTS = (
    "INSERT INTO events (run_id, seq, type, ts, data) "
    "SELECT %(run)s, h.last_seq - %(n)s + e.n, e.type, e.ts, e.data FROM head h, "
    "unnest(%(types)s::text[], %(stamps)s::timestamptz[], %(datas)s::json[]) "
    "WITH ORDINALITY AS e(type, ts, data, n)"
)
NOTIFY_EVENTS = (
    f"SELECT h.last_seq, pg_notify('{EVENTS_CHANNEL}', %(run)s || ':' || h.last_seq) FROM head h"
)


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _batch(run_id: str, events: Sequence[NewEvent]) -> dict[str, Any]:
    return {
        "run": run_id,
        "n": len(events),
        "types": [e.type for e in events],
        "stamps": [_time(e.timestamp) for e in events],
        "datas": [e.encoded() for e in events],
    }


def _events(run_id: str, last: int, events: Sequence[NewEvent]) -> list[Event]:
    first = last - len(events) + 1
    return [
        Event(run_id=run_id, seq=first + i, type=e.type, timestamp=e.timestamp, data=e.data)
        for i, e in enumerate(events)
    ]


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396, as SQLite's json_patch: objects merge, a null removes a key."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge_patch(merged.get(key), value)
    return merged


class PostgresStore:
    kind = "postgresql"
    shared = True

    def __init__(self, url: str, *, pool_min: int = 1, pool_max: int = 10) -> None:
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error:
            raise StoreError(
                "BACKSPACE_DATABASE_URL is not a PostgreSQL URL: give "
                "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
            ) from None
        self._url = url
        self._password = str(params.get("password") or "")
        self._where = (
            f"PostgreSQL database {params.get('dbname') or params.get('user') or '(default)'} "
            f"on {params.get('host') or 'localhost'}:{params.get('port') or 5432}"
        )
        self._opened = False
        self._pool = AsyncConnectionPool(
            url,
            min_size=pool_min,
            max_size=pool_max,
            open=False,
            timeout=10.0,
            kwargs={"autocommit": True},
            name="backspace-store",
        )
        self._listener: asyncio.Task[None] | None = None
        self._listen_conn: psycopg.AsyncConnection[Any] | None = None
        self._closed = False

    # --- life cycle ----------------------------------------------------------------------------
    async def open(self, migrations_folder: Path | None = None) -> None:
        """Connect the pool and apply the pending migrations (`migrations_folder`: a test's own).
        Once: a second call does nothing."""
        if self._opened:
            return
        self._opened = True
        try:  # one connection first: a wrong URL fails now, saying why, not after the pool's wait
            probe = await psycopg.AsyncConnection.connect(self._url)
            await probe.close()
            await self._pool.open(wait=True, timeout=10.0)
        except Exception as exc:  # OperationalError, PoolTimeout: say where, not the password
            await self._pool.close()
            raise StoreError(self._clean(f"cannot connect to the {self._where}: {exc}")) from None
        await self.migrate(migrations_folder)

    async def migrate(self, folder: Path | None = None) -> list[int]:
        """Apply the pending migrations in ONE transaction under an advisory lock: two replicas
        starting at once migrate once (the second waits, then finds nothing to do), and a
        failing file leaves nothing behind (DDL is transactional). The versions applied."""
        applied = []
        async with self._transaction() as cur:
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            await cur.execute("SELECT version FROM schema_migrations")
            done = {row["version"] for row in await cur.fetchall()}
            for migration in migrations("postgres", folder):
                if migration.version in done:
                    continue
                for statement in statements(migration.sql):
                    await cur.execute(statement)
                await cur.execute(
                    "INSERT INTO schema_migrations (version) VALUES (%s)", (migration.version,)
                )
                applied.append(migration.version)
        return applied

    async def aclose(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self._listen_conn is not None:
            with contextlib.suppress(Exception):
                await self._listen_conn.close()
        await self._pool.close()

    def describe(self) -> str:
        return self._where

    def headroom(self) -> tuple[bool, str]:
        return True, "PostgreSQL's disk is the operator's to watch"

    async def ping(self) -> bool:
        try:
            await self._fetchone("SELECT 1 AS one", ())
            return True
        except StoreError:
            return False

    # --- runs ----------------------------------------------------------------------------------
    async def submit(self, run: Run, request: dict[str, Any], start: NewEvent) -> Event:
        values = stored({name: getattr(run, name) for name in FIELDS})
        values.update(request=json.dumps(request), last_seq=1)
        marks = []
        for name in values:
            cast = (
                "::timestamptz"
                if name in TIMESTAMPS
                else "::jsonb"
                if name in ("meta", "request")
                else ""
            )
            marks.append(f"%({name})s{cast}")
        params = {**values, **_batch(run.id, [start])}
        await self._execute(
            f"WITH head AS (INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join(marks)}) "
            f"RETURNING last_seq), ins AS ({INSERT_EVENTS}) "
            f"SELECT pg_notify('{EVENTS_CHANNEL}', %(run)s || ':1'), "
            f"pg_notify('{CONTROL_CHANNEL}', 'queued') FROM head",
            params,
        )
        return _events(run.id, 1, [start])[0]

    async def get_run(self, run_id: str) -> Run | None:
        row = await self._fetchone(f"{SELECT_RUNS} WHERE id = %s", (run_id,))
        return run_from_values(row) if row else None

    async def list_runs(self, limit: int = 50, before: str | None = None) -> list[Run]:
        if before:
            rows = await self._fetchall(
                f"{SELECT_RUNS} WHERE created_at < %s::timestamptz "
                "ORDER BY created_at DESC, submitted DESC LIMIT %s",
                (_time(before), limit),
            )
        else:
            rows = await self._fetchall(
                f"{SELECT_RUNS} ORDER BY created_at DESC, submitted DESC LIMIT %s", (limit,)
            )
        return [run_from_values(r) for r in rows]

    async def runs_with_meta(self, key: str, value: str, limit: int = 10) -> list[Run]:
        rows = await self._fetchall(
            f"{SELECT_RUNS} WHERE meta @> %s::jsonb ORDER BY created_at DESC, submitted DESC "
            "LIMIT %s",
            (json.dumps({key: value}), limit),
        )
        return [run_from_values(r) for r in rows]

    async def family_runs(self, family_id: str) -> list[Run]:
        rows = await self._fetchall(
            f"{SELECT_RUNS} WHERE family_id = %s ORDER BY created_at, submitted", (family_id,)
        )
        return [run_from_values(r) for r in rows]

    async def run_for_pull_request(self, pr_url: str) -> Run | None:
        row = await self._fetchone(
            f"{SELECT_RUNS} WHERE pr_url = %s ORDER BY created_at DESC, submitted DESC LIMIT 1",
            (pr_url,),
        )
        return run_from_values(row) if row else None

    async def running_in_family(self, family_id: str) -> str | None:
        row = await self._fetchone(
            "SELECT id FROM runs WHERE family_id = %s AND status = 'running' LIMIT 1",
            (family_id,),
        )
        return str(row["id"]) if row else None

    async def set_meta(self, run_id: str, **values: Any) -> None:
        async with self._transaction() as cur:
            await cur.execute("SELECT meta FROM runs WHERE id = %s FOR UPDATE", (run_id,))
            row = await cur.fetchone()
            if row is None:
                return
            await cur.execute(
                "UPDATE runs SET meta = %s::jsonb, updated_at = now() WHERE id = %s",
                (json.dumps(_merge_patch(row["meta"], values)), run_id),
            )

    async def counts(self) -> dict[str, int]:
        rows = await self._fetchall(
            "SELECT status, count(*) AS n FROM runs WHERE status IN ('queued', 'running') "
            "GROUP BY status",
            (),
        )
        found = {"queued": 0, "running": 0}
        found.update({str(r["status"]): int(r["n"]) for r in rows})
        return found

    # --- the queue -----------------------------------------------------------------------------
    async def claim(
        self, worker: str, lease_seconds: float, among: Collection[str] | None = None
    ) -> Claim | None:
        # The oldest queued run whose family has no run executing and no older run waiting,
        # taken with SKIP LOCKED. The check ran in this statement's snapshot; a sibling claimed
        # or submitted by another replica meanwhile is invisible to it. So the family's advisory
        # lock is taken (claimers of one family queue there, for microseconds) and the rule is
        # checked again in a fresh snapshot, which sees every claim committed before the lock.
        if among is not None and not among:
            return None
        only = list(among) if among is not None else None
        rejected: list[str] = []
        async with self._transaction() as cur:
            for _ in range(8):
                await cur.execute(
                    "SELECT q.id, q.family_id, q.created_at FROM runs q WHERE q.status = 'queued' AND q.request IS NOT NULL "
                    "AND q.id <> ALL(%(rejected)s) AND (%(only)s::text[] IS NULL OR q.id = ANY(%(only)s)) "
                    "AND NOT EXISTS (SELECT 1 FROM runs o "
                    "  WHERE o.family_id = q.family_id AND o.id <> q.id AND (o.status = 'running' "
                    "    OR (o.status = 'queued' AND (o.created_at, o.id) < (q.created_at, q.id)))) "
                    "ORDER BY q.created_at, q.id LIMIT 1 FOR UPDATE OF q SKIP LOCKED",
                    {"rejected": rejected, "only": only},
                )
                row = await cur.fetchone()
                if row is None:
                    return None
                if row["family_id"] is not None:
                    await cur.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                        (f"backspace.family:{row['family_id']}",),
                    )
                    await cur.execute(
                        "SELECT 1 FROM runs o WHERE o.family_id = %(family)s AND o.id <> %(id)s "
                        "AND (o.status = 'running' OR (o.status = 'queued' "
                        "  AND (o.created_at, o.id) < (%(created)s, %(id)s))) LIMIT 1",
                        {"family": row["family_id"], "id": row["id"], "created": row["created_at"]},
                    )
                    if await cur.fetchone() is not None:
                        rejected.append(row["id"])
                        continue
                await cur.execute(
                    "UPDATE runs SET status = 'running', worker_id = %s, attempt = attempt + 1, "
                    "started_at = now(), lease_expires_at = now() + make_interval(secs => %s), "
                    "updated_at = now(), queue_position = NULL WHERE id = %s AND status = 'queued' "
                    f"RETURNING id, attempt, request, {iso('created_at')} AS created_at",
                    (worker, lease_seconds, row["id"]),
                )
                taken = await cur.fetchone()
                if taken is None:
                    return None
                return Claim(
                    Fence(taken["id"], worker, int(taken["attempt"])),
                    dict(taken["request"]),
                    taken["created_at"],
                )
        return None

    async def heartbeat(
        self, worker: str, run_ids: Collection[str], lease_seconds: float
    ) -> list[Lease]:
        if not run_ids:
            return []
        rows = await self._fetchall(
            "UPDATE runs SET lease_expires_at = now() + make_interval(secs => %s) "
            "WHERE worker_id = %s AND status = 'running' AND id = ANY(%s) "
            "RETURNING id, cancel_requested_at",
            (lease_seconds, worker, list(run_ids)),
        )
        return [Lease(r["id"], r["cancel_requested_at"] is not None) for r in rows]

    async def reap(self, worker: str, *, every_other_worker: bool = False) -> list[Event]:
        if every_other_worker:
            condition, params = "(worker_id IS NULL OR worker_id <> %s)", (worker,)
        else:
            condition, params = "lease_expires_at < now()", ()  # type: ignore[assignment]
        written: list[Event] = []
        async with self._transaction() as cur:
            # SKIP LOCKED: two replicas reaping at once end each run once; a run whose owner is
            # writing (its row locked) waits for the next round, and is re-checked then.
            await cur.execute(
                "SELECT id, stage, "
                "  COALESCE((extract(epoch FROM now() - started_at) * 1000)::bigint, 0) AS ms "
                f"FROM runs WHERE status = 'running' AND {condition} "
                "ORDER BY id FOR UPDATE SKIP LOCKED",
                params,
            )
            for row in await cur.fetchall():
                end = RunEnd(
                    status=RunStatus.FAILED,
                    duration_ms=max(0, int(row["ms"])),
                    error=RunError(code="interrupted", message=INTERRUPTED),
                )
                events = final_events(end, row["stage"], INTERRUPTED)
                written += (
                    await self._end(cur, row["id"], end, events, "status = 'running'", {}) or []
                )
        return written

    async def hand_back(self, fence: Fence) -> bool:
        row = await self._fetchone(
            "WITH back AS (UPDATE runs SET status = 'queued', worker_id = NULL, "
            "lease_expires_at = NULL, started_at = NULL, updated_at = now() "
            f"WHERE id = %(run)s AND {FENCED} RETURNING id) "
            f"SELECT id, pg_notify('{CONTROL_CHANNEL}', 'queued') FROM back",
            {"run": fence.run_id, "worker": fence.worker, "attempt": fence.attempt},
        )
        return row is not None

    async def request_cancel(self, run_id: str) -> Cancel:
        async with self._transaction() as cur:
            await cur.execute(
                "UPDATE runs SET cancel_requested_at = now() WHERE id = %s "
                "AND status IN ('queued', 'running') RETURNING status, worker_id",
                (run_id,),
            )
            row = await cur.fetchone()
            if row is None:
                return Cancel(CancelOutcome.NOT_LIVE)
            if row["status"] == "running":
                # Delivered to every replica's listener once this commits; the owner's
                # heartbeat sees cancel_requested_at if the notification is lost.
                await cur.execute("SELECT pg_notify(%s, %s)", (CONTROL_CHANNEL, f"cancel:{run_id}"))
                return Cancel(CancelOutcome.SIGNALLED, worker=row["worker_id"])
            end = RunEnd(status=RunStatus.CANCELLED, duration_ms=0)
            events = final_events(end, Stage.QUEUED, CANCELLED_BEFORE_START)
            written = await self._end(cur, run_id, end, events, "status = 'queued'", {})
            return Cancel(CancelOutcome.CANCELLED, written or [])

    async def live_run_ids(self) -> set[str]:
        rows = await self._fetchall(
            "SELECT id FROM runs WHERE status = 'queued' "
            "OR (status = 'running' AND lease_expires_at >= now())",
            (),
        )
        return {str(r["id"]) for r in rows}

    async def announce_positions(self) -> list[Event]:
        written: list[Event] = []
        async with self._transaction() as cur:
            # One announcer at a time, reading after the lock: a second replica finds the
            # positions the first one wrote, and writes nothing.
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (POSITIONS_LOCK,))
            await cur.execute(
                "SELECT q.id, q.queue_position, "
                "(SELECT o.id FROM runs o WHERE o.family_id = q.family_id "
                "  AND o.status = 'running' AND o.id <> q.id LIMIT 1) AS behind "
                "FROM runs q WHERE q.status = 'queued' ORDER BY q.created_at, q.id"
            )
            for position, row in enumerate(await cur.fetchall(), start=1):
                if row["queue_position"] == position:
                    continue
                event = waiting_event(position, row["behind"])
                await cur.execute(
                    "WITH head AS (UPDATE runs SET queue_position = %(position)s, "
                    "last_seq = last_seq + %(n)s WHERE id = %(run)s AND status = 'queued' "
                    f"RETURNING last_seq), ins AS ({INSERT_EVENTS}) {NOTIFY_EVENTS}",
                    {"position": position, **_batch(row["id"], [event])},
                )
                head = await cur.fetchone()
                if head is not None:
                    written += _events(row["id"], int(head["last_seq"]), [event])
        return written

    async def queue_position(self, run_id: str) -> int | None:
        row = await self._fetchone(
            "SELECT count(*) AS n FROM runs q, runs r WHERE r.id = %s AND r.status = 'queued' "
            "AND q.status = 'queued' AND (q.created_at, q.id) <= (r.created_at, r.id)",
            (run_id,),
        )
        return int(row["n"]) if row and row["n"] else None

    # --- events --------------------------------------------------------------------------------
    async def append(self, fence: Fence, events: Sequence[NewEvent]) -> list[Event]:
        if not events:
            return []
        changes = stored(derived_changes(list(events)))
        assignments = "".join(f", {name} = %(c_{name})s" for name in changes)
        if changes:
            assignments += ", updated_at = now()"
        params = {
            "worker": fence.worker,
            "attempt": fence.attempt,
            **{f"c_{name}": value for name, value in changes.items()},
            **_batch(fence.run_id, events),
        }
        row = await self._fetchone(
            f"WITH head AS (UPDATE runs SET last_seq = last_seq + %(n)s{assignments} "
            f"WHERE id = %(run)s AND {FENCED} RETURNING last_seq), ins AS ({INSERT_EVENTS}) "
            f"{NOTIFY_EVENTS}",
            params,
        )
        if row is None:
            raise LeaseLost(f"run {fence.run_id} is no longer held by {fence.worker}")
        return _events(fence.run_id, int(row["last_seq"]), events)

    async def finish(self, fence: Fence, end: RunEnd, events: Sequence[NewEvent]) -> list[Event]:
        async with self._cursor(transaction=False) as cur:  # one statement: no BEGIN needed
            fenced = {"worker": fence.worker, "attempt": fence.attempt}
            written = await self._end(cur, fence.run_id, end, events, FENCED, fenced)
        if written is None:
            raise LeaseLost(f"run {fence.run_id} is no longer held by {fence.worker}")
        return written

    async def events_after(
        self, run_id: str, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        sql = (
            f"SELECT seq, type, {iso('ts')} AS ts, data FROM events "
            "WHERE run_id = %s AND seq > %s ORDER BY seq"
        )
        params: tuple[Any, ...] = (run_id, after)
        if limit is not None:
            sql += " LIMIT %s"
            params = (*params, limit)
        return [
            Event(run_id=run_id, seq=r["seq"], type=r["type"], timestamp=r["ts"], data=r["data"])
            for r in await self._fetchall(sql, params)
        ]

    async def last_seq(self, run_id: str) -> int:
        row = await self._fetchone("SELECT last_seq FROM runs WHERE id = %s", (run_id,))
        return int(row["last_seq"]) if row else 0

    # --- the bell ------------------------------------------------------------------------------
    async def listen(
        self, on_events: OnEvents, on_control: OnControl, on_reconnect: OnReconnect | None = None
    ) -> None:
        """LISTEN on one dedicated connection (connected before this returns); a task reads
        it until `aclose`, and reconnects with backoff when it drops."""
        if self._listener is not None:
            raise StoreError("this store already listens: call listen() once per store")
        conn = await self._listen_connect()
        self._listener = asyncio.create_task(
            self._listen(conn, on_events, on_control, on_reconnect), name="store-listener"
        )

    async def ring(self, message: str) -> None:
        await self._execute("SELECT pg_notify(%s, %s)", (CONTROL_CHANNEL, message))

    async def _listen_connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
            await conn.execute(f"LISTEN {CONTROL_CHANNEL}")
        except psycopg.Error as exc:
            raise StoreError(self._clean(f"cannot listen on the {self._where}: {exc}")) from None
        self._listen_conn = conn
        return conn

    async def _listen(
        self,
        conn: psycopg.AsyncConnection[Any],
        on_events: OnEvents,
        on_control: OnControl,
        on_reconnect: OnReconnect | None,
    ) -> None:
        delay = BACKOFF[0]
        while not self._closed:
            try:
                while True:
                    async for note in conn.notifies(timeout=LISTEN_PROBE):
                        self._dispatch(note.channel, note.payload, on_events, on_control)
                    await conn.execute("SELECT 1")  # an idle connection may be dead: find out
            except psycopg.Error as exc:
                log.warning(self._clean(f"the store's listener lost its connection: {exc}"))
            with contextlib.suppress(Exception):
                await conn.close()
            while not self._closed:  # reconnect, with backoff
                await asyncio.sleep(delay)
                try:
                    conn = await self._listen_connect()
                except StoreError as exc:
                    delay = min(delay * 2, BACKOFF[1])
                    log.warning("%s; retrying in %.1f s", exc, delay)
                    continue
                delay = BACKOFF[0]
                if on_reconnect is not None:
                    try:
                        on_reconnect()  # notifications sent while away are lost: catch up
                    except Exception:
                        log.exception("the store's on_reconnect callback failed")
                break

    @staticmethod
    def _dispatch(channel: str, payload: str, on_events: OnEvents, on_control: OnControl) -> None:
        try:
            if channel == EVENTS_CHANNEL:
                run_id, _, seq = payload.rpartition(":")
                if run_id and seq.isdigit():
                    on_events(run_id, int(seq))
            elif channel == CONTROL_CHANNEL:
                on_control(payload)
        except Exception:
            log.exception("the store's listener callback failed on %s", channel)

    # --- a webhook's deliveries, a channel's repository, rate limits -----------------------------
    # --- a follow-up steered into a run executing elsewhere --------------------------------------
    async def send_steer(self, run_id: str, message: dict[str, Any]) -> int:
        async with self._transaction() as cur:
            await cur.execute(
                "INSERT INTO steers (run_id, message) VALUES (%s, %s::jsonb) RETURNING id",
                (run_id, json.dumps(message)),
            )
            row = await cur.fetchone()
            assert row is not None
            await cur.execute("SELECT pg_notify(%s, %s)", (CONTROL_CHANNEL, f"steer:{run_id}"))
        return int(row["id"])

    async def take_steers(self, run_id: str) -> list[tuple[int, dict[str, Any]]]:
        rows = await self._fetchall(
            "UPDATE steers SET state = 'taken' WHERE run_id = %s AND state = 'pending' "
            "RETURNING id, message",
            (run_id,),
        )
        return sorted((int(r["id"]), dict(r["message"])) for r in rows)

    async def settle_steer(self, steer_id: int, delivered: bool) -> None:
        await self._execute(
            "UPDATE steers SET state = %s WHERE id = %s AND state = 'taken'",
            ("delivered" if delivered else "refused", steer_id),
        )

    async def steer_state(self, steer_id: int, *, withdraw: bool = False) -> str:
        if withdraw:
            await self._execute(
                "UPDATE steers SET state = 'withdrawn' WHERE id = %s AND state = 'pending'",
                (steer_id,),
            )
        row = await self._fetchone("SELECT state FROM steers WHERE id = %s", (steer_id,))
        return str(row["state"]) if row else "withdrawn"

    async def claim_delivery(self, source: str, delivery_id: str) -> bool:
        async with self._transaction() as cur:
            await cur.execute(
                "DELETE FROM deliveries WHERE received_at < now() - make_interval(days => %s)",
                (DELIVERY_DAYS,),
            )
            await cur.execute(
                "INSERT INTO deliveries (source, id, received_at) VALUES (%s, %s, now()) "
                "ON CONFLICT (source, id) DO NOTHING",
                (source, delivery_id),
            )
            return cur.rowcount == 1

    async def set_channel_repo(self, team_id: str, channel_id: str, repo: str, set_by: str) -> None:
        await self._execute(
            "INSERT INTO channel_repos (team_id, channel_id, repo, set_by, updated_at) "
            "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (team_id, channel_id) DO UPDATE SET "
            "repo = excluded.repo, set_by = excluded.set_by, updated_at = excluded.updated_at",
            (team_id, channel_id, repo, set_by),
        )

    async def channel_repo(self, team_id: str, channel_id: str) -> str | None:
        row = await self._fetchone(
            "SELECT repo FROM channel_repos WHERE team_id = %s AND channel_id = %s",
            (team_id, channel_id),
        )
        return str(row["repo"]) if row else None

    async def take_tokens(self, keys: Sequence[str], per_second: float, burst: float) -> float:
        names = sorted(set(keys))  # one lock order for every process: no deadlock
        async with self._transaction() as cur:
            # Make the missing buckets (full), then lock them all: two processes taking the
            # first token of a new key queue on its row instead of both starting from full.
            await cur.execute(
                "INSERT INTO rate_buckets (key, tokens, updated) "
                "SELECT k, %s, clock_timestamp() FROM unnest(%s::text[]) AS k "
                "ORDER BY k ON CONFLICT (key) DO NOTHING",
                (burst, names),
            )
            await cur.execute(
                "SELECT key, LEAST(%(burst)s::float8, tokens + GREATEST(0, extract(epoch FROM "
                "clock_timestamp() - updated)) * %(rate)s) AS level "
                "FROM rate_buckets WHERE key = ANY(%(keys)s) ORDER BY key FOR UPDATE",
                {"burst": burst, "rate": per_second, "keys": names},
            )
            levels = {r["key"]: float(r["level"]) for r in await cur.fetchall()}
            short = [tokens for tokens in levels.values() if tokens < 1]
            if short:
                return float("inf") if per_second <= 0 else max((1 - t) / per_second for t in short)
            await cur.execute(
                "UPDATE rate_buckets b SET tokens = v.level - 1, updated = clock_timestamp() "
                "FROM unnest(%s::text[], %s::float8[]) AS v(key, level) WHERE b.key = v.key",
                (list(levels), list(levels.values())),
            )
            # Full buckets carry no state: forget those, so the table stays small.
            await cur.execute(
                "DELETE FROM rate_buckets WHERE tokens + extract(epoch FROM clock_timestamp() "
                "- updated) * %s >= %s",
                (per_second, burst),
            )
        return 0.0

    # --- pull requests (the local git host's records) ------------------------------------------
    async def create_pull_request(self, **fields: Any) -> int:
        fields["files"] = json.dumps(fields["files"])
        fields.setdefault("created_at", now_iso())
        fields["created_at"] = _time(fields["created_at"])
        unknown = set(fields) - PULL_REQUEST_COLUMNS
        if unknown:
            raise ValueError(f"unknown pull request fields: {sorted(unknown)}")
        marks = ", ".join(f"%({name})s" + ("::jsonb" if name == "files" else "") for name in fields)
        row = await self._fetchone(
            f"INSERT INTO pull_requests ({', '.join(fields)}) VALUES ({marks}) RETURNING id",
            fields,
        )
        return int(row["id"]) if row else 0

    async def get_pull_request(self, pr_id: int) -> PullRequestRecord | None:
        columns = ", ".join(
            f"{iso(c)} AS {c}" if c == "created_at" else c for c in sorted(PULL_REQUEST_COLUMNS)
        )
        row = await self._fetchone(
            f"SELECT id, {columns} FROM pull_requests WHERE id = %s",
            (pr_id,),
        )
        return PullRequestRecord(**row) if row else None

    async def update_pull_request(self, pr_id: int, **fields: Any) -> None:
        unknown = set(fields) - PULL_REQUEST_UPDATABLE
        if unknown:
            raise ValueError(f"unknown pull request fields: {sorted(unknown)}")
        if "files" in fields:
            fields["files"] = json.dumps(fields["files"])
        assignments = ", ".join(
            f"{name} = %({name})s" + ("::jsonb" if name == "files" else "") for name in fields
        )
        await self._execute(
            f"UPDATE pull_requests SET {assignments} WHERE id = %(pr_id)s",
            {**fields, "pr_id": pr_id},
        )

    async def add_pull_request_comment(self, pr_id: int, body: str) -> int:
        row = await self._fetchone(
            "INSERT INTO pull_request_comments (pr_id, body, created_at) "
            "VALUES (%s, %s, now()) RETURNING id",
            (pr_id, body),
        )
        return int(row["id"]) if row else 0

    async def pull_request_comments(self, pr_id: int) -> list[dict[str, Any]]:
        return await self._fetchall(
            f"SELECT id, body, {iso('created_at')} AS created_at FROM pull_request_comments "
            "WHERE pr_id = %s ORDER BY id",
            (pr_id,),
        )

    # --- inside a transaction ------------------------------------------------------------------
    async def _end(
        self,
        cur: psycopg.AsyncCursor[Any],
        run_id: str,
        end: RunEnd,
        events: Sequence[NewEvent],
        guard: str,
        guard_params: dict[str, Any],
    ) -> list[Event] | None:
        """The run's final columns and its last events, if `guard` still holds (whoever ends
        it: its owner, a cancel of a queued run, the reaper); None when it no longer does. The
        prompt as typed is dropped with the request."""
        summary = ", summary = %(summary)s" if end.summary else ""
        await cur.execute(
            "WITH head AS (UPDATE runs SET status = %(status)s, stage = %(stage)s, "
            "finished_at = now(), duration_ms = %(duration)s, pr_url = %(pr_url)s, "
            f"error_code = %(code)s, error_message = %(message)s{summary}, updated_at = now(), "
            "worker_id = NULL, lease_expires_at = NULL, request = NULL, "
            f"last_seq = last_seq + %(n)s WHERE id = %(run)s AND {guard} RETURNING last_seq), "
            f"ins AS ({INSERT_EVENTS}) {NOTIFY_EVENTS}",
            {
                "status": str(end.status),
                "stage": str(Stage.COMPLETE),
                "duration": end.duration_ms,
                "pr_url": end.pr_url,
                "code": end.error.code if end.error else None,
                "message": end.error.message if end.error else None,
                "summary": end.summary,
                **guard_params,
                **_batch(run_id, events),
            },
        )
        row = await cur.fetchone()
        if row is None:
            return None
        return _events(run_id, int(row["last_seq"]), events)

    def _transaction(self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncCursor[Any]]:
        """A cursor in one transaction (BEGIN ... COMMIT, ROLLBACK on an error)."""
        return self._cursor(transaction=True)

    @contextlib.asynccontextmanager
    async def _cursor(self, *, transaction: bool) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """A pooled connection's cursor; without `transaction`, each statement commits alone
        (autocommit: one round trip for a one-statement write such as an append)."""
        try:
            async with (
                self._pool.connection() as conn,
                conn.transaction() if transaction else contextlib.nullcontext(),
                conn.cursor(row_factory=dict_row) as cur,
            ):
                yield cur
        except LeaseLost:
            raise
        except psycopg.Error as exc:
            raise StoreError(self._clean(f"the run store failed: {exc}")) from None
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg_pool"):  # PoolTimeout, PoolClosed
                raise StoreError(self._clean(f"the run store is unreachable: {exc}")) from None
            raise

    async def _execute(self, sql: str, params: Any) -> None:
        async with self._cursor(transaction=False) as cur:
            await cur.execute(sql, params)

    async def _fetchone(self, sql: str, params: Any) -> dict[str, Any] | None:
        async with self._cursor(transaction=False) as cur:
            await cur.execute(sql, params)
            row: dict[str, Any] | None = await cur.fetchone()
            return row

    async def _fetchall(self, sql: str, params: Any) -> list[dict[str, Any]]:
        async with self._cursor(transaction=False) as cur:
            await cur.execute(sql, params)
            return list(await cur.fetchall())

    def _clean(self, message: str) -> str:
        """A message without the URL or its password (libpq may quote either)."""
        message = message.replace(self._url, self._where)
        if self._password:
            message = message.replace(self._password, "***")
        return message


PULL_REQUEST_COLUMNS = frozenset(
    {
        "run_id",
        "repo",
        "title",
        "body",
        "branch",
        "base",
        "base_sha",
        "head_sha",
        "files",
        "additions",
        "deletions",
        "diff",
        "created_at",
        "state",
    }
)
