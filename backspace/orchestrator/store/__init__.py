"""The run store: runs, their event log, the queue and the bell (see `base.RunStore`).

`open_store` picks the backend: PostgreSQL when BACKSPACE_DATABASE_URL is set (several replicas),
else the SQLite file at BACKSPACE_DB (one process, the default).
"""

from __future__ import annotations

from pathlib import Path

from backspace.orchestrator.errors import StoreError as StoreError
from backspace.orchestrator.errors import StoreFull as StoreFull
from backspace.orchestrator.store.base import LeaseLost as LeaseLost
from backspace.orchestrator.store.base import RunStore as RunStore
from backspace.orchestrator.store.records import COLUMNS as COLUMNS
from backspace.orchestrator.store.records import Cancel as Cancel
from backspace.orchestrator.store.records import CancelOutcome as CancelOutcome
from backspace.orchestrator.store.records import Claim as Claim
from backspace.orchestrator.store.records import Fence as Fence
from backspace.orchestrator.store.records import NewEvent as NewEvent
from backspace.orchestrator.store.records import PullRequestRecord as PullRequestRecord
from backspace.orchestrator.store.records import Run as Run
from backspace.orchestrator.store.records import RunEnd as RunEnd
from backspace.orchestrator.store.records import RunError as RunError
from backspace.orchestrator.store.records import final_events as final_events
from backspace.orchestrator.store.sqlite import SqliteStore as SqliteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(
    database_url: str | None,
    path: Path | str,
    *,
    max_bytes: int | None = None,
    headroom_bytes: int = 0,
    pool_min: int = 1,
    pool_max: int = 10,
) -> RunStore:
    """The run store the settings choose: PostgreSQL at `database_url` (BACKSPACE_DATABASE_URL),
    or without one the SQLite file at `path` (BACKSPACE_DB; `max_bytes` and `headroom_bytes`
    apply to it only). Call `await store.open()` before use."""
    if database_url is None:
        return SqliteStore(path, max_bytes=max_bytes, headroom_bytes=headroom_bytes)
    if not database_url.startswith(POSTGRES_SCHEMES):
        raise StoreError(
            "BACKSPACE_DATABASE_URL must be a PostgreSQL URL "
            "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
        )
    # Imported here: psycopg costs a one-process (SQLite) server's start for nothing.
    from backspace.orchestrator.store.postgres import PostgresStore

    return PostgresStore(database_url, pool_min=pool_min, pool_max=pool_max)
