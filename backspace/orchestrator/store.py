"""Runs and their append-only event log in SQLite (WAL).

One connection, used from the event loop's thread only: an append is a single small INSERT that
takes tens of microseconds in WAL mode with `synchronous=NORMAL`, cheaper than a thread hop, and
keeping every write on one thread makes `seq` allocation trivially gap-free.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import Field, TypeAdapter, field_serializer
from pydantic.dataclasses import dataclass as pydantic_dataclass

from backspace.orchestrator.errors import StoreError as StoreError
from backspace.orchestrator.errors import StoreFull as StoreFull
from backspace.orchestrator.events import Event, RunStatus, Stage, now_iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,
    stage TEXT NOT NULL,
    repo_url TEXT NOT NULL,
    prompt TEXT NOT NULL,
    source TEXT NOT NULL,
    requester TEXT,
    base_branch TEXT,
    family_id TEXT,
    parent_id TEXT,
    base_sha TEXT,
    branch TEXT,
    pr_url TEXT,
    pr_number INTEGER,
    error_code TEXT,
    summary TEXT,
    error_message TEXT,
    duration_ms INTEGER,
    cost_usd REAL NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at DESC);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS deliveries (
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (source, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pull_request_comments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pr_id INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    ts TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS channel_repos (
    team_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    repo TEXT NOT NULL,
    set_by TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (team_id, channel_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pull_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    repo TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    branch TEXT NOT NULL,
    base TEXT NOT NULL,
    base_sha TEXT NOT NULL,
    head_sha TEXT NOT NULL,
    files TEXT NOT NULL,
    additions INTEGER NOT NULL,
    deletions INTEGER NOT NULL,
    diff TEXT NOT NULL,
    created_at TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'open'
);
"""
# Columns added after a table was first made: (table, column, its definition). An older
# database gains them at start; a new one has them from SCHEMA already.
ADDED_COLUMNS = (
    ("runs", "family_id", "TEXT"),
    ("runs", "parent_id", "TEXT"),
    ("runs", "base_sha", "TEXT"),
    ("runs", "pr_number", "INTEGER"),
    ("runs", "summary", "TEXT"),
    ("pull_requests", "state", "TEXT NOT NULL DEFAULT 'open'"),
)
INDEXES = """
CREATE INDEX IF NOT EXISTS runs_family ON runs (family_id, created_at);
CREATE INDEX IF NOT EXISTS runs_pr_url ON runs (pr_url);
"""
DELIVERY_DAYS = 7  # a webhook's deliveries are remembered this long (GitHub redelivers for 3)


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
"""The `runs` table's columns: a run's fields, with its error in two (as the table always had)."""
UPDATABLE = frozenset(FIELDS) - {"id", "created_at"}
_SELECT_RUNS = f"SELECT {', '.join(COLUMNS)} FROM runs"  # noqa: S608 (names, not values)


def _stored(values: dict[str, Any]) -> dict[str, Any]:
    """A run's fields (all or some) as the columns that hold them."""
    columns = dict(values)
    if "error" in columns:
        error: RunError | None = columns.pop("error")
        columns["error_code"] = error.code if error else None
        columns["error_message"] = error.message if error else None
    if "meta" in columns:
        columns["meta"] = json.dumps(columns["meta"])
    return columns


def _run_from_row(row: sqlite3.Row) -> Run:
    values = {name: row[name] for name in FIELDS if name != "error"}
    values["meta"] = json.loads(values["meta"] or "{}")
    code = row["error_code"]
    error = RunError(code=code, message=row["error_message"] or "") if code else None
    return Run(**values, error=error)


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


