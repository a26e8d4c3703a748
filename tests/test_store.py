"""The SQLite store's own ways, on a real database file: WAL, migrations, old databases.

What every backend must do alike (the queue, the event log, the bell) is in
tests/test_store_contract.py, which runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from backspace.orchestrator.events import EventType, RunStatus, Stage
from backspace.orchestrator.store import COLUMNS, NewEvent, Run, RunError, SqliteStore
from backspace.orchestrator.store.migrations import migrations

QUEUE_COLUMNS = {
    "request",
    "worker_id",
    "attempt",
    "started_at",
    "lease_expires_at",
    "cancel_requested_at",
    "queue_position",
}


def make_run(run_id: str, created_at: str) -> Run:
    return Run(
        id=run_id,
        family_id=run_id,
        created_at=created_at,
        updated_at=created_at,
        status=RunStatus.QUEUED,
        stage=Stage.QUEUED,
        repo_url="https://github.com/example/repo",
        prompt=f"prompt of {run_id}",
        source="api",
    )


REQUEST = {"repo_url": "x", "repo": {"host": "local", "name": "x", "location": "/x"}}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "backspace.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(db_path)
    try:
        yield store
    finally:
        await store.aclose()


async def test_wal_mode_is_on(store: SqliteStore, db_path: Path) -> None:
    assert db_path.exists()  # the parent directory was created
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()
    assert await store.ping()


async def test_every_migration_is_applied_once_and_recorded(db_path: Path) -> None:
    first = SqliteStore(db_path)
    versions = [m.version for m in migrations("sqlite")]
    assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 2
    assert first.migrate() == []  # nothing left
    await first.aclose()
    again = SqliteStore(db_path)
    try:
        done = [r[0] for r in again._db.execute("SELECT version FROM schema_migrations")]
        assert done == versions
    finally:
        await again.aclose()


async def test_the_runs_table_has_a_column_for_each_field_and_the_queues_own(
    store: SqliteStore, db_path: Path
) -> None:
    other = sqlite3.connect(db_path)
    try:
        table = [row[1] for row in other.execute("PRAGMA table_info(runs)")]
    finally:
        other.close()
    assert sorted(table) == sorted({*COLUMNS, *QUEUE_COLUMNS})
    failed = replace(
        make_run("r1", "2026-01-01T00:00:01.000Z"),
        error=RunError(code="agent_failed", message="the model gave up"),
        meta={"slack_user": "U1"},
    )
    await store.submit(failed, REQUEST, NewEvent(EventType.START, {}))
    assert await store.get_run("r1") == failed
    assert failed.to_json()["error"] == {"code": "agent_failed", "message": "the model gave up"}
    assert "meta" not in failed.to_json()


async def test_a_database_of_an_older_version_still_opens(db_path: Path) -> None:
    """A database from before versioned migrations (with a `sandbox_id` column, never written,
    and no family columns) is adopted: it gains the columns, keeps its runs, and migrates on."""
    db_path.parent.mkdir(parents=True)
    old = sqlite3.connect(db_path)
    old.executescript(
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
            finished_at TEXT, status TEXT NOT NULL, stage TEXT NOT NULL, repo_url TEXT NOT NULL,
            prompt TEXT NOT NULL, source TEXT NOT NULL, requester TEXT, base_branch TEXT,
            branch TEXT, pr_url TEXT, error_code TEXT, error_message TEXT, duration_ms INTEGER,
            cost_usd REAL NOT NULL DEFAULT 0, input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0, sandbox_id TEXT,
            meta TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL,
            ts TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, seq)) WITHOUT ROWID;
        INSERT INTO runs (id, created_at, updated_at, finished_at, status, stage, repo_url, prompt,
            source, error_code, error_message, duration_ms, sandbox_id)
        VALUES ('old', '2025-01-01T00:00:00.000Z', '2025-01-01T00:01:00.000Z',
            '2025-01-01T00:01:00.000Z', 'failed', 'complete', 'local:widgets', 'p', 'api',
            'sandbox_failed', 'no sandbox', 60000, 'sb-1');
        INSERT INTO events VALUES ('old', 1, 'start', '2025-01-01T00:00:00.000Z', '{}');
        INSERT INTO events VALUES ('old', 2, 'complete', '2025-01-01T00:01:00.000Z', '{}');
        """
    )
    old.close()
    store = SqliteStore(db_path)
    try:
        run = await store.get_run("old")
        assert run is not None and run.status is RunStatus.FAILED
        assert run.error == RunError(code="sandbox_failed", message="no sandbox")
        assert run.duration_ms == 60000 and run.meta == {} and run.family_id is None
        assert await store.last_seq("old") == 2  # the log's head, read from its events
        await store.submit(
            make_run("new", "2026-01-01T00:00:01.000Z"), REQUEST, NewEvent(EventType.START, {})
        )
        assert [r.id for r in await store.list_runs()] == ["new", "old"]
    finally:
        await store.aclose()


async def test_a_run_queued_before_the_queue_existed_is_never_claimed(db_path: Path) -> None:
    """Its request was never stored: no worker could execute it (it is ended at start)."""
    store = SqliteStore(db_path)
    try:
        store._db.execute(
            "INSERT INTO runs (id, created_at, updated_at, status, stage, repo_url, prompt, "
            "source, family_id) VALUES ('legacy', '2025-01-01T00:00:00.000Z', "
            "'2025-01-01T00:00:00.000Z', 'queued', 'queued', 'local:x', 'p', 'api', 'legacy')"
        )
        assert await store.claim("w1", 30) is None
    finally:
        await store.aclose()
