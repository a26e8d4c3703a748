"""The SQLite store, on a real database file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from backspace.orchestrator.events import EventType, RunStatus, Stage
from backspace.orchestrator.store import COLUMNS, PullRequestRecord, Run, RunError, Store


def make_run(run_id: str, created_at: str) -> Run:
    return Run(
        id=run_id,
        created_at=created_at,
        updated_at=created_at,
        status=RunStatus.QUEUED,
        stage=Stage.QUEUED,
        repo_url="https://github.com/example/repo",
        prompt=f"prompt of {run_id}",
        source="api",
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "backspace.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    store = Store(db_path)
    try:
        yield store
    finally:
        store.close()


def test_wal_mode_is_on(store: Store, db_path: Path) -> None:
    assert db_path.exists()  # the parent directory was created
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()
    assert store.ping()


def test_create_get_update_and_list_runs(store: Store, db_path: Path) -> None:
    first = replace(make_run("r1", "2026-01-01T00:00:01.000Z"), meta={"slack": {"ts": "1.2"}})
    store.create_run(first)
    store.create_run(replace(make_run("r2", "2026-01-01T00:00:02.000Z"), requester="alice"))
    store.create_run(make_run("r3", "2026-01-01T00:00:03.000Z"))

    assert store.get_run("r1") == first
    r2 = store.get_run("r2")
    assert r2 is not None and r2.requester == "alice" and r2.meta == {}
    assert store.get_run("missing") is None

    store.update_run(
        "r1",
        status=str(RunStatus.SUCCEEDED),
        stage="complete",
        pr_url="https://github.com/example/repo/pull/7",
        cost_usd=0.125,
        input_tokens=1000,
        meta={"k": [1, 2]},
    )
    updated = store.get_run("r1")
    assert updated is not None
    assert updated.status == "succeeded" and updated.stage == "complete"
    assert updated.pr_url == "https://github.com/example/repo/pull/7"
    assert updated.cost_usd == 0.125 and updated.input_tokens == 1000
    assert updated.meta == {"k": [1, 2]}
    assert updated.updated_at > updated.created_at  # set to now by update_run
    assert updated.to_json()["error"] is None

    # Written in autocommit mode: another connection sees everything at once.
    other = sqlite3.connect(db_path)
    try:
        row = other.execute("SELECT status, pr_url FROM runs WHERE id = 'r1'").fetchone()
        assert row == ("succeeded", "https://github.com/example/repo/pull/7")
    finally:
        other.close()

    assert [r.id for r in store.list_runs()] == ["r3", "r2", "r1"]
    assert [r.id for r in store.list_runs(limit=2)] == ["r3", "r2"]
    assert [r.id for r in store.list_runs(before="2026-01-01T00:00:03.000Z")] == ["r2", "r1"]
    assert sorted(r.id for r in store.runs_with_status(RunStatus.QUEUED)) == ["r2", "r3"]
    assert [r.id for r in store.runs_with_status(RunStatus.SUCCEEDED, RunStatus.FAILED)] == ["r1"]


def test_update_run_rejects_unknown_fields(store: Store) -> None:
    store.create_run(make_run("r1", "2026-01-01T00:00:01.000Z"))
    before = store.get_run("r1")
    for bad in ({"nope": 1}, {"id": "other"}, {"created_at": "x"}, {"status": "failed", "x": 1}):
        with pytest.raises(ValueError, match="unknown run fields"):
            store.update_run("r1", **bad)
    assert store.get_run("r1") == before
    assert store.get_run("other") is None


def test_the_runs_table_has_a_column_for_each_field_of_a_run(store: Store, db_path: Path) -> None:
    other = sqlite3.connect(db_path)
    try:
        table = [row[1] for row in other.execute("PRAGMA table_info(runs)")]
    finally:
        other.close()
    assert sorted(table) == sorted(COLUMNS)
    failed = replace(
        make_run("r1", "2026-01-01T00:00:01.000Z"),
        status=RunStatus.FAILED,
        error=RunError(code="agent_failed", message="the model gave up"),
        meta={"slack_user": "U1"},
    )
    store.create_run(failed)
    assert store.get_run("r1") == failed
    assert failed.to_json()["error"] == {"code": "agent_failed", "message": "the model gave up"}
    assert "meta" not in failed.to_json()
    store.update_run("r1", error=None)
    cleared = store.get_run("r1")
    assert cleared is not None and cleared.error is None and cleared.to_json()["error"] is None


def test_a_database_of_an_older_version_still_opens(db_path: Path) -> None:
    """Earlier versions' `runs` had a `sandbox_id` column, never written: it is left alone."""
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
        INSERT INTO runs (id, created_at, updated_at, finished_at, status, stage, repo_url, prompt,
            source, error_code, error_message, duration_ms, sandbox_id)
        VALUES ('old', '2025-01-01T00:00:00.000Z', '2025-01-01T00:01:00.000Z',
            '2025-01-01T00:01:00.000Z', 'failed', 'complete', 'local:widgets', 'p', 'api',
            'sandbox_failed', 'no sandbox', 60000, 'sb-1');
        """
    )
    old.close()
    store = Store(db_path)
    try:
        run = store.get_run("old")
        assert run is not None and run.status is RunStatus.FAILED
        assert run.error == RunError(code="sandbox_failed", message="no sandbox")
        assert run.duration_ms == 60000 and run.meta == {}
        store.create_run(make_run("new", "2026-01-01T00:00:01.000Z"))
        assert [r.id for r in store.list_runs()] == ["new", "old"]
    finally:
        store.close()


def test_event_seq_is_gap_free_per_run_and_survives_reopening(db_path: Path) -> None:
    store = Store(db_path)
    for i in range(1, 6):
        a = store.append_event("run-a", EventType.PROGRESS, {"i": i})
        assert a.seq == i and a.run_id == "run-a"
        b = store.append_event("run-b", EventType.AI_MESSAGE, {"text": f"héllo {i}"})
        assert b.seq == i and b.run_id == "run-b"
    store.append_event("run-a", EventType.PROGRESS, {"i": 6})
    store.close()

    reopened = Store(db_path)
    try:
        assert reopened.append_event("run-a", EventType.PROGRESS, {"i": 7}).seq == 7
        assert reopened.append_event("run-b", EventType.COMPLETE, {}).seq == 6
        assert reopened.append_event("run-c", EventType.START, {}).seq == 1

        events_a = reopened.events_after("run-a")
        assert [e.seq for e in events_a] == [1, 2, 3, 4, 5, 6, 7]
        assert [e.data["i"] for e in events_a] == [1, 2, 3, 4, 5, 6, 7]
        assert all(e.type == "progress" for e in events_a)
        events_b = reopened.events_after("run-b")
        assert [e.seq for e in events_b] == [1, 2, 3, 4, 5, 6]
        assert events_b[0].data == {"text": "héllo 1"}
        assert events_b[-1].is_terminal

        # forget_seq drops only the cache: the next seq is read back from the database.
        reopened.forget_seq("run-a")
        assert reopened.append_event("run-a", EventType.PROGRESS, {"i": 8}).seq == 8
    finally:
        reopened.close()


def test_events_after(store: Store) -> None:
    for i in range(10):
        store.append_event("run", EventType.TOOL_BASH, {"n": i})
    store.append_event("other", EventType.START, {})
    assert [e.seq for e in store.events_after("run", after=4)] == [5, 6, 7, 8, 9, 10]
    assert [e.seq for e in store.events_after("run", after=4, limit=2)] == [5, 6]
    assert store.events_after("run", after=10) == []
    assert store.events_after("nothing") == []
    assert [e.seq for e in store.events_after("other")] == [1]
    event = store.events_after("run", after=9)[0]
    assert event.to_wire()["n"] == 9 and event.to_wire()["request_id"] == "run"


def test_pull_request_round_trip(store: Store) -> None:
    files = [{"path": "a.py", "additions": 3, "deletions": 1, "status": "modified"}]
    fields = {
        "run_id": "r1",
        "repo": "example/repo",
        "title": "Add a thing",
        "body": "Body with ünïcode",
        "branch": "backspace/add-a-thing",
        "base": "main",
        "base_sha": "a" * 40,
        "head_sha": "b" * 40,
        "files": files,
        "additions": 3,
        "deletions": 1,
        "diff": "diff --git a/a.py b/a.py\n",
    }
    first = store.create_pull_request(**dict(fields))
    second = store.create_pull_request(**dict(fields, title="Second"))
    assert first >= 1 and second == first + 1

    record = store.get_pull_request(first)
    assert isinstance(record, PullRequestRecord)
    assert record.id == first
    for key, value in fields.items():
        assert getattr(record, key) == value, key
    assert record.created_at  # defaulted
    second_record = store.get_pull_request(second)
    assert second_record is not None and second_record.title == "Second"
    assert store.get_pull_request(second + 100) is None