class Store:
    def __init__(
        self, path: Path | str, *, max_bytes: int | None = None, headroom_bytes: int = 0
    ) -> None:
        self.path = Path(path)
        self.headroom_bytes = 0 if str(path) == ":memory:" else headroom_bytes
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._add_columns()
        self._db.executescript(INDEXES)
        if max_bytes is not None:  # a size cap: past it, writes fail as on a full disk
            page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            self._db.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page)}")
        self._next_seq: dict[str, int] = {}

    def close(self) -> None:
        self._db.close()

    def _add_columns(self) -> None:
        for table, column, definition in ADDED_COLUMNS:
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

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

    def ping(self) -> bool:
        try:
            self._db.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    # --- runs ----------------------------------------------------------------------------------
    def create_run(self, run: Run) -> None:
        """Record a new run; StoreFull when the database's disk has no headroom left."""
        room, message = self.headroom()
        if not room:
            raise StoreFull(message)
        values = _stored({name: getattr(run, name) for name in FIELDS})
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        self._write(f"INSERT INTO runs ({columns}) VALUES ({marks})", tuple(values.values()))  # noqa: S608

    def update_run(self, run_id: str, **changes: Any) -> None:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"unknown run fields: {sorted(unknown)}")
        columns = _stored({**changes, "updated_at": now_iso()})
        assignments = ", ".join(f"{name} = ?" for name in columns)
        self._write(
            f"UPDATE runs SET {assignments} WHERE id = ?",  # noqa: S608
            (*columns.values(), run_id),
        )

    def get_run(self, run_id: str) -> Run | None:
        row = self._db.execute(f"{_SELECT_RUNS} WHERE id = ?", (run_id,)).fetchone()
        return _run_from_row(row) if row else None

    def list_runs(self, limit: int = 50, before: str | None = None) -> list[Run]:
        if before:
            rows = self._db.execute(
                f"{_SELECT_RUNS} WHERE created_at < ? ORDER BY created_at DESC LIMIT ?",
                (before, limit),
            ).fetchall()
        else:
            rows = self._db.execute(
                f"{_SELECT_RUNS} ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_run_from_row(r) for r in rows]

    def runs_with_status(self, *statuses: RunStatus) -> list[Run]:
        marks = ", ".join("?" for _ in statuses)
        rows = self._db.execute(
            f"{_SELECT_RUNS} WHERE status IN ({marks})",
            tuple(str(s) for s in statuses),
        ).fetchall()
        return [_run_from_row(r) for r in rows]

    # --- events --------------------------------------------------------------------------------
    def append_event(self, run_id: str, type: str, data: dict[str, Any]) -> Event:
        """Append one event with the next `seq` (1, 2, 3, ... with no gaps)."""
        seq = self._next_seq.get(run_id)
        if seq is None:
            row = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?", (run_id,)
            ).fetchone()
            seq = int(row[0]) + 1
        event = Event(run_id=run_id, seq=seq, type=type, timestamp=now_iso(), data=data)
        self._write(
            "INSERT INTO events (run_id, seq, type, ts, data) VALUES (?, ?, ?, ?, ?)",
            (run_id, seq, type, event.timestamp, json.dumps(data, ensure_ascii=False)),
        )
        self._next_seq[run_id] = seq + 1
        return event

    def next_seq(self, run_id: str) -> int:
        """The seq the run's next event would get."""
        cached = self._next_seq.get(run_id)
        if cached is not None:
            return cached
        try:
            row = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?", (run_id,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"the run store could not be read: {exc}") from exc
        return int(row[0]) + 1

    def forget_seq(self, run_id: str) -> None:
        """Drop the cached next seq of a finished run (it is re-read if ever needed)."""
        self._next_seq.pop(run_id, None)

    def events_after(self, run_id: str, after: int = 0, limit: int | None = None) -> list[Event]:
        sql = "SELECT seq, type, ts, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq"
        params: tuple[Any, ...] = (run_id, after)
        if limit is not None:
            sql += " LIMIT ?"
            params = (*params, limit)
        return [
            Event(run_id=run_id, seq=r[0], type=r[1], timestamp=r[2], data=json.loads(r[3]))
            for r in self._db.execute(sql, params)
        ]

    def runs_with_meta(self, key: str, value: str, limit: int = 10) -> list[Run]:
        """Recent runs whose meta has `key` = `value` (a Slack channel, say), newest first."""
        rows = self._db.execute(
            f"{_SELECT_RUNS} WHERE json_extract(meta, ?) = ? ORDER BY created_at DESC LIMIT ?",
            (f"$.{key}", value, limit),
        ).fetchall()
        return [_run_from_row(r) for r in rows]

    # --- families: a PR's conversation --------------------------------------------------------
    def family_runs(self, family_id: str) -> list[Run]:
        """Every run of a family, oldest first."""
        rows = self._db.execute(
            f"{_SELECT_RUNS} WHERE family_id = ? ORDER BY created_at, rowid", (family_id,)
        ).fetchall()
        return [_run_from_row(r) for r in rows]

    def run_for_pull_request(self, pr_url: str) -> Run | None:
        """The newest run that opened or updated the pull request at `pr_url`."""
        row = self._db.execute(
            f"{_SELECT_RUNS} WHERE pr_url = ? ORDER BY created_at DESC LIMIT 1", (pr_url,)
        ).fetchone()
        return _run_from_row(row) if row else None

    # --- a webhook's deliveries, each acted on once ---------------------------------------------
    def claim_delivery(self, source: str, delivery_id: str) -> bool:
        """True the first time `(source, delivery_id)` is seen; False for a repeat."""
        now = now_iso()
        cutoff = datetime.now(UTC) - timedelta(days=DELIVERY_DAYS)
        self._write(
            "DELETE FROM deliveries WHERE received_at < ?",
            (cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z"),),
        )
        cursor = self._write(
            "INSERT INTO deliveries (source, id, received_at) VALUES (?, ?, ?) "
            "ON CONFLICT (source, id) DO NOTHING",
            (source, delivery_id, now),
        )
        return cursor.rowcount == 1

    # --- a front end's per-channel default repository ------------------------------------------
    def set_channel_repo(self, team_id: str, channel_id: str, repo: str, set_by: str) -> None:
        self._write(
            "INSERT INTO channel_repos (team_id, channel_id, repo, set_by, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (team_id, channel_id) DO UPDATE SET "
            "repo = excluded.repo, set_by = excluded.set_by, updated_at = excluded.updated_at",
            (team_id, channel_id, repo, set_by, now_iso()),
        )

    def channel_repo(self, team_id: str, channel_id: str) -> str | None:
        row = self._db.execute(
            "SELECT repo FROM channel_repos WHERE team_id = ? AND channel_id = ?",
            (team_id, channel_id),
        ).fetchone()
        return str(row[0]) if row else None

    # --- pull requests (the local git host's records) ------------------------------------------
    def create_pull_request(self, **fields: Any) -> int:
        fields["files"] = json.dumps(fields["files"])
        fields.setdefault("created_at", now_iso())
        columns = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        cursor = self._write(
            f"INSERT INTO pull_requests ({columns}) VALUES ({marks})",  # noqa: S608
            tuple(fields.values()),
        )
        return int(cursor.lastrowid or 0)

    def get_pull_request(self, pr_id: int) -> PullRequestRecord | None:
        row = self._db.execute("SELECT * FROM pull_requests WHERE id = ?", (pr_id,)).fetchone()
        if row is None:
            return None
        values = dict(row)
        values["files"] = json.loads(values["files"])
        return PullRequestRecord(**values)

    def update_pull_request(self, pr_id: int, **fields: Any) -> None:
        """Change a local pull request's title, body, head or state."""
        unknown = set(fields) - {
            "title",
            "body",
            "head_sha",
            "state",
            "files",
            "additions",
            "deletions",
            "diff",
        }
        if unknown:
            raise ValueError(f"unknown pull request fields: {sorted(unknown)}")
        if "files" in fields:
            fields["files"] = json.dumps(fields["files"])
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._write(
            f"UPDATE pull_requests SET {assignments} WHERE id = ?",  # noqa: S608
            (*fields.values(), pr_id),
        )

    def add_pull_request_comment(self, pr_id: int, body: str) -> int:
        cursor = self._write(
            "INSERT INTO pull_request_comments (pr_id, body, created_at) VALUES (?, ?, ?)",
            (pr_id, body, now_iso()),
        )
        return int(cursor.lastrowid or 0)

    def pull_request_comments(self, pr_id: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, body, created_at FROM pull_request_comments WHERE pr_id = ? ORDER BY id",
            (pr_id,),
        ).fetchall()
        return [dict(row) for row in rows]

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"the run store could not be written: {exc}") from exc
